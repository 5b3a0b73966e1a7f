//! The single writer: one thread owns the only write connection. Requests queue on a bounded
//! channel; the thread takes every request waiting (up to `group_commit_max`), runs each inside
//! its own savepoint in one transaction, commits once (one fsync for the group), then answers
//! them all. A request that fails rolls back to its savepoint and fails alone.
//!
//! After any failed write, commit or checkpoint that may have damaged the database (I/O errors,
//! full disk, corruption) the writer poisons itself: every later request is refused until the
//! process restarts and reopens the store. An fsync is never retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use jiff::Timestamp;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::exact::format_timestamp;
use crate::metrics as m;

/// What a write closure is given: the connection inside a transaction, the commit time, and a
/// tally of rows written (reported as metrics once the commit succeeds).
pub struct Tx<'a> {
    /// The write connection, inside a transaction and a savepoint.
    pub conn: &'a Connection,
    /// The time this group of requests commits at.
    pub now: Timestamp,
    /// `now` as stored text.
    pub now_text: &'a str,
    rows: Vec<(&'static str, u64)>,
}

impl Tx<'_> {
    /// Counts `n` rows written to `table`.
    pub fn count(&mut self, table: &'static str, n: u64) {
        match self.rows.iter_mut().find(|(t, _)| *t == table) {
            Some((_, c)) => *c += n,
            None => self.rows.push((table, n)),
        }
    }
}

/// One committed transaction, as told to every [`CommitListener`].
#[derive(Debug, Clone)]
pub struct Commit {
    /// Commits since the store opened, from 1.
    pub seq: u64,
    /// Requests that succeeded in it.
    pub requests: usize,
    /// Its commit time.
    pub at: Timestamp,
    /// Frames in the WAL after it (SQLite's wal_hook count; 0 right after a WAL restart).
    pub wal_frames: u64,
}

/// Told about every commit, on the writer thread, right after it committed. Must be quick. The
/// commit is durable by then, except in synchronous mode, where the writer makes the WAL durable
/// right after telling the listeners (see [`WalSync`]); either way before anyone is answered.
pub trait CommitListener: Send + Sync + 'static {
    /// Called once per commit, in commit order.
    fn committed(&self, commit: &Commit);
}

/// Releases a commit's answers, with why the commit is not durable enough if it is not.
pub type Release = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

/// Holds the answers of each commit until it is durable enough (synchronous replication). The
/// writer does not wait: it goes on with the next group while earlier answers are held.
pub trait CommitGate: Send + Sync + 'static {
    /// Calls `release` once `commit` may be acknowledged, or with why it may not; from any
    /// thread, later. Called after every listener heard of the commit.
    fn hold(&self, commit: &Commit, release: Release);
}

/// Who checkpoints the WAL into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOwner {
    /// The store's checkpointer thread, on its own connection, runs a PASSIVE checkpoint once the
    /// WAL holds `checkpoint_wal_bytes`; the writer never waits for it.
    Store,
    /// Someone else (the replication engine) does; the writer never checkpoints.
    External,
}

/// The writer's shared state: whether it is poisoned, and why.
#[derive(Debug, Default)]
pub struct WriterHealth {
    poisoned: Mutex<Option<String>>,
}

impl WriterHealth {
    /// The failure that poisoned the writer, if it is poisoned.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn poison(&self, cause: String) {
        let mut slot = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!(cause = %cause, "store writer poisoned; writes refused until restart");
            m::set_writer_poisoned(true);
            *slot = Some(cause);
        }
    }
}

