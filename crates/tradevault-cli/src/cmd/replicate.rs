//! `tradevault replicate DB_PATH REPLICA_URL...`: the sidecar. Ships every transaction another
//! program commits to DB_PATH (a SQLite database in WAL mode) to each replica as LTX files that
//! `tradevault restore` and `litestream restore` read. Runs until SIGINT/SIGTERM, or once with
//! `--once`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tradevault::replicate::{Replicator, Synced};

use crate::UsageError;

/// Arguments of `replicate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQLite database to replicate (in WAL mode).
    db: PathBuf,
    /// Replicas, as file:///absolute/path URLs (repeatable).
    #[arg(required = true)]
    replicas: Vec<String>,
    /// How often to ship new transactions, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    interval_ms: u64,
    /// Ship what is there now and exit.
    #[arg(long)]
    once: bool,
    /// With --once, print what was shipped as JSON.
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
    if !args.db.is_file() {
        return Err(UsageError(format!("{}: no such database file", args.db.display())).into());
    }
    let mut replicators = Vec::new();
    for url in &args.replicas {
        let replicator = Replicator::new(&args.db, super::replica_of(url)?)
            .with_context(|| format!("open replica {url}"))?;
        replicators.push((url.clone(), replicator));
    }
    if args.once {
        let mut report = Vec::new();
        for (url, r) in &mut replicators {
            let synced = r
                .sync(jiff::Timestamp::now().as_millisecond())
                .with_context(|| format!("replicate to {url}"))?;
            report.push((url.clone(), synced));
        }
        print_report(&report, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    runtime.block_on(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
        let stop = shutdown();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => break,
            }
            for (url, r) in &mut replicators {
                // One failing replica is logged and retried next tick; the others go on.
                match r.sync(jiff::Timestamp::now().as_millisecond()) {
                    Ok(Synced::Nothing) => {}
                    Ok(synced) => tracing::info!(replica = %url, ?synced, "ltx file shipped"),
                    Err(e) => tracing::warn!(replica = %url, error = %format!("{:#}", anyhow::Error::from(e)), "replication failed; retrying"),
                }
            }
        }
        tracing::info!("replication stopped");
    });
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &[(String, Synced)], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let items: Vec<_> = report
            .iter()
            .map(|(url, s)| match s {
                Synced::Nothing => json!({ "replica": url, "shipped": "nothing" }),
                Synced::Snapshot { txid, pages, bytes } => {
                    json!({ "replica": url, "shipped": "snapshot", "txid": txid, "pages": pages, "bytes": bytes })
                }
                Synced::Transactions { txid, transactions, pages, bytes } => json!({
                    "replica": url, "shipped": "transactions", "txid": txid,
                    "transactions": transactions, "pages": pages, "bytes": bytes
                }),
            })
            .collect();
        return super::print_json(&items);
    }
    for (url, s) in report {
        match s {
            Synced::Nothing => println!("{url}: up to date"),
            Synced::Snapshot { txid, pages, bytes } => {
                println!("{url}: snapshot at txid {txid}: {pages} pages, {bytes} bytes")
            }
            Synced::Transactions {
                txid,
                transactions,
                pages,
                bytes,
            } => {
                println!(
                    "{url}: txid {txid}: {transactions} transactions, {pages} pages, {bytes} bytes"
                )
            }
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
