//! One replica's uploader: copies the local log's new files to the replica in TXID order, at
//! most once per sync interval (merging what accumulated into one file), retrying with backoff.
//! It continues from the replica's own newest TXID, so a replica that was down catches up with no
//! gap, or from a snapshot when the local log no longer has what it missed.
//!
//! Compaction, the snapshot schedule and retention run on another thread (`maintain`), so that
//! they never hold up an upload.

use std::time::{Duration, Instant};

use super::engine::{Db, ReplicaSpec};
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile, SNAPSHOT_LEVEL};

/// The finest point-in-time step a replica with no sync interval keeps, in ms.
const GRANULARITY_MS: i64 = 10;
/// Most files or bytes merged into one upload. A merge holds its inputs, their newest pages
/// decoded and its output in memory, so the bytes are few: catching up takes more uploads.
const MERGE_FILES_MAX: usize = 10_000;
const MERGE_BYTES_MAX: u64 = 16 << 20;
/// The longest an idle uploader sleeps before looking at the clock again.
const IDLE: Duration = Duration::from_secs(1);
/// How long a stopping uploader keeps trying to deliver what is left.
const DRAIN: Duration = Duration::from_secs(5);
/// Least time between two uploads to a replica whose sync journal takes every shipment first
/// (each upload merges up to one granularity step of points).
const JOURNALED_INTERVAL: Duration = Duration::from_millis(5);

pub(crate) fn run(db: &Db, index: usize, spec: ReplicaSpec) {
    let journaled = super::journal::journaled(db, &spec.replica);
    let mut up = Uploader {
        db,
        index,
        spec,
        position: None,
        need_snapshot_above: None,
        failures: 0,
        last_upload: None,
        drain_until: None,
        link: true,
        journaled,
    };
    up.run();
}

struct Uploader<'a> {
    db: &'a Db,
    index: usize,
    spec: ReplicaSpec,
    /// The newest TXID on the replica, once known.
    position: Option<u64>,
    /// The replica holds a history we do not know up to this TXID: only a snapshot past it may follow.
    need_snapshot_above: Option<u64>,
    failures: u32,
    last_upload: Option<Instant>,
    drain_until: Option<Instant>,
    /// Whether local files may still be hard-linked into the replica (until a link fails).
    link: bool,
    /// Whether a journal thread takes every shipment first (sync mode, a file replica): uploads
    /// then merge the points of up to one granularity step.
    journaled: bool,
}

/// What goes to the replica next: a local file as it is, or files merged in memory.
enum Piece {
    Local(ReplicaFile),
    Merged(Vec<u8>),
}

