//! [`plan`]: which files of a replica reach a target, by Litestream's rules, and whether a time
//! can be restored exactly (see the module doc of `restore`).

use serde::Serialize;

use super::Target;
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile, SNAPSHOT_LEVEL};

/// How long after a compacted file the next file may come for a time inside it to restore
/// (milliseconds): within this, the commits it holds are taken as made at its time.
pub const EXACT_WITHIN_MS: i64 = 1_000;

/// The files a restore applies, in order, and the point they reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// (level, min TXID, max TXID, bytes) of each file, in the order applied.
    pub files: Vec<(u32, u64, u64, u64)>,
    /// The TXID the restored database is at.
    pub txid: u64,
    /// When that point was replicated (ms since the epoch): the timestamp of the last file.
    pub point_ms: i64,
    /// The same time, in RFC 3339.
    pub point_time: String,
    /// Bytes to read.
    pub bytes: u64,
}

/// Plans a restore of `target` from `replica`.
pub fn plan(replica: &Replica, target: Target) -> Result<Plan> {
    plan_listed(&replica.list_all()?, &replica.describe(), target)
}

/// [`plan`] over `all`, the files of every level of the replica `from` (named in messages), so
/// that one listing serves several plans.
pub fn plan_listed(all: &[ReplicaFile], from: &str, target: Target) -> Result<Plan> {
    if all.is_empty() {
        return Err(impossible(format!("no LTX files in {from}")));
    }
    let usable = |f: &ReplicaFile| match target {
        Target::Latest => true,
        Target::Txid(t) => f.max_txid <= t,
        Target::Time(ms) => f.created_at_ms <= ms,
    };
    let chain = chain(all, usable);
    let current = chain.last().map_or(0, |f| f.max_txid);
    let points = restorable_points(all);
    if let Target::Time(ms) = target {
        let newest = all.iter().map(|f| f.created_at_ms).max().unwrap_or(0);
        if ms > newest {
            // Commits after the newest point may not have reached the replica: restoring "to T"
            // would silently be older than T.
            return Err(impossible(format!(
                "{} is after the newest replicated point ({}); restore the latest instead",
                time(ms),
                describe(&points[points.len().saturating_sub(1)..])
            )));
        }
    }
    if chain.first().is_none_or(|f| f.min_txid != 1) {
        return Err(impossible(match target {
            Target::Time(ms) => format!(
                "{} is before the first restorable point ({}); restore that point or a later one",
                time(ms),
                describe(&points[..points.len().min(1)])
            ),
            _ => format!(
                "no snapshot reaches this target; restorable points: {}",
                describe(&points)
            ),
        }));
    }
    if let Target::Txid(t) = target
        && current != t
    {
        let near = nearest(&points, |p| i128::from(p.0) - i128::from(t));
        return Err(impossible(format!(
            "txid {t} is not a restorable point (the nearest are {near})"
        )));
    }
    if all.iter().any(|f| usable(f) && f.min_txid > current + 1) {
        return Err(impossible(format!(
            "the files are not contiguous: they reach txid {current}, then skip ahead"
        )));
    }
    if let Target::Time(ms) = target {
        refuse_inexact(ms, &chain, all)?;
    }
    let last = chain[chain.len() - 1];
    Ok(Plan {
        files: chain
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid, f.size))
            .collect(),
        txid: current,
        point_ms: last.created_at_ms,
        point_time: time(last.created_at_ms),
        bytes: chain.iter().map(|f| f.size).sum(),
    })
}

/// Plans the files that bring a database restored from a backup to `target`. The backup holds
/// every commit finished before `state_min_ms` and none started after `state_max_ms`.
///
/// A file's commits all finished before the next file's timestamp; so every file followed by a
/// file stamped at or before `state_min_ms` is already in the backup, and the chain starts right
/// after the last of them, at `k + 1`. Applying the chain's files in order over the backup gives
/// the target state: a page the backup holds newer than an early file's copy is changed again in
/// a later file, which is applied after it. That needs the target to contain the whole backup, so
/// the plan is refused unless `state_max_ms` is at or before the target point's timestamp.
pub fn plan_after(
    replica: &Replica,
    target: Target,
    state_min_ms: i64,
    state_max_ms: i64,
) -> Result<Plan> {
    let all = replica.list_all()?;
    let full = plan_listed(&all, &replica.describe(), target)?;
    plan_after_listed(&all, &full, state_min_ms, state_max_ms)
}

