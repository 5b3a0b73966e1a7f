//! Crash test: clients write trades continuously and record every acknowledged one; the server is
//! killed with SIGKILL at random moments. After each kill: `PRAGMA integrity_check` is ok, every
//! acknowledged trade is present exactly once, and positions equal positions recomputed from fills.
//! TRADEVAULT_CRASH_CYCLES sets the number of cycles (default 30).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::common::{Rng, Server, open_db};

#[test]
fn acknowledged_trades_survive_sigkill() {
    let cycles: u64 = std::env::var("TRADEVAULT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let mut rng = Rng::from_env("acknowledged_trades_survive_sigkill");
    let dir = tempfile::tempdir().expect("tempdir");
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut total_acked = 0usize;
    for cycle in 0..cycles {
        // A small checkpoint threshold, so kills also land while checkpoints run.
        let mut server = Server::start_with(
            dir.path(),
            &[("TRADEVAULT_STORE_CHECKPOINT_WAL_BYTES", "65536")],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (mut api, stop, acked) = (server.client(), stop.clone(), acked.clone());
                let mut rng = Rng(rng.next() | 1);
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("c{cycle}-w{w}-{n}");
                        let symbol = ["BTC", "ETH", "SOL"][rng.range(0, 3) as usize];
                        let side = if rng.range(0, 2) == 0 { "buy" } else { "sell" };
                        let trade = json!({ "trade_id": id, "symbol": symbol, "side": side,
                            "qty": format!("{}.{:03}", rng.range(0, 5), rng.range(1, 1000)),
                            "price": format!("{}.{:02}", rng.range(90, 110), rng.range(0, 100)),
                            "fee": format!("0.{:04}", rng.range(0, 10000)) });
                        let body = trade.to_string();
                        match api.0.post("/v1/trades", body.as_bytes()) {
                            Ok(r) if r.status == 201 => {
                                acked.lock().expect("lock").insert(id, body);
                            }
                            Ok(r) => panic!("unexpected answer {} {}", r.status, r.text()),
                            Err(_) => break, // the server is gone: this write was never acknowledged
                        }
                    }
                })
            })
            .collect();
        // The kill lands at a random moment: sometimes right after start, sometimes mid-stream.
        std::thread::sleep(Duration::from_millis(rng.range(5, 250)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer thread");
        }
        let acked = acked.lock().expect("lock");
        total_acked = acked.len();
        verify(dir.path(), &acked, cycle);
    }
    assert!(total_acked > 0, "the clients got acknowledgements");
    // The server restarts on what the last kill left, and says so through its API.
    let server = Server::start(dir.path());
    let mut api = server.client();
    let (status, stats) = api.get("/v1/stats?check=true");
    assert_eq!(
        (status, stats["integrity"].as_str()),
        (200, Some("ok")),
        "{stats}"
    );
    assert!(
        stats["tables"]["trades"]
            .as_u64()
            .is_some_and(|n| n as usize >= total_acked),
        "{stats}"
    );
    let (_, positions) = api.get("/v1/positions");
    let expected = tradevault::store::recompute_positions(&open_db(dir.path())).expect("recompute");
    for p in positions["items"].as_array().expect("items") {
        let want = expected[&(p["symbol"].as_str().unwrap_or("").to_owned(), false)];
        assert_eq!(
            p["qty"].as_str(),
            Some(tradevault::exact::format_decimal(want.qty).as_str()),
            "{p}"
        );
        assert_eq!(
            p["realized_pnl"].as_str(),
            Some(tradevault::exact::format_decimal(want.realized_pnl).as_str()),
            "{p}"
        );
    }
    eprintln!(
        "crash test: {cycles} SIGKILL cycles, {total_acked} acknowledged trades, all present exactly once"
    );
}

fn verify(dir: &std::path::Path, acked: &HashMap<String, String>, cycle: u64) {
    let conn = open_db(dir);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok", "cycle {cycle}");
    let mut stmt = conn
        .prepare("SELECT trade_id, count(*) FROM trades GROUP BY trade_id")
        .expect("prepare");
    let present: HashMap<String, i64> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    let mut stmt = conn
        .prepare("SELECT symbol, side, qty, price, fee FROM trades WHERE trade_id = ?1")
        .expect("prepare");
    for (id, body) in acked {
        assert_eq!(
            present.get(id),
            Some(&1),
            "cycle {cycle}: acknowledged trade {id} is present exactly once"
        );
        let sent: serde_json::Value = serde_json::from_str(body).expect("sent json");
        let stored: [String; 5] = stmt
            .query_row([id], |r| {
                Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?])
            })
            .expect("stored trade");
        let canon = |v: &serde_json::Value| {
            tradevault::exact::format_decimal(
                tradevault::exact::parse_decimal(v.as_str().expect("str")).expect("decimal"),
            )
        };
        let want = [
            sent["symbol"].as_str().expect("symbol").to_owned(),
            sent["side"].as_str().expect("side").to_owned(),
            canon(&sent["qty"]),
            canon(&sent["price"]),
            canon(&sent["fee"]),
        ];
        assert_eq!(
            stored, want,
            "cycle {cycle}: trade {id} is stored as it was acknowledged"
        );
    }
    let history: i64 = conn
        .query_row("SELECT count(*) FROM position_history", [], |r| r.get(0))
        .expect("count");
    assert_eq!(
        history as usize,
        present.len(),
        "cycle {cycle}: one position change per fill"
    );
    // Integrity (the full check), foreign keys, and every position recomputed from its fills.
    let report = tradevault::store::check(&conn, &dir.join("tradevault.db"), true).expect("check");
    assert!(report.ok, "cycle {cycle}: {report:?}");
}
