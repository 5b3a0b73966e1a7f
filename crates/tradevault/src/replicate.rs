//! [`Replicator`]: ships a SQLite database's committed transactions to a replica as LTX files,
//! for a database that another program writes (the sidecar of `tradevault replicate`).
//!
//! Each [`Replicator::sync`] reads the WAL from the last position and writes one level-0 file
//! holding every transaction committed since (the newest version of each page), numbered with the
//! next TXID. With no position (first run, or the WAL was reset behind our back), it writes a
//! snapshot instead: the database file with every committed WAL transaction laid over it, taken
//! without locks and retried if the WAL's salts changed while it was read. The first snapshot is
//! TXID 1 at level 0; later ones are level-9 files `1-<txid>`, which is where Litestream's restore
//! looks for snapshots, so a history never has a gap.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::replica::{FileReplica, SNAPSHOT_LEVEL};
use crate::store::wal_path;
use crate::wal::{Position, WalReader};

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
    /// committed in between: the next WAL generation continues the history. SQLite gives each
    /// restarted WAL the previous first salt plus one (shared by every connection, unlike the
    /// checkpoint counter), so this is the first salt that generation must have.
    FreshWal(u32),
    /// There was no WAL at the last snapshot. In WAL mode the database file only changes through
    /// checkpoints, so while its size and mtime stay the same, a WAL that appears continues it.
    NoWal(u64, std::time::SystemTime),
}

/// Replicates one database to one file replica.
pub struct Replicator {
    db: PathBuf,
    replica: FileReplica,
    txid: u64,
    resume: Resume,
    /// When a sync last left the replica with everything committed (ms since the epoch).
    synced_at_ms: Option<i64>,
}

impl Replicator {
    /// A replicator of `db` into `replica`, continuing after the newest TXID already there.
    pub fn new(db: &Path, replica: FileReplica) -> Result<Replicator> {
        let mut txid = 0;
        for level in 0..=SNAPSHOT_LEVEL {
            txid = replica
                .list(level)?
                .iter()
                .map(|f| f.max_txid)
                .fold(txid, u64::max);
        }
        Ok(Replicator {
            db: db.to_owned(),
            replica,
            txid,
            resume: Resume::Snapshot,
            synced_at_ms: None,
        })
    }

    /// The newest TXID on the replica.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// When a sync last left the replica with everything committed, if one did.
    pub fn synced_at_ms(&self) -> Option<i64> {
        self.synced_at_ms
    }

    /// Tells the replicator that its last sync shipped the whole WAL and that the WAL, whose header
    /// had first salt `salt1`, was then checkpointed and truncated with nothing committed in between:
    /// the next WAL generation (first salt `salt1 + 1`) continues this history.
    pub fn wal_truncated(&mut self, salt1: u32) {
        self.resume = Resume::FreshWal(salt1.wrapping_add(1));
    }

    /// Ships whatever was committed since the last sync, stamping the file with `now_ms`.
    pub fn sync(&mut self, now_ms: i64) -> Result<Synced> {
        self.sync_with(&|| now_ms)
    }

    /// [`Replicator::sync`], asking `now` for the file's time only after its content was read, so
    /// a file never claims a time before a transaction it holds.
    pub fn sync_with(&mut self, now: &dyn Fn() -> i64) -> Result<Synced> {
        let wal = wal_path(&self.db);
        match self.resume {
            Resume::Wal(position) => match WalReader::resume(&wal, position)? {
                Some(reader) => return self.ship_transactions(reader, now),
                None => {
                    tracing::warn!(db = %self.db.display(), "the wal was reset by another program; writing a new snapshot")
                }
            },
            Resume::NoWal(len, modified) if file_identity(&self.db)? == (len, modified) => {
                return match WalReader::open(&wal)? {
                    Some(reader) => self.ship_transactions(reader, now),
                    None => Ok(Synced::Nothing),
                };
            }
            Resume::FreshWal(salt1) => match WalReader::open(&wal)? {
                None => return Ok(Synced::Nothing),
                Some(reader) if reader.header().salt1 == salt1 => {
                    return self.ship_transactions(reader, now);
                }
                Some(_) => {
                    tracing::warn!(db = %self.db.display(), "the wal was reset twice; writing a new snapshot")
                }
            },
            Resume::NoWal(..) | Resume::Snapshot => {}
        }
        self.ship_snapshot(now)
    }

