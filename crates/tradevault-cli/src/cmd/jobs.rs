//! The jobs `serve` schedules, from `[jobs]` and what they work on.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tradevault::backup::{self, Catalog, CreateOptions, Kind, Target, VerifyOptions};
use tradevault::config::ReplicaConfig;
use tradevault::drill::{self, DrillOptions};
use tradevault::jobs::JobSpec;
use tradevault::replicate::{Engine, StoreLink};
use tradevault::restore::Check;
use tradevault::{Config, Store};

/// What the jobs of a running server work with.
pub struct Runtime {
    /// The store (its backup_metadata mirrors the targets' catalogs).
    pub store: Arc<Store>,
    /// The store's replicas (the config's and `--replica`'s).
    pub store_replicas: Vec<ReplicaConfig>,
    /// The replication engine, if anything is replicated.
    pub engine: Option<Arc<Engine>>,
    /// The store's link to the engine, if the store is replicated.
    pub link: Option<Arc<StoreLink>>,
}

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
    let targets: Vec<Target> = config
        .backup
        .target
        .iter()
        .filter_map(|t| match Target::from_config(t) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(target = %t.name, error = %e, "backup target unusable; its jobs skip it");
                None
            }
        })
        .collect();
    if !targets.is_empty() {
        let mut backed_up = vec![("store".to_owned(), config.database_path())];
        backed_up.extend(
            config
                .database
                .iter()
                .map(|d| (d.name.clone(), d.path.clone())),
        );
        let (cfg, t, store) = (config.backup.clone(), targets.clone(), rt.store.clone());
        specs.push(JobSpec {
            name: "backup".into(),
            schedule: schedule("backup"),
            run: Arc::new(move |_| {
                let now = now_ms;
                let mut results = Vec::new();
                let mut ok = true;
                for (name, path) in &backed_up {
                    let options = CreateOptions {
                        db: path.clone(),
                        source: None,
                        database: name.clone(),
                        kind: Kind::Scheduled,
                        config: &cfg,
                        full: false,
                        progress: None,
                        now: &now,
                    };
                    match backup::create(&t, &options) {
                        Ok(manifests) => results.extend(manifests.iter().zip(&t).map(|(m, t)| {
                            json!({ "database": name, "target": t.name, "id": m.id,
                                    "incremental": m.parent.is_some(), "pages_stored": m.pages_stored,
                                    "stored_bytes": m.stored_bytes(), "size_bytes": m.size_bytes() })
                        })),
                        Err(e) => {
                            ok = false;
                            results.push(json!({ "database": name, "error": e.to_string() }));
                        }
                    }
                }
                mirror(&store, &t);
                Ok(json!({ "ok": ok, "backups": results }))
            }),
        });
        // Run on demand only: a `backup` command beside the server asks for it, since the store
        // it would mirror into is this process's.
        let (t, store) = (targets.clone(), rt.store.clone());
        specs.push(JobSpec {
            name: "mirror".into(),
            schedule: String::new(),
            run: Arc::new(move |_| {
                mirror(&store, &t);
                let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
                Ok(json!({ "ok": true, "targets": names }))
            }),
        });
        let (t, store) = (targets.clone(), rt.store.clone());
        specs.push(JobSpec {
            name: "prune".into(),
            schedule: schedule("prune"),
            run: Arc::new(move |_| {
                let now = now_ms();
                let mut results = Vec::new();
                let mut ok = true;
                for target in &t {
                    let result = Catalog::load(target).and_then(|catalog| {
                        let leftovers = backup::retention::leftovers(target, &catalog, now)?;
                        let plan = backup::retention::plan(
                            &target.name,
                            &catalog,
                            target.rules.as_ref(),
                            now,
                            leftovers,
                        );
                        if plan.is_empty() && plan.refused.is_none() {
                            return Ok(json!({ "target": target.name, "deleted": 0 }));
                        }
                        let pruned = backup::retention::apply(target, &plan)?;
                        Ok(json!({ "target": target.name, "deleted": plan.delete.len(), "bytes": plan.bytes, "pruned": pruned }))
                    });
                    match result {
                        Ok(v) => results.push(v),
                        Err(e) => {
                            ok = false;
                            results.push(json!({ "target": target.name, "error": e.to_string() }));
                        }
                    }
                }
                mirror(&store, &t);
                Ok(json!({ "ok": ok, "targets": results }))
            }),
        });
        let (t, store) = (targets.clone(), rt.store.clone());
        let scratch = config.store.data_dir.join(".tradevault-verify");
        specs.push(JobSpec {
            name: "verify".into(),
            schedule: schedule("verify"),
            run: Arc::new(move |_| {
                let now = now_ms;
                let mut results = Vec::new();
                let mut ok = true;
                if let Err(e) = std::fs::create_dir_all(&scratch) {
                    return Ok(json!({ "ok": false, "error": format!("create {}: {e}", scratch.display()) }));
                }
                for target in &t {
                    let catalog = match Catalog::load(target) {
                        Ok(c) => c,
                        Err(e) => {
                            ok = false;
                            results.push(json!({ "target": target.name, "error": e.to_string() }));
                            continue;
                        }
                    };
                    // The newest backup of each database deeply (restored and checked, unless it
                    // is encrypted: this host holds no identity), the others never verified by
                    // their checksums.
                    let newest: Vec<String> =
                        catalog.newest_of_each_file().into_iter().map(|b| b.id.clone()).collect();
                    for b in &catalog.backups {
                        let deep = newest.contains(&b.id) && !b.encrypted;
                        if !deep && b.verified.is_some() {
                            continue;
                        }
                        let options = VerifyOptions {
                            deep,
                            check: Check::Integrity,
                            identity: None,
                            scratch_dir: Some(scratch.clone()),
                            now: &now,
                            record: true,
                        };
                        match backup::verify(target, &b.id, &options) {
                            Ok(v) => {
                                ok &= v.ok;
                                results.push(json!({ "target": target.name, "verification": v }));
                            }
                            Err(e) => {
                                ok = false;
                                results.push(json!({ "target": target.name, "id": b.id, "error": e.to_string() }));
                            }
                        }
                    }
                }
                mirror(&store, &t);
                Ok(json!({ "ok": ok, "verified": results }))
            }),
        });
    }
    let replicated =
        !rt.store_replicas.is_empty() || config.database.iter().any(|d| !d.replica.is_empty());
    if replicated || !targets.is_empty() {
        let (engine, link) = (rt.engine.clone(), rt.link.clone());
        let drill_config = config.clone();
        let scratch = super::drill::scratch_dir(config);
        let sources =
            super::drill::Sources::configured(config, rt.store_replicas.iter(), targets.clone());
        let drill_store = rt.store.clone();
        specs.push(JobSpec {
            name: "drill".into(),
            schedule: schedule("drill"),
            run: Arc::new(move |ctx| {
                let specs = super::drill::specs(&drill_config, &sources, None).map_err(|e| {
                    tradevault::Error::Internal {
                        message: format!("plan the drills: {e:#}"),
                    }
                })?;
                let now = now_ms;
                let options = DrillOptions {
                    scratch: &scratch,
                    limits: &drill_config.restore,
                    identity: None,
                    now: &now,
                };
                let mut reports = Vec::new();
                for mut spec in specs {
                    if spec.database == "store" {
                        // The run's own job_runs row is the sentinel: wait until the replicas hold it.
                        if let (Some(engine), Some(link)) = (&engine, &link)
                            && let Err(e) = engine.wait_replicated("store", link.last_commit(), Duration::from_secs(60))
                        {
                            tracing::warn!(error = %e, "drill: the replicas do not hold the sentinel yet");
                        }
                        spec.sentinel = Some(ctx.run_id);
                    }
                    reports.extend(drill::run(&spec, &options));
                }
                drill::record(&reports, &sources.targets);
                mirror(&drill_store, &sources.targets);
                let ok = reports.iter().all(|r| r.ok);
                // The drills of backups again, as this job listed them before every drill was in `drills`.
                let backups: Vec<Value> = reports
                    .iter()
                    .filter(|r| r.backup_id.is_some())
                    .map(|r| json!({ "target": r.target, "database": r.database, "backup_id": r.backup_id,
                                     "ok": r.ok, "rto_seconds": r.rto_seconds, "detail": r.summary() }))
                    .collect();
                Ok(json!({ "ok": ok, "drills": reports, "backups": backups }))
            }),
        });
    }
    specs
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Mirrors the targets' catalogs into the store's backup_metadata.
fn mirror(store: &Arc<Store>, targets: &[Target]) {
    let handle = tokio::runtime::Handle::current();
    for target in targets {
        let result = Catalog::load(target).and_then(|c| {
            handle.block_on(store.mirror_backups(target.name.clone(), target.describe(), c))
        });
        match result {
            Ok(()) | Err(tradevault::Error::NotReplicated { .. }) => {}
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "could not mirror the backup catalog")
            }
        }
    }
}
