//! `tradevault serve`: open the store and serve the HTTP API until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tradevault::clock::SystemClock;
use tradevault::config::ReplicaConfig;
use tradevault::jobs::Scheduler;
use tradevault::replicate::{DatabaseSpec, Engine, ReplicaSpec, Source, StoreLink};
use tradevault::store::Hooks;
use tradevault::store::writer::CheckpointOwner;

use crate::UsageError;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (default 127.0.0.1:7878); port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Replicate the store continuously to this replica (repeatable): file:///absolute/path, or
    /// s3://bucket/path with optional ?endpoint=http://host:port&region=R&force-path-style=true
    /// (credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); adds to the config's
    /// [[replication.replica]] entries.
    #[arg(long, value_name = "URL")]
    replica: Vec<String>,
    /// Least time between two uploads to the --replica replicas, in milliseconds (default: 0 for
    /// file replicas, as soon as committed; 1000 for S3).
    #[arg(long, value_name = "MS")]
    sync_interval_ms: Option<u64>,
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
    // Before anything records a metric: what the store and the replication engine register at
    // start (counters at 0) would otherwise go nowhere.
    tradevault::metrics::install();
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
        let mut store_replicas = config.replication.replica.clone();
        for url in &args.replica {
            let mut r = ReplicaConfig::new(url.clone());
            r.sync_interval_ms = args.sync_interval_ms;
            store_replicas.push(r);
        }
        let mut replica_specs = store_replicas
            .iter()
            .map(|r| ReplicaSpec::from_config(r).map_err(|e| UsageError(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut databases = super::replicate::replicated(&config)?;
        let sync = if config.replication.mode == "sync" {
            if replica_specs.is_empty() {
                return Err(UsageError(
                    "replication.mode = \"sync\" needs at least one replica of the store".into(),
                )
                .into());
            }
            let needed = usize::try_from(config.replication.sync_replicas).unwrap_or(usize::MAX);
            if needed > replica_specs.len() {
                return Err(UsageError(format!(
                    "replication.sync_replicas is {needed} but the store has {} replicas",
                    replica_specs.len()
                ))
                .into());
            }
            Some((
                needed,
                std::time::Duration::from_millis(config.replication.sync_timeout_ms),
            ))
        } else {
            None
        };
        let clock: Arc<dyn tradevault::clock::Clock> = Arc::new(SystemClock);
        // With replicas, the replication engine owns checkpoints so the WAL is never reset before
        // it was shipped.
        let link = (!replica_specs.is_empty()).then(|| StoreLink::new(sync));
        let hooks = match &link {
            None => Hooks::default(),
            Some(link) => Hooks {
                checkpoint: CheckpointOwner::External,
                listeners: vec![link.clone()],
                gate: sync.map(|_| link.clone() as Arc<dyn tradevault::store::writer::CommitGate>),
            },
        };
        let store = Arc::new(tradevault::Store::open_with(
            &config.store,
            clock.clone(),
            hooks,
        )?);
        // Where `tradevault restore --in-place` and `drill` find this server: written once the
        // store's lock is ours, removed however serve ends.
        let _info = ServeInfo::write(&config, &listener)?;
        let runtime_link = link.clone();
        if let Some(link) = link {
            databases.insert(
                0,
                DatabaseSpec {
                    name: "store".into(),
                    source: Source::Store {
                        store: store.clone(),
                        link,
                        busy_timeout_ms: config.store.busy_timeout_ms,
                    },
                    replicas: std::mem::take(&mut replica_specs),
                    poll_interval: std::time::Duration::from_millis(10),
                    checkpoint_wal_bytes: config.store.checkpoint_wal_bytes,
                },
            );
        }
        let clock_for_jobs = clock.clone();
        let names: Vec<(String, PathBuf)> = databases
            .iter()
            .map(|d| match &d.source {
                Source::Store { store, .. } => (d.name.clone(), store.path().to_owned()),
                Source::External(path) => (d.name.clone(), path.clone()),
            })
            .collect();
        let engine = if databases.is_empty() {
            None
        } else {
            Some(Arc::new(Engine::start(databases, clock)?))
        };
        // So that `tradevault status` finds what this server replicates without its config.
        let _registered =
            super::Registered::new(names.iter().map(|(n, p)| (n.as_str(), p.as_path())));
        let runtime = super::jobs::Runtime {
            store: store.clone(),
            store_replicas: store_replicas.clone(),
            engine: engine.clone(),
            link: runtime_link,
        };
        let jobs = Scheduler::new(
            store.clone(),
            clock_for_jobs,
            super::jobs::specs(&config, &runtime),
        )
        .await
        .map_err(|e| UsageError(e.to_string()))?;
        let (stop_jobs, jobs_stopped) = tokio::sync::oneshot::channel::<()>();
        let scheduler = tokio::spawn(jobs.clone().run(async move {
            let _ = jobs_stopped.await;
        }));
        let served = tradevault::http::serve(
            &config,
            store.clone(),
            Some(jobs),
            listener,
            shutdown_signal(),
        )
        .await;
        let _ = stop_jobs.send(());
        let _ = scheduler.await;
        drop(runtime);
        if let Some(engine) = engine {
            // Ships what was committed last, before the store closes. (A job still running keeps
            // its own handle; the engine then stops when that job ends.)
            match Arc::try_unwrap(engine) {
                Ok(engine) => tokio::task::spawn_blocking(move || engine.stop())
                    .await
                    .context("stop replication")?,
                Err(_) => {
                    tracing::warn!("a job still uses replication; it stops when the job ends")
                }
            }
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

/// `<data_dir>/serve.json` (pid and address) for as long as it lives.
struct ServeInfo(std::path::PathBuf);

impl ServeInfo {
    fn write(
        config: &tradevault::Config,
        listener: &tokio::net::TcpListener,
    ) -> anyhow::Result<ServeInfo> {
        let path = super::serve_info_path(config);
        let listening = listener.local_addr().context("read listen address")?;
        let info =
            serde_json::json!({ "pid": std::process::id(), "listen": listening.to_string() });
        if let Err(e) = std::fs::write(&path, info.to_string()) {
            tracing::warn!(path = %path.display(), error = %e, "could not record the server's address");
        }
        Ok(ServeInfo(path))
    }
}

impl Drop for ServeInfo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
