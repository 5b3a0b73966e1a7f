//! Restores of a large database (about 1 GiB), step by step, against `cp` + fsync of the same
//! database:
//!
//! - from a file replica holding one snapshot: plan, fetch + apply (download, verify, write), the
//!   check;
//! - in place from a full backup, as `tradevault restore --in-place --backup ID` does it for a
//!   database no program has open: the backup is materialized into a staging file, checked
//!   (`inplace::check_file`), then `inplace::replace_file` takes a safety copy, swaps the pages in
//!   one transaction and checks the result. The database is made to differ from the backup
//!   before each run (its newest rows deleted), and after it the same file (same inode) holds the
//!   backup's rows again. The full backup's creation is timed once.
//!
//! `cargo bench -p tradevault --bench restore`. TRADEVAULT_BENCH_MIB: database size (default
//! 1024). TRADEVAULT_BENCH_DIR: build the database and replica there and keep them for the next
//! run (default: a temporary directory, deleted at the end). TRADEVAULT_BENCH_CHECK: only
//! `integrity_check` or `quick_check` for the replica restore (default both).
//! TRADEVAULT_BENCH_RUNS: runs of each replica restore (each after a `sync`, so that none pays
//! for the writeback of what ran before it), of the in-place restore and of `cp` + fsync (default
//! 3). The replica
//! and the backup are read from the page cache (they were just written), as for a local file
//! target used soon after. Disk: about 6 times the database at the peak of an in-place restore
//! (the database, the replica, the backup, the database restored in place, its staging file,
//! safety copy and WAL).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use std::os::unix::fs::MetadataExt;

mod common;

use common::{env_or, file_len, load, max, median, median_u, mib, min};
use tradevault::backup;
use tradevault::replica::{FileReplica, Replica};
use tradevault::replicate::Replicator;
use tradevault::restore::{self, Check, Target, inplace};

