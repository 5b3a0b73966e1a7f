//! [`Replicator`]: ships a SQLite database's committed transactions as LTX files into the
//! replication engine's local log (see `engine.rs`), for the store and for other programs'
//! databases alike.
//!
//! Each [`Replicator::sync`] reads the WAL from the last position and writes one level-0 file
//! holding every transaction committed since (the newest version of each page), numbered with the
//! next TXID. With no position (first run, or the WAL was reset behind our back), it writes a
//! snapshot instead: a [`Snapshot`] (a read transaction holds one state while the database file is
//! read with the WAL's committed pages up to that state laid over it, so writers go on), read a
//! few MiB at a time and encoded straight into the replica (`Replica::put_streamed`): memory is
//! the WAL's distinct pages, not the database's size. The next sync reads the WAL from exactly
//! where the snapshot's state ends. The first snapshot is TXID 1 at level 0; later ones are
//! level-9 files `1-<txid>`, which is where Litestream's restore looks for snapshots, so a
//! history never has a gap.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::replica::{Replica, SNAPSHOT_LEVEL};
use crate::snapshot::{Continues, Snapshot};
use crate::store::wal_path;
use crate::wal::{Position, WalReader};

/// Bytes of database pages a snapshot reads at a time.
const SNAPSHOT_READ_BYTES: usize = 4 << 20;

mod engine;
mod journal;
mod maintain;
pub mod status;
mod upload;

pub use engine::{DatabaseSpec, Engine, ReplicaSpec, Retention, Source, StoreLink};

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// Nothing was committed since the last sync.
    Nothing,
    /// A snapshot of the whole database was written.
    Snapshot {
        /// Its TXID.
        txid: u64,
        /// Pages in it.
        pages: u32,
        /// Bytes written.
        bytes: u64,
    },
    /// The transactions committed since the last sync were read and handed to `on_encoded`; they
    /// go into the local log with the next [`Replicator::flush_local`] (see
    /// [`Replicator::defer_local`]).
    Deferred {
        /// Their TXID.
        txid: u64,
    },
    /// The transactions committed since the last sync were written as one file.
    Transactions {
        /// Its TXID.
        txid: u64,
        /// SQLite transactions it holds.
        transactions: u32,
        /// Distinct pages in it.
        pages: u32,
        /// Bytes written.
        bytes: u64,
    },
}

/// Where the next sync continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Nothing shipped yet, or the WAL was reset: take a snapshot.
    Snapshot,
    /// Read the WAL from this position.
    Wal(Position),
    /// The engine checkpointed and truncated the WAL right after shipping all of it, with nothing
    /// committed in between, or a snapshot found the WAL restarted with no frame in it yet: the
    /// next WAL generation continues the history. SQLite gives each restarted WAL the previous
    /// first salt plus one (shared by every connection, unlike the checkpoint counter), so this is
    /// the first salt that generation must have.
    FreshWal(u32),
    /// The database file as it was when a snapshot found no WAL, or when a clean stop saved it
    /// (see [`Replicator::save`]; its content is checked at the next start). In WAL mode the
    /// database file only changes through checkpoints, so while its size and mtime stay the same,
    /// the WAL read from its start continues it (frames already in the file, if any, carry what
    /// it holds).
    NoWal(u64, std::time::SystemTime),
}

/// The file in the local log's directory where a clean stop keeps the replicator's position.
const SAVED_FILE: &str = "position.json";

/// What [`Replicator::save`] keeps.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    /// The newest TXID shipped, which `at` follows.
    txid: u64,
    at: SavedAt,
    /// The database file's inode, size and mtime when saved.
    db_ino: u64,
    db_len: u64,
    db_modified_ns: u64,
}

/// A [`Resume`] other than a snapshot, as saved.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SavedAt {
    Wal(Position),
    /// The database file alone (its size and mtime are the [`Saved`] ones).
    NoWal {
        /// CRC-64 of the whole database file.
        content: u64,
    },
}

