//! Restore drills: prove a database is restorable by restoring it.
//!
//! A drill restores the latest state of a database into a scratch directory from each kind of
//! source it has, and checks each copy: from its replicas (tried in order; the first that restores
//! is the source), and from the newest backup on each backup target, with the LTX files of a
//! replica that continues the backup applied on top (the backup alone when none does). Each copy
//! must pass `integrity_check`; its rows per table are counted, and must equal those counted when
//! the backup was taken (a backup alone) or those of the replica's copy when both reached the same
//! TXID. For the store, a sentinel row written just before the drill (the drill's own `job_runs`
//! row) must come back from every source that reaches past it: a replica, or a backup plus a
//! replica's files (a backup alone predates it). The time from start to a checked copy is the
//! drill's RTO. Results go to metrics (`tradevault_drill_*`, and the time each database was last
//! proven restorable), to the caller (a job's run record, the command's output), and with
//! [`record`] to the backup catalogs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backup::{self, BackupRecord, Catalog, DrillRecord, Identity, Target};
use crate::config::RestoreConfig;
use crate::error::{Error, Result};
use crate::replica::Replica;
use crate::restore::{self, Check, Plan};

/// A database to drill, and where it can be restored from.
pub struct DrillSpec {
    /// Its name (`store`, a `[[database]]` name, or the name its backups carry).
    pub database: String,
    /// The live database, for its row counts (`None`: known only from its backups).
    pub path: Option<PathBuf>,
    /// Its replicas, tried in order: (name, replica).
    pub replicas: Vec<(String, Replica)>,
    /// Backup targets: the newest backup of the database on each is drilled, and a target that
    /// holds none fails its drill.
    pub targets: Vec<Target>,
    /// The `job_runs` row id the restored copy must hold (the store only).
    pub sentinel: Option<i64>,
}

/// How drills run.
pub struct DrillOptions<'a> {
    /// Where restored copies go (created if missing). A copy is removed after a success and kept
    /// after a failed check, for a look.
    pub scratch: &'a Path,
    /// Downloads at once, bytes held ahead, decoding threads.
    pub limits: &'a RestoreConfig,
    /// Decrypts encrypted backups; without it an encrypted backup is not drilled.
    pub identity: Option<&'a Identity>,
    /// The time, ms since the epoch.
    pub now: &'a dyn Fn() -> i64,
}

/// One check a drill ran on a restored copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillCheck {
    /// `restore`, `integrity`, `rows` or `sentinel`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// What one drill (one database, one source) found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillReport {
    /// The database.
    pub database: String,
    /// Whether it restored and passed every check.
    pub ok: bool,
    /// When the drill started (RFC 3339).
    pub started_at: String,
    /// The same, ms since the epoch.
    pub at_ms: i64,
    /// What it restored from: a replica's name, `backup ID on TARGET`, or that plus `+ replica
    /// NAME`.
    pub source: Option<String>,
    /// The backup target, for a drill of a backup.
    pub target: Option<String>,
    /// The backup restored, if any.
    pub backup_id: Option<String>,
    /// The replica whose files were applied, if any.
    pub replica: Option<String>,
    /// The TXID restored (not known for a backup alone).
    pub txid: Option<u64>,
    /// The time of the point restored.
    pub point_time: Option<String>,
    /// Bytes fetched.
    pub fetched_bytes: u64,
    /// `ok`, or what `integrity_check` found.
    pub integrity: Option<String>,
    /// Rows per table in the restored copy.
    pub rows: BTreeMap<String, u64>,
    /// Rows per table in the live database when the drills ended (it may have moved on).
    pub live_rows: BTreeMap<String, u64>,
    /// Whether the sentinel row came back; `None` when none was asked for (another program's
    /// database, or a backup alone, which predates it).
    pub sentinel_found: Option<bool>,
    /// The checks run, in order.
    pub checks: Vec<DrillCheck>,
    /// Time from the start to a checked copy (the recovery time), in ms.
    pub rto_ms: u64,
    /// The same, in seconds.
    pub rto_seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
}

impl DrillReport {
    /// One line: the source, then what each check found, then the error.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self.checks.iter().map(|c| c.detail.clone()).collect();
        if let Some(e) = &self.error {
            parts.push(format!("error: {e}"));
        }
        format!(
            "{}: {}",
            self.source.as_deref().unwrap_or("no source"),
            parts.join("; ")
        )
    }
}

