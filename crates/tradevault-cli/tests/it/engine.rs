//! The replication engine's guarantees, driven through the built binary with real processes:
//! synchronous mode never loses an acknowledged write across SIGKILLs; a replica that was down
//! catches up with no gap; another program's database and the sidecar, both killed at random
//! moments, always restore to whole transactions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Rng, Server, command, eventually};

fn cycles(default: u64) -> u64 {
    std::env::var("TRADEVAULT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Restores `url` into a fresh `dir/tradevault.db` with the binary, and opens it.
fn restore(url: &str, dir: &Path) -> rusqlite::Connection {
    std::fs::create_dir_all(dir).expect("dir");
    let out = command()
        .args(["restore", "--replica", url, "--output"])
        .arg(dir.join("tradevault.db"))
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "restore of {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(dir.join("tradevault.db")).expect("open restored");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(ok, "ok", "restored database of {url} is intact");
    conn
}

/// Restores `url` at `txid` into `out` with the binary, and opens it.
fn restore_txid(url: &str, txid: u64, out: &Path) -> rusqlite::Connection {
    let done = command()
        .args([
            "restore",
            "--replica",
            url,
            "--txid",
            &txid.to_string(),
            "--output",
        ])
        .arg(out)
        .output()
        .expect("restore to a txid");
    assert!(
        done.status.success(),
        "restore of {url} at txid {txid}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    rusqlite::Connection::open(out).expect("open restored")
}

/// Whether the level-0 files of the replica at `replica` include one ending at `txid`.
fn layout_ends_at(replica: &Path, txid: u64) -> bool {
    std::fs::read_dir(replica.join("ltx/0")).is_ok_and(|d| {
        d.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(ltx::parse_file_name)
                .is_some_and(|(_, max)| max == txid)
        })
    })
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tradevault.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// A store in sync mode with one file replica, `dir/replica`: its data directory, the replica's
/// URL and the config file, with `replication` and `replica` added to their tables and `rest`
/// after them.
fn sync_store(
    dir: &Path,
    replication: &str,
    replica: &str,
    rest: &str,
) -> (PathBuf, String, String) {
    let url = format!("file://{}", dir.join("replica").display());
    let config = write_config(
        dir,
        &format!(
            "[replication]\nmode = \"sync\"\n{replication}[[replication.replica]]\nurl = \"{url}\"\n{replica}{rest}"
        ),
    );
    let config = config.to_str().expect("utf8").to_owned();
    (dir.join("data"), url, config)
}

#[test]
fn sync_mode_never_loses_an_acknowledged_write_across_sigkills() {
    let cycles = cycles(30);
    let mut rng = Rng::from_env("sync_mode_never_loses_an_acknowledged_write_across_sigkills");
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, url, config) = sync_store(
        dir.path(),
        "",
        "",
        "[store]\ncheckpoint_wal_bytes = 65536\n",
    );
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    for cycle in 0..cycles {
        let mut server = Server::start_args(&data, &[], &["--config", &config]);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (mut api, stop, acked) = (server.client(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("c{cycle}-w{w}-{n}");
                        let body = json!({ "trade_id": id, "symbol": "BTC", "side": "buy",
                            "qty": "0.5", "price": "100.25" })
                        .to_string();
                        match api.0.post("/v1/trades", body.as_bytes()) {
                            Ok(r) if r.status == 201 => {
                                acked.lock().expect("lock").insert(id);
                            }
                            Ok(r) => panic!("unexpected answer {} {}", r.status, r.text()),
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.range(5, 200)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
        // Killed before anything was acknowledged, the replica may still be empty (the first
        // snapshot was not uploaded yet): there is nothing to check.
        if acked.lock().expect("lock").is_empty() {
            continue;
        }
        // Every acknowledged write is on the replica, even though the server died a moment later.
        let present = restored_trades(&url, &dir.path().join(format!("restored-{cycle}")));
        let acked = acked.lock().expect("lock");
        let missing: Vec<_> = acked.difference(&present).take(5).collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: acknowledged but not on the replica: {missing:?} (of {} acknowledged)",
            acked.len()
        );
        std::fs::remove_dir_all(dir.path().join(format!("restored-{cycle}"))).expect("clean");
    }
    let total = acked.lock().expect("lock").len();
    assert!(total > 0, "writes were acknowledged");
    eprintln!(
        "sync mode: {cycles} SIGKILL cycles, {total} acknowledged trades, all on the replica"
    );
}

/// The trade ids of a store.
fn trade_ids(conn: &rusqlite::Connection) -> HashSet<String> {
    let mut stmt = conn
        .prepare("SELECT trade_id FROM trades")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// The trade ids of the database restored from `url` into `dir`.
fn restored_trades(url: &str, dir: &Path) -> HashSet<String> {
    trade_ids(&restore(url, dir))
}

/// A full sync journal is archived as a segment and a new lap starts at once, without waiting
/// for the layout: with the layout frozen, the answers keep coming, restore reads every lap (the
/// latest state, and a TXID inside the first lap), and a restart lays the segments out and
/// removes them.
#[test]
fn sync_mode_keeps_full_journal_laps_as_segments_that_restore_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, url, config) = sync_store(
        dir.path(),
        "sync_timeout_ms = 20000\n",
        "sync_interval_ms = 600000\n",
        "",
    );
    let replica = dir.path().join("replica");
    let segments = || -> Vec<(u64, u64)> {
        let mut found: Vec<(u64, u64)> = std::fs::read_dir(replica.join("tradevault-segments"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (a, b) = name.strip_suffix(".tvj")?.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .collect();
        found.sort_unstable();
        found
    };
    let mut server = Server::start_args(&data, &[], &["--config", &config]);
    eventually(
        "the snapshot on the replica",
        Duration::from_secs(20),
        || std::fs::read_dir(replica.join("ltx/0")).is_ok_and(|mut d| d.next().is_some()),
    );
    // 60 signals of 400 KB that LZ4 cannot shrink: about 24 MiB of records, more than a lap.
    let mut rng = Rng::from_env("sync_mode_keeps_full_journal_laps_as_segments_that_restore_reads");
    let mut api = server.client();
    let mut big_signals = |ids: std::ops::Range<u32>| {
        for i in ids {
            let blob: String = (0..25_000)
                .map(|_| format!("{:016x}", rng.next()))
                .collect();
            let signal = json!({ "signal_id": format!("big{i}"), "symbol": "BTC", "price": "1",
                "final_signal": "buy", "confidence": "0.5", "strategies": { "blob": blob } });
            let (status, body) = api.post("/v1/signals", &signal);
            assert_eq!(status, 201, "{body}");
        }
    };
    let n: u32 = 60;
    big_signals(0..n);
    let archived = segments();
    assert!(!archived.is_empty(), "a full lap is archived");
    let plan = |args: &[&str]| -> Value {
        let out = command()
            .args(["restore", "--dry-run", "--json", "--replica", &url])
            .args(args)
            .arg("--output")
            .arg(dir.path().join("dry.db"))
            .output()
            .expect("dry run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("plan")
    };
    // The layout was not hurried: the first lap's commits are read from its segment.
    let (first, last) = archived[0];
    let latest = plan(&[]);
    let from_segment = latest["files"].as_array().is_some_and(|f| {
        f.iter()
            .any(|f| f[0] == 100 && f[1].as_u64() == Some(first))
    });
    assert!(from_segment, "{latest}");
    let signals = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM signals WHERE signal_id LIKE 'big%'",
            [],
            |r| r.get(0),
        )
        .expect("count")
    };
    // A point inside the first lap: a TXID only its segment ends at.
    let count = signals(&restore_txid(&url, last, &dir.path().join("r2.db")));
    assert!(
        count > 0 && count < i64::from(n),
        "the first lap ends mid-run: {count} of {n}"
    );

    // Two laps more: the second segment the layout would lack makes the journal hurry the
    // layout and wait for it, so segments never pile up behind a slow layout.
    let more: u32 = 80;
    big_signals(n..n + more);
    let now = segments();
    assert!(
        now.len() <= 2 && now.iter().all(|(a, _)| *a > first),
        "the first lap's segment went once the layout held it: {now:?}"
    );
    let newest = plan(&[])["txid"].as_u64().expect("txid");
    server.kill();
    assert_eq!(
        signals(&restore(&url, &dir.path().join("r1"))),
        i64::from(n + more),
        "every answered write"
    );

    // A restart lays out what the journal and its segments hold, then removes the segments.
    let server = Server::start_args(&data, &[], &["--config", &config]);
    eventually("the journal laid out", Duration::from_secs(30), || {
        layout_ends_at(&replica, newest)
    });
    eventually("the segments removed", Duration::from_secs(30), || {
        segments().is_empty()
    });
    drop(server);
}

#[test]
fn sync_mode_answers_from_the_replica_journal_which_restore_reads_and_a_restart_lays_out() {
    // The layout gets one upload every ten minutes: after the first, only the journal takes
    // the commits, so every answer below comes from it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, url, config) = sync_store(
        dir.path(),
        "sync_timeout_ms = 20000\n",
        "sync_interval_ms = 600000\n",
        "",
    );
    let replica = dir.path().join("replica");
    // Servers register here, so that `status` knows when one is gone.
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).expect("runtime dir");
    let runtime = runtime.to_str().expect("utf8").to_owned();
    let env = [("XDG_RUNTIME_DIR", runtime.as_str())];
    let mut server = Server::start_args(&data, &env, &["--config", &config]);
    // The first upload (the snapshot) reaches the layout: from then on the journal continues it.
    eventually(
        "the snapshot on the replica",
        Duration::from_secs(20),
        || std::fs::read_dir(replica.join("ltx/0")).is_ok_and(|mut d| d.next().is_some()),
    );
    let mut api = server.client();
    let ids: HashSet<String> = (0..20).map(|n| format!("j{n}")).collect();
    for id in &ids {
        let trade =
            json!({ "trade_id": id, "symbol": "BTC", "side": "buy", "qty": "1", "price": "10" });
        let (status, body) = api.post("/v1/trades", &trade);
        assert_eq!(status, 201, "{body}");
    }
    // The layout still holds the snapshot alone; the journal holds the rest, at level 100.
    let out = command()
        .args([
            "restore",
            "--dry-run",
            "--json",
            "--replica",
            &url,
            "--output",
        ])
        .arg(dir.path().join("dry.db"))
        .output()
        .expect("dry run");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let journaled = plan["files"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f[0] == 100));
    assert!(out.status.success() && journaled, "{plan}");
    let last = plan["txid"].as_u64().expect("txid");
    server.kill();
    // Its last report is fresh, but the process is gone: status says so (the store is found by
    // the config and by its registration alike).
    let out = command()
        .args(["status", "--json", "--config", &config, "--data-dir"])
        .arg(&data)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .expect("status");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(status[0]["replicating"], false, "{status}");
    // Killed: the answers were given, so restore has every trade, from the journal.
    let present = restored_trades(&url, &dir.path().join("r1"));
    let missing: Vec<_> = ids.difference(&present).collect();
    assert!(missing.is_empty(), "missing after SIGKILL: {missing:?}");
    // As after a machine crash, the local log is gone: only the journal holds the last commits
    // outside the database. A restart puts its records into the layout before anything else, so
    // the layout alone (as Litestream reads it) reaches that last point.
    std::fs::remove_dir_all(data.join(".tradevault.db-tradevault").join("ltx")).expect("local log");
    let mut server = Server::start_args(&data, &env, &["--config", &config]);
    eventually(
        "the journal replayed into the layout",
        Duration::from_secs(20),
        || layout_ends_at(&replica, last),
    );
    // This start's history is numbered past everything the replica holds, from its very first
    // file (the local log was empty: every file in it is this start's), so no TXID gets a second
    // content; and the journal takes its commits only once its snapshot is there: more answers,
    // then another SIGKILL, and the latest state has every trade of both starts.
    let local = data.join(".tradevault.db-tradevault").join("ltx");
    eventually("this start's snapshot", Duration::from_secs(20), || {
        ["0", "9"]
            .iter()
            .any(|level| std::fs::read_dir(local.join(level)).is_ok_and(|mut d| d.next().is_some()))
    });
    for level in ["0", "9"] {
        for e in std::fs::read_dir(local.join(level))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some((_, max)) = e.file_name().to_str().and_then(ltx::parse_file_name) {
                assert!(max > last, "this start wrote txid {max}, not past {last}");
            }
        }
    }
    let more: HashSet<String> = (0..10).map(|n| format!("k{n}")).collect();
    let mut api = server.client();
    for id in &more {
        let trade =
            json!({ "trade_id": id, "symbol": "ETH", "side": "sell", "qty": "1", "price": "10" });
        let (status, body) = api.post("/v1/trades", &trade);
        assert_eq!(status, 201, "{body}");
    }
    server.kill();
    let present = restored_trades(&url, &dir.path().join("r3"));
    let missing: Vec<_> = ids
        .union(&more)
        .filter(|id| !present.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "missing after the second SIGKILL: {missing:?}"
    );
    std::fs::remove_file(replica.join("tradevault-journal")).expect("remove journal");
    let present = trade_ids(&restore_txid(&url, last, &dir.path().join("r2.db")));
    let missing: Vec<_> = ids.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "missing from the layout at txid {last}: {missing:?}"
    );
}

