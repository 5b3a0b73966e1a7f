//! Restore: from a replica Litestream wrote, and from ours at every TXID and at times; a damaged
//! file or an existing output is refused and nothing is written.

use std::path::Path;

use crate::rows;

use tradevault::replica::{FileReplica, Replica};
use tradevault::replicate::Replicator;
use tradevault::restore::{self, Target};

fn fixture_replica() -> Replica {
    Replica::from(FileReplica::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/ltx-litestream-0.5.17/replica"),
    ))
}

#[test]
fn a_replica_litestream_wrote_restores_to_what_litestream_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = fixture_replica();
    let plan = restore::plan(&replica, Target::Latest).expect("plan");
    assert_eq!(
        (plan.txid, plan.files.len()),
        (0x10, 1),
        "the newest snapshot alone reaches the end: {plan:?}"
    );
    let out = dir.path().join("latest.db");
    restore::apply(&replica, &plan, &out).expect("restore");
    let want = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/ltx-litestream-0.5.17/restored-latest.db"),
    )
    .expect("fixture");
    let got = std::fs::read(&out).expect("restored");
    assert!(
        got == want,
        "byte for byte what litestream restore made ({} vs {} bytes)",
        got.len(),
        want.len()
    );
    // Every TXID is reachable through the levels, and restores to a consistent database.
    for txid in 1..=0x10 {
        let plan = restore::plan(&replica, Target::Txid(txid)).expect("plan");
        assert_eq!(plan.txid, txid);
        restore::apply(&replica, &plan, &dir.path().join(format!("t{txid}.db")))
            .expect("restore passes integrity_check");
    }
}

#[test]
fn our_replica_restores_every_point_exactly_and_refuses_what_it_cannot_reach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
    let mut states = Vec::new();
    for step in 0..5u32 {
        for i in 0..20 {
            conn.execute(
                "INSERT INTO fills (id, qty) VALUES (?1, printf('%d', ?1))",
                [step * 100 + i],
            )
            .expect("insert");
        }
        r.sync(i64::from(step + 1) * 10_000).expect("sync");
        states.push(rows(&db));
    }
    for (i, want) in states.iter().enumerate() {
        let txid = i as u64 + 1;
        let plan = restore::plan(&replica, Target::Txid(txid)).expect("plan");
        let out = dir.path().join(format!("txid{txid}.db"));
        restore::apply(&replica, &plan, &out).expect("restore");
        assert_eq!(&rows(&out), want, "txid {txid}");
    }
    // A time restores the newest point at or before it, and says which.
    let plan = restore::plan(&replica, Target::Time(35_000)).expect("plan");
    assert_eq!((plan.txid, plan.point_ms), (3, 30_001));
    let at = dir.path().join("at.db");
    restore::apply(&replica, &plan, &at).expect("restore");
    assert_eq!(rows(&at), states[2]);
    for (target, why) in [
        (Target::Time(9_999), "before the first snapshot"),
        (Target::Time(50_002), "after the newest point"),
        (Target::Txid(9), "past the newest txid"),
    ] {
        let err = restore::plan(&replica, target).expect_err(why);
        assert!(
            err.to_string().contains("txid"),
            "{why}: the error lists restorable points: {err}"
        );
    }
    // An existing output is never overwritten.
    let plan = restore::plan(&replica, Target::Latest).expect("plan");
    std::fs::write(dir.path().join("taken.db"), b"keep me").expect("write");
    assert!(restore::apply(&replica, &plan, &dir.path().join("taken.db")).is_err());
    assert_eq!(
        std::fs::read(dir.path().join("taken.db")).expect("read"),
        b"keep me"
    );
    // A WAL left beside the output, or a staging file someone else owns, is refused and kept.
    std::fs::write(dir.path().join("side.db-wal"), b"old wal").expect("write");
    assert!(restore::apply(&replica, &plan, &dir.path().join("side.db")).is_err());
    assert!(!dir.path().join("side.db").exists());
    // A staging file another restore holds (locked) is refused and kept; one whose restore was
    // killed (its lock gone with it) is taken over.
    let busy = dir.path().join("busy.db.tradevault-restore");
    std::fs::write(&busy, b"not ours").expect("write");
    let holder = std::fs::File::open(&busy).expect("open");
    holder.lock().expect("lock");
    assert!(restore::apply(&replica, &plan, &dir.path().join("busy.db")).is_err());
    assert_eq!(
        std::fs::read(&busy).expect("read"),
        b"not ours",
        "never deleted"
    );
    drop(holder);
    restore::apply(&replica, &plan, &dir.path().join("busy.db")).expect("taken over");
    assert!(!busy.exists());
    // A file whose name does not match the transactions inside is refused.
    let renamed = dir.path().join("renamed");
    let copy = Replica::from(FileReplica::new(&renamed));
    for f in replica.list(0).expect("list") {
        let bytes = replica.read(&f).expect("read");
        copy.put(0, &bytes, None).expect("put");
    }
    std::fs::rename(
        renamed.join("ltx/0/0000000000000004-0000000000000004.ltx"),
        renamed.join("ltx/0/0000000000000004-0000000000000005.ltx"),
    )
    .expect("rename");
    std::fs::remove_file(renamed.join("ltx/0/0000000000000005-0000000000000005.ltx"))
        .expect("remove");
    let plan5 = restore::plan(&copy, Target::Txid(5)).expect("plan");
    let err = restore::apply(&copy, &plan5, &dir.path().join("renamed.db"))
        .expect_err("a renamed file is refused");
    assert!(err.to_string().contains("renamed or damaged"), "{err}");
    // A damaged file in the chain is refused before anything is written.
    let victim = replica
        .local_root()
        .expect("a file replica")
        .join("ltx/0/0000000000000003-0000000000000003.ltx");
    let mut bytes = std::fs::read(&victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("write");
    let plan = restore::plan(&replica, Target::Latest).expect("plan");
    let out = dir.path().join("damaged.db");
    let err = restore::apply(&replica, &plan, &out).expect_err("a damaged file is refused");
    assert!(
        format!("{err:?}").contains("0000000000000003"),
        "the error names the file: {err:?}"
    );
    assert!(!out.exists(), "nothing is written");
    assert!(
        std::fs::read_dir(dir.path()).expect("list").all(|e| !e
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .contains("tradevault-restore")),
        "no staging file is left"
    );
}

