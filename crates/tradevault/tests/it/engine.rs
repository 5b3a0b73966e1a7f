//! The engine's schedule, driven by a manual clock: shipped points are kept at full granularity
//! for the fine window, merged into one file per 10 seconds beside them as soon as those have
//! passed, and into one file per second past the fine window; a snapshot is written when the
//! newest is too old; history before the snapshot the window starts from is deleted; and the
//! replica restores to the latest state at every step.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tradevault::clock::Clock;
use tradevault::replica::{FileReplica, Replica};
use tradevault::replicate::{DatabaseSpec, Engine, ReplicaSpec, Retention, Source};
use tradevault::restore::{self, Target};

const MINUTE: i64 = 60_000;

fn files(dir: &Path, level: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("ltx").join(level.to_string()))
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ltx"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits up to 30 s for `f`, looking every 10 ms.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn restored_rows(replica: &Replica, dir: &Path, name: &str) -> Vec<(i64, String)> {
    let plan = restore::plan(replica, Target::Latest).expect("plan");
    let out = dir.join(name);
    restore::apply(replica, &plan, &out).expect("apply");
    crate::rows(&out)
}

#[test]
fn compaction_snapshots_and_retention_follow_the_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let (clock, at) = crate::manual_clock(1_795_000_000);
    let root = dir.path().join("replica");
    let replica = Replica::from(FileReplica::new(&root));
    let engine = Engine::start(
        vec![DatabaseSpec {
            name: "bot".into(),
            source: Source::External(db.clone()),
            replicas: vec![ReplicaSpec {
                name: "r".into(),
                replica: replica.clone(),
                sync_interval: Duration::ZERO,
                retention: Retention {
                    window_ms: 10 * MINUTE,
                    fine_ms: MINUTE,
                    snapshot_ms: 5 * MINUTE,
                },
            }],
            poll_interval: Duration::from_millis(2),
            checkpoint_wal_bytes: 16 << 20,
        }],
        clock.clone() as Arc<dyn Clock>,
    )
    .expect("start");
    let synced = |engine: &Engine| {
        let s = &engine.status()[0];
        s.txid > 0 && s.replicas[0].txid == Some(s.txid)
    };
    // Twenty commits, 250 ms apart: twenty points, several per second.
    for i in 0..20i64 {
        clock.set(at(i * 250));
        // Read before the commit: the engine may ship it before the insert returns.
        let want = engine.status()[0].txid + 1;
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, printf('%d.5', ?1))",
            [i],
        )
        .expect("insert");
        eventually("the commit on the replica", || {
            let s = &engine.status()[0];
            s.txid >= want && s.replicas[0].txid == Some(s.txid)
        });
    }
    let shipped = files(&root, 0).len();
    assert!(shipped >= 20, "one file per point: {shipped}");
    assert_eq!(
        restored_rows(&replica, dir.path(), "a.db"),
        crate::rows(&db)
    );

    // Once 10 seconds have passed, their points are merged into one file (level 2), beside them:
    // the latest state takes the snapshot and that file, and every point is still there.
    clock.set(at(30_000));
    eventually("a level-2 file", || !files(&root, 2).is_empty());
    assert_eq!(
        files(&root, 0).len(),
        shipped,
        "the points stay for the fine window"
    );
    let latest = restore::plan(&replica, Target::Latest).expect("plan");
    assert_eq!(
        latest.files.len(),
        2,
        "the snapshot and the 10 s file: {latest:?}"
    );
    for point in replica.list(0).expect("list") {
        let plan = restore::plan(&replica, Target::Txid(point.max_txid)).expect("a point");
        assert_eq!(plan.txid, point.max_txid, "{plan:?}");
    }

    // Past the fine window: points merge into one file per second (5 seconds of commits).
    clock.set(at(2 * MINUTE));
    eventually("level-1 compaction", || {
        files(&root, 0).is_empty() && !files(&root, 1).is_empty()
    });
    let seconds = files(&root, 1).len();
    assert!(
        (5..=6).contains(&seconds),
        "one file per second: {:?}",
        files(&root, 1)
    );
    // The snapshot moved up to level 1 is still one: no new snapshot is asked for before
    // snapshot_ms (one more commit goes through the shipper, which would have shipped it).
    let want = engine.status()[0].txid + 1;
    conn.execute("INSERT INTO fills (id, qty) VALUES (100, '1.5')", [])
        .expect("insert");
    eventually("the commit on the replica", || {
        let s = &engine.status()[0];
        s.txid >= want && s.replicas[0].txid == Some(s.txid)
    });
    assert!(files(&root, 9).is_empty(), "{:?}", files(&root, 9));
    // Status counts what the replica holds once a pass has listed it, uploads since included.
    let on_disk = || {
        (0..=9)
            .map(|level| files(&root, level).len() as u64)
            .sum::<u64>()
    };
    eventually("status to count the replica's files", || {
        engine.status()[0].replicas[0].files == Some(on_disk())
    });
    // A point put after the maintenance thread's first pass reaches level 2 from what the
    // uploader recorded for it (it lists the directory only once).
    clock.set(at(2 * MINUTE + 20_000));
    eventually("the new point in a 10 s file", || {
        replica
            .list(2)
            .expect("list")
            .iter()
            .any(|f| f.max_txid == want)
    });
    // The 10 s file stays beside the seconds, and the latest state still takes it.
    let latest = restore::plan(&replica, Target::Latest).expect("plan");
    assert!(
        latest.files.len() <= 3 && latest.files.iter().any(|f| f.0 == 2),
        "{latest:?}"
    );
    assert_eq!(
        restored_rows(&replica, dir.path(), "b.db"),
        crate::rows(&db)
    );
    // A merged second restores exactly from when its file was made (its header time, after its
    // last commit) until the next file's first commit (its listed time); a time among its own
    // commits is refused.
    let seconds = replica.list(1).expect("list");
    let (first, next) = (&seconds[0], &seconds[1]);
    let made = replica.header(first).expect("header").timestamp_ms;
    assert!(made >= first.created_at_ms, "{first:?} made at {made}");
    match restore::plan(&replica, Target::Time(made)) {
        Ok(plan) => {
            assert!(made < next.created_at_ms, "{plan:?}");
            assert_eq!(plan.txid, first.max_txid, "{plan:?}");
        }
        Err(e) => assert!(
            made >= next.created_at_ms && e.to_string().contains("cannot be restored exactly"),
            "{e}"
        ),
    }
    if made > first.created_at_ms {
        let inside =
            restore::plan(&replica, Target::Time(made - 1)).expect_err("among its commits");
        assert!(
            inside.to_string().contains("cannot be restored exactly"),
            "{inside}"
        );
    }

    // The newest snapshot is older than snapshot_ms: a new one is written and uploaded.
    clock.set(at(8 * MINUTE));
    eventually("a scheduled snapshot", || {
        !files(&root, 9).is_empty() && synced(&engine)
    });
    // Past the window: everything the window's base snapshot supersedes goes.
    clock.set(at(19 * MINUTE));
    eventually("retention", || {
        files(&root, 1).is_empty() && files(&root, 0).is_empty()
    });
    // The base snapshot stays (and, the newest being older than snapshot_ms again, a new one).
    let snapshots = files(&root, 9);
    assert!((1..=2).contains(&snapshots.len()), "{snapshots:?}");
    assert_eq!(
        restored_rows(&replica, dir.path(), "c.db"),
        crate::rows(&db)
    );
    // Before the window there is nothing to restore to, and the restore says so.
    assert!(restore::plan(&replica, Target::Time(at(MINUTE).as_millisecond())).is_err());
    engine.stop();
}