/// Drills `spec` from each of its sources: one report per source (the replicas together, each
/// backup target apart), or one failed report when it has none. Never fails: a failure is a
/// report with `ok: false`. Sets the drill metrics of every report.
pub fn run(spec: &DrillSpec, options: &DrillOptions<'_>) -> Vec<DrillReport> {
    let mut reports = Vec::new();
    if !spec.replicas.is_empty() {
        reports.push(from_replicas(spec, options));
    }
    let mut sealed = Vec::new();
    for target in &spec.targets {
        match newest_backup(target, &spec.database) {
            Ok(b) if b.encrypted && options.identity.is_none() => {
                tracing::info!(database = %spec.database, target = %target.name, backup = %b.id,
                    "drill: the newest backup is encrypted and no identity was given; not drilled");
                sealed.push(format!("backup {} on {} is encrypted", b.id, target.name));
            }
            Ok(b) => reports.push(from_backup(spec, target, &b, options)),
            Err(e) => {
                let mut r = start(spec, options);
                r.source = Some(format!("target {}", target.name));
                r.target = Some(target.name.clone());
                r.error = Some(e.to_string());
                settle(&mut r, Instant::now());
                reports.push(r);
            }
        }
    }
    if reports.is_empty() {
        let mut r = start(spec, options);
        r.error = Some(if sealed.is_empty() {
            format!(
                "nothing to restore {} from: no replica and no backup target",
                spec.database
            )
        } else {
            format!(
                "nothing to restore {} from here: {}; drill with its identity (--identity FILE)",
                spec.database,
                sealed.join(", ")
            )
        });
        settle(&mut r, Instant::now());
        reports.push(r);
    }
    compare_sources(&mut reports);
    let live = spec.path.as_deref().map(live_rows).unwrap_or_default();
    for r in &mut reports {
        r.live_rows = live.clone();
        crate::metrics::drill(&r.database, r.ok, r.rto_seconds);
    }
    reports
}

/// Records each drill in the catalogs of `targets`, for `backup stats` and the store's mirror: a
/// drill of a backup on its own target, any other drill on every target. A target that cannot
/// take the record is logged and skipped.
pub fn record(reports: &[DrillReport], targets: &[Target]) {
    for r in reports {
        let record = DrillRecord {
            database: r.database.clone(),
            at_ms: r.at_ms,
            backup_id: r.backup_id.clone(),
            source: r.source.clone(),
            ok: r.ok,
            rto_seconds: r.rto_seconds,
            detail: r.summary(),
        };
        let own = |t: &&Target| r.target.as_ref().is_none_or(|name| *name == t.name);
        for target in targets.iter().filter(own) {
            if let Err(e) = backup::catalog::record_drill(target, &record) {
                tracing::warn!(target = %target.name, error = %e, "could not record the drill in the catalog");
            }
        }
    }
}

/// A report of a drill starting now.
fn start(spec: &DrillSpec, options: &DrillOptions<'_>) -> DrillReport {
    let at_ms = (options.now)();
    DrillReport {
        database: spec.database.clone(),
        started_at: backup::format_ms(at_ms),
        at_ms,
        ..DrillReport::default()
    }
}

