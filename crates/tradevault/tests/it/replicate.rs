//! The replicator's sync cycle on a database another connection writes: a snapshot, then one
//! file per sync holding exactly what was committed since, a new snapshot after a WAL reset, and
//! the real `litestream restore` rebuilding every state by TXID.

use crate::rows;
use std::process::Command;

use tradevault::replica::{FileReplica, Replica};
use tradevault::replicate::{Replicator, Synced};

fn insert(conn: &rusqlite::Connection, from: u32, n: u32) {
    for i in from..from + n {
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, printf('%d.%03d', ?1, ?1 % 1000))",
            [i],
        )
        .expect("insert");
    }
}

/// A bot's database in WAL mode with no automatic checkpoint, 100 fills in it, and an empty file
/// replica beside it, all in a temporary directory.
fn bot() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    rusqlite::Connection,
    Replica,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE fills (id INTEGER PRIMARY KEY, qty TEXT);")
        .expect("schema");
    insert(&conn, 0, 100);
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    (dir, db, conn, replica)
}

#[test]
fn each_sync_ships_what_was_committed_and_a_reset_starts_a_new_snapshot() {
    let (dir, db, conn, replica) = bot();
    let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
    let mut states = Vec::new();
    assert!(matches!(
        r.sync(1_000).expect("sync"),
        Synced::Snapshot { txid: 1, .. }
    ));
    states.push(rows(&db));
    assert_eq!(r.sync(2_000).expect("sync"), Synced::Nothing);
    insert(&conn, 100, 5);
    assert!(matches!(
        r.sync(3_000).expect("sync"),
        Synced::Transactions {
            txid: 2,
            transactions: 5,
            ..
        }
    ));
    states.push(rows(&db));
    insert(&conn, 105, 3);
    assert!(matches!(
        r.sync(4_000).expect("sync"),
        Synced::Transactions {
            txid: 3,
            transactions: 3,
            ..
        }
    ));
    states.push(rows(&db));
    // The writer checkpoints and restarts the WAL behind the replicator's back.
    conn.execute_batch("PRAGMA wal_checkpoint(RESTART)")
        .expect("checkpoint");
    insert(&conn, 108, 4);
    assert!(
        matches!(
            r.sync(5_000).expect("sync"),
            Synced::Snapshot { txid: 4, .. }
        ),
        "a reset is never shipped as a continuation"
    );
    states.push(rows(&db));
    insert(&conn, 112, 2);
    assert!(matches!(
        r.sync(6_000).expect("sync"),
        Synced::Transactions {
            txid: 5,
            transactions: 2,
            ..
        }
    ));
    states.push(rows(&db));
    assert_eq!(
        replica.list(9).expect("list").len(),
        1,
        "the second snapshot is at level 9"
    );
    // A new replicator on the same replica goes on after the newest TXID.
    assert_eq!(
        Replicator::new(&db, replica.clone()).expect("again").txid(),
        5
    );

    let Some(bin) = crate::litestream::litestream() else {
        eprintln!("litestream not found (set TRADEVAULT_LITESTREAM): restore checks skipped");
        return;
    };
    let latest = dir.path().join("latest.db");
    let out = Command::new(&bin)
        .arg("restore")
        .arg("-o")
        .arg(&latest)
        .arg(replica.describe())
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rows(&latest), rows(&db), "the latest state");
    let integrity: String = rusqlite::Connection::open(&latest)
        .expect("open")
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(integrity, "ok");
    for (i, want) in states.iter().enumerate() {
        let txid = format!("{:016x}", i + 1);
        let out_path = dir.path().join(format!("txid-{}.db", i + 1));
        let out = Command::new(&bin)
            .args(["restore", "-txid", &txid, "-o"])
            .arg(&out_path)
            .arg(replica.describe())
            .output()
            .expect("restore");
        assert!(
            out.status.success(),
            "txid {txid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&rows(&out_path), want, "the state at txid {}", i + 1);
    }
}