/// A program that checkpoints its own WAL (SQLite's autocheckpoint, here every 8 pages) never
/// makes the sidecar lose its place: the engine's read transaction keeps the WAL from restarting,
/// so the replica is one snapshot and then only level-0 files, and restores the latest state.
#[test]
fn a_program_checkpointing_its_own_wal_does_not_force_new_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    conn.execute_batch("PRAGMA wal_autocheckpoint=8")
        .expect("autocheckpoint");
    let root = dir.path().join("replica");
    let replica = Replica::from(FileReplica::new(&root));
    let engine = Engine::start(
        crate::external_spec(&db, &replica, 16 << 20),
        Arc::new(tradevault::clock::SystemClock) as Arc<dyn Clock>,
    )
    .expect("start");
    eventually("the first snapshot", || engine.status()[0].txid >= 1);
    crate::insert_fills(&conn, 0..3_000);
    let written = crate::rows(&db);
    eventually("the replica to hold every row", || {
        let s = &engine.status()[0];
        if s.replicas[0].txid != Some(s.txid) {
            return false;
        }
        let out = dir.path().join(format!("probe-{}.db", s.txid));
        restore::plan(&replica, Target::Latest)
            .and_then(|plan| restore::apply(&replica, &plan, &out))
            .is_ok_and(|_| crate::rows(&out) == written)
    });
    engine.stop();
    assert!(
        files(&root, 9).is_empty(),
        "no snapshot after the first: {:?}",
        files(&root, 9)
    );
}