/// Answers a request once its group has committed (or failed to: the argument says why).
type Finish = Box<dyn FnOnce(Outcome<'_>) + Send>;

/// What became of a group, as told to each of its requests.
#[derive(Debug, Clone, Copy)]
enum Outcome<'a> {
    /// Committed (and replicated, where that is required).
    Committed,
    /// Not committed: the writer is poisoned for this reason.
    Failed(&'a str),
    /// Committed locally, but not confirmed by enough replicas, for this reason.
    NotReplicated(&'a str),
}

/// The outcome of running one job, kept until the group commits.
struct Done {
    ok: bool,
    fatal: Option<String>,
    rows: Vec<(&'static str, u64)>,
    /// Sends the answer; given the commit failure, if any.
    finish: Finish,
}

/// A queued request: run it in a transaction, or refuse it unrun.
trait Job: Send {
    fn run(self: Box<Self>, tx: &mut Tx<'_>) -> Done;
    fn refuse(self: Box<Self>, error: Error);
    /// Whether the job runs alone between groups, outside any transaction.
    fn exclusive(&self) -> bool {
        false
    }
    /// Runs an exclusive job, then syncs `wal` if given (what it committed is durable before its
    /// answer); a failure that poisons the writer poisons `health` before the answer goes, so
    /// that whoever gets it finds the writer refusing.
    fn run_exclusive(
        self: Box<Self>,
        _conn: &mut Connection,
        _wal: Option<&mut WalSync>,
        _health: &WriterHealth,
    ) {
    }
}

/// A job that runs on the write connection with no transaction open and no write in progress:
/// nothing commits while it runs (the replication engine ships the WAL's tail and truncates it).
struct ExclusiveJob<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for ExclusiveJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    fn run(self: Box<Self>, _tx: &mut Tx<'_>) -> Done {
        // Never grouped: the writer loop runs exclusive jobs through run_exclusive.
        unreachable!("an exclusive job is never run inside a transaction")
    }

    fn refuse(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn run_exclusive(
        self: Box<Self>,
        conn: &mut Connection,
        wal: Option<&mut WalSync>,
        health: &WriterHealth,
    ) {
        let ExclusiveJob { f, reply } = *self;
        let mut result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn))) {
            Ok(r) => r,
            Err(_) => Err(Error::Internal {
                message: "an exclusive writer job panicked".into(),
            }),
        };
        // A job may commit (an in-place restore's copy does): with synchronous=NORMAL, that is
        // durable only once the WAL is synced.
        if let Some(wal) = wal
            && let Err(e) = wal.sync()
        {
            result = Err(Error::Internal {
                message: wal.failed(&e),
            });
        }
        if let Err(e) = &result
            && (matches!(e, Error::Internal { .. }) || e.is_fatal())
        {
            health.poison(error_chain(e));
        }
        let _ = reply.send(result);
    }
}

struct TypedJob<T, F> {
    f: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &mut Tx<'_>) -> Done {
        let TypedJob { f, reply } = *self;
        // A panic inside a request is a bug: the request fails and the writer poisons itself (its
        // transaction is abandoned) before anyone is answered, rather than commit a half-done one.
        let (result, panicked) =
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx))) {
                Ok(result) => (result, false),
                Err(_) => {
                    let message =
                        "a write request panicked; its transaction was abandoned".to_owned();
                    (Err(Error::Internal { message }), true)
                }
            };
        let ok = result.is_ok();
        let fatal = match &result {
            Err(e) if panicked || e.is_fatal() => Some(error_chain(e)),
            _ => None,
        };
        Done {
            ok,
            fatal,
            rows: std::mem::take(&mut tx.rows),
            finish: Box::new(move |outcome: Outcome<'_>| {
                let answer = match (result, outcome) {
                    // The request that hit the damage is told what everyone after it is told.
                    (Err(e), _) if e.is_fatal() => Err(Error::Poisoned {
                        cause: error_chain(&e),
                    }),
                    (Ok(_), Outcome::Failed(cause)) => Err(Error::Poisoned {
                        cause: cause.to_owned(),
                    }),
                    (Ok(_), Outcome::NotReplicated(cause)) => Err(Error::NotReplicated {
                        cause: cause.to_owned(),
                    }),
                    (r, _) => r,
                };
                let _ = reply.send(answer);
            }),
        }
    }

    fn refuse(self: Box<Self>, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

/// Settings of the writer thread.
pub(crate) struct WriterOptions {
    pub group_commit_max: usize,
    pub queue_max: usize,
    /// Frames in the WAL after the last commit, kept up to date by the connection's wal_hook.
    pub wal_frames: Arc<AtomicU64>,
    /// Frames the last checkpoint copied into the database (of the WAL generation it saw).
    pub wal_backfilled: Arc<AtomicU64>,
    /// Woken (never blocked on) when the WAL passes the checkpoint threshold.
    pub checkpoint_request: Option<std::sync::mpsc::SyncSender<()>>,
    /// Frames that trigger a checkpoint request.
    pub checkpoint_wal_frames: u64,
    pub listeners: Vec<Arc<dyn CommitListener>>,
    /// Holds each commit's answers until it is replicated (synchronous mode).
    pub gate: Option<Arc<dyn CommitGate>>,
    /// The WAL the writer makes durable itself after each commit, when the connection commits
    /// with `synchronous=NORMAL` (synchronous mode).
    pub wal_sync: Option<WalSync>,
}

/// In synchronous mode a write waits for its commit to be durable twice: in the local WAL and on
/// the replicas. With `synchronous=FULL` the two waits come one after the other (SQLite's fsync
/// inside COMMIT, then the shipper's read of the WAL and the replica's fsync). Instead the
/// connection commits with `synchronous=NORMAL` (the WAL written, not flushed), the writer tells
/// the listeners, so the shipper reads and ships the commit while the disk flushes, and then
/// `fdatasync`s the WAL itself, before the commit's answers go to the gate. No answer is sent
/// before both, so an acknowledged write is as durable locally as with `FULL`. A machine crash in
/// between may leave a replica holding a commit the local WAL lost, which was never acknowledged;
/// the engine's next start numbers its snapshot past what file replicas hold and continues an S3
/// replica found holding that TXID or later from a new snapshot, so no replica's history goes on
/// from it. Readers may see a commit before the sync (SQLite publishes it at COMMIT).
pub struct WalSync {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl WalSync {
    /// Syncs `database`'s WAL (`<database>-wal`) after each commit.
    pub fn new(database: &std::path::Path) -> WalSync {
        let mut path = database.as_os_str().to_owned();
        path.push("-wal");
        WalSync {
            path: path.into(),
            file: None,
        }
    }

    /// Makes everything written to the WAL so far durable. The WAL is opened at the first call
    /// (and its directory synced then, as its name may be new). SQLite deletes a WAL only when its
    /// last connection closes or the journal mode changes, neither of which the store does while
    /// the writer runs; should the file synced have lost its name even so, the one now at the
    /// path is opened and synced instead.
    fn sync(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        for _ in 0..2 {
            let file = match &mut self.file {
                Some(f) => f,
                slot => {
                    let f = std::fs::File::open(&self.path)?;
                    if let Some(dir) = self.path.parent() {
                        let dir = if dir.as_os_str().is_empty() {
                            std::path::Path::new(".")
                        } else {
                            dir
                        };
                        std::fs::File::open(dir)?.sync_all()?;
                    }
                    slot.insert(f)
                }
            };
            file.sync_data()?;
            if file.metadata()?.nlink() > 0 {
                return Ok(());
            }
            self.file = None;
        }
        Err(std::io::Error::other(
            "the WAL was replaced twice while it was synced",
        ))
    }

    /// The cause to poison the writer with after `sync` failed.
    fn failed(&self, e: &std::io::Error) -> String {
        format!(
            "sync {} after a commit: {e} (the commit may be in the database and on replicas \
             even so: look before writing it again)",
            self.path.display()
        )
    }
}

/// Handle to the writer thread (and the checkpointer); dropping it stops them after they drain.
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
    pub(crate) health: Arc<WriterHealth>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer on `conn`. With `checkpoint_conn`, the store checkpoints on that
    /// connection in its own thread; without, someone else owns checkpoints.
    pub(crate) fn start(
        mut conn: Connection,
        checkpoint_conn: Option<Connection>,
        clock: Arc<dyn Clock>,
        mut opts: WriterOptions,
    ) -> Result<Writer> {
        let frames = opts.wal_frames.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                frames.store(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
                Ok(())
            },
        ))
        .map_err(|e| Error::sqlite("install wal hook", e))?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>(opts.queue_max);
        let health = Arc::new(WriterHealth::default());
        let mut threads = Vec::new();
        if let Some(cp) = checkpoint_conn {
            let (request, requests) = std::sync::mpsc::sync_channel(1);
            opts.checkpoint_request = Some(request);
            threads.push(start_checkpointer(
                cp,
                requests,
                opts.wal_backfilled.clone(),
                health.clone(),
            )?);
        }
        let thread_health = health.clone();
        let writer = std::thread::Builder::new()
            .name("tradevault-writer".into())
            .spawn(move || run(conn, rx, clock, opts, thread_health))
            .map_err(|e| Error::io("start writer thread", "tradevault-writer", e))?;
        threads.insert(0, writer);
        Ok(Writer {
            tx,
            health,
            threads: Mutex::new(threads),
        })
    }

    /// Runs `f` in the next group commit and returns its result once the commit is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        if let Some(cause) = self.health.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let (reply, reply_rx) = oneshot::channel::<Result<T>>();
        let job: Box<dyn Job> = Box::new(TypedJob { f, reply });
        self.tx.send(job).await.map_err(|_| Error::WriterStopped)?;
        reply_rx.await.map_err(|_| Error::WriterStopped)?
    }

    /// Runs `f` on the write connection between groups, with nothing committing meanwhile.
    /// Blocks the calling (non-async) thread until it ran.
    pub(crate) fn exclusive_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if let Some(cause) = self.health.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        let (reply, reply_rx) = oneshot::channel::<Result<T>>();
        let job: Box<dyn Job> = Box::new(ExclusiveJob { f, reply });
        self.tx
            .blocking_send(job)
            .map_err(|_| Error::WriterStopped)?;
        reply_rx.blocking_recv().map_err(|_| Error::WriterStopped)?
    }

    /// Whether the writer thread is still taking requests.
    pub(crate) fn alive(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Closes the queue and waits for the writer to drain it, then for the checkpointer.
    pub(crate) fn shutdown(self) {
        let Writer { tx, threads, .. } = self;
        drop(tx);
        for h in threads.into_inner().unwrap_or_else(|p| p.into_inner()) {
            let _ = h.join();
        }
    }
}

