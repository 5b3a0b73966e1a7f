//! [`Engine`]: continuous replication of the store and of other programs' SQLite databases.
//!
//! Per database, one shipper thread reads committed transactions from the WAL into a local log
//! (`.<db>-tradevault/`, a directory of LTX files beside the database), and owns the WAL's
//! checkpoints: the WAL is only truncated once the local log holds all of it. Per replica, one
//! uploader thread (see `upload.rs`) copies the local log's new files to its replica at its own
//! pace, retrying with backoff, so a slow or dead replica never holds up the writer, the WAL or the
//! other replicas; when it returns it continues from its own newest TXID with no gap.
//!
//! The store's writer tells the shipper about each commit (a [`StoreLink`]), so a commit reaches
//! the local log within milliseconds; another program's database is polled with a `stat` of its WAL.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::status::{self, DatabaseStatus, ReplicaStatus};
use super::{Replicator, Synced, upload};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::replica::recycle::Recycler;
use crate::replica::{FileReplica, Replica, ReplicaFile, SNAPSHOT_LEVEL};
use crate::store::writer::{Commit, CommitGate, CommitListener, Release};
use crate::store::{Store, wal_path};
use crate::wal::WalReader;

/// The least time between two shipments to the local log in async mode: commits arriving
/// meanwhile go into one file. Bounds the files per second; adds at most this to the loss window.
const MIN_GAP: Duration = Duration::from_millis(8);
/// With a fine log, the longest a shipment waits for the local log (and so for the replicas'
/// layouts): their journals hold it meanwhile (see [`Db::fine_log`]).
const FINE_GAP: Duration = Duration::from_secs(1);
/// How often status, metrics and the local log's pruning are brought up to date.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// The local log's size beyond which its oldest files go even if a replica still needs them (that
/// replica then catches up from a new snapshot).
const LOCAL_LOG_BYTES_MAX: u64 = 1 << 30;
/// How long an external database's checkpoint tries for the program's write lock, and how often.
/// A program writing flat out lets go of it only between two transactions, for some
/// microseconds, which SQLite's own busy handler (sleeping 1, 2, 5, 10 ms...) nearly never hits:
/// the WAL then grew to 250 MiB under a Python writer going flat out.
const WRITE_LOCK_WAIT: Duration = Duration::from_millis(10);
const WRITE_LOCK_POLL: Duration = Duration::from_micros(20);
/// How long after a checkpoint that could not complete the next one is tried: soon when a writer
/// had the lock (at 80 MB/s of WAL, 500 ms is 40 MiB), later when a reader held the WAL (a backup
/// reads for seconds).
const CHECKPOINT_RETRY_BUSY: Duration = Duration::from_millis(50);
const CHECKPOINT_RETRY: Duration = Duration::from_millis(500);
/// How often the external checkpoint, holding the write lock, tries again to copy frames that a
/// reader held back (a program's reader usually ends within microseconds).
const HELD_BACK_TRIES: u32 = 20;
/// How long the external checkpoint, holding the write lock, waits for a checkpoint the program
/// runs after its commits (SQLite's automatic one, copying up to some MiB and syncing): that is
/// when its write lock is free, so it is most often running then.
const CHECKPOINTER_WAIT: Duration = Duration::from_millis(20);
/// Most level-0 files the shipper remembers having written, so uploaders need no listing.
const RECENT_MAX: usize = 4_096;
/// Most bytes of pages a deferred local log holds in memory before writing them.
const PENDING_BYTES_MAX: usize = 4 << 20;

/// Replicates databases until stopped.
pub struct Engine {
    dbs: Vec<Arc<Db>>,
    links: Vec<Arc<StoreLink>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// One database to replicate.
pub struct DatabaseSpec {
    /// Its name in status and metrics.
    pub name: String,
    /// What it is.
    pub source: Source,
    /// Its replicas.
    pub replicas: Vec<ReplicaSpec>,
    /// How often an external database's WAL is looked at.
    pub poll_interval: Duration,
    /// Checkpoint and truncate the WAL once it holds this many bytes.
    pub checkpoint_wal_bytes: u64,
}

/// Where a database's commits come from.
pub enum Source {
    /// The store of this process: its writer tells `link` about each commit and pauses for the
    /// engine's checkpoints. Open the store with `CheckpointOwner::External` and `link` as a listener.
    Store {
        /// The store.
        store: Arc<Store>,
        /// Its commit listener (and gate, in sync mode).
        link: Arc<StoreLink>,
        /// The store's busy timeout, restored after each truncating checkpoint.
        busy_timeout_ms: u64,
    },
    /// A database in WAL mode that another program writes.
    External(PathBuf),
}

/// One replica of a database.
#[derive(Clone)]
pub struct ReplicaSpec {
    /// Its name in status and metrics.
    pub name: String,
    /// Where it is.
    pub replica: Replica,
    /// Least time between two uploads (0: as soon as the local log has something new).
    pub sync_interval: Duration,
    /// What it keeps.
    pub retention: Retention,
}

/// What a replica keeps: every point for `fine_ms`, one per second after that, nothing older than
/// `window_ms` (except the snapshot the window starts from), a new snapshot every `snapshot_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The point-in-time window, in ms.
    pub window_ms: i64,
    /// How long every shipped point is kept, in ms.
    pub fine_ms: i64,
    /// How often a snapshot is written, in ms.
    pub snapshot_ms: i64,
}

impl ReplicaSpec {
    /// A replica as configured; its sync interval defaults to 0 for local directories and one
    /// second for object stores (about one upload per second).
    pub fn from_config(c: &crate::config::ReplicaConfig) -> Result<ReplicaSpec> {
        let replica = Replica::parse_with(&c.url, &c.s3())?;
        let default_interval = if replica.local_root().is_some() {
            0
        } else {
            1_000
        };
        let hours = |h: u64| i64::try_from(h.saturating_mul(3_600_000)).unwrap_or(i64::MAX);
        Ok(ReplicaSpec {
            name: c.display_name(),
            replica,
            sync_interval: Duration::from_millis(c.sync_interval_ms.unwrap_or(default_interval)),
            retention: Retention {
                window_ms: hours(c.retention_hours),
                fine_ms: i64::try_from(c.fine_minutes.saturating_mul(60_000)).unwrap_or(i64::MAX),
                snapshot_ms: hours(c.snapshot_hours),
            },
        })
    }
}

impl DatabaseSpec {
    /// An external database as configured in `[[database]]`.
    pub fn from_config(c: &crate::config::DatabaseConfig) -> Result<DatabaseSpec> {
        Ok(DatabaseSpec {
            name: c.name.clone(),
            source: Source::External(c.path.clone()),
            replicas: c
                .replica
                .iter()
                .map(ReplicaSpec::from_config)
                .collect::<Result<_>>()?,
            poll_interval: Duration::from_millis(c.poll_interval_ms),
            checkpoint_wal_bytes: c.checkpoint_wal_bytes,
        })
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            window_ms: 24 * 3_600_000,
            fine_ms: 3_600_000,
            snapshot_ms: 24 * 3_600_000,
        }
    }
}

