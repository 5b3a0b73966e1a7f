//! `tradevault restore --in-place`: through a running server, on another program's database
//! (refused while it is open), and killed with SIGKILL at random moments: the database always
//! holds the old or the new content, whole, and the next run says which.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Rng, Server, command};

fn trade(id: &str) -> Value {
    json!({ "trade_id": id, "symbol": "BTCUSD", "side": "buy", "qty": "1", "price": "100" })
}

/// Every row of `t`, in order, and the integrity check's answer.
fn content(db: &Path) -> (Vec<(i64, String)>, String) {
    let conn = rusqlite::Connection::open(db).expect("open");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let mut stmt = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    (rows, check)
}

#[test]
fn in_place_restore_of_a_served_store_goes_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let url = format!("file://{}", dir.path().join("replica").display());
    let server = Server::start_args(&data, &[], &["--replica", &url]);
    let mut api = server.client();
    for i in 0..3 {
        assert_eq!(api.post("/v1/trades", &trade(&format!("t{i}"))).0, 201);
    }
    // Wait until the replica's latest point holds the three trades, and note that point.
    let mut point = 0;
    for attempt in 0..3_000 {
        let probe = dir.path().join(format!("probe-{attempt}.db"));
        let out = command()
            .args(["restore", "--json", "--replica", &url, "--output"])
            .arg(&probe)
            .output()
            .expect("probe restore");
        if out.status.success() {
            let report: Value = serde_json::from_slice(&out.stdout).expect("json");
            let conn = rusqlite::Connection::open(&probe).expect("probe");
            let n: i64 = conn
                .query_row("SELECT count(*) FROM trades", [], |r| r.get(0))
                .expect("count");
            if n == 3 {
                point = report["txid"].as_u64().expect("txid");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(point > 0, "the replica caught up");
    for i in 3..5 {
        assert_eq!(api.post("/v1/trades", &trade(&format!("t{i}"))).0, 201);
    }
    let out = crate::common::succeed(
        command()
            .args([
                "restore",
                "--in-place",
                "--json",
                "--txid",
                &point.to_string(),
                "--replica",
                &url,
                "--data-dir",
            ])
            .arg(&data),
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["in_place"]["before"]["rows"]["trades"], 5);
    assert_eq!(report["in_place"]["after"]["rows"]["trades"], 3);
    // The server serves the restored content, and keeps taking writes.
    assert_eq!(api.counts()["trades"], 3);
    assert_eq!(api.post("/v1/trades", &trade("t9")).0, 201);
    assert_eq!(api.counts()["trades"], 4);
    // The safety copy holds what was there before.
    let safety = report["in_place"]["safety"].as_str().expect("safety path");
    let conn = rusqlite::Connection::open(safety).expect("safety copy");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM trades", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 5);
}

fn bot_db(path: &Path, rows: std::ops::Range<i64>, tag: &str) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT); DELETE FROM t;",
    )
    .expect("schema");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2) \
         INSERT INTO t SELECT i, ?3 || printf('%0200d', i) FROM n",
        rusqlite::params![rows.start, rows.end, tag],
    )
    .expect("rows");
}

fn replicate_once(db: &Path, url: &str) {
    crate::common::succeed(command().arg("replicate").arg(db).arg(url).arg("--once"));
}

#[test]
fn in_place_restore_refuses_a_database_another_program_has_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    bot_db(&db, 0..100, "a");
    replicate_once(&db, &url);
    let restored = content(&db).0;
    bot_db(&db, 50..70, "b");
    let busy = rusqlite::Connection::open(&db).expect("open");
    let out = command()
        .args(["restore", "--in-place", "--replica", &url, "--db"])
        .arg(&db)
        .output()
        .expect("restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("is open in pid"),
        "{stderr}"
    );
    assert_eq!(content(&db).0.len(), 20, "nothing changed");
    drop(busy);
    crate::common::succeed(
        command()
            .args(["restore", "--in-place", "--replica", &url, "--db"])
            .arg(&db),
    );
    assert_eq!(content(&db), (restored, "ok".to_owned()));
}

