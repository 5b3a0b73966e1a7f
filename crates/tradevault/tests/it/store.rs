//! The store's concurrency seams: the reader pool and the writer under misuse.

use std::sync::Arc;
use std::time::Duration;

use tradevault::clock::SystemClock;
use tradevault::config::StoreConfig;
use tradevault::{Error, Store};

fn open(dir: &std::path::Path, read_connections: u64) -> Store {
    let config = StoreConfig {
        data_dir: dir.to_owned(),
        read_connections,
        ..Default::default()
    };
    Store::open(&config, Arc::new(SystemClock)).expect("open store")
}

/// A read whose caller stops waiting (a request timeout, a client gone) still returns its
/// connection to the pool: later reads keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_read_gives_its_connection_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1);
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let slow = store.read(move |_conn| {
        let _ = started_tx.send(());
        let _ = release_rx.recv();
        Ok(())
    });
    // Drop the read's future while its closure is running on the blocking pool.
    let cancelled = tokio::time::timeout(Duration::from_millis(1), slow).await;
    assert!(cancelled.is_err(), "the read was cancelled");
    tokio::task::spawn_blocking(move || started_rx.recv())
        .await
        .expect("join")
        .expect("read started");
    release_tx.send(()).expect("release");
    for _ in 0..3 {
        let n: i64 = store
            .read(|c| {
                c.query_row("SELECT count(*) FROM trades", [], |r| r.get(0))
                    .map_err(|e| Error::sqlite("count", e))
            })
            .await
            .expect("later reads work");
        assert_eq!(n, 0);
    }
}

/// A write closure that panics abandons its transaction and poisons the writer: nothing half-done
/// is committed and the store says it is unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_write_poisons_the_writer_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), 1);
    let result: tradevault::Result<()> = store
        .write(|tx| {
            tx.conn
                .execute("INSERT INTO logs (ts, level, source, message, created_at) VALUES ('t', 'info', 's', 'm', 't')", [])
                .map_err(|e| Error::sqlite("insert", e))?;
            panic!("a bug inside a write");
        })
        .await;
    assert!(result.is_err(), "the caller is answered with an error");
    assert!(
        store.unavailable().is_some(),
        "the store reports itself unavailable"
    );
    let again = store.write(|_| Ok(())).await;
    assert!(matches!(again, Err(Error::Poisoned { .. })), "{again:?}");
    let logs: i64 = store
        .read(|c| {
            c.query_row("SELECT count(*) FROM logs", [], |r| r.get(0))
                .map_err(|e| Error::sqlite("count", e))
        })
        .await
        .expect("read");
    assert_eq!(logs, 0, "the panicking request's row was rolled back");
}

/// Holds nothing: answers go at once, and each commit it saw is counted.
struct CountingGate(std::sync::atomic::AtomicU64);

impl tradevault::store::writer::CommitGate for CountingGate {
    fn hold(
        &self,
        _commit: &tradevault::store::Commit,
        release: tradevault::store::writer::Release,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        release(Ok(()));
    }
}

/// In synchronous mode the writer commits without SQLite's fsync and makes the WAL durable
/// itself, beside the replication engine: a commit whose WAL it cannot sync is answered as a
/// failed commit (the writer poisons itself), and never reaches the gate that would acknowledge it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_mode_a_commit_whose_wal_cannot_be_synced_is_not_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(CountingGate(Default::default()));
    let config = StoreConfig {
        data_dir: dir.path().to_owned(),
        read_connections: 1,
        ..Default::default()
    };
    let hooks = tradevault::store::Hooks {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let store = Store::open_with(&config, Arc::new(SystemClock), hooks).expect("open store");
    // SQLite keeps writing the WAL it has open; the name the writer syncs by now leads nowhere.
    let wal = store.path().with_extension("db-wal");
    assert!(wal.exists(), "{} exists", wal.display());
    std::fs::rename(&wal, dir.path().join("moved-wal")).expect("move the wal");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &wal).expect("dangling link");
    let result = store
        .write(|tx| {
            tx.conn
                .execute("INSERT INTO logs (ts, level, source, message, created_at) VALUES ('t', 'info', 's', 'm', 't')", [])
                .map_err(|e| Error::sqlite("insert", e))?;
            Ok(())
        })
        .await;
    assert!(matches!(result, Err(Error::Poisoned { .. })), "{result:?}");
    assert_eq!(
        gate.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the gate never saw the commit"
    );
    let cause = store
        .unavailable()
        .expect("the store says it is unavailable");
    assert!(cause.contains("after a commit"), "{cause}");
}