/// The engine checkpoints a program's WAL itself (the program never does: autocheckpoint off),
/// taking the program's write lock only for the tail: the WAL is folded in and restarted again and
/// again (its file stays within four times the trigger), and every new WAL generation continues
/// the history, so the replica is one snapshot and then only level-0 files in an unbroken chain,
/// and restores exactly what the program wrote.
#[test]
fn the_engine_checkpoints_a_programs_wal_without_new_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA busy_timeout=5000")
        .expect("autocheckpoint off");
    let root = dir.path().join("replica");
    let replica = Replica::from(FileReplica::new(&root));
    let engine = Engine::start(
        crate::external_spec(&db, &replica, 32 << 10),
        Arc::new(tradevault::clock::SystemClock) as Arc<dyn Clock>,
    )
    .expect("start");
    eventually("the first snapshot", || engine.status()[0].txid >= 1);
    crate::insert_fills(&conn, 0..3_000);
    let written = crate::rows(&db);
    let wal = dir.path().join("bot.db-wal");
    eventually(
        "the wal checkpointed and the replica holding every row",
        || {
            let s = &engine.status()[0];
            if s.checkpoints == 0
                || s.replicas[0].txid != Some(s.txid)
                || std::fs::metadata(&wal).map_or(0, |m| m.len()) > 4 * (32 << 10)
            {
                return false;
            }
            let out = dir.path().join(format!("probe-{}.db", s.txid));
            restore::plan(&replica, Target::Latest)
                .and_then(|plan| restore::apply(&replica, &plan, &out))
                .is_ok_and(|_| crate::rows(&out) == written)
        },
    );
    let checkpoints = engine.status()[0].checkpoints;
    engine.stop();
    assert!(checkpoints >= 2, "{checkpoints} checkpoints");
    assert!(
        files(&root, 9).is_empty(),
        "no snapshot after the first: {:?}",
        files(&root, 9)
    );
    // One chain from TXID 1: each file starts right after the previous one.
    let mut next = 1;
    for name in files(&root, 0) {
        let (min, max) = name
            .trim_end_matches(".ltx")
            .split_once('-')
            .expect("min-max");
        let (min, max) = (
            u64::from_str_radix(min, 16).expect("hex"),
            u64::from_str_radix(max, 16).expect("hex"),
        );
        assert_eq!(min, next, "gap before {name}");
        next = max + 1;
    }
}

/// A clean stop saves where the history stands, so the next start (the next run of a sidecar, a
/// restarted server) ships only what was committed meanwhile, not a new snapshot of the whole
/// database; a start with nothing new to ship still counts as in sync. A start after the program
/// folded its WAL into the database meanwhile cannot know what it missed, and writes a snapshot.
#[test]
fn a_clean_stop_lets_the_next_start_continue_without_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    conn.execute_batch("PRAGMA wal_autocheckpoint=0")
        .expect("autocheckpoint off");
    let root = dir.path().join("replica");
    let replica = Replica::from(FileReplica::new(&root));
    let run = || {
        let engine = Engine::start(
            crate::external_spec(&db, &replica, 16 << 20),
            Arc::new(tradevault::clock::SystemClock) as Arc<dyn Clock>,
        )
        .expect("start");
        engine
            .wait_synced(Duration::from_secs(30))
            .expect("in sync");
        engine.stop();
    };
    let insert = |ids: std::ops::Range<i64>| crate::insert_fills(&conn, ids);
    let snapshots = || {
        files(&root, 9).len()
            + files(&root, 0)
                .iter()
                .filter(|n| n.starts_with("0000000000000001-"))
                .count()
    };

    insert(0..100);
    run();
    assert_eq!(snapshots(), 1, "the first run starts with a snapshot");
    let level0 = files(&root, 0).len();
    insert(100..200);
    run();
    run();
    assert_eq!(
        snapshots(),
        1,
        "no snapshot after a clean stop: {:?}",
        files(&root, 9)
    );
    assert!(
        files(&root, 0).len() > level0,
        "the rows written meanwhile were shipped"
    );
    assert_eq!(
        restored_rows(&replica, dir.path(), "continued.db"),
        crate::rows(&db)
    );

    // Behind the sidecar's back: more rows, then the WAL folded into the database and truncated.
    insert(200..300);
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0);
    run();
    assert_eq!(snapshots(), 2, "a new snapshot after the WAL was reset");
    assert_eq!(
        restored_rows(&replica, dir.path(), "after-reset.db"),
        crate::rows(&db)
    );
}