/// 30 in-place restores killed with SIGKILL at random moments: the database passes
/// integrity_check and holds exactly the old or the new rows, and the next run says which.
#[test]
fn a_killed_in_place_restore_leaves_the_old_or_the_new_database_and_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    bot_db(&db, 0..40_000, "new");
    replicate_once(&db, &url);
    let new = content(&db).0;
    bot_db(&db, 10_000..30_000, "old");
    let old = content(&db).0;
    // A clean copy of the old state, to start each cycle from.
    let pristine = dir.path().join("pristine.db");
    {
        let conn = rusqlite::Connection::open(&db).expect("open");
        conn.execute("VACUUM INTO ?1", [pristine.to_str().expect("utf8")])
            .expect("vacuum into");
    }
    let restore_in_place = || {
        let mut c = command();
        c.args([
            "restore",
            "--in-place",
            "--quick-check",
            "--replica",
            &url,
            "--db",
        ])
        .arg(&db);
        c
    };
    // How long a whole run takes, to spread the kills over it.
    let started = std::time::Instant::now();
    crate::common::succeed(&mut restore_in_place());
    let full_ms = started.elapsed().as_millis() as u64;
    let mut rng = Rng::from_env("inplace");
    let (mut olds, mut news, mut reported) = (0, 0, 0);
    for cycle in 0..30 {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        std::fs::copy(&pristine, &db).expect("reset");
        let mut child = restore_in_place()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(rng.range(0, full_ms + 50)));
        let _ = child.kill();
        let _ = child.wait();
        let (rows, check) = content(&db);
        assert_eq!(check, "ok", "cycle {cycle}");
        let holds = if rows == new {
            news += 1;
            "new"
        } else if rows == old {
            olds += 1;
            "old"
        } else {
            panic!("cycle {cycle}: a mixture of {} rows", rows.len());
        };
        // The next run reports an interrupted restore (one that left its journal), and what it
        // left, before anything else.
        let journal = tradevault::restore::inplace::journal_path(&db).exists();
        let next = command()
            .args(["restore", "--dry-run", "--replica", &url, "--db"])
            .arg(&db)
            .output()
            .expect("next run");
        let said = String::from_utf8_lossy(&next.stderr);
        assert!(next.status.success(), "cycle {cycle}: {said}");
        assert_eq!(
            said.contains("was interrupted"),
            journal,
            "cycle {cycle}: a journal was {}left, and the next run said: {said}",
            if journal { "" } else { "not " }
        );
        if journal {
            reported += 1;
            let expected = if holds == "new" {
                "the restored content"
            } else {
                "its previous content"
            };
            assert!(
                said.contains(expected),
                "cycle {cycle}: holds {holds}, but: {said}"
            );
        }
    }
    eprintln!(
        "30 kills: {olds} left the old content, {news} the new; {reported} journals reported"
    );
}

/// The store restored in place from an old backup holds that backup's copy of the catalog
/// mirror: the restore mirrors the targets again, so `backup_metadata` lists every backup
/// (the safety backup of the content it replaced too).
#[test]
fn the_store_restored_in_place_mirrors_the_catalogs_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs]\nbackup = \"\"\nprune = \"\"\nverify = \"\"\ndrill = \"\"\n\
             [[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\n",
            dir.path().join("tgt").display()
        ),
    )
    .expect("config");
    let (d, c) = (data.to_str().expect("utf8"), config.to_str().expect("utf8"));
    let mut ids = Vec::new();
    for t in ["a", "b"] {
        {
            let server = Server::start_args(&data, &[], &["--config", c]);
            assert_eq!(server.client().post("/v1/trades", &trade(t)).0, 201);
        }
        let out = command()
            .args(["backup", "create", "--data-dir", d, "--config", c, "--json"])
            .output()
            .expect("backup");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        ids.push(v[0]["id"].as_str().expect("id").to_owned());
    }
    let out = command()
        .args([
            "restore",
            "--data-dir",
            d,
            "--config",
            c,
            "--backup",
            &ids[0],
            "--in-place",
        ])
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = rusqlite::Connection::open(data.join("tradevault.db")).expect("open");
    let trades: i64 = conn
        .query_row("SELECT count(*) FROM trades", [], |r| r.get(0))
        .expect("trades");
    assert_eq!(trades, 1, "the first backup's content");
    let kinds: Vec<String> = conn
        .prepare("SELECT backup_type FROM backup_metadata ORDER BY backup_time")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    assert_eq!(kinds, ["manual", "manual", "safety"], "{kinds:?}");
    // The safety backup is of the store's file, an increment of its chain.
    let out = command()
        .args(["backup", "list", "--data-dir", d, "--config", c, "--json"])
        .output()
        .expect("list");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    let safety = listed[0]["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .find(|b| b["type"] == "safety")
        .expect("a safety backup")
        .clone();
    assert!(
        safety["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("tradevault.db"))
            && safety["parent"].is_string(),
        "{safety}"
    );
}