/// Restores to many random times and TXIDs, across a WAL reset (so through a level-9 snapshot),
/// and compares each with the state the writer recorded at that point. TRADEVAULT_TEST_SEED
/// replays a run.
#[test]
fn random_points_in_time_restore_exactly_what_was_recorded() {
    let seed: u64 = std::env::var("TRADEVAULT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("random_points_in_time: SEED={seed}");
    let mut state = seed;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
    // (time of the sync, txid, rows) for every point the replica can restore.
    let mut points: Vec<(i64, u64, Vec<(i64, String)>)> = Vec::new();
    let mut id = 0u32;
    for step in 1..=24i64 {
        for _ in 0..next(8) + 1 {
            match next(3) {
                0 if id > 0 => {
                    conn.execute(
                        "UPDATE fills SET qty = qty || '+' WHERE id = ?1",
                        [next(u64::from(id)) as u32],
                    )
                    .expect("update");
                }
                1 if id > 0 => {
                    conn.execute(
                        "DELETE FROM fills WHERE id = ?1",
                        [next(u64::from(id)) as u32],
                    )
                    .expect("delete");
                }
                _ => {
                    conn.execute(
                        "INSERT INTO fills (id, qty) VALUES (?1, printf('%d', ?1))",
                        [id],
                    )
                    .expect("insert");
                    id += 1;
                }
            }
        }
        if step == 12 {
            // Another program resets the WAL: the history continues through a level-9 snapshot.
            conn.execute_batch("PRAGMA wal_checkpoint(RESTART)")
                .expect("checkpoint");
        }
        let at = step * 1_000;
        let txid = match r.sync(at).expect("sync") {
            tradevault::replicate::Synced::Nothing => continue,
            tradevault::replicate::Synced::Deferred { .. } => {
                panic!("this replicator defers nothing")
            }
            tradevault::replicate::Synced::Snapshot { txid, .. }
            | tradevault::replicate::Synced::Transactions { txid, .. } => txid,
        };
        points.push((at, txid, rows(&db)));
    }
    assert!(
        replica.list(9).expect("list").len() == 1,
        "the reset went through a level-9 snapshot"
    );
    for i in 0..30 {
        let (first, last) = (points[0].0, points[points.len() - 1].0);
        let t = first + next((last - first) as u64 + 1) as i64;
        // `sync(at)` lists its file at `at` and stamps its header `at + 1`: its commits fall in
        // between, so at `at` itself the state is not known exactly, and is refused.
        if points.iter().any(|p| p.0 == t) {
            let refused = restore::plan(&replica, Target::Time(t)).expect_err("inexact");
            assert!(
                format!("{refused:?}").contains("not_exact"),
                "time {t} (seed {seed}): {refused:?}"
            );
            continue;
        }
        let (_, txid, want) = points
            .iter()
            .rev()
            .find(|p| p.0 < t)
            .expect("a point before t");
        let plan = restore::plan(&replica, Target::Time(t)).expect("plan");
        assert_eq!(
            plan.txid, *txid,
            "time {t}: the newest point at or before it"
        );
        let out = dir.path().join(format!("time-{i}.db"));
        restore::apply(&replica, &plan, &out).expect("restore");
        assert_eq!(&rows(&out), want, "time {t} (seed {seed})");
    }
    for i in 0..10 {
        let (_, txid, want) = &points[next(points.len() as u64) as usize];
        let out = dir.path().join(format!("txid-{i}.db"));
        restore::apply(
            &replica,
            &restore::plan(&replica, Target::Txid(*txid)).expect("plan"),
            &out,
        )
        .expect("restore");
        assert_eq!(&rows(&out), want, "txid {txid} (seed {seed})");
    }
}

/// The database `plan` reaches, assembled the simple way (the restore before it streamed): every
/// file decoded whole and verified, then its pages laid over the image in chain order.
fn assemble_sequentially(replica: &Replica, plan: &restore::Plan) -> Vec<u8> {
    let mut image = Vec::new();
    for &(level, min_txid, max_txid, size) in &plan.files {
        let file = tradevault::replica::ReplicaFile {
            level,
            min_txid,
            max_txid,
            size,
            created_at_ms: 0,
        };
        let bytes = replica.read(&file).expect("read");
        let (header, pages, _) = ltx::Decoder::decode_all(&bytes[..]).expect("decode");
        let page_size = header.page_size as usize;
        let len = header.commit as usize * page_size;
        image.resize(image.len().max(len), 0);
        for page in pages {
            let at = (page.pgno as usize - 1) * page_size;
            image[at..at + page_size].copy_from_slice(&page.data);
        }
        image.truncate(len);
    }
    image
}

/// Options with limits that force the interesting paths: downloads ahead of the applier, a byte
/// budget smaller than one file (one file at a time), several decoding threads, files read from
/// disk in pieces instead of memory.
fn limits(
    downloads_max: u64,
    downloaded_bytes_max: u64,
    decode_threads: u64,
    memory_file_bytes_max: u64,
) -> restore::Options<'static> {
    restore::Options {
        base: None,
        limits: tradevault::config::RestoreConfig {
            downloads_max,
            downloaded_bytes_max,
            decode_threads,
            memory_file_bytes_max,
        },
        ..Default::default()
    }
}