/// [`plan_after`] over `all`, the files of every level of the replica, given `full`, the plan
/// of the same target from the replica alone.
pub fn plan_after_listed(
    all: &[ReplicaFile],
    full: &Plan,
    state_min_ms: i64,
    state_max_ms: i64,
) -> Result<Plan> {
    let next_stamp = |f: &ReplicaFile| {
        all.iter()
            .filter(|n| n.min_txid == f.max_txid + 1)
            .map(|n| n.created_at_ms)
            .min()
    };
    let k = all
        .iter()
        .filter(|f| next_stamp(f).is_some_and(|t| t <= state_min_ms))
        .map(|f| f.max_txid)
        .max()
        .unwrap_or(0);
    if k == 0 {
        return Err(impossible(
            "the backup is older than the replica's history: restore from the replica alone".into(),
        ));
    }
    if state_max_ms > full.point_ms {
        return Err(impossible(format!(
            "the backup holds commits up to {}, after the point asked for ({}): restore the backup alone, or from the replica alone",
            time(state_max_ms),
            full.point_time
        )));
    }
    let mut chain: Vec<&ReplicaFile> = Vec::new();
    let current = extend(&mut chain, all, k, |f| f.max_txid <= full.txid);
    if current != full.txid {
        return Err(impossible(format!(
            "the files after the backup reach txid {current}, not {}",
            full.txid
        )));
    }
    Ok(Plan {
        files: chain
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid, f.size))
            .collect(),
        txid: full.txid,
        point_ms: full.point_ms,
        point_time: full.point_time.clone(),
        bytes: chain.iter().map(|f| f.size).sum(),
    })
}

/// The newest usable snapshot, then, across all levels, the usable file that continues the chain
/// and reaches furthest (ties: the lower start, then the higher level), until none does.
fn chain(all: &[ReplicaFile], usable: impl Fn(&ReplicaFile) -> bool) -> Vec<&ReplicaFile> {
    let mut chain: Vec<&ReplicaFile> = Vec::new();
    let mut current = 0u64;
    if let Some(snapshot) = all
        .iter()
        .filter(|f| f.level == SNAPSHOT_LEVEL && usable(f))
        .max_by_key(|f| f.max_txid)
    {
        chain.push(snapshot);
        current = snapshot.max_txid;
    }
    extend(&mut chain, all, current, usable);
    chain
}

/// Extends `chain`, which reaches `current`, with the usable file that continues it and reaches
/// furthest (ties: the lower start, then the higher level), until none does; returns the TXID
/// reached.
fn extend<'a>(
    chain: &mut Vec<&'a ReplicaFile>,
    all: &'a [ReplicaFile],
    mut current: u64,
    usable: impl Fn(&ReplicaFile) -> bool,
) -> u64 {
    while let Some(f) = all
        .iter()
        .filter(|f| f.min_txid <= current + 1 && f.max_txid > current && usable(f))
        .max_by(|a, b| {
            a.max_txid
                .cmp(&b.max_txid)
                .then(b.min_txid.cmp(&a.min_txid))
                .then(a.level.cmp(&b.level))
        })
    {
        current = f.max_txid;
        chain.push(f);
    }
    current
}