/// Ends a drill that started at `started`: its RTO, and whether it passed (restored, with every
/// check passed); a failed check with no error becomes the error.
fn settle(r: &mut DrillReport, started: Instant) {
    r.rto_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    r.rto_seconds = started.elapsed().as_secs_f64();
    let failed: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.detail.as_str())
        .collect();
    if r.error.is_none() && !failed.is_empty() {
        r.error = Some(failed.join("; "));
    }
    r.ok = r.error.is_none() && !r.checks.is_empty();
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> DrillCheck {
    DrillCheck {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// A new file name in the scratch directory for drill `what` of `spec`.
fn scratch_file(spec: &DrillSpec, options: &DrillOptions<'_>, what: &str) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(options.scratch)
        .map_err(|e| Error::io("create drill directory", options.scratch, e))?;
    let name: String = spec
        .database
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(options.scratch.join(format!(
        "drill-{name}-{what}-{}-{}-{}.db",
        (options.now)(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )))
}

/// The replicas in order until one restores: its latest state, checked.
fn from_replicas(spec: &DrillSpec, options: &DrillOptions<'_>) -> DrillReport {
    let started = Instant::now();
    let fresh = start(spec, options);
    let mut r = fresh.clone();
    let mut errors = Vec::new();
    let mut out = None;
    for (name, replica) in &spec.replicas {
        let file = match scratch_file(spec, options, "replica") {
            Ok(f) => f,
            Err(e) => {
                errors.push(e.to_string());
                break;
            }
        };
        let mut tried = fresh.clone();
        let attempt = restore::plan(replica, restore::Target::Latest)
            .and_then(|plan| restore_files(spec, replica, &plan, None, &file, options, &mut tried));
        match attempt {
            Ok(()) => {
                if !errors.is_empty()
                    && let Some(c) = tried.checks.iter_mut().find(|c| c.name == "restore")
                {
                    c.detail
                        .push_str(&format!(" (after {})", errors.join("; ")));
                }
                r = tried;
                r.source = Some(name.clone());
                r.replica = Some(name.clone());
                out = Some(file);
                break;
            }
            Err(e) => {
                restore::remove_database_files(&file);
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    if out.is_none() {
        r.source = Some(
            spec.replicas
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        r.error = Some(errors.join("; "));
    }
    settle(&mut r, started);
    finish_copy(&r, out.as_deref());
    r
}

/// The newest backup of `spec` on `target` (with the replica's files after it where a replica
/// continues it), restored and checked.
fn from_backup(
    spec: &DrillSpec,
    target: &Target,
    b: &BackupRecord,
    options: &DrillOptions<'_>,
) -> DrillReport {
    let started = Instant::now();
    let mut r = start(spec, options);
    let on = format!("backup {} on {}", b.id, target.name);
    r.target = Some(target.name.clone());
    r.backup_id = Some(b.id.clone());
    r.source = Some(on.clone());
    let (tail, notes) = tail_after(spec, b);
    let mut out = None;
    let restored = scratch_file(spec, options, "backup").and_then(|file| {
        out = Some(file.clone());
        match &tail {
            Some((name, replica, plan)) => {
                r.source = Some(format!("{on} + replica {name}"));
                r.replica = Some(name.clone());
                let base = scratch_file(spec, options, "base")?;
                let result = backup::restore_backup(target, &b.id, options.identity, &base, None)
                    .and_then(|restored| {
                        r.fetched_bytes = restored.fetched_bytes;
                        r.checks.push(check(
                            "restore",
                            true,
                            format!(
                                "backup {}: {} pages checked against their hashes, then {} LTX files of replica {name}",
                                b.id,
                                restored.pages,
                                plan.files.len()
                            ),
                        ));
                        restore_files(spec, replica, plan, Some(&base), &file, options, &mut r)
                    });
                restore::remove_database_files(&base);
                result
            }
            None => backup_alone(target, b, &file, &notes, options, &mut r),
        }
    });
    if let Err(e) = restored {
        r.error = Some(e.to_string());
    }
    settle(&mut r, started);
    finish_copy(&r, out.as_deref());
    r
}

/// The newest backup of `database` on `target`.
fn newest_backup(target: &Target, database: &str) -> Result<BackupRecord> {
    target.check_reachable()?;
    let catalog = Catalog::load(target)?;
    catalog
        .newest(Some(database), None)
        .cloned()
        .ok_or_else(|| {
            Error::backup(
                "not_found",
                format!("target {} holds no backup of {database}", target.name),
                Some("run 'tradevault backup create' (or serve's backup job) first"),
            )
        })
}

/// The first replica whose files continue backup `b` to their latest point, with the plan of
/// those files; or none, with why each replica does not.
fn tail_after<'a>(
    spec: &'a DrillSpec,
    b: &BackupRecord,
) -> (Option<(String, &'a Replica, Plan)>, Vec<String>) {
    let mut notes = Vec::new();
    for (name, replica) in &spec.replicas {
        let planned = replica.list_restorable().and_then(|files| {
            let full = restore::plan_listed(replica, &files, restore::Target::Latest)?;
            restore::plan_after_listed(&files, &full, b.state_min_ms, b.state_max_ms, &|f| {
                replica.header_time(f)
            })
        });
        match planned {
            Ok(plan) if !plan.files.is_empty() => {
                return (Some((name.clone(), replica, plan)), notes);
            }
            Ok(_) => notes.push(format!("replica {name} holds nothing after it")),
            Err(e) => notes.push(format!("replica {name}: {e}")),
        }
    }
    (None, notes)
}

/// Applies `plan` from `replica` (over `base`, a restored backup, if given) into `out`, which
/// passes `integrity_check` on the way (or is not made), then counts its rows and looks for the
/// sentinel.
fn restore_files(
    spec: &DrillSpec,
    replica: &Replica,
    plan: &Plan,
    base: Option<&Path>,
    out: &Path,
    options: &DrillOptions<'_>,
    r: &mut DrillReport,
) -> Result<()> {
    let apply = restore::Options {
        base,
        limits: options.limits.clone(),
        check: Check::Integrity,
        progress: None,
    };
    let restored = restore::apply_with(replica, plan, out, &apply)?;
    r.txid = Some(plan.txid);
    r.point_time = Some(plan.point_time.clone());
    r.fetched_bytes += plan.bytes;
    if base.is_none() {
        r.checks.push(check(
            "restore",
            true,
            format!("{} LTX files verified", plan.files.len()),
        ));
    }
    r.integrity = Some("ok".into());
    r.checks.push(check("integrity", true, "integrity ok"));
    let conn = open_any_read_only(out)?;
    r.rows = crate::restore::inplace::fingerprint(&conn)?.rows;
    r.checks.push(check(
        "rows",
        true,
        format!(
            "{} rows in {}",
            r.rows.values().sum::<u64>(),
            tables(r.rows.len())
        ),
    ));
    if let Some(id) = spec.sentinel {
        let found: i64 = conn
            .query_row("SELECT count(*) FROM job_runs WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .unwrap_or(0);
        r.sentinel_found = Some(found == 1);
        r.checks.push(if found == 1 {
            check("sentinel", true, "sentinel back")
        } else {
            check(
                "sentinel",
                false,
                format!("the restored copy lacks the sentinel row written before the drill (job_runs id {id})"),
            )
        });
    }
    tracing::info!(database = %spec.database, txid = plan.txid, pages = restored.pages, "drill restored and checked");
    Ok(())
}

/// Restores backup `b` alone into `out` (every page against its hash), checks it and compares
/// its rows with those counted when it was taken. `notes` say why no replica continues it.
fn backup_alone(
    target: &Target,
    b: &BackupRecord,
    out: &Path,
    notes: &[String],
    options: &DrillOptions<'_>,
    r: &mut DrillReport,
) -> Result<()> {
    let restored = backup::restore_backup(target, &b.id, options.identity, out, None)?;
    r.fetched_bytes = restored.fetched_bytes;
    r.point_time = Some(backup::format_ms(b.state_max_ms));
    let mut restore_detail = format!(
        "backup {}: {} pages checked against their hashes",
        b.id, restored.pages
    );
    if !notes.is_empty() {
        restore_detail.push_str(&format!(" (the backup alone: {})", notes.join("; ")));
    }
    r.checks.push(check("restore", true, restore_detail));
    let checked = crate::integrity::check(out, Check::Integrity, true)?;
    if checked.problems.is_empty() {
        r.integrity = Some("ok".into());
        r.checks.push(check("integrity", true, "integrity ok"));
    } else {
        let found = checked.problems.join("; ");
        r.integrity = Some(found.clone());
        r.checks.push(check(
            "integrity",
            false,
            format!("integrity_check: {found}"),
        ));
    }
    r.rows = checked.rows;
    let differ = backup::compare_rows(&b.tables, &r.rows);
    r.checks.push(if differ.is_empty() {
        check(
            "rows",
            true,
            format!(
                "rows of {} match the backup's counts",
                tables(b.tables.len())
            ),
        )
    } else {
        check("rows", false, differ.join("; "))
    });
    tracing::info!(database = %b.database, backup = %b.id, pages = restored.pages, "drill restored a backup and checked it");
    Ok(())
}

/// Two copies of the same TXID, one from a replica alone and one from a backup plus a replica's
/// files, must hold the same rows: compares them and fails the second when they differ.
fn compare_sources(reports: &mut [DrillReport]) {
    let from_replica: Vec<(u64, BTreeMap<String, u64>, String)> = reports
        .iter()
        .filter(|r| r.ok && r.backup_id.is_none())
        .filter_map(|r| Some((r.txid?, r.rows.clone(), r.source.clone()?)))
        .collect();
    for r in reports.iter_mut().filter(|r| r.ok && r.backup_id.is_some()) {
        let Some((txid, rows, source)) = from_replica.iter().find(|(t, ..)| Some(*t) == r.txid)
        else {
            continue;
        };
        let Some(c) = r.checks.iter_mut().find(|c| c.name == "rows") else {
            continue;
        };
        if *rows == r.rows {
            c.detail.push_str(&format!(
                ", as in the copy from replica {source} at txid {txid}"
            ));
        } else {
            c.ok = false;
            c.detail = format!(
                "rows differ from the copy of txid {txid} from replica {source}: {:?} here, {rows:?} there",
                r.rows
            );
            r.error = Some(c.detail.clone());
            r.ok = false;
        }
    }
}

/// `1 table`, `3 tables`.
fn tables(n: usize) -> String {
    if n == 1 {
        "1 table".into()
    } else {
        format!("{n} tables")
    }
}

/// Removes the restored copy after a success; keeps it after a failure, for a look.
fn finish_copy(r: &DrillReport, out: Option<&Path>) {
    match out {
        Some(out) if r.ok => restore::remove_database_files(out),
        Some(out) if out.exists() => {
            tracing::warn!(database = %r.database, copy = %out.display(), "drill failed; its restored copy is kept");
        }
        _ => {}
    }
}

/// Rows per table of the live database, or none if it cannot be read.
fn live_rows(path: &Path) -> BTreeMap<String, u64> {
    crate::store::open_read_only(path)
        .or_else(|_| open_any_read_only(path))
        .and_then(|conn| crate::restore::inplace::fingerprint(&conn))
        .map(|f| f.rows)
        .unwrap_or_default()
}

fn open_any_read_only(path: &Path) -> Result<rusqlite::Connection> {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open database read-only", e))
}
