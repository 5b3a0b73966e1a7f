//! `tradevault serve`: open the store and serve the HTTP API until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tradevault::clock::SystemClock;

use crate::UsageError;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (default 127.0.0.1:7878); port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
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
        let store = tradevault::Store::open(&config.store, Arc::new(SystemClock))?;
        tradevault::http::serve(&config, store, listener, shutdown_signal()).await?;
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
