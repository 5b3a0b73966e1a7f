//! Backups of the two seed-methods databases (../shared/bench/seed-methods): the tick day
//! (6,000,000 rows in one table, ~480 MB) and the trading journal (1,000,000 rows over orders,
//! trades, positions, signals and system_logs, ~257 MB), each measured side by side with what the
//! seeds do, in one run:
//!
//! - P6: a full compressed backup against `sqlite3 .backup` followed by `zstd -3 -T0` (time and
//!   ratio); the seeds' own `.backup` + `gzip -6` once, next to our gzip once.
//! - P12: a deep verify (restore to scratch, check, count rows), with `--quick-check` and with the
//!   default integrity_check verdict, against `zstd -d` + `quick_check`.
//! - P7: an incremental backup after 1% of the pages changed, as bytes and time of a full one:
//!   random (one row updated on each of 1% of the pages, anywhere) and clustered (rows appended,
//!   as a live database grows). What changes is each database's own: see [`Changes`].
//!
//! `cargo bench -p tradevault --bench backup`. TRADEVAULT_BENCH_TICKS, TRADEVAULT_BENCH_JOURNAL:
//! the databases (default `$TMPDIR/seed-methods/ticks.db` and `journal.db`; generated with
//! gen_ticks.py and gen_journal.py when missing). TRADEVAULT_BENCH_RUNS: runs per measure
//! (default 5). TRADEVAULT_BENCH_ONLY: `ticks` or `journal` to measure one of them. Needs `sqlite3`, `zstd` and `gzip` on the PATH, and about 2.5 GB free beside the
//! databases (the seeds' snapshot or a copy, a backup, a scratch restore; one database at a
//! time). Everything is written under a temporary directory on the same disk as the database, and
//! the page cache is warm (the database was just read), as for a backup of a database in use.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

use common::{env_or, file_len, load, max, median, median_u, mib, min};
use tradevault::backup::{self, CreateOptions, Kind, Target, VerifyOptions};
use tradevault::config::BackupConfig;
use tradevault::restore::Check;

/// A database the bench backs up, and how P7 changes it.
struct Dataset {
    /// What the figures call it.
    label: &'static str,
    /// The backup's database name, and the name of the copy P7 changes.
    name: &'static str,
    /// The database (never written: P7 changes a copy).
    path: PathBuf,
    /// The seed-methods script that generates it, its arguments, and about how long it takes.
    generator: (&'static str, &'static str, &'static str),
    changes: Changes,
}

/// How P7 changes about 1% of a database's pages, in SQL on its own tables.
struct Changes {
    /// The highest id `update` may be given (ids are dense from 1).
    max_id: &'static str,
    /// Changes one row in place, `?1` its id: on a random id, one table page, no index page.
    update: &'static str,
    /// Appends copies of the newest `?1` rows with their timestamps moved past the newest, as a
    /// live database grows: the table's last pages and its indexes' (the append point of each).
    append: &'static str,
    /// Rows `append` adds per page it changes, table and index pages together (measured on the
    /// generated database: the incremental's pages stored show whether it still holds).
    append_rows_per_page: f64,
}

impl Dataset {
    fn ticks() -> Dataset {
        Dataset {
            label: "tick day",
            name: "ticks",
            path: path_or("TRADEVAULT_BENCH_TICKS", "ticks.db"),
            generator: (
                "gen_ticks.py",
                "--rows 6000000 --seed 42",
                "about 2 minutes",
            ),
            changes: Changes {
                // Rowids are dense, ~51 rows per page; volume is in no index.
                max_id: "SELECT max(rowid) FROM ticks",
                update: "UPDATE ticks SET volume = volume + 1 WHERE rowid = ?1",
                append: "INSERT INTO ticks SELECT ts + 30000000000000, symbol, bid, ask, \
                         bid_size, ask_size, last, volume FROM ticks \
                         WHERE rowid > (SELECT max(rowid) FROM ticks) - ?1",
                // ~51 rows per table page; the (symbol, ts) index grows about as much again.
                append_rows_per_page: 25.5,
            },
        }
    }