fn main() {
    let size_mib = env_or("TRADEVAULT_BENCH_MIB", 1024) as u64;
    let runs: usize = env_or("TRADEVAULT_BENCH_RUNS", 3);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("TRADEVAULT_BENCH_DIR")
        .map_or_else(|| temp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let db = dir.join(format!("bench-{size_mib}.db"));
    let replica = Replica::from(FileReplica::new(dir.join(format!("replica-{size_mib}"))));
    if replica.list(0).expect("list").is_empty() {
        let t = Instant::now();
        build(&db, size_mib << 20);
        let built = t.elapsed();
        let t = Instant::now();
        let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
        r.sync(1_700_000_000_000).expect("snapshot");
        println!(
            "built a {} database in {:.1} s, replicated it as one snapshot in {:.1} s",
            mib(file_len(&db)),
            built.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "{} database, {} cpu(s), load before: {}",
        mib(file_len(&db)),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load()
    );
    from_replica(&db, &dir, &replica, runs);
    // `cp` + fsync, runs times; the last copy is the database the in-place restores replace.
    let live = dir.join("live.db");
    let mut copies = Vec::new();
    for _ in 0..runs {
        restore::remove_database_files(&live);
        let t = Instant::now();
        std::fs::copy(&db, &live).expect("copy");
        File::open(&live)
            .and_then(|f| f.sync_all())
            .expect("fsync copy");
        copies.push(t.elapsed().as_secs_f64());
    }
    println!(
        "  cp + fsync       total {:>6.2} s (min {:.2}, max {:.2}), {runs} runs",
        median(&copies),
        min(&copies),
        max(&copies)
    );
    in_place(&db, &dir, &live, runs, median(&copies));
    restore::remove_database_files(&live);
    println!("load after: {}", load());
}

/// The restore from a one-snapshot replica, with each check, byte for byte the database.
fn from_replica(db: &Path, dir: &Path, replica: &Replica, runs: usize) {
    let snapshot = replica.list(0).expect("list");
    println!(
        "restore from a replica: snapshot of {} (LZ4), {runs} runs of each, medians",
        mib(snapshot.iter().map(|f| f.size).sum())
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
        let (mut totals, mut applies, mut checks, mut syncs, mut peaks) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            // No run pays for the writeback of what ran before it (the build, the last restore).
            flush_everything();
            let rss = RssSampler::start();
            let t = Instant::now();
            let plan = restore::plan(replica, Target::Latest).expect("plan");
            let options = restore::Options {
                base: None,
                check,
                ..Default::default()
            };
            let restored = restore::apply_with(replica, &plan, &out, &options).expect("restore");
            totals.push(t.elapsed().as_secs_f64());
            peaks.push(rss.stop());
            applies.push(restored.fetch_apply_seconds);
            checks.push(restored.check_seconds);
            syncs.push(restored.sync_seconds);
            assert!(
                same_bytes(db, &out),
                "the restore is the database, byte for byte"
            );
            std::fs::remove_file(&out).expect("remove restored");
        }
        println!(
            "  {:<16} total {:>6.2} s (min {:.2}, max {:.2}) = fetch+apply {:.2} s + check {:.2} s \
             (fsync {:.2} s beside it); peak anonymous memory {}",
            check.pragma(),
            median(&totals),
            min(&totals),
            max(&totals),
            median(&applies),
            median(&checks),
            median(&syncs),
            mib(median_u(&peaks))
        );
    }
}

/// Writes every dirty page of the machine to disk (`sync`), so that a timed run starts with
/// nothing queued.
fn flush_everything() {
    let status = std::process::Command::new("sync")
        .status()
        .expect("run sync");
    assert!(status.success(), "sync failed");
}

/// A full backup of `db`, then `runs` in-place restores of it into `live` (a copy of `db` that
/// has lost its newest rows each time), as the CLI does them; `cp_seconds` for comparison.
fn in_place(db: &Path, dir: &Path, live: &Path, runs: usize, cp_seconds: f64) {
    let target_dir = dir.join("backups");
    let _ = std::fs::remove_dir_all(&target_dir);
    let target = backup::Target::parse(&format!("file://{}", target_dir.display())).expect("url");
    let config = tradevault::config::BackupConfig::default();
    let now = || jiff::Timestamp::now().as_millisecond();
    let t = Instant::now();
    let manifest = backup::create(
        std::slice::from_ref(&target),
        &backup::CreateOptions {
            db: db.to_owned(),
            source: None,
            database: "bench".into(),
            kind: backup::Kind::Manual,
            config: &config,
            full: true,
            progress: None,
            now: &now,
        },
    )
    .expect("backup")
    .remove(0);
    println!(
        "in-place restore from a full backup: backup create (full, zstd 3) {:.2} s, {} stored",
        t.elapsed().as_secs_f64(),
        mib(manifest.stored_bytes())
    );
    let rows = |path: &Path| -> i64 {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.query_row("SELECT count(*) FROM trades", [], |r| r.get(0))
            .expect("count")
    };
    let expected = rows(db);
    let work = inplace::work_dir(live);
    std::fs::create_dir_all(&work).expect("work dir");
    let (mut totals, mut materialized, mut checked) = (Vec::new(), Vec::new(), Vec::new());
    let (mut replaced, mut safety_copies, mut swaps, mut after_checks, mut closes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // The database differs from the backup: its newest rows are gone.
        rusqlite::Connection::open(live)
            .and_then(|c| {
                c.execute(
                    "DELETE FROM trades WHERE id > (SELECT max(id) FROM trades) - 10000",
                    [],
                )
            })
            .expect("diverge");
        assert_eq!(rows(live), expected - 10_000);
        let file = inode(live);
        let staging = work.join(format!("staging-{run}.db"));
        let safety = work.join(format!("safety-{run}.db"));
        let t = Instant::now();
        backup::restore_backup(&target, &manifest.id, None, &staging, None).expect("materialize");
        let m = t.elapsed();
        let staged = inplace::check_file(&staging).expect("check the staging file");
        let c = t.elapsed() - m;
        let r = inplace::replace_file(live, &staging, &safety).expect("replace in place");
        let total = t.elapsed();
        restore::remove_database_files(&staging);
        restore::remove_database_files(&safety);
        assert_eq!(staged.get("trades"), Some(&(expected as u64)));
        assert_eq!(r.after.rows, staged, "the database holds the backup's rows");
        assert_eq!(rows(live), expected, "the database has its rows back");
        assert_eq!(inode(live), file, "the same file, replaced in place");
        totals.push(total.as_secs_f64());
        materialized.push(m.as_secs_f64());
        checked.push(c.as_secs_f64());
        let whole = (total - m - c).as_secs_f64();
        let steps = [r.safety_ms, r.swap_ms, r.check_ms].map(|ms| ms as f64 / 1000.0);
        replaced.push(whole);
        safety_copies.push(steps[0]);
        swaps.push(steps[1]);
        after_checks.push(steps[2]);
        closes.push(whole - steps.iter().sum::<f64>());
    }
    let _ = std::fs::remove_dir_all(&work);
    std::fs::remove_dir_all(&target_dir).expect("remove backups");
    let row = |name: &str, v: &[f64]| {
        println!(
            "  {name:<44} {:>6.2} s (min {:.2}, max {:.2})",
            median(v),
            min(v),
            max(v)
        );
    };
    println!("  medians of {runs} runs ({expected} rows restored each time):");
    row("total", &totals);
    row("materialize the backup to staging", &materialized);
    row("check the staging file (integrity verdict)", &checked);
    row("replace_file: safety copy + swap + check", &replaced);
    row("  safety copy (backup API + fsync)", &safety_copies);
    row("  swap (one transaction, into the WAL)", &swaps);
    row("  check (quick_check + fingerprint)", &after_checks);
    row("  the rest: journal, close (WAL checkpoint)", &closes);
    println!(
        "  against cp + fsync {cp_seconds:.2} s: total {:.1}x",
        median(&totals) / cp_seconds
    );
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

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").ino()
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
