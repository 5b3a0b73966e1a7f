//! `tradevault init`: create the store (or migrate an existing one) and exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::json;
use tradevault::clock::SystemClock;

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct Args {
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
    let store = tradevault::Store::open(&config.store, Arc::new(SystemClock))?;
    let path = store.path().display().to_string();
    store.close();
    let version = tradevault::store::schema::SCHEMA_VERSION;
    if args.json {
        super::print_json(&json!({ "database_path": path, "schema_version": version }))?;
    } else {
        outln!("store ready: {path} (schema version {version})");
    }
    Ok(ExitCode::SUCCESS)
}
