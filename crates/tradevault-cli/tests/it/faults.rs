//! Faults: corrupt files are refused and left untouched, a second server on the same store is
//! refused, and a full disk poisons the writer without losing an acknowledged write.

use std::process::Command;

use serde_json::json;

use crate::common::{Server, command, open_db};

fn serve_fails(dir: &std::path::Path) -> String {
    let err = Server::try_start(command(), dir, &[])
        .err()
        .expect("the server refuses to start");
    assert!(err.contains("exit status: 1"), "{err}");
    err
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tradevault.db");
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).expect("write");
    let err = serve_fails(dir.path());
    assert!(
        err.contains("is corrupt") && err.contains("hint: the file was not opened for writing"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        garbage,
        "the file is untouched"
    );
}

#[test]
fn a_damaged_database_is_refused_with_a_hint_to_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = Server::start(dir.path());
        let mut api = server.client();
        let batch: Vec<_> = (0..400).map(|i| json!({ "trade_id": format!("t{i}"), "symbol": format!("S{}", i % 40), "side": "buy", "qty": "1", "price": "1" })).collect();
        assert_eq!(
            api.post("/v1/trades", &serde_json::Value::Array(batch)).0,
            201
        );
    }
    // Checkpoint everything into the main file, then leave a live WAL behind a crash.
    open_db(dir.path())
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    {
        let mut server = Server::start(dir.path());
        let t =
            json!({ "trade_id": "late", "symbol": "S1", "side": "sell", "qty": "1", "price": "2" });
        assert_eq!(server.client().post("/v1/trades", &t).0, 201);
        server.kill();
    }
    let path = dir.path().join("tradevault.db");
    let wal_path = dir.path().join("tradevault.db-wal");
    let wal = std::fs::read(&wal_path).expect("a WAL is left by the kill");
    assert!(wal.len() > 32, "the WAL holds the last commit");
    // Scribble over b-tree pages of the database file.
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 12 * 4096, "database has pages to damage");
    for b in &mut bytes[4 * 4096..12 * 4096] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).expect("write");
    let err = serve_fails(dir.path());
    assert!(err.contains("corrupt") && err.contains("hint:"), "{err}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        bytes,
        "the damaged file is left as it was, for recovery"
    );
    assert_eq!(
        std::fs::read(&wal_path).expect("the WAL is still there"),
        wal,
        "the WAL is neither applied nor deleted"
    );
    let out = command()
        .args(["check", "--data-dir", dir.path().to_str().expect("utf8")])
        .output()
        .expect("check");
    assert_eq!(
        out.status.code(),
        Some(1),
        "check reports the damage: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_second_server_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Server::start(dir.path());
    let err = serve_fails(dir.path());
    assert!(
        err.contains("in use by another tradevault process") && err.contains("hint:"),
        "{err}"
    );
}