/// Sync mode's merged local log (`Replicator::defer_local`): each shipment goes to `on_encoded`
/// at once, and into the replica only with `flush_local`, as one file; a snapshot and a saved
/// position write what waits first, so the replica never has a gap and every state restores.
#[test]
fn deferred_shipments_reach_the_replica_as_one_file_before_a_snapshot_or_a_saved_position() {
    use std::sync::{Arc, Mutex};
    use tradevault::restore::{self, Target};

    let (dir, db, conn, replica) = bot();
    let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
    let encoded = Arc::new(Mutex::new(Vec::new()));
    let seen = encoded.clone();
    r.on_encoded(Box::new(move |_, txid, _| seen.lock().unwrap().push(txid)));
    r.defer_local(true);
    let level0 = || -> Vec<(u64, u64)> {
        let mut files: Vec<(u64, u64)> = replica
            .list(0)
            .expect("list")
            .iter()
            .map(|f| (f.min_txid, f.max_txid))
            .collect();
        files.sort_unstable();
        files
    };
    let latest = |name: &str| {
        let out = dir.path().join(name);
        let plan = restore::plan(&replica, Target::Latest).expect("plan");
        restore::apply(&replica, &plan, &out).expect("restore");
        rows(&out)
    };

    assert!(matches!(
        r.sync(1_000).expect("sync"),
        Synced::Snapshot { txid: 1, .. }
    ));
    assert_eq!(r.pending_since(), None, "a snapshot is never deferred");
    insert(&conn, 100, 5);
    assert_eq!(r.sync(2_000).expect("sync"), Synced::Deferred { txid: 2 });
    // The same rows again: the merged file keeps each page's newest version.
    conn.execute("UPDATE fills SET qty = qty || '0' WHERE id >= 100", [])
        .expect("update");
    insert(&conn, 105, 3);
    assert_eq!(r.sync(3_000).expect("sync"), Synced::Deferred { txid: 3 });
    assert_eq!(
        *encoded.lock().unwrap(),
        vec![2, 3],
        "each shipment is handed over at once"
    );
    assert_eq!(
        level0(),
        vec![(1, 1)],
        "nothing reaches the replica before the flush"
    );
    assert!(r.pending_since().is_some() && r.pending_bytes() > 0);

    r.flush_local().expect("flush");
    assert_eq!(
        level0(),
        vec![(1, 1), (2, 3)],
        "one file for both shipments"
    );
    let flushed = r.take_flushed();
    assert_eq!(flushed.len(), 1);
    assert_eq!((flushed[0].0.min_txid, flushed[0].0.max_txid), (2, 3));
    assert_eq!(
        flushed[0].0.created_at_ms, 2_000,
        "listed at the first shipment's time"
    );
    assert_eq!(flushed[0].1, 3_001, "made at the last one's");
    assert_eq!(latest("a.db"), rows(&db));
    r.flush_local().expect("nothing to flush");
    assert_eq!(level0(), vec![(1, 1), (2, 3)]);

    // A reset: the snapshot that follows is numbered after what waited, which goes in first.
    insert(&conn, 108, 2);
    assert_eq!(r.sync(4_000).expect("sync"), Synced::Deferred { txid: 4 });
    conn.execute_batch("PRAGMA wal_checkpoint(RESTART)")
        .expect("checkpoint");
    insert(&conn, 110, 1);
    assert!(matches!(
        r.sync(5_000).expect("sync"),
        Synced::Snapshot { txid: 5, .. }
    ));
    assert_eq!(level0(), vec![(1, 1), (2, 3), (4, 4)]);
    assert_eq!(r.take_flushed().len(), 1);
    assert_eq!(latest("b.db"), rows(&db));

    // A clean stop saves a position only after what waits is in.
    insert(&conn, 111, 2);
    assert_eq!(r.sync(6_000).expect("sync"), Synced::Deferred { txid: 6 });
    let saved = dir.path().join("saved");
    std::fs::create_dir(&saved).expect("dir");
    r.save(&saved).expect("save");
    assert_eq!(level0(), vec![(1, 1), (2, 3), (4, 4), (6, 6)]);
    assert!(saved.join("position.json").exists());
    assert_eq!(latest("c.db"), rows(&db));
    let mut again = Replicator::new(&db, replica.clone()).expect("again");
    assert!(
        again.load_saved(&saved),
        "the saved position continues the history"
    );
    assert_eq!(again.txid(), 6);

    // A flush that fails: its TXID is never used again, and a snapshot past it follows.
    insert(&conn, 113, 2);
    assert_eq!(r.sync(7_000).expect("sync"), Synced::Deferred { txid: 7 });
    let level_dir = dir.path().join("replica/ltx/0");
    let moved = dir.path().join("replica/ltx/0.moved");
    std::fs::rename(&level_dir, &moved).expect("move the level away");
    std::fs::write(&level_dir, b"not a directory").expect("block it");
    assert!(r.flush_local().is_err());
    assert!(r.take_flush_failed(), "the failure is told once");
    assert!(!r.take_flush_failed());
    std::fs::remove_file(&level_dir).expect("unblock");
    std::fs::rename(&moved, &level_dir).expect("move back");
    insert(&conn, 115, 1);
    assert!(matches!(
        r.sync(8_000).expect("sync"),
        Synced::Snapshot { txid: 8, .. }
    ));
    assert_eq!(
        level0(),
        vec![(1, 1), (2, 3), (4, 4), (6, 6)],
        "TXID 7 never appears"
    );
    assert_eq!(latest("d.db"), rows(&db));
}