#[test]
fn parallel_fetch_restores_the_litestream_fixture_byte_for_byte_at_every_txid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = fixture_replica();
    let want_latest = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/ltx-litestream-0.5.17/restored-latest.db"),
    )
    .expect("fixture");
    let mut multi_file_plans = 0;
    for (n, options) in [
        limits(4, 1 << 30, 2, 1 << 30),
        limits(8, 1, 3, 1 << 30),
        limits(1, 1, 1, 1 << 30),
        limits(4, 1 << 30, 2, 1),
        limits(2, 1, 3, 1_000),
    ]
    .iter()
    .enumerate()
    {
        for txid in 1..=0x10 {
            let plan = restore::plan(&replica, Target::Txid(txid)).expect("plan");
            multi_file_plans += usize::from(plan.files.len() > 1);
            let out = dir.path().join(format!("o{n}-t{txid}.db"));
            let restored = restore::apply_with(&replica, &plan, &out, options).expect("restore");
            let got = std::fs::read(&out).expect("restored");
            assert!(
                got == assemble_sequentially(&replica, &plan),
                "txid {txid} with {:?}: byte for byte the sequential assembly",
                options.limits
            );
            assert_eq!(restored.bytes, got.len() as u64);
            if txid == 0x10 {
                assert!(
                    got == want_latest,
                    "byte for byte what litestream restore made"
                );
            }
        }
    }
    assert!(
        multi_file_plans > 10,
        "chains of several files were fetched ahead: {multi_file_plans}"
    );
}

