//! Restore from a replica: plan which LTX files reach the target, verify each before using it,
//! assemble the database in a staging file, check it with `PRAGMA integrity_check`, and only then
//! give it its name, never over an existing file.
//!
//! Chains are planned with Litestream 0.5's rules (docs/ltx-litestream-0.5.17.md §6), so either
//! tool's replicas restore here: start from the newest usable snapshot (level 9), then keep taking,
//! across all levels, the file that continues the chain and reaches furthest. One difference: a
//! time restores the newest point at or before it (Litestream takes files strictly before it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile, SNAPSHOT_LEVEL};

/// What to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest state on the replica.
    Latest,
    /// The state right after this transaction.
    Txid(u64),
    /// The newest state replicated at or before this time (milliseconds since the epoch).
    Time(i64),
}

/// The files a restore applies, in order, and the point they reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// (level, min TXID, max TXID, bytes) of each file, in the order applied.
    pub files: Vec<(u32, u64, u64, u64)>,
    /// The TXID the restored database is at.
    pub txid: u64,
    /// When that point was replicated (ms since the epoch).
    pub point_ms: i64,
    /// Bytes to read.
    pub bytes: u64,
}

/// Plans a restore of `target` from `replica`.
pub fn plan(replica: &Replica, target: Target) -> Result<Plan> {
    let mut levels: BTreeMap<u32, Vec<ReplicaFile>> = BTreeMap::new();
    for level in 0..=SNAPSHOT_LEVEL {
        let files = replica.list(level)?;
        if !files.is_empty() {
            levels.insert(level, files);
        }
    }
    let all: Vec<&ReplicaFile> = levels.values().flatten().collect();
    if all.is_empty() {
        return Err(restore_error(format!(
            "no LTX files in {}",
            replica.describe()
        )));
    }
    let usable = |f: &ReplicaFile| match target {
        Target::Latest => true,
        Target::Txid(t) => f.max_txid <= t,
        Target::Time(ms) => f.created_at_ms <= ms,
    };
    let mut chain: Vec<&ReplicaFile> = Vec::new();
    let mut current = 0u64;
    if let Some(snapshot) = levels
        .get(&SNAPSHOT_LEVEL)
        .and_then(|s| s.iter().filter(|f| usable(f)).max_by_key(|f| f.max_txid))
    {
        chain.push(snapshot);
        current = snapshot.max_txid;
    }
    loop {
        let next = all
            .iter()
            .filter(|f| f.min_txid <= current + 1 && f.max_txid > current && usable(f))
            .max_by(|a, b| {
                a.max_txid
                    .cmp(&b.max_txid)
                    .then(b.min_txid.cmp(&a.min_txid))
                    .then(a.level.cmp(&b.level))
            });
        match next {
            Some(f) => {
                current = f.max_txid;
                chain.push(f);
            }
            None => break,
        }
    }
    let points = restorable_points(&all);
    if chain.is_empty() || chain[0].min_txid != 1 {
        return Err(restore_error(format!(
            "no snapshot reaches this target; restorable points: {}",
            describe(&points)
        )));
    }
    if let Target::Txid(t) = target
        && current != t
    {
        let near = nearest(&points, |p| i128::from(p.0) - i128::from(t));
        return Err(restore_error(format!(
            "txid {t} is not a restorable point (the nearest are {near})"
        )));
    }
    if let Target::Time(ms) = target {
        let newest = all.iter().map(|f| f.created_at_ms).max().unwrap_or(0);
        if ms > newest {
            // Commits after the newest point may not have reached the replica: restoring "to T"
            // would silently be older than T.
            return Err(restore_error(format!(
                "{} is after the newest replicated point ({}); restore the latest instead",
                time(ms),
                describe(&points[points.len().saturating_sub(1)..])
            )));
        }
    }
    if all.iter().any(|f| usable(f) && f.min_txid > current + 1) {
        return Err(restore_error(format!(
            "the files are not contiguous: they reach txid {current}, then skip ahead"
        )));
    }
    let last = chain[chain.len() - 1];
    Ok(Plan {
        files: chain
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid, f.size))
            .collect(),
        txid: current,
        point_ms: last.created_at_ms,
        bytes: chain.iter().map(|f| f.size).sum(),
    })
}

/// (txid, time) of every point a file ends at, sorted.
fn restorable_points(all: &[&ReplicaFile]) -> Vec<(u64, i64)> {
    let mut points: Vec<(u64, i64)> = all.iter().map(|f| (f.max_txid, f.created_at_ms)).collect();
    points.sort_unstable();
    points.dedup_by_key(|p| p.0);
    points
}

fn describe(points: &[(u64, i64)]) -> String {
    let show: Vec<String> = points
        .iter()
        .rev()
        .take(5)
        .map(|(t, ms)| format!("txid {t} at {}", time(*ms)))
        .collect();
    if show.is_empty() {
        "none".into()
    } else {
        show.join(", ")
    }
}

