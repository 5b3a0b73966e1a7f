//! `tradevault restore --replica URL --output PATH [--txid N | --timestamp T]`: rebuilds a
//! database from a replica (ours or Litestream 0.5's), verified and integrity-checked, into a new
//! file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tradevault::restore::{self, Target};

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
    /// Restore the newest state replicated at or before this time (RFC 3339).
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
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    super::start_logging(&config)?;
    let replica = super::replica_of(&args.replica)?;
    let target = match (&args.timestamp, &args.txid) {
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
    };
    let plan = restore::plan(&replica, target)?;
    if args.dry_run {
        if args.json {
            super::print_json(&plan)?;
        } else {
            for (level, min, max, size) in &plan.files {
                println!(
                    "level {level}  {}  {}",
                    ltx::file_name(*min, *max),
                    super::human_bytes(*size)
                );
            }
            println!(
                "would restore txid {} ({} files, {})",
                plan.txid,
                plan.files.len(),
                super::human_bytes(plan.bytes)
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let restored = restore::apply(&replica, &plan, &args.output)?;
    if args.json {
        super::print_json(&restored)?;
    } else {
        println!(
            "restored {} to txid {} ({} pages, {}, integrity ok) from {} files",
            restored.output,
            plan.txid,
            restored.pages,
            super::human_bytes(restored.bytes),
            plan.files.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
