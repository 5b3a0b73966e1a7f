//! `tradevault restore --json`: the result names the point restored, what it took and how long
//! each step ran; piped, nothing but the result is printed.

use std::path::Path;

use serde_json::Value;

use crate::common::command;

#[test]
fn restore_json_reports_the_point_sizes_check_and_durations() {
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
    let want = std::fs::metadata(fixtures.join("restored-latest.db"))
        .expect("fixture")
        .len();
    for (flags, check) in [
        (&[][..], "integrity_check"),
        (&["--quick-check"][..], "quick_check"),
    ] {
        let out = dir.path().join(format!("{check}.db"));
        let done = command()
            .args(["restore", "--replica", &url, "--json", "--output"])
            .arg(&out)
            .args(flags)
            .output()
            .expect("run restore");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(done.status.success(), "{stderr}");
        assert!(
            !stderr.contains("eta"),
            "no progress bar when piped: {stderr}"
        );
        let result: Value = serde_json::from_slice(&done.stdout).expect("one JSON object");
        assert_eq!(result["output"], out.display().to_string());
        assert_eq!(result["txid"], 16);
        let point = result["point_time"].as_str().expect("point_time");
        let parsed: jiff::Timestamp = point.parse().expect("RFC 3339");
        assert_eq!(Some(parsed.as_millisecond()), result["point_ms"].as_i64());
        assert_eq!(result["files"], 1);
        assert!(result["fetched_bytes"].as_u64().is_some_and(|b| b > 0));
        assert_eq!(result["bytes"].as_u64(), Some(want));
        assert_eq!(
            result["pages"]
                .as_u64()
                .zip(result["page_size"].as_u64())
                .map(|(p, s)| p * s),
            Some(want)
        );
        assert_eq!(result["check"], check);
        for step in ["plan", "fetch_apply", "check", "sync", "total"] {
            let seconds = result["durations"][format!("{step}_seconds")].as_f64();
            assert!(seconds.is_some_and(|s| s >= 0.0), "{step}: {result}");
        }
        assert_eq!(std::fs::metadata(&out).expect("restored").len(), want);
    }
}

/// A sidecar replicates another program's inserts; restores to random times, and to times just
/// before an insert began, are each either refused or exactly the state at that time: never a
/// row inserted after it, never one missing that was committed before it.
#[test]
fn a_time_restores_exactly_or_is_refused_never_newer() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let mut rng = crate::common::Rng::from_env("pitr");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY);")
        .expect("schema");
    let url = format!("file://{}", dir.path().join("replica").display());
    let mut sidecar = command()
        .arg("replicate")
        .arg(&db)
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("replicate");
    let now_ns = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as i64
    };
    // (began, ended, id): gaps up to 60 ms, so that some times fall between files.
    let mut inserts = Vec::new();
    for id in 1..=80i64 {
        let began = now_ns();
        conn.execute("INSERT INTO t VALUES (?1)", [id])
            .expect("insert");
        inserts.push((began, now_ns(), id));
        std::thread::sleep(Duration::from_millis(rng.range(0, 60)));
    }
    // The last insert reaches the replica, then the sidecar may go.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let latest = dir.path().join("latest.db");
        let _ = std::fs::remove_file(&latest);
        let done = command()
            .args(["restore", "--replica", &url, "--output"])
            .arg(&latest)
            .output()
            .expect("restore");
        if done.status.success() {
            let rows: i64 = rusqlite::Connection::open(&latest)
                .expect("open")
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("count");
            if rows == 80 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    let (mut exact, mut refused) = (0, 0);
    for k in 0..30 {
        let t_ns = if k % 2 == 0 {
            // Uniformly at random over the run.
            rng.range(inserts[4].0 as u64, inserts[75].0 as u64) as i64
        } else {
            // Half a millisecond before an insert began.
            inserts[rng.range(4, 76) as usize].0 - 500_000
        };
        let ts = jiff::Timestamp::from_nanosecond(i128::from(t_ns))
            .expect("time")
            .to_string();
        let out = dir.path().join(format!("t{k}.db"));
        let done = command()
            .args(["restore", "--replica", &url, "--timestamp", &ts, "--output"])
            .arg(&out)
            .output()
            .expect("restore");
        if !done.status.success() {
            let err = String::from_utf8_lossy(&done.stderr);
            assert!(err.contains("cannot be restored exactly"), "{ts}: {err}");
            refused += 1;
            // Asked for, the newest point made by then: never a row inserted after the time.
            let before = dir.path().join(format!("b{k}.db"));
            let done = command()
                .args([
                    "restore",
                    "--replica",
                    &url,
                    "--timestamp",
                    &ts,
                    "--at-or-before",
                    "--output",
                ])
                .arg(&before)
                .output()
                .expect("restore");
            assert!(
                done.status.success(),
                "{ts}: {}",
                String::from_utf8_lossy(&done.stderr)
            );
            let ids = ids_in(&before);
            for (began, _, id) in &inserts {
                assert!(
                    *began < t_ns || !ids.contains(id),
                    "{ts}: row {id} is after it"
                );
            }
            continue;
        }
        let got = ids_in(&out);
        for (began, ended, id) in &inserts {
            if *ended <= t_ns {
                assert!(
                    got.contains(id),
                    "{ts}: row {id}, committed before, is missing"
                );
            }
            if *began >= t_ns {
                assert!(
                    !got.contains(id),
                    "{ts}: row {id}, inserted after, is there"
                );
            }
        }
        exact += 1;
    }
    eprintln!("{exact} exact, {refused} refused");
    assert!(exact > 0, "no time between two files restored");
}

/// The ids of table `t` in the database at `path`.
fn ids_in(path: &Path) -> std::collections::BTreeSet<i64> {
    rusqlite::Connection::open(path)
        .expect("open")
        .prepare("SELECT id FROM t")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// A database whose rows break a CHECK constraint (written by a program that turned them off) is
/// refused as `sqlite3 FILE 'PRAGMA integrity_check'` refuses it: nothing under the output's name,
/// no staging file left, and a hint that fits a restore.
#[test]
fn a_restore_that_fails_its_check_leaves_nothing_and_says_what_to_try() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE fills(id INTEGER PRIMARY KEY, side TEXT NOT NULL CHECK (side IN ('buy', 'sell')));
         INSERT INTO fills(side) VALUES ('buy'), ('sell');
         PRAGMA ignore_check_constraints = ON;
         INSERT INTO fills(side) VALUES ('hold');",
    )
    .expect("fills");
    drop(conn);
    let url = format!("file://{}", dir.path().join("replica").display());
    crate::common::succeed(command().arg("replicate").arg(&db).arg(&url).arg("--once"));
    let out = dir.path().join("out.db");
    let done = command()
        .args(["restore", "--replica", &url, "--json", "--output"])
        .arg(&out)
        .output()
        .expect("run restore");
    assert!(!done.status.success());
    let result: Value = serde_json::from_slice(&done.stdout).expect("one JSON object");
    assert_eq!(result["error"]["code"], "corrupt", "{result}");
    let message = result["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("CHECK constraint failed in fills"),
        "{message}"
    );
    let hint = result["error"]["hint"].as_str().expect("hint");
    assert!(hint.contains("--timestamp"), "{hint}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("out.db"))
        .collect();
    left.sort();
    assert_eq!(left, Vec::<String>::new());
}