    fn ship_transactions(
        &mut self,
        mut reader: WalReader,
        now: &dyn Fn() -> i64,
    ) -> Result<Synced> {
        let page_size = reader.header().page_size;
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
        let bytes = encode(
            ltx::Header::new(page_size, commit, txid, txid, now()),
            pages.iter().map(|(p, d)| (*p, d.as_slice())),
        )?;
        let written = self.replica.put(0, &bytes)?;
        self.txid = txid;
        self.resume = Resume::Wal(reader.position());
        Ok(Synced::Transactions {
            txid,
            transactions,
            pages: pages.len() as u32,
            bytes: written.size,
        })
    }

    fn ship_snapshot(&mut self, now: &dyn Fn() -> i64) -> Result<Synced> {
        let (image, page_size, resume) = self.consistent_image()?;
        let commit =
            u32::try_from(image.len() / page_size as usize).map_err(|_| Error::Internal {
                message: "database too large".into(),
            })?;
        let txid = self.txid + 1;
        let lock = ltx::lock_pgno(page_size);
        let pages = (1..=commit).filter(|p| *p != lock).map(|p| {
            let at = (p as usize - 1) * page_size as usize;
            (p, &image[at..at + page_size as usize])
        });
        let bytes = encode(ltx::Header::new(page_size, commit, 1, txid, now()), pages)?;
        let level = if txid == 1 { 0 } else { SNAPSHOT_LEVEL };
        let written = self.replica.put(level, &bytes)?;
        self.txid = txid;
        self.resume = resume;
        Ok(Synced::Snapshot {
            txid,
            pages: commit,
            bytes: written.size,
        })
    }

    /// The database as of the end of its WAL: the file with every committed WAL transaction laid
    /// over it. A checkpoint copying frames meanwhile is harmless (the WAL's newer or equal version
    /// of each page wins); a WAL reset meanwhile changes the salts, and the read is retried.
    fn consistent_image(&self) -> Result<(Vec<u8>, u32, Resume)> {
        let wal = wal_path(&self.db);
        for _ in 0..16 {
            let before = WalReader::open(&wal)?.map(|r| *r.header());
            let identity = file_identity(&self.db)?;
            let mut image =
                std::fs::read(&self.db).map_err(|e| Error::io("read database", &self.db, e))?;
            let page_size = database_page_size(&image, &self.db)?;
            let mut resume = Resume::NoWal(identity.0, identity.1);
            if let Some(mut reader) = WalReader::open(&wal)? {
                if Some(*reader.header()) != before {
                    continue;
                }
                if reader.header().page_size != page_size {
                    return Err(Error::Corrupt {
                        path: self.db.clone(),
                        detail: format!(
                            "its WAL has {}-byte pages, the database {page_size}",
                            reader.header().page_size
                        ),
                    });
                }
                while let Some(t) = reader.next_transaction()? {
                    image.resize(t.commit as usize * page_size as usize, 0);
                    for (pgno, data) in &t.pages {
                        if *pgno <= t.commit {
                            let at = (*pgno as usize - 1) * page_size as usize;
                            image[at..at + page_size as usize].copy_from_slice(data);
                        }
                    }
                }
                resume = Resume::Wal(reader.position());
            }
            let after = WalReader::open(&wal)?.map(|r| *r.header());
            let unchanged = match resume {
                Resume::NoWal(..) => after.is_none() && file_identity(&self.db)? == identity,
                _ => after == before,
            };
            if unchanged {
                image.truncate(image.len() / page_size as usize * page_size as usize);
                return Ok((image, page_size, resume));
            }
        }
        Err(Error::Internal {
            message: format!(
                "the wal of {} kept being reset while it was read",
                self.db.display()
            ),
        })
    }
}

fn file_identity(path: &Path) -> Result<(u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("read database metadata", path, e))?;
    let modified = meta
        .modified()
        .map_err(|e| Error::io("read database mtime", path, e))?;
    Ok((meta.len(), modified))
}

