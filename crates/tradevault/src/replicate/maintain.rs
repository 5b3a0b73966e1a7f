//! One replica's maintenance, on a thread of its own beside the uploader (a pass reads many
//! points and lists the replica, which must never hold up an upload): the levels, the snapshot
//! schedule and retention.
//!
//! Levels: 0 holds every shipped point, for the fine window; past it they are merged into one
//! file per second (level 1, not on a replica synced a second or more apart: its points are that
//! far apart already) and deleted. Beside them, so that a restore of the latest state never reads
//! every point, each period that has passed is merged at once: level 2 one file per 10 seconds of
//! points, level 3 one per hour of those (several when a merge's inputs pass 16 MiB). A restore
//! of the latest state after a day reads a snapshot, the hours' files, the 10 seconds' files
//! since, and the last seconds' points: at most a few thousand files, where a file replica at
//! 2,000 commits/s ships about 400,000 points an hour.
//!
//! Each file has two times (see `restore`): its listed time is a lower bound of its commits',
//! its header time when it was made. A level-1 file is listed at its first point's time, as
//! before it was merged. A level-2 or 3 file is listed when it was made (one time, as
//! Litestream's own compactions are), since Litestream's restore to a time takes every file
//! listed before it: listed at its first point's, a file merging an hour would bring up to an hour
//! of later commits into that restore. A merge never spans a gap in TXIDs or a snapshot, so a
//! coarser file always ends where a level-0 file ended (a point).

use std::collections::HashSet;
use std::time::Duration;

use super::engine::{Db, ReplicaSpec};
use super::upload::merge;
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile};

/// How often levels 2 and 3 are built, by the engine's clock (ms).
const COMPACT_MS: i64 = 10_000;
/// How often the replica is listed whole: level 1, the snapshot schedule, retention, the window.
const MAINTENANCE_MS: i64 = 60_000;
/// The first pass comes this long after the start (ms).
const FIRST_PASS_MS: i64 = 5_000;
/// A period is merged once it ended this long ago: the uploads of its last points have landed.
const SETTLE_MS: i64 = 2_000;
/// The levels merged as soon as their period has passed, their periods (ms) and the level each
/// is built from.
const LEVELS: [(u32, i64, u32); 2] = [(2, 10_000, 0), (3, 3_600_000, 2)];
/// The level of one file per second, which replaces the points past the fine window.
const SECOND_LEVEL: u32 = 1;
/// Most bytes or files merged into one file: a merge holds its inputs and output in memory (a
/// period with more becomes several files).
const GROUP_BYTES_MAX: u64 = 16 << 20;
const GROUP_FILES_MAX: usize = 10_000;
/// Most files one level takes in one pass (the rest wait for the next).
const PASS_FILES_MAX: usize = 20_000;
/// The longest the thread sleeps before looking at the engine's clock again.
const IDLE: Duration = Duration::from_secs(1);

/// The body of replica `index`'s maintenance thread.
pub(crate) fn run(db: &Db, index: usize, spec: ReplicaSpec) {
    let mut m = Maintainer {
        db,
        index,
        spec,
        done: [0; 4],
        listed: false,
        pending: Vec::new(),
    };
    // The uploader's discovery replays the sync journal into level 0 first.
    loop {
        if db.stopping() {
            return;
        }
        if db.lock().status.replicas[index].discovered {
            break;
        }
        nap(db, Duration::from_millis(50));
    }
    let start = db.now_ms();
    let (mut next_compact, mut next_full) = (start + FIRST_PASS_MS, start + FIRST_PASS_MS);
    // A directory is listed from a TXID on cheaply, every few seconds; an object store is listed
    // whole (a request per thousand files), so it compacts in the minute's pass, from its listing.
    let local = matches!(m.spec.replica, Replica::File(_));
    let journaled = super::journal::journaled(db, &m.spec.replica);
    let root = match &m.spec.replica {
        Replica::File(r) => Some(r.root().to_owned()),
        Replica::S3(_) => None,
    };
    while !db.stopping() {
        let now = db.now_ms();
        if let Some(root) = &root {
            m.segments(root, journaled, now);
        }
        // Level 1, retention and the snapshot schedule, from a whole listing, which also tells
        // where each level stands (then their own merges do).
        if now >= next_full {
            next_full = now + MAINTENANCE_MS;
            if let Err(e) = m.maintain(now) {
                m.failed("replica maintenance failed; retrying in a minute", &e);
            }
        }
        if local && m.listed && now >= next_compact {
            next_compact = now + COMPACT_MS;
            if let Err(e) = m.compact(now, None) {
                m.failed("replica compaction failed; retrying", &e);
                // What it had noted may be gone (deleted past the fine window): list again.
                m.pending.clear();
                db.lock().put_points[index] = None;
            }
        }
        let due = if local {
            next_compact.min(next_full)
        } else {
            next_full
        } - db.now_ms();
        if due > 0 {
            nap(db, IDLE.min(Duration::from_millis(due.unsigned_abs())));
        }
    }
}

