//! Restore drills: prove a database is restorable by restoring it.
//!
//! A drill restores the latest state of a database from its replicas into a scratch directory,
//! checks it with `PRAGMA integrity_check`, counts its rows per table (and shows the live
//! database's counts beside them), and, for the store, looks for a sentinel row written just before
//! the drill (the drill's own `job_runs` row): found, it proves the replica held the last commit,
//! not just an old state. The time from start to a checked database is the drill's RTO. Results go
//! to the job's run record, to metrics (`tradevault_drill_*`, and the time each database was last
//! proven restorable), and to the backup catalogs when backups exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::config::RestoreConfig;
use crate::error::{Error, Result};
use crate::replica::Replica;
use crate::restore::{self, Check, Target};

/// A database to drill.
pub struct DrillSpec {
    /// Its name (`store`, or a `[[database]]` name).
    pub database: String,
    /// The live database, for its row counts.
    pub path: PathBuf,
    /// Its replicas, tried in order: (name, replica).
    pub replicas: Vec<(String, Replica)>,
    /// The `job_runs` row id the restored copy must hold (the store only).
    pub sentinel: Option<i64>,
}

/// What a drill found.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The database.
    pub database: String,
    /// Whether it restored, passed its checks and held the sentinel.
    pub ok: bool,
    /// When the drill started (RFC 3339).
    pub started_at: String,
    /// The replica it restored from.
    pub source: Option<String>,
    /// The TXID restored.
    pub txid: Option<u64>,
    /// The time of the point restored.
    pub point_time: Option<String>,
    /// Bytes fetched.
    pub fetched_bytes: u64,
    /// `ok`, or what `integrity_check` found.
    pub integrity: Option<String>,
    /// Rows per table in the restored copy.
    pub rows: BTreeMap<String, u64>,
    /// Rows per table in the live database when the drill ended (it may have moved on).
    pub live_rows: BTreeMap<String, u64>,
    /// Whether the sentinel row came back; `None` when there is none (another program's database).
    pub sentinel_found: Option<bool>,
    /// Time from the start to a checked copy (the recovery time), in ms.
    pub rto_ms: u64,
    /// Why it failed, with each replica's error.
    pub error: Option<String>,
}

/// Drills `spec` in `scratch` (a directory; the restored copy is removed after a success and kept
/// after a failure, for a look). Never fails: a failure is a report with `ok: false`.
pub fn run(spec: &DrillSpec, scratch: &Path, limits: &RestoreConfig) -> DrillReport {
    let started = Instant::now();
    let mut report = DrillReport {
        database: spec.database.clone(),
        ok: false,
        started_at: jiff::Timestamp::now().to_string(),
        source: None,
        txid: None,
        point_time: None,
        fetched_bytes: 0,
        integrity: None,
        rows: BTreeMap::new(),
        live_rows: BTreeMap::new(),
        sentinel_found: None,
        rto_ms: 0,
        error: None,
    };
    let mut errors = Vec::new();
    if spec.replicas.is_empty() {
        errors.push("no replica to restore from".to_owned());
    }
    for (name, replica) in &spec.replicas {
        match drill_one(spec, replica, scratch, limits, &mut report) {
            Ok(()) => {
                report.source = Some(name.clone());
                break;
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    report.rto_ms = started.elapsed().as_millis() as u64;
    if let Ok(conn) =
        crate::store::open_read_only(&spec.path).or_else(|_| open_any_read_only(&spec.path))
        && let Ok(f) = crate::restore::inplace::fingerprint(&conn)
    {
        report.live_rows = f.rows;
    }
    if report.source.is_some() && report.sentinel_found != Some(false) {
        report.ok = true;
    } else {
        if report.sentinel_found == Some(false) {
            errors.push(format!(
                "the restored copy lacks the sentinel row written before the drill (job_runs id {})",
                spec.sentinel.unwrap_or_default()
            ));
        }
        report.error = Some(errors.join("; "));
    }
    crate::metrics::drill(&report.database, report.ok, report.rto_ms as f64 / 1000.0);
    report
}

fn drill_one(
    spec: &DrillSpec,
    replica: &Replica,
    scratch: &Path,
    limits: &RestoreConfig,
    report: &mut DrillReport,
) -> Result<()> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| Error::io("create drill directory", scratch, e))?;
    let out = scratch.join(format!(
        "drill-{}-{}.db",
        spec.database,
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.3fZ")
    ));
    let plan = restore::plan(replica, Target::Latest)?;
    let options = restore::Options {
        base: None,
        limits: limits.clone(),
        check: Check::Integrity,
        progress: None,
    };
    let restored = restore::apply_with(replica, &plan, &out, &options)?;
    report.txid = Some(plan.txid);
    report.point_time = Some(plan.point_time.clone());
    report.fetched_bytes = plan.bytes;
    report.integrity = Some("ok".into());
    let conn = open_any_read_only(&out)?;
    report.rows = crate::restore::inplace::fingerprint(&conn)?.rows;
    if let Some(id) = spec.sentinel {
        let found: i64 = conn
            .query_row("SELECT count(*) FROM job_runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap_or(0);
        report.sentinel_found = Some(found == 1);
    }
    drop(conn);
    if report.sentinel_found != Some(false) {
        restore::remove_database_files(&out);
    }
    tracing::info!(database = %spec.database, txid = plan.txid, pages = restored.pages, "drill restored and checked");
    Ok(())
}

fn open_any_read_only(path: &Path) -> Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open database read-only", e))
}
