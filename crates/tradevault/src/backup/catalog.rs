//! [`Catalog`]: what a target holds, from the target alone, so a bare target describes itself
//! after the primary and its machine are gone.
//!
//! The truth is the objects: a backup is listed when its manifest exists; verifications and
//! drills are small immutable records (`events/<id>/verify-<ms>.json`, `drills/<ms>-<db>.json`).
//! `index.json` caches their contents so a listing costs three LIST requests and one GET, and is
//! rebuilt from the objects whenever it disagrees with them (missing, stale or damaged).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::format::{self, Manifest, decode_manifest, manifest_key};
use super::{Target, format_ms};
use crate::error::{Error, Result};

const INDEX_KEY: &str = "index.json";

/// One backup as listings show it (and as the store mirrors it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Its id.
    pub id: String,
    /// The database's name.
    pub database: String,
    /// The file it was taken from.
    pub source: String,
    /// `manual`, `scheduled` or `safety`.
    pub kind: String,
    /// When it was taken (start), ms since the epoch.
    pub created_ms: i64,
    /// The same, RFC 3339.
    pub created: String,
    /// No commit started after this time is in it (ms since the epoch).
    pub state_max_ms: i64,
    /// Every commit finished before this time is in it.
    pub state_min_ms: i64,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    /// Size of the database it holds.
    pub size_bytes: u64,
    /// Bytes it stored itself (its packs and page table).
    pub stored_bytes: u64,
    /// Bytes a restore reads (its segments, including its ancestors').
    pub restore_bytes: u64,
    /// Pages in the database, and pages it stored itself.
    pub pages: u32,
    /// Pages it stored itself.
    pub pages_stored: u32,
    /// Bytes per page.
    pub page_size: u32,
    /// `zstd` or `gzip`.
    pub compression: String,
    /// Whether its segments are age-encrypted.
    pub encrypted: bool,
    /// The backup it is an increment of.
    pub parent: Option<String>,
    /// Backups whose packs it needs.
    pub depends_on: Vec<String>,
    /// 0: full.
    pub depth: u32,
    /// Its latest verification, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verification>,
}

impl BackupRecord {
    fn of(m: &Manifest) -> BackupRecord {
        BackupRecord {
            id: m.id.clone(),
            database: m.database.clone(),
            source: m.source.clone(),
            kind: m.kind.clone(),
            created_ms: m.started_ms,
            created: format_ms(m.started_ms),
            state_max_ms: m.state_max_ms,
            state_min_ms: m.state_min_ms,
            tables: m.tables.clone(),
            size_bytes: m.size_bytes(),
            stored_bytes: m.stored_bytes(),
            restore_bytes: m.segments.iter().map(|s| s.len).sum(),
            pages: m.page_count,
            pages_stored: m.pages_stored,
            page_size: m.page_size,
            compression: m.compression.clone(),
            encrypted: !m.recipients.is_empty(),
            parent: m.parent.clone(),
            depends_on: m.depends_on.clone(),
            depth: m.depth,
            verified: None,
        }
    }

    /// Whether its latest verification passed.
    pub fn verified_ok(&self) -> bool {
        self.verified.as_ref().is_some_and(|v| v.ok)
    }
}

/// The result of `backup verify` on one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// The backup.
    pub id: String,
    /// When it ran, ms since the epoch.
    pub at_ms: i64,
    /// The same, RFC 3339.
    pub at: String,
    /// Whether the backup was also restored to a scratch file and checked.
    pub deep: bool,
    /// The check a deep verify ran (`integrity_check` or `quick_check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// No problem found.
    pub ok: bool,
    /// What is wrong, and where (object, offset, expected and actual checksums).
    pub problems: Vec<String>,
    /// Objects read.
    pub objects: u64,
    /// Bytes read.
    pub bytes: u64,
    /// How long it took.
    pub seconds: f64,
}

/// The result of a restore drill, recorded by whoever runs drills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The database drilled.
    pub database: String,
    /// When it ran, ms since the epoch.
    pub at_ms: i64,
    /// The backup it started from, if any.
    pub backup_id: Option<String>,
    /// What it restored from: a replica, a backup on a target, or both (older records: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether the restored database passed its checks.
    pub ok: bool,
    /// Time to restore and check, in seconds (the recovery time objective measured).
    pub rto_seconds: f64,
    /// What was checked or what went wrong.
    pub detail: String,
}

