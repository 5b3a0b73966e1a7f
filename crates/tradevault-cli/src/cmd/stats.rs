//! `tradevault stats`: counts, sizes, pages, integrity and schema version, read beside a
//! running server (read-only, never writes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::human_bytes;

/// Arguments of `stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the stats as JSON.
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
    let stats = tradevault::store::stats_of(&conn, &path)?;
    if args.json {
        super::print_json(&stats)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = super::table(&["table", "rows"]);
    for (name, rows) in &stats.tables {
        t.add_row(vec![name.clone(), rows.to_string()]);
    }
    outln!("{t}\n");
    let mut s = super::table(&["", ""]);
    s.add_row(vec!["database".to_owned(), stats.database_path.clone()]);
    s.add_row(vec![
        "schema version".to_owned(),
        stats.schema_version.to_string(),
    ]);
    s.add_row(vec![
        "database file".to_owned(),
        human_bytes(stats.database_file_size_bytes),
    ]);
    s.add_row(vec![
        "wal file".to_owned(),
        human_bytes(stats.wal_file_size_bytes),
    ]);
    s.add_row(vec![
        "pages".to_owned(),
        format!(
            "{} x {} B ({} free)",
            stats.page_count, stats.page_size, stats.freelist_count
        ),
    ]);
    s.add_row(vec!["integrity".to_owned(), stats.integrity.clone()]);
    outln!("{s}");
    Ok(ExitCode::SUCCESS)
}