#[test]
fn sync_mode_answers_not_replicated_when_no_replica_confirms() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The replica's directory cannot be created: a file is in the way.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").expect("block");
    let url = format!("file://{}/replica", blocked.display());
    let config = write_config(
        dir.path(),
        &format!(
            "[replication]\nmode = \"sync\"\nsync_timeout_ms = 300\n[[replication.replica]]\nurl = \"{url}\"\n"
        ),
    );
    let data = dir.path().join("data");
    let server = Server::start_args(&data, &[], &["--config", config.to_str().expect("utf8")]);
    let mut api = server.client();
    let trade =
        json!({ "trade_id": "t1", "symbol": "ETH", "side": "sell", "qty": "2", "price": "10" });
    let (status, body) = api.post("/v1/trades", &trade);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("not_replicated")),
        "{body}"
    );
    // It was stored locally: the identical re-send is recognised (and again not replicated).
    let (_, trades) = api.get("/v1/trades");
    assert_eq!(
        trades["items"].as_array().map(Vec::len),
        Some(1),
        "{trades}"
    );
    // `status` reports the replica's error.
    eventually(
        "the status to show the replica error",
        Duration::from_secs(10),
        || {
            let out = command()
                .args(["status", "--json", "--data-dir"])
                .arg(&data)
                .output()
                .expect("status");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            v[0]["status"]["replicas"][0]["last_error"].is_string()
        },
    );
}