/// CRC-64 of a file's content, read in pieces.
fn content_checksum(path: &Path) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    // Never a descriptor of our own that is closed afterwards: see `held`.
    let file = crate::held::open(path).map_err(|e| Error::io("open database", path, e))?;
    let mut sum = ltx::Checksum::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0;
    loop {
        let n = file
            .read_at(&mut buf, at)
            .map_err(|e| Error::io("read database", path, e))?;
        if n == 0 {
            return Ok(sum.finish());
        }
        sum.update(&buf[..n]);
        at += n as u64;
    }
}

/// Whether the WAL of `db`, read from its start, holds whole transactions up to exactly
/// `position` (same salts, same checksum chain).
fn wal_reaches(db: &Path, position: Position) -> bool {
    let Ok(Some(mut reader)) = WalReader::open(&wal_path(db)) else {
        return false;
    };
    while reader.position().offset < position.offset {
        if !matches!(reader.next_transaction(), Ok(Some(_))) {
            return false;
        }
    }
    reader.position() == position
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Ships one database's WAL into one local log.
pub struct Replicator {
    db: PathBuf,
    replica: Replica,
    txid: u64,
    resume: Resume,
    /// The newest file's timestamp: later files never claim an earlier time.
    last_ts: i64,
    /// When the newest file this replicator wrote was made (its header time).
    last_made: i64,
    /// The engine has held a read transaction on the database since the last sync read the WAL
    /// (see [`Replicator::set_wal_pinned`]).
    wal_pinned: bool,
    /// A sync has read the database since this replicator was made.
    looked: bool,
    /// Told about each shipment of transactions once encoded, before it is in the local log.
    on_encoded: Option<OnEncoded>,
    /// Whether shipments of transactions wait in `pending` for [`Replicator::flush_local`].
    defer: bool,
    pending: Option<Pending>,
    /// Files `flush_local` wrote, with their header times, for [`Replicator::take_flushed`].
    flushed: Vec<(crate::replica::ReplicaFile, i64)>,
    /// A flush failed since [`Replicator::take_flush_failed`] was last called.
    flush_failed: bool,
}

/// Shipments of transactions read but not yet in the local log, merged: the newest version of
/// each page, and the TXIDs and times of the file they will make.
struct Pending {
    page_size: u32,
    pages: std::collections::BTreeMap<u32, Vec<u8>>,
    min_txid: u64,
    max_txid: u64,
    /// The database's size in pages after the newest of them.
    commit: u32,
    /// The first one's listed time, the newest one's header time.
    listed: i64,
    made: i64,
    /// When the first one was read.
    since: std::time::Instant,
}

/// See [`Replicator::on_encoded`]: the LTX bytes, their TXID and listed time.
pub type OnEncoded = Box<dyn Fn(&[u8], u64, i64) + Send>;

impl Replicator {
    /// A replicator of `db` into `replica`, continuing after the newest TXID already there.
    pub fn new(db: &Path, replica: Replica) -> Result<Replicator> {
        let (mut txid, mut last_ts) = (0, i64::MIN);
        for f in replica.list_all()? {
            txid = txid.max(f.max_txid);
            last_ts = last_ts.max(f.created_at_ms);
        }
        Ok(Replicator {
            db: db.to_owned(),
            replica,
            txid,
            resume: Resume::Snapshot,
            last_ts,
            last_made: last_ts,
            wal_pinned: false,
            looked: false,
            on_encoded: None,
            defer: false,
            pending: None,
            flushed: Vec::new(),
            flush_failed: false,
        })
    }

    /// Keeps shipments of transactions out of the local log until [`Replicator::flush_local`],
    /// which writes them as one file. For sync mode, where each commit is its own shipment and
    /// the replicas' journals (fed by `on_encoded`) answer the writer: one local file per commit
    /// cost a new inode each, on the CPU the next commit waits for. A snapshot, [`save`] and a
    /// failed flush flush first or start a new history, so the local log never has a gap.
    ///
    /// [`save`]: Replicator::save
    pub fn defer_local(&mut self, defer: bool) {
        self.defer = defer;
    }

    /// When the shipments waiting for [`Replicator::flush_local`] were first read, if any wait.
    pub fn pending_since(&self) -> Option<std::time::Instant> {
        self.pending.as_ref().map(|p| p.since)
    }

    /// Bytes of pages waiting for [`Replicator::flush_local`].
    pub fn pending_bytes(&self) -> usize {
        self.pending
            .as_ref()
            .map_or(0, |p| p.pages.len() * p.page_size as usize)
    }

    /// Writes the shipments waiting since [`Replicator::defer_local`] into the local log as one
    /// level-0 file (listed at the first one's time, made at the last one's), to be taken with
    /// [`Replicator::take_flushed`]. If that fails, their TXIDs may already be in journals: the
    /// next sync writes a snapshot numbered past them.
    pub fn flush_local(&mut self) -> Result<()> {
        let Some(mut p) = self.pending.take() else {
            return Ok(());
        };
        // Pages past the final size belong to a shrink: they are not part of the database.
        let commit = p.commit;
        p.pages.retain(|pgno, _| *pgno <= commit);
        let header = ltx::Header::new(p.page_size, p.commit, p.min_txid, p.max_txid, p.made);
        let written = encode(header, p.pages.iter().map(|(n, d)| (*n, d.as_slice())))
            .and_then(|bytes| self.replica.put_encoded(0, &header, &bytes, Some(p.listed)));
        match written {
            Ok(written) => {
                let file = crate::replica::ReplicaFile {
                    level: 0,
                    min_txid: p.min_txid,
                    max_txid: p.max_txid,
                    size: written.size,
                    created_at_ms: p.listed,
                };
                self.flushed.push((file, p.made));
                Ok(())
            }
            Err(e) => {
                self.resume = Resume::Snapshot;
                self.flush_failed = true;
                Err(e)
            }
        }
    }

    /// Whether a [`Replicator::flush_local`] failed since the last call: the snapshot that
    /// follows is wanted even if nothing else is committed.
    pub fn take_flush_failed(&mut self) -> bool {
        std::mem::take(&mut self.flush_failed)
    }

    /// The files [`Replicator::flush_local`] wrote since the last call, oldest first, with the
    /// time each was made.
    pub fn take_flushed(&mut self) -> Vec<(crate::replica::ReplicaFile, i64)> {
        std::mem::take(&mut self.flushed)
    }

    /// Calls `hook` with each shipment of transactions as soon as it is encoded, before it is
    /// written into the local log (sync mode's journals take it from there).
    pub fn on_encoded(&mut self, hook: OnEncoded) {
        self.on_encoded = Some(hook);
    }

    /// The newest TXID on the replica.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The newest file's timestamp (ms since the epoch).
    pub fn last_ts(&self) -> i64 {
        self.last_ts
    }

    /// When the newest file was made (its header time, as `restore` names a point; the newest
    /// listed time until this replicator wrote a file).
    pub fn last_made(&self) -> i64 {
        self.last_made
    }

    /// Numbers the next file after `txid` at least: a replica holds files up to `txid` from a
    /// history this replicator does not know, so the next file must be a snapshot above it.
    pub fn raise_txid(&mut self, txid: u64) {
        if txid > self.txid {
            self.txid = txid;
            self.resume = Resume::Snapshot;
        }
    }

    /// Keeps where this replicator stands in `dir` (the local log's directory), so that the next
    /// start continues the history rather than shipping a new snapshot. Call only once nothing
    /// will be shipped any more (a clean stop); a replicator that must write a snapshot next saves
    /// nothing.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(SAVED_FILE);
        // A position past commits the local log lacks would continue a history with a gap.
        // (A failed flush makes the next start write a snapshot: nothing is saved below.)
        let _ = self.flush_local();
        let at = match self.resume {
            // Nothing committed since the WAL was truncated or restarted is in the database file:
            // while the file stays as it is, the WAL read from its start continues the history,
            // whatever salts SQLite gives it (random once its WAL index was rebuilt by the next
            // process). The file's size and mtime alone cannot show that it stayed as it is (the
            // mtime is as coarse as the kernel's clock tick): its content's checksum does.
            Resume::Snapshot => {
                return match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(Error::io("remove saved position", &path, e))
                    }
                    _ => Ok(()),
                };
            }
            Resume::Wal(p) => SavedAt::Wal(p),
            Resume::FreshWal(_) | Resume::NoWal(..) => SavedAt::NoWal {
                content: content_checksum(&self.db)?,
            },
        };
        let (db_len, modified) = file_identity(&self.db)?;
        let saved = Saved {
            txid: self.txid,
            at,
            db_ino: inode(&self.db).unwrap_or(0),
            db_len,
            db_modified_ns: nanos(modified),
        };
        let bytes = serde_json::to_vec(&saved).map_err(|e| Error::Internal {
            message: format!("encode saved position: {e}"),
        })?;
        let tmp = dir.join(format!("{SAVED_FILE}.tmp"));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io("save position", &path, e))
    }

    /// Continues from what [`Replicator::save`] kept in `dir`, if it still holds: the same newest
    /// TXID, the same database file (inode), and after a truncated WAL or none, a file that no
    /// checkpoint changed since (a WAL position needs nothing more: a WAL keeps its salts, and every frame of them, until it
    /// restarts, and a restart changes them). The saved file is removed first, durably, so that
    /// it can never be used again once the history moves on. Returns whether it continues.
    pub fn load_saved(&mut self, dir: &Path) -> bool {
        let path = dir.join(SAVED_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return false;
        };
        let removed = std::fs::remove_file(&path)
            .and_then(|()| std::fs::File::open(dir)?.sync_all())
            .is_ok();
        let Ok(saved) = serde_json::from_slice::<Saved>(&bytes) else {
            return false;
        };
        // Another file put in its place (a restore, say) starts another history.
        if !removed
            || saved.txid != self.txid
            || self.txid == 0
            || inode(&self.db) != Some(saved.db_ino)
        {
            return false;
        }
        let resume = match saved.at {
            // The frames shipped must still be there, the same: a machine crash can take unsynced
            // frames off the end of a program's WAL, and new ones would then never continue the
            // saved checksum chain.
            SavedAt::Wal(position) if wal_reaches(&self.db, position) => Resume::Wal(position),
            SavedAt::NoWal { content }
                if file_identity(&self.db).is_ok_and(|(len, modified)| {
                    (len, nanos(modified)) == (saved.db_len, saved.db_modified_ns)
                }) && content_checksum(&self.db).is_ok_and(|c| c == content) =>
            {
                Resume::NoWal(
                    saved.db_len,
                    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(saved.db_modified_ns),
                )
            }
            _ => return false,
        };
        self.resume = resume;
        true
    }

    /// Makes the next sync write a snapshot.
    pub fn force_snapshot(&mut self) {
        self.resume = Resume::Snapshot;
    }

    /// Tells the replicator that its last sync shipped the whole WAL and that the WAL, whose header
    /// had first salt `salt1`, was then checkpointed and truncated with nothing committed in between:
    /// the next WAL generation (first salt `salt1 + 1`) continues this history.
    pub fn wal_truncated(&mut self, salt1: u32) {
        self.resume = Resume::FreshWal(salt1.wrapping_add(1));
    }

    /// Tells the replicator whether a read transaction on the database has been open without a
    /// break since its last sync read the WAL (one taken before that read, and each later one taken
    /// before the previous one ended). While one is, SQLite can neither copy a frame past its mark
    /// into the database (that needs the exclusive read lock 0, and a reader on the database alone
    /// holds it shared) nor start a new WAL generation (that needs the exclusive read locks 1 to
    /// N, and a reader in the WAL holds one). So a new generation seen now began after every frame
    /// of the old one was shipped, and continues the history: no snapshot is needed. It holds for
    /// the next sync only.
    pub fn set_wal_pinned(&mut self, pinned: bool) {
        self.wal_pinned = pinned;
    }

    /// Bytes of the current WAL generation already shipped (the offset after its last shipped
    /// frame), if the replicator is reading a WAL.
    pub fn wal_shipped_bytes(&self) -> Option<u64> {
        match self.resume {
            Resume::Wal(position) => Some(position.offset),
            _ => None,
        }
    }

    /// Ships whatever was committed since the last sync, as if every commit it holds was made at
    /// `now_ms` and the file 1 ms later (as the engine stamps it: see [`Replicator::sync_with`]).
    pub fn sync(&mut self, now_ms: i64) -> Result<Synced> {
        self.sync_with(Some(now_ms), &|| now_ms + 1)
    }

    /// [`Replicator::sync`] with a file's two times: it is listed at `first_ms` (a lower bound of
    /// the commit times it holds, after every commit of the files before it; `now` when `None`),
    /// and its header holds `now` once its content was read (after every commit it holds). Times
    /// never go backwards from one file to the next.
    ///
    /// The first sync since this replicator was made may hold commits made while nothing
    /// replicated (another program's, or the store's last ones before a kill): they come after
    /// the newest file listed and no later bound is known, so that file is listed at its time.
    pub fn sync_with(&mut self, first_ms: Option<i64>, now: &dyn Fn() -> i64) -> Result<Synced> {
        let floor = self.last_ts;
        let listed = if !self.looked && floor > i64::MIN {
            floor
        } else {
            first_ms.unwrap_or_else(now).max(floor)
        };
        let result = self.sync_inner(listed, &|| now().max(listed));
        self.wal_pinned = false;
        self.looked |= result.is_ok();
        result
    }

    fn sync_inner(&mut self, listed: i64, now: &dyn Fn() -> i64) -> Result<Synced> {
        let wal = wal_path(&self.db);
        match self.resume {
            Resume::Wal(position) => match WalReader::resume(&wal, position)? {
                Some(reader) => return self.ship_transactions(reader, listed, now),
                None if self.wal_pinned => match WalReader::open(&wal)? {
                    // Truncated, and nothing written since: keep the place.
                    None => return Ok(Synced::Nothing),
                    Some(reader) => {
                        tracing::debug!(db = %self.db.display(), salt1 = reader.header().salt1, "a new wal generation continues the history");
                        return self.ship_transactions(reader, listed, now);
                    }
                },
                None => {
                    tracing::warn!(db = %self.db.display(), "the wal was reset by another program; writing a new snapshot")
                }
            },
            Resume::NoWal(len, modified) if file_identity(&self.db)? == (len, modified) => {
                return match WalReader::open(&wal)? {
                    Some(reader) => self.ship_transactions(reader, listed, now),
                    None => Ok(Synced::Nothing),
                };
            }
            Resume::FreshWal(salt1) => match WalReader::open(&wal)? {
                None => return Ok(Synced::Nothing),
                Some(reader) if reader.header().salt1 == salt1 => {
                    return self.ship_transactions(reader, listed, now);
                }
                // The generation before the restart, whose header the file still has until the
                // next frame is written: every frame of it was copied into the file before the
                // restart, so there is nothing new.
                Some(reader) if reader.header().salt1 == salt1.wrapping_sub(1) => {
                    return Ok(Synced::Nothing);
                }
                Some(_) => {
                    tracing::warn!(db = %self.db.display(), "the wal was reset twice; writing a new snapshot")
                }
            },
            Resume::NoWal(..) | Resume::Snapshot => {}
        }
        // The local log's files stay in TXID order: what waits goes in before the snapshot. If
        // it cannot, the snapshot is still written, numbered past it.
        let flush = self.flush_local();
        if let Err(e) = &flush {
            tracing::warn!(db = %self.db.display(), error = %e, "could not write the waiting shipments into the local log; a snapshot follows");
        }
        let shipped = self.ship_snapshot(listed, now);
        // The snapshot the failed flush asks for is this one, if it was written.
        if flush.is_err() && shipped.is_ok() {
            self.flush_failed = false;
        }
        shipped
    }

    fn ship_transactions(
        &mut self,
        mut reader: WalReader,
        listed: i64,
        now: &dyn Fn() -> i64,
    ) -> Result<Synced> {
        let page_size = reader.header().page_size;
        // One file holds one page size (a WAL generation keeps it; this is for safety's sake).
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.page_size != page_size)
        {
            self.flush_local()?;
        }
        let mut pages = std::collections::BTreeMap::new();
        let (mut commit, mut transactions) = (0, 0u32);
        while let Some(t) = reader.next_transaction()? {
            commit = t.commit;
            transactions += 1;
            pages.extend(t.pages);
        }
        if transactions == 0 {
            return Ok(Synced::Nothing);
        }
        // Pages past the final size belong to a shrink: they are not part of the database.
        pages.retain(|pgno, _| *pgno <= commit);
        let txid = self.txid + 1;
        let ts = now();
        let header = ltx::Header::new(page_size, commit, txid, txid, ts);
        let bytes = encode(header, pages.iter().map(|(p, d)| (*p, d.as_slice())))?;
        if let Some(hook) = &self.on_encoded {
            hook(&bytes, txid, listed);
        }
        if self.defer {
            let p = self.pending.get_or_insert_with(|| Pending {
                page_size,
                pages: std::collections::BTreeMap::new(),
                min_txid: txid,
                max_txid: txid,
                commit,
                listed,
                made: ts,
                since: std::time::Instant::now(),
            });
            // Pages past this commit's size were cut by a shrink: a later growth rewrites them.
            p.pages.retain(|pgno, _| *pgno <= commit);
            p.pages.extend(pages);
            (p.max_txid, p.commit, p.made) = (txid, commit, ts);
            self.txid = txid;
            self.last_ts = listed;
            self.last_made = ts;
            self.resume = Resume::Wal(reader.position());
            return Ok(Synced::Deferred { txid });
        }
        let written = match self.replica.put_encoded(0, &header, &bytes, Some(listed)) {
            Ok(w) => w,
            Err(e) => {
                if self.on_encoded.is_some() {
                    // A journal may hold this TXID already: the next try, which may read more of
                    // the WAL, must not give it another content. A snapshot past it follows.
                    self.txid = txid;
                    self.resume = Resume::Snapshot;
                }
                return Err(e);
            }
        };
        self.txid = txid;
        self.last_ts = listed;
        self.last_made = ts;
        self.resume = Resume::Wal(reader.position());
        Ok(Synced::Transactions {
            txid,
            transactions,
            pages: pages.len() as u32,
            bytes: written.size,
        })
    }

    fn ship_snapshot(&mut self, listed: i64, now: &dyn Fn() -> i64) -> Result<Synced> {
        // The snapshot's read transaction holds its state until it is dropped, after the last
        // page was read: no checkpoint copies a frame past it into the file meanwhile.
        let snapshot = Snapshot::open(&self.db, now)?;
        let page_size = snapshot.page_size;
        let mut first = vec![0u8; page_size as usize];
        snapshot.read_pages(1, &mut first)?;
        check_header(&first, page_size, &self.db)?;
        let resume = match snapshot.continues {
            Continues::Wal(position) => Resume::Wal(position),
            Continues::NextGeneration(salt1) => Resume::FreshWal(salt1),
            // No WAL, and nothing to tell which salts its first frame will get: the file alone
            // is the state. Its identity is taken while the snapshot's read transaction still
            // keeps checkpoints out; a WAL that appears while the file stays as it is continues
            // it. (Not in WAL mode was refused above.)
            Continues::Unknown => {
                let (len, modified) = file_identity(&self.db)?;
                Resume::NoWal(len, modified)
            }
        };
        let commit = snapshot.page_count;
        let txid = self.txid + 1;
        // After the state was fixed: no commit in it is later than this.
        let ts = now();
        let header = ltx::Header::new(page_size, commit, 1, txid, ts);
        let level = if txid == 1 { 0 } else { SNAPSHOT_LEVEL };
        let written = self
            .replica
            .put_streamed(level, 1, txid, Some(listed), &mut |w| {
                encode_snapshot(&snapshot, header, w)
            })?;
        drop(snapshot);
        self.txid = txid;
        self.last_ts = listed;
        self.last_made = ts;
        self.resume = resume;
        Ok(Synced::Snapshot {
            txid,
            pages: commit,
            bytes: written.size,
        })
    }
}

