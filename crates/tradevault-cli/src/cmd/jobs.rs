//! The jobs `serve` schedules, from `[jobs]` and what they work on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tradevault::Config;
use tradevault::config::ReplicaConfig;
use tradevault::drill::{self, DrillSpec};
use tradevault::jobs::JobSpec;
use tradevault::replica::Replica;
use tradevault::replicate::{Engine, StoreLink};

/// What the jobs of a running server work with.
pub struct Runtime {
    /// The store's replicas (the config's and `--replica`'s).
    pub store_replicas: Vec<ReplicaConfig>,
    /// The replication engine, if anything is replicated.
    pub engine: Option<Arc<Engine>>,
    /// The store's link to the engine, if the store is replicated.
    pub link: Option<Arc<StoreLink>>,
}

/// A database a drill restores: (name, live path, replica URLs).
type Drilled = (String, PathBuf, Vec<(String, String)>);

/// The jobs to schedule: each `[jobs]` entry that has something to work on.
pub fn specs(config: &Config, rt: &Runtime) -> Vec<JobSpec> {
    let mut specs = Vec::new();
    let schedule = |job: &str| {
        config
            .jobs
            .schedules()
            .into_iter()
            .find(|(name, _)| *name == job)
            .map(|(_, s)| s.to_owned())
            .unwrap_or_default()
    };
    let mut drilled: Vec<Drilled> = Vec::new();
    if !rt.store_replicas.is_empty() {
        drilled.push((
            "store".into(),
            config.database_path(),
            rt.store_replicas.iter().map(|r| (r.display_name(), r.url.clone())).collect(),
        ));
    }
    for d in &config.database {
        drilled.push((
            d.name.clone(),
            d.path.clone(),
            d.replica.iter().map(|r| (r.display_name(), r.url.clone())).collect(),
        ));
    }
    if !drilled.is_empty() {
        let (engine, link) = (rt.engine.clone(), rt.link.clone());
        let scratch = config.store.data_dir.join(".tradevault-drill");
        let limits = config.restore.clone();
        specs.push(JobSpec {
            name: "drill".into(),
            schedule: schedule("drill"),
            run: Arc::new(move |ctx| {
                let mut reports = Vec::new();
                for (name, path, urls) in &drilled {
                    let store = name == "store";
                    // The run's own job_runs row is the sentinel: wait until the replicas hold it.
                    if store
                        && let (Some(engine), Some(link)) = (&engine, &link)
                        && let Err(e) = engine.wait_replicated("store", link.last_commit(), Duration::from_secs(60))
                    {
                        tracing::warn!(error = %e, "drill: the replicas do not hold the sentinel yet");
                    }
                    let replicas = urls
                        .iter()
                        .filter_map(|(n, u)| Replica::parse(u).ok().map(|r| (n.clone(), r)))
                        .collect();
                    let spec = DrillSpec {
                        database: name.clone(),
                        path: path.clone(),
                        replicas,
                        sentinel: store.then_some(ctx.run_id),
                    };
                    reports.push(drill::run(&spec, &scratch, &limits));
                }
                let ok = reports.iter().all(|r| r.ok);
                Ok(json!({ "ok": ok, "drills": reports }))
            }),
        });
    }
    specs
}