fn sidecar(db: &Path, urls: &[String]) -> Child {
    command()
        .arg("replicate")
        .arg(db)
        .args(urls)
        .args(["--poll-interval-ms", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sidecar")
}

fn status_of(db: &Path) -> Value {
    let dir = db.parent().expect("parent").join(format!(
        ".{}-tradevault",
        db.file_name().expect("name").to_string_lossy()
    ));
    std::fs::read(dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn table_rows(conn: &rusqlite::Connection) -> Vec<(i64, String)> {
    let mut stmt = conn
        .prepare("SELECT id, body FROM fills ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

#[test]
fn a_replica_that_was_down_catches_up_with_no_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, body TEXT);",
    )
    .expect("schema");
    let good = format!("file://{}", dir.path().join("good").display());
    let flaky_root = dir.path().join("flaky");
    std::fs::write(&flaky_root, b"in the way").expect("block");
    let flaky = format!("file://{}", flaky_root.display());
    let mut child = sidecar(&db, &[good.clone(), flaky.clone()]);
    for i in 0..60 {
        conn.execute(
            "INSERT INTO fills (id, body) VALUES (?1, printf('fill %d', ?1))",
            [i],
        )
        .expect("insert");
        std::thread::sleep(Duration::from_millis(2));
    }
    eventually(
        "the good replica to hold everything",
        Duration::from_secs(20),
        || {
            let s = status_of(&db);
            s["txid"].as_u64().is_some_and(|t| t > 1)
                && s["replicas"][0]["txid"] == s["txid"]
                && s["replicas"][1]["last_error"].is_string()
        },
    );
    // The flaky replica comes back; it catches up from its own position.
    std::fs::remove_file(&flaky_root).expect("unblock");
    for i in 60..80 {
        conn.execute(
            "INSERT INTO fills (id, body) VALUES (?1, printf('fill %d', ?1))",
            [i],
        )
        .expect("insert");
    }
    both_catch_up_and_restore(
        &db,
        &conn,
        dir.path(),
        &mut child,
        [("good", &good), ("flaky", &flaky)],
    );
    // No gap: the flaky replica's files chain from TXID 1 to its newest, each continuing the last.
    let mut ranges: Vec<(u64, u64)> = std::fs::read_dir(flaky_root.join("ltx/0"))
        .expect("level 0")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            ltx::parse_file_name(&name)
        })
        .collect();
    ranges.sort_unstable();
    assert_eq!(ranges.first().map(|r| r.0), Some(1), "{ranges:?}");
    for pair in ranges.windows(2) {
        assert_eq!(pair[1].0, pair[0].1 + 1, "contiguous: {ranges:?}");
    }
}

/// Another process holds the WAL's checkpoint lock (as a program's own checkpoint does, just
/// after its commit): the sidecar keeps shipping, checkpoints once the lock is let go, and the
/// replica holds every row.
#[test]
fn a_checkpoint_another_process_runs_delays_ours_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE fills (id INTEGER PRIMARY KEY, body TEXT);",
    )
    .expect("schema");
    let url = format!("file://{}", dir.path().join("replica").display());
    let config = write_config(
        dir.path(),
        &format!(
            "[[database]]\nname = \"bot\"\npath = \"{}\"\npoll_interval_ms = 5\ncheckpoint_wal_bytes = 65536\n[[database.replica]]\nurl = \"{url}\"\n",
            db.display()
        ),
    );
    let mut child = command()
        .args(["replicate", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sidecar");
    let insert = |from: i64, to: i64| {
        for i in from..to {
            conn.execute(
                "INSERT INTO fills (id, body) VALUES (?1, printf('%d %.2000c', ?1, 'x'))",
                [i],
            )
            .expect("insert");
        }
    };
    insert(0, 10);
    eventually("the first shipment", Duration::from_secs(20), || {
        let s = status_of(&db);
        s["txid"].as_u64().is_some_and(|t| t >= 1) && s["replicas"][0]["txid"] == s["txid"]
    });
    // SQLite's checkpoint lock is byte 121 of the -shm file (WAL_CKPT_LOCK).
    let shm = dir.path().join("bot.db-shm");
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, sys\n\
             fd = os.open(sys.argv[1], os.O_RDWR)\n\
             fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 121)\n\
             print('locked', flush=True)\n\
             sys.stdin.read()",
        ])
        .arg(&shm)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "locked", "the checkpoint lock is held");
    // Counted from a status written after the lock was taken: every checkpoint before it.
    let locked_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    eventually("a status written since", Duration::from_secs(20), || {
        status_of(&db)["updated_at_ms"].as_i64() > Some(locked_ms)
    });
    let before = status_of(&db)["checkpoints"].as_u64().expect("checkpoints");
    // Well past the checkpoint threshold: shipping goes on while no checkpoint can run.
    let shipped = status_of(&db)["txid"].as_u64().expect("txid");
    insert(10, 200);
    eventually(
        "shipments while the lock is held",
        Duration::from_secs(20),
        || {
            let s = status_of(&db);
            s["replicas"][0]["txid"] == s["txid"] && s["txid"].as_u64() > Some(shipped)
        },
    );
    assert_eq!(
        status_of(&db)["checkpoints"].as_u64(),
        Some(before),
        "no checkpoint while another holds the lock"
    );
    drop(holder.stdin.take());
    holder.wait().expect("holder ends");
    eventually(
        "a checkpoint once the lock is free",
        Duration::from_secs(20),
        || status_of(&db)["checkpoints"].as_u64() > Some(before),
    );
    insert(200, 220);
    let expected = table_rows(&conn);
    let mut attempt = 0;
    eventually(
        "the replica to hold every row",
        Duration::from_secs(20),
        || {
            attempt += 1;
            let restored = restore(&url, &dir.path().join(format!("restored-{attempt}")));
            table_rows(&restored) == expected
        },
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A small tmpfs, mounted for one test and lazily unmounted after it.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs (this test needs root, as CI has)");
        Tmpfs(at.to_owned())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "resizing the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A replica whose disk fills up: the sidecar keeps shipping to the other replica, reports "no
/// space" for the full one and leaves no half-written file there; once space is freed, the full
/// replica catches up with no gap and restores every row.
#[test]
fn a_replica_on_a_full_disk_catches_up_once_space_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, body TEXT);",
    )
    .expect("schema");
    let good = format!("file://{}", dir.path().join("good").display());
    let disk = Tmpfs::mount(&dir.path().join("small"), "256k");
    let full_root = disk.0.join("replica");
    let full = format!("file://{}", full_root.display());
    let mut child = sidecar(&db, &[good.clone(), full.clone()]);
    let insert = |i: i64| {
        // Random bytes, so that compression does not save the disk.
        conn.execute(
            "INSERT INTO fills (id, body) VALUES (?1, hex(randomblob(2000)))",
            [i],
        )
        .expect("insert");
    };
    let mut i = 0;
    eventually("the small disk to fill up", Duration::from_secs(40), || {
        i += 1;
        insert(i);
        let s = status_of(&db);
        s["replicas"][1]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("space"))
    });
    // Its journal (16 MiB) cannot be made either: status says so, and meanwhile the layout
    // gets the local log every few milliseconds.
    eventually(
        "the journal's failure to show",
        Duration::from_secs(20),
        || {
            i += 1;
            insert(i);
            status_of(&db)["replicas"][1]["journal_error"]
                .as_str()
                .is_some_and(|e| e.contains("space"))
        },
    );
    // The other replica is not held up.
    for _ in 0..20 {
        i += 1;
        insert(i);
    }
    eventually(
        "the good replica to hold everything",
        Duration::from_secs(20),
        || {
            let s = status_of(&db);
            s["replicas"][0]["txid"] == s["txid"] && s["replicas"][1]["txid"] != s["txid"]
        },
    );
    let leftovers: Vec<_> = walk(&full_root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "half-written files: {leftovers:?}");
    disk.resize("64m");
    both_catch_up_and_restore(
        &db,
        &conn,
        dir.path(),
        &mut child,
        [("good", &good), ("full", &full)],
    );
}

