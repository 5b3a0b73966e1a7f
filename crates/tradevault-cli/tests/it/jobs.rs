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
