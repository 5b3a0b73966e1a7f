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
    // Checkpoint everything into the main file, then scribble over a b-tree page.
    open_db(dir.path())
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let path = dir.path().join("tradevault.db");
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 8 * 4096, "database has pages to damage");
    for b in &mut bytes[5 * 4096..6 * 4096] {
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
/// 256 KiB threshold, 8 concurrent writers put many times that through the WAL and the file stays
/// within the hard bound (four times the threshold, plus one group).
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
    let checkpoints: f64 = metrics
        .lines()
        .find(|l| l.starts_with("tradevault_store_checkpoints_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(checkpoints >= 2.0, "checkpoints ran: {checkpoints}");
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
    assert!(
        wal <= 5 * threshold,
        "the WAL file stays bounded: {wal} bytes for a {threshold}-byte threshold"
    );
    assert_eq!(api.counts()["trades"], 8000);
}
