//! Scheduled jobs through the binary: `tradevault drill` runs the server's drill job, which writes
//! its sentinel, waits for the replica to hold it, restores and checks; the run is in /v1/jobs,
//! `tradevault status` and the metrics. A drill whose replica is gone fails, and says why.

use serde_json::{Value, json};

use crate::common::{Server, command};

fn drill(data: &std::path::Path) -> (bool, Value) {
    let out = command()
        .args(["drill", "--json", "--data-dir"])
        .arg(data)
        .output()
        .expect("drill");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), report)
}

#[test]
fn drills_prove_the_store_restorable_and_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let server = Server::start_args(&data, &[], &["--replica", &url]);
    let mut api = server.client();
    for i in 0..5 {
        let trade = json!({ "trade_id": format!("t{i}"), "symbol": "ETHUSD", "side": "buy", "qty": "2", "price": "2500" });
        assert_eq!(api.post("/v1/trades", &trade).0, 201);
    }
    let (ok, report) = drill(&data);
    assert!(ok, "{report}");
    let store = &report["drills"][0];
    assert_eq!(store["database"], "store");
    assert_eq!(store["sentinel_found"], true, "{store}");
    assert_eq!(store["integrity"], "ok");
    assert_eq!(store["rows"]["trades"], 5);
    let (_, jobs) = api.get("/v1/jobs");
    let run = &jobs["runs"][0];
    assert_eq!(
        (run["job"].as_str(), run["status"].as_str()),
        (Some("drill"), Some("ok")),
        "{jobs}"
    );
    let (_, metrics) = {
        let r = api.0.get("/metrics").expect("metrics");
        (r.status, r.text())
    };
    assert!(
        metrics
            .contains("tradevault_last_verified_restorable_timestamp_seconds{database=\"store\"}"),
        "{metrics}"
    );
    let status = command()
        .args(["status", "--data-dir"])
        .arg(&data)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("drill") && text.contains(" ok "), "{text}");

    // The replica disappears: the next drill fails, and the run says why.
    std::fs::remove_dir_all(&replica).expect("remove replica");
    let (ok, report) = drill(&data);
    assert!(!ok, "{report}");
    assert!(
        report["drills"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{report}"
    );
    let (_, jobs) = api.get("/v1/jobs");
    assert_eq!(jobs["runs"][0]["status"], "failed", "{jobs}");
}

