//! The trading journal on embedded SQLite: open with durable pragmas, refuse corrupt files,
//! migrate, then serve writes through the single [`writer`] and reads through a pool of
//! read-only connections.
//!
//! Only this module (and, later, `wal`) opens SQLite.

mod backups;
pub mod model;
pub mod position;
pub mod query;
pub mod schema;
mod stats;
mod write;
pub mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use self::model::*;
pub use self::stats::{Check, CheckReport, Stats, recompute_positions};
use self::writer::{CheckpointOwner, CommitGate, CommitListener, WalSync, Writer, WriterOptions};
pub use self::writer::{Commit, Tx};
use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::error::{Error, Result};

/// File name of the store's database inside the data directory.
pub const DATABASE_FILE: &str = "tradevault.db";

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Extra wiring for [`Store::open_with`]: who is told about commits and who checkpoints.
pub struct Hooks {
    /// Told about every commit.
    pub listeners: Vec<Arc<dyn CommitListener>>,
    /// Who checkpoints the WAL.
    pub checkpoint: CheckpointOwner,
    /// Holds answers until commits are replicated (synchronous replication).
    pub gate: Option<Arc<dyn CommitGate>>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            listeners: Vec::new(),
            checkpoint: CheckpointOwner::Store,
            gate: None,
        }
    }
}

/// An open store: one writer thread, a pool of readers, and an exclusive lock on the data directory.
pub struct Store {
    path: PathBuf,
    writer: Writer,
    readers: Arc<ReaderPool>,
    integrity: Mutex<(String, jiff::Timestamp)>,
    clock: Arc<dyn Clock>,
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `config.data_dir`, with the writer checkpointing.
    pub fn open(config: &StoreConfig, clock: Arc<dyn Clock>) -> Result<Store> {
        Store::open_with(config, clock, Hooks::default())
    }

    /// Opens the store with commit listeners and a checkpoint owner.
    pub fn open_with(config: &StoreConfig, clock: Arc<dyn Clock>, hooks: Hooks) -> Result<Store> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create data directory", dir, e))?;
        let path = dir.join(DATABASE_FILE);
        let lock = lock_data_dir(dir)?;
        refuse_foreign_file(&path)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(|e| Error::sqlite("open database", e))?;
        // Until the file has passed its check nothing may write to it: closing this connection
        // must not checkpoint a WAL into a damaged database (and delete the evidence).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| Error::sqlite("configure database", e))?;
        configure(&conn, config, &path)?;
        let integrity = quick_check(&conn, &path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_query_value(None, "journal_mode", |r| r.get::<_, String>(0)))
            .map_err(|e| Error::sqlite_at(&path, "enable WAL", e))
            .and_then(|mode| {
                if mode.eq_ignore_ascii_case("wal") {
                    Ok(())
                } else {
                    Err(Error::Corrupt {
                        path: path.clone(),
                        detail: format!("journal_mode stays {mode}, not wal"),
                    })
                }
            })?;
        schema::migrate(&conn, &path)?;
        // In synchronous mode the writer flushes the WAL itself, beside the shipper (`WalSync`).
        let sync_wal = hooks.gate.is_some();
        let pragmas = [
            (
                "synchronous",
                if sync_wal { "NORMAL" } else { "FULL" }.to_owned(),
            ),
            ("foreign_keys", "ON".to_owned()),
            ("wal_autocheckpoint", "0".to_owned()),
            (
                "journal_size_limit",
                config.checkpoint_wal_bytes.to_string(),
            ),
        ];
        for (name, value) in pragmas {
            conn.pragma_update(None, name, &value)
                .map_err(|e| Error::sqlite("set write pragmas", e))?;
        }
        if hooks.checkpoint == CheckpointOwner::Store {
            // A clean shutdown may fold the WAL into the database; with an external owner (the
            // replication engine) only the owner checkpoints, so frames are never lost to it.
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
                .map_err(|e| Error::sqlite("configure database", e))?;
        }
        let readers = (0..config.read_connections)
            .map(|_| open_reader(&path, config))
            .collect::<Result<Vec<_>>>()?;
        let checkpoint_conn = match hooks.checkpoint {
            CheckpointOwner::Store => Some(open_checkpointer(&path, config)?),
            CheckpointOwner::External => None,
        };
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(|e| Error::sqlite("read page size", e))?;
        let writer = Writer::start(
            conn,
            checkpoint_conn,
            clock.clone(),
            WriterOptions {
                group_commit_max: usize::try_from(config.group_commit_max).unwrap_or(usize::MAX),
                queue_max: usize::try_from(config.write_queue_max).unwrap_or(usize::MAX),
                wal_frames: Arc::default(),
                wal_backfilled: Arc::default(),
                checkpoint_request: None,
                checkpoint_wal_frames: (config.checkpoint_wal_bytes / page_size.max(512) as u64)
                    .max(1),
                listeners: hooks.listeners,
                gate: hooks.gate,
                wal_sync: sync_wal.then(|| WalSync::new(&path)),
            },
        )?;
        let now = clock.now();
        tracing::info!(path = %path.display(), schema_version = schema::SCHEMA_VERSION, "store opened");
        Ok(Store {
            path,
            writer,
            readers: Arc::new(ReaderPool {
                permits: Arc::new(Semaphore::new(readers.len())),
                conns: Mutex::new(readers),
            }),
            integrity: Mutex::new((integrity, now)),
            clock,
            _lock: lock,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the store cannot take writes (poisoned, or its writer stopped), if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        match self.writer.health.poisoned() {
            Some(cause) => Some(cause),
            None if !self.writer.alive() => Some("the store writer has stopped".into()),
            None => None,
        }
    }

    /// Stops accepting work, lets the writer finish its queue and closes the database.
    pub fn close(self) {
        let Store {
            writer, readers, ..
        } = self;
        drop(readers);
        writer.shutdown();
    }

    /// Runs `f` in the next group commit; returns once the commit is durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.write(f).await
    }

