//! `tradevault status [DB_PATH...]`: replication of the store, of every `[[database]]`, and of
//! every database a running `replicate` or `serve` registered (see `cmd::registry_dir`), or of the
//! databases named, as the process replicating each last reported it (it writes `status.json` in
//! the database's local log every second): position, lag, last error, bytes, files, restorable
//! window per replica; and the latest runs of `serve`'s scheduled jobs, from the store's
//! `job_runs` table. A report older than a few seconds, or from a process that is gone, is shown
//! as not running; the registration of a process that is gone, for a database file that is gone
//! too, is removed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use tradevault::replicate::status::{self, DatabaseStatus};

use crate::UsageError;

/// A report older than this means nothing is replicating the database now.
const STALE_MS: i64 = 5_000;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Databases to report on (their files); default: the store, every [[database]] of the
    /// config, and every database a running `replicate` or `serve` registered.
    #[arg(value_name = "DB_PATH")]
    databases: Vec<PathBuf>,
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

/// A database to report on, and how it was found.
struct Entry {
    name: String,
    path: PathBuf,
    /// `store`, `config`, `argument` or `registry`.
    found_by: &'static str,
    /// The process that registered it, for `registry`.
    registered_pid: Option<u32>,
    status: Option<DatabaseStatus>,
}

impl Entry {
    /// Whether a process is replicating it now: a fresh report, from a process that is alive
    /// when it registered here (this machine and user; a report in a shared directory may come
    /// from another pid namespace, where its pid means nothing).
    fn replicating(&self, now: i64) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| now - s.updated_at_ms <= STALE_MS && !self.gone(s.pid))
    }

    /// Whether `pid`, the process that registered this database, is known to have ended.
    fn gone(&self, pid: u32) -> bool {
        self.registered_pid.is_some() && !super::process_alive(pid)
    }
}

/// Removes `file`, the registration `r`, if its process is known to be gone (a pid of this pid
/// namespace) and its database file is known not to exist (not merely unreadable); true if it
/// did. The file is read again first: a process that registered the same database since keeps
/// its registration.
fn forgotten(file: &Path, r: &status::Registration) -> bool {
    let here = r.pid_ns.is_some() && r.pid_ns == status::pid_namespace();
    if !here
        || super::process_alive(r.pid)
        || !r.path.is_absolute()
        || !matches!(r.path.try_exists(), Ok(false))
    {
        return false;
    }
    let same = std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<status::Registration>(&b).ok())
        .is_some_and(|now| now == *r);
    same && std::fs::remove_file(file).is_ok()
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |name: String, path: PathBuf, found_by, registered_pid: Option<u32>| {
        let key = super::absolute(&path);
        if seen.insert(key.clone()) {
            entries.push(Entry {
                name,
                path,
                found_by,
                registered_pid,
                status: None,
            });
        } else if let Some(e) = entries
            .iter_mut()
            .find(|e| e.registered_pid.is_none() && super::absolute(&e.path) == key)
        {
            // Found in the config and registered too: the registration says whether its process
            // is gone (a SIGKILLed server's last report looks fresh for a few seconds).
            e.registered_pid = registered_pid;
        }
    };
    if args.databases.is_empty() {
        add("store".into(), config.database_path(), "store", None);
        for d in &config.database {
            add(d.name.clone(), d.path.clone(), "config", None);
        }
        for (file, r) in super::registrations() {
            // A killed process's registration stays, so that `status` says it is not running;
            // once its database is gone too, there is nothing left to say: forget it.
            if forgotten(&file, &r) {
                continue;
            }
            add(r.database, r.path, "registry", Some(r.pid));
        }
    } else {
        for path in &args.databases {
            if !path.exists() && !status::local_log_dir(path).exists() {
                return Err(
                    UsageError(format!("{}: no such database file", path.display())).into(),
                );
            }
            let name = path
                .file_stem()
                .map_or_else(|| "db".into(), |s| s.to_string_lossy().into_owned());
            add(name, path.clone(), "argument", None);
        }
    }
    for e in &mut entries {
        e.status = status::read(&status::local_log_dir(&e.path))?;
        if let (Some(s), "argument") = (&e.status, e.found_by) {
            e.name = s.database.clone();
        }
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let job_runs = if args.databases.is_empty() {
        Some(recent_job_runs(&config.database_path()))
    } else {
        None
    };
    if args.json {
        let mut items: Vec<_> = entries
            .iter()
            .map(|e| {
                let mut item = json!({
                    "database": e.name, "path": e.path, "found_by": e.found_by,
                    "replicating": e.replicating(now), "status": e.status,
                });
                if let Some(pid) = e.registered_pid {
                    item["registered_pid"] = json!(pid);
                }
                item
            })
            .collect();
        // The store's entry carries the job history (the jobs run in its server).
        if let (Some(runs), Some(store)) = (&job_runs, items.first_mut()) {
            store["job_runs"] = json!(runs);
        }
        super::print_json(&items)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in &entries {
        print_entry(e, now);
    }
    let Some(job_runs) = job_runs else {
        return Ok(ExitCode::SUCCESS);
    };
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

fn print_entry(e: &Entry, now: i64) {
    let Some(s) = &e.status else {
        let state = match e.registered_pid {
            Some(pid) if super::process_alive(pid) => {
                format!("starting (pid {pid}, no report yet)")
            }
            Some(pid) => format!("NOT RUNNING: process {pid} is gone, and it never reported"),
            None => "not replicated (no status found)".into(),
        };
        outln!("{} ({}): {state}\n", e.name, e.path.display());
        return;
    };
    let age = now - s.updated_at_ms;
    let state = if e.replicating(now) {
        format!("replicating (pid {})", s.pid)
    } else if e.gone(s.pid) {
        format!(
            "NOT RUNNING: process {} is gone; last report {} ago",
            s.pid,
            ago(age)
        )
    } else {
        format!("NOT RUNNING: last report {} ago", ago(age))
    };
    outln!(
        "{} ({}): {state}; txid {} at {}; wal {}; {} checkpoints",
        e.name,
        e.path.display(),
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
            match (r.txid, r.layout_txid) {
                (Some(t), Some(l)) => format!("{t} (ltx/ {l})"),
                (Some(t), None) => t.to_string(),
                (None, _) => "?".into(),
            },
            time(r.txid_time_ms),
            format!("{:.3} s", r.lag_seconds),
            super::human_bytes(r.bytes_uploaded),
            r.files.map_or("-".into(), |f| f.to_string()),
            window,
            match (&r.last_error, &r.journal_error) {
                (Some(e), _) => e.clone(),
                (None, Some(e)) => format!("journal: {e}"),
                (None, None) => String::new(),
            },
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
