//! `tradevault restore --replica URL --output PATH [--txid N | --timestamp T]`: rebuilds a
//! database from a replica (ours or Litestream 0.5's), verified and integrity-checked, into a new
//! file. A progress bar on a terminal; `--json` prints the result on stdout.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tradevault::restore::{self, Check, Plan, Progress, Restored, Stage, Target};

use crate::UsageError;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The replica to restore from: file:///absolute/path, or s3://bucket/path with optional
    /// ?endpoint=http://host:port&region=R&force-path-style=true (credentials in AWS_* variables).
    #[arg(long, value_name = "URL")]
    replica: String,
    /// Where to write the database; must not exist.
    #[arg(long, value_name = "PATH")]
    output: PathBuf,
    /// Restore the state at this time (RFC 3339), exactly, or refuse and name the nearest points.
    #[arg(long, value_name = "RFC3339", conflicts_with = "txid")]
    timestamp: Option<String>,
    /// Restore the state right after this transaction (decimal, or hex with 0x).
    #[arg(long, value_name = "N")]
    txid: Option<String>,
    /// Print the plan (files, bytes, the point reached) and restore nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Check the result with PRAGMA quick_check instead of integrity_check: faster, but indexes
    /// are not compared with their tables.
    #[arg(long)]
    quick_check: bool,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    super::start_logging(&config)?;
    let replica = super::replica_of(&args.replica)?;
    let target = target_of(&args)?;
    let started = Instant::now();
    let plan = restore::plan(&replica, target)?;
    let planned = started.elapsed();
    if args.dry_run {
        print_plan(&plan, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let progress = Progress::default();
    let options = restore::Options {
        limits: config.restore.clone(),
        check: if args.quick_check {
            Check::Quick
        } else {
            Check::Integrity
        },
        progress: Some(&progress),
    };
    let restored = std::thread::scope(|s| {
        let (stop, stopped) = mpsc::channel::<()>();
        let (plan, progress, check) = (&plan, &progress, options.check);
        s.spawn(move || show_progress(plan, progress, check, &stopped));
        let restored = restore::apply_with(&replica, plan, &args.output, &options);
        drop(stop);
        restored
    })?;
    let total = started.elapsed();
    if args.json {
        super::print_json(&summary(&restored, planned, total))?;
    } else {
        let checked = match restored.check {
            Check::Integrity => "integrity ok",
            Check::Quick => "quick_check ok, indexes not compared",
        };
        println!(
            "restored {} to txid {} at {} ({} pages, {}, {checked}) from {} files in {:.2} s",
            restored.output,
            plan.txid,
            plan.point_time,
            restored.pages,
            super::human_bytes(restored.bytes),
            plan.files.len(),
            total.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn target_of(args: &Args) -> anyhow::Result<Target> {
    Ok(match (&args.timestamp, &args.txid) {
        (Some(t), _) => {
            let ts: jiff::Timestamp = t
                .parse()
                .map_err(|_| UsageError(format!("--timestamp {t:?} is not an RFC 3339 time")))?;
            Target::Time(ts.as_millisecond())
        }
        (None, Some(n)) => {
            let parsed = match n.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => n.parse(),
            };
            Target::Txid(parsed.map_err(|_| UsageError(format!("--txid {n:?} is not a number")))?)
        }
        (None, None) => Target::Latest,
    })
}

fn print_plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(plan);
    }
    for (level, min, max, size) in &plan.files {
        println!(
            "level {level}  {}  {}",
            ltx::file_name(*min, *max),
            super::human_bytes(*size)
        );
    }
    println!(
        "would restore txid {} at {} ({} files, {})",
        plan.txid,
        plan.point_time,
        plan.files.len(),
        super::human_bytes(plan.bytes)
    );
    Ok(())
}

/// The `--json` result: the point restored, what it took, and how long each step ran.
fn summary(restored: &Restored, planned: Duration, total: Duration) -> serde_json::Value {
    let plan = &restored.plan;
    serde_json::json!({
        "output": restored.output,
        "txid": plan.txid,
        "point_ms": plan.point_ms,
        "point_time": plan.point_time,
        "files": plan.files.len(),
        "fetched_bytes": plan.bytes,
        "bytes": restored.bytes,
        "pages": restored.pages,
        "page_size": restored.page_size,
        "check": restored.check,
        "durations": {
            "plan_seconds": planned.as_secs_f64(),
            "fetch_apply_seconds": restored.fetch_apply_seconds,
            "check_seconds": restored.check_seconds,
            "sync_seconds": restored.sync_seconds,
            "total_seconds": total.as_secs_f64(),
        },
    })
}

/// Draws a progress bar on stderr while the restore runs, if stderr is a terminal: bytes of LTX
/// files applied, pages written and an ETA, then a spinner during the check. Returns when `stop`'s
/// sender is dropped.
fn show_progress(plan: &Plan, progress: &Progress, check: Check, stop: &mpsc::Receiver<()>) {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(plan.bytes), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let style = |template: &str| {
        ProgressStyle::with_template(template)
            .context("progress bar template")
            .map(|s| s.progress_chars("=> "))
    };
    let apply = style("{msg} [{bar:24}] {binary_bytes}/{binary_total_bytes} eta {eta}");
    let checking = style("{spinner} {msg} {elapsed}");
    if let Ok(s) = &apply {
        bar.set_style(s.clone());
    }
    let files = plan.files.len() as u64;
    let mut stage = Stage::Apply;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(100)) {
        if stage == Stage::Apply && progress.stage() != Stage::Apply {
            stage = progress.stage();
            if let Ok(s) = &checking {
                bar.set_style(s.clone());
            }
            bar.set_message(format!("{} of {} pages", check.pragma(), progress.pages()));
        }
        if stage == Stage::Apply {
            bar.set_position(progress.applied_bytes());
            bar.set_message(format!(
                "file {}/{files}, {} pages",
                (progress.files() + 1).min(files),
                progress.pages()
            ));
        }
        bar.tick();
    }
    bar.finish_and_clear();
}