    /// Runs `f` on the write connection between two groups, outside any transaction, with nothing
    /// committing meanwhile. For the replication engine; call it from a plain thread, not async code.
    pub fn exclusive_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.writer.exclusive_blocking(f)
    }

    /// Runs `f` on a read-only connection, off the async threads. The connection goes back to the
    /// pool when `f` ends, even if the caller stopped waiting or `f` panicked.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::WriterStopped)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = Pooled::take(pool)?;
            f(&conn)
        })
        .await
        .map_err(|_| Error::Internal {
            message: "a read panicked; see the server log".into(),
        })?
    }

    /// Stores trades atomically: all of them (each new one applied to its position) or none.
    /// Each result says whether the trade was created or is an identical re-send.
    pub async fn insert_trades(
        &self,
        trades: Vec<NewTrade>,
        batch: bool,
    ) -> Result<Vec<(Trade, bool)>> {
        self.write_all(trades, batch, write::insert_trade).await
    }

    /// Stores orders atomically.
    pub async fn insert_orders(
        &self,
        orders: Vec<NewOrder>,
        batch: bool,
    ) -> Result<Vec<(Order, bool)>> {
        self.write_all(orders, batch, write::insert_order).await
    }

    /// Writes every item with `one` in one request: all of them or none. Inside a batch, errors
    /// name the item (`[3].qty`).
    async fn write_all<I, T>(
        &self,
        items: Vec<I>,
        batch: bool,
        one: fn(&mut Tx<'_>, &I, &str) -> Result<T>,
    ) -> Result<Vec<T>>
    where
        I: Send + 'static,
        T: Send + 'static,
    {
        self.write(move |tx| {
            items
                .iter()
                .enumerate()
                .map(|(i, item)| one(tx, item, &write::field_prefix(batch, i)))
                .collect()
        })
        .await
    }

    /// Changes an order's status.
    pub async fn update_order_status(
        &self,
        client_order_id: String,
        status: String,
    ) -> Result<(Order, bool)> {
        self.write(move |tx| write::update_order_status(tx, &client_order_id, &status))
            .await
    }

    /// Stores signals atomically.
    pub async fn insert_signals(
        &self,
        signals: Vec<NewSignal>,
        batch: bool,
    ) -> Result<Vec<(Signal, bool)>> {
        self.write_all(signals, batch, write::insert_signal).await
    }

    /// Appends log entries atomically.
    pub async fn insert_logs(&self, logs: Vec<NewLog>) -> Result<Vec<LogEntry>> {
        self.write(move |tx| logs.iter().map(|l| write::insert_log(tx, l)).collect())
            .await
    }

    /// Sets a status value.
    pub async fn put_status(
        &self,
        key: String,
        value: serde_json::Value,
        test_mode: bool,
        bot_version: Option<String>,
    ) -> Result<Status> {
        self.write(move |tx| write::put_status(tx, &key, &value, test_mode, bot_version.as_deref()))
            .await
    }

    /// Replaces the store's mirror of one backup target's catalog (`backup_metadata`,
    /// `backup_drills`) with `catalog`.
    pub async fn mirror_backups(
        &self,
        target: String,
        url: String,
        catalog: crate::backup::Catalog,
    ) -> Result<()> {
        self.write(move |tx| backups::mirror(tx, &target, &url, &catalog.backups, &catalog.drills))
            .await
    }

    /// Row counts, file sizes, pages, schema version and the last integrity result. With
    /// `check_now`, runs `PRAGMA quick_check` first.
    pub async fn stats(&self, check_now: bool) -> Result<Stats> {
        let path = self.path.clone();
        if check_now {
            let p = path.clone();
            let result = self
                .read(move |conn| stats::quick_check_text(conn, &p))
                .await?;
            *self.integrity.lock().unwrap_or_else(|p| p.into_inner()) = (result, self.clock.now());
        }
        let (integrity, checked_at) = self
            .integrity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.read(move |conn| stats::collect(conn, &path, integrity, Some(checked_at)))
            .await
    }
}