fn run_job(api: &mut crate::common::Api, job: &str) -> Value {
    let (status, started) = api.call("POST", &format!("/v1/jobs/{job}/run"), None);
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_i64().expect("run id");
    for _ in 0..6_000 {
        let (_, jobs) = api.get("/v1/jobs");
        if let Some(run) = jobs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"].as_i64() == Some(id))
            && run["status"] != "running"
        {
            return run.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("job {job} did not end");
}

/// serve's backup, verify, prune and drill jobs on a configured target; then a restore from a
/// backup, to a file and in place (its safety copy becomes a backup of type safety).
#[test]
fn scheduled_backups_verify_prune_drill_and_restore_from_a_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let backups = dir.path().join("backups");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs]\nbackup = \"\"\nprune = \"\"\nverify = \"\"\ndrill = \"\"\n\n[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\nkeep_last = 2\n",
            backups.display()
        ),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf8");
    let server = Server::start_args(&data, &[], &["--config", cfg]);
    let mut api = server.client();
    let mut ids = Vec::new();
    for round in 0..3 {
        for i in 0..4 {
            let trade = json!({ "trade_id": format!("r{round}-{i}"), "symbol": "BTCUSD", "side": "buy", "qty": "1", "price": "100" });
            assert_eq!(api.post("/v1/trades", &trade).0, 201);
        }
        let run = run_job(&mut api, "backup");
        assert_eq!(run["status"], "ok", "{run}");
        let b = &run["detail"]["backups"][0];
        assert_eq!(b["incremental"], round > 0, "{run}");
        ids.push(b["id"].as_str().expect("id").to_owned());
    }
    let run = run_job(&mut api, "verify");
    assert_eq!(run["status"], "ok", "{run}");
    let run = run_job(&mut api, "prune");
    assert_eq!(run["status"], "ok", "{run}");
    let run = run_job(&mut api, "drill");
    assert_eq!(run["status"], "ok", "{run}");
    assert_eq!(run["detail"]["backups"][0]["ok"], true, "{run}");
    // The target describes itself: listed by URL alone, with the drill recorded.
    let url = format!("file://{}", backups.display());
    let stats = command()
        .args(["backup", "stats", "--json", "--target", &url])
        .output()
        .expect("stats");
    let stats_text = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success() && stats_text.contains("drill"),
        "{stats_text}"
    );

    // Restore the first backup still kept to a file: it holds the trades of its time.
    let listed = command()
        .args(["backup", "list", "--json", "--target", &url])
        .output()
        .expect("list");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    let kept: Vec<String> = listed
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["backups"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !kept.is_empty() && kept.iter().all(|k| ids.contains(k)),
        "{listed}"
    );
    let out = dir.path().join("from-backup.db");
    let done = command()
        .args([
            "restore", "--json", "--config", cfg, "--backup", &ids[2], "--output",
        ])
        .arg(&out)
        .output()
        .expect("restore");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: Value = serde_json::from_slice(&done.stdout).expect("json");
    assert_eq!(report["rows"]["trades"], 12, "{report}");

    // In place, through the server, from the newest backup: the safety copy is a backup too.
    for i in 0..2 {
        let trade = json!({ "trade_id": format!("late-{i}"), "symbol": "BTCUSD", "side": "buy", "qty": "1", "price": "100" });
        assert_eq!(api.post("/v1/trades", &trade).0, 201);
    }
    assert_eq!(api.counts()["trades"], 14);
    let done = command()
        .args([
            "restore",
            "--json",
            "--in-place",
            "--config",
            cfg,
            "--backup",
            &ids[2],
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("restore in place");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let report: Value = serde_json::from_slice(&done.stdout).expect("json");
    assert_eq!(api.counts()["trades"], 12);
    assert_eq!(
        report["safety_backup"]["targets"][0]["target"], "local",
        "{report}"
    );
    let listed = command()
        .args(["backup", "list", "--json", "--target", &url])
        .output()
        .expect("list");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\"safety\""));
}

/// Issue 4: a `[[database]]` with no replica is accepted, backed up by serve's job and drilled
/// from its backups, and neither `serve` nor `replicate --config` replicates it. `drill` through
/// the server prints every drill (backups included), sets the restorable time of each database,
/// and exits 1 when one fails.
#[test]
fn a_database_without_a_replica_is_backed_up_and_drilled_not_replicated() {
    use crate::drill::{damage, database};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (bot, fills) = (dir.path().join("bot.db"), dir.path().join("fills.db"));
    database(&bot, 50);
    database(&fills, 30);
    let backups = dir.path().join("backups");
    let write = |name: &str, with_fills: bool| {
        let mut text = format!(
            "[jobs]\nbackup = \"\"\nprune = \"\"\nverify = \"\"\ndrill = \"\"\n\n[[database]]\nname = \"bot\"\npath = \"{}\"\n\n",
            bot.display()
        );
        if with_fills {
            text.push_str(&format!(
                "[[database]]\nname = \"fills\"\npath = \"{}\"\n[[database.replica]]\nurl = \"file://{}\"\n\n",
                fills.display(),
                dir.path().join("replica").display()
            ));
        }
        text.push_str(&format!(
            "[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\n",
            backups.display()
        ));
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        path.to_str().expect("utf8").to_owned()
    };
    let (cfg, bot_only) = (write("tv.toml", true), write("bot.toml", false));

    // replicate --config ships the database with a replica and skips the other one.
    let out =
        crate::common::succeed(command().args(["replicate", "--once", "--json", "--config", &cfg]));
    let shipped: Value = serde_json::from_slice(&out.stdout).expect("json");
    let names: Vec<&str> = shipped
        .as_array()
        .expect("replicas")
        .iter()
        .filter_map(|r| r["database"].as_str())
        .collect();
    assert_eq!(names, ["fills"], "{shipped}");
    let out = command()
        .args(["replicate", "--once", "--config", &bot_only])
        .output()
        .expect("replicate");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to replicate"));

    let server = Server::start_args(&data, &[], &["--config", &cfg]);
    let mut api = server.client();
    let trade =
        json!({ "trade_id": "t1", "symbol": "ETHUSD", "side": "buy", "qty": "1", "price": "2500" });
    assert_eq!(api.post("/v1/trades", &trade).0, 201);
    let run = run_job(&mut api, "backup");
    assert_eq!(run["status"], "ok", "{run}");
    let id_of = |db: &str| {
        run["detail"]["backups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["database"] == db)
            .and_then(|b| b["id"].as_str())
            .unwrap_or_else(|| panic!("no backup of {db}: {run}"))
            .to_owned()
    };
    let bot_backup = id_of("bot");
    // serve did not replicate bot: no local log beside it.
    assert!(!tradevault::replicate::status::local_log_dir(&bot).exists());

    let drill_text = || {
        let out = command()
            .args(["drill", "--data-dir"])
            .arg(&data)
            .output()
            .expect("drill");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = drill_text();
    assert_eq!(code, Some(0), "{text}");
    for db in ["store", "bot"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{db}: restorable: ")) && l.contains(" on local")),
            "{text}"
        );
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("fills: restorable: "))
            .count(),
        2,
        "fills: from its replica and from its backup: {text}"
    );
    let metrics = api.0.get("/metrics").expect("metrics").text();
    for db in ["store", "bot", "fills"] {
        assert!(
            metrics.contains(&format!(
                "tradevault_last_verified_restorable_timestamp_seconds{{database=\"{db}\"}}"
            )),
            "{db}: {metrics}"
        );
    }

    damage(&backups, &bot_backup);
    let (code, text) = drill_text();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("bot: DRILL FAILED")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("store: restorable: ")));
}

