//! Component tests of the library: a real SQLite store in a temp dir, no HTTP.

mod backup;
mod engine;
mod jobs;
mod litestream;
mod replicate;
mod restore;
mod s3;
mod store;
mod wal;

/// A new database in WAL mode at `db` with the `fills (id, qty)` table the tests write.
pub fn fills_db(db: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, qty TEXT);",
    )
    .expect("schema");
    conn
}

/// A manual clock set to `second` (since the epoch), and the time `ms` milliseconds after it.
pub fn manual_clock(
    second: i64,
) -> (
    std::sync::Arc<tradevault::clock::ManualClock>,
    impl Fn(i64) -> jiff::Timestamp,
) {
    let t0 = jiff::Timestamp::from_second(second).expect("t0");
    let clock = std::sync::Arc::new(tradevault::clock::ManualClock::new(t0));
    (clock, move |ms| t0 + jiff::SignedDuration::from_millis(ms))
}

/// Table contents of a test database's `fills`, for comparing states whatever their page layout.
pub fn rows(db: &std::path::Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, qty FROM fills ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// Inserts one row into `fills` per id, one transaction each (as a bot writes).
pub fn insert_fills(conn: &rusqlite::Connection, ids: std::ops::Range<i64>) {
    for i in ids {
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, printf('%d.5', ?1))",
            [i],
        )
        .expect("insert");
    }
}

/// One database written by another program (`db`), polled every millisecond, with one file
/// replica that gets every file at once and keeps the default retention.
pub fn external_spec(
    db: &std::path::Path,
    replica: &tradevault::replica::Replica,
    checkpoint_wal_bytes: u64,
) -> Vec<tradevault::replicate::DatabaseSpec> {
    use std::time::Duration;
    use tradevault::replicate::{DatabaseSpec, ReplicaSpec, Retention, Source};
    vec![DatabaseSpec {
        name: "bot".into(),
        source: Source::External(db.to_owned()),
        replicas: vec![ReplicaSpec {
            name: "r".into(),
            replica: replica.clone(),
            sync_interval: Duration::ZERO,
            retention: Retention::default(),
        }],
        poll_interval: Duration::from_millis(1),
        checkpoint_wal_bytes,
    }]
}