/// Encodes every page of `snapshot` but the lock page into `w`, reading a few MiB at a time.
fn encode_snapshot(
    snapshot: &Snapshot,
    header: ltx::Header,
    w: &mut dyn std::io::Write,
) -> Result<()> {
    let ltx_err = |source| Error::Ltx {
        name: ltx::file_name(header.min_txid, header.max_txid),
        source,
    };
    let page_size = snapshot.page_size as usize;
    let per_read = u32::try_from(SNAPSHOT_READ_BYTES / page_size)
        .unwrap_or(u32::MAX)
        .max(1);
    let lock = ltx::lock_pgno(snapshot.page_size);
    let mut enc = ltx::Encoder::new(w, header).map_err(ltx_err)?;
    let mut buf = vec![0u8; per_read as usize * page_size];
    let mut first = 1;
    while first <= header.commit {
        let count = per_read.min(header.commit - first + 1);
        let chunk = &mut buf[..count as usize * page_size];
        snapshot.read_pages(first, chunk)?;
        for (pgno, page) in (first..).zip(chunk.chunks_exact(page_size)) {
            if pgno != lock {
                enc.encode_page(pgno, page).map_err(ltx_err)?;
            }
        }
        first += count;
    }
    enc.finish(0).map_err(ltx_err)?;
    Ok(())
}

