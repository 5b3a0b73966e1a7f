//! Restore of a large database from a file replica holding one snapshot: plan, fetch + apply
//! (download, verify, write), the check, and `cp` + fsync of the same database for comparison.
//!
//! `cargo bench -p tradevault --bench restore`. TRADEVAULT_BENCH_MIB: database size (default
//! 1024). TRADEVAULT_BENCH_DIR: build the database and replica there and keep them for the next
//! run (default: a temporary directory, deleted at the end). TRADEVAULT_BENCH_CHECK: only
//! `integrity_check` or `quick_check` (default both). The replica is read from the page cache
//! (it was just written), as for a local file replica used soon after.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tradevault::replica::{FileReplica, Replica};
use tradevault::replicate::Replicator;
use tradevault::restore::{self, Check, Target};

fn main() {
    let mib: u64 = std::env::var("TRADEVAULT_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("TRADEVAULT_BENCH_DIR")
        .map_or_else(|| temp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let db = dir.join(format!("bench-{mib}.db"));
    let replica = Replica::from(FileReplica::new(dir.join(format!("replica-{mib}"))));
    if replica.list(0).expect("list").is_empty() {
        let t = Instant::now();
        build(&db, mib << 20);
        let built = t.elapsed();
        let t = Instant::now();
        let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
        r.sync(1_700_000_000_000).expect("snapshot");
        println!(
            "built a {} database in {:.1} s, replicated it as one snapshot in {:.1} s",
            mib_of(file_len(&db)),
            built.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    let snapshot = replica.list(0).expect("list");
    println!(
        "restore: {} database, snapshot of {} (LZ4), {} cpu(s)",
        mib_of(file_len(&db)),
        mib_of(snapshot.iter().map(|f| f.size).sum()),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Read the replica once, so that every run reads it from the page cache, as documented.
    for f in &snapshot {
        drop(replica.read(f).expect("warm the page cache"));
    }
    let only = std::env::var("TRADEVAULT_BENCH_CHECK").unwrap_or_default();
    for check in [Check::Integrity, Check::Quick] {
        if !only.is_empty() && only != check.pragma() {
            continue;
        }
        let out = dir.join(format!("restored-{}.db", check.pragma()));
        let rss = RssSampler::start();
        let t = Instant::now();
        let plan = restore::plan(&replica, Target::Latest).expect("plan");
        let planned = t.elapsed();
        let options = restore::Options {
            base: None,
            check,
            ..Default::default()
        };
        let restored = restore::apply_with(&replica, &plan, &out, &options).expect("restore");
        let total = t.elapsed();
        let peak = rss.stop();
        println!(
            "  {:<16} total {:>6.2} s = plan {:.3} s + fetch+apply {:.2} s + check {:.2} s \
             (fsync {:.2} s beside it); peak anonymous memory {}",
            check.pragma(),
            total.as_secs_f64(),
            planned.as_secs_f64(),
            restored.fetch_apply_seconds,
            restored.check_seconds,
            restored.sync_seconds,
            mib_of(peak)
        );
        assert!(
            same_bytes(&db, &out),
            "the restore is the database, byte for byte"
        );
        std::fs::remove_file(&out).expect("remove restored");
    }
    let copy = dir.join("copy.db");
    let t = Instant::now();
    std::fs::copy(&db, &copy).expect("copy");
    File::open(&copy)
        .and_then(|f| f.sync_all())
        .expect("fsync copy");
    println!(
        "  cp + fsync       total {:>6.2} s",
        t.elapsed().as_secs_f64()
    );
    std::fs::remove_file(&copy).expect("remove copy");
}

/// A WAL-mode database of about `bytes`: trades with an index, deterministic content.
fn build(db: &Path, bytes: u64) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         CREATE TABLE trades (id INTEGER PRIMARY KEY, trade_id TEXT NOT NULL, symbol TEXT NOT NULL,
           side TEXT NOT NULL, qty TEXT NOT NULL, price TEXT NOT NULL, ts TEXT NOT NULL, note TEXT);
         CREATE INDEX trades_symbol_ts ON trades (symbol, ts);",
    )
    .expect("schema");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut id = 0u64;
    while file_len(db) + file_len(&db.with_extension("db-wal")) < bytes {
        let tx = conn.unchecked_transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO trades VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .expect("prepare");
            for _ in 0..20_000 {
                id += 1;
                let r = next();
                insert
                    .execute(rusqlite::params![
                        id as i64,
                        format!("fill-{id:012}-{:08x}", r as u32),
                        format!("SYM{}", r % 500),
                        if r & 1 == 0 { "buy" } else { "sell" },
                        format!("{}.{:03}", r % 1_000, (r >> 10) % 1_000),
                        format!("{}.{:02}", 10_000 + (r >> 20) % 90_000, (r >> 40) % 100),
                        format!(
                            "2026-11-22T{:02}:{:02}:{:02}.{:09}Z",
                            id / 3_600_000 % 24,
                            id / 60_000 % 60,
                            id / 1000 % 60,
                            r % 1_000_000_000
                        ),
                        format!("strategy=momentum-{} signal={:016x}", r % 7, next()),
                    ])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn mib_of(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1_048_576.0)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (File::open(a).expect("open"), File::open(b).expect("open"));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba);
        if n != read_full(&mut fb, &mut bb) || ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// Samples the process's anonymous resident memory (heap and stacks, not the page cache the
/// check maps) every 5 ms, for its peak during a restore.
struct RssSampler {
    stop: std::sync::Arc<AtomicBool>,
    peak: std::sync::Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let peak = std::sync::Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        RssSampler { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