impl Uploader<'_> {
    fn run(&mut self) {
        loop {
            if self.db.stopping() && self.drain_until.is_none() {
                self.drain_until = Some(Instant::now() + DRAIN);
            }
            if self.drain_until.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            if self.position.is_none()
                && let Err(e) = self.discover()
            {
                self.failed(&e);
                if self.db.stopping() {
                    return;
                }
                self.backoff();
                continue;
            }
            let position = self.position.unwrap_or(0);
            let local = self.wait_for_work(position);
            if self.db.shipper_done() && local <= position {
                return;
            }
            if local > position {
                self.respect_interval();
                match self.upload_next() {
                    Ok(true) => self.failures = 0,
                    Ok(false) => {
                        if self.db.stopping() {
                            return;
                        }
                        // Waiting for the shipper's snapshot.
                        self.wait(Duration::from_millis(100));
                    }
                    Err(e) => {
                        self.failed(&e);
                        if self.db.stopping() {
                            return;
                        }
                        self.backoff();
                    }
                }
            }
        }
    }

    /// Waits until the local log is ahead of `position`, or the engine stops.
    /// Returns the local log's newest TXID.
    fn wait_for_work(&self, position: u64) -> u64 {
        let mut st = self.db.lock();
        loop {
            let local = st.status.txid;
            if local > position || self.db.shipper_done() {
                return local;
            }
            if self.db.stopping() {
                // The shipper's last shipment is coming: wait for it, briefly.
                st = self
                    .db
                    .changed
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            st = self
                .db
                .changed
                .wait_timeout(st, IDLE)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sleeps up to `d`, waking early on any change (a shipment, say) or on stop.
    fn wait(&self, d: Duration) {
        let st = self.db.lock();
        if !self.db.stopping() {
            let _ = self
                .db
                .changed
                .wait_timeout(st, d)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Least time between two uploads.
    fn interval(&self) -> Duration {
        if self.journaled {
            self.spec.sync_interval.max(JOURNALED_INTERVAL)
        } else {
            self.spec.sync_interval
        }
    }

    /// Waits until the interval since the last upload has passed, the engine stops or a journal
    /// wants the layout; not woken by each shipment (see `Db::quiet`).
    fn respect_interval(&self) {
        let Some(last) = self.last_upload else { return };
        let deadline = last + self.interval();
        let mut st = self.db.lock();
        loop {
            let now = Instant::now();
            if now >= deadline || self.db.stopping() || st.status.replicas[self.index].layout_wanted
            {
                return;
            }
            st = self
                .db
                .quiet
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits out the backoff after a failure: its whole time, whatever wakes the thread (every
    /// shipment notifies `changed`, so waking on it retried a dead replica once per commit), and
    /// less only when the engine stops.
    fn backoff(&self) {
        let ms = (100u64 << self.failures.min(8)).min(30_000);
        self.db.sleep(Duration::from_millis(ms));
    }

    fn failed(&mut self, e: &Error) {
        self.failures += 1;
        let message = crate::store::writer::error_chain(e);
        tracing::warn!(database = %self.db.name, replica = %self.spec.name, error = %message, failures = self.failures, "replica upload failed; retrying with backoff");
        crate::metrics::replication_failed(&self.db.name, &self.spec.name);
        let now = self.db.now_ms();
        let mut st = self.db.lock();
        let r = &mut st.status.replicas[self.index];
        r.last_error = Some(message);
        r.last_error_at_ms = Some(now);
        r.last_hint = e.hint();
        r.failures = u64::from(self.failures);
        drop(st);
        self.db.changed.notify_all();
    }

    /// Finds the replica's newest TXID. A replica ahead of this process's history holds another
    /// history: the shipper numbers past it and the next file it gets is a snapshot.
    ///
    /// A file replica's sync journal goes into the layout first: its records past the layout's
    /// newest file (acknowledged commits, in sync mode) become level-0 files, so that the journal
    /// can start a new lap.
    fn discover(&mut self) -> Result<()> {
        let journal = match &self.spec.replica {
            Replica::File(r) => r.journal_records(r.newest_txid())?,
            Replica::S3(_) => Vec::new(),
        };
        let journal_max = journal.iter().map(|(r, _)| r.max_txid).max().unwrap_or(0);
        let mut all = self.spec.replica.list_all()?;
        if let Replica::File(r) = &self.spec.replica {
            let newest = all.iter().map(|f| f.max_txid).max().unwrap_or(0);
            for (f, bytes) in r.journal_tail(journal, newest) {
                all.push(r.put(0, &bytes, Some(f.created_at_ms))?);
                tracing::info!(replica = %self.spec.name, min_txid = f.min_txid, max_txid = f.max_txid, "journal record replayed into the replica's files");
            }
            r.forget_journal();
            // The journal's segments may go once the layout holds them: every name in it must
            // survive a machine crash first (a killed process may have renamed a file into it
            // without the directory's fsync).
            r.sync_dirs()?;
            let newest = all.iter().map(|f| f.max_txid).max().unwrap_or(0);
            // With a fine log they stay for the fine window (the maintenance thread removes them).
            if !self.db.fine_log()
                && let Err(e) = crate::replica::journal::remove_segments_through(r.root(), newest)
            {
                tracing::warn!(replica = %self.spec.name, error = %crate::store::writer::error_chain(&e), "could not remove the journal segments the layout holds; the journal's next lap retries");
            }
        }
        let mut newest: Option<&ReplicaFile> = None;
        for f in &all {
            if newest.is_none_or(|n| f.max_txid > n.max_txid) {
                newest = Some(f);
            }
        }
        let position = newest.map_or(0, |f| f.max_txid);
        super::maintain::set_window(self.db, self.index, &self.spec.replica, &all, None);
        let made = newest.map(|f| super::maintain::made(&self.spec.replica, f));
        let mut st = self.db.lock();
        // A journal record that continues nothing still names TXIDs of another history.
        let held = position.max(journal_max);
        let foreign = held > 0 && held >= st.history_start;
        if foreign {
            tracing::warn!(replica = %self.spec.name, position = held, "the replica holds files this database's local log does not know; continuing it from a new snapshot");
            st.raise_txid = st.raise_txid.max(held);
            st.snapshot_wanted = true;
            self.need_snapshot_above = Some(held);
        }
        let r = &mut st.status.replicas[self.index];
        // Until the snapshot past them is on the replica, nothing of this history is there: no
        // commit is credited and the journal takes nothing (a TXID may name another content).
        r.foreign_to = if foreign { held } else { 0 };
        r.txid = Some(position);
        r.txid_time_ms = made;
        r.discovered = true;
        drop(st);
        self.db.changed.notify_all();
        self.position = Some(position);
        Ok(())
    }

    /// Uploads the next piece: the run of level-0 files continuing the replica (merged when the
    /// sync interval is not zero), or the snapshot that continues it. Returns false when the
    /// local log has neither (a snapshot was asked for).
    fn upload_next(&mut self) -> Result<bool> {
        let position = self.position.unwrap_or(0);
        let local = &self.db.local;
        let mut run: Vec<ReplicaFile> = Vec::new();
        if self.need_snapshot_above.is_none() {
            // With no interval, every shipped point is kept; an uploader that fell behind merges
            // only points within one granularity step, so catching up costs no precision.
            let span_ms = if self.spec.sync_interval.is_zero() {
                GRANULARITY_MS
            } else {
                i64::MAX
            };
            // Files a replica can link cost no copy and no inode each, where a merge costs a
            // decode, an encode and a new file: with no interval, they go one by one. (Not the
            // file per commit that sync mode's local log makes unless it is written merged.)
            let files_max = if self.spec.sync_interval.is_zero()
                && self.can_link()
                && (!self.journaled || self.db.local_deferred())
            {
                1
            } else {
                MERGE_FILES_MAX
            };
            let mut next = position + 1;
            let mut bytes = 0;
            for f in self.local_after(position)? {
                if f.min_txid < next {
                    continue;
                }
                let too_late = run
                    .first()
                    .is_some_and(|first| f.created_at_ms - first.created_at_ms >= span_ms);
                // A snapshot (the local log's first file) goes alone, streamed from its file:
                // merged, it would pass through memory whole.
                let snapshot = f.min_txid == 1 || run.first().is_some_and(|g| g.min_txid == 1);
                if f.min_txid > next
                    || too_late
                    || run.len() >= files_max
                    || bytes >= MERGE_BYTES_MAX
                    || (snapshot && !run.is_empty())
                {
                    break;
                }
                next = f.max_txid + 1;
                bytes += f.size;
                run.push(f);
            }
        }
        let started = self.db.now_ms();
        // `made`, when the point was made, is read before the upload: the local log may prune its
        // file once it is on every replica.
        let (level, piece, max_txid, ts, made, snapshot) = if !run.is_empty() {
            let (piece, listed, made) = if run.len() == 1 {
                let only = &run[0];
                (
                    Piece::Local(only.clone()),
                    only.created_at_ms,
                    super::maintain::made(local, only),
                )
            } else {
                let merged = merge(local, &run, "local files")?;
                (Piece::Merged(merged.bytes), merged.listed, merged.made)
            };
            let last = run.last().map_or(position, |f| f.max_txid);
            (0, piece, last, listed, made, run[0].min_txid == 1)
        } else {
            let above = self.need_snapshot_above.unwrap_or(0).max(position);
            let snapshot = local
                .list_after(SNAPSHOT_LEVEL, above)?
                .into_iter()
                .filter(|f| f.max_txid > above)
                .min_by_key(|f| f.max_txid);
            let Some(s) = snapshot else {
                self.db.lock().snapshot_wanted = true;
                self.db.changed.notify_all();
                return Ok(false);
            };
            let (max_txid, ts, made) = (
                s.max_txid,
                s.created_at_ms,
                super::maintain::made(local, &s),
            );
            (SNAPSHOT_LEVEL, Piece::Local(s), max_txid, ts, made, true)
        };
        let written = match piece {
            Piece::Local(f) => self.put_local(level, &f)?,
            // Listed at its first file's time; its header keeps the last one's (see `compact`).
            Piece::Merged(bytes) => self.spec.replica.put(level, &bytes, Some(ts))?,
        };
        self.last_upload = Some(Instant::now());
        self.position = Some(max_txid);
        if snapshot {
            self.need_snapshot_above = None;
        }
        crate::metrics::replicated(
            &self.db.name,
            &self.spec.name,
            snapshot,
            written.size,
            max_txid,
        );
        let mut st = self.db.lock();
        let local_txid = st.status.txid;
        let seq = Db::commit_seq_at(&st, max_txid);
        if level == 0 {
            super::maintain::record_point(&mut st.put_points[self.index], &written);
        }
        let r = &mut st.status.replicas[self.index];
        r.txid = Some(max_txid);
        if snapshot {
            // With its position, in one step: the journal continues this history from here.
            r.foreign_to = 0;
        }
        r.txid_time_ms = Some(made);
        r.bytes_uploaded += written.size;
        r.files_uploaded += 1;
        // The window and totals as of the last listing, plus this file (maintenance lists again).
        r.files = Some(r.files.unwrap_or(0) + 1);
        r.bytes = Some(r.bytes.unwrap_or(0) + written.size);
        r.window_end_ms = Some(r.window_end_ms.map_or(made, |e| e.max(made)));
        if snapshot {
            r.window_start_ms.get_or_insert(made);
        }
        r.last_file = Some(format!(
            "{level}/{}",
            ltx::file_name(written.min_txid, written.max_txid)
        ));
        r.last_error = None;
        r.last_hint = None;
        r.failures = 0;
        r.layout_wanted = false;
        r.commit_seq = r.commit_seq.max(seq);
        if max_txid >= local_txid {
            r.caught_up_at_ms = Some(started);
        }
        // In sync mode, the answers this upload confirms go now, not after another thread's wakeup.
        let released = st.take_released(Instant::now());
        drop(st);
        self.db.changed.notify_all();
        let answered = !released.is_empty();
        for (release, result) in released {
            release(result);
        }
        if answered {
            // Nothing waits on this thread now: create the local log's next file.
            self.db.prepare_local();
        }
        Ok(true)
    }

    /// The local log's level-0 files after `position`: from the shipper's record of the files it
    /// wrote when that holds the next one, else from a listing (after a restart, a snapshot, or
    /// an uploader that fell far behind).
    fn local_after(&self, position: u64) -> Result<Vec<ReplicaFile>> {
        {
            let st = self.db.lock();
            let i = st.recent.partition_point(|f| f.max_txid <= position);
            if st.recent.get(i).is_some_and(|f| f.min_txid == position + 1) {
                return Ok(st.recent.range(i..).cloned().collect());
            }
        }
        self.db.local.list_after(0, position)
    }

    /// Whether local files can be hard-linked into the replica (as far as is known).
    fn can_link(&self) -> bool {
        self.link && matches!(self.spec.replica, Replica::File(_))
    }

    /// Puts a local-log file on the replica at `level`: a hard link when the replica is a
    /// directory on the same filesystem (no copy, and the local log's pruning frees no inode),
    /// else a copy streamed from the file (a snapshot is as large as the database).
    fn put_local(&mut self, level: u32, file: &ReplicaFile) -> Result<ReplicaFile> {
        if self.link
            && let (Replica::File(to), Replica::File(from)) = (&self.spec.replica, &self.db.local)
        {
            match to.put_link(level, from, file)? {
                Some(written) => return Ok(written),
                None => {
                    tracing::info!(replica = %self.spec.name, "the replica is on another filesystem: copying files instead of linking them");
                    self.link = false;
                }
            }
        }
        let Replica::File(local) = &self.db.local else {
            let bytes = self.db.local.read(file)?;
            return self
                .spec
                .replica
                .put(level, &bytes, Some(file.created_at_ms));
        };
        let path = local.path_of(file.level, file.min_txid, file.max_txid);
        self.spec
            .replica
            .put_file(level, &path, Some(file.created_at_ms))
    }
}

/// A merge of contiguous files: its bytes, when it is listed (see [`merged_listing`]) and when
/// its last point was made.
pub(super) struct Merged {
    pub(super) bytes: Vec<u8>,
    pub(super) listed: i64,
    pub(super) made: i64,
}

/// Reads `files` (contiguous, in TXID order) from `on` and merges them into one file; `what`
/// names them in errors.
pub(super) fn merge(on: &Replica, files: &[ReplicaFile], what: &str) -> Result<Merged> {
    let inputs = files
        .iter()
        .map(|f| on.read(f))
        .collect::<Result<Vec<_>>>()?;
    let slices: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let bytes = ltx::compact(&slices).map_err(|source| Error::Ltx {
        name: format!("merge of {} {what}", files.len()),
        source,
    })?;
    let headers: Vec<i64> = inputs
        .iter()
        .map(|b| header_ms(b).unwrap_or(i64::MIN))
        .collect();
    let listed = merged_listing(files, &headers, &bytes);
    let made = header_ms(&bytes).map_or(listed, |h| h.max(listed));
    Ok(Merged {
        bytes,
        listed,
        made,
    })
}

/// The header time of the LTX file `bytes`, if its header decodes.
fn header_ms(bytes: &[u8]) -> Option<i64> {
    let head: &[u8; ltx::HEADER_SIZE] = bytes.get(..ltx::HEADER_SIZE)?.try_into().ok()?;
    ltx::Header::decode(head).ok().map(|h| h.timestamp_ms)
}

/// When a merge of `files` (whose header times are `headers`) into `merged` is listed: at its
/// first file's time, a lower bound of every commit it holds, when every input has two times
/// (header after listed). An input with one time (Litestream's, or an older TradeVault's) bounds
/// its commits from above only, so the merge is listed at its own header time and keeps one time:
/// `restore` never takes its listed time for a lower bound (`plan::unbounded_next`).
fn merged_listing(files: &[ReplicaFile], headers: &[i64], merged: &[u8]) -> i64 {
    let first = files.first().map_or(i64::MIN, |f| f.created_at_ms);
    let one_time = files.iter().zip(headers).any(|(f, &h)| f.one_time(h));
    match header_ms(merged) {
        Some(made) if one_time => made.max(first),
        _ => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ltx_at(min: u64, max: u64, header_ms: i64) -> Vec<u8> {
        let mut enc = ltx::Encoder::new(Vec::new(), ltx::Header::new(4096, 1, min, max, header_ms))
            .expect("header");
        enc.encode_page(1, &[0u8; 4096]).expect("page");
        enc.finish(0).expect("finish").0
    }

    fn listed_at(min: u64, max: u64, ms: i64) -> ReplicaFile {
        ReplicaFile {
            level: 0,
            min_txid: min,
            max_txid: max,
            size: 0,
            created_at_ms: ms,
        }
    }

    #[test]
    fn a_merge_keeps_one_time_when_an_input_has_one() {
        let files = [listed_at(2, 2, 1_000), listed_at(3, 3, 2_000)];
        let merged = ltx_at(2, 3, 2_500);
        // Both made after they were listed: listed at the first one's time.
        assert_eq!(merged_listing(&files, &[1_400, 2_500], &merged), 1_000);
        // The second stamped with one time (Litestream's): listed when the merge was made.
        assert_eq!(merged_listing(&files, &[1_400, 2_000], &merged), 2_500);
        assert_eq!(header_ms(&merged), Some(2_500));
        assert_eq!(header_ms(b"short"), None);
    }
}