fn file_identity(path: &Path) -> Result<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("read database metadata", path, e))?;
    let modified = meta
        .modified()
        .map_err(|e| Error::io("read database mtime", path, e))?;
    Ok((meta.len(), modified))
}

/// Refuses, before anything starts, a database that cannot be replicated as it is: a file that
/// is not a SQLite database, or one not in WAL mode (retrying would never help). An empty file
/// or a missing one (a database its program has not created or written yet) passes.
pub fn check_replicable(path: &Path) -> Result<()> {
    // Through a held descriptor: closing one of our own would drop SQLite's locks on the file.
    let file = match crate::held::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open database", path, e)),
    };
    let mut header = [0u8; 20];
    let mut read = 0;
    while read < header.len() {
        use std::os::unix::fs::FileExt;
        match file.read_at(&mut header[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(Error::io("read database header", path, e)),
        }
    }
    if read == 0 {
        return Ok(());
    }
    if read < header.len() || &header[..16] != b"SQLite format 3\0" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: "not a SQLite database (bad header)".into(),
        });
    }
    if header[18] != 2 || header[19] != 2 {
        return Err(not_wal(path));
    }
    Ok(())
}

/// A database in rollback-journal mode, and how to switch it (the mode is stored in the file, so
/// once is enough; SQLite does it only while no other connection has the database open).
fn not_wal(path: &Path) -> Error {
    Error::invalid(
        "not_wal",
        None,
        format!(
            "{} is not in WAL mode (it uses a rollback journal, which rewrites the file in place and \
             cannot be replicated): switch it once, while no program has it open, with \
             `sqlite3 {} 'PRAGMA journal_mode=WAL'` (the mode stays in the file; \
             the program writing it must not set journal_mode back), then start again",
            path.display(),
            path.display()
        ),
    )
}

