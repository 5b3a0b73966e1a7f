//! `tradevault serve`: open the store and serve the HTTP API until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tradevault::clock::SystemClock;
use tradevault::replicate::{Engine, EngineOptions};
use tradevault::store::Hooks;
use tradevault::store::writer::CheckpointOwner;

use crate::UsageError;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (default 127.0.0.1:7878); port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Replicate the store continuously to this replica, a file:///absolute/path URL (repeatable).
    #[arg(long, value_name = "URL")]
    replica: Vec<String>,
    /// How often the replicas receive new transactions, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    sync_interval_ms: u64,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let mut config = super::load_config(config_file, data_dir)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    let addr = config
        .listen_addr()
        .map_err(|m| UsageError(format!("--listen: {m}")))?;
    super::start_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "listen on {addr} (is another process using it? pass --listen with another port)"
            )
        })?;
        let replicas = args
            .replica
            .iter()
            .map(|url| super::replica_of(url).map(|r| (url.clone(), r)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let clock: Arc<dyn tradevault::clock::Clock> = Arc::new(SystemClock);
        // With replicas, the replication engine owns checkpoints so the WAL is never reset before
        // it was shipped.
        let checkpoint = if replicas.is_empty() {
            CheckpointOwner::Store
        } else {
            CheckpointOwner::External
        };
        let store = Arc::new(tradevault::Store::open_with(
            &config.store,
            clock.clone(),
            Hooks {
                checkpoint,
                ..Hooks::default()
            },
        )?);
        let engine = if replicas.is_empty() {
            None
        } else {
            let options = EngineOptions {
                interval: std::time::Duration::from_millis(args.sync_interval_ms.max(1)),
                checkpoint_wal_bytes: config.store.checkpoint_wal_bytes,
                busy_timeout_ms: config.store.busy_timeout_ms,
            };
            Some(Engine::start(store.clone(), replicas, clock, options)?)
        };
        let served =
            tradevault::http::serve(&config, store.clone(), listener, shutdown_signal()).await;
        if let Some(engine) = engine {
            // Ships what was committed last, before the store closes.
            tokio::task::spawn_blocking(move || engine.stop())
                .await
                .context("stop replication")?;
        }
        match Arc::try_unwrap(store) {
            Ok(store) => store.close(),
            Err(_) => tracing::warn!(
                "store still in use at shutdown; its writer stops when the last request ends"
            ),
        }
        served?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