/// Counts, bytes and times of a target's backups, per database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The target.
    pub target: String,
    /// Where it is.
    pub url: String,
    /// Per database.
    pub databases: Vec<DatabaseStats>,
}

/// [`Stats`] of one database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseStats {
    /// Its name.
    pub database: String,
    /// Backups.
    pub count: usize,
    /// Of which full.
    pub full: usize,
    /// Bytes stored for its backups.
    pub stored_bytes: u64,
    /// Size of the newest backup's database.
    pub newest_size_bytes: u64,
    /// Sum of the databases' sizes over stored bytes: compression and incrementals together.
    pub ratio: f64,
    /// The full backups' size over their stored bytes: compression alone.
    pub full_ratio: Option<f64>,
    /// Oldest backup (id, time).
    pub oldest: Option<(String, String)>,
    /// Newest backup (id, time).
    pub newest: Option<(String, String)>,
    /// Latest passed verification (id, time, deep).
    pub last_verified: Option<(String, String, bool)>,
    /// Latest drill.
    pub last_drill: Option<DrillRecord>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    format: u32,
    backups: BTreeMap<String, BackupRecord>,
    events: BTreeMap<String, Verification>,
    drills: BTreeMap<String, DrillRecord>,
}

/// What a target holds.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Backups, oldest first, each with its latest verification.
    pub backups: Vec<BackupRecord>,
    /// Drills, oldest first.
    pub drills: Vec<DrillRecord>,
    index: BTreeMap<String, BackupRecord>,
    events: BTreeMap<String, Verification>,
    drill_keys: BTreeMap<String, DrillRecord>,
    /// Whether `index.json` disagreed with the objects.
    pub index_stale: bool,
    /// Backups whose manifest cannot be read (id, what is wrong): left out of `backups`, so that
    /// one damaged object never hides the others.
    pub unreadable: Vec<(String, String)>,
}

impl Catalog {
    /// A catalog with nothing in it.
    pub fn empty() -> Catalog {
        Catalog {
            backups: Vec::new(),
            drills: Vec::new(),
            index: BTreeMap::new(),
            events: BTreeMap::new(),
            drill_keys: BTreeMap::new(),
            index_stale: false,
            unreadable: Vec::new(),
        }
    }

    /// Reads the catalog of `target`: lists manifests and records, takes what `index.json`
    /// already knows, and reads the rest.
    pub fn load(target: &Target) -> Result<Catalog> {
        let index: Index = match target.get(INDEX_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Index::default(),
        };
        let mut stale = false;
        let mut backups = BTreeMap::new();
        let mut unreadable = Vec::new();
        for (key, _) in target.list("backups/")? {
            let Some(id) = key
                .strip_prefix("backups/")
                .and_then(|k| k.strip_suffix(".manifest"))
            else {
                continue;
            };
            let record = match index.backups.get(id) {
                Some(r) => r.clone(),
                None => {
                    stale = true;
                    match read_manifest(target, id) {
                        Ok(m) => BackupRecord::of(&m),
                        Err(e) => {
                            tracing::warn!(target = %target.name, backup = id, error = %e, "backup manifest unreadable; listing the others");
                            unreadable.push((id.to_owned(), e.to_string()));
                            continue;
                        }
                    }
                }
            };
            backups.insert(id.to_owned(), record);
        }
        stale |= backups.len() != index.backups.len();
        let mut events = BTreeMap::new();
        for (key, _) in target.list("events/")? {
            let v = match index.events.get(&key) {
                Some(v) => v.clone(),
                None => {
                    stale = true;
                    match target
                        .get(&key)?
                        .and_then(|b| serde_json::from_slice(&b).ok())
                    {
                        Some(v) => v,
                        None => continue,
                    }
                }
            };
            events.insert(key, v);
        }
        let mut drill_keys = BTreeMap::new();
        for (key, _) in target.list("drills/")? {
            let d = match index.drills.get(&key) {
                Some(d) => d.clone(),
                None => {
                    stale = true;
                    match target
                        .get(&key)?
                        .and_then(|b| serde_json::from_slice(&b).ok())
                    {
                        Some(d) => d,
                        None => continue,
                    }
                }
            };
            drill_keys.insert(key, d);
        }
        stale |= events.len() != index.events.len() || drill_keys.len() != index.drills.len();
        let mut list: Vec<BackupRecord> = backups.values().cloned().collect();
        for b in &mut list {
            b.verified = events
                .values()
                .filter(|v| v.id == b.id)
                .max_by_key(|v| v.at_ms)
                .cloned();
        }
        let mut drills: Vec<DrillRecord> = drill_keys.values().cloned().collect();
        drills.sort_by_key(|d| d.at_ms);
        Ok(Catalog {
            backups: list,
            drills,
            index: backups,
            events,
            drill_keys,
            index_stale: stale,
            unreadable,
        })
    }