    fn journal() -> Dataset {
        Dataset {
            label: "journal",
            name: "journal",
            path: path_or("TRADEVAULT_BENCH_JOURNAL", "journal.db"),
            generator: ("gen_journal.py", "--scale 1.0 --seed 7", "about 1 minute"),
            changes: Changes {
                // 300,000 orders, ~20 per page; filled_qty is in no index. Fills arriving late.
                max_id: "SELECT max(id) FROM orders",
                update: "UPDATE orders SET filled_qty = coalesce(filled_qty, 0) + 1 WHERE id = ?1",
                // Log lines of the next session (the generator spans 14 h = 5.04e13 ns): the
                // table's end (~19 rows per page), ix_logs_ts's end and the end of each level in
                // ix_logs_level_ts (~160-210 per page): 15 rows per page changed.
                append: "INSERT INTO system_logs (ts, level, component, message, context) \
                         SELECT ts + 50400000000000, level, component, message, context \
                         FROM system_logs WHERE id > (SELECT max(id) FROM system_logs) - ?1",
                append_rows_per_page: 15.0,
            },
        }
    }

    fn generate(&self) {
        let (script, args, how_long) = self.generator;
        let script = format!(
            "{}/../../../shared/bench/seed-methods/{script}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new("."))).expect("dir");
        println!(
            "generating {} with {script} ({how_long})",
            self.path.display()
        );
        sh(&format!("python3 {script} {} {args}", q(&self.path)));
    }
}

/// P6's outcome, which P12 and P7 compare with.
struct Full {
    /// Our full backup's times, seconds.
    seconds: Vec<f64>,
    /// Bytes it stored.
    bytes: u64,
    /// The directory of the target holding the last run's backup, and that backup's id.
    dir: PathBuf,
    id: String,
    /// The seeds' last compressed snapshot.
    theirs: PathBuf,
}

#[derive(Clone, Copy)]
enum Variant {
    Random,
    Clustered,
}

fn main() {
    let runs: usize = env_or("TRADEVAULT_BENCH_RUNS", 5);
    let only = std::env::var("TRADEVAULT_BENCH_ONLY").ok();
    let datasets: Vec<Dataset> = [Dataset::ticks(), Dataset::journal()]
        .into_iter()
        .filter(|d| only.as_deref().is_none_or(|o| o == d.name))
        .collect();
    assert!(
        !datasets.is_empty(),
        "TRADEVAULT_BENCH_ONLY is ticks or journal"
    );
    for ds in &datasets {
        if !ds.path.is_file() {
            ds.generate();
        }
    }
    println!(
        "{runs} runs per measure, {} cpus, load before: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load()
    );
    for ds in &datasets {
        // One database's files at a time: its directory goes before the next starts.
        let work = tempfile::tempdir_in(ds.path.parent().unwrap_or(Path::new("."))).expect("tmp");
        bench(ds, work.path(), runs);
    }
    println!("\nload after: {}", load());
}

fn bench(ds: &Dataset, dir: &Path, runs: usize) {
    let (size, pages) = (file_len(&ds.path), page_count(&ds.path));
    println!(
        "\n=== {} {} ({}, {pages} pages)",
        ds.label,
        ds.path.display(),
        mib(size)
    );
    let full = full_backups(ds, dir, runs);
    gzip_once(ds, dir);
    deep_verify(&full, dir, runs);
    let _ = std::fs::remove_file(&full.theirs);
    let _ = std::fs::remove_dir_all(&full.dir);
    incrementals(ds, dir, &full, runs);
}

/// P6: full backups, ours and the seeds', interleaved.
fn full_backups(ds: &Dataset, dir: &Path, runs: usize) -> Full {
    let db = &ds.path;
    let size = file_len(db);
    let config = BackupConfig::default();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_bytes, mut their_bytes) = (0, 0);
    let (snap, z) = (dir.join("snap.db"), dir.join("snap.db.zst"));
    let mut last = None;
    for run in 0..runs {
        let t = Instant::now();
        sh(&format!("sqlite3 {} '.backup {}'", q(db), q(&snap)));
        sh(&format!("zstd -q -f -3 -T0 {} -o {}", q(&snap), q(&z)));
        theirs.push(t.elapsed().as_secs_f64());
        their_bytes = file_len(&z);
        let _ = std::fs::remove_file(&snap);
        let target_dir = dir.join(format!("full-{run}"));
        let t = Instant::now();
        let m = create(&target(&target_dir), ds, db, &config, true);
        ours.push(t.elapsed().as_secs_f64());
        our_bytes = m.stored_bytes();
        if let Some(previous) = last.replace((target_dir, m.id)) {
            std::fs::remove_dir_all(previous.0).expect("clean");
        }
    }
    println!(
        "\nP6 full compressed backup (goal: no slower than .backup + zstd -3 -T0, ratio at least its)"
    );
    report("sqlite3 .backup + zstd -3 -T0", &theirs, size, their_bytes);
    report("tradevault backup create (zstd 3)", &ours, size, our_bytes);
    let (dir, id) = last.expect("at least one run");
    Full {
        seconds: ours,
        bytes: our_bytes,
        dir,
        id,
        theirs: z,
    }
}

/// The seeds' own method (`.backup`, then `gzip -6`) once, and our gzip once: for reference.
fn gzip_once(ds: &Dataset, dir: &Path) {
    let (db, size) = (&ds.path, file_len(&ds.path));
    let (snap, gz) = (dir.join("snap.db"), dir.join("snap.db.gz"));
    let t = Instant::now();
    sh(&format!("sqlite3 {} '.backup {}'", q(db), q(&snap)));
    sh(&format!("gzip -6 -c {} > {}", q(&snap), q(&gz)));
    let theirs = t.elapsed().as_secs_f64();
    report(
        "sqlite3 .backup + gzip -6, 1 run",
        &[theirs],
        size,
        file_len(&gz),
    );
    let _ = std::fs::remove_file(&snap);
    let _ = std::fs::remove_file(&gz);
    let config = BackupConfig {
        compression: "gzip".into(),
        ..BackupConfig::default()
    };
    let target_dir = dir.join("gzip");
    let t = Instant::now();
    let m = create(&target(&target_dir), ds, db, &config, true);
    report(
        "tradevault backup create (gzip 6), 1 run",
        &[t.elapsed().as_secs_f64()],
        size,
        m.stored_bytes(),
    );
    std::fs::remove_dir_all(target_dir).expect("clean");
}

/// P12: deep verify of P6's last backup against decompressing the seeds' snapshot +
/// `quick_check`.
fn deep_verify(full: &Full, dir: &Path, runs: usize) {
    let full_target = target(&full.dir);
    let (mut deep_quick, mut deep_integrity, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    // The three in turn, each first once every three runs, and each after a `sync`; the
    // baseline's 250-480 MB outputs are deleted only at the end. Whichever measure followed that
    // output paid for writing it back or for freeing it (`--quick-check`, twice in three runs).
    let mut plains = Vec::new();
    for run in 0..runs.min(3) {
        for step in (0..3).map(|i| (i + run) % 3) {
            sh("sync");
            match step {
                0 => {
                    let plain = dir.join(format!("plain-{run}.db"));
                    let t = Instant::now();
                    sh(&format!(
                        "zstd -q -d -f {} -o {}",
                        q(&full.theirs),
                        q(&plain)
                    ));
                    sh(&format!(
                        "sqlite3 {} 'PRAGMA quick_check' > /dev/null",
                        q(&plain)
                    ));
                    baseline.push(t.elapsed().as_secs_f64());
                    plains.push(plain);
                }
                1 => {
                    let v = verify(&full_target, &full.id, Check::Quick, dir);
                    assert!(v.ok, "{:?}", v.problems);
                    deep_quick.push(v.seconds);
                }
                _ => {
                    let v = verify(&full_target, &full.id, Check::Integrity, dir);
                    assert!(v.ok, "{:?}", v.problems);
                    deep_integrity.push(v.seconds);
                }
            }
        }
    }
    for plain in plains {
        let _ = std::fs::remove_file(plain);
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
}

/// P7: 1% of the pages changed, then an incremental backup on top of a full one of a copy.
fn incrementals(ds: &Dataset, dir: &Path, full: &Full, runs: usize) {
    let db = dir.join(format!("{}.db", ds.name));
    sh(&format!("cp {} {}", q(&ds.path), q(&db)));
    let config = BackupConfig::default();
    let p7 = target(&dir.join("p7"));
    create(&p7, ds, &db, &config, true);
    let pages = page_count(&db);
    let changed = pages / 100;
    println!(
        "\nP7 incremental backup after 1% of the pages changed ({changed} of {pages} pages), against the full backup above (goal: at most 5% of its bytes and time)"
    );
    let full_time = median(&full.seconds);
    for variant in [Variant::Random, Variant::Clustered] {
        let (mut times, mut bytes, mut stored_pages) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            change(&db, &ds.changes, variant, changed, run);
            let t = Instant::now();
            let m = create(&p7, ds, &db, &config, false);
            times.push(t.elapsed().as_secs_f64());
            assert!(m.parent.is_some(), "incremental");
            bytes.push(m.stored_bytes());
            stored_pages.push(u64::from(m.pages_stored));
        }
        let (b, t, stored) = (median_u(&bytes), median(&times), median_u(&stored_pages));
        let share = 100.0 * stored as f64 / pages as f64;
        println!(
            "  {:<28} median {t:.3} s (min {:.3}, max {:.3}) = {:.1}% of the full backup's time; \
             {} stored = {:.1}% of its bytes; pages stored (median) {stored} = {share:.2}% of the \
             pages{}",
            variant.label(),
            min(&times),
            max(&times),
            100.0 * t / full_time,
            mib(b),
            100.0 * b as f64 / full.bytes as f64,
            if (0.5..=2.0).contains(&share) {
                ""
            } else {
                " (not about 1%: recalibrate the change)"
            },
        );
    }
    let _ = std::fs::remove_file(&db);
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Random => "random",
            Variant::Clustered => "clustered (appended rows)",
        }
    }
}