/// The read-only connections, and permits that bound how many are in use.
struct ReaderPool {
    permits: Arc<Semaphore>,
    conns: Mutex<Vec<Connection>>,
}

/// A connection taken from the pool; it goes back on drop, whatever happened while it was out.
struct Pooled {
    pool: Arc<ReaderPool>,
    conn: Option<Connection>,
}

impl Pooled {
    fn take(pool: Arc<ReaderPool>) -> Result<Pooled> {
        let conn = pool.conns.lock().unwrap_or_else(|p| p.into_inner()).pop();
        // A permit is held for every connection out, so the pool is never empty here.
        let conn = conn.ok_or_else(|| Error::Internal {
            message: "reader pool is empty".into(),
        })?;
        Ok(Pooled {
            pool,
            conn: Some(conn),
        })
    }
}

impl std::ops::Deref for Pooled {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present from take() until drop.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("connection taken twice"))
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

/// Opens an existing store read-only, for `stats` and `check` beside a running server.
/// Refuses a missing or foreign file; never migrates or writes.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::NotInitialized {
            path: path.to_owned(),
        });
    }
    refuse_foreign_file(path)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open database read-only", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| Error::sqlite("set busy timeout", e))?;
    let version = schema::version(&conn).map_err(|_| Error::Corrupt {
        path: path.to_owned(),
        detail: "cannot read the header".into(),
    })?;
    if version > schema::SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            known: schema::SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// Runs the checks of `tradevault check` on a connection to the store.
pub fn check(conn: &Connection, path: &Path, full: bool) -> Result<CheckReport> {
    stats::check(conn, path, full)
}

/// Counts and sizes of the store at `path`, as `tradevault stats` shows them.
pub fn stats_of(conn: &Connection, path: &Path) -> Result<Stats> {
    let integrity = stats::quick_check_text(conn, path)?;
    stats::collect(conn, path, integrity, None)
}

/// The WAL file beside a database.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    let lock_path = dir.join(format!("{DATABASE_FILE}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("open lock file", &lock_path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path: lock_path }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io("lock data directory", &lock_path, e))
        }
    }
}

/// Refuses a non-empty file that does not start with SQLite's magic: never let SQLite "open" it.
fn refuse_foreign_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 16];
    // Through a held descriptor: this runs beside live connections too (a drill inside the
    // server), and closing a descriptor of our own would release their locks (see `held`).
    match crate::held::open(path) {
        Ok(f) => {
            let n = f
                .read_at(&mut header, 0)
                .map_err(|e| Error::io("read database header", path, e))?;
            if n == 0 || (n == 16 && &header == SQLITE_MAGIC) {
                Ok(())
            } else {
                Err(Error::Corrupt {
                    path: path.to_owned(),
                    detail: "the file is not a SQLite database (bad header)".into(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("open database", path, e)),
    }
}

fn configure(conn: &Connection, config: &StoreConfig, path: &Path) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(config.busy_timeout_ms))
        .map_err(|e| Error::sqlite("set busy timeout", e))?;
    let cache = -i64::try_from(config.cache_kib).unwrap_or(i64::MAX);
    conn.pragma_update(None, "cache_size", cache)
        .map_err(|e| Error::sqlite_at(path, "set cache size", e))?;
    Ok(())
}

/// The checkpointer's connection: it writes checkpointed pages into the database file, never rows.
fn open_checkpointer(path: &Path, config: &StoreConfig) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open checkpoint connection", e))?;
    configure(&conn, config, path)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| Error::sqlite("set checkpoint pragmas", e))?;
    Ok(conn)
}

fn open_reader(path: &Path, config: &StoreConfig) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite("open read connection", e))?;
    configure(&conn, config, path)?;
    Ok(conn)
}

fn quick_check(conn: &Connection, path: &Path) -> Result<String> {
    let result = stats::quick_check_text(conn, path)?;
    if result != "ok" {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: result,
        });
    }
    Ok(result)
}
