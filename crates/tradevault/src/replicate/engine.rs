//! [`Engine`]: replicates the store continuously, from inside `tradevault serve`, and owns its
//! checkpoints so the WAL is never reset before every replica has it.

use super::{Replicator, Synced};
use crate::error::{Error, Result};
use crate::replica::Replica;
use crate::store::wal_path;
use crate::wal::WalReader;

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
        replicas: Vec<(String, Replica)>,
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
