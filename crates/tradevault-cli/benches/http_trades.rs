//! Durable trade writes over HTTP: N clients, one trade per request, each acknowledged only after
//! its commit is durable (synchronous=FULL). Reports throughput, latency percentiles and the
//! server's memory for each client count.
//!
//! `cargo bench --bench http_trades` (release build). Environment:
//! TRADEVAULT_BENCH_CLIENTS (default "1,4,16,64"), TRADEVAULT_BENCH_SECONDS (default 10).

#[allow(dead_code)]
#[path = "../tests/it/common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;

struct Run {
    clients: usize,
    seconds: f64,
    ok: usize,
    latencies_us: Vec<u64>,
    rss_kib: u64,
    hwm_kib: u64,
    stored: u64,
    group_avg: f64,
    commit_ms_avg: f64,
}

fn main() {
    let clients: Vec<usize> = std::env::var("TRADEVAULT_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,4,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("TRADEVAULT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // `cargo bench` passes --bench; nothing else to parse.
    println!("http_trades: {seconds} s per run, one trade per request, synchronous=FULL");
    println!(
        "{:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "clients",
        "trades/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "rss MiB",
        "hwm MiB",
        "group",
        "commit ms"
    );
    for n in clients {
        let r = run(n, Duration::from_secs(seconds));
        let mut l = r.latencies_us.clone();
        l.sort_unstable();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        assert_eq!(r.stored, r.ok as u64, "every acknowledged trade is stored");
        println!(
            "{:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.1} {:>9.1} {:>7.1} {:>10.3}",
            r.clients,
            r.ok as f64 / r.seconds,
            pct(0.50),
            pct(0.99),
            pct(0.999),
            l.last().copied().unwrap_or(0) as f64 / 1000.0,
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0,
            r.group_avg,
            r.commit_ms_avg
        );
    }
}

fn run(clients: usize, duration: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    // Config variables given to the bench reach the server (TRADEVAULT_STORE_GROUP_COMMIT_MAX=8, ...).
    let passed: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("TRADEVAULT_") && !k.starts_with("TRADEVAULT_BENCH_"))
        .collect();
    let mut env: Vec<(&str, &str)> = passed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.push(("RUST_LOG", "warn,tradevault::http=info"));
    let server = Server::start_with(dir.path(), &env);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (mut api, stop) = (server.client(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let side = if n.is_multiple_of(3) { "sell" } else { "buy" };
                    let body = format!(
                        r#"{{"trade_id":"c{c}-{n}","symbol":"SYM{}","side":"{side}","qty":"0.{:03}","price":"{}.{:02}","fee":"0.01","strategy":"bench"}}"#,
                        n % 50,
                        n % 997 + 1,
                        100 + n % 17,
                        n % 100
                    );
                    let t = Instant::now();
                    let r = api.0.post("/v1/trades", body.as_bytes()).expect("post");
                    assert_eq!(r.status, 201, "{}", r.text());
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for t in threads {
        latencies_us.extend(t.join().expect("client"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let (rss_kib, hwm_kib) = memory(server.pid());
    let mut api = server.client();
    let stored = api.counts()["trades"].as_u64().unwrap_or(0);
    let metrics = api.0.get("/metrics").expect("metrics").text();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let commits = value("tradevault_store_commit_requests_count").max(1.0);
    let group_avg = value("tradevault_store_commit_requests_sum") / commits;
    let commit_ms_avg = value("tradevault_store_commit_duration_seconds_sum") * 1000.0 / commits;
    Run {
        clients,
        seconds,
        ok: latencies_us.len(),
        latencies_us,
        rss_kib,
        hwm_kib,
        stored,
        group_avg,
        commit_ms_avg,
    }
}

fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
