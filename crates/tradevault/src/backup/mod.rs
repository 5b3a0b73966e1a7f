//! Backups: whole, consistent, compressed (and optionally encrypted) copies of a SQLite database,
//! taken online, written to targets (directories or S3 prefixes) that describe themselves.
//!
//! - [`create`]: reads a [`crate::snapshot::Snapshot`] (a read transaction: writers go on), hashes every
//!   page, and stores the pages that differ from the previous backup on that target (all of them
//!   for a full backup) as compressed segments in pack objects, then the page table, then the
//!   manifest. A backup exists once its manifest does, so a crash leaves nothing visible.
//! - [`Catalog`]: what a target holds, read from the target alone: manifests, verification and
//!   drill records, with `index.json` as a cache rebuilt from them.
//! - [`verify()`]: every object's checksum; deep: restore to a scratch file, check it, compare
//!   row counts.
//! - [`restore_backup`]: materialise a backup (its pages may live in its ancestors' packs) into a
//!   new file, every page checked against its hash.
//! - [`retention`]: prune plans (keep-last, keep-within, hourly/daily/weekly/monthly), computed
//!   first, then applied; never the newest verified backup, never what a kept backup needs.

pub mod catalog;
pub(crate) mod census;
pub mod codec;
mod create;
pub mod format;
mod materialize;
pub mod retention;
pub mod target;
mod verify;

use std::sync::atomic::{AtomicU64, Ordering};

pub use catalog::{BackupRecord, Catalog, DrillRecord, Stats, Verification};
pub use codec::{Codec, Identity};
pub use create::{CreateOptions, create};
pub use format::Manifest;
pub use materialize::{RestoredBackup, restore_backup};
pub use retention::{PrunePlan, Pruned};
pub use target::Target;
pub(crate) use verify::compare_rows;
pub use verify::{VerifyOptions, verify};

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Asked for by an operator.
    Manual,
    /// Taken by the scheduler.
    Scheduled,
    /// Taken before an in-place restore replaces the database.
    Safety,
}

impl Kind {
    /// Its name in manifests and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manual => "manual",
            Kind::Scheduled => "scheduled",
            Kind::Safety => "safety",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Kind> {
        match s {
            "manual" => Ok(Kind::Manual),
            "scheduled" => Ok(Kind::Scheduled),
            "safety" => Ok(Kind::Safety),
            other => Err(crate::Error::invalid(
                "invalid_value",
                Some("type".into()),
                format!("backup type must be manual, scheduled or safety, not {other:?}"),
            )),
        }
    }
}

/// Counters a progress bar polls while a backup is written or restored.
#[derive(Debug, Default)]
pub struct Progress {
    pages_total: AtomicU64,
    pages_done: AtomicU64,
    bytes_stored: AtomicU64,
}

impl Progress {
    /// Pages to go through.
    pub fn pages_total(&self) -> u64 {
        self.pages_total.load(Ordering::Relaxed)
    }

    /// Pages gone through.
    pub fn pages_done(&self) -> u64 {
        self.pages_done.load(Ordering::Relaxed)
    }

    /// Bytes written to (or read from) the target so far.
    pub fn bytes_stored(&self) -> u64 {
        self.bytes_stored.load(Ordering::Relaxed)
    }

    pub(crate) fn start(&self, pages: u64) {
        self.pages_total.store(pages, Ordering::Relaxed);
        self.pages_done.store(0, Ordering::Relaxed);
    }

    pub(crate) fn add_pages(&self, n: u64) {
        self.pages_done.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes_stored.fetch_add(n, Ordering::Relaxed);
    }
}

/// Time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ms(ms: i64) -> String {
    crate::replica::s3::rfc3339_nano(ms)
}

/// A new backup id: the time (`YYYYMMDDTHHMMSS.mmmZ`) and 6 hex digits that differ between
/// processes and calls, so ids sort by time and never collide.
pub(crate) fn new_id(now_ms: i64, salt: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ts = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag = format::hex_hash(format!("{now_ms}/{}/{n}/{salt}", std::process::id()).as_bytes());
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z-{}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        now_ms.rem_euclid(1000),
        &tag[..6]
    )
}

/// The time in a backup id, ms since the epoch.
pub fn id_time_ms(id: &str) -> Option<i64> {
    let stamp = id.split('-').next()?;
    let (date, rest) = stamp.split_once('T')?;
    let (hms, frac) = rest.trim_end_matches('Z').split_once('.')?;
    if date.len() != 8 || hms.len() != 6 {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        &date[..4],
        &date[4..6],
        &date[6..],
        &hms[..2],
        &hms[2..4],
        &hms[4..],
        frac
    );
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_carry_it() {
        let a = new_id(1_763_800_000_123, "db");
        let b = new_id(1_763_800_000_123, "db");
        let c = new_id(1_763_800_001_000, "db");
        assert_ne!(a, b);
        assert!(a < c && b < c, "{a} {b} {c}");
        assert_eq!(id_time_ms(&a), Some(1_763_800_000_123));
        assert!(a.starts_with("20251122T"), "{a}");
    }
}