/// A dead replica (an S3 bucket that does not exist, on a real S3 server) is retried with
/// backoff while the program goes on committing: every commit wakes the uploaders, and that must
/// not cut a backoff short. Before the fix, a retry followed each shipment (hundreds in these
/// three seconds); with the backoff (100 ms doubling) it is a handful. The other replica keeps up.
#[test]
fn a_dead_replica_is_retried_with_backoff_while_commits_go_on() {
    use tradevault::replica::S3Replica;
    let s3 = crate::s3::S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let good = Replica::from(FileReplica::new(dir.path().join("replica")));
    let dead = Replica::from(
        S3Replica::parse_with_env(
            &format!("s3://no-such-bucket/bot?endpoint=http://{}", s3.addr),
            crate::s3::env_with(crate::s3::SECRET_ACCESS_KEY),
        )
        .expect("replica"),
    );
    let mut spec = crate::external_spec(&db, &good, 16 << 20);
    spec[0].replicas.push(ReplicaSpec {
        name: "dead".into(),
        replica: dead,
        sync_interval: Duration::ZERO,
        retention: Retention::default(),
    });
    let engine = Engine::start(
        spec,
        Arc::new(tradevault::clock::SystemClock) as Arc<dyn Clock>,
    )
    .expect("start");
    let started = Instant::now();
    let mut id = 0;
    while started.elapsed() < Duration::from_secs(3) {
        crate::insert_fills(&conn, id..id + 1);
        id += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    eventually("the live replica to hold every commit", || {
        let s = &engine.status()[0];
        s.replicas[0].txid == Some(s.txid)
    });
    let status = engine.status()[0].clone();
    engine.stop();
    let dead = &status.replicas[1];
    let shipments = status.replicas[0].files_uploaded;
    assert!(
        dead.last_error
            .as_deref()
            .is_some_and(|e| e.contains("NoSuchBucket")),
        "{dead:?}"
    );
    assert!(shipments >= 50, "commits went on: {shipments} shipments");
    // 3 s of backoff doubling from 100 ms allows about 6 attempts; a generous bound, far below
    // one attempt per shipment.
    assert!(
        (1..=15).contains(&dead.failures),
        "{} attempts at a dead replica during {shipments} shipments",
        dead.failures
    );
}

/// With only file replicas in async mode, each replica keeps a fine log: its journal gets every
/// shipment, full laps stay as segments, and `ltx/` gets a file a second. Every shipment inside
/// those merged files restores exactly, by TXID and by time, to what the writer had committed.
#[test]
fn a_fine_log_restores_every_shipment_inside_the_layouts_seconds() {
    use tradevault::clock::SystemClock;
    use tradevault::replica::journal;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let root = dir.path().join("replica");
    let replica = Replica::from(FileReplica::new(&root));
    let engine = Engine::start(
        crate::external_spec(&db, &replica, 64 << 20),
        Arc::new(SystemClock) as Arc<dyn Clock>,
    )
    .expect("start");
    let now = || SystemClock.now().as_millisecond();
    // The journal continues the layout once it holds the snapshot: shipments before that wait
    // in memory.
    eventually("the snapshot on the replica", || {
        engine.status()[0].replicas[0].txid.is_some_and(|t| t >= 1)
    });
    // Bursts of five commits of 64 KiB that LZ4 cannot shrink (20 MiB in all, more than a
    // journal's lap), 20 ms apart: (row, a time before its commit, a time after it).
    let mut commits = Vec::new();
    for i in 0..320i64 {
        let before = now();
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, hex(randomblob(32768)))",
            [i],
        )
        .expect("insert");
        commits.push((i, before, now()));
        if i % 5 == 4 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A clean stop writes what waits for the local log, and the layout gets it.
    engine.stop();
    assert!(
        !journal::segments(&root).expect("segments").is_empty(),
        "a full lap stays as a segment"
    );
    let merged: Vec<_> = replica
        .list(0)
        .expect("list")
        .into_iter()
        .filter(|f| f.min_txid != 1 && f.max_txid > f.min_txid)
        .collect();
    assert!(
        merged.len() >= 3,
        "files merging several shipments: {merged:?}"
    );
    let restored = |target: Target, name: String| -> (u64, Vec<i64>) {
        let plan = restore::plan(&replica, target).expect("plan");
        let out = dir.path().join(name);
        restore::apply(&replica, &plan, &out).expect("apply");
        let ids = crate::rows(&out).into_iter().map(|(id, _)| id).collect();
        std::fs::remove_file(&out).expect("remove");
        (plan.txid, ids)
    };
    // By TXID: every point inside three merged files is a whole prefix of the rows, growing.
    let mut last_rows = 0;
    let mut exact_times = 0;
    for f in merged.iter().take(3) {
        for t in f.min_txid..=f.max_txid {
            let (txid, ids) = restored(Target::Txid(t), format!("x{t}.db"));
            assert_eq!(txid, t);
            assert_eq!(ids, (0..ids.len() as i64).collect::<Vec<_>>(), "txid {t}");
            assert!(ids.len() >= last_rows, "txid {t}");
            last_rows = ids.len();
        }
        // By time: at a point's header time, when the next point's commits had not begun, the
        // state holds every commit made by then and none begun after.
        let points: Vec<_> = replica
            .list_restorable_for(Target::Txid(f.max_txid))
            .expect("list")
            .into_iter()
            .filter(|p| p.level == journal::JOURNAL_LEVEL && p.max_txid <= f.max_txid)
            .filter(|p| p.min_txid >= f.min_txid)
            .collect();
        assert_eq!(points.len() as u64, f.max_txid - f.min_txid + 1);
        for pair in points.windows(2) {
            let made = replica.header_time(&pair[0]).expect("header");
            if made >= pair[1].created_at_ms {
                continue;
            }
            let (txid, ids) = restored(Target::Time(made), format!("t{made}.db"));
            assert_eq!(txid, pair[0].max_txid);
            for (id, before, after) in &commits {
                if *after <= made {
                    assert!(ids.contains(id), "row {id} committed by {made}");
                }
                if *before > made {
                    assert!(!ids.contains(id), "row {id} begun after {made}");
                }
            }
            exact_times += 1;
        }
    }
    assert!(
        exact_times > 0,
        "a time between two bursts restores exactly"
    );
    let (_, ids) = restored(Target::Latest, "latest.db".into());
    assert_eq!(ids, (0..320).collect::<Vec<_>>());
}