#[test]
fn a_large_file_decoded_on_several_threads_is_the_database_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("big.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE fills (id INTEGER PRIMARY KEY, qty TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 24000)
         INSERT INTO fills SELECT i, printf('%d-%s', i, hex(randomblob(200))) FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .expect("fill");
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
    let synced = r.sync(10_000).expect("snapshot");
    assert!(
        matches!(synced, tradevault::replicate::Synced::Snapshot { pages, .. } if pages > 2_000),
        "one file large enough to be split: {synced:?}"
    );
    let want = std::fs::read(&db).expect("database");
    let plan = restore::plan(&replica, Target::Latest).expect("plan");
    // A file of at least `memory_max` bytes is read from the replica in pieces, not memory.
    for (threads, memory_max) in [
        (1, 1 << 30),
        (2, 1 << 30),
        (3, 1 << 30),
        (7, 1),
        (1, 1),
        (2, 1),
    ] {
        let out = dir
            .path()
            .join(format!("threads-{threads}-{memory_max}.db"));
        let progress = restore::Progress::default();
        let options = restore::Options {
            base: None,
            progress: Some(&progress),
            ..limits(2, 1 << 30, threads, memory_max)
        };
        let restored = restore::apply_with(&replica, &plan, &out, &options).expect("restore");
        assert!(
            std::fs::read(&out).expect("restored") == want,
            "{threads} threads, files of {memory_max} bytes or more from disk"
        );
        assert_eq!(
            (
                progress.applied_bytes(),
                progress.fetched_bytes(),
                progress.pages(),
                progress.files()
            ),
            (plan.bytes, plan.bytes, u64::from(restored.pages), 1),
            "the counters end at the plan's totals"
        );
        assert_eq!(progress.stage(), restore::Stage::Done);
    }
}