/// Refuses a time inside a compacted file when the file after it came more than
/// [`EXACT_WITHIN_MS`] later: the state after it may hold commits made after `ms`.
fn refuse_inexact(ms: i64, chain: &[&ReplicaFile], all: &[ReplicaFile]) -> Result<()> {
    let Some(&last) = chain.last() else {
        return Ok(());
    };
    if !(1..SNAPSHOT_LEVEL).contains(&last.level) {
        return Ok(());
    }
    let Some(next) = all
        .iter()
        .filter(|f| f.min_txid == last.max_txid + 1)
        .min_by_key(|f| f.created_at_ms)
    else {
        return Ok(());
    };
    if next.created_at_ms.saturating_sub(last.created_at_ms) <= EXACT_WITHIN_MS {
        return Ok(());
    }
    let point = |f: &ReplicaFile| format!("txid {} at {}", f.max_txid, time(f.created_at_ms));
    let before = match chain.len() {
        0 | 1 => "none".to_owned(),
        n => point(chain[n - 2]),
    };
    Err(Error::invalid(
        "not_exact",
        None,
        format!(
            "{} falls inside level-{} file {}, which merges transactions {}..={} made up to {}: \
             the state at that time cannot be restored exactly; the nearest restorable points \
             are {before} (before) and {} (after); restore one of them with --txid N",
            time(ms),
            last.level,
            ltx::file_name(last.min_txid, last.max_txid),
            last.min_txid,
            last.max_txid,
            time(next.created_at_ms),
            point(last),
        ),
    ))
}

/// (txid, time) of every point a file ends at, from the first snapshot on, sorted.
fn restorable_points(all: &[ReplicaFile]) -> Vec<(u64, i64)> {
    let first = all
        .iter()
        .filter(|f| f.min_txid == 1)
        .map(|f| f.max_txid)
        .min()
        .unwrap_or(u64::MAX);
    let mut points: Vec<(u64, i64)> = all
        .iter()
        .filter(|f| f.max_txid >= first)
        .map(|f| (f.max_txid, f.created_at_ms))
        .collect();
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

/// A time in milliseconds since the epoch, in RFC 3339.
pub(super) fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

pub(super) fn impossible(message: String) -> Error {
    Error::invalid("restore_impossible", None, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(level: u32, min_txid: u64, max_txid: u64, created_at_ms: i64) -> ReplicaFile {
        ReplicaFile {
            level,
            min_txid,
            max_txid,
            size: 100,
            created_at_ms,
        }
    }

    #[test]
    fn a_time_inside_a_compacted_file_is_refused_unless_the_next_file_is_close() {
        // Snapshot 1-2 at 10 s, level-1 file 3-6 stamped at 20 s (its commits run up to the next
        // file), level-0 file 7 at 30 s.
        let all = vec![
            file(9, 1, 2, 10_000),
            file(1, 3, 6, 20_000),
            file(0, 7, 7, 30_000),
        ];
        let plan_at = |ms| {
            let c = chain(&all, |f| f.created_at_ms <= ms);
            refuse_inexact(ms, &c, &all).map(|()| c.last().map(|f| f.max_txid))
        };
        assert!(
            matches!(plan_at(15_000), Ok(Some(2))),
            "between files: exact"
        );
        let err = plan_at(25_000).expect_err("inside the compacted file");
        assert!(
            matches!(
                err,
                Error::Invalid {
                    code: "not_exact",
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("txid 2 at 1970-01-01T00:00:10Z")
                && text.contains("txid 6 at 1970-01-01T00:00:20Z")
                && text.contains("--txid"),
            "{text}"
        );
        assert!(
            matches!(plan_at(30_000), Ok(Some(7))),
            "at the next file: exact"
        );
        // The same files, the next one within a second: the compacted file restores.
        let close = vec![
            file(9, 1, 2, 10_000),
            file(1, 3, 6, 20_000),
            file(0, 7, 7, 21_000),
        ];
        let c = chain(&close, |f| f.created_at_ms <= 20_500);
        assert!(refuse_inexact(20_500, &c, &close).is_ok());
        // A level-0 file last in the chain is one sync: it restores.
        let l0 = vec![
            file(9, 1, 2, 10_000),
            file(0, 3, 3, 20_000),
            file(0, 4, 4, 30_000),
        ];
        let c = chain(&l0, |f| f.created_at_ms <= 25_000);
        assert!(refuse_inexact(25_000, &c, &l0).is_ok());
    }
}
