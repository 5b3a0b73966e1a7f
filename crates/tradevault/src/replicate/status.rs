//! What the engine reports about each database and replica: kept in memory for metrics and the
//! sync gate, and written every second to `status.json` in the database's local log, where
//! `tradevault status` reads it (whether `serve` or a `replicate` sidecar wrote it).
//!
//! A process replicating a database also leaves a [`Registration`] (database, file, pid) in a
//! per-user directory the binary chooses, so that `tradevault status` finds a sidecar started
//! without a config: one file per database file, replaced by the next process replicating it and
//! removed on a clean stop. A killed process leaves its registration behind, which `status` shows
//! as not running.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the status file in a local log directory.
pub const STATUS_FILE: &str = "status.json";

/// One database's replication, as last reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    /// Its name (`store` for the store of `serve`).
    pub database: String,
    /// Its file.
    pub path: PathBuf,
    /// The process that replicates it.
    pub pid: u32,
    /// When this was written (ms since the epoch).
    pub updated_at_ms: i64,
    /// The newest TXID in the local log.
    pub txid: u64,
    /// When the newest local file was made (its header time: the point `restore` names).
    pub txid_time_ms: Option<i64>,
    /// The WAL's size when last looked at.
    pub wal_bytes: u64,
    /// Checkpoints that copied the whole WAL into the database (after which the WAL is
    /// truncated or restarted).
    pub checkpoints: u64,
    /// The last error of the shipper (reading the WAL, writing the local log), if any.
    pub last_error: Option<String>,
    /// Each replica.
    pub replicas: Vec<ReplicaStatus>,
    /// The newest TXID shipped, in the local log or still waiting for it (see
    /// `Replicator::defer_local`): past `txid`, it is held in the replicas' journals only (a
    /// fine log writes the local log once a second).
    #[serde(skip)]
    pub shipped_txid: u64,
    /// When that shipment was made.
    #[serde(skip)]
    pub shipped_time_ms: Option<i64>,
}

impl DatabaseStatus {
    /// What `tradevault status` reports: positions as `restore` reaches them, counting what the
    /// replicas' journals hold past the local log and their `ltx/` files (the engine itself
    /// measures both against the local log, which its uploaders follow).
    pub fn reported(&self) -> DatabaseStatus {
        let mut s = self.clone();
        if s.shipped_txid > s.txid {
            (s.txid, s.txid_time_ms) = (s.shipped_txid, s.shipped_time_ms);
        }
        for r in &mut s.replicas {
            if r.journal_txid > r.txid.unwrap_or(0) && r.foreign_to == 0 {
                r.layout_txid = r.txid;
                (r.txid, r.txid_time_ms) = (Some(r.journal_txid), r.journal_time_ms);
                // The window reaches the journal's newest point too, once it has a start.
                if r.window_start_ms.is_some() {
                    r.window_end_ms = r.window_end_ms.max(r.journal_time_ms);
                }
            }
        }
        s
    }

    /// Sets each replica's lag at `now`: the seconds since it last held everything. A replica
    /// whose journal gets each shipment (a fine log, sync mode) holds what its journal or its
    /// layout holds, and must hold every shipment (a fine log keeps the local log up to a
    /// second behind them): it is behind since its journal's newest record was made, or, with
    /// none ahead of the layout, since the layout last caught up. Any other replica must hold
    /// what the local log has, and is behind since it last did (an S3 replica between uploads).
    /// The `ltx/` files of a journaled replica may trail while the journal keeps up: that is
    /// no lag for `tradevault restore`, and shows in `layout_txid` and in failures.
    pub fn measure_lags(&mut self, now_ms: i64) {
        let local = self.txid;
        let shipped = self.shipped_txid.max(local);
        let age = |since: Option<i64>| since.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        for r in &mut self.replicas {
            let layout = r.txid.unwrap_or(0);
            let journal = if r.foreign_to == 0 { r.journal_txid } else { 0 };
            let (held, wanted) = if r.journaled && r.foreign_to == 0 {
                (layout.max(journal), shipped)
            } else {
                (layout, local)
            };
            r.lag_seconds = if r.txid.is_some() && held >= wanted {
                0.0
            } else if journal > layout {
                age(r.journal_time_ms)
            } else {
                age(r.caught_up_at_ms)
            };
        }
    }
}