/// The error and its causes, for one log line or status field.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    clock: Arc<dyn Clock>,
    mut opts: WriterOptions,
    health: Arc<WriterHealth>,
) {
    let mut seq = 0u64;
    let mut wal_peak = 0u64;
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(opts.group_commit_max);
    let mut pending: Option<Box<dyn Job>> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        if first.exclusive() {
            match health.poisoned() {
                Some(cause) => first.refuse(Error::Poisoned { cause }),
                None => first.run_exclusive(&mut conn, opts.wal_sync.as_mut(), &health),
            }
            continue;
        }
        group.push(first);
        while group.len() < opts.group_commit_max {
            match rx.try_recv() {
                // An exclusive job waits for the group before it to commit.
                Ok(job) if job.exclusive() => {
                    pending = Some(job);
                    break;
                }
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Some(cause) = health.poisoned() {
            for job in group.drain(..) {
                job.refuse(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            continue;
        }
        let now = clock.now();
        let now_text = format_timestamp(now);
        let started = std::time::Instant::now();
        let (mut dones, mut failure) = run_group(&conn, &mut group, now, &now_text);
        if let Some(cause) = &failure {
            health.poison(cause.clone());
        }
        let succeeded = dones.iter().filter(|d| d.ok).count();
        // Everything that describes a commit (metrics, listeners) happens before anyone is
        // answered: a client that sees its 201 sees the commit counted, and a listener (the
        // replication engine) always hears of a commit before it is acknowledged.
        let mut commit = None;
        if failure.is_none() && succeeded > 0 {
            seq += 1;
            let c = Commit {
                seq,
                requests: succeeded,
                at: now,
                wal_frames: opts.wal_frames.load(Ordering::Relaxed),
            };
            for l in &opts.listeners {
                l.committed(&c);
            }
            let synced = opts
                .wal_sync
                .as_mut()
                .map(|w| w.sync().map_err(|e| w.failed(&e)));
            match synced {
                // The group is answered as failed and the writer poisons itself (an fsync is never
                // retried); but the commit is in the WAL, readers may have seen it and the shipper
                // may have shipped it: the cause says its outcome is unknown.
                Some(Err(cause)) => {
                    health.poison(cause.clone());
                    failure = Some(cause);
                }
                _ => commit = Some(c),
            }
        }
        let committed = commit.is_some();
        let wal_frames = commit.as_ref().map_or(0, |c| c.wal_frames);
        if let Some(commit) = &commit {
            for done in dones.iter().filter(|d| d.ok) {
                for (table, n) in &done.rows {
                    m::rows_written(table, *n);
                }
            }
            m::commit(started.elapsed(), succeeded);
            wal_peak = wal_peak.max(wal_frames);
            m::wal_frames(wal_frames, wal_peak);
            if let Some(gate) = &opts.gate {
                let finishes: Vec<Finish> = std::mem::take(&mut dones)
                    .into_iter()
                    .map(|d| d.finish)
                    .collect();
                gate.hold(
                    commit,
                    Box::new(move |replicated| {
                        let outcome = match &replicated {
                            Ok(()) => Outcome::Committed,
                            Err(cause) => Outcome::NotReplicated(cause),
                        };
                        for finish in finishes {
                            finish(outcome);
                        }
                    }),
                );
            }
        }
        if !dones.is_empty() {
            let outcome = match &failure {
                Some(cause) => Outcome::Failed(cause),
                None => Outcome::Committed,
            };
            for done in dones {
                (done.finish)(outcome);
            }
        }
        if !committed {
            continue;
        }
        if let Some(request) = &opts.checkpoint_request
            && wal_frames >= opts.checkpoint_wal_frames
        {
            // The checkpointer copies the bulk of the WAL beside the writer, but a checkpoint running
            // beside a writer never ends with every frame copied, and SQLite only restarts the WAL
            // from its beginning when every frame was. So once the checkpointer has left a short tail
            // (or the WAL passes four times the threshold), the writer copies the rest itself
            // between groups; the next transaction then restarts the WAL and it stops growing.
            let backfilled = opts.wal_backfilled.load(Ordering::Relaxed);
            let remaining = if backfilled > wal_frames {
                wal_frames
            } else {
                wal_frames - backfilled
            };
            if remaining <= (opts.checkpoint_wal_frames / 8).max(64)
                || wal_frames >= 4 * opts.checkpoint_wal_frames
            {
                if let Some((_, _, done)) = checkpoint(&conn, &health) {
                    opts.wal_backfilled.store(done, Ordering::Relaxed);
                }
            } else {
                // Full means a checkpoint is already requested; either way the writer goes on.
                let _ = request.try_send(());
            }
        }
    }
    tracing::debug!("store writer stopped");
}

/// Runs one group in one transaction. Returns each job's outcome, and the failure that poisons
/// the writer if the group could not be committed.
fn run_group(
    conn: &Connection,
    group: &mut Vec<Box<dyn Job>>,
    now: Timestamp,
    now_text: &str,
) -> (Vec<Done>, Option<String>) {
    let mut dones = Vec::with_capacity(group.len());
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        // Another process holding the write lock past the busy timeout is not damage: the group
        // fails and the writer stays healthy.
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let cause = format!("begin transaction: {e}");
        for job in group.drain(..) {
            job.refuse(if busy {
                Error::Busy {
                    message: e.to_string(),
                }
            } else {
                Error::Poisoned {
                    cause: cause.clone(),
                }
            });
        }
        return (dones, if busy { None } else { Some(cause) });
    }
    let mut failure: Option<String> = None;
    for job in group.drain(..) {
        if let Some(cause) = &failure {
            job.refuse(Error::Poisoned {
                cause: cause.clone(),
            });
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT request") {
            failure = Some(format!("savepoint: {e}"));
            job.refuse(Error::Poisoned {
                cause: failure.clone().unwrap_or_default(),
            });
            continue;
        }
        let mut tx = Tx {
            conn,
            now,
            now_text,
            rows: Vec::new(),
        };
        let done = job.run(&mut tx);
        let end = if done.ok {
            exec(conn, "RELEASE request")
        } else {
            exec(conn, "ROLLBACK TO request").and_then(|()| exec(conn, "RELEASE request"))
        };
        if let Some(cause) = &done.fatal {
            failure = Some(cause.clone());
        } else if let Err(e) = end {
            failure = Some(format!("end savepoint: {e}"));
        }
        dones.push(done);
    }
    // A group in which every request failed changed nothing: end it without a commit and its fsync.
    let end = if dones.iter().any(|d| d.ok) {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    if failure.is_none()
        && let Err(e) = exec(conn, end)
    {
        failure = Some(format!("{end}: {e}"));
    }
    if failure.is_some() {
        // The transaction may already be gone (SQLite rolls back on some I/O errors).
        let _ = conn.execute_batch("ROLLBACK");
    }
    (dones, failure)
}

/// Runs a transaction-control statement, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs the store's checkpoints on their own connection, so the writer never stalls on one.
pub(crate) fn start_checkpointer(
    conn: Connection,
    requests: std::sync::mpsc::Receiver<()>,
    backfilled: Arc<AtomicU64>,
    health: Arc<WriterHealth>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tradevault-checkpoint".into())
        .spawn(move || {
            // Ends when the writer, holding the sender, stops.
            while requests.recv().is_ok() {
                if let Some((_, _, done)) = checkpoint(&conn, &health) {
                    backfilled.store(done, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| Error::io("start checkpoint thread", "tradevault-checkpoint", e))
}

/// Runs a PASSIVE checkpoint; returns (busy, frames in the WAL, frames copied), or `None` on error.
fn checkpoint(conn: &Connection, health: &WriterHealth) -> Option<(i64, u64, u64)> {
    let started = std::time::Instant::now();
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((busy, log, done)) => {
            m::checkpoint(started.elapsed());
            tracing::debug!(
                busy,
                log_frames = log,
                checkpointed_frames = done,
                "wal checkpoint"
            );
            Some((
                busy,
                u64::try_from(log).unwrap_or(0),
                u64::try_from(done).unwrap_or(0),
            ))
        }
        Err(e) => {
            let err = Error::sqlite("checkpoint wal", e);
            tracing::warn!(error = %error_chain(&err), "wal checkpoint failed");
            if err.is_fatal() {
                health.poison(error_chain(&err));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exclusive job that commits is followed by the WAL's sync before its answer, as a group
    /// is: when the sync fails, the job is answered with the failure and the writer poisons itself.
    #[test]
    fn an_exclusive_job_is_answered_only_after_the_wal_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("t.db");
        let conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE t(x INTEGER);",
        )
        .expect("setup");
        let opts = |wal_sync| WriterOptions {
            group_commit_max: 8,
            queue_max: 8,
            wal_frames: Arc::default(),
            wal_backfilled: Arc::default(),
            checkpoint_request: None,
            checkpoint_wal_frames: 1 << 20,
            listeners: Vec::new(),
            gate: None,
            wal_sync,
        };
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let writer =
            Writer::start(conn, None, clock.clone(), opts(Some(WalSync::new(&db)))).expect("start");
        let insert = |c: &mut Connection| {
            c.execute("INSERT INTO t VALUES (1)", [])
                .map_err(|e| Error::sqlite("insert", e))
        };
        assert_eq!(writer.exclusive_blocking(insert).expect("synced"), 1);
        writer.shutdown();

        // The same, with a WAL name that leads nowhere.
        let conn = Connection::open(&db).expect("open");
        conn.execute_batch("PRAGMA synchronous=NORMAL; SELECT count(*) FROM t;")
            .expect("reopen");
        let nowhere = dir.path().join("nowhere").join("t.db");
        let writer =
            Writer::start(conn, None, clock, opts(Some(WalSync::new(&nowhere)))).expect("start");
        let answer = writer.exclusive_blocking(insert);
        assert!(
            matches!(&answer, Err(Error::Internal { message }) if message.contains("after a commit")),
            "{answer:?}"
        );
        assert!(writer.health.poisoned().is_some(), "the writer is poisoned");
        writer.shutdown();
    }
}
