//! The WAL reader against WAL files that real SQLite wrote.

use std::path::Path;

use tradevault::wal::WalReader;

/// A database in WAL mode that never checkpoints on its own, so the WAL keeps every commit.
fn writer(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .expect("config");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        .expect("schema");
    conn
}

fn write_rows(conn: &rusqlite::Connection, from: u32, n: u32) {
    for i in from..from + n {
        conn.execute(
            "INSERT INTO t (id, v) VALUES (?1, printf('%.500c', 'x'))",
            [i],
        )
        .expect("insert");
    }
}

/// The database file with `transactions` applied over it, cut to the last commit's size.
fn replay(
    db_file: &[u8],
    page_size: usize,
    transactions: &[tradevault::wal::Transaction],
) -> Vec<u8> {
    let mut image = db_file.to_vec();
    for t in transactions {
        image.resize(t.commit as usize * page_size, 0);
        for (pgno, data) in &t.pages {
            let at = (*pgno as usize - 1) * page_size;
            image[at..at + page_size].copy_from_slice(data);
        }
    }
    image
}

#[test]
fn transactions_replayed_over_the_database_give_the_checkpointed_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let conn = writer(&db);
    write_rows(&conn, 0, 60);
    let before = std::fs::read(&db).expect("db file");
    let mut reader = WalReader::open(&dir.path().join("a.db-wal"))
        .expect("open")
        .expect("a wal exists");
    let page_size = reader.header().page_size as usize;
    let mut transactions = Vec::new();
    while let Some(t) = reader.next_transaction().expect("read") {
        transactions.push(t);
    }
    assert_eq!(transactions.len(), 61, "the schema, then one per insert");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let after = std::fs::read(&db).expect("db file");
    assert_eq!(replay(&before, page_size, &transactions), after);
}

#[test]
fn a_torn_or_damaged_tail_ends_the_log_and_resuming_continues_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let conn = writer(&db);
    write_rows(&conn, 0, 5);
    let wal_path = dir.path().join("a.db-wal");
    let wal = std::fs::read(&wal_path).expect("wal");
    let count = |bytes: &[u8]| {
        let p = dir.path().join("copy-wal");
        std::fs::write(&p, bytes).expect("write copy");
        let mut r = WalReader::open(&p).expect("open").expect("wal");
        std::iter::from_fn(|| r.next_transaction().expect("read")).count()
    };
    let all = count(&wal);
    assert_eq!(all, 6, "the schema, then one per insert");
    assert_eq!(
        count(&wal[..wal.len() - 100]),
        all - 1,
        "a torn last frame drops only its transaction"
    );
    let mut flipped = wal.clone();
    let at = wal.len() - 2000;
    flipped[at] ^= 0x40;
    assert_eq!(
        count(&flipped),
        all - 1,
        "a damaged last frame fails its checksum"
    );
    let mut reader = WalReader::open(&wal_path).expect("open").expect("wal");
    while reader.next_transaction().expect("read").is_some() {}
    let position = reader.position();
    write_rows(&conn, 100, 3);
    let mut resumed = WalReader::resume(&wal_path, position)
        .expect("resume")
        .expect("same generation");
    let new: Vec<_> = std::iter::from_fn(|| resumed.next_transaction().expect("read")).collect();
    assert_eq!(new.len(), 3, "exactly the transactions written since");
    assert_eq!(new[0].start, position.offset);
}

#[test]
fn a_wal_reset_behind_our_back_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("a.db");
    let conn = writer(&db);
    write_rows(&conn, 0, 3);
    let wal_path = dir.path().join("a.db-wal");
    let mut reader = WalReader::open(&wal_path).expect("open").expect("wal");
    while reader.next_transaction().expect("read").is_some() {}
    let position = reader.position();
    // Another program checkpoints and restarts the WAL; new frames get new salts.
    conn.execute_batch("PRAGMA wal_checkpoint(RESTART)")
        .expect("checkpoint");
    write_rows(&conn, 10, 2);
    assert!(
        WalReader::resume(&wal_path, position)
            .expect("resume")
            .is_none(),
        "a new generation is never read as a continuation"
    );
    let mut fresh = WalReader::open(&wal_path).expect("open").expect("wal");
    assert_ne!(
        (fresh.header().salt1, fresh.header().salt2),
        (position.salt1, position.salt2)
    );
    assert_eq!(
        std::iter::from_fn(|| fresh.next_transaction().expect("read")).count(),
        2
    );
}

/// The WAL header holds a 64 KiB page size literally (the database header encodes it as 1).
#[test]
fn sixty_four_kib_pages_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("big.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .expect("config");
    conn.execute_batch("PRAGMA page_size=65536; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (x);")
        .expect("schema");
    conn.execute("INSERT INTO t VALUES (1)", [])
        .expect("insert");
    let mut reader = WalReader::open(&dir.path().join("big.db-wal"))
        .expect("open")
        .expect("a wal");
    assert_eq!(reader.header().page_size, 65_536);
    assert_eq!(
        std::iter::from_fn(|| reader.next_transaction().expect("read")).count(),
        2
    );
}