/// Changes about `pages` pages of `db` the way `variant` says, in one transaction.
fn change(db: &Path, changes: &Changes, variant: Variant, pages: u64, run: usize) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch("BEGIN").expect("begin");
    match variant {
        Variant::Random => {
            let rows: i64 = conn
                .query_row(changes.max_id, [], |r| r.get(0))
                .expect("rows");
            let mut update = conn.prepare(changes.update).expect("prepare");
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ run as u64;
            for _ in 0..pages {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = (x % rows as u64) as i64 + 1;
                assert_eq!(update.execute([id]).expect("update"), 1, "row {id}");
            }
        }
        Variant::Clustered => {
            let n = (pages as f64 * changes.append_rows_per_page) as i64;
            conn.execute(changes.append, [n]).expect("append");
        }
    }
    conn.execute_batch("COMMIT").expect("commit");
}

fn create(
    target: &Target,
    ds: &Dataset,
    db: &Path,
    config: &BackupConfig,
    full: bool,
) -> backup::Manifest {
    let now = || jiff::Timestamp::now().as_millisecond();
    backup::create(
        std::slice::from_ref(target),
        &CreateOptions {
            db: db.to_owned(),
            source: None,
            database: ds.name.into(),
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

/// `$var`, or `$TMPDIR/seed-methods/<file>` (where seed-methods' scripts put it).
fn path_or(var: &str, file: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("seed-methods").join(file))
}

fn page_count(db: &Path) -> u64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags).expect("open");
    conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .expect("page_count") as u64
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().expect("sh");
    assert!(status.success(), "{cmd}: {status}");
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}