/// A replica whose history was compacted: level-0 files 2, 3 and 4 (synced at 20, 30 and 40 s)
/// merged into one level-1 file listed at 20 s and made at 40 s, the level-0 files removed. A
/// time among its commits cannot be restored exactly: it is refused, naming the points on either
/// side, and those restore exactly by TXID; from 40 s until the next file, it restores.
#[test]
fn a_time_inside_a_compacted_file_is_refused_with_the_nearest_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    let mut r = Replicator::new(&db, replica.clone()).expect("replicator");
    let mut states = Vec::new();
    for step in 1..=5u32 {
        for i in 0..10 {
            conn.execute(
                "INSERT INTO fills (id, qty) VALUES (?1, printf('%d', ?1))",
                [step * 100 + i],
            )
            .expect("insert");
        }
        r.sync(i64::from(step) * 10_000).expect("sync");
        states.push(rows(&db));
    }
    let level0 = replica.list(0).expect("list");
    let merged: Vec<_> = level0
        .iter()
        .filter(|f| (2..=4).contains(&f.min_txid))
        .collect();
    let mut pages = std::collections::BTreeMap::new();
    let mut last = None;
    for f in &merged {
        let (header, file_pages, _) =
            ltx::Decoder::decode_all(&replica.read(f).expect("read")[..]).expect("decode");
        pages.extend(file_pages.into_iter().map(|p| (p.pgno, p.data)));
        last = Some(header);
    }
    let last = last.expect("three files");
    // As the engine merges: listed at its first file's time, its header at its last one's.
    let mut enc = ltx::Encoder::new(
        Vec::new(),
        ltx::Header::new(last.page_size, last.commit, 2, 4, 40_000),
    )
    .expect("header");
    for (pgno, data) in pages.range(..=last.commit) {
        enc.encode_page(*pgno, data).expect("page");
    }
    replica
        .put(1, &enc.finish(0).expect("finish").0, Some(20_000))
        .expect("put");
    for f in merged {
        replica.delete(f).expect("delete");
    }
    for t in [20_000, 25_000, 39_999] {
        let err = restore::plan(&replica, Target::Time(t)).expect_err("inside the compacted file");
        assert!(
            matches!(
                err,
                tradevault::Error::Invalid {
                    code: "not_exact",
                    ..
                }
            ),
            "{t}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("txid 1 at 1970-01-01T00:00:10.001Z")
                && text.contains("txid 4 at 1970-01-01T00:00:40Z")
                && text.contains("--txid"),
            "{t}: the nearest points and how to ask for them: {text}"
        );
    }
    // The points it names restore exactly, and so do times outside the compacted file.
    for (target, state) in [
        (Target::Txid(1), 1),
        (Target::Txid(4), 4),
        (Target::Time(19_999), 1),
        (Target::Time(40_000), 4),
        (Target::Time(49_999), 4),
        (Target::Latest, 5),
    ] {
        let plan = restore::plan(&replica, target).expect("plan");
        let out = dir.path().join(format!("{}.db", plan.txid));
        if !out.exists() {
            restore::apply(&replica, &plan, &out).expect("restore");
        }
        assert_eq!(plan.txid, state as u64, "{target:?}");
        assert_eq!(rows(&out), states[state - 1], "{target:?}");
    }
    // Before the first point and after the newest, the refusal names the nearest point too.
    let before = restore::plan(&replica, Target::Time(9_999)).expect_err("before");
    assert!(before.to_string().contains("txid 1 at"), "{before}");
    let after = restore::plan(&replica, Target::Time(50_002)).expect_err("after");
    assert!(after.to_string().contains("txid 5 at"), "{after}");
}

/// Files stamped with one time, when each was made (as Litestream stamps them): nothing says
/// when the next file's commits were made, so a time between two points is refused instead of
/// restored to the older one, and `--at-or-before` restores that older point. The same history
/// with our two times restores that time exactly.
#[test]
fn a_time_after_a_point_of_a_one_time_replica_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let ours = Replica::from(FileReplica::new(dir.path().join("ours")));
    let mut r = Replicator::new(&db, ours.clone()).expect("replicator");
    for step in 1..=3u32 {
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, printf('%d', ?1))",
            [step],
        )
        .expect("insert");
        r.sync(i64::from(step) * 10_000).expect("sync");
    }
    let one_time = Replica::from(FileReplica::new(dir.path().join("one-time")));
    for f in ours.list(0).expect("list") {
        let (mut header, pages, trailer) =
            ltx::Decoder::decode_all(&ours.read(&f).expect("read")[..]).expect("decode");
        header.timestamp_ms = f.created_at_ms;
        let mut enc = ltx::Encoder::new(Vec::new(), header).expect("header");
        for p in pages {
            enc.encode_page(p.pgno, &p.data).expect("page");
        }
        let bytes = enc.finish(trailer.post_apply_checksum).expect("finish").0;
        one_time.put(0, &bytes, Some(f.created_at_ms)).expect("put");
    }
    let plan = restore::plan(&ours, Target::Time(25_000)).expect("two times: exact");
    assert_eq!(plan.txid, 2);
    let err = restore::plan(&one_time, Target::Time(25_000)).expect_err("one time: refused");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            tradevault::Error::Invalid {
                code: "not_exact",
                ..
            }
        ) && text.contains("txid 2 at 1970-01-01T00:00:20Z")
            && text.contains("txid 3 at 1970-01-01T00:00:30Z")
            && text.contains("--at-or-before"),
        "{text}"
    );
    let older = restore::plan(&one_time, Target::AtOrBefore(25_000)).expect("at or before");
    assert_eq!((older.txid, older.point_ms), (2, 20_000));
    let out = dir.path().join("older.db");
    restore::apply(&one_time, &older, &out).expect("restore");
    let at = dir.path().join("at.db");
    restore::apply(&ours, &plan, &at).expect("restore");
    assert_eq!(rows(&out), rows(&at));
}
