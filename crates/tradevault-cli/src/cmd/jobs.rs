//! The jobs `serve` schedules, from `[jobs]` and what they work on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tradevault::backup::{self, Catalog, CreateOptions, DrillRecord, Kind, Target, VerifyOptions};
use tradevault::config::ReplicaConfig;
use tradevault::drill::{self, DrillSpec};
use tradevault::jobs::JobSpec;
use tradevault::replica::Replica;
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

/// A database a drill restores: (name, live path, its replicas as configured).
type Drilled = (String, PathBuf, Vec<ReplicaConfig>);

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
            rt.store_replicas.clone(),
        ));
    }
    for d in &config.database {
        drilled.push((d.name.clone(), d.path.clone(), d.replica.clone()));
    }
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
                        if plan.is_empty() {
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
                        newest_of_each(&catalog).into_iter().map(|b| b.id.clone()).collect();
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
    if !drilled.is_empty() || !targets.is_empty() {
        let (engine, link) = (rt.engine.clone(), rt.link.clone());
        let scratch = config.store.data_dir.join(".tradevault-drill");
        let limits = config.restore.clone();
        let (drill_targets, drill_store) = (targets.clone(), rt.store.clone());
        specs.push(JobSpec {
            name: "drill".into(),
            schedule: schedule("drill"),
            run: Arc::new(move |ctx| {
                let mut reports = Vec::new();
                for (name, path, configured) in &drilled {
                    let store = name == "store";
                    // The run's own job_runs row is the sentinel: wait until the replicas hold it.
                    if store
                        && let (Some(engine), Some(link)) = (&engine, &link)
                        && let Err(e) = engine.wait_replicated("store", link.last_commit(), Duration::from_secs(60))
                    {
                        tracing::warn!(error = %e, "drill: the replicas do not hold the sentinel yet");
                    }
                    let replicas = configured
                        .iter()
                        .filter_map(|c| {
                            Replica::parse_with(&c.url, &c.s3())
                                .ok()
                                .map(|r| (c.display_name(), r))
                        })
                        .collect();
                    let spec = DrillSpec {
                        database: name.clone(),
                        path: path.clone(),
                        replicas,
                        sentinel: store.then_some(ctx.run_id),
                    };
                    let report = drill::run(&spec, &scratch, &limits);
                    for target in &drill_targets {
                        let record = DrillRecord {
                            database: name.clone(),
                            at_ms: now_ms(),
                            backup_id: None,
                            ok: report.ok,
                            rto_seconds: report.rto_ms as f64 / 1000.0,
                            detail: format!(
                                "replica {}: txid {:?}, integrity {:?}, sentinel {:?}{}",
                                report.source.as_deref().unwrap_or("-"),
                                report.txid,
                                report.integrity,
                                report.sentinel_found,
                                report.error.as_deref().map(|e| format!(", error: {e}")).unwrap_or_default()
                            ),
                        };
                        if let Err(e) = backup::catalog::record_drill(target, &record) {
                            tracing::warn!(target = %target.name, error = %e, "could not record the drill in the catalog");
                        }
                    }
                    reports.push(report);
                }
                // The newest backup of each database restores and passes its checks.
                let mut backups = Vec::new();
                for target in &drill_targets {
                    backups.extend(drill_backups(target, &scratch));
                }
                mirror(&drill_store, &drill_targets);
                let ok = reports.iter().all(|r| r.ok)
                    && backups.iter().all(|b| b["ok"].as_bool() == Some(true));
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

/// The newest backup of each database in `catalog`.
fn newest_of_each(catalog: &Catalog) -> Vec<&tradevault::backup::BackupRecord> {
    let mut dbs: Vec<&str> = catalog
        .backups
        .iter()
        .map(|b| b.database.as_str())
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    dbs.into_iter()
        .filter_map(|d| catalog.newest(Some(d)))
        .collect()
}

/// Restores the newest backup of each database on `target` into `scratch` and checks it (a deep
/// verify: integrity, rows per table as recorded), records the drill in the target's catalog, and
/// reports it. Encrypted backups need an identity this host does not hold: their checksums are
/// verified by the verify job instead.
fn drill_backups(target: &Target, scratch: &std::path::Path) -> Vec<Value> {
    let catalog = match Catalog::load(target) {
        Ok(c) => c,
        Err(e) => {
            return vec![json!({ "target": target.name, "ok": false, "error": e.to_string() })];
        }
    };
    let _ = std::fs::create_dir_all(scratch);
    let now = now_ms;
    let options = VerifyOptions {
        deep: true,
        check: Check::Integrity,
        identity: None,
        scratch_dir: Some(scratch.to_owned()),
        now: &now,
        record: false,
    };
    let mut out = Vec::new();
    for b in newest_of_each(&catalog)
        .into_iter()
        .filter(|b| !b.encrypted)
    {
        let (ok, rto, detail) = match backup::verify(target, &b.id, &options) {
            Ok(v) if v.ok => (true, v.seconds, "integrity ok, rows match".to_owned()),
            Ok(v) => (false, v.seconds, v.problems.join("; ")),
            Err(e) => (false, 0.0, e.to_string()),
        };
        let record = DrillRecord {
            database: b.database.clone(),
            at_ms: now_ms(),
            backup_id: Some(b.id.clone()),
            ok,
            rto_seconds: rto,
            detail: detail.clone(),
        };
        if let Err(e) = backup::catalog::record_drill(target, &record) {
            tracing::warn!(target = %target.name, error = %e, "could not record the drill in the catalog");
        }
        out.push(json!({ "target": target.name, "database": b.database, "backup_id": b.id, "ok": ok, "rto_seconds": rto, "detail": detail }));
    }
    out
}