/// Issue 4: the drill of a backup applies the replica's files after it, so the sentinel written
/// just before the drill comes back from it too, and its rows equal the replica's copy.
#[test]
fn a_backup_drill_applies_the_replica_files_after_the_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs]\nbackup = \"\"\nprune = \"\"\nverify = \"\"\ndrill = \"\"\n\n[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\n",
            dir.path().join("backups").display()
        ),
    )
    .expect("config");
    let url = format!("file://{}", dir.path().join("replica").display());
    let cfg = config.to_str().expect("utf8");
    let server = Server::start_args(&data, &[], &["--config", cfg, "--replica", &url]);
    let mut api = server.client();
    let mut trade = |i: u32| {
        let t = json!({ "trade_id": format!("t{i}"), "symbol": "ETHUSD", "side": "buy", "qty": "1", "price": "2500" });
        assert_eq!(api.post("/v1/trades", &t).0, 201);
    };
    (0..3).for_each(&mut trade);
    // The backup must come after the replica's first snapshot, or only the backup alone can
    // restore it (the drill says so): wait (bounded) until the replica holds one.
    crate::common::eventually(
        "the replica's first snapshot",
        std::time::Duration::from_secs(20),
        || {
            crate::common::metric(
                &server.client().0.get("/metrics").expect("metrics").text(),
                "tradevault_replication_txid",
            ) >= 1.0
        },
    );
    let run = run_job(&mut server.client(), "backup");
    assert_eq!(run["status"], "ok", "{run}");
    (3..5).for_each(&mut trade);

    let (ok, report) = drill(&data);
    assert!(ok, "{report}");
    let drills = report["drills"].as_array().expect("drills");
    assert_eq!(drills.len(), 2, "{report}");
    let replica = drills
        .iter()
        .find(|d| d["backup_id"].is_null())
        .expect("replica drill");
    let backup = drills
        .iter()
        .find(|d| d["backup_id"].is_string())
        .expect("backup drill");
    assert_eq!(replica["sentinel_found"], true, "{replica}");
    assert!(
        backup["source"]
            .as_str()
            .is_some_and(|s| s.contains(" + replica ")),
        "{backup}"
    );
    assert_eq!(backup["sentinel_found"], true, "{backup}");
    assert_eq!(backup["txid"], replica["txid"], "{report}");
    assert_eq!(backup["rows"]["trades"], 5, "{backup}");
    assert!(
        backup["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == "rows"
                && c["ok"] == true
                && c["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("as in the copy from replica"))),
        "{backup}"
    );
}