fn nearest(points: &[(u64, i64)], distance: impl Fn(&(u64, i64)) -> i128) -> String {
    let below = points
        .iter()
        .filter(|p| distance(p) < 0)
        .max_by_key(|p| distance(p));
    let above = points
        .iter()
        .filter(|p| distance(p) > 0)
        .min_by_key(|p| distance(p));
    let show = |p: Option<&(u64, i64)>| {
        p.map_or("none".to_owned(), |(t, ms)| {
            format!("txid {t} at {}", time(*ms))
        })
    };
    format!("{} before and {} after", show(below), show(above))
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

fn restore_error(message: String) -> Error {
    Error::invalid("restore_impossible", None, message)
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// The plan it followed.
    pub plan: Plan,
    /// The restored database.
    pub output: String,
    /// Its size in pages.
    pub pages: u32,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Restores `plan` from `replica` into `output`, which must not exist.
pub fn apply(replica: &Replica, plan: &Plan, output: &Path) -> Result<Restored> {
    if output.exists() {
        return Err(Error::invalid(
            "output_exists",
            None,
            format!(
                "{} already exists; restore never overwrites a file",
                output.display()
            ),
        ));
    }
    // A WAL left beside the output would be replayed over the restored pages at the next open.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", output.display()));
        if side.exists() {
            let message = format!(
                "{} exists; remove it first, or restore elsewhere",
                side.display()
            );
            return Err(Error::invalid("output_exists", None, message));
        }
    }
    let staging = PathBuf::from(format!("{}.tradevault-restore", output.display()));
    // Created here with create_new, so it is ours to remove; an existing one is refused, never deleted.
    let out = File::options()
        .write(true)
        .create_new(true)
        .open(&staging)
        .map_err(|e| Error::io("create staging file", &staging, e))?;
    let result = assemble(replica, plan, out, &staging).and_then(|(pages, page_size)| {
        check_integrity(&staging)?;
        // A hard link fails if the name is taken meanwhile: the output appears complete or not at all.
        std::fs::hard_link(&staging, output)
            .map_err(|e| Error::io("publish restored database", output, e))?;
        Ok((pages, page_size))
    });
    let _ = std::fs::remove_file(&staging);
    let (pages, page_size) = result?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(Restored {
        plan: plan.clone(),
        output: output.display().to_string(),
        pages,
        bytes: u64::from(pages) * u64::from(page_size),
    })
}

fn assemble(replica: &Replica, plan: &Plan, mut out: File, staging: &Path) -> Result<(u32, u32)> {
    let (mut commit, mut page_size) = (0u32, 0u32);
    for &(level, min, max, size) in &plan.files {
        let file = ReplicaFile {
            level,
            min_txid: min,
            max_txid: max,
            size,
            created_at_ms: 0,
        };
        let bytes = replica.read(&file)?;
        // The whole file is verified before any of its pages is written.
        let (header, pages, _) =
            ltx::Decoder::decode_all(&bytes[..]).map_err(|source| Error::Ltx {
                name: format!("{level}/{}", ltx::file_name(min, max)),
                source,
            })?;
        if (header.min_txid, header.max_txid) != (min, max) {
            let name = ltx::file_name(min, max);
            let (lo, hi) = (header.min_txid, header.max_txid);
            return Err(restore_error(format!(
                "{name} holds transactions {lo}..={hi}: it was renamed or damaged"
            )));
        }
        if page_size != 0 && header.page_size != page_size {
            return Err(restore_error(format!(
                "page size changes from {page_size} to {} in {}",
                header.page_size,
                ltx::file_name(min, max)
            )));
        }
        page_size = header.page_size;
        commit = header.commit;
        for page in pages.iter().filter(|p| p.pgno <= commit) {
            out.seek(SeekFrom::Start(
                u64::from(page.pgno - 1) * u64::from(page_size),
            ))
            .and_then(|_| out.write_all(&page.data))
            .map_err(|e| Error::io("write staging file", staging, e))?;
        }
    }
    let len = u64::from(commit) * u64::from(page_size);
    out.set_len(len)
        .map_err(|e| Error::io("size staging file", staging, e))?;
    out.sync_all()
        .map_err(|e| Error::io("fsync staging file", staging, e))?;
    Ok((commit, page_size))
}

fn check_integrity(path: &Path) -> Result<()> {
    // immutable=1: read the file as it is, creating no -wal or -shm beside it.
    let escaped = path
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");
    let uri = format!("file:{escaped}?immutable=1");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = rusqlite::Connection::open_with_flags(&uri, flags)
        .map_err(|e| Error::sqlite("open restored database", e))?;
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| Error::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if result != "ok" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: result,
        });
    }
    Ok(())
}
