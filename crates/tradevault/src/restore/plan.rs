//! [`plan`]: which files of a replica reach a target, by Litestream's rules, and whether a time
//! can be restored exactly (see the module doc of `restore`).

use serde::Serialize;

use super::Target;
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile, SNAPSHOT_LEVEL};

/// When `f` was made: its header time, never before its listed time (a file stamped the old way
/// has only the listed one).
fn made(f: &ReplicaFile, header_time: HeaderTime<'_>) -> Result<i64> {
    Ok(f.made(header_time(f)?))
}

/// Most headers a plan over a backup reads to find the last file the backup holds.
const HEADERS_READ_MAX: usize = 64;

/// A file's header time: when it was made, after every commit it holds (see `restore`).
pub type HeaderTime<'a> = &'a dyn Fn(&ReplicaFile) -> Result<i64>;

/// The files a restore applies, in order, and the point they reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// (level, min TXID, max TXID, bytes) of each file, in the order applied.
    pub files: Vec<(u32, u64, u64, u64)>,
    /// The TXID the restored database is at.
    pub txid: u64,
    /// When that point was replicated (ms since the epoch): the header time of the last file,
    /// after every commit the restored state holds.
    pub point_ms: i64,
    /// The same time, in RFC 3339.
    pub point_time: String,
    /// Bytes to read.
    pub bytes: u64,
}

/// Plans a restore of `target` from `replica`.
pub fn plan(replica: &Replica, target: Target) -> Result<Plan> {
    let mut attempts = 0;
    loop {
        match plan_listed(replica, &replica.list_restorable_for(target)?, target) {
            // A live replica's compaction deleted a listed file before its header was read.
            Err(e) if e.is_not_found() && attempts < RELIST_MAX => attempts += 1,
            planned => return planned,
        }
    }
}

/// How many times a plan lists a replica again when a file it listed is gone.
pub const RELIST_MAX: u32 = 3;

/// [`plan`] over `all`, the files of every level of `replica`, so that one listing serves
/// several plans. Reads the header of the last file (and, to refuse a time, of the one before).
pub fn plan_listed(replica: &Replica, all: &[ReplicaFile], target: Target) -> Result<Plan> {
    plan_files(all, &replica.describe(), target, &|f| {
        replica.header_time(f)
    })
}

