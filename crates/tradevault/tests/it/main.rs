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