/// A fine log keeps its segments for the fine window, even once `ltx/` holds them, and removes
/// them past it, by the engine's clock.
#[test]
fn a_fine_logs_segments_stay_for_the_fine_window_then_go() {
    use tradevault::replica::journal;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let (clock, at) = crate::manual_clock(1_795_000_000);
    let root = dir.path().join("replica");
    let replica = Replica::from(FileReplica::new(&root));
    let mut spec = crate::external_spec(&db, &replica, 64 << 20);
    spec[0].replicas[0].retention = Retention {
        window_ms: 10 * MINUTE,
        fine_ms: MINUTE,
        snapshot_ms: 10 * MINUTE,
    };
    let engine = Engine::start(spec, clock.clone() as Arc<dyn Clock>).expect("start");
    eventually("the snapshot on the replica", || {
        engine.status()[0].replicas[0].txid.is_some_and(|t| t >= 1)
    });
    // 48 MiB that LZ4 cannot shrink, a commit a millisecond: three laps of the journal. Paced
    // (256 KiB per 20 ms), so that a debug build's shipper keeps up and each shipment goes to the
    // journal (at most a quarter of it).
    for i in 0..768i64 {
        clock.set(at(i));
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, hex(randomblob(32768)))",
            [i],
        )
        .expect("insert");
        if i % 4 == 3 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let segments = || journal::segments(&root).expect("segments");
    eventually("two laps archived and held by ltx/", || {
        let s = segments();
        s.len() >= 2
            && replica
                .list_all()
                .is_ok_and(|all| all.iter().map(|f| f.max_txid).max() >= s.last().map(|l| l.1))
    });
    let first = segments()[0].clone();
    // A maintenance pass (it removes segments first, then counts the journal's files) inside the
    // fine window leaves them.
    clock.set(at(10_000));
    eventually("a maintenance pass", || {
        engine.status()[0].replicas[0].journal_files > 0
    });
    assert_eq!(segments()[0], first, "held, but inside the fine window");
    // Past it, they go, oldest first, every one the layout holds.
    clock.set(at(2 * MINUTE));
    eventually("the segments past the fine window removed", || {
        segments().iter().all(|s| s.0 > first.1)
    });
    assert_eq!(restored_rows(&replica, dir.path(), "latest.db").len(), 768);
    drop(engine);
}