fn database_page_size(image: &[u8], path: &Path) -> Result<u32> {
    if image.len() < 100 || &image[..16] != b"SQLite format 3\0" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: "not a SQLite database (bad header)".into(),
        });
    }
    // Bytes 18 and 19 are 2 in WAL mode; a rollback-journal database changes its file in place and
    // cannot be replicated from its WAL.
    if image[18] != 2 || image[19] != 2 {
        return Err(Error::invalid(
            "not_wal",
            None,
            format!(
                "{} is not in WAL mode; run PRAGMA journal_mode=WAL on it first",
                path.display()
            ),
        ));
    }
    let raw = u32::from(u16::from_be_bytes([image[16], image[17]]));
    let size = if raw == 1 { 65_536 } else { raw };
    if !ltx::is_valid_page_size(size) {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("page size {size} in its header is invalid"),
        });
    }
    Ok(size)
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

/// Replicates the store continuously: a thread that ships its WAL to every replica each interval,
/// and that owns the store's checkpoints (open the store with `CheckpointOwner::External`). When
/// the WAL passes its threshold, it copies the bulk with a PASSIVE checkpoint on its own
/// connection, then asks the writer for an exclusive moment in which it ships the tail and
/// truncates the WAL, so no commit can fall between the last shipment and the truncation.
pub struct Engine {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Settings of the [`Engine`].
pub struct EngineOptions {
    /// How often to ship.
    pub interval: std::time::Duration,
    /// Checkpoint and truncate the WAL once it holds this many bytes.
    pub checkpoint_wal_bytes: u64,
    /// The store's busy timeout, restored after the truncating checkpoint (which never waits).
    pub busy_timeout_ms: u64,
}

type Shared = std::sync::Arc<std::sync::Mutex<Vec<(String, Replicator)>>>;

impl Engine {
    /// Starts replicating `store` to `replicas` (name, replica).
    pub fn start(
        store: std::sync::Arc<crate::store::Store>,
        replicas: Vec<(String, FileReplica)>,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        options: EngineOptions,
    ) -> Result<Engine> {
        let db = store.path().to_owned();
        let mut replicators = Vec::new();
        for (name, replica) in replicas {
            replicators.push((name, Replicator::new(&db, replica)?));
        }
        let shared: Shared = std::sync::Arc::new(std::sync::Mutex::new(replicators));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tradevault-replicate".into())
            .spawn(move || run_engine(&store, &shared, &clock, &options, &thread_stop))
            .map_err(|e| Error::io("start replication thread", "tradevault-replicate", e))?;
        Ok(Engine {
            stop,
            thread: Some(thread),
        })
    }

    /// Ships what is left and stops. Call before closing the store.
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_engine(
    store: &crate::store::Store,
    shared: &Shared,
    clock: &std::sync::Arc<dyn crate::clock::Clock>,
    options: &EngineOptions,
    stop: &std::sync::atomic::AtomicBool,
) {
    let wal = wal_path(store.path());
    // Start with a snapshot taken in an exclusive moment and a truncated WAL. After a crash the
    // WAL index may say the WAL was fully checkpointed, and SQLite would then restart it at the
    // first commit, leaving a position taken outside such a moment stale (a second snapshot).
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    truncate_wal(store, shared, clock, options, wal_bytes);
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
        sync_all(shared, &**clock);
        if stopping {
            break;
        }
        let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if wal_bytes >= options.checkpoint_wal_bytes {
            truncate_wal(store, shared, clock, options, wal_bytes);
        }
        // Sleep in short steps so that a stop is seen promptly.
        let mut slept = std::time::Duration::ZERO;
        while slept < options.interval && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let step = std::time::Duration::from_millis(10).min(options.interval - slept);
            std::thread::sleep(step);
            slept += step;
        }
    }
}

