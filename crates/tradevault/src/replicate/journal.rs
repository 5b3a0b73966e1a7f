//! In sync mode and with a fine log, one thread per file replica appends each shipment to the
//! replica's journal (`replica::journal`) with one `fdatasync` and releases the answers it makes
//! durable there; the uploader puts the same points into the replica's `ltx/` layout a few
//! milliseconds later (a second, with a fine log), merged (see `upload`). A commit therefore
//! waits for one data fsync on the replica, not for a new file, its fsync and its directory's.
//!
//! The thread starts once the uploader has found the replica and replayed what the journal held
//! into the layout; it journals only shipments that continue the layout or its own last record, so
//! the journal is always a continuation of the layout. A full journal is archived as a segment and
//! the next lap starts at once; in sync mode segments the layout holds are removed at each lap
//! (with a fine log they stay for the fine window: `replicate::maintain`). At most one
//! segment the layout lacks is kept: a lap that would make a second waits for the layout (and
//! hurries it), so the journal and its segments stay within a few laps on disk and in a reader's
//! memory. A shipment too large for the journal, or a failing write, is left to the uploader,
//! whose upload releases the answers as in async replication.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::engine::Db;
use super::status::ReplicaStatus;
use crate::replica::Replica;
use crate::replica::journal::{JOURNAL_BYTES, Writer, record_len};

/// How often a waiting journal thread looks whether the engine stops.
const TICK: Duration = Duration::from_millis(100);
/// Most shipments waiting for one journal thread; past it the oldest go (the layout carries them).
const QUEUE_MAX: usize = 4096;

/// Whether shipments to `replica` go through its journal: a file replica, in sync mode or with a
/// fine log ([`Db::fine_log`]).
pub(crate) fn journaled(db: &Db, replica: &Replica) -> bool {
    (db.sync_mode() || db.fine_log()) && matches!(replica, Replica::File(_))
}

/// One shipment, as the shipper encoded it.
pub(crate) struct Shipment {
    /// Its LTX file; None when it is too large for a journal (its layout upload confirms it).
    pub(crate) bytes: Option<Arc<Vec<u8>>>,
    /// Its TXID (a shipment of transactions is one).
    pub(crate) txid: u64,
    /// Its listed time.
    pub(crate) created_at_ms: i64,
    /// The last store commit it (or a shipment before it) holds; 0 for another program's database.
    pub(crate) seq: u64,
}

/// Shipments handed from the shipper to one replica's journal thread, in memory: the journal
/// gets a shipment while the shipper still writes it into the local log.
#[derive(Default)]
pub(crate) struct Handoff {
    queue: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    shipments: VecDeque<Shipment>,
    bytes: u64,
}

impl Shipment {
    fn len(&self) -> u64 {
        self.bytes.as_ref().map_or(0, |b| b.len() as u64)
    }
}

impl Handoff {
    /// Hands a shipment over (never blocks on the journal's writes).
    /// The oldest go when more than [`QUEUE_MAX`] shipments or a journal's size wait (a gap the
    /// layout then carries).
    pub(crate) fn push(&self, shipment: Shipment) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.shipments.len() >= QUEUE_MAX || q.bytes + shipment.len() > JOURNAL_BYTES {
            let Some(old) = q.shipments.pop_front() else {
                break;
            };
            q.bytes -= old.len();
        }
        q.bytes += shipment.len();
        q.shipments.push_back(shipment);
        drop(q);
        self.ready.notify_one();
    }

    /// Every shipment waiting, once there is one; None when the engine stops.
    fn take(&self, db: &Db) -> Option<Vec<Shipment>> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if db.stopping() {
                return None;
            }
            if !q.shipments.is_empty() {
                q.bytes = 0;
                return Some(q.shipments.drain(..).collect());
            }
            q = self
                .ready
                .wait_timeout(q, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The body of the journal thread of replica `index`, rooted at `root`, fed by `handoff`.
pub(crate) fn run(db: &Db, index: usize, name: &str, root: &Path, handoff: &Handoff) {
    let mut journal = Journal {
        db,
        index,
        name,
        root,
        writer: None,
        journaled: 0,
        failures: 0,
    };
    // The uploader replays the journal's records into the layout before the journal goes on.
    if journal.wait_for(|r| r.discovered.then_some(())).is_none() {
        return;
    }
    while let Some(batch) = handoff.take(db) {
        journal.append(&batch);
    }
}

struct Journal<'a> {
    db: &'a Db,
    index: usize,
    name: &'a str,
    root: &'a Path,
    /// None until opened, and after a failed append until the layout holds what it held.
    writer: Option<Writer>,
    /// The newest TXID the journal holds since it was opened (0: none yet).
    journaled: u64,
    failures: u32,
}

