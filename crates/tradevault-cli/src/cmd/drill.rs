//! `tradevault drill [--db NAME] [--replica URL] [--json]`: restore the latest state into a scratch
//! directory and check it. With a server running on this data directory and no filter, the
//! server's drill job runs (it writes a sentinel just before, and records the result in its job
//! history and metrics); otherwise the drill runs here, without a sentinel (nothing is writing to
//! the store), comparing row counts with the live database instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tradevault::drill::{self, DrillSpec};

use crate::UsageError;

/// Arguments of `drill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database: `store`, a configured [[database]] name or a SQLite file's path (default:
    /// every configured database with a replica).
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// Restore from this replica instead of the configured ones.
    #[arg(long, value_name = "URL")]
    replica: Option<String>,
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
    let result = match (
        args.db.is_none() && args.replica.is_none(),
        super::serve_address(&config),
    ) {
        (true, Some(addr)) if super::store_in_use(&config) => through_server(addr)?,
        _ => here(&config, &args)?,
    };
    let ok = result["ok"].as_bool().unwrap_or(false);
    if args.json {
        super::print_json(&result)?;
    } else {
        for d in result["drills"].as_array().into_iter().flatten() {
            let sentinel = match d["sentinel_found"].as_bool() {
                Some(true) => "sentinel back",
                Some(false) => "SENTINEL MISSING",
                None => "no sentinel",
            };
            if d["ok"].as_bool().unwrap_or(false) {
                outln!(
                    "{}: restorable: txid {} at {} from {}, integrity ok, {sentinel}, recovered in {:.3} s",
                    d["database"].as_str().unwrap_or("?"),
                    d["txid"],
                    d["point_time"].as_str().unwrap_or("?"),
                    d["source"].as_str().unwrap_or("?"),
                    d["rto_ms"].as_f64().unwrap_or(0.0) / 1000.0
                );
            } else {
                outln!(
                    "{}: DRILL FAILED: {}",
                    d["database"].as_str().unwrap_or("?"),
                    d["error"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the server's drill job and waits for its result.
fn through_server(addr: std::net::SocketAddr) -> anyhow::Result<Value> {
    let mut client = tradevault::http::client::Client::new(addr, Duration::from_secs(60));
    let started = client
        .post("/v1/jobs/drill/run", b"")
        .with_context(|| format!("ask the server at {addr} to run a drill"))?;
    let body = started.json().unwrap_or(Value::Null);
    if started.status != 202 {
        anyhow::bail!(
            "the server at {addr} did not start a drill ({}): {}",
            started.status,
            body["error"]["message"].as_str().unwrap_or("?")
        );
    }
    let id = body["run_id"].as_i64().context("run id")?;
    let deadline = Instant::now() + Duration::from_secs(3_600);
    loop {
        let jobs = client.get("/v1/jobs")?.json()?;
        let run = jobs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"].as_i64() == Some(id));
        if let Some(run) = run
            && run["status"] != "running"
        {
            let mut detail = run["detail"].clone();
            if detail.get("ok").is_none() {
                detail = json!({ "ok": false, "drills": [], "error": detail["error"] });
            }
            return Ok(detail);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the drill did not end within an hour"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the drill in this process.
fn here(config: &tradevault::Config, args: &Args) -> anyhow::Result<Value> {
    let targets: Vec<super::Database> = match args.db.as_deref() {
        Some(db) => vec![super::database(config, Some(db))?],
        None => {
            let store = super::database(config, None)?;
            let with_replicas = !store.replicas.is_empty() || args.replica.is_some();
            let configured = config
                .database
                .iter()
                .map(|d| super::database(config, Some(&d.name)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            with_replicas
                .then_some(store)
                .into_iter()
                .chain(configured)
                .collect()
        }
    };
    if targets.is_empty() {
        return Err(UsageError(
            "nothing to drill: no database has a replica; pass --replica URL".into(),
        )
        .into());
    }
    let scratch = config.store.data_dir.join(".tradevault-drill");
    let mut reports = Vec::new();
    for super::Database {
        name,
        path,
        replicas: mut configured,
    } in targets
    {
        if let Some(url) = &args.replica {
            configured = vec![super::configured_replica(config, url)];
        }
        let replicas = configured
            .iter()
            .map(|c| super::replica_of(c).map(|r| (c.url.clone(), r)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let spec = DrillSpec {
            database: name,
            path,
            replicas,
            sentinel: None,
        };
        reports.push(drill::run(&spec, &scratch, &config.restore));
    }
    let ok = reports.iter().all(|r| r.ok);
    Ok(json!({ "ok": ok, "drills": reports }))
}
