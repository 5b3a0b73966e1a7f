//! Durable trade writes straight into the store, without HTTP: the writer's own ceiling, and the
//! WAL and database sizes it leaves (the WAL must stay bounded under continuous writes).
//!
//! `cargo bench -p tradevault --bench store_writes`. TRADEVAULT_BENCH_CLIENTS (default "1,16,64"),
//! TRADEVAULT_BENCH_SECONDS (default 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tradevault::store::model::{NewTrade, Side};

fn main() {
    let clients: Vec<u64> = std::env::var("TRADEVAULT_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("TRADEVAULT_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("store_writes: {seconds} s per run, one trade per write, synchronous=FULL");
    println!(
        "{:>7} {:>10} {:>9} {:>9}",
        "writers", "trades/s", "wal MiB", "db MiB"
    );
    for n in clients {
        let (rate, wal, db) = run(n, Duration::from_secs(seconds));
        println!(
            "{n:>7} {rate:>10.0} {:>9.1} {:>9.1}",
            wal as f64 / 1048576.0,
            db as f64 / 1048576.0
        );
    }
}

fn run(clients: u64, duration: Duration) -> (f64, u64, u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = tradevault::config::StoreConfig {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let store = Arc::new(
        tradevault::Store::open(&config, Arc::new(tradevault::clock::SystemClock)).expect("open"),
    );
    let started = Instant::now();
    let total: u64 = runtime.block_on(async {
        let deadline = started + duration;
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        n += 1;
                        let trade = NewTrade {
                            trade_id: format!("c{c}-{n}"),
                            symbol: format!("SYM{}", n % 50),
                            side: if n.is_multiple_of(3) {
                                Side::Sell
                            } else {
                                Side::Buy
                            },
                            qty: Decimal::new((n % 997 + 1) as i64, 3),
                            price: Decimal::new(10_000 + (n % 1_700) as i64, 2),
                            fee: Decimal::new(1, 2),
                            fee_currency: None,
                            ts: None,
                            order_id: None,
                            signal_id: None,
                            strategy: Some("bench".into()),
                            test_mode: false,
                            bot_version: None,
                        };
                        store
                            .insert_trades(vec![trade], false)
                            .await
                            .expect("write");
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        total
    });
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let size = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    (rate, size("tradevault.db-wal"), size("tradevault.db"))
}