impl Journal<'_> {
    /// Appends the shipments of `batch` in order, each once the journal or the layout reaches the
    /// TXID before it, and releases the answers they hold. What the layout holds already is
    /// skipped; a shipment the journal cannot continue to (a gap: the layout still catching up
    /// after a snapshot, a shipment too large for the journal) waits for the layout, which the
    /// journal thread asks to hurry; a failing journal leaves the rest to the layout.
    fn append(&mut self, batch: &[Shipment]) {
        let mut rest = batch;
        loop {
            // Nothing of this history is on a replica that holds another one: wait for the
            // snapshot that ends that (a TXID there may name another content).
            let Some(layout) = self.layout() else {
                return;
            };
            let from = self.journaled.max(layout);
            let skip = rest.iter().take_while(|s| s.txid <= from).count();
            rest = &rest[skip..];
            let Some(first) = rest.first() else {
                return;
            };
            if first.txid > from + 1 {
                if !self.wait_for_layout(first.txid - 1) {
                    return;
                }
                continue;
            }
            let mut writer = match self.writer.take() {
                Some(w) => w,
                None => match Writer::open(self.root, JOURNAL_BYTES) {
                    Ok(w) => {
                        // What it held is archived: a segment the layout holds already goes.
                        self.remove_segments(layout);
                        self.journaled = 0;
                        w
                    }
                    Err(e) => {
                        self.failed(&e);
                        return;
                    }
                },
            };
            if first.bytes.is_none() || !writer.could_fit(first.len()) {
                // The layout carries it; the journal continues after it.
                self.writer = Some(writer);
                if !self.wait_for_layout(first.txid) {
                    return;
                }
                continue;
            }
            // The run that continues the journal and fits in what is left of this lap.
            let (mut next, mut room) = (from + 1, writer.room());
            let run = rest
                .iter()
                .take_while(|s| {
                    let len = record_len(s.len());
                    let ok = s.txid == next
                        && s.bytes.is_some()
                        && writer.could_fit(s.len())
                        && len <= room;
                    if ok {
                        next += 1;
                        room -= len;
                    }
                    ok
                })
                .count();
            if run == 0 {
                // A new lap: this one's records stay readable in a segment, so it waits for the
                // layout only if an older segment still holds records the layout lacks. The next
                // lap continues the last record.
                self.remove_segments(layout);
                if let Some(older) = self.unheld_segment(layout) {
                    if !self.wait_for_layout(older) {
                        self.writer = Some(writer);
                        return;
                    }
                    self.remove_segments(older);
                }
                if let Err(e) = writer.new_lap() {
                    self.failed(&e);
                    self.wait_for_layout(self.journaled);
                    return;
                }
                self.writer = Some(writer);
                self.remove_segments(layout);
                continue;
            }
            let records: Vec<(&[u8], i64)> = rest[..run]
                .iter()
                .filter_map(|s| Some((s.bytes.as_deref()?.as_slice(), s.created_at_ms)))
                .collect();
            if let Err(e) = writer.append(&records) {
                // What it held may be lost with it: a new journal starts once the layout holds it.
                self.failed(&e);
                self.wait_for_layout(self.journaled);
                return;
            }
            if self.failures > 0 {
                self.failures = 0;
                self.db.journal_failing(false);
                self.db.lock().status.replicas[self.index].journal_error = None;
            }
            self.writer = Some(writer);
            self.journaled = rest[run - 1].txid;
            let seq = rest[run - 1].seq;
            let made = rest[run - 1]
                .bytes
                .as_deref()
                .and_then(|b| b.get(..ltx::HEADER_SIZE)?.try_into().ok())
                .and_then(|h| ltx::Header::decode(h).ok())
                .map(|h| h.timestamp_ms);
            rest = &rest[run..];
            self.confirm(seq, made);
        }
    }

    /// The last TXID of the newest segment the layout does not hold yet (`layout`: its newest
    /// TXID), if any.
    fn unheld_segment(&self, layout: u64) -> Option<u64> {
        crate::replica::journal::segments(self.root)
            .ok()?
            .iter()
            .map(|(_, last, _)| *last)
            .filter(|last| *last > layout)
            .max()
    }

    /// Removes the segments whose records the layout holds (`layout`: its newest TXID); with a
    /// fine log they stay for the fine window, and the maintenance thread removes them.
    fn remove_segments(&self, layout: u64) {
        if self.db.fine_log() {
            return;
        }
        if let Err(e) = crate::replica::journal::remove_segments_through(self.root, layout) {
            tracing::warn!(replica = %self.name, error = %crate::store::writer::error_chain(&e), "could not remove the journal segments the layout holds; retrying at the next lap");
        }
    }

    /// The newest TXID in the replica's layout, once the replica holds nothing of another
    /// history (waiting for that); None when the engine stops first.
    fn layout(&self) -> Option<u64> {
        self.wait_for(|r| (r.foreign_to == 0).then(|| r.txid.unwrap_or(0)))
    }

    /// Credits the replica with what the journal holds (its newest record holds the store's
    /// commits up to `seq`) and sends the answers that releases. The record is durable here
    /// before the shipper has written it into the local log, let alone recorded it: the
    /// shipment's own `seq` credits it without waiting for that.
    fn confirm(&self, seq: u64, made: Option<i64>) {
        let released = {
            let mut st = self.db.lock();
            let seq = Db::commit_seq_at(&st, self.journaled).max(seq);
            let r = &mut st.status.replicas[self.index];
            r.journal_txid = self.journaled;
            r.journal_time_ms = made.or(r.journal_time_ms);
            r.commit_seq = r.commit_seq.max(seq);
            // Records the file for the gate (unless the shipper did) and credits every replica
            // that holds it, this one included.
            st.record_shipped(self.journaled, seq)
        };
        let answered = !released.is_empty();
        for (release, result) in released {
            release(result);
        }
        if answered {
            // Nothing waits on this thread now: create the local log's next file.
            self.db.prepare_local();
        }
    }

    fn failed(&mut self, e: &crate::error::Error) {
        if self.failures == 0 {
            self.db.journal_failing(true);
        }
        let error = crate::store::writer::error_chain(e);
        self.failures += 1;
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::warn!(replica = %self.name, error = %error, failures = self.failures, "the journal failed; the replica's layout uploads confirm commits meanwhile");
        }
        self.db.lock().status.replicas[self.index].journal_error = Some(error);
        self.db.sleep(Duration::from_millis(
            (10u64 << self.failures.min(9)).min(5_000),
        ));
    }

    /// Waits until the replica's layout holds `txid`, asking the uploader not to wait out its
    /// sync interval; false when the engine stops first.
    fn wait_for_layout(&self, txid: u64) -> bool {
        let (changed, quiet) = (&self.db.changed, &self.db.quiet);
        self.wait_for(|r| {
            if r.txid.unwrap_or(0) >= txid {
                return Some(());
            }
            if !r.layout_wanted {
                r.layout_wanted = true;
                self.db.hurry_local();
                changed.notify_all();
                quiet.notify_all();
            }
            None
        })
        .is_some()
    }

    /// Waits (woken by `changed`) until `ready` finds what it needs in the replica's status;
    /// None when the engine stops first.
    fn wait_for<T>(&self, mut ready: impl FnMut(&mut ReplicaStatus) -> Option<T>) -> Option<T> {
        let mut st = self.db.lock();
        loop {
            if let Some(found) = ready(&mut st.status.replicas[self.index]) {
                return Some(found);
            }
            if self.db.stopping() {
                return None;
            }
            st = self
                .db
                .changed
                .wait_timeout(st, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