/// Waits until both replicas of the sidecar `child` hold its newest TXID, stops it, and checks
/// that each restores exactly the rows of `conn`'s database.
fn both_catch_up_and_restore(
    db: &Path,
    conn: &rusqlite::Connection,
    dir: &Path,
    child: &mut Child,
    replicas: [(&str, &String); 2],
) {
    eventually("both replicas to catch up", Duration::from_secs(40), || {
        let s = status_of(db);
        s["replicas"][1]["txid"] == s["txid"] && s["replicas"][0]["txid"] == s["txid"]
    });
    let _ = child.kill();
    let _ = child.wait();
    let expected = table_rows(conn);
    for (name, url) in replicas {
        let restored = restore(url, &dir.join(format!("restored-{name}")));
        assert_eq!(table_rows(&restored), expected, "{name} holds every row");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

const PY_WRITER: &str = r#"
import sqlite3, sys, random
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS ledger (txn INTEGER, leg INTEGER, amount INTEGER)")
db.execute("CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY, txns INTEGER, amount INTEGER)")
db.execute("INSERT OR IGNORE INTO totals VALUES (1, 0, 0)")
txn = db.execute("SELECT txns FROM totals WHERE id = 1").fetchone()[0]
rng = random.Random(int(sys.argv[2]))
while True:
    txn += 1
    legs = rng.randint(1, 8)
    db.execute("BEGIN IMMEDIATE")
    total = 0
    for leg in range(legs):
        amount = rng.randint(1, 1000)
        total += amount
        db.execute("INSERT INTO ledger VALUES (?, ?, ?)", (txn, leg, amount))
    db.execute("INSERT INTO ledger VALUES (?, -1, ?)", (txn, legs))
    db.execute("UPDATE totals SET txns = txns + 1, amount = amount + ? WHERE id = 1", (total,))
    db.execute("COMMIT")
    if rng.random() < 0.01:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
"#;

/// Checks a restored ledger: every transaction whole (its legs count matches its marker), and the
/// totals row equal to the sum of the ledger (written in the same transactions).
fn verify_ledger(conn: &rusqlite::Connection, cycle: u64) -> i64 {
    let (txns, amount): (i64, i64) = conn
        .query_row("SELECT txns, amount FROM totals WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap_or((0, 0));
    let (ledger_txns, ledger_amount): (i64, i64) = conn
        .query_row(
            "SELECT count(DISTINCT txn), coalesce(sum(CASE WHEN leg >= 0 THEN amount END), 0) FROM ledger",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, 0));
    assert_eq!(
        (txns, amount),
        (ledger_txns, ledger_amount),
        "cycle {cycle}: totals agree with the ledger (only whole transactions)"
    );
    let torn: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT txn, sum(leg >= 0) AS legs, max(CASE WHEN leg = -1 THEN amount END) AS marker FROM ledger GROUP BY txn) WHERE marker IS NULL OR legs != marker",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    assert_eq!(torn, 0, "cycle {cycle}: no torn transaction");
    txns
}

#[test]
fn another_programs_database_and_the_sidecar_survive_sigkills() {
    let cycles = cycles(30);
    let mut rng = Rng::from_env("another_programs_database_and_the_sidecar_survive_sigkills");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    let script = dir.path().join("writer.py");
    std::fs::write(&script, PY_WRITER).expect("script");
    let url = format!("file://{}", dir.path().join("replica").display());
    let mut restored_txns = 0;
    for cycle in 0..cycles {
        let mut writer = Command::new("python3")
            .arg(&script)
            .arg(&db)
            .arg(rng.next().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 writer");
        // Let the writer create the database before the sidecar looks at it.
        eventually("the writer's database", Duration::from_secs(10), || {
            db.is_file() && status_probe(&db)
        });
        let mut car = sidecar(&db, std::slice::from_ref(&url));
        std::thread::sleep(Duration::from_millis(rng.range(20, 300)));
        // Kill both, in a random order, at a random moment.
        if rng.range(0, 2) == 0 {
            let _ = writer.kill();
            let _ = car.kill();
        } else {
            let _ = car.kill();
            let _ = writer.kill();
        }
        let _ = writer.wait();
        let _ = car.wait();
        // A sidecar killed before its first file was complete leaves nothing to restore yet.
        let has_files = walk(&dir.path().join("replica/ltx"))
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "ltx"));
        if !has_files {
            continue;
        }
        let target = dir.path().join(format!("restored-{cycle}"));
        let conn = restore(&url, &target);
        restored_txns = verify_ledger(&conn, cycle);
        drop(conn);
        std::fs::remove_dir_all(&target).expect("clean");
    }
    assert!(restored_txns > 0, "restores held transactions");
    // A final clean pass: the sidecar ships everything the writer left.
    let mut car = sidecar(&db, std::slice::from_ref(&url));
    let source = rusqlite::Connection::open(&db).expect("open");
    let expected = verify_ledger(&source, cycles);
    // From this sidecar: the status a killed one left may say "caught up" with less.
    eventually("the replica to catch up", Duration::from_secs(30), || {
        let s = status_of(&db);
        s["pid"] == car.id()
            && s["txid"].as_u64().is_some_and(|t| t > 0)
            && s["replicas"][0]["txid"] == s["txid"]
    });
    let _ = car.kill();
    let _ = car.wait();
    let conn = restore(&url, &dir.path().join("restored-final"));
    assert_eq!(
        verify_ledger(&conn, cycles),
        expected,
        "the final restore has every transaction"
    );
    eprintln!("external crash test: {cycles} cycles, {expected} transactions at the end");
}

/// Whether the writer's schema exists yet.
fn status_probe(db: &Path) -> bool {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT count(*) FROM totals", [], |r| r.get::<_, i64>(0)))
        .is_ok()
}
