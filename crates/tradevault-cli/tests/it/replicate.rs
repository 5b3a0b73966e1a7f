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
    // The first run's clean stop saved its WAL position: the next run ships only the new rows.
    assert_eq!(
        (second["shipped"].as_str(), second["txid"].as_u64()),
        (Some("transactions"), Some(2)),
        "{second}"
    );
    assert!(
        replica
            .join("ltx/0/0000000000000002-0000000000000002.ltx")
            .is_file()
    );
    // The writer resets the WAL behind our back, then goes on writing: what it folded into the
    // database meanwhile cannot be known, so the next run starts with a snapshot at level 9.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    insert(&conn, 250, 30);
    let third = sync(&db, &replica);
    assert_eq!(
        (third["shipped"].as_str(), third["txid"].as_u64()),
        (Some("snapshot"), Some(3)),
        "{third}"
    );
    assert!(
        replica
            .join("ltx/9/0000000000000001-0000000000000003.ltx")
            .is_file()
    );
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
    // Without --once the sidecar would run until stopped: a database not in WAL mode must end
    // it at once, with how to switch the mode, not retry forever.
    let mut child = command()
        .arg("replicate")
        .arg(&db)
        .arg(&url)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("replicate kept running on a database not in WAL mode");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not in WAL mode") && stderr.contains("PRAGMA journal_mode=WAL"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "no retries: {stderr}");
    for bad_url in ["s3:///x", "s3://bucket/x?unknown=1", "ftp://host/x"] {
        assert_eq!(
            run(&[db.to_str().expect("utf8"), bad_url, "--once"])
                .status
                .code(),
            Some(2),
            "{bad_url}"
        );
    }
    assert_eq!(
        run(&[db.to_str().expect("utf8"), "relative/path", "--once"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["/no/such.db", &url, "--once"]).status.code(), Some(2));
}