/// Syncs every replica; one failing replica is logged and does not stop the others.
/// Returns, for each replica, whether it is now at the end of the WAL.
fn sync_all(shared: &Shared, clock: &dyn crate::clock::Clock) -> Vec<bool> {
    let mut replicators = shared.lock().unwrap_or_else(|p| p.into_inner());
    let mut shipped = Vec::with_capacity(replicators.len());
    for (name, r) in replicators.iter_mut() {
        let started = clock.now().as_millisecond();
        match r.sync_with(&|| clock.now().as_millisecond()) {
            Ok(synced) => {
                match synced {
                    Synced::Nothing => {}
                    Synced::Snapshot { txid, bytes, .. } => {
                        crate::metrics::replicated(name, true, bytes, txid)
                    }
                    Synced::Transactions { txid, bytes, .. } => {
                        crate::metrics::replicated(name, false, bytes, txid)
                    }
                }
                if synced != Synced::Nothing {
                    tracing::debug!(replica = %name, ?synced, "ltx file shipped");
                }
                // Everything committed before this sync started is on the replica now.
                r.synced_at_ms = Some(started);
                shipped.push(true);
            }
            Err(e) => {
                crate::metrics::replication_failed(name);
                tracing::warn!(replica = %name, error = %e, "replication failed; retrying next interval");
                shipped.push(false);
            }
        }
        let now = clock.now().as_millisecond();
        let lag_ms = r.synced_at_ms.map_or(0, |t| now - t).max(0);
        crate::metrics::replication_lag(name, lag_ms as f64 / 1000.0);
    }
    shipped
}

fn truncate_wal(
    store: &crate::store::Store,
    shared: &Shared,
    clock: &std::sync::Arc<dyn crate::clock::Clock>,
    options: &EngineOptions,
    wal_bytes: u64,
) {
    // A store that refuses writes after a failed write or fsync may be damaged: never fold its
    // WAL into the database.
    if let Some(cause) = store.unavailable() {
        tracing::warn!(cause = %cause, "store unavailable; no checkpoint");
        return;
    }
    // The bulk of the copy happens beside the writer, on the engine's own connections. A read
    // transaction pins the WAL first: SQLite restarts a fully copied WAL at the next commit, and
    // it must not do that before the tail is shipped; it cannot while a reader holds a mark.
    let path = store.path().to_owned();
    let open = || {
        let c = rusqlite::Connection::open(&path)?;
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        Ok::<_, rusqlite::Error>(c)
    };
    let pin = open().and_then(|c| {
        c.execute_batch("BEGIN")?;
        c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(c)
    });
    let pin = match pin {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "could not pin the wal for a checkpoint");
            return;
        }
    };
    if let Err(e) =
        open().and_then(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())))
    {
        tracing::warn!(error = %e, "passive checkpoint failed");
    }
    let shared = shared.clone();
    let clock = clock.clone();
    let wal = wal_path(&path);
    let busy_timeout_ms = options.busy_timeout_ms;
    let hard_bound = wal_bytes >= 4 * options.checkpoint_wal_bytes;
    let result = store.exclusive_blocking(move |conn| {
        // Nothing commits while this runs: ship the tail, then truncate.
        let shipped = sync_all(&shared, &*clock);
        // Nothing can commit now, so the WAL may be released for the truncation.
        drop(pin);
        if shipped.contains(&false) && !hard_bound {
            // A replica that is down keeps the WAL until the hard bound; it then catches up
            // with a snapshot.
            return Ok(false);
        }
        let seq = WalReader::open(&wal)?.map(|r| r.header().salt1);
        let sql = |e| Error::sqlite("truncate wal", e);
        // Never wait for readers here: the writer is paused.
        conn.pragma_update(None, "busy_timeout", 0).map_err(sql)?;
        let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        conn.pragma_update(
            None,
            "busy_timeout",
            i64::try_from(busy_timeout_ms).unwrap_or(i64::MAX),
        )
        .map_err(sql)?;
        let complete = done.map_err(sql)? == 0;
        if complete && let Some(seq) = seq {
            let mut replicators = shared.lock().unwrap_or_else(|p| p.into_inner());
            // Only a replica that shipped the whole WAL continues into the next generation; one
            // that failed will find the WAL reset and write a snapshot.
            for ((_, r), ok) in replicators.iter_mut().zip(&shipped) {
                if *ok {
                    r.wal_truncated(seq);
                }
            }
        }
        Ok(complete)
    });
    match result {
        Ok(true) => tracing::debug!(wal_bytes, "wal shipped, checkpointed and truncated"),
        Ok(false) => tracing::debug!(
            wal_bytes,
            "wal not truncated (a reader or a replica is behind)"
        ),
        Err(e) => tracing::warn!(error = %e, "wal truncation failed"),
    }
}
