//! Backups of the seed-methods tick day (6,000,000 rows, ~480 MB, ../shared/bench/seed-methods),
//! measured side by side with what the seeds do, in one run:
//!
//! - P6: a full compressed backup against `sqlite3 .backup` followed by `zstd -3 -T0` (time and
//!   ratio); gzip (the seed's own method) once for reference.
//! - P7: an incremental backup after 1% of the pages changed, as bytes and time of a full one:
//!   random (one row updated on each of 1% of the pages, anywhere) and clustered (rows appended
//!   at the end of the day, as a live tick day grows).
//! - P12: a deep verify (restore to scratch, check, count rows) against `zstd -d` + `quick_check`.
//!
//! `cargo bench -p tradevault --bench backup`. TRADEVAULT_BENCH_TICKS: the tick day (default
//! `$TMPDIR/seed-methods/ticks.db`; generated with gen_ticks.py when missing). TRADEVAULT_BENCH_RUNS:
//! runs per measure (default 5). Needs `sqlite3` and `zstd` on the PATH, and about 1 GB free
//! beside the tick day (the seeds' snapshot or a copy, a backup, a scratch restore). Everything is written
//! under a temporary directory on the same disk as $TMPDIR, and the page cache is warm (the
//! database was just read), as for a backup of a database in use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tradevault::backup::{self, CreateOptions, Kind, Target, VerifyOptions};
use tradevault::config::BackupConfig;
use tradevault::restore::Check;

fn main() {
    let runs: usize = env_or("TRADEVAULT_BENCH_RUNS", 5);
    let ticks = std::env::var_os("TRADEVAULT_BENCH_TICKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("seed-methods/ticks.db"));
    if !ticks.is_file() {
        generate(&ticks);
    }
    let work = tempfile::tempdir_in(ticks.parent().unwrap_or(Path::new("."))).expect("tempdir");
    let dir = work.path();
    // P6 and P12 read the tick day itself; P7 changes a copy, made once the others are done
    // (disk space: about 1 GB at any time).
    let db = ticks.clone();
    let size = file_len(&db);
    println!(
        "tick day {} ({}), {runs} runs per measure, {} cpus, load before: {}",
        ticks.display(),
        mib(size),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load()
    );

    // P6: full backups, ours and the seeds', interleaved.
    let config = BackupConfig::default();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_bytes, mut their_bytes) = (0, 0);
    for run in 0..runs {
        let snap = dir.join("snap.db");
        let z = dir.join("snap.db.zst");
        let t = Instant::now();
        sh(&format!("sqlite3 {} '.backup {}'", q(&db), q(&snap)));
        sh(&format!("zstd -q -f -3 -T0 {} -o {}", q(&snap), q(&z)));
        theirs.push(t.elapsed().as_secs_f64());
        their_bytes = file_len(&z);
        let _ = std::fs::remove_file(&snap);
        let target_dir = dir.join(format!("full-{run}"));
        let target = target(&target_dir);
        let t = Instant::now();
        let m = create(&target, &db, &config, true);
        ours.push(t.elapsed().as_secs_f64());
        our_bytes = m.stored_bytes();
        if run + 1 < runs {
            std::fs::remove_dir_all(&target_dir).expect("clean");
        }
    }
    println!(
        "\nP6 full compressed backup (goal: no slower than .backup + zstd -3 -T0, ratio at least its)"
    );
    report("sqlite3 .backup + zstd -3 -T0", &theirs, size, their_bytes);
    report("tradevault backup create (zstd 3)", &ours, size, our_bytes);
    let gzip_config = BackupConfig {
        compression: "gzip".into(),
        ..BackupConfig::default()
    };
    let t = Instant::now();
    let gz = create(&target(&dir.join("gzip")), &db, &gzip_config, true);
    report(
        "tradevault backup create (gzip 6), 1 run",
        &[t.elapsed().as_secs_f64()],
        size,
        gz.stored_bytes(),
    );
    std::fs::remove_dir_all(dir.join("gzip")).expect("clean");

    // P12: deep verify of the last full backup against decompress + quick_check.
    let full_target = target(&dir.join(format!("full-{}", runs - 1)));
    let newest = backup::Catalog::load(&full_target)
        .expect("catalog")
        .newest(None)
        .expect("a backup")
        .id
        .clone();
    let (mut deep_quick, mut deep_integrity, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.min(3) {
        let plain = dir.join("plain.db");
        let t = Instant::now();
        sh(&format!(
            "zstd -q -d -f {} -o {}",
            q(&dir.join("snap.db.zst")),
            q(&plain)
        ));
        sh(&format!(
            "sqlite3 {} 'PRAGMA quick_check' > /dev/null",
            q(&plain)
        ));
        baseline.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&plain);
        for (check, out) in [
            (Check::Quick, &mut deep_quick),
            (Check::Integrity, &mut deep_integrity),
        ] {
            let v = verify(&full_target, &newest, check, dir);
            assert!(v.ok, "{:?}", v.problems);
            out.push(v.seconds);
        }
    }
    println!("\nP12 deep verify (goal: no more than decompress + quick_check)");
    report("zstd -d + PRAGMA quick_check", &baseline, 0, 0);
    report("backup verify --deep --quick-check", &deep_quick, 0, 0);
    report(
        "backup verify --deep (integrity_check)",
        &deep_integrity,
        0,
        0,
    );
    let _ = std::fs::remove_file(dir.join("snap.db.zst"));
    let _ = std::fs::remove_dir_all(dir.join(format!("full-{}", runs - 1)));

    // P7: 1% of the pages changed, then an incremental backup on top of the full one, taken
    // again from the copy.
    let db = dir.join("ticks.db");
    sh(&format!("cp {} {}", q(&ticks), q(&db)));
    let full_target = target(&dir.join("p7"));
    create(&full_target, &db, &config, true);
    let pages = size / 4096;
    let changed = pages / 100;
    println!(
        "\nP7 incremental backup after 1% of the pages changed ({changed} of {pages} pages), against the full backup above (goal: at most 5% of its bytes and time)"
    );
    let full_time = median(&ours);
    for (name, change) in [("random", true), ("clustered (appended rows)", false)] {
        let (mut times, mut bytes, mut stored_pages) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let conn = rusqlite::Connection::open(&db).expect("open");
            if change {
                // One row on each of `changed` random pages: rowids are dense, ~51 rows per page.
                let rows: i64 = conn
                    .query_row("SELECT max(rowid) FROM ticks", [], |r| r.get(0))
                    .expect("rows");
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ run as u64;
                conn.execute_batch("BEGIN").expect("begin");
                for _ in 0..changed {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let id = (x % rows as u64) as i64 + 1;
                    conn.execute(
                        "UPDATE ticks SET volume = volume + 1 WHERE rowid = ?1",
                        [id],
                    )
                    .expect("update");
                }
                conn.execute_batch("COMMIT").expect("commit");
            } else {
                // Appending: each page holds about 51 rows; the index grows too.
                let n = changed * 51 / 2;
                conn.execute(
                    "INSERT INTO ticks SELECT ts + 30000000000000, symbol, bid, ask, bid_size, \
                     ask_size, last, volume FROM ticks WHERE rowid > (SELECT max(rowid) FROM ticks) - ?1",
                    [n as i64],
                )
                .expect("append");
            }
            drop(conn);
            let t = Instant::now();
            let m = create(&full_target, &db, &config, false);
            times.push(t.elapsed().as_secs_f64());
            assert!(m.parent.is_some(), "incremental");
            bytes.push(m.stored_bytes());
            stored_pages.push(m.pages_stored);
        }
        let b = median_u(&bytes);
        let t = median(&times);
        println!(
            "  {name:<28} median {t:.3} s (min {:.3}, max {:.3}) = {:.1}% of the full backup's time; \
             {} stored = {:.1}% of its bytes; pages stored (median) {}",
            min(&times),
            max(&times),
            100.0 * t / full_time,
            mib(b),
            100.0 * b as f64 / our_bytes as f64,
            median_u(
                &stored_pages
                    .iter()
                    .map(|p| u64::from(*p))
                    .collect::<Vec<_>>()
            ),
        );
    }
    println!("\nload after: {}", load());
}

