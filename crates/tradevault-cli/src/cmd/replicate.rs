//! `tradevault replicate DB_PATH REPLICA_URL...`: the sidecar. Ships every transaction another
//! program commits to DB_PATH (a SQLite database in WAL mode) to each replica as LTX files that
//! `tradevault restore` and `litestream restore` read, in a directory or an S3 bucket. With
//! `--config` and no DB_PATH, replicates every `[[database]]` of the config that has a replica
//! (one without is only backed up). Runs until SIGINT/SIGTERM, or once with `--once`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tradevault::config::ReplicaConfig;
use tradevault::replicate::status::DatabaseStatus;
use tradevault::replicate::{DatabaseSpec, Engine, ReplicaSpec, Source};

use crate::UsageError;

/// Arguments of `replicate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQLite database to replicate (in WAL mode); omit it to replicate every [[database]]
    /// of the config file.
    db: Option<PathBuf>,
    /// Replicas (repeatable): file:///absolute/path, or s3://bucket/path with optional
    /// ?endpoint=http://host:port&region=R&force-path-style=true; S3 credentials come from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL),
    /// or for [[database.replica]] entries from their access_key_id and secret_access_key.
    replicas: Vec<String>,
    /// Least time between two uploads to each replica, in milliseconds (default: 0 for file
    /// replicas, as soon as committed; 1000 for S3).
    #[arg(long, value_name = "MS")]
    interval_ms: Option<u64>,
    /// How often to look at the database's WAL for new commits, in milliseconds.
    #[arg(long, default_value_t = 10, value_name = "MS")]
    poll_interval_ms: u64,
    /// Ship what is there now to every replica and exit.
    #[arg(long)]
    once: bool,
    /// With --once, print what each replica holds as JSON.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics (`GET /metrics`) and `GET /health/live` on this address, e.g.
    /// 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    super::start_logging(&config)?;
    let databases = match &args.db {
        Some(db) => {
            if args.replicas.is_empty() {
                return Err(
                    UsageError("give at least one replica URL after DB_PATH".into()).into(),
                );
            }
            if !db.is_file() {
                return Err(UsageError(format!("{}: no such database file", db.display())).into());
            }
            let replicas = args
                .replicas
                .iter()
                .map(|url| {
                    let mut c = ReplicaConfig::new(url.clone());
                    c.sync_interval_ms = args.interval_ms;
                    ReplicaSpec::from_config(&c).map_err(|e| UsageError(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let name = db
                .file_stem()
                .map_or_else(|| "db".into(), |s| s.to_string_lossy().into_owned());
            vec![DatabaseSpec {
                name,
                source: Source::External(db.clone()),
                replicas,
                poll_interval: Duration::from_millis(args.poll_interval_ms.max(1)),
                checkpoint_wal_bytes: config.store.checkpoint_wal_bytes,
            }]
        }
        None if config.database.is_empty() => {
            return Err(UsageError(
                "give DB_PATH and replica URLs, or --config with [[database]] entries".into(),
            )
            .into());
        }
        None => {
            let databases = replicated(&config)?;
            if databases.is_empty() {
                return Err(UsageError(
                    "nothing to replicate: no [[database]] has a [[database.replica]] (those without one are only backed up)".into(),
                )
                .into());
            }
            for d in config.database.iter().filter(|d| !d.replica.is_empty()) {
                if !d.path.is_file() {
                    return Err(UsageError(format!(
                        "database {:?}: {}: no such database file",
                        d.name,
                        d.path.display()
                    ))
                    .into());
                }
            }
            databases
        }
    };
    let names: Vec<(String, PathBuf)> = databases
        .iter()
        .filter_map(|d| match &d.source {
            Source::External(path) => Some((d.name.clone(), path.clone())),
            Source::Store { .. } => None,
        })
        .collect();
    if args.metrics_listen.is_some() {
        // Before the engine starts: its counters are set up at 0 as it does.
        tradevault::metrics::install();
    }
    let clock: Arc<dyn tradevault::clock::Clock> = Arc::new(tradevault::clock::SystemClock);
    let engine = Engine::start(databases, clock).context("start replication")?;
    // So that `tradevault status` finds this sidecar without a config; gone on a clean stop.
    let _registered = super::Registered::new(names.iter().map(|(n, p)| (n.as_str(), p.as_path())));
    if args.once {
        let synced = engine.wait_synced(Duration::from_secs(300));
        engine.stop();
        let status = synced.context("replicate")?;
        print_report(&status, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    runtime.block_on(async {
        match args.metrics_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listen on {addr}"))?;
                outln!("metrics on http://{}/metrics", listener.local_addr()?);
                tradevault::http::serve_metrics(listener, shutdown()).await?;
            }
            None => shutdown().await,
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping replication");
    engine.stop();
    Ok(ExitCode::SUCCESS)
}

/// The `[[database]]` entries to replicate: those with a replica. One without is backed up and
/// drilled from its backups, and not replicated.
pub fn replicated(config: &tradevault::Config) -> anyhow::Result<Vec<DatabaseSpec>> {
    let mut specs = Vec::new();
    for d in &config.database {
        if d.replica.is_empty() {
            tracing::info!(database = %d.name, "no [[database.replica]]: not replicated (backups only)");
            continue;
        }
        specs.push(DatabaseSpec::from_config(d).map_err(|e| UsageError(e.to_string()))?);
    }
    Ok(specs)
}

fn print_report(status: &[DatabaseStatus], as_json: bool) -> anyhow::Result<()> {
    let rows = status.iter().flat_map(|db| {
        db.replicas.iter().map(move |r| {
            let shipped = match &r.last_file {
                None => "nothing",
                Some(f) if f.contains("/0000000000000001-") => "snapshot",
                Some(_) => "transactions",
            };
            (db, r, shipped)
        })
    });
    if as_json {
        let items: Vec<_> = rows
            .map(|(db, r, shipped)| {
                json!({
                    "database": db.database, "replica": r.name, "shipped": shipped,
                    "txid": r.txid, "file": r.last_file, "bytes": r.bytes_uploaded,
                    "files": r.files_uploaded,
                })
            })
            .collect();
        return super::print_json(&items);
    }
    for (db, r, shipped) in rows {
        match shipped {
            "nothing" => outln!("{} -> {}: up to date", db.database, r.name),
            _ => outln!(
                "{} -> {}: txid {}: {} file(s), {} ({shipped})",
                db.database,
                r.name,
                r.txid.unwrap_or(0),
                r.files_uploaded,
                super::human_bytes(r.bytes_uploaded)
            ),
        }
    }
    Ok(())
}

async fn shutdown() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