/// Checks the first page of a snapshot: a SQLite database in WAL mode.
fn check_header(page: &[u8], page_size: u32, path: &Path) -> Result<()> {
    if page.len() < 100 || &page[..16] != b"SQLite format 3\0" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: "not a SQLite database (bad header)".into(),
        });
    }
    // Bytes 18 and 19 are 2 in WAL mode; a rollback-journal database changes its file in place and
    // cannot be replicated from its WAL.
    if page[18] != 2 || page[19] != 2 {
        return Err(not_wal(path));
    }
    if !ltx::is_valid_page_size(page_size) {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("page size {page_size} in its header is invalid"),
        });
    }
    Ok(())
}

fn encode<'a>(
    header: ltx::Header,
    pages: impl Iterator<Item = (u32, &'a [u8])>,
) -> Result<Vec<u8>> {
    let name = ltx::file_name(header.min_txid, header.max_txid);
    let ltx_err = |source| Error::Ltx {
        name: name.clone(),
        source,
    };
    let mut enc = ltx::Encoder::new(Vec::new(), header).map_err(ltx_err)?;
    for (pgno, data) in pages {
        enc.encode_page(pgno, data).map_err(ltx_err)?;
    }
    Ok(enc.finish(0).map_err(ltx_err)?.0)
}