/// [`plan_listed`] with the files' header times from `header_time`, and `from` naming the
/// replica in messages.
pub fn plan_files(
    all: &[ReplicaFile],
    from: &str,
    target: Target,
    header_time: HeaderTime<'_>,
) -> Result<Plan> {
    if all.is_empty() {
        return Err(impossible(format!("no LTX files in {from}")));
    }
    if let Target::AtOrBefore(ms) = target {
        return at_or_before(all, ms, header_time);
    }
    let usable = |f: &ReplicaFile| match target {
        Target::Latest => true,
        Target::Txid(t) => f.max_txid <= t,
        Target::Time(ms) | Target::AtOrBefore(ms) => f.created_at_ms <= ms,
    };
    // A coarser file (a second's, a minute's, an hour's points merged) made after the time holds
    // commits made after it: the finer files it overlaps may reach a point made by then.
    let mut left_out: Vec<&ReplicaFile> = Vec::new();
    let chain = loop {
        let chain = chain(all, |f| usable(f) && !left_out.contains(&f));
        match (target, chain.last()) {
            (Target::Time(ms), Some(&last)) if coarse(last) && made(last, header_time)? > ms => {
                left_out.push(last);
            }
            _ => break chain,
        }
    };
    let current = chain.last().map_or(0, |f| f.max_txid);
    let points = restorable_points(all);
    if let Target::Time(ms) = target {
        let newest = all.iter().map(|f| f.created_at_ms).max().unwrap_or(0);
        // At or after the newest listing: a file listed when made (one time) says nothing of
        // commits made by then that have not reached the replica.
        if ms >= newest {
            // Among the newest file's own commits: refused as any such time is.
            if let Some(&last) = chain.last()
                && last.created_at_ms == newest
                && chain.first().is_some_and(|f| f.min_txid == 1)
            {
                let made_ms = made(last, header_time)?;
                if ms < made_ms {
                    return Err(inexact(all, ms, last, made_ms, header_time));
                }
                // Commits after it may not have reached the replica: restoring "to T" would
                // silently be older than T.
                return Err(impossible(format!(
                    "{} is after the newest replicated point (txid {} at {}); restore the latest instead",
                    time(ms),
                    last.max_txid,
                    time(made_ms)
                )));
            }
            // The newest point, at the time it was made (the first of its files' header times:
            // the listing of a file that merges a second of points, a fine log's layout, is its
            // first commit's, up to a second earlier; an hourly merge ending there is made an
            // hour later).
            let mut newest_point: Option<(&ReplicaFile, i64)> = None;
            if let Some(&(txid, _)) = points.last() {
                for f in all.iter().filter(|f| f.max_txid == txid) {
                    let made_ms = made(f, header_time)?;
                    // On a tie, the file listed last: the fewest commits between its times.
                    if newest_point.is_none_or(|(g, m)| {
                        (made_ms, std::cmp::Reverse(f.created_at_ms))
                            < (m, std::cmp::Reverse(g.created_at_ms))
                    }) {
                        newest_point = Some((f, made_ms));
                    }
                }
            }
            let Some((last, made_ms)) = newest_point else {
                return Err(impossible(format!(
                    "{} is after the newest replicated point (none); restore the latest instead",
                    time(ms)
                )));
            };
            // Made after the time: the time falls among its commits.
            if ms < made_ms {
                return Err(inexact(all, ms, last, made_ms, header_time));
            }
            return Err(impossible(format!(
                "{} is after the newest replicated point (txid {} at {}); restore the latest instead",
                time(ms),
                last.max_txid,
                time(made_ms)
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
            Target::Txid(t) if points.first().is_some_and(|p| t < p.0) => format!(
                "txid {t} is before the first restorable point ({}); restore that point or a later one",
                describe(&points[..1])
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
    if let Target::Time(ms) = target
        && let Some(&over) = left_out
            .iter()
            .find(|f| f.min_txid <= current + 1 && f.max_txid > current)
        && !starts_after(all, current, ms, header_time)?
    {
        // Only that coarser file holds the commits after `current`, some made by then.
        return Err(inexact(
            all,
            ms,
            over,
            made(over, header_time)?,
            header_time,
        ));
    }
    if all.iter().any(|f| usable(f) && f.min_txid > current + 1) {
        return Err(impossible(format!(
            "the files are not contiguous: they reach txid {current}, then skip ahead"
        )));
    }
    let last = chain[chain.len() - 1];
    // Never before the listed time: a header older than its listing says nothing more.
    let made_ms = made(last, header_time)?;
    if let Target::Time(ms) = target
        && ms < made_ms
    {
        return Err(inexact(all, ms, last, made_ms, header_time));
    }
    if let Target::Time(ms) = target {
        unbounded_next(all, ms, current, made_ms, header_time)?;
    }
    Ok(Plan {
        files: chain
            .iter()
            .map(|f| (f.level, f.min_txid, f.max_txid, f.size))
            .collect(),
        txid: current,
        point_ms: made_ms,
        point_time: time(made_ms),
        bytes: chain.iter().map(|f| f.size).sum(),
    })
}

/// Plans the files that bring a database restored from a backup to `target`. The backup holds
/// every commit finished before `state_min_ms` and none started after `state_max_ms`.
///
/// A file's commits all finished before it was made (its header time); so a file made at or
/// before `state_min_ms` is already in the backup, with every file before it, and the chain
/// starts right after the last of them, at `k + 1`. Applying the chain's files in order over the backup gives
/// the target state: a page the backup holds newer than an early file's copy is changed again in
/// a later file, which is applied after it. That needs the target to contain the whole backup, so
/// the plan is refused unless `state_max_ms` is at or before the target point's timestamp.
pub fn plan_after(
    replica: &Replica,
    target: Target,
    state_min_ms: i64,
    state_max_ms: i64,
) -> Result<Plan> {
    let all = replica.list_restorable_for(target)?;
    let full = plan_listed(replica, &all, target)?;
    plan_after_listed(&all, &full, state_min_ms, state_max_ms, &|f| {
        replica.header_time(f)
    })
}

/// [`plan_after`] over `all`, the files of every level of the replica, given `full`, the plan
/// of the same target from the replica alone, with files' header times from `header_time`.
pub fn plan_after_listed(
    all: &[ReplicaFile],
    full: &Plan,
    state_min_ms: i64,
    state_max_ms: i64,
    header_time: HeaderTime<'_>,
) -> Result<Plan> {
    // Made no earlier than listed: only files listed by then can be in the backup. The newest
    // of them made by then, found reading a few headers at most.
    let mut candidates: Vec<&ReplicaFile> = all
        .iter()
        .filter(|f| f.created_at_ms <= state_min_ms)
        .collect();
    candidates.sort_by_key(|f| std::cmp::Reverse(f.max_txid));
    let mut k = 0;
    for f in candidates.into_iter().take(HEADERS_READ_MAX) {
        if made(f, header_time)? <= state_min_ms {
            k = f.max_txid;
            break;
        }
    }
    if k == 0 {
        return Err(impossible(
            "the backup is older than the replica's history: restore from the replica alone".into(),
        ));
    }
    // Every commit up to the listed time of the finest file ending at the target is in the
    // target (later ones may be in the files after it): the backup must hold none after that.
    // (A coarser file merging a period is listed when it was made, which bounds nothing from
    // below: a commit after the target may come before it.)
    let last_listed = all
        .iter()
        .filter(|f| f.max_txid == full.txid)
        .max_by_key(|f| (f.min_txid, std::cmp::Reverse(f.level)))
        .map_or(full.point_ms, |f| f.created_at_ms);
    if state_max_ms > last_listed {
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
    // One pass over the files by first TXID (a replica keeps hundreds of thousands of points):
    // `best` is the furthest-reaching of the files that start by `current + 1`. A file it beats
    // never reaches further than the chain does once `best` is taken, so it is never needed again.
    let mut by_start: Vec<&ReplicaFile> = all
        .iter()
        .filter(|f| f.max_txid > current && usable(f))
        .collect();
    by_start.sort_unstable_by_key(|f| f.min_txid);
    let reach = |f: &ReplicaFile| (f.max_txid, std::cmp::Reverse(f.min_txid), f.level);
    let mut best: Option<&ReplicaFile> = None;
    let mut next = by_start.into_iter().peekable();
    loop {
        while let Some(f) = next.next_if(|f| f.min_txid <= current.saturating_add(1)) {
            if best.is_none_or(|b| reach(f) > reach(b)) {
                best = Some(f);
            }
        }
        match best {
            Some(f) if f.max_txid > current => {
                current = f.max_txid;
                chain.push(f);
            }
            _ => return current,
        }
    }
}

/// [`Target::AtOrBefore`]: the chain for `ms`, less its last files while they were made after it.
fn at_or_before(all: &[ReplicaFile], ms: i64, header_time: HeaderTime<'_>) -> Result<Plan> {
    // A file made after `ms` is left out and the chain planned again without it: another chain
    // (an older snapshot and its files, say) may reach a point made in time.
    let mut left_out: Vec<(u32, u64, u64)> = Vec::new();
    loop {
        let chain = chain(all, |f| {
            f.created_at_ms <= ms && !left_out.contains(&(f.level, f.min_txid, f.max_txid))
        });
        let (Some(&first), Some(&last)) = (chain.first(), chain.last()) else {
            break;
        };
        if first.min_txid != 1 {
            break;
        }
        let made_ms = made(last, header_time)?;
        if made_ms <= ms {
            return Ok(Plan {
                files: chain
                    .iter()
                    .map(|f| (f.level, f.min_txid, f.max_txid, f.size))
                    .collect(),
                txid: last.max_txid,
                point_ms: made_ms,
                point_time: time(made_ms),
                bytes: chain.iter().map(|f| f.size).sum(),
            });
        }
        left_out.push((last.level, last.min_txid, last.max_txid));
    }
    let points = restorable_points(all);
    Err(impossible(format!(
        "no point was made at or before {} (the first restorable point is {})",
        time(ms),
        describe(&points[..points.len().min(1)])
    )))
}

/// Whether a file that starts right after `current` shows that no commit after it was made by
/// `ms`: listed after `ms`, and with two times (listed before its first commit).
fn starts_after(
    all: &[ReplicaFile],
    current: u64,
    ms: i64,
    header_time: HeaderTime<'_>,
) -> Result<bool> {
    for f in all
        .iter()
        .filter(|f| f.min_txid == current + 1 && f.created_at_ms > ms)
    {
        if !f.one_time(header_time(f)?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `f` merges the points of a period (a second, a minute, an hour): finer files may
/// reach the points inside it. A snapshot is one point, whatever its level; a level-0 file
/// merges several points when it holds several TXIDs (a fine log's layout writes one a second,
/// and its journal's records are the points inside).
fn coarse(f: &ReplicaFile) -> bool {
    f.min_txid != 1
        && ((1..SNAPSHOT_LEVEL).contains(&f.level) || f.level == 0 && f.max_txid > f.min_txid)
}

/// The refusal of a time `ms` that falls among the commits of `last`, made up to `made_ms`: the
/// state after it holds commits made after `ms`, the state before it may lack some made before.
/// Names the nearest points restorable exactly, to be asked for with `--txid`.
fn inexact(
    all: &[ReplicaFile],
    ms: i64,
    last: &ReplicaFile,
    made_ms: i64,
    header_time: HeaderTime<'_>,
) -> Error {
    // The newest point made by then, on whatever chain reaches it.
    let before = at_or_before(all, ms, header_time).map_or_else(
        |_| "none".to_owned(),
        |p| format!("txid {} at {}", p.txid, p.point_time),
    );
    Error::invalid(
        "not_exact",
        None,
        format!(
            "{} falls among the transactions {}..={} of level-{} file {}, made between {} and {}: \
             the state at that time cannot be restored exactly; the nearest restorable points \
             are {before} (before) and txid {} at {} (after); restore one of them with --txid N",
            time(ms),
            last.min_txid,
            last.max_txid,
            last.level,
            ltx::file_name(last.min_txid, last.max_txid),
            time(last.created_at_ms),
            time(made_ms),
            last.max_txid,
            time(made_ms),
        ),
    )
}

/// Refuses a time after the point `current` (made at `made_ms`) when no file that continues it
/// says its commits came after that time. Our files are listed before their first commit, so
/// one listed after `ms` holds no commit made by then. A file with one time (Litestream stamps a
/// file when it is made, and so did TradeVault before its files had two: header time no later
/// than listed) bounds its commits from above only: some may have been made before `ms`, and the
/// state at `ms` cannot be restored exactly.
fn unbounded_next(
    all: &[ReplicaFile],
    ms: i64,
    current: u64,
    made_ms: i64,
    header_time: HeaderTime<'_>,
) -> Result<()> {
    // Every file that would continue the chain, as `extend` takes them (overlapping ones too).
    let next: Vec<&ReplicaFile> = all
        .iter()
        .filter(|f| f.min_txid <= current + 1 && f.max_txid > current)
        .collect();
    let Some(&first) = next.iter().min_by_key(|f| (f.max_txid, f.level)) else {
        return Ok(());
    };
    for f in &next {
        // (One listed by then, a coarser file the plan left out, says nothing of the kind.)
        if f.created_at_ms > ms && !f.one_time(header_time(f)?) {
            return Ok(());
        }
    }
    let (t, before, after) = (time(ms), time(made_ms), time(made(first, header_time)?));
    let (lo, hi) = (first.min_txid, first.max_txid);
    Err(Error::invalid(
        "not_exact",
        None,
        format!(
            "{t} is after txid {current} (made at {before}) and before txid {hi} (made at \
             {after}), in files that carry one time each (written by Litestream, or by an older \
             TradeVault): when the commits {lo}..={hi} were made is not known, some may be before \
             that time, so the state at that time cannot be restored exactly; the nearest \
             restorable points are txid {current} at {before} (before) and txid {hi} at {after} \
             (after); restore one of them with --txid N, or pass --at-or-before for the newest \
             point made by then"
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
    fn a_time_after_a_fine_logs_newest_point_names_the_time_it_was_made() {
        // The layout's merged second 2-9 is listed at its first commit (20 s) and made at 21 s;
        // the journal's record of TXID 9 is listed at 20.99 s and made at 21 s too.
        let all = vec![
            file(9, 1, 1, 10_000),
            file(0, 2, 9, 20_000),
            file(100, 9, 9, 20_990),
        ];
        let made = |f: &ReplicaFile| -> Result<i64> {
            Ok(match f.max_txid {
                1 => 10_000,
                _ => 21_000,
            })
        };
        let err = plan_files(&all, "r", Target::Time(22_000), &made).expect_err("after");
        assert!(
            err.to_string()
                .contains("after the newest replicated point (txid 9 at 1970-01-01T00:00:21Z)"),
            "{err}"
        );
        // After the record's listing but before it was made: among its commits, which the
        // record (9..=9) bounds more closely than the merged second (2..=9).
        let err = plan_files(&all, "r", Target::Time(20_995), &made).expect_err("among");
        assert!(
            matches!(
                err,
                Error::Invalid {
                    code: "not_exact",
                    ..
                }
            ) && err.to_string().contains("transactions 9..=9"),
            "{err}"
        );
        // An hourly merge ending at a snapshot's TXID is made long after it: the point is the
        // snapshot's.
        let quiet = vec![file(9, 1, 5, 10_000), file(3, 1, 5, 3_600_000)];
        let made =
            |f: &ReplicaFile| -> Result<i64> { Ok(if f.level == 9 { 10_000 } else { 3_600_000 }) };
        let err = plan_files(&quiet, "r", Target::Time(3_700_000), &made).expect_err("after");
        assert!(
            err.to_string()
                .contains("after the newest replicated point (txid 5 at 1970-01-01T00:00:10Z)"),
            "{err}"
        );
    }

    #[test]
    fn a_time_among_the_commits_of_the_last_file_is_refused() {
        // Snapshot 1-2 listed at 10 s and made at 11 s; level-1 file 3-6 listed at 20 s, made at
        // 24 s (its commits run from 20 to 24 s); level-0 file 7 listed at 30 s, made at 30.5 s.
        let all = vec![
            file(9, 1, 2, 10_000),
            file(1, 3, 6, 20_000),
            file(0, 7, 7, 30_000),
        ];
        let made = |f: &ReplicaFile| -> Result<i64> {
            Ok(match f.max_txid {
                2 => 11_000,
                6 => 24_000,
                _ => 30_500,
            })
        };
        let plan_at = |ms| plan_files(&all, "r", Target::Time(ms), &made).map(|p| p.txid);
        assert_eq!(plan_at(15_000).expect("between files"), 2);
        assert_eq!(plan_at(24_000).expect("once the file was made"), 6);
        for ms in [10_500, 20_000, 23_999, 30_000] {
            let err = plan_at(ms).expect_err("among a file's commits");
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
        }
        let text = plan_at(21_000).expect_err("inside").to_string();
        assert!(
            text.contains("txid 2 at 1970-01-01T00:00:11Z")
                && text.contains("txid 6 at 1970-01-01T00:00:24Z")
                && text.contains("--txid"),
            "{text}"
        );
        let early = plan_files(&all, "r", Target::Txid(0), &made).expect_err("txid 0");
        assert!(
            early
                .to_string()
                .contains("txid 0 is before the first restorable point (txid 2 at"),
            "{early}"
        );
        // Among the newest file's commits: refused as inexact, not as "after the newest point".
        let err = plan_at(30_200).expect_err("inside the newest file");
        assert!(
            err.to_string().contains("cannot be restored exactly"),
            "{err}"
        );
        let err = plan_at(31_000).expect_err("after the newest file");
        assert!(
            err.to_string()
                .contains("after the newest replicated point (txid 7 at 1970-01-01T00:00:30.5Z)"),
            "{err}"
        );
        // At or before: the newest point made by then, never one made after.
        let before =
            |ms| plan_files(&all, "r", Target::AtOrBefore(ms), &made).map(|p| (p.txid, p.point_ms));
        assert_eq!(before(21_000).expect("inside 3-6"), (2, 11_000));
        assert_eq!(before(24_000).expect("3-6 made"), (6, 24_000));
        assert_eq!(before(30_200).expect("inside 7"), (6, 24_000));
        assert_eq!(before(99_000).expect("after all"), (7, 30_500));
        assert!(before(10_500).is_err(), "before the snapshot was made");
        // After a restart: a new snapshot listed at the newest file's time and made much later.
        // The point before a time among its commits is the older chain's.
        let restarted = vec![
            file(9, 1, 2, 10_000),
            file(0, 3, 3, 20_000),
            file(9, 1, 5, 20_000),
        ];
        let made2 = |f: &ReplicaFile| -> Result<i64> {
            Ok(match (f.level, f.max_txid) {
                (9, 2) => 11_000,
                (0, 3) => 21_000,
                _ => 40_000,
            })
        };
        let p =
            plan_files(&restarted, "r", Target::AtOrBefore(30_000), &made2).expect("older chain");
        assert_eq!((p.txid, p.point_ms), (3, 21_000));
        let err = plan_files(&restarted, "r", Target::Time(30_000), &made2).expect_err("inside");
        assert!(err.to_string().contains("txid 3 at"), "{err}");
        // The point of a plan is when its last file was made.
        let p = plan_files(&all, "r", Target::Latest, &made).expect("latest");
        assert_eq!((p.txid, p.point_ms), (7, 30_500));
        // A header older than its listing (a file stamped the old way) counts as made when listed,
        // and says nothing of when the next file's commits were made: a time after its point is
        // refused, and at or before restores that point.
        let old = |_: &ReplicaFile| -> Result<i64> { Ok(0) };
        let err = plan_files(&all, "r", Target::Time(20_000), &old).expect_err("one time");
        assert!(
            err.to_string().contains("txid 6 at") && err.to_string().contains("txid 7 at"),
            "{err}"
        );
        let p = plan_files(&all, "r", Target::AtOrBefore(20_000), &old).expect("at or before");
        assert_eq!((p.txid, p.point_ms), (6, 20_000));
    }

    #[test]
    fn a_one_time_file_overlapping_the_chain_bounds_nothing_either() {
        // Litestream: snapshot 1-5, then a level-1 file 4-9 (its level-0 files compacted away),
        // each with one time. Commits 6-9 may be before 15 s.
        let all = vec![file(9, 1, 5, 10_000), file(1, 4, 9, 20_000)];
        let listed = |f: &ReplicaFile| -> Result<i64> { Ok(f.created_at_ms) };
        let err = plan_files(&all, "r", Target::Time(15_000), &listed).expect_err("one time");
        assert!(err.to_string().contains("txid 9 at"), "{err}");
        // With two times (listed before its commits), 15 s is before all of 6-9: exact.
        let two = |f: &ReplicaFile| -> Result<i64> { Ok(f.created_at_ms + 1) };
        let p = plan_files(&all, "r", Target::Time(15_000), &two).expect("two times");
        assert_eq!(p.txid, 5);
    }

    /// `extend` as it reads in words: the usable file that continues the chain and reaches
    /// furthest (ties: the lower start, then the higher level), until none does.
    fn extend_by_definition(
        all: &[ReplicaFile],
        mut current: u64,
        usable: impl Fn(&ReplicaFile) -> bool,
    ) -> Vec<&ReplicaFile> {
        let mut chain = Vec::new();
        while let Some(f) = all
            .iter()
            .filter(|f| f.min_txid <= current + 1 && f.max_txid > current && usable(f))
            .max_by_key(|f| (f.max_txid, std::cmp::Reverse(f.min_txid), f.level))
        {
            current = f.max_txid;
            chain.push(f);
        }
        chain
    }

    proptest::proptest! {
        #[test]
        fn extend_takes_the_chain_its_definition_names(
            spans in proptest::collection::vec((0u32..4, 1u64..40, 0u64..12, 0i64..50), 0..40),
            from in 0u64..10,
            before_ms in 0i64..60,
        ) {
            let mut all: Vec<ReplicaFile> = spans
                .into_iter()
                .map(|(level, min, len, ms)| file(level, min, min + len, ms))
                .collect();
            all.sort_by_key(|f| (f.level, f.min_txid, f.max_txid));
            all.dedup_by_key(|f| (f.level, f.min_txid, f.max_txid));
            let usable = |f: &ReplicaFile| f.created_at_ms <= before_ms;
            let mut chain = Vec::new();
            let reached = extend(&mut chain, &all, from, usable);
            let expected = extend_by_definition(&all, from, usable);
            proptest::prop_assert_eq!(&chain, &expected);
            proptest::prop_assert_eq!(reached, expected.last().map_or(from, |f| f.max_txid));
        }
    }

    #[test]
    fn a_plan_over_an_hour_of_points_is_quick_to_make() {
        // 400,000 level-0 files: a file replica's hour at 2,000 commits/s. The chain used to be
        // found by a scan of every file per step (1.6e11 steps here); one sorted pass is instant.
        let mut all = vec![file(9, 1, 1, 0)];
        all.extend((2..400_002).map(|t| file(0, t, t, 2 * t as i64)));
        let made = |f: &ReplicaFile| -> Result<i64> { Ok(f.created_at_ms + 1) };
        let p = plan_files(&all, "r", Target::Latest, &made).expect("latest");
        assert_eq!((p.txid, p.files.len()), (400_001, 400_001));
        let p = plan_files(&all, "r", Target::Time(400_001), &made).expect("a time");
        assert_eq!(p.txid, 200_000);
    }

    proptest::proptest! {
        /// Points 1..=n, each listed before its one commit and made after it; level-1 and level-2
        /// files merging runs of them (made at their last point's time, listed at their first's
        /// or, level 2, maybe when made),
        /// and the oldest points deleted where a level-1 file holds them (the fine window). Every
        /// time restores the state at that time or is refused, and with every point still there,
        /// exactly the times the points alone restore.
        #[test]
        fn coarser_files_never_make_a_time_restore_wrong_or_coarser(
            steps in proptest::collection::vec((1i64..30, 0i64..10, 0i64..10), 2..40),
            cuts1 in proptest::collection::vec(proptest::bool::ANY, 40),
            cuts2 in proptest::collection::vec(proptest::bool::weighted(0.2), 40),
            pruned in 0usize..40,
            targets in proptest::collection::vec(0i64..1_500, 1..20),
            minutes_when_made in proptest::bool::ANY,
        ) {
            // (txid, listed, commit, made); the snapshot is txid 1.
            let mut points = vec![(1u64, 0i64, 0i64, 1i64)];
            for (gap, c, m) in steps {
                // Listed after the previous commit, maybe before the previous point was made
                // (commits arriving faster than files are made); made times never go back.
                let (txid, _, commit, made) = *points.last().unwrap();
                let listed = commit + gap;
                let made = (listed + c + m + 1).max(made + 1);
                points.push((txid + 1, listed, listed + c, made));
            }
            let runs = |cuts: &[bool], items: &[(u64, u64)]| -> Vec<(u64, u64)> {
                let mut out: Vec<(u64, u64)> = Vec::new();
                for (i, &(min, max)) in items.iter().enumerate() {
                    match out.last_mut() {
                        Some(last) if !cuts[i % cuts.len()] => last.1 = max,
                        _ => out.push((min, max)),
                    }
                }
                out
            };
            let singles: Vec<(u64, u64)> = points[1..].iter().map(|p| (p.0, p.0)).collect();
            let seconds = runs(&cuts1, &singles);
            let minutes = runs(&cuts2, &seconds);
            let listed = |t: u64| points[(t - 1) as usize].1;
            let made_at = |t: u64| points[(t - 1) as usize].3;
            // The oldest points go where a level-1 file ends.
            let prune_to = seconds.iter().map(|s| s.1).take_while(|&t| t <= pruned as u64 + 1).last().unwrap_or(1);
            let mut fine = vec![file(9, 1, 1, 0)];
            fine.extend(singles.iter().map(|&(t, _)| file(0, t, t, listed(t))));
            let mut all: Vec<ReplicaFile> = fine.iter().filter(|f| f.level == 9 || f.max_txid > prune_to).cloned().collect();
            all.extend(seconds.iter().map(|&(a, b)| file(1, a, b, listed(a))));
            // Level 2 listed at its first point's time, or when it was made (one time, as the
            // maintenance thread lists them for Litestream's sake).
            all.extend(minutes.iter().map(|&(a, b)| {
                file(2, a, b, if minutes_when_made { made_at(b) } else { listed(a) })
            }));
            let made = |f: &ReplicaFile| -> Result<i64> { Ok(made_at(f.max_txid)) };
            for ms in targets {
                let ideal = points.iter().filter(|p| p.2 <= ms).map(|p| p.0).max();
                let got = plan_files(&all, "r", Target::Time(ms), &made);
                match &got {
                    Ok(p) => proptest::prop_assert_eq!(Some(p.txid), ideal, "time {} files {:?}", ms, &all),
                    // Every file here has two times: a refusal names the file the time falls in.
                    Err(e) => proptest::prop_assert!(!e.to_string().contains("one time"), "{}", e),
                }
                if prune_to == 1 {
                    let alone = plan_files(&fine, "r", Target::Time(ms), &made);
                    proptest::prop_assert_eq!(got.is_ok(), alone.is_ok(), "time {} {:?} {:?}", ms, got, alone);
                }
            }
        }
    }

    #[test]
    fn a_backup_holding_a_commit_after_the_target_is_refused_whatever_file_ends_there() {
        // Points 2 and 3 (listed at 10 and 20 s, made at 12 and 25 s), point 4 listed at 23 s,
        // before point 3 was made; a 10 s file merging 2..=3, listed when it was made (25 s).
        let all = vec![
            file(9, 1, 1, 0),
            file(0, 2, 2, 10_000),
            file(0, 3, 3, 20_000),
            file(0, 4, 4, 23_000),
            file(2, 2, 3, 25_000),
        ];
        let made = |f: &ReplicaFile| -> Result<i64> {
            Ok(match f.max_txid {
                1 => 1,
                2 => 12_000,
                3 => 25_000,
                _ => 30_000,
            })
        };
        let full = plan_files(&all, "r", Target::Txid(3), &made).expect("txid 3");
        assert_eq!(full.files.last().map(|f| f.0), Some(2), "{full:?}");
        // A backup made from 15 s to 24 s may hold commit 4: not under the state at txid 3.
        let err = plan_after_listed(&all, &full, 15_000, 24_000, &made).expect_err("holds 4");
        assert!(
            err.to_string().contains("after the point asked for"),
            "{err}"
        );
        // One that ended by 20 s holds nothing after point 3's first commit: it restores.
        let p = plan_after_listed(&all, &full, 15_000, 20_000, &made).expect("before 3");
        assert_eq!(p.txid, 3);
    }
}
