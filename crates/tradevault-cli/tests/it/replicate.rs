//! `tradevault replicate` as a sidecar for a database another program writes: it ships each
//! sync's transactions, survives that program resetting the WAL, and the real `litestream
//! restore` rebuilds the program's database from our replica, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::command;

fn litestream() -> Option<PathBuf> {
    let found = std::env::var_os("TRADEVAULT_LITESTREAM").map(PathBuf::from);
    if found.is_none() && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "litestream 0.5.17 is required in CI; .ci/run installs it and sets TRADEVAULT_LITESTREAM"
        );
    }
    found
}

fn sync(db: &Path, replica: &Path) -> Value {
    let out = command()
        .args(["replicate", "--once", "--json"])
        .arg(db)
        .arg(format!("file://{}", replica.display()))
        .output()
        .expect("run replicate");
    assert!(
        out.status.success(),
        "replicate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    report[0].clone()
}

fn insert(conn: &rusqlite::Connection, from: u32, n: u32) {
    for i in from..from + n {
        conn.execute("INSERT INTO fills (id, symbol, qty) VALUES (?1, 'SYM' || (?1 % 7), printf('%d.%03d', ?1, ?1 % 1000))", [i])
            .expect("insert");
    }
}

#[test]
fn a_database_written_by_another_program_is_replicated_and_restorable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let replica = dir.path().join("replica");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);").expect("schema");
    insert(&conn, 0, 200);
    let first = sync(&db, &replica);
    assert_eq!(
        (first["shipped"].as_str(), first["txid"].as_u64()),
        (Some("snapshot"), Some(1)),
        "{first}"
    );
    insert(&conn, 200, 50);
    let second = sync(&db, &replica);
    // A new process does not know the old WAL position: it starts with a snapshot at level 9.
    assert_eq!(
        (second["shipped"].as_str(), second["txid"].as_u64()),
        (Some("snapshot"), Some(2)),
        "{second}"
    );
    assert!(
        replica
            .join("ltx/9/0000000000000001-0000000000000002.ltx")
            .is_file()
    );
    // The writer resets the WAL behind our back, then goes on writing.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    insert(&conn, 250, 30);
    let third = sync(&db, &replica);
    assert_eq!(third["txid"].as_u64(), Some(3), "{third}");
    let Some(bin) = litestream() else {
        eprintln!("litestream not found (set TRADEVAULT_LITESTREAM): restore check skipped");
        return;
    };
    let restored = dir.path().join("restored.db");
    let out = Command::new(bin)
        .args(["restore", "-o"])
        .arg(&restored)
        .arg(format!("file://{}", replica.display()))
        .output()
        .expect("litestream restore");
    assert!(
        out.status.success(),
        "litestream restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let (restored, original) = (
        std::fs::read(&restored).expect("restored"),
        std::fs::read(&db).expect("db"),
    );
    assert!(
        restored == original,
        "byte for byte ({} and {} bytes)",
        restored.len(),
        original.len()
    );
}

#[test]
fn replicate_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("plain.db");
    rusqlite::Connection::open(&db)
        .expect("open")
        .execute_batch("CREATE TABLE t (x)")
        .expect("create");
    let run = |args: &[&str]| command().arg("replicate").args(args).output().expect("run");
    let url = format!("file://{}", dir.path().join("r").display());
    let out = run(&[db.to_str().expect("utf8"), &url, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in WAL mode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(&[db.to_str().expect("utf8"), "s3://bucket/x", "--once"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&[db.to_str().expect("utf8"), "relative/path", "--once"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["/no/such.db", &url, "--once"]).status.code(), Some(2));
}

#[test]
fn restore_rebuilds_a_litestream_replica_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/ltx-litestream-0.5.17");
    let url = format!(
        "file://{}",
        fixtures
            .join("replica")
            .canonicalize()
            .expect("fixture")
            .display()
    );
    let out = dir.path().join("out.db");
    let run = |extra: &[&str]| {
        command()
            .args(["restore", "--replica", &url])
            .args(extra)
            .output()
            .expect("run restore")
    };
    let dry = run(&[
        "--output",
        out.to_str().expect("utf8"),
        "--dry-run",
        "--json",
    ]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let plan: Value = serde_json::from_slice(&dry.stdout).expect("plan json");
    assert_eq!(plan["txid"], 16);
    assert!(!out.exists(), "a dry run writes nothing");
    let done = run(&["--output", out.to_str().expect("utf8")]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(String::from_utf8_lossy(&done.stdout).contains("integrity ok"));
    let (got, want) = (
        std::fs::read(&out).expect("out"),
        std::fs::read(fixtures.join("restored-latest.db")).expect("want"),
    );
    assert!(got == want, "byte for byte what litestream restore made");
    let again = run(&["--output", out.to_str().expect("utf8")]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let txid = run(&[
        "--output",
        dir.path().join("t5.db").to_str().expect("utf8"),
        "--txid",
        "5",
        "--json",
    ]);
    assert!(
        txid.status.success(),
        "{}",
        String::from_utf8_lossy(&txid.stderr)
    );
    assert_eq!(
        run(&["--output", "x.db", "--txid", "five"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&["--output", "x.db", "--timestamp", "noon"])
            .status
            .code(),
        Some(2)
    );
}
