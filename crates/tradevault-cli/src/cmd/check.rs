//! `tradevault check`: integrity (quick, or full with `--full`), schema, foreign keys, and every
//! position recomputed from its fills. Exit 1 when any check fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run PRAGMA integrity_check (reads every page) instead of quick_check.
    #[arg(long)]
    full: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    let path = config.database_path();
    let conn = tradevault::store::open_read_only(&path)?;
    let report = tradevault::store::check(&conn, &path, args.full)?;
    if args.json {
        super::print_json(&report)?;
    } else {
        let mut t = super::table(&["check", "result", "detail"]);
        for c in &report.checks {
            t.add_row(vec![
                c.name.clone(),
                if c.ok { "ok".into() } else { "FAILED".into() },
                c.detail.clone(),
            ]);
        }
        outln!("{t}");
    }
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("tradevault: {} failed its checks", report.database_path);
        eprintln!("hint: restore from a backup, or inspect the failed checks above");
        Ok(ExitCode::from(1))
    }
}