fn create(target: &Target, db: &Path, config: &BackupConfig, full: bool) -> backup::Manifest {
    let now = || jiff::Timestamp::now().as_millisecond();
    backup::create(
        std::slice::from_ref(target),
        &CreateOptions {
            db: db.to_owned(),
            database: "ticks".into(),
            kind: Kind::Manual,
            config,
            full,
            progress: None,
            now: &now,
        },
    )
    .expect("backup")
    .remove(0)
}

fn verify(target: &Target, id: &str, check: Check, dir: &Path) -> backup::Verification {
    let now = || jiff::Timestamp::now().as_millisecond();
    backup::verify(
        target,
        id,
        &VerifyOptions {
            deep: true,
            check,
            identity: None,
            scratch_dir: Some(dir.to_owned()),
            now: &now,
            record: false,
        },
    )
    .expect("verify")
}

fn target(dir: &Path) -> Target {
    Target::parse(&format!("file://{}", dir.display())).expect("target")
}

fn report(name: &str, secs: &[f64], size: u64, stored: u64) {
    let ratio = if stored > 0 {
        format!(
            ", {} -> {} = {:.2}x",
            mib(size),
            mib(stored),
            size as f64 / stored as f64
        )
    } else {
        String::new()
    };
    println!(
        "  {name:<42} median {:.2} s (min {:.2}, max {:.2}){ratio}",
        median(secs),
        min(secs),
        max(secs)
    );
}

fn generate(path: &Path) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/bench/seed-methods/gen_ticks.py"
    );
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).expect("dir");
    println!(
        "generating {} with {script} (about 2 minutes)",
        path.display()
    );
    sh(&format!(
        "python3 {script} {} --rows 6000000 --seed 42",
        q(path)
    ));
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(status.success(), "{cmd}: {status}");
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn median_u(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
