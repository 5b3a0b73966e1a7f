//! `tradevault status`: replication of the store and of every `[[database]]`, as the running
//! `serve` or `replicate` last reported it (each writes `status.json` in the database's local log
//! every second): position, lag, last error, bytes, files, restorable window per replica; and the
//! latest runs of `serve`'s scheduled jobs, from the store's `job_runs` table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use tradevault::replicate::status::{self, DatabaseStatus};

/// A report older than this means nothing is replicating the database now.
const STALE_MS: i64 = 5_000;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    let mut dbs: Vec<(String, PathBuf)> = vec![("store".into(), config.database_path())];
    dbs.extend(
        config
            .database
            .iter()
            .map(|d| (d.name.clone(), d.path.clone())),
    );
    let now = jiff::Timestamp::now().as_millisecond();
    let mut report = Vec::new();
    for (name, path) in dbs {
        let found = status::read(&status::local_log_dir(&path))?;
        report.push((name, path, found));
    }
    let job_runs = recent_job_runs(&config.database_path());
    if args.json {
        let mut items: Vec<_> = report
            .iter()
            .map(|(name, path, s)| match s {
                None => {
                    json!({ "database": name, "path": path, "replicating": false, "status": null })
                }
                Some(s) => json!({
                    "database": name, "path": path,
                    "replicating": now - s.updated_at_ms <= STALE_MS,
                    "status": s,
                }),
            })
            .collect();
        // The store's entry carries the job history (the jobs run in its server).
        if let Some(store) = items.first_mut().and_then(|v| v.as_object_mut()) {
            store.insert("job_runs".into(), json!(job_runs));
        }
        super::print_json(&items)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (name, path, s) in &report {
        match s {
            None => outln!(
                "{name} ({}): not replicated (no status found)\n",
                path.display()
            ),
            Some(s) => print_database(name, s, now),
        }
    }
    if job_runs.is_empty() {
        outln!("jobs: no runs recorded");
    } else {
        let mut t = super::table(&[
            "job", "run", "trigger", "due", "started", "took", "status", "detail",
        ]);
        for r in &job_runs {
            t.add_row(vec![
                r.job.clone(),
                r.id.to_string(),
                r.trigger.clone(),
                r.scheduled_for.clone(),
                r.started_at.clone(),
                r.duration_ms
                    .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                r.status.clone(),
                short_detail(&r.detail),
            ]);
        }
        outln!("jobs (latest runs):\n{t}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The latest 20 job runs recorded in the store; none if there is no store yet.
fn recent_job_runs(store: &Path) -> Vec<tradevault::jobs::JobRun> {
    tradevault::store::open_read_only(store)
        .and_then(|conn| tradevault::jobs::history(&conn, None, 20))
        .unwrap_or_default()
}

fn print_database(name: &str, s: &DatabaseStatus, now: i64) {
    let age = now - s.updated_at_ms;
    let state = if age <= STALE_MS {
        format!("replicating (pid {})", s.pid)
    } else {
        format!("NOT RUNNING: last report {} ago", ago(age))
    };
    outln!(
        "{name} ({}): {state}; txid {} at {}; wal {}; {} checkpoints",
        s.path.display(),
        s.txid,
        time(s.txid_time_ms),
        super::human_bytes(s.wal_bytes),
        s.checkpoints
    );
    if let Some(e) = &s.last_error {
        outln!("  error: {e}");
    }
    let mut t = super::table(&[
        "replica", "txid", "time", "lag", "uploaded", "files", "window", "error",
    ]);
    for r in &s.replicas {
        let window = match (r.window_start_ms, r.window_end_ms) {
            (Some(a), Some(b)) => format!("{} .. {}", time(Some(a)), time(Some(b))),
            _ => "-".into(),
        };
        t.add_row(vec![
            r.name.clone(),
            r.txid.map_or("?".into(), |t| t.to_string()),
            time(r.txid_time_ms),
            format!("{:.3} s", r.lag_seconds),
            super::human_bytes(r.bytes_uploaded),
            r.files.map_or("-".into(), |f| f.to_string()),
            window,
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    outln!("{t}\n");
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or("-".into(), |t| t.to_string())
}

fn ago(ms: i64) -> String {
    if ms < 120_000 {
        format!("{} s", ms / 1000)
    } else {
        format!("{} min", ms / 60_000)
    }
}

/// A run's detail in one short cell: its error, or the start of its result.
fn short_detail(detail: &serde_json::Value) -> String {
    if let Some(e) = detail["error"].as_str() {
        return e.chars().take(80).collect();
    }
    if detail.is_null() {
        return String::new();
    }
    let text = detail.to_string();
    if text.chars().count() > 80 {
        format!("{}...", text.chars().take(77).collect::<String>())
    } else {
        text
    }
}