    /// Writes `index.json` from what was loaded.
    pub fn save_index(&self, target: &Target) -> Result<()> {
        let index = Index {
            format: format::VERSION,
            backups: self.index.clone(),
            events: self.events.clone(),
            drills: self.drill_keys.clone(),
        };
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::Internal {
            message: format!("encode backup index: {e}"),
        })?;
        target.put(INDEX_KEY, bytes)
    }

    /// A backup by id, or by a unique prefix of its id.
    pub fn find(&self, id: &str) -> Result<&BackupRecord> {
        let matches: Vec<&BackupRecord> = self
            .backups
            .iter()
            .filter(|b| b.id == id || b.id.starts_with(id))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::backup(
                "not_found",
                format!("no backup {id:?} on this target"),
                Some("run 'tradevault backup list --target ...' to see the ids"),
            )),
            many => match many.iter().find(|b| b.id == id) {
                Some(exact) => Ok(exact),
                None => Err(Error::backup(
                    "ambiguous_id",
                    format!("{id:?} matches {} backups; give more of the id", many.len()),
                    None,
                )),
            },
        }
    }

    /// The backups whose manifest cannot be read, and why, for a message: `id: why; ...`.
    pub fn unreadable_list(&self) -> String {
        self.unreadable
            .iter()
            .map(|(id, e)| format!("{id}: {e}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The newest backup of `database` (any database when `None`).
    /// With `by_ms`, only backups whose state ended by then (every commit they hold was made by
    /// then).
    pub fn newest(&self, database: Option<&str>, by_ms: Option<i64>) -> Option<&BackupRecord> {
        self.backups
            .iter()
            .filter(|b| database.is_none_or(|d| b.database == d))
            .filter(|b| by_ms.is_none_or(|ms| b.state_max_ms <= ms))
            .max_by(|a, b| a.id.cmp(&b.id))
    }

    /// The newest backup of `database` taken from the file at `path`: two files may share a
    /// name (an unconfigured `--db PATH` is named by its stem), and one must never continue or
    /// restore as the other.
    /// `by_ms` as for [`Catalog::newest`].
    pub fn newest_from(
        &self,
        database: &str,
        path: &std::path::Path,
        by_ms: Option<i64>,
    ) -> Option<&BackupRecord> {
        let path = comparable(path);
        self.backups
            .iter()
            .filter(|b| b.database == database && b.taken_from_comparable(&path))
            .filter(|b| by_ms.is_none_or(|ms| b.state_max_ms <= ms))
            .max_by(|a, b| a.id.cmp(&b.id))
    }

    /// The newest backup of each database file (two files may share a name: see
    /// [`Catalog::newest_from`]), by name.
    pub fn newest_of_each_file(&self) -> Vec<&BackupRecord> {
        let mut newest: BTreeMap<(&str, std::path::PathBuf), &BackupRecord> = BTreeMap::new();
        for b in &self.backups {
            let slot = newest.entry((b.database.as_str(), b.file())).or_insert(b);
            if b.id > slot.id {
                *slot = b;
            }
        }
        newest.into_values().collect()
    }

    /// The full manifest of a listed backup.
    pub fn manifest(&self, target: &Target, id: &str) -> Result<Manifest> {
        let record = self.find(id)?;
        read_manifest(target, &record.id)
    }

    /// Counts, bytes, oldest and newest, last verified and last drill, per database.
    pub fn stats(&self, target: &Target) -> Stats {
        let mut names: Vec<&str> = self.backups.iter().map(|b| b.database.as_str()).collect();
        names.extend(self.drills.iter().map(|d| d.database.as_str()));
        names.sort_unstable();
        names.dedup();
        let databases = names
            .into_iter()
            .map(|name| {
                let of: Vec<&BackupRecord> =
                    self.backups.iter().filter(|b| b.database == name).collect();
                let stored: u64 = of.iter().map(|b| b.stored_bytes).sum();
                let logical: u64 = of.iter().map(|b| b.size_bytes).sum();
                let full: Vec<&&BackupRecord> = of.iter().filter(|b| b.depth == 0).collect();
                let full_stored: u64 = full.iter().map(|b| b.stored_bytes).sum();
                let full_logical: u64 = full.iter().map(|b| b.size_bytes).sum();
                let when = |b: &BackupRecord| (b.id.clone(), b.created.clone());
                DatabaseStats {
                    database: name.to_owned(),
                    count: of.len(),
                    full: full.len(),
                    stored_bytes: stored,
                    newest_size_bytes: of.last().map_or(0, |b| b.size_bytes),
                    ratio: if stored == 0 {
                        0.0
                    } else {
                        logical as f64 / stored as f64
                    },
                    full_ratio: (full_stored > 0).then(|| full_logical as f64 / full_stored as f64),
                    oldest: of.first().map(|b| when(b)),
                    newest: of.last().map(|b| when(b)),
                    last_verified: of
                        .iter()
                        .filter_map(|b| b.verified.as_ref().filter(|v| v.ok))
                        .max_by_key(|v| v.at_ms)
                        .map(|v| (v.id.clone(), v.at.clone(), v.deep)),
                    last_drill: self
                        .drills
                        .iter()
                        .filter(|d| d.database == name)
                        .max_by_key(|d| d.at_ms)
                        .cloned(),
                }
            })
            .collect();
        Stats {
            target: target.name.clone(),
            url: target.describe(),
            databases,
        }
    }
}

/// Reads and checks a manifest.
pub fn read_manifest(target: &Target, id: &str) -> Result<Manifest> {
    let key = manifest_key(id);
    let bytes = target.get(&key)?.ok_or_else(|| {
        Error::backup(
            "not_found",
            format!("backup {id}: object {key} is missing"),
            None,
        )
    })?;
    decode_manifest(&bytes, &key)
}

/// Records a verification on the target (an object of its own, then the index).
pub fn record_verification(target: &Target, v: &Verification) -> Result<()> {
    let key = format!("events/{}/verify-{}.json", v.id, v.at_ms);
    put_json(target, &key, v)?;
    refresh_index(target);
    Ok(())
}

/// Records a drill on the target, for `backup stats` and the store's mirror.
pub fn record_drill(target: &Target, d: &DrillRecord) -> Result<()> {
    let key_of = |d: &DrillRecord| format!("drills/{}-{}.json", d.at_ms, d.database);
    // Drills of one database recorded in the same millisecond (one per source) are all kept: a
    // later one moves to the next free millisecond, as its key and the store's mirror are by time.
    let mut d = d.clone();
    for _ in 0..1_000 {
        if target.get(&key_of(&d))?.is_none() {
            break;
        }
        d.at_ms += 1;
    }
    put_json(target, &key_of(&d), &d)?;
    refresh_index(target);
    Ok(())
}

fn put_json(target: &Target, key: &str, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Internal {
        message: format!("encode {key}: {e}"),
    })?;
    target.put(key, bytes)
}

/// Rebuilds `index.json`; a failure only costs the next listing some reads.
pub(crate) fn refresh_index(target: &Target) {
    if let Err(e) = Catalog::load(target).and_then(|c| c.save_index(target)) {
        tracing::warn!(target = %target.name, error = %e, "backup index not refreshed");
    }
}

impl BackupRecord {
    /// Whether it was taken from the file at `path` (see [`comparable`]).
    pub fn taken_from(&self, path: &std::path::Path) -> bool {
        self.taken_from_comparable(&comparable(path))
    }

    /// The file it was taken from, in the form [`comparable`] gives.
    pub fn file(&self) -> std::path::PathBuf {
        comparable(std::path::Path::new(&self.source))
    }

    fn taken_from_comparable(&self, path: &std::path::Path) -> bool {
        self.file() == path
    }
}

/// A path in the form backups record their source in: canonical when the file exists; else its
/// directory's canonical path and its name (a lost database is restored by the path it had); else
/// absolute.
pub fn comparable(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::canonicalize(dir) {
            return d.join(name);
        }
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}