/// A file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes writes fail with EFBIG, as on a
/// full disk: the writer poisons itself, readiness goes 503, writes are refused with 503, and
/// after a restart every acknowledged trade is there.
#[test]
fn a_full_disk_poisons_the_writer_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Server::start(dir.path())); // create the store before the limit applies
    let mut limited = Command::new("bash");
    limited.args([
        "-c",
        "trap '' XFSZ; ulimit -f 512; exec \"$0\" \"$@\"",
        crate::common::bin(),
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("TRADEVAULT_") {
            limited.env_remove(k);
        }
    }
    limited.env("RUST_LOG", "info");
    let server = Server::try_start(limited, dir.path(), &[]).expect("starts under the limit");
    let mut api = server.client();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..20_000 {
        let batch: Vec<_> = (0..20)
            .map(|j| json!({ "trade_id": format!("f{i}-{j}"), "symbol": "X", "side": "buy", "qty": "1", "price": "1", "strategy": "s".repeat(100) }))
            .collect();
        let (s, body) = api.post("/v1/trades", &serde_json::Value::Array(batch));
        match s {
            201 => acked.push(i),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let refused = refused.expect("the 512 KiB limit was reached");
    assert_eq!(refused["error"]["code"], "store_unavailable", "{refused}");
    let (s, ready) = api.get("/health/ready");
    assert_eq!(
        (s, ready["status"].as_str()),
        (503, Some("not_ready")),
        "{ready}"
    );
    let (s, again) = api.post(
        "/v1/trades",
        &json!({ "trade_id": "after", "symbol": "X", "side": "buy", "qty": "1", "price": "1" }),
    );
    assert_eq!(s, 503, "a poisoned writer refuses every write: {again}");
    assert!(
        api.0
            .get("/metrics")
            .expect("metrics")
            .text()
            .contains("tradevault_store_writer_poisoned 1")
    );
    assert_eq!(api.get("/v1/trades?limit=1").0, 200, "reads still work");
    drop(server);
    let server = Server::start(dir.path());
    let mut api = server.client();
    let counts = api.counts();
    assert_eq!(
        counts["trades"].as_u64(),
        Some(acked.len() as u64 * 20),
        "every acknowledged batch, and nothing else: {counts}"
    );
    assert_eq!(
        api.get("/health/ready").0,
        200,
        "a restart clears the poison"
    );
}

/// Under continuous writes the WAL is checkpointed and restarted, never left to grow: with a
/// 256 KiB threshold, 8 concurrent writers put many times that through the WAL, and both the
/// WAL's high-water mark and its file stay within the hard bound (four times the threshold, plus
/// what one group adds).
#[test]
fn the_wal_stays_bounded_under_continuous_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let threshold: u64 = 256 * 1024;
    let server = Server::start_with(
        dir.path(),
        &[("TRADEVAULT_STORE_CHECKPOINT_WAL_BYTES", "262144")],
    );
    // Batches keep the writer busy back to back, as a bot flushing fills does.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut api = server.client();
            std::thread::spawn(move || {
                for b in 0..40 {
                    let batch: Vec<_> = (0..25)
                        .map(|i| json!({ "trade_id": format!("w{w}-{b}-{i}"), "symbol": format!("S{}", (b * 25 + i) % 37),
                                         "side": "buy", "qty": "1", "price": "1", "strategy": "x".repeat(100) }))
                        .collect();
                    assert_eq!(api.post("/v1/trades", &serde_json::Value::Array(batch)).0, 201);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let mut api = server.client();
    let metrics = api.0.get("/metrics").expect("metrics").text();
    let checkpoints = crate::common::metric(&metrics, "tradevault_store_checkpoints_total");
    assert!(checkpoints >= 2.0, "checkpoints ran: {checkpoints}");
    // The high-water mark of the WAL, after every commit of the run: the hard bound is four times
    // the threshold (64 frames of 4 KiB) plus what one group adds (at most 8 batches of 25 trades,
    // each trade dirtying at most 4 pages).
    let bound_frames: u64 = 4 * 64 + 8 * 25 * 4;
    let peak = crate::common::metric(&metrics, "tradevault_store_wal_frames_peak");
    assert!(
        peak > 0.0 && peak <= bound_frames as f64,
        "the WAL peaked at {peak} frames"
    );
    let wal = std::fs::metadata(dir.path().join("tradevault.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!("wal {wal} bytes after {checkpoints} checkpoints");
    let db = std::fs::metadata(dir.path().join("tradevault.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        db > 4 * threshold,
        "enough was written to need several checkpoints: db {db}"
    );
    // The file holds at most that many frames (4 KiB page + 24-byte frame header) and its header.
    assert!(
        wal <= bound_frames * (4096 + 24) + 32,
        "the WAL file stays bounded: {wal} bytes"
    );
    assert_eq!(api.counts()["trades"], 8000);
}

/// Another process holding the database's write lock past the busy timeout makes writes fail
/// with 503 `store_busy` and nothing written; it is not damage, so the writer is not poisoned and
/// writes succeed once the lock is released.
#[test]
fn a_lock_held_by_another_process_is_busy_not_poison() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &[("TRADEVAULT_STORE_BUSY_TIMEOUT_MS", "100")]);
    let mut api = server.client();
    let intruder = open_db(dir.path());
    intruder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let t = json!({ "trade_id": "b1", "symbol": "X", "side": "buy", "qty": "1", "price": "1" });
    let (s, body) = api.post("/v1/trades", &t);
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("store_busy")),
        "{body}"
    );
    assert_eq!(
        api.get("/health/ready").0,
        200,
        "a busy database is not a poisoned writer"
    );
    intruder.execute_batch("ROLLBACK").expect("release");
    assert_eq!(
        api.post("/v1/trades", &t).0,
        201,
        "the same write succeeds once the lock is released"
    );
    assert_eq!(api.counts()["trades"], 1);
}