struct Maintainer<'a> {
    db: &'a Db,
    index: usize,
    spec: ReplicaSpec,
    /// The newest TXID each coarser level's files reach (from listings, then its own merges).
    done: [u64; 4],
    /// `done` was read from a whole listing once.
    listed: bool,
    /// Level-0 files past level 2's progress not merged yet (their period is still open).
    pending: Vec<ReplicaFile>,
}

impl Maintainer<'_> {
    fn failed(&self, what: &str, e: &Error) {
        let error = crate::store::writer::error_chain(e);
        tracing::warn!(database = %self.db.name, replica = %self.spec.name, error = %error, "{what}");
    }

    /// Makes the journal's spare file, so that its next lap starts in a file made here, not on
    /// the commits' path (`journaled`: the replica has a journal); removes the segments the
    /// layout holds, with a fine log once they are past the fine window.
    fn segments(&self, root: &std::path::Path, journaled: bool, now: i64) {
        use crate::replica::journal;
        if journaled && let Err(e) = journal::make_spare(root, journal::JOURNAL_BYTES) {
            self.failed(
                "could not make the journal's spare file; the next lap makes it",
                &e,
            );
        }
        let held = {
            let st = self.db.lock();
            let r = &st.status.replicas[self.index];
            (r.foreign_to == 0).then(|| r.txid.unwrap_or(0))
        };
        let Some(held) = held.filter(|h| *h > 0) else {
            return;
        };
        let removed = if self.db.fine_log() {
            journal::remove_segments_aged(root, held, now - self.spec.retention.fine_ms)
        } else {
            journal::remove_segments_through(root, held)
        };
        if let Err(e) = removed {
            self.failed("could not remove old journal segments; retrying", &e);
        }
    }

    /// Raises each level's progress to the newest TXID its files in `files` reach.
    fn note(&mut self, files: &[ReplicaFile]) {
        for f in files {
            if let Some(done) = self.done.get_mut(f.level as usize) {
                *done = (*done).max(f.max_txid);
            }
        }
    }

    /// Builds levels 2 and 3 for every period that has passed, from `listed` (every file of the
    /// replica) or else from a listing of each source level past the level's progress.
    fn compact(&mut self, now: i64, listed: Option<&[ReplicaFile]>) -> Result<()> {
        for (level, period, from) in LEVELS {
            let done = self.done[level as usize];
            let sources = match listed {
                Some(all) => all
                    .iter()
                    .filter(|f| f.level == from && f.max_txid > done)
                    .cloned()
                    .collect(),
                None if from == 0 => self.points_after(done)?,
                None => self.spec.replica.list_after(from, done)?,
            };
            let unmerged = (from == 0 && listed.is_none()).then(|| sources.clone());
            let settled = now - SETTLE_MS;
            let groups = groups(sources, period, done, |f| {
                (f.created_at_ms.div_euclid(period) + 1) * period <= settled
            });
            for group in groups {
                let started = std::time::Instant::now();
                // Listed when made: every commit it holds was made by then.
                match self.put_group(level, &group, true) {
                    Ok(_) => {}
                    // A file that does not decode stays where it is, as restore will find it;
                    // the level goes on after it rather than stopping there for good.
                    Err(e @ Error::Ltx { .. }) => {
                        self.failed(
                            "a file could not be merged into a coarser level; leaving it",
                            &e,
                        );
                        let done = &mut self.done[level as usize];
                        *done = (*done).max(group.last().map_or(0, |f| f.max_txid));
                    }
                    Err(e) => return Err(e),
                }
                self.pace(started);
                if self.db.stopping() {
                    break;
                }
            }
            if let Some(unmerged) = unmerged {
                let done = self.done[level as usize];
                self.pending = unmerged.into_iter().filter(|f| f.max_txid > done).collect();
            }
            if self.db.stopping() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The level-0 files past `done`, sorted: those not merged yet and those the uploader put
    /// since, or a listing when it has not recorded them all (its first pass, or too many). A
    /// directory of an hour's points (400,000 at 2,000 commits/s) takes 0.17 s to list by name.
    fn points_after(&mut self, done: u64) -> Result<Vec<ReplicaFile>> {
        let put = {
            let mut st = self.db.lock();
            let recorded = &mut st.put_points[self.index];
            // From now on (before any listing, so that nothing falls in between).
            let put = recorded.as_mut().map(std::mem::take);
            recorded.get_or_insert_with(Vec::new);
            put
        };
        let mut points = match put {
            Some(put) => {
                let mut points = std::mem::take(&mut self.pending);
                points.extend(put);
                points
            }
            None => self.spec.replica.list_after(0, done)?,
        };
        points.retain(|f| f.max_txid > done);
        points.sort_by_key(|f| (f.min_txid, f.max_txid));
        points.dedup_by_key(|f| (f.min_txid, f.max_txid));
        Ok(points)
    }

    /// Merges the points of `files` listed before `before` into one file per second (level 1),
    /// then deletes them. A crash in between leaves both, which restores the same. Updates
    /// `files` to match.
    fn compact_seconds(&mut self, files: &mut Vec<ReplicaFile>, before: i64) -> Result<()> {
        let mut moved = Moved::default();
        let old: Vec<ReplicaFile> = files
            .iter()
            .filter(|f| f.level == 0 && f.created_at_ms < before)
            .take(PASS_FILES_MAX)
            .cloned()
            .collect();
        let mut group: Vec<ReplicaFile> = Vec::new();
        for f in old {
            // A snapshot (the first file of a history) stays alone: it is as large as the
            // database, and alone it moves up a level without being read.
            let same_second = f.min_txid != 1
                && group.last().is_some_and(|g| {
                    g.min_txid != 1
                        && g.max_txid + 1 == f.min_txid
                        && g.created_at_ms.div_euclid(1000) == f.created_at_ms.div_euclid(1000)
                });
            if !same_second && !group.is_empty() {
                self.merge_away(&std::mem::take(&mut group), &mut moved)?;
            }
            group.push(f);
            if self.db.stopping() {
                break;
            }
        }
        if !group.is_empty() && !self.db.stopping() {
            self.merge_away(&group, &mut moved)?;
        }
        files.retain(|f| f.level != 0 || !moved.gone.contains(&(f.min_txid, f.max_txid)));
        files.extend(moved.added);
        Ok(())
    }

    /// Merges `group` into level 1, listed at its first point's time, then deletes it.
    fn merge_away(&mut self, group: &[ReplicaFile], moved: &mut Moved) -> Result<()> {
        let started = std::time::Instant::now();
        moved
            .added
            .extend(self.put_group(SECOND_LEVEL, group, false)?);
        for f in group {
            self.spec.replica.delete(f)?;
            moved.gone.insert((f.min_txid, f.max_txid));
        }
        self.pace(started);
        Ok(())
    }

    /// After a merge that began at `started`, rests as long as it took: a pass (a minute of
    /// points at 2,000 commits/s is 6,600 files) takes at most half of a core from the shipper and
    /// the uploader, which on two cores otherwise wait behind it.
    fn pace(&self, started: std::time::Instant) {
        nap(self.db, started.elapsed().min(Duration::from_secs(1)));
    }

    /// Puts the merge of `group` (contiguous files of one period) at `level`: listed when it was
    /// made when `when_made`, else at its first file's time.
    fn put_group(
        &mut self,
        level: u32,
        group: &[ReplicaFile],
        when_made: bool,
    ) -> Result<Option<ReplicaFile>> {
        let replica = &self.spec.replica;
        let last = group.last().map_or(0, |f| f.max_txid);
        let put = if let [only] = group {
            // One file has nothing to merge, and keeps its times: a directory links it (it was
            // verified when it was put); an object store copies it only to level 1, which
            // replaces the points.
            match replica {
                Replica::File(r) => match r.put_link(level, r, only)? {
                    Some(linked) => Some(linked),
                    None => Some(r.put_file(
                        level,
                        &r.path_of(only.level, only.min_txid, only.max_txid),
                        Some(only.created_at_ms),
                    )?),
                },
                // On an object store a copy is a request and the same bytes again, for no fewer
                // files to restore: the level below serves that period.
                Replica::S3(_) if level != SECOND_LEVEL => None,
                Replica::S3(_) => {
                    let bytes = replica.read(only)?;
                    Some(replica.put(level, &bytes, Some(only.created_at_ms))?)
                }
            }
        } else {
            let merged = merge(replica, group, "replica files")?;
            let listed = if when_made {
                merged.made
            } else {
                merged.listed
            };
            Some(replica.put(level, &merged.bytes, Some(listed))?)
        };
        if let Some(done) = self.done.get_mut(level as usize) {
            *done = (*done).max(last);
        }
        Ok(put)
    }

    /// Level 1, the snapshot schedule and retention, from a listing of every file (and on an
    /// object store levels 2 and 3); updates the restorable window in status.
    fn maintain(&mut self, now: i64) -> Result<()> {
        let retention = self.spec.retention;
        // Uploads go on while this pass runs: status adds those made after the listing.
        let uploaded = {
            let st = self.db.lock();
            let r = &st.status.replicas[self.index];
            (r.files_uploaded, r.bytes_uploaded)
        };
        let mut files = self.spec.replica.list_all()?;
        self.note(&files);
        self.listed = true;
        if !matches!(self.spec.replica, Replica::File(_)) {
            // Its failure holds up neither retention nor the snapshot schedule.
            if let Err(e) = self.compact(now, Some(&files)) {
                self.failed("replica compaction failed; retrying in a minute", &e);
            }
        }
        if self.db.stopping() {
            return Ok(());
        }
        if self.spec.sync_interval < Duration::from_secs(1) {
            // The listing then holds the new files: a snapshot moved up is still one.
            self.compact_seconds(&mut files, now - retention.fine_ms)?;
        }
        let replica = &self.spec.replica;
        // Snapshots are files that start at TXID 1.
        let newest_snapshot = files
            .iter()
            .filter(|f| f.min_txid == 1)
            .map(|f| f.created_at_ms)
            .max();
        // Only while the replica is caught up: a snapshot still on its way (a large one to S3 can
        // take minutes) would otherwise be asked for again at every pass.
        let caught_up = {
            let st = self.db.lock();
            st.status.replicas[self.index].txid >= Some(st.status.txid)
        };
        if newest_snapshot.is_none_or(|t| t < now - retention.snapshot_ms)
            && !files.is_empty()
            && caught_up
        {
            self.db.lock().snapshot_wanted = true;
            self.db.changed.notify_all();
        }
        // The window starts from the newest snapshot at or before its start; everything it
        // supersedes goes.
        let base = files
            .iter()
            .filter(|f| f.min_txid == 1 && f.created_at_ms <= now - retention.window_ms)
            .max_by_key(|f| (f.max_txid, f.level))
            .cloned();
        if let Some(base) = &base {
            for f in files
                .iter()
                .filter(|f| f.max_txid <= base.max_txid && *f != base)
            {
                replica.delete(f)?;
            }
            files.retain(|f| f.max_txid > base.max_txid || f == base);
        }
        set_window(self.db, self.index, replica, &files, Some(uploaded));
        Ok(())
    }
}

/// Most level-0 files recorded for the maintenance thread between two of its passes; past it,
/// the thread lists the directory instead.
const RECORDED_MAX: usize = 100_000;

/// Records a level-0 file the uploader put, for the maintenance thread, if it asked.
pub(super) fn record_point(recorded: &mut Option<Vec<ReplicaFile>>, file: &ReplicaFile) {
    if let Some(files) = recorded {
        if files.len() >= RECORDED_MAX {
            *recorded = None;
        } else {
            files.push(file.clone());
        }
    }
}

/// Sleeps up to `d`, or until the engine stops, without waking for every shipment and upload
/// (they notify `changed`, which a thread waiting on it would wake for: thousands a second).
fn nap(db: &Db, d: Duration) {
    let until = std::time::Instant::now() + d;
    while !db.stopping() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// What [`Maintainer::compact_seconds`] put and deleted.
#[derive(Default)]
struct Moved {
    added: Vec<ReplicaFile>,
    /// (min, max) TXIDs of the level-0 files deleted.
    gone: HashSet<(u64, u64)>,
}

/// Groups `sources` (files of one level, sorted by TXID, past `done`) into runs of contiguous
/// files of one period, up to the first file whose period has not `settled`. A snapshot is left
/// out: it is as large as the database.
fn groups(
    sources: Vec<ReplicaFile>,
    period: i64,
    done: u64,
    settled: impl Fn(&ReplicaFile) -> bool,
) -> Vec<Vec<ReplicaFile>> {
    let mut out: Vec<Vec<ReplicaFile>> = Vec::new();
    let mut bytes = 0;
    for f in sources.into_iter().take(PASS_FILES_MAX) {
        if !settled(&f) {
            // The level's progress is one TXID: the later files wait for this one.
            break;
        }
        if f.min_txid == 1 || f.min_txid <= done {
            // A snapshot (numbered past everything before it, so no group continues across
            // it), or a file overlapping what the level holds.
            continue;
        }
        let joins = out.last().and_then(|g| g.last()).is_some_and(|g| {
            g.max_txid + 1 == f.min_txid
                && g.created_at_ms.div_euclid(period) == f.created_at_ms.div_euclid(period)
        }) && out.last().is_some_and(|g| g.len() < GROUP_FILES_MAX)
            && bytes + f.size <= GROUP_BYTES_MAX;
        if joins {
            bytes += f.size;
            if let Some(g) = out.last_mut() {
                g.push(f);
            }
        } else {
            bytes = f.size;
            out.push(vec![f]);
        }
    }
    out
}

/// When the point at the end of `f` (on `on`) was made: its header time, never before its
/// listed time (as `restore` counts it); the listed time when the header cannot be read.
pub(super) fn made(on: &Replica, f: &ReplicaFile) -> i64 {
    on.header_time(f).map_or(f.created_at_ms, |h| f.made(h))
}

/// Status from a listing of every file replica `index` holds: its restorable window (from its
/// oldest snapshot to its newest point), files and bytes; each upload then adds its file. The
/// window's ends are points, as `restore` names them: when the oldest snapshot and the newest
/// file were made (their header times; two header reads). `uploaded`: the replica's upload
/// counters (files, bytes) when the listing began, if uploads may have gone on since; the files
/// uploaded since are added, and the window's end never moves back.
pub(super) fn set_window(
    db: &Db,
    index: usize,
    replica: &Replica,
    files: &[ReplicaFile],
    uploaded: Option<(u64, u64)>,
) {
    let start = files
        .iter()
        .filter(|f| f.min_txid == 1)
        .min_by_key(|f| f.created_at_ms)
        .map(|f| made(replica, f));
    let end = files
        .iter()
        .max_by_key(|f| (f.created_at_ms, f.max_txid))
        .map(|f| made(replica, f));
    // A file replica's journal, its spare and its segments, beside its LTX files.
    let (journal_files, journal_bytes) = match replica {
        Replica::File(r) => crate::replica::journal::files(r.root()),
        Replica::S3(_) => (0, 0),
    };
    let mut st = db.lock();
    let r = &mut st.status.replicas[index];
    let (more_files, more_bytes, end) = match uploaded {
        Some((files, bytes)) => (
            r.files_uploaded.saturating_sub(files),
            r.bytes_uploaded.saturating_sub(bytes),
            end.max(r.window_end_ms),
        ),
        None => (0, 0, end),
    };
    r.window_start_ms = start;
    r.window_end_ms = end;
    r.files = Some(files.len() as u64 + more_files);
    r.bytes = Some(files.iter().map(|f| f.size).sum::<u64>() + more_bytes);
    r.journal_files = journal_files;
    r.journal_bytes = journal_bytes;
}
