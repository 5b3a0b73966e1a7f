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
    assert_eq!((run["job"].as_str(), run["status"].as_str()), (Some("drill"), Some("ok")), "{jobs}");
    let (_, metrics) = {
        let r = api.0.get("/metrics").expect("metrics");
        (r.status, r.text())
    };
    assert!(
        metrics.contains("tradevault_last_verified_restorable_timestamp_seconds{database=\"store\"}"),
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
    assert!(report["drills"][0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{report}");
    let (_, jobs) = api.get("/v1/jobs");
    assert_eq!(jobs["runs"][0]["status"], "failed", "{jobs}");
}