/// The sidecar ships to an S3 bucket (a real S3 server started by the test, credentials in AWS_*
/// variables) and `restore` rebuilds the database from it; a wrong secret is a clear failure.
#[test]
fn replicate_to_s3_and_restore_from_it() {
    use crate::common::{S3_SECRET_ACCESS_KEY, S3Server, s3_command};
    let server = S3Server::start();
    let url = server.url("bots/alpha");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);").expect("schema");
    let replicate = |secret: &str| {
        s3_command(secret)
            .args(["replicate", "--once", "--json"])
            .arg(&db)
            .arg(&url)
            .output()
            .expect("run replicate")
    };
    for (n, txid) in [(200, 1), (50, 2)] {
        insert(&conn, txid * 1000, n);
        let out = replicate(S3_SECRET_ACCESS_KEY);
        assert!(
            out.status.success(),
            "replicate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
        assert_eq!(report[0]["txid"].as_u64(), Some(txid as u64), "{report}");
    }
    // Litestream's S3 layout: no `ltx/` segment, levels as %04x.
    assert!(
        server
            .object("bots/alpha/0000/0000000000000001-0000000000000001.ltx")
            .is_file()
    );
    // The second run continued from the first one's saved position.
    assert!(
        server
            .object("bots/alpha/0000/0000000000000002-0000000000000002.ltx")
            .is_file()
    );

    let restored = dir.path().join("restored.db");
    let out = s3_command(S3_SECRET_ACCESS_KEY)
        .args(["restore", "--replica", &url, "--output"])
        .arg(&restored)
        .output()
        .expect("run restore");
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("integrity ok"));
    let content = |path: &Path| -> Vec<(i64, String, String)> {
        let c = rusqlite::Connection::open(path).expect("open");
        let mut stmt = c
            .prepare("SELECT id, symbol, qty FROM fills ORDER BY id")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    assert_eq!(content(&restored).len(), 250);
    assert_eq!(content(&restored), content(&db));

    let wrong = "wrong-secret-0123456789";
    let out = replicate(wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("403 SignatureDoesNotMatch"), "{stderr}");
    assert!(
        stderr.contains("hint: check AWS_SECRET_ACCESS_KEY"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");
}

/// `serve --replica s3://...`: the engine ships the store to S3 from inside the server's runtime;
/// after a clean stop the bucket restores every acknowledged trade.
#[test]
fn serve_replicates_the_store_to_s3() {
    use crate::common::{S3_SECRET_ACCESS_KEY, S3Server, Server, s3_command};
    let s3 = S3Server::start();
    let url = s3.url("store");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Server::try_start_args(
        s3_command(S3_SECRET_ACCESS_KEY),
        &data,
        &[],
        &["--replica", &url, "--sync-interval-ms", "20"],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let mut api = server.client();
    for b in 0..5 {
        let batch: Vec<Value> = (0..20)
            .map(|i| {
                serde_json::json!({ "trade_id": format!("s3-{b}-{i}"), "symbol": "BTC-USD",
                "side": "buy", "qty": "0.5", "price": "100.25" })
            })
            .collect();
        assert_eq!(api.post("/v1/trades", &Value::Array(batch)).0, 201);
    }
    assert!(server.stop().success());
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).expect("dir");
    crate::common::succeed(
        s3_command(S3_SECRET_ACCESS_KEY)
            .args(["restore", "--replica", &url, "--output"])
            .arg(restored.join("tradevault.db")),
    );
    let stats = command()
        .args(["stats", "--json", "--data-dir"])
        .arg(&restored)
        .output()
        .expect("stats");
    let stats: Value = serde_json::from_slice(&stats.stdout).expect("stats json");
    assert_eq!(stats["tables"]["trades"].as_u64(), Some(100), "{stats}");
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
    // With --json a refusal is a JSON error object on stdout too, with the same exit status.
    let late = dir.path().join("late.db");
    let refusals: [(&[&str], &str, &str, i32); 3] = [
        (
            &["--output", out.to_str().expect("utf8")],
            "output_exists",
            "already exists",
            1,
        ),
        (
            &[
                "--output",
                late.to_str().expect("utf8"),
                "--timestamp",
                "2100-01-01T00:00:00Z",
            ],
            "restore_impossible",
            "after the newest replicated point",
            1,
        ),
        (
            &["--output", "x.db", "--txid", "five"],
            "usage",
            "is not a number",
            2,
        ),
    ];
    for (extra, code, says, status) in refusals {
        let refused = run(&[extra, &["--json"]].concat());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(status), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        let error: Value = serde_json::from_slice(&refused.stdout).unwrap_or_else(|e| {
            panic!(
                "{extra:?}: stdout is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&refused.stdout)
            )
        });
        assert_eq!(error["error"]["code"], code, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{error}"
        );
    }
    assert!(!late.exists());
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

/// `serve --replica` replicates the store while the engine truncates the WAL over and over
/// (a 64 KiB threshold), across clean stops and SIGKILLs. After a clean stop the replica holds
/// every acknowledged trade; after a kill it restores a database that passes `check --full`
/// (integrity, and positions equal to their fills: only whole transactions).
#[test]
fn serve_replicates_the_store_across_truncations_restarts_and_kills() {
    use crate::common::Server;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let mut acked = 0u64;
    for cycle in 0..6u32 {
        let mut server = Server::start_args(
            &data,
            &[("TRADEVAULT_STORE_CHECKPOINT_WAL_BYTES", "65536")],
            &["--replica", &url, "--sync-interval-ms", "10"],
        );
        let mut api = server.client();
        for b in 0..15 {
            let batch: Vec<Value> = (0..20)
                .map(|i| serde_json::json!({ "trade_id": format!("c{cycle}-{b}-{i}"), "symbol": format!("S{}", i % 5),
                    "side": if i % 3 == 0 { "sell" } else { "buy" }, "qty": "1.5", "price": format!("{}.25", 100 + i) }))
                .collect();
            assert_eq!(api.post("/v1/trades", &Value::Array(batch)).0, 201);
            acked += 20;
        }
        if cycle == 0 {
            // The replicas report on /metrics: the counters as files ship, the lag at the
            // engine's next once-a-second status. Wait (bounded) for all of them.
            let label = format!("replica=\"{url}\"");
            let names = [
                "tradevault_replication_files_total",
                "tradevault_replication_bytes_total",
                "tradevault_replication_txid",
                "tradevault_replication_lag_seconds",
            ];
            let reported = |text: &str, name: &str| {
                text.lines()
                    .any(|l| l.starts_with(name) && l.contains(&label))
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let metrics = loop {
                let text = api.0.get("/metrics").expect("metrics").text();
                let shipped = crate::common::metric(&text, "tradevault_replication_txid") >= 1.0
                    && names.iter().all(|n| reported(&text, n));
                if shipped || std::time::Instant::now() > deadline {
                    break text;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            for name in names {
                assert!(
                    reported(&metrics, name),
                    "/metrics has {name} for the replica:\n{metrics}"
                );
            }
            assert!(
                metrics.contains(r#"kind="snapshot"} 1"#),
                "the first file is a snapshot:\n{metrics}"
            );
        }
        let clean = cycle % 2 == 0;
        if clean {
            assert!(server.stop().success());
        } else {
            server.kill();
        }
        let restored_dir = dir.path().join(format!("restored-{cycle}"));
        std::fs::create_dir(&restored_dir).expect("dir");
        let out = command()
            .args(["restore", "--replica", &url, "--output"])
            .arg(restored_dir.join("tradevault.db"))
            .output()
            .expect("restore");
        assert!(
            out.status.success(),
            "cycle {cycle}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let check = command()
            .args(["check", "--full", "--json", "--data-dir"])
            .arg(&restored_dir)
            .output()
            .expect("check");
        assert!(
            check.status.success(),
            "cycle {cycle}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let stats = command()
            .args(["stats", "--json", "--data-dir"])
            .arg(&restored_dir)
            .output()
            .expect("stats");
        let stats: Value = serde_json::from_slice(&stats.stdout).expect("stats json");
        let trades = stats["tables"]["trades"].as_u64().expect("count");
        if clean {
            assert_eq!(
                trades, acked,
                "cycle {cycle}: a clean stop ships every acknowledged trade"
            );
        } else {
            assert!(
                trades <= acked && trades >= acked - 300,
                "cycle {cycle}: {trades} of {acked}"
            );
        }
    }
    // A restart after a kill starts with one snapshot, taken in an exclusive moment with the WAL
    // truncated; a restart after a clean stop continues from the saved position; every later
    // truncation continues the history, so there are no other snapshots.
    let snapshots = std::fs::read_dir(replica.join("ltx/9"))
        .expect("level 9")
        .count();
    let level0 = std::fs::read_dir(replica.join("ltx/0"))
        .expect("level 0")
        .count();
    let names: Vec<String> = std::fs::read_dir(replica.join("ltx/9"))
        .expect("level 9")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    eprintln!("replica after 6 runs: {snapshots} level-9 snapshots, {level0} level-0 files");
    assert_eq!(
        snapshots, 2,
        "one snapshot per restart after a kill, none after a clean stop or a truncation: {names:?}"
    );
    assert!(level0 > 12, "many level-0 files: {level0}");
    if let Some(bin) = litestream() {
        let out = dir.path().join("by-litestream");
        std::fs::create_dir(&out).expect("dir");
        let result = Command::new(bin)
            .args(["restore", "-o"])
            .arg(out.join("tradevault.db"))
            .arg(&url)
            .output()
            .expect("litestream");
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let check = command()
            .args(["check", "--full", "--data-dir"])
            .arg(&out)
            .output()
            .expect("check");
        assert!(
            check.status.success(),
            "litestream's restore of the store's replica passes check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
    }
}

/// Every replicated database's error and checkpoint counters are on /metrics at 0 from the
/// start, before any error or checkpoint, so rates and alerts on them work from the first scrape.
#[test]
fn replication_counters_start_at_zero() {
    use crate::common::Server;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let db = dir.path().join("bot.db");
    rusqlite::Connection::open(&db)
        .expect("open")
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);")
        .expect("schema");
    let store_url = format!("file://{}", dir.path().join("store-replica").display());
    let bot_url = format!("file://{}", dir.path().join("bot-replica").display());
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[[database]]\nname = \"bot\"\npath = \"{}\"\n[[database.replica]]\nurl = \"{bot_url}\"\nname = \"bot-disk\"\n",
            db.display()
        ),
    )
    .expect("config");
    let server = Server::try_start_args(
        {
            let mut c = command();
            c.arg("--config").arg(&config);
            c
        },
        &data,
        &[],
        &["--replica", &store_url],
    )
    .unwrap_or_else(|e| panic!("server did not start: {e}"));
    let text = server.client().0.get("/metrics").expect("metrics").text();
    let line = |name: &str, labels: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    };
    for (database, replica) in [("store", store_url.as_str()), ("bot", "bot-disk")] {
        let labels = format!("database=\"{database}\",replica=\"{replica}\"");
        assert_eq!(
            line("tradevault_replication_errors_total", &labels).as_deref(),
            Some("0"),
            "{labels}:\n{text}"
        );
        assert!(
            line(
                "tradevault_replication_checkpoints_total",
                &format!("database=\"{database}\"")
            )
            .is_some(),
            "checkpoints of {database}:\n{text}"
        );
        assert!(
            line("tradevault_replication_bytes_total", &labels).is_some(),
            "bytes of {labels}:\n{text}"
        );
    }
    assert_eq!(
        line(
            "tradevault_replication_checkpoints_total",
            "database=\"bot\""
        )
        .as_deref(),
        Some("0"),
        "{text}"
    );
}

/// S3 credentials in the config alone, no AWS_* variable: the sidecar ships a [[database]] to
/// its [[database.replica]] on a real S3 server, restore reads it back through the same entry,
/// and a backup goes to an S3 [[backup.target]]. The config's keys win over the environment's,
/// and no output or log line (at debug level) shows the secret.
#[test]
fn s3_credentials_from_the_config_alone() {
    use crate::common::{S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3Server, s3_command};
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);").expect("schema");
    insert(&conn, 0, 120);
    let config = |secret: &str| {
        let path = dir.path().join(format!("tv-{}.toml", secret.len()));
        let keys = format!(
            "access_key_id = \"{S3_ACCESS_KEY_ID}\"\nsecret_access_key = \"{secret}\"\nregion = \"us-east-1\"\n"
        );
        std::fs::write(
            &path,
            format!(
                "[[database]]\nname = \"bot\"\npath = \"{}\"\n[[database.replica]]\nurl = \"{}\"\n{keys}\
                 [[backup.target]]\nname = \"s3\"\nurl = \"{}\"\n{keys}",
                db.display(),
                s3.url("bots/cfg"),
                s3.url("backups")
            ),
        )
        .expect("config");
        path
    };
    let good = config(S3_SECRET_ACCESS_KEY);
    // No AWS_* variable at all (s3_command's are removed again).
    let run = |config: &Path, args: &[&str]| {
        let mut c = command();
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                c.env_remove(k);
            }
        }
        let out = c
            .env("RUST_LOG", "debug")
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .expect("run");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(S3_SECRET_ACCESS_KEY),
            "{args:?} shows the secret: {text}"
        );
        out
    };
    let out = run(&good, &["replicate", "--once", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report[0]["txid"].as_u64(), Some(1), "{report}");
    assert!(
        s3.object("bots/cfg/0000/0000000000000001-0000000000000001.ltx")
            .is_file()
    );

    let restored = dir.path().join("restored.db");
    let out = run(
        &good,
        &[
            "restore",
            "--db",
            "bot",
            "--output",
            restored.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .expect("open")
            .query_row("SELECT count(*) FROM fills", [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(count(&restored), 120);

    let out = run(&good, &["backup", "create", "--db", "bot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&good, &["backup", "list", "--target", "s3", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        listed[0]["backups"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // A wrong secret in the config fails even with the right one in the environment.
    let wrong = config("wrong-secret-in-the-config");
    insert(&conn, 1_000, 5);
    let out = s3_command(S3_SECRET_ACCESS_KEY)
        .arg("--config")
        .arg(&wrong)
        .args(["replicate", "--once"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("403 SignatureDoesNotMatch"), "{stderr}");
    assert!(
        stderr.contains("secret_access_key in the config"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-in-the-config"), "{stderr}");
}

/// `tradevault status` finds a sidecar started without a config: the sidecar registers itself in
/// the per-user runtime directory ($XDG_RUNTIME_DIR/tradevault), and `status` also takes
/// database paths. A sidecar killed with SIGKILL shows as not running at once (its process is
/// gone), without a crash; one stopped cleanly takes its registration away.
#[test]
fn status_finds_a_sidecar_started_without_a_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work dir");
    let db = work.join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);").expect("schema");
    insert(&conn, 0, 10);
    let url = format!("file://{}", dir.path().join("replica").display());
    let tv = || {
        let mut c = command();
        c.current_dir(&work).env("XDG_RUNTIME_DIR", &runtime);
        c
    };
    let status = |args: &[&str]| -> (Value, String) {
        let json = tv()
            .args(["status", "--json"])
            .args(args)
            .output()
            .expect("status");
        assert!(
            json.status.success(),
            "{}",
            String::from_utf8_lossy(&json.stderr)
        );
        let human = tv().arg("status").args(args).output().expect("status");
        assert!(
            human.status.success(),
            "{}",
            String::from_utf8_lossy(&human.stderr)
        );
        (
            serde_json::from_slice(&json.stdout).expect("status json"),
            String::from_utf8_lossy(&human.stdout).into_owned(),
        )
    };
    let bot = |v: &Value| -> Option<Value> {
        v.as_array()?
            .iter()
            .find(|e| e["database"] == "bot")
            .cloned()
    };
    let spawn = || {
        tv().args(["replicate", "bot.db", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn replicate")
    };
    let mut sidecar = spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let entry = loop {
        let (listed, _) = status(&[]);
        if let Some(e) = bot(&listed).filter(|e| e["replicating"] == true) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the sidecar: {listed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(entry["found_by"], "registry", "{entry}");
    assert_eq!(entry["registered_pid"], sidecar.id(), "{entry}");
    assert_eq!(
        entry["status"]["replicas"][0]["name"],
        url.as_str(),
        "{entry}"
    );
    let (_, human) = status(&[]);
    assert!(
        human.contains(&format!(
            "bot ({}): replicating (pid {})",
            db.display(),
            sidecar.id()
        )),
        "{human}"
    );
    // Its files and window follow each upload, not only the replica's maintenance (a minute
    // apart): after more commits, status counts every file the replica holds.
    let replica_status = || bot(&status(&[]).0).expect("listed")["status"]["replicas"][0].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let before = loop {
        if let Some(n) = replica_status()["files"].as_u64() {
            break n;
        }
        assert!(std::time::Instant::now() < deadline, "no file count");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    insert(&conn, 10, 5);
    let on_replica = || {
        std::fs::read_dir(dir.path().join("replica/ltx/0"))
            .map(|d| d.count() as u64)
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = replica_status();
        let files = r["files"].as_u64();
        if files.is_some_and(|n| n > before && n == on_replica()) && r["window_end_ms"].is_i64() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never counted the replica's {} files: {r}",
            on_replica()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Its position is the point a restore names: the same TXID, made at the same time.
    let r = replica_status();
    let plan = tv()
        .args([
            "restore",
            "--replica",
            &url,
            "--output",
            "unused.db",
            "--dry-run",
            "--json",
        ])
        .output()
        .expect("restore --dry-run");
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan json");
    assert_eq!(
        (r["txid"].as_u64(), r["txid_time_ms"].as_i64()),
        (plan["txid"].as_u64(), plan["point_ms"].as_i64()),
        "status {r} and restore's plan {plan}"
    );
    // By path, alone (no store entry, no job history).
    let (listed, human) = status(&["bot.db"]);
    let listed = listed.as_array().expect("array").clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0]["database"].as_str(),
            listed[0]["found_by"].as_str(),
            listed[0]["replicating"].as_bool()
        ),
        (Some("bot"), Some("argument"), Some(true)),
        "{listed:?}"
    );
    assert!(
        human.contains("replicating") && !human.contains("jobs"),
        "{human}"
    );
    let missing = tv().args(["status", "nope.db"]).output().expect("status");
    assert_eq!(missing.status.code(), Some(2));

    // Killed: its registration stays, and shows as not running right away.
    let pid = sidecar.id();
    sidecar.kill().expect("kill");
    sidecar.wait().expect("wait");
    let (listed, human) = status(&[]);
    let entry = bot(&listed).expect("a killed sidecar stays listed");
    assert_eq!(entry["replicating"], false, "{entry}");
    assert!(
        human.contains(&format!("NOT RUNNING: process {pid} is gone")),
        "{human}"
    );

    // Stopped cleanly: nothing left to list.
    let mut sidecar = spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while bot(&status(&[]).0).is_none_or(|e| e["registered_pid"] != sidecar.id()) {
        assert!(std::time::Instant::now() < deadline, "not registered again");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stopped = Command::new("kill")
        .arg("-TERM")
        .arg(sidecar.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(stopped.success());
    assert!(sidecar.wait().expect("wait").success());
    let (listed, _) = status(&[]);
    assert!(bot(&listed).is_none(), "{listed}");

    // Killed, and its database deleted since: nothing left to report, and forgotten.
    let mut sidecar = spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while bot(&status(&[]).0).is_none_or(|e| e["registered_pid"] != sidecar.id()) {
        assert!(std::time::Instant::now() < deadline, "not registered again");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    sidecar.kill().expect("kill");
    sidecar.wait().expect("wait");
    assert!(
        bot(&status(&[]).0).is_some(),
        "listed while its file exists"
    );
    let registry = runtime.join("tradevault");
    let registered = || std::fs::read_dir(&registry).map_or(0, |d| d.count());
    assert!(registered() > 0);
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(work.join(format!("bot.db{suffix}")));
    }
    let (listed, _) = status(&[]);
    assert!(bot(&listed).is_none(), "{listed}");
    assert_eq!(registered(), 0, "its registration was removed");
}

/// A sidecar serves its replication metrics for Prometheus with `--metrics-listen`.
#[test]
fn a_sidecar_serves_its_metrics() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE fills(id INTEGER PRIMARY KEY, symbol TEXT, qty TEXT);",
    )
    .expect("schema");
    let replica = dir.path().join("replica");
    let mut sidecar = command()
        .arg("replicate")
        .arg(&db)
        .arg(format!("file://{}", replica.display()))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("replicate");
    let mut first = String::new();
    std::io::BufReader::new(sidecar.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read the address");
    let addr: std::net::SocketAddr = first
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address: {first:?}"))
        .parse()
        .expect("address");
    insert(&conn, 0, 20);
    let mut client =
        tradevault::http::client::Client::new(addr, std::time::Duration::from_secs(10));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let r = client.get("/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200);
        let text = r.text();
        if crate::common::metric(&text, "tradevault_replication_files_total") >= 1.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upload counted: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for name in [
        "tradevault_replication_errors_total",
        "tradevault_replication_bytes_total",
        "tradevault_replication_txid",
    ] {
        assert!(text.contains(name), "{name} missing: {text}");
    }
    assert_eq!(client.get("/health/live").expect("health").status, 200);
    let _ = sidecar.kill();
    let _ = sidecar.wait();
}