/// One replica, as last reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Its name.
    pub name: String,
    /// Where it is (no credentials).
    pub url: String,
    /// The newest TXID on it (None until it was first listed).
    pub txid: Option<u64>,
    /// When the newest file on it was made (its header time: the point `restore` names).
    pub txid_time_ms: Option<i64>,
    /// Seconds since it last held everything (0 when caught up): everything shipped, for a
    /// replica whose journal gets each shipment; else everything the local log had (see
    /// [`DatabaseStatus::measure_lags`]).
    pub lag_seconds: f64,
    /// The last file uploaded by this process: `<level>/<min>-<max>.ltx`.
    pub last_file: Option<String>,
    /// When it last held everything the local log had (ms since the epoch).
    pub caught_up_at_ms: Option<i64>,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// When that error happened (ms since the epoch).
    pub last_error_at_ms: Option<i64>,
    /// What to check about that error (`Error::hint`), for the error `Engine::wait_synced` returns.
    #[serde(skip)]
    pub last_hint: Option<&'static str>,
    /// Failed attempts in a row.
    pub failures: u64,
    /// Bytes uploaded by this process.
    pub bytes_uploaded: u64,
    /// Files uploaded by this process.
    pub files_uploaded: u64,
    /// Oldest restorable point (ms since the epoch), as of the last maintenance pass.
    pub window_start_ms: Option<i64>,
    /// Newest restorable point (ms since the epoch).
    pub window_end_ms: Option<i64>,
    /// Files on the replica, as of the last maintenance pass.
    pub files: Option<u64>,
    /// Bytes on the replica, as of the last maintenance pass.
    pub bytes: Option<u64>,
    /// A file replica's journal files (the journal, its spare and its segments: see
    /// `replica::journal`), as of the last maintenance pass; not in `files`.
    #[serde(default)]
    pub journal_files: u64,
    /// Their bytes; not in `bytes`.
    #[serde(default)]
    pub journal_bytes: u64,
    /// The store commit every write up to which is on this replica (sync mode).
    #[serde(skip)]
    pub commit_seq: u64,
    /// The uploader has found where the replica is (and replayed its journal into the layout).
    #[serde(skip)]
    pub discovered: bool,
    /// The newest TXID in a file replica's journal, in sync mode or with a fine log (0: none):
    /// ahead of `txid` by what has not reached the replica's `ltx/` files yet (with a fine log, up
    /// to a second).
    #[serde(default)]
    pub journal_txid: u64,
    /// When the journal's newest record was made.
    #[serde(skip)]
    pub journal_time_ms: Option<i64>,
    /// A journal gets each shipment (sync mode, a fine log): the replica must hold every
    /// shipment, not only what the local log has.
    #[serde(skip)]
    pub journaled: bool,
    /// Why the replica's journal failed, while it does (its layout then holds every shipment,
    /// from the local log written every few milliseconds meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
    /// In `tradevault status`, when the journal is ahead: the newest TXID in the replica's `ltx/`
    /// files (`txid` is then the journal's, the point `restore` reaches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout_txid: Option<u64>,
    /// The replica holds another history up to this TXID until this history's snapshot past it
    /// is uploaded (0: it does not): nothing is credited to it meanwhile.
    #[serde(skip)]
    pub foreign_to: u64,
    /// The journal waits for the layout (to start a new lap, or past a gap): the next upload
    /// goes without waiting out the sync interval.
    #[serde(skip)]
    pub layout_wanted: bool,
}

/// Writes `status` to `dir/status.json` so that it appears whole (temporary file, rename).
pub fn write(dir: &Path, status: &DatabaseStatus) -> Result<()> {
    let path = dir.join(STATUS_FILE);
    let tmp = dir.join(format!("{STATUS_FILE}.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(status).map_err(|e| Error::Internal {
        message: format!("status: {e}"),
    })?;
    std::fs::write(&tmp, text).map_err(|e| Error::io("write status", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("write status", &path, e))
}

/// Reads the status last written for the database whose local log is `dir`; `None` if there is none.
pub fn read(dir: &Path) -> Result<Option<DatabaseStatus>> {
    let path = dir.join(STATUS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                detail: format!("unreadable status: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read status", &path, e)),
    }
}

/// The local log of `db`: a hidden directory beside it, `.<file name>-tradevault`.
pub fn local_log_dir(db: &Path) -> PathBuf {
    let name = db
        .file_name()
        .map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
    db.parent()
        .unwrap_or(Path::new("."))
        .join(format!(".{name}-tradevault"))
}

/// A process replicating a database, as it registered itself (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Its name in status and metrics.
    pub database: String,
    /// Its file, absolute.
    pub path: PathBuf,
    /// The process replicating it.
    pub pid: u32,
    /// Its pid namespace (`/proc/self/ns/pid`'s link), where `pid` means something: a
    /// registry shared with a container holds pids of another namespace. None from older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
}

/// This process's pid namespace, as [`Registration::pid_ns`] records it.
pub fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