/// A database being replicated: shared by its shipper, its uploaders and the gate.
pub(crate) struct Db {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) local: Replica,
    local_dir: PathBuf,
    pub(crate) state: Mutex<State>,
    /// Signalled when the local log gains a file, a replica moves, a snapshot is wanted, or on stop.
    pub(crate) changed: Condvar,
    /// Signalled for the gate thread alone: the first answer held (its deadline), or stop. Not
    /// `changed`, so that holding an answer wakes no uploader for nothing.
    gate_wake: Condvar,
    /// Signalled only for what a thread sleeping out a delay (a backoff, an uploader's interval)
    /// must not sleep through: stop, and a journal asking for the layout. Not `changed`, which
    /// every shipment signals: in sync mode an uploader waiting out its interval woke at every
    /// commit to sleep again.
    pub(crate) quiet: Condvar,
    stop: AtomicBool,
    /// Set once the shipper made its last shipment after a stop: uploaders drain up to it.
    shipper_done: AtomicBool,
    /// The last store commit the shipment being encoded holds (or an earlier one does): set
    /// before each read of the WAL, handed with the shipment to the journals, which credit it
    /// as soon as it is durable there, without waiting for the local log's file.
    shipping_seq: Arc<AtomicU64>,
    /// The shipper writes the local log merged, at most one file per [`Db::local_gap`] (see
    /// [`Replicator::defer_local`]): uploaders then link its files rather than merge them.
    deferred_local: AtomicBool,
    /// Every replica is a file replica and answers do not wait for them (async mode): each
    /// replica's journal gets every shipment and keeps its segments for the fine window, and the
    /// local log, so the layouts, gets a file per second (see [`Db::fine_log`]).
    fine_log: AtomicBool,
    /// A journal waits for the layout (a new lap with an older segment the layout lacks): the
    /// local log's next write goes after [`MIN_GAP`], not the fine log's second.
    hurry_local: AtomicBool,
    /// Journals whose last attempt failed: while any does, the layouts alone hold what it would
    /// have, so the local log goes out every [`MIN_GAP`], as it would without a fine log.
    failing_journals: AtomicUsize,
    pub(crate) clock: Arc<dyn Clock>,
}

pub(crate) struct State {
    pub(crate) status: DatabaseStatus,
    /// The TXID of this process's first file: a replica already past it holds another history.
    pub(crate) history_start: u64,
    /// The shipper has looked at the database once since the start (and shipped what it found).
    pub(crate) synced_once: bool,
    /// An uploader needs a snapshot newer than what the local log has.
    pub(crate) snapshot_wanted: bool,
    /// A replica holds files up to this TXID from a history we do not know: number past it.
    pub(crate) raise_txid: u64,
    /// (TXID, last store commit in it or in an earlier file), for the sync gate: sorted by both.
    shipped: VecDeque<(u64, u64)>,
    /// Answers held until enough replicas have their commit: (commit, deadline, release).
    held: VecDeque<(u64, Instant, Release)>,
    /// In sync mode, how many replicas must hold a commit before its answers go (0 otherwise).
    sync_replicas: usize,
    /// The level-0 files this process wrote into the local log and has not pruned, in TXID
    /// order: an uploader that keeps up takes its next file from here instead of a listing.
    pub(crate) recent: VecDeque<ReplicaFile>,
    /// Per replica, the level-0 files its uploader put since its maintenance thread last took
    /// them, once that thread asked for them (None: not asked, or too many: it lists instead).
    pub(crate) put_points: Vec<Option<Vec<ReplicaFile>>>,
}

/// An answer to send, once the lock is released.
type Released = (Release, std::result::Result<(), String>);

impl State {
    /// Takes the held answers whose commit `sync_replicas` replicas hold, or whose deadline has
    /// passed (those answer `not_replicated`), in commit order.
    pub(crate) fn take_released(&mut self, now: Instant) -> Vec<Released> {
        let mut released = Vec::new();
        if self.sync_replicas == 0 {
            return released;
        }
        while let Some((seq, deadline, _)) = self.held.front() {
            let confirmed = self
                .status
                .replicas
                .iter()
                .filter(|r| r.commit_seq >= *seq)
                .count();
            let result = if confirmed >= self.sync_replicas {
                Ok(())
            } else if *deadline <= now {
                Err(format!(
                    "{confirmed} of the {} replicas required confirmed it in time",
                    self.sync_replicas
                ))
            } else {
                break;
            };
            if let Some((_, _, release)) = self.held.pop_front() {
                released.push((release, result));
            }
        }
        released
    }

    /// Records that the files up to `txid` (in the local log, or in a sync journal before the
    /// shipper has written it there) hold every store commit up to `seq`, and credits the
    /// replicas that already hold `txid` with them. Returns the answers that releases
    /// (no other thread is woken to do it).
    ///
    /// `seq` is read before the WAL is, and a commit is in the WAL before its listener call, so a
    /// sync can ship a commit that only a later `seq` names; that later sync then finds nothing
    /// new, and without this record the commit's answers would wait for the next commit.
    pub(crate) fn record_shipped(&mut self, txid: u64, seq: u64) -> Vec<Released> {
        if seq == 0 {
            return self.take_released(Instant::now());
        }
        // Each entry holds the last commit of its file or any before it, so the entries are
        // sorted by both fields and a lookup is a binary search.
        match self.shipped.back_mut() {
            Some((t, s)) if *t == txid => *s = (*s).max(seq),
            // A journal's record of a file the shipper has recorded since (it records each
            // file after writing it into the local log; a journal may get there first).
            Some((t, _)) if *t > txid => {}
            Some((_, s)) => {
                let seq = seq.max(*s);
                self.shipped.push_back((txid, seq));
            }
            None => self.shipped.push_back((txid, seq)),
        }
        if self.shipped.len() > 100_000 {
            self.shipped.pop_front();
        }
        for r in &mut self.status.replicas {
            if r.foreign_to == 0 && (r.txid.is_some_and(|t| t >= txid) || r.journal_txid >= txid) {
                r.commit_seq = r.commit_seq.max(seq);
            }
        }
        self.take_released(Instant::now())
    }
}

impl Db {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether answers wait for replicas (sync mode).
    pub(crate) fn sync_mode(&self) -> bool {
        self.lock().sync_replicas > 0
    }

    /// Stopping, and the shipper has made its last shipment.
    pub(crate) fn shipper_done(&self) -> bool {
        self.shipper_done.load(Ordering::Acquire)
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now().as_millisecond()
    }

    /// Sleeps for `d`, or until the engine stops. No shipment, upload or failure elsewhere ends
    /// it early, nor even wakes the thread (it waits on `quiet`): this is what a backoff waits with.
    pub(crate) fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            if self.stopping() || now >= deadline {
                return;
            }
            st = self
                .quiet
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether the local log is written merged (see [`Db::deferred_local`]).
    pub(crate) fn local_deferred(&self) -> bool {
        self.deferred_local.load(Ordering::Relaxed)
    }

    /// Whether the replicas keep a fine log: in async mode, when every replica is a file
    /// replica, each one's journal (`replica::journal`) gets every shipment with one `fdatasync`
    /// (the loss window), keeps its full laps as segments for the fine window (the 10 ms points),
    /// and the layout gets one merged file a second. A new file in the layout per shipment, made
    /// durable, cost more than P1's 10% of a core by itself (ARCHITECTURE.md, "Decisions").
    pub(crate) fn fine_log(&self) -> bool {
        self.fine_log.load(Ordering::Relaxed)
    }

    /// How long shipments wait for the local log at most, when it is written merged.
    pub(crate) fn local_gap(&self) -> Duration {
        if self.fine_log()
            && !self.hurry_local.load(Ordering::Relaxed)
            && self.failing_journals.load(Ordering::Relaxed) == 0
        {
            FINE_GAP
        } else {
            MIN_GAP
        }
    }

