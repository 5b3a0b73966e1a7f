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

#[test]
fn each_sync_ships_what_was_committed_and_a_reset_starts_a_new_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE fills (id INTEGER PRIMARY KEY, qty TEXT);")
        .expect("schema");
    insert(&conn, 0, 100);
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
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