impl Registration {
    /// The file in `dir` that registers the database file `path`: named after a hash of the
    /// path, so a new registration of the same file replaces the old one.
    pub fn file_in(dir: &Path, path: &Path) -> PathBuf {
        let hash = blake3::hash(path.as_os_str().as_encoded_bytes());
        let hex: String = hash.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        dir.join(format!("{hex}.json"))
    }

    /// Writes it into `dir` whole (temporary file, rename); returns its file.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = Registration::file_in(dir, &self.path);
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::Internal {
            message: format!("registration: {e}"),
        })?;
        std::fs::write(&tmp, text).map_err(|e| Error::io("write registration", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("write registration", &path, e))?;
        Ok(path)
    }

    /// Every registration in `dir`, with its file, sorted by database file; none when `dir`
    /// does not exist. A file that does not parse (being replaced, or not ours) is skipped.
    pub fn list(dir: &Path) -> Vec<(PathBuf, Registration)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<(PathBuf, Registration)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let r = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                Some((p, r))
            })
            .collect();
        found.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_whose_journal_holds_every_shipment_is_not_behind_its_layout() {
        let replica = |txid, journaled, journal_txid, journal_time_ms| ReplicaStatus {
            txid: Some(txid),
            caught_up_at_ms: Some(1_000),
            journaled,
            journal_txid,
            journal_time_ms,
            ..ReplicaStatus::default()
        };
        // The local log is at 10; 11 and 12 were shipped to the journals only (a fine log).
        let mut st = DatabaseStatus {
            txid: 10,
            shipped_txid: 12,
            replicas: vec![
                // ltx/ at 9, the journal at 12: it holds everything.
                replica(9, true, 12, Some(4_990)),
                // Its journal one shipment short, its newest record made at 4.99 s.
                replica(9, true, 11, Some(4_990)),
                // A journal that never wrote (failing): ltx/ caught up with the local log at
                // 1 s, but not with what was shipped.
                replica(10, true, 0, None),
                // No journal (an S3 replica): behind the local log since 1 s.
                replica(9, false, 0, None),
                // No journal, caught up with the local log.
                replica(10, false, 0, None),
            ],
            ..DatabaseStatus::default()
        };
        st.measure_lags(5_000);
        let lags: Vec<f64> = st.replicas.iter().map(|r| r.lag_seconds).collect();
        assert_eq!(lags, [0.0, 0.01, 4.0, 4.0, 0.0]);
        // A journal holding another history counts for nothing.
        st.replicas[0].foreign_to = 20;
        st.measure_lags(5_000);
        assert_eq!(st.replicas[0].lag_seconds, 4.0);
        // Not listed yet: behind, whatever the numbers say.
        st.replicas[4].txid = None;
        st.txid = 0;
        st.measure_lags(5_000);
        assert_eq!(st.replicas[4].lag_seconds, 4.0);
    }

    #[test]
    fn a_report_counts_the_journals_points_past_the_layout() {
        let mut st = DatabaseStatus {
            txid: 10,
            txid_time_ms: Some(4_000),
            shipped_txid: 12,
            shipped_time_ms: Some(4_990),
            replicas: vec![ReplicaStatus {
                txid: Some(9),
                txid_time_ms: Some(3_900),
                window_start_ms: Some(1_000),
                window_end_ms: Some(3_900),
                journal_txid: 12,
                journal_time_ms: Some(4_990),
                ..ReplicaStatus::default()
            }],
            ..DatabaseStatus::default()
        };
        let r = st.reported();
        assert_eq!((r.txid, r.txid_time_ms), (12, Some(4_990)));
        let replica = &r.replicas[0];
        assert_eq!(
            (replica.txid, replica.layout_txid, replica.window_end_ms),
            (Some(12), Some(9), Some(4_990))
        );
        // Without a window yet (no listing), none is made up.
        st.replicas[0].window_start_ms = None;
        st.replicas[0].window_end_ms = None;
        assert_eq!(st.reported().replicas[0].window_end_ms, None);
    }

    #[test]
    fn a_registration_replaces_the_previous_one_of_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Registration {
            database: "bot".into(),
            path: "/srv/bot.db".into(),
            pid: 10,
            pid_ns: None,
        };
        let file = first.write(dir.path()).expect("write");
        let second = Registration { pid: 11, ..first };
        assert_eq!(second.write(dir.path()).expect("write"), file);
        let other = Registration {
            database: "other".into(),
            path: "/srv/other.db".into(),
            pid: 12,
            pid_ns: pid_namespace(),
        };
        other.write(dir.path()).expect("write");
        std::fs::write(dir.path().join("junk.json"), "not json").expect("junk");
        let listed: Vec<Registration> = Registration::list(dir.path())
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(listed, vec![second, other]);
        assert!(Registration::list(&dir.path().join("none")).is_empty());
    }
}