    /// A journal's attempt failed (`true`) or succeeded again (`false`) after failing: see
    /// [`Db::local_gap`].
    pub(crate) fn journal_failing(&self, failing: bool) {
        if failing {
            self.failing_journals.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failing_journals.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Asks for the local log's next write after [`MIN_GAP`], not the fine log's second (the
    /// next write clears it).
    pub(crate) fn hurry_local(&self) {
        self.hurry_local.store(true, Ordering::Relaxed);
    }

    /// Creates the local log's next file ahead (see [`FileReplica::prepare`]): call it when no
    /// answer waits for this thread, since creating a file is the slow part of a shipment.
    pub(crate) fn prepare_local(&self) {
        if let Replica::File(cache) = &self.local
            && let Err(e) = cache.prepare(0)
        {
            tracing::debug!(database = %self.name, error = %e, "could not create the next local log file ahead");
        }
    }

    /// The last store commit held by files up to `txid`.
    pub(crate) fn commit_seq_at(state: &State, txid: u64) -> u64 {
        let held = state.shipped.partition_point(|(t, _)| *t <= txid);
        held.checked_sub(1).map_or(0, |i| state.shipped[i].1)
    }
}

/// The newest TXID a file replica holds in its files or its sync journal (0 when it cannot be
/// read: its uploader then finds it).
fn file_replica_newest(r: &FileReplica) -> u64 {
    let files = r.newest_txid();
    let journal = crate::replica::journal::newest_txid(r.root()).unwrap_or(0);
    files.max(journal)
}

/// Connects the store's writer to the engine: hears each commit (so the shipper wakes at once)
/// and, in sync mode, holds each commit's answers until enough replicas hold it.
pub struct StoreLink {
    inner: Mutex<LinkState>,
    wake: Condvar,
    /// (replicas that must confirm, how long to wait) in sync mode.
    sync: Option<(usize, Duration)>,
    db: OnceLock<Arc<Db>>,
}

#[derive(Default)]
struct LinkState {
    /// The newest commit.
    seq: u64,
    /// The time of the oldest commit not yet shipped.
    first_unshipped_ms: Option<i64>,
}

impl StoreLink {
    /// A link; with `sync = Some((n, timeout))` writes are acknowledged only once `n` replicas
    /// hold them, or answered `not_replicated` after `timeout`.
    pub fn new(sync: Option<(usize, Duration)>) -> Arc<StoreLink> {
        Arc::new(StoreLink {
            inner: Mutex::new(LinkState::default()),
            wake: Condvar::new(),
            sync,
            db: OnceLock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number of the store's last commit (for [`Engine::wait_replicated`]).
    pub fn last_commit(&self) -> u64 {
        self.lock().seq
    }
}

impl CommitListener for StoreLink {
    fn committed(&self, commit: &Commit) {
        let mut s = self.lock();
        s.seq = commit.seq;
        s.first_unshipped_ms
            .get_or_insert(commit.at.as_millisecond());
        self.wake.notify_all();
    }
}

impl CommitGate for StoreLink {
    fn hold(&self, commit: &Commit, release: Release) {
        let Some((_, timeout)) = self.sync else {
            return release(Ok(()));
        };
        let Some(db) = self.db.get() else {
            return release(Err("replication is not running".into()));
        };
        if db.stopping() {
            return release(Err("replication is stopping".into()));
        }
        let now = Instant::now();
        let mut st = db.lock();
        let first = st.held.is_empty();
        st.held.push_back((commit.seq, now + timeout, release));
        // Replicas may already hold this commit: the shipper can ship it before the writer gets
        // here, and an uploader then finds nothing held to release.
        let released = st.take_released(now);
        drop(st);
        // The gate thread sleeps until the first held answer's deadline, later ones come after
        // it, and with none held it looks again every HOUSEKEEPING: it need not be woken (a
        // thread switch per commit) unless this deadline comes sooner than that.
        if first && timeout < HOUSEKEEPING {
            db.gate_wake.notify_one();
        }
        for (release, result) in released {
            release(result);
        }
    }
}

impl Engine {
    /// Starts replicating `databases`.
    pub fn start(databases: Vec<DatabaseSpec>, clock: Arc<dyn Clock>) -> Result<Engine> {
        let mut engine = Engine {
            dbs: Vec::new(),
            links: Vec::new(),
            threads: Vec::new(),
        };
        for spec in databases {
            if let Err(e) = engine.start_one(spec, clock.clone()) {
                engine.stop();
                return Err(e);
            }
        }
        Ok(engine)
    }

    fn start_one(&mut self, mut spec: DatabaseSpec, clock: Arc<dyn Clock>) -> Result<()> {
        let path = match &spec.source {
            Source::Store { store, .. } => store.path().to_owned(),
            Source::External(p) => p.clone(),
        };
        if let Source::External(p) = &spec.source {
            // A database not in WAL mode would only fail and be retried forever: refuse it now.
            super::check_replicable(p)?;
        }
        let local_dir = status::local_log_dir(&path);
        std::fs::create_dir_all(&local_dir)
            .map_err(|e| Error::io("create local log", &local_dir, e))?;
        // The local log is a cache: nothing in it is fsynced (the WAL keeps every commit until the
        // engine has shipped it; replicas get their own durable copy). After a machine crash a
        // file may have lost its name, or kept its name without its bytes: such files go here, and
        // the first shipment is a snapshot numbered past what remains and past what any replica
        // holds (an uploader that finds a replica ahead asks for one), so no history has a gap;
        // only a clean stop's saved position, checked below, lets a start continue instead.
        // Files the file replicas delete are reused for the local log's next ones (see
        // `Recycler`): a replica an hour old deletes as many files as the local log makes.
        let recycler = Recycler::open(local_dir.join("recycle"))
            .map(Arc::new)
            .map_err(|e| Error::io("create local log", &local_dir, e))?;
        let cache = FileReplica::cache(&local_dir).with_recycler(recycler.clone());
        for f in cache.remove_unverified(&[0, SNAPSHOT_LEVEL])? {
            tracing::warn!(database = %spec.name, level = f.level, min_txid = f.min_txid, max_txid = f.max_txid, "local log file did not verify (a machine crash?); removed");
        }
        for r in &mut spec.replicas {
            if let Replica::File(f) = &r.replica {
                r.replica = Replica::File(f.clone().with_recycler(recycler.clone()));
            }
        }
        let local = Replica::File(cache);
        let mut replicator = Replicator::new(&path, local.clone())?;
        // After a clean stop, the history goes on from where it was; else from a new snapshot.
        if replicator.load_saved(&local_dir) {
            tracing::info!(database = %spec.name, txid = replicator.txid(), "continuing the history from where the last clean stop left it");
        }
        // This history is numbered past every TXID a file replica holds (its files, and its sync
        // journal, which may be ahead of the local log by the shipment a kill interrupted), before
        // anything is shipped: a TXID reused with another content would let a later start
        // continue the replica's file with this history's next one. (An S3 replica's newest TXID
        // is found by its uploader, which raises the numbering then.)
        let held = spec
            .replicas
            .iter()
            .filter_map(|r| match &r.replica {
                Replica::File(f) => Some(file_replica_newest(f)),
                Replica::S3(_) => None,
            })
            .max()
            .unwrap_or(0);
        if held > replicator.txid() {
            tracing::info!(database = %spec.name, txid = held, "a file replica holds TXIDs past the local log; numbering past them from a new snapshot");
            replicator.raise_txid(held);
        }
        let replicas = spec
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                name: r.name.clone(),
                url: r.replica.describe(),
                caught_up_at_ms: Some(clock.now().as_millisecond()),
                ..ReplicaStatus::default()
            })
            .collect();
        let db = Arc::new(Db {
            name: spec.name.clone(),
            path: path.clone(),
            local,
            local_dir,
            state: Mutex::new(State {
                status: DatabaseStatus {
                    database: spec.name.clone(),
                    path: path.clone(),
                    pid: std::process::id(),
                    txid: replicator.txid(),
                    shipped_txid: replicator.txid(),
                    replicas,
                    ..DatabaseStatus::default()
                },
                history_start: replicator.txid() + 1,
                synced_once: false,
                snapshot_wanted: false,
                raise_txid: 0,
                shipped: VecDeque::new(),
                held: VecDeque::new(),
                sync_replicas: 0,
                recent: VecDeque::new(),
                put_points: vec![None; spec.replicas.len()],
            }),
            changed: Condvar::new(),
            gate_wake: Condvar::new(),
            quiet: Condvar::new(),
            stop: AtomicBool::new(false),
            shipper_done: AtomicBool::new(false),
            shipping_seq: Arc::default(),
            deferred_local: AtomicBool::new(false),
            fine_log: AtomicBool::new(false),
            hurry_local: AtomicBool::new(false),
            failing_journals: AtomicUsize::new(0),
            clock,
        });
        crate::metrics::replication_started(
            &spec.name,
            spec.replicas.iter().map(|r| r.name.as_str()),
        );
        self.dbs.push(db.clone());
        let shipper_db = db.clone();
        let options = ShipperOptions {
            poll_interval: spec.poll_interval,
            checkpoint_wal_bytes: spec.checkpoint_wal_bytes,
        };
        let gate = match &spec.source {
            Source::Store { link, .. } => {
                let _ = link.db.set(db.clone());
                self.links.push(link.clone());
                link.sync.map(|(n, _)| (link.clone(), n))
            }
            Source::External(_) => None,
        };
        if let Some((_, needed)) = gate {
            // Before anything asks whether shipments go through a journal.
            db.lock().sync_replicas = needed;
        }
        let all_files = spec
            .replicas
            .iter()
            .all(|r| matches!(r.replica, Replica::File(_)));
        if gate.is_none() && all_files && !spec.replicas.is_empty() {
            db.fine_log.store(true, Ordering::Relaxed);
        }
        // In sync mode and with a fine log, a file replica's journal thread gets each shipment
        // from the shipper.
        let handoffs: Vec<Option<Arc<super::journal::Handoff>>> = spec
            .replicas
            .iter()
            .map(|r| super::journal::journaled(&db, &r.replica).then(Arc::default))
            .collect();
        let fed: Vec<Arc<super::journal::Handoff>> = handoffs.iter().flatten().cloned().collect();
        for (r, h) in db.lock().status.replicas.iter_mut().zip(&handoffs) {
            r.journaled = h.is_some();
        }
        // When the journals alone can answer the writer, nothing waits for the local log: it is
        // written merged rather than a file per commit. (A sync mode counting an S3 replica
        // waits for its upload from the local log, and keeps the file per commit.) With a fine
        // log, the journals hold every shipment and the local log is written once a second.
        let journals_answer = gate
            .as_ref()
            .is_some_and(|(_, needed)| !fed.is_empty() && fed.len() >= *needed);
        if db.fine_log() || journals_answer {
            replicator.defer_local(true);
            db.deferred_local.store(true, Ordering::Relaxed);
        }
        if !fed.is_empty() {
            let seq = db.shipping_seq.clone();
            replicator.on_encoded(Box::new(move |bytes, txid, listed| {
                let seq = seq.load(Ordering::Acquire);
                // One copy for every journal, none for a shipment too large for them.
                let bytes = crate::replica::journal::may_hold(bytes.len() as u64)
                    .then(|| Arc::new(bytes.to_vec()));
                for h in &fed {
                    h.push(super::journal::Shipment {
                        bytes: bytes.clone(),
                        txid,
                        created_at_ms: listed,
                        seq,
                    });
                }
            }));
        }
        let source = spec.source;
        self.spawn(&format!("tv-ship-{}", spec.name), move || {
            run_shipper(&shipper_db, source, replicator, &options)
        })?;
        for ((index, r), handoff) in spec.replicas.into_iter().enumerate().zip(handoffs) {
            if let (Some(handoff), Replica::File(file)) = (handoff, &r.replica) {
                let (db, name, root) = (db.clone(), r.name.clone(), file.root().to_owned());
                self.spawn(&format!("tv-journal-{}", r.name), move || {
                    super::journal::run(&db, index, &name, &root, &handoff)
                })?;
            }
            let (db2, spec) = (db.clone(), r.clone());
            self.spawn(&format!("tv-maint-{}", r.name), move || {
                super::maintain::run(&db2, index, spec)
            })?;
            let db = db.clone();
            self.spawn(&format!("tv-upload-{}", r.name), move || {
                upload::run(&db, index, r)
            })?;
        }
        if gate.is_some() {
            let db = db.clone();
            self.spawn(&format!("tv-gate-{}", spec.name), move || run_gate(&db))?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let handle = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(f)
            .map_err(|e| Error::io("start replication thread", name, e))?;
        self.threads.push(handle);
        Ok(())
    }

    /// The current status of every database.
    pub fn status(&self) -> Vec<DatabaseStatus> {
        self.dbs.iter().map(|db| db.lock().status.clone()).collect()
    }

    /// Waits until every replica of the store `database` holds its commit `seq` (from
    /// [`StoreLink::last_commit`]), or fails after `timeout` naming the replicas behind.
    pub fn wait_replicated(&self, database: &str, seq: u64, timeout: Duration) -> Result<()> {
        let db = self
            .dbs
            .iter()
            .find(|d| d.name == database)
            .ok_or_else(|| Error::NotFound {
                what: format!("replicated database {database:?}"),
            })?;
        let deadline = Instant::now() + timeout;
        let mut st = db.lock();
        loop {
            let behind: Vec<String> = st
                .status
                .replicas
                .iter()
                .filter(|r| r.commit_seq < seq)
                .map(|r| match &r.last_error {
                    Some(e) => format!("{} ({e})", r.name),
                    None => r.name.clone(),
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Replica {
                    replica: behind.join(", "),
                    message: format!(
                        "does not hold the latest commit after {} s",
                        timeout.as_secs()
                    ),
                    hint: None,
                });
            }
            st = db
                .changed
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until every database has shipped what was committed when it started, and every replica
    /// holds it. Fails on the first error of a database or a replica, or after `timeout`.
    pub fn wait_synced(&self, timeout: Duration) -> Result<Vec<DatabaseStatus>> {
        let deadline = Instant::now() + timeout;
        for db in &self.dbs {
            let mut st = db.lock();
            loop {
                if let Some(e) = &st.status.last_error {
                    return Err(Error::Replica {
                        replica: format!("{} (local log)", db.name),
                        message: e.clone(),
                        hint: None,
                    });
                }
                if let Some(r) = st.status.replicas.iter().find(|r| r.failures > 0) {
                    return Err(Error::Replica {
                        replica: r.name.clone(),
                        message: r.last_error.clone().unwrap_or_default(),
                        hint: r.last_hint,
                    });
                }
                let shipped = st.synced_once;
                let local = st.status.txid.max(st.status.shipped_txid);
                if shipped
                    && st
                        .status
                        .replicas
                        .iter()
                        .all(|r| r.txid.is_some_and(|t| t >= local))
                {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Replica {
                        replica: db.name.clone(),
                        message: format!("not in sync after {} s", timeout.as_secs()),
                        hint: None,
                    });
                }
                st = db
                    .changed
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        Ok(self.status())
    }

    /// Ships what was committed last, gives uploaders a few seconds to deliver it, and stops.
    /// Call before closing the store.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        for db in &self.dbs {
            db.stop.store(true, Ordering::Relaxed);
            // Under the lock: a thread that saw no stop before waiting is waiting by now.
            let _guard = db.lock();
            db.changed.notify_all();
            db.gate_wake.notify_all();
            db.quiet.notify_all();
        }
        for link in &self.links {
            let _guard = link.lock();
            link.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for db in &self.dbs {
            let held: Vec<_> = db.lock().held.drain(..).collect();
            for (_, _, release) in held {
                release(Err("the server stopped before replicas confirmed".into()));
            }
            let st = db.lock().status.reported();
            let _ = status::write(&db.local_dir, &st);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

struct ShipperOptions {
    poll_interval: Duration,
    checkpoint_wal_bytes: u64,
}

/// Releases held answers whose deadline passed (uploaders release the confirmed ones themselves,
/// and this thread any they left), then sleeps until the next deadline.
fn run_gate(db: &Db) {
    let mut st = db.lock();
    loop {
        let now = Instant::now();
        let released = st.take_released(now);
        let stopping = db.stopping();
        if !released.is_empty() {
            drop(st);
            for (release, result) in released {
                release(result);
            }
            st = db.lock();
            continue;
        }
        if stopping {
            return;
        }
        let wait = st
            .held
            .front()
            .map_or(HOUSEKEEPING, |(_, d, _)| d.saturating_duration_since(now));
        st = db
            .gate_wake
            .wait_timeout(st, wait.max(Duration::from_millis(1)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn run_shipper(db: &Db, source: Source, replicator: Replicator, options: &ShipperOptions) {
    let replicator = Arc::new(Mutex::new(replicator));
    let mut shipper = Shipper {
        db,
        replicator,
        last_ship: Instant::now() - MIN_GAP,
        last_housekeeping: Instant::now() - HOUSEKEEPING,
        failures: 0,
    };
    match source {
        Source::Store {
            store,
            link,
            busy_timeout_ms,
        } => shipper.run_store(&store, link, busy_timeout_ms, options),
        Source::External(_) => shipper.run_external(options),
    }
    shipper.housekeeping();
    let _guard = db.lock();
    db.shipper_done.store(true, Ordering::Release);
    db.changed.notify_all();
}

struct Shipper<'a> {
    db: &'a Db,
    replicator: Arc<Mutex<Replicator>>,
    last_ship: Instant,
    last_housekeeping: Instant,
    failures: u32,
}

impl Shipper<'_> {
    fn run_store(
        &mut self,
        store: &Store,
        link: Arc<StoreLink>,
        busy_timeout_ms: u64,
        options: &ShipperOptions,
    ) {
        let db = self.db;
        let sync_mode = link.sync.is_some();
        // Start with a snapshot taken beside the writer (a large database takes seconds to read),
        // or, after a clean stop, from the saved position (`Replicator::load_saved`), under a pin
        // held until the exclusive moment that ships the tail and truncates the WAL.
        // After a crash the WAL index may say the WAL was fully copied, and SQLite would then
        // start a new generation at the first commit: the unbroken pin makes that generation a
        // continuation (see `Replicator::set_wal_pinned`).
        let mut pin = Pin::default();
        pin.hold(&db.path);
        let seq = link.lock().seq;
        if !self.ship(None, seq) {
            self.backoff();
        }
        self.checkpoint_store(store, &link, busy_timeout_ms, Some(pin));
        let mut next_checkpoint = Instant::now();
        loop {
            // Shipments waiting for the local log go in by this time at the latest.
            let flush_at = self.flush_at();
            let (seq, first) = {
                let mut l = link.lock();
                while l.first_unshipped_ms.is_none()
                    && !db.stopping()
                    && !db.lock().snapshot_wanted
                    && self.last_housekeeping.elapsed() < HOUSEKEEPING
                {
                    let wait = match flush_at {
                        Some(at) => match at.checked_duration_since(Instant::now()) {
                            Some(left) if !left.is_zero() => left.min(HOUSEKEEPING),
                            _ => break,
                        },
                        None => HOUSEKEEPING,
                    };
                    l = link
                        .wake
                        .wait_timeout(l, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                (l.seq, l.first_unshipped_ms)
            };
            if first.is_none() && flush_at.is_some_and(|at| Instant::now() >= at) {
                // Nothing new to ship with it: a failure is retried by the next shipment, a
                // snapshot past it.
                self.flush_local();
            }
            let stopping = db.stopping();
            if first.is_some() || db.lock().snapshot_wanted {
                if !sync_mode && !stopping {
                    // Let commits arriving meanwhile join this file.
                    let since = self.last_ship.elapsed();
                    if since < MIN_GAP {
                        std::thread::sleep(MIN_GAP - since);
                    }
                }
                let (seq, first) = {
                    let mut l = link.lock();
                    (l.seq.max(seq), l.first_unshipped_ms.take().or(first))
                };
                if !self.ship(first, seq) {
                    // Keep the oldest unshipped time for the retry.
                    let mut l = link.lock();
                    l.first_unshipped_ms = match (l.first_unshipped_ms, first) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    drop(l);
                    self.backoff();
                }
            }
            let wal_bytes = file_len(&wal_path(&db.path));
            if wal_bytes >= options.checkpoint_wal_bytes
                && !stopping
                && Instant::now() >= next_checkpoint
                && !self.checkpoint_store(store, &link, busy_timeout_ms, None)
            {
                // A reader (a backup's snapshot, say) holds the WAL: let it be for a while
                // rather than pausing the writer for nothing every few milliseconds.
                next_checkpoint = Instant::now() + CHECKPOINT_RETRY;
            }
            if stopping {
                self.save_position();
                return;
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.housekeeping();
            }
        }
    }

    fn run_external(&mut self, options: &ShipperOptions) {
        let db = self.db;
        let wal = wal_path(&db.path);
        let mut pin = Pin::default();
        // A lower bound of the time of any commit not yet shipped: the last look that found nothing new.
        let mut quiet_since = db.now_ms();
        let mut seen = None;
        let mut first = true;
        let mut next_checkpoint = Instant::now();
        let mut checkpointed_at = None;
        // When the WAL last changed, and how many shrinks of it failed since.
        let mut changed_at = Instant::now();
        let mut shrinks_failed = 0u32;
        let mut shrink_at = Instant::now();
        loop {
            let stopping = db.stopping();
            let look = file_identity(&wal);
            if look != seen {
                changed_at = Instant::now();
            }
            let wanted = db.lock().snapshot_wanted;
            // A fine log's shipments waiting for the local log go in once the oldest waited its
            // gap, whether or not the program commits again.
            if look == seen && self.flush_at().is_some_and(|at| Instant::now() >= at) {
                self.flush_local();
            }
            if first || look != seen || wanted || stopping {
                // Let commits arriving meanwhile join this file.
                let since = self.last_ship.elapsed();
                if since < MIN_GAP && !stopping {
                    std::thread::sleep(MIN_GAP - since);
                }
                if self.pin_and_ship(&mut pin, &mut quiet_since) {
                    seen = look;
                    first = false;
                } else {
                    self.backoff();
                }
            } else {
                quiet_since = db.now_ms();
            }
            // The WAL's live content, not its file: SQLite reuses a restarted WAL from the start
            // without shrinking it.
            let wal_bytes = {
                let r = self.replicator.lock().unwrap_or_else(|p| p.into_inner());
                r.wal_shipped_bytes()
            }
            .unwrap_or_else(|| file_len(&wal));
            // The shipped offset stays where it was after a checkpoint until the program commits
            // again (its WAL restarts then): do not take its write lock again for nothing.
            let shrink_above = options.checkpoint_wal_bytes.saturating_mul(4);
            let due =
                wal_bytes >= options.checkpoint_wal_bytes && checkpointed_at != Some(wal_bytes);
            // Unless the program has stopped writing with the file still oversized (its last
            // shrink lost a race with its last commits): nothing else would try it again.
            let idle_oversized = !due
                && Instant::now() >= shrink_at
                && changed_at.elapsed() >= CHECKPOINT_RETRY
                && file_len(&wal) > shrink_above;
            if (due || idle_oversized) && !stopping && !first && Instant::now() >= next_checkpoint {
                // Busy (the program's writer, or a long reader): let it be for a while.
                let outcome = self.checkpoint_external(&mut pin, &mut quiet_since, shrink_above);
                // A shrink tried for its own sake and still not done, whatever held it: tried
                // again later and later (a reader can hold the WAL for long), on a clock of its
                // own, so that checkpoints due to new commits never wait for it.
                if file_len(&wal) <= shrink_above {
                    shrinks_failed = 0;
                } else if idle_oversized {
                    shrinks_failed += 1;
                    shrink_at = Instant::now() + CHECKPOINT_RETRY * (1 << shrinks_failed.min(7));
                }
                match outcome {
                    Checkpointed::Done => {
                        let r = self.replicator.lock().unwrap_or_else(|p| p.into_inner());
                        checkpointed_at = r.wal_shipped_bytes();
                    }
                    Checkpointed::WriterBusy => {
                        next_checkpoint = Instant::now() + CHECKPOINT_RETRY_BUSY
                    }
                    Checkpointed::HeldBack => next_checkpoint = Instant::now() + CHECKPOINT_RETRY,
                }
                seen = None;
            }
            if stopping {
                self.save_position();
                return;
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.housekeeping();
            }
            let st = db.lock();
            if !st.snapshot_wanted && !db.stopping() {
                let _ = db
                    .changed
                    .wait_timeout(st, options.poll_interval)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Moves the pin to the WAL's end, then ships what is new. `quiet_since` is a lower bound of
    /// the time of any commit not yet shipped; it moves to the time before this look on success.
    fn pin_and_ship(&mut self, pin: &mut Pin, quiet_since: &mut i64) -> bool {
        let before = self.db.now_ms();
        // With a read transaction open, no program's checkpoint can fold unshipped frames into
        // the database or restart the WAL under us.
        let continuous = pin.hold(&self.db.path);
        self.replicator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_wal_pinned(continuous);
        let shipped = self.ship(Some(*quiet_since), 0);
        if shipped {
            *quiet_since = before;
        }
        shipped
    }

    /// Ships what is new to the local log, stamped `first_ms` (a lower bound of the commit times
    /// it holds). Records `seq` as the last store commit in it. Returns whether it worked.
    fn ship(&mut self, first_ms: Option<i64>, seq: u64) -> bool {
        let db = self.db;
        let (wanted, raise) = {
            let mut st = db.lock();
            let raise = std::mem::take(&mut st.raise_txid);
            (std::mem::take(&mut st.snapshot_wanted), raise)
        };
        let mut r = self.replicator.lock().unwrap_or_else(|p| p.into_inner());
        if raise > 0 {
            r.raise_txid(raise);
        }
        if wanted {
            r.force_snapshot();
        }
        db.shipping_seq.store(seq, Ordering::Release);
        // The clock counts whole milliseconds: one more is strictly after every commit read.
        let result = r.sync_with(first_ms, &|| db.now_ms() + 1);
        self.last_ship = Instant::now();
        // What waits for the local log goes in once the oldest of it waited its gap
        // (`Db::local_gap`), or once it is large; even if this read failed.
        let flush = if r
            .pending_since()
            .is_some_and(|t| t.elapsed() >= db.local_gap())
            || r.pending_bytes() >= PENDING_BYTES_MAX
        {
            r.flush_local()
        } else {
            Ok(())
        };
        let (flushed, flush_failed) = (r.take_flushed(), r.take_flush_failed());
        let (txid, ts, made) = (r.txid(), r.last_ts(), r.last_made());
        drop(r);
        // A failed flush is not this read's failure: what was read is recorded below, and the
        // snapshot that follows it is asked for now, with no backoff.
        let flush_error = self.settle_flush(flush, flushed, flush_failed);
        match result {
            Ok(synced) => {
                self.failures = 0;
                let mut st = db.lock();
                st.status.last_error = flush_error;
                st.synced_once = true;
                if let Synced::Deferred { txid } = synced {
                    (st.status.shipped_txid, st.status.shipped_time_ms) = (txid, Some(made));
                }
                if matches!(
                    synced,
                    Synced::Transactions { .. } | Synced::Snapshot { .. }
                ) {
                    st.status.txid = txid;
                    st.status.txid_time_ms = Some(made);
                    if let Synced::Transactions { bytes, .. } = synced {
                        if st.recent.len() >= RECENT_MAX {
                            st.recent.pop_front();
                        }
                        st.recent.push_back(ReplicaFile {
                            level: 0,
                            min_txid: txid,
                            max_txid: txid,
                            size: bytes,
                            created_at_ms: ts,
                        });
                    }
                    if let Synced::Snapshot { .. } = synced {
                        tracing::info!(database = %db.name, txid, "snapshot written to the local log");
                    }
                }
                // Even when nothing new was found: the commits up to `seq` may have been shipped
                // by the previous sync, which read the WAL before their listener call came.
                let released = st.record_shipped(txid, seq);
                let sync_mode = st.sync_replicas > 0;
                drop(st);
                db.changed.notify_all();
                for (release, result) in released {
                    release(result);
                }
                // In sync mode the uploader that releases the answers does this: here it would
                // take the CPU the woken uploader needs (a 0.2 ms later wake-up was measured).
                if !sync_mode {
                    db.prepare_local();
                }
                true
            }
            Err(e) => {
                if wanted {
                    db.lock().snapshot_wanted = true;
                }
                if raise > 0 {
                    let mut st = db.lock();
                    st.raise_txid = st.raise_txid.max(raise);
                }
                self.failures += 1;
                let message = crate::store::writer::error_chain(&e);
                tracing::warn!(database = %db.name, error = %message, "could not read the wal into the local log; retrying");
                db.lock().status.last_error = Some(message);
                db.changed.notify_all();
                crate::metrics::replication_failed(&db.name, "local");
                false
            }
        }
    }

    /// When what waits for the local log (see [`Replicator::defer_local`]) is due there: its
    /// oldest shipment's time plus [`Db::local_gap`]; None when nothing waits.
    fn flush_at(&self) -> Option<Instant> {
        if !self.db.local_deferred() {
            return None;
        }
        let r = self.replicator.lock().unwrap_or_else(|p| p.into_inner());
        r.pending_since().map(|t| t + self.db.local_gap())
    }

    /// Writes what waits for the local log (see [`Replicator::defer_local`]) and tells the
    /// uploaders; a failure is the replica's last error, and the next shipment a snapshot past it.
    fn flush_local(&self) {
        let (result, flushed, failed) = {
            let mut r = self.replicator.lock().unwrap_or_else(|p| p.into_inner());
            (r.flush_local(), r.take_flushed(), r.take_flush_failed())
        };
        if let Some(message) = self.settle_flush(result, flushed, failed) {
            self.db.lock().status.last_error = Some(message);
        }
    }

    /// Settles what the replicator's flushes of the deferred local log did, taken with its lock
    /// released: `flushed` is published to the uploaders; a failed flush (`failed`) asks for the
    /// snapshot that follows it now, not at the next commit, since replicas without a journal,
    /// and a journal waiting for the layout, need what it held. Returns `result`'s error message,
    /// logged and counted.
    fn settle_flush(
        &self,
        result: Result<()>,
        flushed: Vec<(ReplicaFile, i64)>,
        failed: bool,
    ) -> Option<String> {
        self.publish(flushed);
        let message = result.err().map(|e| {
            let message = crate::store::writer::error_chain(&e);
            tracing::warn!(database = %self.db.name, error = %message, "could not write the waiting shipments into the local log; a snapshot follows");
            crate::metrics::replication_failed(&self.db.name, "local");
            message
        });
        if failed {
            self.db.lock().snapshot_wanted = true;
            self.db.changed.notify_all();
        }
        message
    }

    /// Makes files the replicator wrote into the local log known to the uploaders: the newest
    /// position, and the files themselves in `recent`.
    fn publish(&self, flushed: Vec<(ReplicaFile, i64)>) {
        if flushed.is_empty() {
            return;
        }
        self.db.hurry_local.store(false, Ordering::Relaxed);
        let mut st = self.db.lock();
        for (f, made) in flushed {
            st.status.txid = st.status.txid.max(f.max_txid);
            st.status.txid_time_ms = Some(made);
            if st.recent.len() >= RECENT_MAX {
                st.recent.pop_front();
            }
            st.recent.push_back(f);
        }
        drop(st);
        self.db.changed.notify_all();
    }

    /// Saves where the history stands for the next start (`Replicator::save`): called last, once
    /// nothing will be shipped any more, and for another program's database while its pin is
    /// still held, so that no checkpoint (a program's last connection closing, say) folds a
    /// commit into the file between the last look and the file's checksum.
    fn save_position(&self) {
        // What waits for the local log goes in first, and to the uploaders draining it.
        self.flush_local();
        let saved = self
            .replicator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .save(&self.db.local_dir);
        if let Err(e) = saved {
            tracing::warn!(database = %self.db.name, error = %e, "could not save the position; the next start writes a snapshot");
        }
    }

    /// Waits out the backoff after a failed shipment, its whole time unless the engine stops
    /// (uploaders notify `changed` at every upload and failure; they must not cut it short).
    fn backoff(&self) {
        let ms = (50u64 << self.failures.min(6)).min(3_000);
        self.db.sleep(Duration::from_millis(ms));
    }

    /// Ships the WAL's tail and truncates it in an exclusive moment of the store's writer, after
    /// copying the bulk beside it; returns whether it truncated. `startup_pin`: the pin held since the startup snapshot was read.
    fn checkpoint_store(
        &mut self,
        store: &Store,
        link: &Arc<StoreLink>,
        busy_timeout_ms: u64,
        startup_pin: Option<Pin>,
    ) -> bool {
        let db = self.db;
        // A store that refuses writes after a failed write or fsync may be damaged: never fold
        // its WAL into the database.
        if let Some(cause) = store.unavailable() {
            tracing::warn!(cause = %cause, "store unavailable; no checkpoint");
            return false;
        }
        let path = db.path.clone();
        // The bulk of the copy happens beside the writer. A read transaction pins the WAL first:
        // SQLite restarts a fully copied WAL at the next commit, and it must not do that before
        // the tail is shipped; it cannot while a reader holds a mark.
        // At startup the pin taken before the snapshot stays as it is: moving it, or copying
        // frames, before the tail is shipped would fold unshipped commits into the database.
        let pinned_since_sync = startup_pin.is_some();
        let pin = match startup_pin {
            Some(pin) => pin,
            None => {
                let mut pin = Pin::default();
                pin.hold(&path);
                if let Err(e) = passive_checkpoint(&path) {
                    tracing::warn!(error = %e, "passive checkpoint failed");
                }
                pin
            }
        };
        let replicator = self.replicator.clone();
        let wal = wal_path(&path);
        let name = db.name.clone();
        let first = link.lock().first_unshipped_ms.take();
        let clock = db.clock.clone();
        let link_inside = link.clone();
        let shipping_seq = db.shipping_seq.clone();
        let result = store.exclusive_blocking(move |conn| {
            // Nothing commits while this runs: every commit up to `seq` is in the WAL.
            let seq = link_inside.lock().seq;
            let mut r = replicator.lock().unwrap_or_else(|p| p.into_inner());
            // Under the replicator's lock, as the shipper's own reads are.
            shipping_seq.store(seq, Ordering::Release);
            r.set_wal_pinned(pinned_since_sync);
            // Ship the tail, then truncate. The local log holds every commit of a WAL
            // generation before the WAL restarts: what waits goes in first.
            let synced = r.sync_with(first, &|| clock.now().as_millisecond() + 1)?;
            r.flush_local()?;
            drop(pin);
            let salt1 = WalReader::open(&wal)?.map(|w| w.header().salt1);
            let done = truncate(conn, busy_timeout_ms)?;
            if done && let Some(salt1) = salt1 {
                r.wal_truncated(salt1);
            }
            Ok((synced, r.txid(), r.last_made(), done, seq, r.take_flushed()))
        });
        match result {
            Ok((synced, txid, made, done, seq, flushed)) => {
                self.publish(flushed);
                let mut st = db.lock();
                st.synced_once = true;
                if matches!(
                    synced,
                    Synced::Transactions { .. } | Synced::Snapshot { .. }
                ) {
                    st.status.txid = txid;
                    st.status.txid_time_ms = Some(made);
                }
                let released = st.record_shipped(txid, seq);
                if done {
                    st.status.checkpoints += 1;
                }
                drop(st);
                db.changed.notify_all();
                for (release, result) in released {
                    release(result);
                }
                if done {
                    crate::metrics::replication_checkpoint(&name);
                }
                tracing::debug!(database = %name, truncated = done, "wal shipped and checkpointed");
                done
            }
            Err(e) => {
                // A flush in the job may have worked before a later step failed, or failed.
                let (flushed, flush_failed) = {
                    let mut r = self.replicator.lock().unwrap_or_else(|p| p.into_inner());
                    (r.take_flushed(), r.take_flush_failed())
                };
                // The job's own error is told below.
                self.settle_flush(Ok(()), flushed, flush_failed);
                // The commits are still unshipped: keep their time for the next attempt.
                let mut l = link.lock();
                l.first_unshipped_ms = match (l.first_unshipped_ms, first) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                drop(l);
                db.lock().status.last_error = Some(e.to_string());
                tracing::warn!(database = %name, error = %e, "wal checkpoint failed");
                false
            }
        }
    }

    /// For a database another program writes: copy the bulk beside its writer (PASSIVE, up to
    /// our pin), then in a short exclusive moment (the program's write lock, taken as a writer
    /// would) ship the tail, copy the rest, and move the pin onto the database alone. Once the
    /// lock is let go, SQLite starts a new WAL generation at the program's next commit, which
    /// continues the history (see [`Replicator::set_wal_pinned`]) and reuses the file; a file
    /// grown past `shrink_above` is truncated if nothing was committed meanwhile.
    fn checkpoint_external(
        &mut self,
        pin: &mut Pin,
        quiet_since: &mut i64,
        shrink_above: u64,
    ) -> Checkpointed {
        let db = self.db;
        let path = db.path.clone();
        // One connection copies, before the lock and under it.
        let checkpointer = open_plain(&path);
        match checkpointer.as_ref().map(passive_on) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(database = %db.name, error = %e, "passive checkpoint failed")
            }
            Err(e) => tracing::debug!(database = %db.name, error = %e, "passive checkpoint failed"),
        }
        let lock = open_plain(&path).and_then(|mut c| {
            c.busy_handler(Some(poll_write_lock))?;
            c.execute_batch("BEGIN IMMEDIATE")?;
            Ok(c)
        });
        let lock = match lock {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(database = %db.name, error = %e, "the program's write lock is busy; checkpoint later");
                return Checkpointed::WriterBusy;
            }
        };
        // Nothing commits until `lock` ends.
        let started = Instant::now();
        let mut copied = false;
        let mut checkpointing = false;
        if let Ok(checkpointer) = &checkpointer
            && self.pin_and_ship(pin, quiet_since)
        {
            let mut reader_tries = 0;
            let until = Instant::now() + CHECKPOINTER_WAIT;
            loop {
                match passive_on(checkpointer) {
                    // Not busy (another checkpoint running): nothing left to copy. A WAL that is
                    // not open (nothing in it) reports -1 for both, and counts.
                    Ok((false, log, done)) if log == done => {
                        // Every frame is shipped and in the database: a pin taken now reads the
                        // database alone, and does not stop the restart.
                        pin.hold(&path);
                        copied = true;
                        break;
                    }
                    // The program's own checkpoint, run just after its commit (which is when
                    // its write lock is free): it cannot commit until the lock ends, so waiting
                    // for it costs the program nothing.
                    Ok((true, _, _)) if Instant::now() < until => {
                        checkpointing = true;
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    // A reader that began before the lock was taken: it ends soon.
                    Ok((false, _, _)) if reader_tries < HELD_BACK_TRIES => {
                        checkpointing = false;
                        reader_tries += 1;
                        std::thread::yield_now();
                    }
                    Ok((busy, log, done)) => {
                        checkpointing = busy;
                        tracing::debug!(database = %db.name, checkpointing = busy, frames = log, copied = done,
                            "a reader or a checkpoint holds back the checkpoint; later");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(database = %db.name, error = %e, "checkpoint failed");
                        break;
                    }
                }
            }
        }
        if let Err(e) = lock.execute_batch("ROLLBACK") {
            tracing::warn!(database = %db.name, error = %e, "could not let go of the write lock");
        }
        drop(lock);
        let held = started.elapsed();
        if !copied {
            return if checkpointing {
                Checkpointed::WriterBusy
            } else {
                Checkpointed::HeldBack
            };
        }
        // The program's next commit restarts the WAL from its start, reusing the file. Shrink
        // the file only after a burst left it much larger than the trigger: truncating costs a
        // tenth of the engine's CPU at 2,000 commits/s (the file's pages leave the page cache, and
        // the program allocates them again), for disk space the next bytes would take back.
        // Frames committed since cannot be copied while the pin reads the database alone, so then
        // this does nothing.
        let truncated = if file_len(&wal_path(&path)) > shrink_above {
            open_plain(&path).and_then(|c| {
                c.pragma_update(None, "busy_timeout", 0)?;
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    row.get::<_, i64>(0)
                })
            })
        } else {
            Ok(1)
        };
        db.lock().status.checkpoints += 1;
        crate::metrics::replication_checkpoint(&db.name);
        tracing::debug!(
            database = %db.name,
            lock_held_us = held.as_micros() as u64,
            truncated = matches!(truncated, Ok(0)),
            "wal shipped and checkpointed"
        );
        Checkpointed::Done
    }

    /// Status file, metrics and pruning of the local log, once per second.
    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        let db = self.db;
        let wal_bytes = file_len(&wal_path(&db.path));
        crate::metrics::replication_wal_bytes(&db.name, wal_bytes);
        let now = db.now_ms();
        let snapshot = {
            let mut st = db.lock();
            st.status.wal_bytes = wal_bytes;
            st.status.updated_at_ms = now;
            st.status.measure_lags(now);
            for r in &st.status.replicas {
                crate::metrics::replication_lag(&db.name, &r.name, r.lag_seconds);
            }
            st.status.clone()
        };
        if let Err(e) = status::write(&db.local_dir, &snapshot.reported()) {
            tracing::debug!(error = %e, "could not write the status file");
        }
        if let Err(e) = prune_local(db, &snapshot) {
            tracing::warn!(database = %db.name, error = %e, "could not prune the local log");
        }
    }
}

/// Deletes local files every replica has, and the oldest beyond the size bound. The newest local
/// file always stays: it carries the TXID numbering across restarts.
fn prune_local(db: &Db, status: &DatabaseStatus) -> Result<()> {
    let everyone_has = status
        .replicas
        .iter()
        .map(|r| r.txid)
        .min()
        .flatten()
        .unwrap_or(0);
    let mut files = Vec::new();
    for level in [0, SNAPSHOT_LEVEL] {
        files.extend(db.local.list(level)?);
    }
    files.sort_by_key(|f| (f.max_txid, f.level));
    let Some(newest) = files.pop() else {
        return Ok(());
    };
    let mut total: u64 = files.iter().map(|f| f.size).sum::<u64>() + newest.size;
    // Files go oldest first, so what goes is a prefix: the shipper's record of recent files
    // forgets the same prefix.
    let mut deleted_to = 0;
    let mut result = Ok(());
    for f in &files {
        if f.max_txid > everyone_has && total <= LOCAL_LOG_BYTES_MAX {
            break;
        }
        let removed = match &db.local {
            Replica::File(cache) if f.max_txid <= everyone_has => cache.retire(f),
            local => local.delete(f),
        };
        if let Err(e) = removed {
            result = Err(e);
            break;
        }
        total -= f.size;
        deleted_to = f.max_txid;
    }
    db.lock().recent.retain(|f| f.max_txid > deleted_to);
    result
}

/// Runs `PRAGMA wal_checkpoint(TRUNCATE)` without waiting for readers; true if it truncated.
fn truncate(conn: &rusqlite::Connection, busy_timeout_ms: u64) -> Result<bool> {
    let sql = |e| Error::sqlite("truncate wal", e);
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
    Ok(done.map_err(sql)? == 0)
}

/// A read transaction that keeps SQLite from copying unshipped frames into the database, or
/// starting a new WAL generation, while it is open.
///
/// A reader with a mark in the WAL (frames 1 to N) stops a checkpoint at its mark and stops any
/// restart; a reader that started while the WAL was fully copied reads from the database alone
/// (read mark 0), and stops any further copying, though not a restart of the already copied WAL.
/// Either way no frame is folded into the database before it is shipped. Each new pin is taken
/// while the previous one is still held, so the protection never lapses.
#[derive(Default)]
struct Pin {
    held: Option<rusqlite::Connection>,
    /// The previous pin's connection, idle, reused for the next pin.
    spare: Option<rusqlite::Connection>,
}

impl Pin {
    /// Opens a read transaction at the WAL's current end, then ends the previous one. Returns
    /// whether a pin was held without a break since the previous call.
    fn hold(&mut self, path: &Path) -> bool {
        let continuous = self.held.is_some();
        let next = match self.spare.take() {
            Some(c) => Ok(c),
            None => open_plain(path),
        };
        // Cached statements: a pin moves at every shipment, and parsing was most of its cost.
        let pinned = next.and_then(|c| {
            c.prepare_cached("BEGIN")?.execute([])?;
            c.prepare_cached("SELECT count(*) FROM sqlite_master")?
                .query_row([], |_| Ok(()))?;
            Ok(c)
        });
        match pinned {
            Ok(c) => {
                if let Some(old) = self.held.replace(c)
                    && old
                        .prepare_cached("COMMIT")
                        .and_then(|mut s| s.execute([]))
                        .is_ok()
                {
                    self.spare = Some(old);
                }
            }
            // The old pin, if any, stays held.
            Err(e) => tracing::debug!(error = %e, "could not pin the wal"),
        }
        continuous
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)` on a fresh connection: (busy, frames in the WAL, frames
/// copied).
fn passive_checkpoint(path: &Path) -> rusqlite::Result<(bool, i64, i64)> {
    passive_on(&open_plain(path)?)
}

/// [`passive_checkpoint`] on `conn`.
fn passive_on(conn: &rusqlite::Connection) -> rusqlite::Result<(bool, i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(0)? != 0, row.get(1)?, row.get(2)?))
    })
}

/// What an external database's checkpoint came to.
enum Checkpointed {
    /// Shipped, copied, and the pin moved onto the database alone.
    Done,
    /// The program held its write lock throughout, or its own checkpoint ran on.
    WriterBusy,
    /// A reader kept frames from being copied (or the shipment failed).
    HeldBack,
}

/// The busy handler of an external checkpoint's `BEGIN IMMEDIATE`: polls the write lock every
/// `WRITE_LOCK_POLL`, spinning (a sleep that short oversleeps by the timer slack, tens of
/// microseconds), for `WRITE_LOCK_WAIT` in all.
fn poll_write_lock(attempts: i32) -> bool {
    let until = Instant::now() + WRITE_LOCK_POLL;
    while Instant::now() < until {
        std::thread::yield_now();
    }
    (attempts as u128) < WRITE_LOCK_WAIT.as_micros() / WRITE_LOCK_POLL.as_micros()
}

/// A connection that never checkpoints on close (the engine decides when the WAL is folded in).
fn open_plain(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    Ok(c)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn file_identity(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(replicas: usize) -> State {
        State {
            status: DatabaseStatus {
                replicas: vec![ReplicaStatus::default(); replicas],
                ..DatabaseStatus::default()
            },
            history_start: 1,
            synced_once: false,
            snapshot_wanted: false,
            raise_txid: 0,
            shipped: VecDeque::new(),
            held: VecDeque::new(),
            sync_replicas: 0,
            recent: VecDeque::new(),
            put_points: vec![None; replicas],
        }
    }

    #[test]
    fn a_commit_shipped_before_its_listener_call_still_reaches_the_gate() {
        let mut st = state(2);
        st.record_shipped(5, 10);
        st.status.replicas[0].txid = Some(5);
        st.status.replicas[0].commit_seq = Db::commit_seq_at(&st, 5);
        // Commit 11 was already in the WAL when file 5 was written; the sync its listener call
        // triggers finds nothing new.
        st.record_shipped(5, 11);
        assert_eq!(Db::commit_seq_at(&st, 5), 11);
        assert_eq!(st.status.replicas[0].commit_seq, 11);
        assert_eq!(
            st.status.replicas[1].commit_seq, 0,
            "replica 1 holds nothing yet"
        );
        st.record_shipped(6, 12);
        assert_eq!(st.shipped, VecDeque::from([(5, 11), (6, 12)]));
        assert_eq!(
            st.status.replicas[0].commit_seq, 11,
            "file 6 is not on replica 0"
        );
    }

    #[test]
    fn a_journal_credits_its_record_before_the_shipper_records_the_file() {
        let mut st = state(2);
        st.sync_replicas = 1;
        st.record_shipped(5, 10);
        let (tx, rx) = std::sync::mpsc::channel();
        let release: Release = Box::new(move |r| tx.send(r).expect("send"));
        st.held
            .push_back((11, Instant::now() + Duration::from_secs(60), release));
        // Replica 1's journal holds file 6 (commit 11) while the shipper still writes it into
        // the local log.
        st.status.replicas[1].journal_txid = 6;
        let released = st.record_shipped(6, 11);
        assert_eq!(st.status.replicas[1].commit_seq, 11);
        assert_eq!(st.status.replicas[0].commit_seq, 0);
        assert_eq!(
            released.len(),
            1,
            "the answer goes as soon as the journal holds it"
        );
        for (release, result) in released {
            release(result);
        }
        assert_eq!(rx.try_recv().expect("released"), Ok(()));
        // The shipper has shipped file 7 since; the journal then records file 6 again (another
        // replica's journal, say): nothing moves backwards.
        st.record_shipped(7, 12);
        st.record_shipped(6, 11);
        assert_eq!(st.shipped, VecDeque::from([(5, 10), (6, 11), (7, 12)]));
        assert_eq!(Db::commit_seq_at(&st, 6), 11);
    }
}
