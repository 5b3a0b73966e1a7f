//! The HTTP API, driven over real HTTP against the real binary.

use serde_json::{Value, json};

use crate::common::{Api, Server};

fn trade(id: &str, symbol: &str, side: &str, qty: &str, price: &str) -> Value {
    json!({ "trade_id": id, "symbol": symbol, "side": side, "qty": qty, "price": price, "ts": "2026-11-20T10:00:00Z" })
}

fn started() -> (tempfile::TempDir, Server, Api) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let api = server.client();
    (dir, server, api)
}

#[test]
fn identical_resend_returns_the_original_and_writes_nothing() {
    let (_dir, _server, mut api) = started();
    let t = json!({ "trade_id": "T-1", "symbol": "BTCUSD", "side": "buy", "qty": "0.50", "price": 50000.10,
                    "fee": "1.25", "fee_currency": "USD", "ts": "2026-11-20T10:00:00+01:00", "strategy": "momo" });
    let (s1, first) = api.post("/v1/trades", &t);
    assert_eq!(s1, 201, "{first}");
    assert_eq!(first["qty"], "0.5");
    assert_eq!(first["price"], "50000.1");
    assert_eq!(first["ts"], "2026-11-20T09:00:00.000000000Z");
    // The same content in other spellings is the same trade.
    let resend = json!({ "trade_id": "T-1", "symbol": "BTCUSD", "side": "buy", "qty": 0.5, "price": "50000.100",
                         "fee": 1.25, "fee_currency": "USD", "ts": "2026-11-20T09:00:00Z", "strategy": "momo" });
    let (s2, second) = api.post("/v1/trades", &resend);
    assert_eq!(s2, 200, "{second}");
    assert_eq!(
        first, second,
        "a re-send returns the original, created_at included"
    );
    let (s3, conflict) = api.post("/v1/trades", &json!({ "trade_id": "T-1", "symbol": "BTCUSD", "side": "buy", "qty": "0.6", "price": "50000.1" }));
    assert_eq!(s3, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "conflict");
    assert_eq!(conflict["error"]["field"], "trade_id");
    let counts = api.counts();
    assert_eq!(
        (
            counts["trades"].as_i64(),
            counts["position_history"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let (_, positions) = api.get("/v1/positions");
    assert_eq!(
        positions["items"][0]["qty"], "0.5",
        "a re-send never moves the position"
    );
    // Orders and signals are idempotent the same way.
    let order = json!({ "client_order_id": "O-1", "symbol": "BTCUSD", "side": "buy", "type": "limit", "qty": "1", "limit_price": "49000" });
    assert_eq!(api.post("/v1/orders", &order).0, 201);
    assert_eq!(api.post("/v1/orders", &order).0, 200);
    let signal = json!({ "signal_id": "S-1", "symbol": "BTCUSD", "price": "1", "final_signal": "buy", "confidence": "0.9" });
    assert_eq!(api.post("/v1/signals", &signal).0, 201);
    assert_eq!(api.post("/v1/signals", &signal).0, 200);
    let mut changed = signal.clone();
    changed["confidence"] = json!("0.8");
    assert_eq!(api.post("/v1/signals", &changed).0, 409);
}

#[test]
fn a_batch_is_all_or_nothing() {
    let (_dir, _server, mut api) = started();
    assert_eq!(
        api.post("/v1/trades", &trade("A", "ETH", "buy", "1", "100"))
            .0,
        201
    );
    let failing_batches = [
        // fails validation before reaching the store
        (
            json!([
                trade("B1", "ETH", "buy", "1", "100"),
                trade("B2", "ETH", "buy", "-1", "100")
            ]),
            400,
            "[1].qty",
        ),
        // fails inside the writer, after B1 was already applied in the same transaction
        (
            json!([trade("B1", "ETH", "buy", "1", "100"), { "trade_id": "B2", "symbol": "ETH", "side": "buy", "qty": "1", "price": "1", "order_id": "nope" }]),
            422,
            "[1].order_id",
        ),
        // an id already stored with other content
        (
            json!([
                trade("B1", "ETH", "buy", "1", "100"),
                trade("A", "ETH", "sell", "1", "100")
            ]),
            409,
            "[1].trade_id",
        ),
        // the same id twice in one batch
        (
            json!([
                trade("B1", "ETH", "buy", "1", "100"),
                trade("B1", "ETH", "buy", "1", "100")
            ]),
            400,
            "[1].trade_id",
        ),
    ];
    for (batch, status, field) in failing_batches {
        let (s, body) = api.post("/v1/trades", &batch);
        assert_eq!(s, status, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        let counts = api.counts();
        assert_eq!(
            counts["trades"], 1,
            "nothing of a failed batch is written: {counts}"
        );
        assert_eq!(counts["position_history"], 1);
        let (_, pos) = api.get("/v1/positions/ETH");
        assert_eq!(pos["qty"], "1");
    }
    let (s, stored) = api.post(
        "/v1/trades",
        &json!([
            trade("B1", "ETH", "buy", "1", "110"),
            trade("A", "ETH", "buy", "1", "100"),
            trade("B2", "ETH", "sell", "3", "120")
        ]),
    );
    assert_eq!(s, 201, "{stored}");
    let ids: Vec<&str> = stored
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["trade_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["B1", "A", "B2"], "answered in request order");
    let (_, pos) = api.get("/v1/positions/ETH");
    assert_eq!(
        (
            pos["qty"].as_str(),
            pos["avg_price"].as_str(),
            pos["realized_pnl"].as_str()
        ),
        (Some("-1"), Some("120"), Some("30"))
    );
}

#[test]
fn test_rows_stay_out_of_production_reads() {
    let (_dir, _server, mut api) = started();
    assert_eq!(
        api.post("/v1/trades", &trade("P1", "BTC", "buy", "1", "100"))
            .0,
        201
    );
    let mut t = trade("T1", "BTC", "buy", "5", "999");
    t["test_mode"] = json!(true);
    assert_eq!(api.post("/v1/trades", &t).0, 201);
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["trade_id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(ids(&api.get("/v1/trades").1), ["P1"]);
    assert_eq!(ids(&api.get("/v1/trades?test_mode=false").1), ["P1"]);
    assert_eq!(ids(&api.get("/v1/trades?test_mode=true").1), ["T1"]);
    assert_eq!(ids(&api.get("/v1/trades?test_mode=all").1), ["P1", "T1"]);
    assert_eq!(api.get("/v1/trades/T1").0, 404);
    assert_eq!(api.get("/v1/trades/T1?test_mode=true").0, 200);
    let (_, prod) = api.get("/v1/positions");
    assert_eq!(prod["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        prod["items"][0]["qty"], "1",
        "test fills never move production positions"
    );
    assert_eq!(prod["items"][0]["test_mode"], false);
    let (_, test) = api.get("/v1/positions?test_mode=true");
    assert_eq!(test["items"][0]["qty"], "5");
    let (_, hist) = api.get("/v1/positions/BTC/history");
    assert_eq!(hist["items"].as_array().map(Vec::len), Some(1));
    let mut log = json!({ "level": "info", "source": "bot", "message": "test run" });
    log["test_mode"] = json!(true);
    assert_eq!(api.post("/v1/logs", &log).0, 201);
    assert_eq!(
        api.get("/v1/logs").1["items"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        api.get("/v1/logs?test_mode=true").1["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Orders, signals, a signal's trades and status values follow the same rule.
    let sig = json!({ "signal_id": "TS", "symbol": "BTC", "price": "1", "final_signal": "buy", "confidence": "0.5", "test_mode": true });
    assert_eq!(api.post("/v1/signals", &sig).0, 201);
    let order = json!({ "client_order_id": "TO", "symbol": "BTC", "side": "buy", "type": "market", "qty": "1", "test_mode": true, "signal_id": "TS" });
    assert_eq!(api.post("/v1/orders", &order).0, 201);
    let mut attributed = trade("T2", "BTC", "buy", "1", "1");
    attributed["test_mode"] = json!(true);
    attributed["signal_id"] = json!("TS");
    assert_eq!(api.post("/v1/trades", &attributed).0, 201);
    for (path, test_path) in [
        ("/v1/signals", "/v1/signals?test_mode=true"),
        ("/v1/orders", "/v1/orders?test_mode=1"),
    ] {
        assert_eq!(
            api.get(path).1["items"].as_array().map(Vec::len),
            Some(0),
            "{path}"
        );
        assert_eq!(
            api.get(test_path).1["items"].as_array().map(Vec::len),
            Some(1),
            "{test_path}"
        );
    }
    assert_eq!(api.get("/v1/signals/TS").0, 404);
    assert_eq!(api.get("/v1/orders/TO").0, 404);
    assert_eq!(api.get("/v1/signals/TS/trades").0, 404);
    assert_eq!(
        api.get("/v1/signals/TS/trades?test_mode=true").1["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        api.call(
            "PUT",
            "/v1/status/mode",
            Some(r#"{"value":"test run","test_mode":true}"#)
        )
        .0,
        200
    );
    assert_eq!(api.get("/v1/status/mode").0, 404);
    assert_eq!(
        api.get("/v1/status/mode?test_mode=true").1["value"],
        "test run"
    );
    assert_eq!(
        api.get("/v1/status").1["items"].as_array().map(Vec::len),
        Some(0)
    );
}

/// Clients fill URL templates: an empty value means the parameter was not given.
#[test]
fn empty_query_values_mean_not_given() {
    let (_dir, _server, mut api) = started();
    assert_eq!(
        api.post("/v1/trades", &trade("E1", "BTC", "buy", "1", "1"))
            .0,
        201
    );
    let (s, page) =
        api.get("/v1/trades?symbol=&from=&to=&test_mode=&strategy=&signal_id=&limit=&cursor=");
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        api.get("/v1/positions?test_mode=").1["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn trades_are_attributed_to_signals_and_orders() {
    let (_dir, _server, mut api) = started();
    let signal = json!({ "signal_id": "SIG-1", "ts": "2026-11-20T09:59:00Z", "symbol": "BTCUSD", "price": "50000", "final_signal": "buy",
                         "confidence": 0.85, "aggregation_method": "weighted_average", "strategy_version": "abc123",
                         "strategies": { "sentiment": { "signal": "buy", "confidence": 0.9 }, "technical": { "signal": "buy", "confidence": 0.8 } } });
    let (s, stored) = api.post("/v1/signals", &signal);
    assert_eq!(s, 201, "{stored}");
    assert_eq!(stored["strategies"]["sentiment"]["confidence"], json!(0.9));
    assert_eq!(stored["confidence"], "0.85");
    let order = json!({ "client_order_id": "ORD-1", "symbol": "BTCUSD", "side": "buy", "type": "market", "qty": "2", "signal_id": "SIG-1", "strategy": "momo" });
    assert_eq!(api.post("/v1/orders", &order).0, 201);
    for (id, qty) in [("F-1", "1.5"), ("F-2", "0.5")] {
        let mut t = trade(id, "BTCUSD", "buy", qty, "50010");
        t["order_id"] = json!("ORD-1");
        t["signal_id"] = json!("SIG-1");
        assert_eq!(api.post("/v1/trades", &t).0, 201);
    }
    assert_eq!(
        api.post("/v1/trades", &trade("F-3", "BTCUSD", "sell", "1", "50100"))
            .0,
        201
    );
    let (s, attributed) = api.get("/v1/signals/SIG-1/trades");
    assert_eq!(s, 200, "{attributed}");
    let ids: Vec<&str> = attributed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["trade_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["F-1", "F-2"]);
    assert_eq!(
        api.get("/v1/trades?order_id=ORD-1").1["items"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        api.get("/v1/trades?signal_id=SIG-1&symbol=BTCUSD").1["items"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(api.get("/v1/signals/NOPE/trades").0, 404);
    // A reference to a signal that does not exist is refused.
    let mut orphan = trade("F-4", "BTCUSD", "buy", "1", "1");
    orphan["signal_id"] = json!("SIG-404");
    let (s, err) = api.post("/v1/trades", &orphan);
    assert_eq!(
        (s, err["error"]["field"].as_str()),
        (422, Some("signal_id")),
        "{err}"
    );
    // Order status moves forward and never leaves a final state.
    let patch = |api: &mut Api, status: &str| {
        api.call(
            "PATCH",
            "/v1/orders/ORD-1",
            Some(&json!({ "status": status }).to_string()),
        )
    };
    assert_eq!(patch(&mut api, "open").0, 200);
    let (s, filled) = patch(&mut api, "filled");
    assert_eq!((s, filled["status"].as_str()), (200, Some("filled")));
    assert_eq!(
        patch(&mut api, "filled").0,
        200,
        "re-sending the current status is fine"
    );
    assert_eq!(patch(&mut api, "open").0, 409);
    assert_eq!(
        api.call("PATCH", "/v1/orders/NOPE", Some(r#"{"status":"open"}"#))
            .0,
        404
    );
    assert_eq!(api.get("/v1/orders/ORD-1").1["status"], "filled");
    assert_eq!(
        api.get("/v1/orders?status=filled&signal_id=SIG-1").1["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn lists_page_with_cursors_and_filter_by_time() {
    let (_dir, _server, mut api) = started();
    let batch: Vec<Value> = (0..25)
        .map(|i| {
            let mut t = trade(
                &format!("P{i:02}"),
                if i % 2 == 0 { "AAA" } else { "BBB" },
                "buy",
                "1",
                "10",
            );
            t["ts"] = json!(format!("2026-11-20T10:{i:02}:00Z"));
            t
        })
        .collect();
    assert_eq!(api.post("/v1/trades", &Value::Array(batch)).0, 201);
    let mut seen = Vec::new();
    let mut path = "/v1/trades?limit=10".to_owned();
    for _ in 0..10 {
        let (s, page) = api.get(&path);
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|t| t["trade_id"].as_str().unwrap_or("").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/trades?limit=10&cursor={c}"),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("P{i:02}")).collect();
    assert_eq!(seen, want, "every row exactly once, in order");
    let (_, window) =
        api.get("/v1/trades?symbol=AAA&from=2026-11-20T10:04:00Z&to=2026-11-20T10:10:00Z");
    let ids: Vec<&str> = window["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["trade_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        ["P04", "P06", "P08"],
        "from is inclusive, to exclusive"
    );
}

#[test]
fn logs_and_status() {
    let (_dir, _server, mut api) = started();
    let logs = json!([
        { "level": "info", "source": "engine", "message": "started", "context": { "pid": 42 } },
        { "level": "error", "source": "exchange", "message": "timeout\nretrying", "context": [1, "two"] },
    ]);
    let (s, stored) = api.post("/v1/logs", &logs);
    assert_eq!(s, 201, "{stored}");
    let (_, errors) = api.get("/v1/logs?level=error");
    assert_eq!(errors["items"][0]["message"], "timeout\nretrying");
    assert_eq!(errors["items"][0]["context"], json!([1, "two"]));
    let (s, set) = api.call(
        "PUT",
        "/v1/status/engine.state",
        Some(r#"{"value": {"running": true, "pnl": "12.5"}, "bot_version": "1.2.0"}"#),
    );
    assert_eq!(s, 200, "{set}");
    let (_, got) = api.get("/v1/status/engine.state");
    assert_eq!(got["value"], json!({ "running": true, "pnl": "12.5" }));
    assert_eq!(got["bot_version"], "1.2.0");
    assert_eq!(
        api.call(
            "PUT",
            "/v1/status/engine.state",
            Some(r#"{"value": "stopped"}"#)
        )
        .0,
        200
    );
    assert_eq!(api.get("/v1/status/engine.state").1["value"], "stopped");
    assert_eq!(
        api.get("/v1/status").1["items"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(api.get("/v1/status/missing").0, 404);
    assert_eq!(
        api.call("PUT", "/v1/status/cleared", Some(r#"{"value": null}"#))
            .0,
        200,
        "null is a value"
    );
    assert_eq!(api.get("/v1/status/cleared").1["value"], Value::Null);
}

/// Every kind of bad input is answered 4xx with the error shape, and nothing is written.
#[test]
fn bad_input_is_refused_with_4xx_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        dir.path(),
        &[
            ("TRADEVAULT_SERVER_BODY_BYTES_MAX", "65536"),
            ("TRADEVAULT_API_BATCH_ITEMS_MAX", "50"),
        ],
    );
    let mut api = server.client();
    assert_eq!(api.post("/v1/orders", &json!({ "client_order_id": "O", "symbol": "X", "side": "buy", "type": "market", "qty": "1" })).0, 201);
    let before = api.counts();
    let ok = r#""trade_id":"t","symbol":"X","side":"buy""#;
    let long = "x".repeat(200);
    let huge = format!(
        r#"{{"trade_id":"t","symbol":"X","side":"buy","qty":"1","price":"1","strategy":"{}"}}"#,
        "y".repeat(70_000)
    );
    let many: Vec<Value> = (0..51)
        .map(|i| trade(&format!("m{i}"), "X", "buy", "1", "1"))
        .collect();
    let cases: Vec<(&str, &str, String, u16, &str, Option<&str>)> = vec![
        ("POST", "/v1/trades", "{".into(), 400, "malformed_json", None),
        ("POST", "/v1/trades", "".into(), 400, "malformed_json", None),
        ("POST", "/v1/trades", "not json".into(), 400, "malformed_json", None),
        ("POST", "/v1/trades", r#""a string""#.into(), 400, "invalid_type", None),
        ("POST", "/v1/trades", "[]".into(), 400, "empty_batch", None),
        ("POST", "/v1/trades", "[1]".into(), 400, "invalid_type", Some("[0]")),
        ("POST", "/v1/trades", "[[]]".into(), 400, "invalid_type", Some("[0]")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1"}}"#), 400, "missing_field", Some("price")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","extra":1}}"#), 400, "unknown_field", Some("extra")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":true}}"#), 400, "invalid_type", Some("price")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":[1],"price":"1"}}"#), 400, "invalid_type", Some("qty")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"0","price":"1"}}"#), 400, "invalid_value", Some("qty")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":-2,"price":"1"}}"#), 400, "invalid_value", Some("qty")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"-0.01"}}"#), 400, "invalid_value", Some("price")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","fee":"-1"}}"#), 400, "invalid_value", Some("fee")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"NaN","price":"1"}}"#), 400, "invalid_value", Some("qty")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"Infinity"}}"#), 400, "invalid_value", Some("price")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":NaN,"price":"1"}}"#), 400, "malformed_json", None),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":1e400,"price":"1"}}"#), 400, "invalid_value", Some("qty")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1.0000000000000000000000000000001"}}"#), 400, "invalid_value", Some("price")),
        ("POST", "/v1/trades", r#"{"trade_id":"t","symbol":"X","side":"hold","qty":"1","price":"1"}"#.into(), 400, "invalid_value", Some("side")),
        ("POST", "/v1/trades", r#"{"trade_id":"t","symbol":"X","side":"BUY","qty":"1","price":"1"}"#.into(), 400, "invalid_value", Some("side")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","ts":"yesterday"}}"#), 400, "invalid_value", Some("ts")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","ts":"2026-11-20T10:00:00"}}"#), 400, "invalid_value", Some("ts")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","test_mode":"yes"}}"#), 400, "invalid_type", Some("test_mode")),
        ("POST", "/v1/trades", format!(r#"{{"trade_id":"{long}","symbol":"X","side":"buy","qty":"1","price":"1"}}"#), 400, "too_long", Some("trade_id")),
        ("POST", "/v1/trades", format!(r#"{{"trade_id":"t","symbol":"{long}","side":"buy","qty":"1","price":"1"}}"#), 400, "too_long", Some("symbol")),
        ("POST", "/v1/trades", r#"{"trade_id":"","symbol":"X","side":"buy","qty":"1","price":"1"}"#.into(), 400, "invalid_value", Some("trade_id")),
        ("POST", "/v1/trades", huge, 413, "body_too_large", None),
        ("POST", "/v1/trades", Value::Array(many).to_string(), 400, "batch_too_large", None),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","order_id":"missing"}}"#), 422, "unknown_reference", Some("order_id")),
        ("POST", "/v1/trades", format!(r#"{{{ok},"qty":"1","price":"1","signal_id":"missing"}}"#), 422, "unknown_reference", Some("signal_id")),
        ("POST", "/v1/trades", format!(r#"[{{{ok},"qty":"1","price":"1"}},{{{ok},"qty":"1","price":"1"}}]"#), 400, "duplicate_id", Some("[1].trade_id")),
        ("POST", "/v1/orders", r#"{"client_order_id":"L","symbol":"X","side":"buy","type":"limit","qty":"1"}"#.into(), 400, "missing_field", Some("limit_price")),
        ("POST", "/v1/orders", r#"{"client_order_id":"L","symbol":"X","side":"buy","type":"stop","qty":"1"}"#.into(), 400, "invalid_value", Some("type")),
        ("POST", "/v1/orders", r#"{"client_order_id":"O","symbol":"X","side":"sell","type":"market","qty":"1"}"#.into(), 409, "conflict", Some("client_order_id")),
        ("PATCH", "/v1/orders/O", r#"{"status":"exploded"}"#.into(), 400, "invalid_value", Some("status")),
        ("PATCH", "/v1/orders/O", r#"{"status":"open","qty":"2"}"#.into(), 400, "unknown_field", Some("qty")),
        ("POST", "/v1/signals", r#"{"signal_id":"s","symbol":"X","price":"1","final_signal":"buy","confidence":"1.5"}"#.into(), 400, "invalid_value", Some("confidence")),
        ("POST", "/v1/signals", r#"{"signal_id":"s","symbol":"X","price":"1","final_signal":"buy","confidence":"0.5","strategies":[1]}"#.into(), 400, "invalid_type", Some("strategies")),
        ("POST", "/v1/logs", r#"{"level":"loud","source":"a","message":"m"}"#.into(), 400, "invalid_value", Some("level")),
        ("PUT", "/v1/status/k", r#"{"valu":1}"#.into(), 400, "unknown_field", Some("valu")),
        ("GET", "/v1/trades?limit=0", String::new(), 400, "invalid_query", Some("limit")),
        ("GET", "/v1/trades?limit=100000", String::new(), 400, "invalid_query", Some("limit")),
        ("GET", "/v1/trades?limit=abc", String::new(), 400, "invalid_query", Some("limit")),
        ("GET", "/v1/trades?cursor=-5", String::new(), 400, "invalid_query", Some("cursor")),
        ("GET", "/v1/trades?from=noon", String::new(), 400, "invalid_query", Some("from")),
        ("GET", "/v1/trades?test_mode=maybe", String::new(), 400, "invalid_query", Some("test_mode")),
        ("GET", "/v1/trades?colour=red", String::new(), 400, "invalid_query", Some("colour")),
                ("GET", "/v1/trades?symbol=A&symbol=B", String::new(), 400, "invalid_query", Some("symbol")),
        ("GET", "/v1/trades?symbol=%FF%FE", String::new(), 400, "invalid_query", Some("symbol")),
        ("GET", "/v1/nothing-here", String::new(), 404, "not_found", None),
        ("DELETE", "/v1/trades", String::new(), 405, "method_not_allowed", None),
    ];
    for (method, path, body, status, code, field) in cases {
        let body_opt = if method == "GET" || method == "DELETE" {
            None
        } else {
            Some(body.as_str())
        };
        let (s, answer) = api.call(method, path, body_opt);
        let shown: String = body.chars().take(120).collect();
        assert_eq!(s, status, "{method} {path} {shown} -> {answer}");
        let err = &answer["error"];
        assert_eq!(err["code"], code, "{method} {path} {shown} -> {answer}");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        assert!(
            err.get("field").is_some(),
            "field is always present: {answer}"
        );
        assert_eq!(
            err["field"].as_str(),
            field,
            "{method} {path} {shown} -> {answer}"
        );
    }
    assert_eq!(api.counts(), before, "no bad input wrote anything");
    let (s, ready) = api.get("/health/ready");
    assert_eq!(
        (s, ready["status"].as_str()),
        (200, Some("ready")),
        "bad input never poisons the store"
    );
}

#[test]
fn decimals_are_exact_end_to_end() {
    let (_dir, _server, mut api) = started();
    for (i, price) in ["0.1", "0.2", "0.3"].iter().enumerate() {
        assert_eq!(
            api.post(
                "/v1/trades",
                &trade(&format!("d{i}"), "X", "buy", "0.1", price)
            )
            .0,
            201
        );
    }
    let (s, t) = api.post(
        "/v1/trades",
        &json!({ "trade_id": "d3", "symbol": "X", "side": "sell", "qty": 0.3, "price": 0.3 }),
    );
    assert_eq!(s, 201, "{t}");
    let (_, pos) = api.get("/v1/positions/X");
    assert_eq!(
        (
            pos["qty"].as_str(),
            pos["realized_pnl"].as_str(),
            pos["avg_price"].as_str()
        ),
        (Some("0"), Some("0.03"), Some("0"))
    );
    let digits = "12345678901234567.123456789";
    let (s, t) = api.call(
        "POST",
        "/v1/trades",
        Some(&format!(
            r#"{{"trade_id":"big","symbol":"Y","side":"buy","qty":1,"price":{digits}}}"#
        )),
    );
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["price"], digits, "a JSON number keeps every digit");
}

#[test]
fn openapi_document_matches_the_routes() {
    let (_dir, _server, mut api) = started();
    let (s, doc) = api.get("/openapi.json");
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    for required in [
        "/v1/trades",
        "/v1/orders",
        "/v1/orders/{client_order_id}",
        "/v1/positions",
        "/v1/positions/{symbol}/history",
        "/v1/signals",
        "/v1/signals/{signal_id}/trades",
        "/v1/logs",
        "/v1/status/{key}",
        "/v1/stats",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(required), "{required} is documented");
    }
    // Every documented operation is routed (a missing route answers "no route"; a wrong method 405).
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("ops") {
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()));
            let concrete = path
                .replace("{client_order_id}", "x")
                .replace("{symbol}", "x")
                .replace("{signal_id}", "x")
                .replace("{trade_id}", "x")
                .replace("{key}", "x");
            let body = if method == "get" { None } else { Some("{}") };
            let (status, answer) = api.call(&method.to_uppercase(), &concrete, body);
            assert_ne!(status, 405, "{method} {path} is routed");
            let msg = answer["error"]["message"].as_str().unwrap_or("");
            assert!(
                !msg.starts_with("no route"),
                "{method} {path} is routed: {answer}"
            );
        }
    }
    // The documented trade fields are the contract, no more and no less.
    let schema = &paths["/v1/trades"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        ["oneOf"][0];
    let mut fields: Vec<&str> = schema["properties"]
        .as_object()
        .expect("props")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    let mut contract = [
        "trade_id",
        "symbol",
        "side",
        "qty",
        "price",
        "fee",
        "fee_currency",
        "ts",
        "order_id",
        "signal_id",
        "strategy",
        "test_mode",
        "bot_version",
    ];
    contract.sort_unstable();
    assert_eq!(fields, contract);
    assert_eq!(
        schema["required"],
        json!(["trade_id", "symbol", "side", "qty", "price"])
    );
    // A body built from the documented required fields is accepted.
    let mut sample = serde_json::Map::new();
    for f in schema["required"].as_array().expect("required") {
        let name = f.as_str().expect("name");
        let prop = &schema["properties"][name];
        let v = match prop.get("enum").and_then(|e| e.get(0)) {
            Some(first) => first.clone(),
            None if prop.get("oneOf").is_some() => json!("1"),
            None => json!("sample"),
        };
        sample.insert(name.to_owned(), v);
    }
    let (s, body) = api.post("/v1/trades", &Value::Object(sample));
    assert_eq!(s, 201, "{body}");
}

#[test]
fn health_and_metrics() {
    let (_dir, _server, mut api) = started();
    assert_eq!(api.get("/health/live"), (200, json!({ "status": "live" })));
    assert_eq!(
        api.get("/health/ready"),
        (200, json!({ "status": "ready" }))
    );
    assert_eq!(
        api.post("/v1/trades", &trade("m1", "X", "buy", "1", "1")).0,
        201
    );
    let metrics = api.0.get("/metrics").expect("metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for name in [
        r#"tradevault_http_requests_total{route="/v1/trades",method="POST",status="201"} 1"#,
        "tradevault_http_request_duration_seconds_bucket",
        "tradevault_store_commits_total",
        r#"tradevault_store_rows_written_total{table="trades"} 1"#,
        "tradevault_store_database_bytes",
        "tradevault_store_wal_bytes",
        "tradevault_store_writer_poisoned 0",
    ] {
        assert!(text.contains(name), "/metrics has {name}:\n{text}");
    }
    let (_, stats) = api.get("/v1/stats?check=true");
    assert_eq!(stats["integrity"], "ok");
    assert_eq!(
        stats["schema_version"],
        tradevault::store::schema::SCHEMA_VERSION
    );
    assert!(stats["page_size"].as_i64().is_some_and(|p| p > 0));
    assert!(stats["wal_file_size_bytes"].as_u64().is_some());
}

#[test]
fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    let mut api = server.client();
    assert_eq!(
        api.post("/v1/trades", &trade("r1", "X", "buy", "2", "10"))
            .0,
        201
    );
    assert!(server.stop().success(), "SIGTERM is a clean exit");
    let server = Server::start(dir.path());
    let mut api = server.client();
    assert_eq!(api.get("/v1/positions/X").1["qty"], "2");
    assert_eq!(
        api.post("/v1/trades", &trade("r1", "X", "buy", "2", "10"))
            .0,
        200
    );
}
