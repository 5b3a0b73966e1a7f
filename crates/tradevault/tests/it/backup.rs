//! Backups against real SQLite files and real targets (a directory, and S3 served by s3s-fs in
//! the test process): online full and incremental backups, restore, verify (shallow and deep),
//! damage found and named, encryption, retention plans applied.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use age::secrecy::ExposeSecret;
use tradevault::backup::{
    self, Catalog, CreateOptions, Identity, Kind, Target, VerifyOptions, catalog, format, retention,
};
use tradevault::config::{BackupConfig, BackupTargetConfig};
use tradevault::replica::S3Replica;
use tradevault::restore::Check;

use crate::s3;

fn now() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A database in WAL mode with a `fills` table of `n` rows.
fn database(path: &Path, n: u32) -> rusqlite::Connection {
    let conn = crate::fills_db(path);
    add_rows(&conn, 0, n);
    conn
}

fn add_rows(conn: &rusqlite::Connection, from: u32, n: u32) {
    conn.execute_batch("BEGIN").expect("begin");
    for i in from..from + n {
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, ?2)",
            rusqlite::params![i64::from(i), format!("{i}.{:0>200}", i % 97)],
        )
        .expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
}

fn small_config() -> BackupConfig {
    BackupConfig {
        segment_bytes: 64 << 10,
        pack_bytes: 256 << 10,
        ..BackupConfig::default()
    }
}

fn create(target: &Target, db: &Path, config: &BackupConfig) -> backup::Manifest {
    let clock = now;
    let options = CreateOptions {
        db: db.to_owned(),
        source: None,
        database: "fills".into(),
        kind: Kind::Manual,
        config,
        full: false,
        progress: None,
        now: &clock,
    };
    backup::create(std::slice::from_ref(target), &options)
        .expect("create")
        .remove(0)
}

fn verify(
    target: &Target,
    id: &str,
    deep: bool,
    identity: Option<&Identity>,
) -> backup::Verification {
    let clock = now;
    backup::verify(
        target,
        id,
        &VerifyOptions {
            deep,
            check: Check::Integrity,
            identity,
            scratch_dir: None,
            now: &clock,
            record: true,
        },
    )
    .expect("verify")
}

fn file_target(dir: &Path) -> Target {
    Target::parse(&format!("file://{}", dir.display())).expect("target")
}

fn restored_rows(
    target: &Target,
    id: &str,
    dir: &Path,
    identity: Option<&Identity>,
) -> Vec<(i64, String)> {
    let out = dir.join(format!("restored-{id}.db"));
    backup::restore_backup(target, id, identity, &out, None).expect("restore");
    crate::rows(&out)
}

#[test]
fn online_full_then_incremental_backups_restore_each_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    let conn = database(&db, 5_000);
    let target = file_target(&dir.path().join("target"));
    let config = small_config();

    // A writer keeps committing while the first backup is taken: the backup holds one state.
    let stop = AtomicBool::new(false);
    let full = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let w = rusqlite::Connection::open(&db).expect("open writer");
            let mut i = 100_000;
            while !stop.load(Ordering::Relaxed) {
                w.execute("INSERT INTO fills (id, qty) VALUES (?1, 'w')", [i])
                    .expect("insert");
                i += 1;
            }
            i - 100_000
        });
        let m = create(&target, &db, &config);
        stop.store(true, Ordering::Relaxed);
        assert!(writer.join().expect("writer") > 0);
        m
    });
    assert!(full.parent.is_none());
    assert_eq!(full.pages_stored, full.page_count);
    assert_eq!(full.page_fingerprint, "crc64-nvme");
    let rows = restored_rows(&target, &full.id, dir.path(), None);
    assert!(rows.len() >= 5_000);
    assert_eq!(
        full.tables.get("fills").copied(),
        Some(rows.len() as u64),
        "the rows counted are those of the state backed up"
    );

    // A small change: the next backup stores only the pages it touched.
    let before = crate::rows(&db);
    conn.execute("UPDATE fills SET qty = 'changed' WHERE id = 2500", [])
        .expect("update");
    add_rows(&conn, 200_000, 10);
    let after = crate::rows(&db);
    assert_ne!(before, after);
    let incr = create(&target, &db, &config);
    assert_eq!(incr.parent.as_deref(), Some(full.id.as_str()));
    assert_eq!(incr.depends_on, vec![full.id.clone()]);
    assert!(
        incr.pages_stored > 0 && incr.pages_stored * 10 < incr.page_count,
        "{} of {}",
        incr.pages_stored,
        incr.page_count
    );
    assert!(incr.stored_bytes() * 5 < full.stored_bytes());
    assert_eq!(restored_rows(&target, &incr.id, dir.path(), None), after);
    assert_eq!(incr.tables.get("fills").copied(), Some(after.len() as u64));

    for m in [&full, &incr] {
        let v = verify(&target, &m.id, true, None);
        assert!(v.ok, "{:?}", v.problems);
        assert_eq!(v.check.as_deref(), Some("integrity_check"));
    }
    let catalog = Catalog::load(&target).expect("catalog");
    assert_eq!(catalog.backups.len(), 2);
    assert!(catalog.backups.iter().all(|b| b.verified_ok()));
    let stats = catalog.stats(&target);
    assert_eq!(stats.databases[0].count, 2);
    assert_eq!(stats.databases[0].full, 1);

    // A restore never overwrites.
    let existing = dir.path().join("restored-exists.db");
    std::fs::write(&existing, b"x").expect("write");
    let err = backup::restore_backup(&target, &incr.id, None, &existing, None).expect_err("exists");
    assert_eq!(err.code(), Some("output_exists"));
}

#[test]
fn a_corrupt_pack_is_named_with_its_backup_object_and_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    database(&db, 3_000);
    let root = dir.path().join("target");
    let target = file_target(&root);
    let m = create(&target, &db, &small_config());
    assert!(verify(&target, &m.id, false, None).ok);

    let seg = &m.segments[1];
    let path = root.join(&seg.pack);
    let mut bytes = std::fs::read(&path).expect("read pack");
    bytes[seg.offset as usize + 10] ^= 0xff;
    std::fs::write(&path, &bytes).expect("damage pack");

    let v = verify(&target, &m.id, false, None);
    assert!(!v.ok);
    let text = v.problems.join("\n");
    assert!(text.contains(&m.id), "{text}");
    assert!(text.contains(&seg.pack), "{text}");
    assert!(text.contains(&format!("offset {}", seg.offset)), "{text}");
    assert!(
        text.contains("expected blake3") && text.contains(&seg.blake3),
        "{text}"
    );

    let deep = verify(&target, &m.id, true, None);
    assert!(!deep.ok);
    assert!(deep.problems.join("\n").contains(&seg.pack));
    let err = backup::restore_backup(&target, &m.id, None, &dir.path().join("out.db"), None)
        .expect_err("corrupt");
    assert_eq!(err.code(), Some("corrupt_object"));
    assert!(!dir.path().join("out.db").exists());
    assert!(!dir.path().join("out.db.tradevault-restore").exists());

    // A damaged manifest is named too, and the listing of the target says which object.
    let manifest = root.join(format::manifest_key(&m.id));
    let mut bytes = std::fs::read(&manifest).expect("read manifest");
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&manifest, &bytes).expect("damage manifest");
    let v = verify(&target, &m.id, false, None);
    assert!(
        !v.ok && v.problems.join("\n").contains(".manifest"),
        "{:?}",
        v.problems
    );
}

#[test]
fn deep_verify_catches_row_counts_that_differ() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    database(&db, 2_000);
    let root = dir.path().join("target");
    let target = file_target(&root);
    let mut m = create(&target, &db, &small_config());
    // The manifest says 2001 rows were counted; the pages hold 2000.
    m.tables.insert("fills".into(), 2_001);
    std::fs::write(
        root.join(format::manifest_key(&m.id)),
        format::encode_manifest(&m).expect("encode"),
    )
    .expect("rewrite manifest");
    assert!(
        verify(&target, &m.id, false, None).ok,
        "checksums alone cannot see it"
    );
    let v = verify(&target, &m.id, true, None);
    assert!(!v.ok);
    let text = v.problems.join("\n");
    assert!(
        text.contains("table fills: 2000 rows restored, 2001 counted"),
        "{text}"
    );
}

#[test]
fn encrypted_backups_need_the_identity_and_only_that_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    let conn = database(&db, 2_000);
    let target = file_target(&dir.path().join("target"));
    let key = age::x25519::Identity::generate();
    let config = BackupConfig {
        recipients: vec![key.to_public().to_string()],
        ..small_config()
    };
    // A plain backup first: a change of recipients starts a new chain.
    let plain = create(&target, &db, &small_config());
    let full = create(&target, &db, &config);
    assert!(full.parent.is_none(), "not an increment of {}", plain.id);
    assert_eq!(
        full.page_fingerprint, "blake3-64",
        "no linear checksum of plain pages in the clear"
    );
    add_rows(&conn, 10_000, 5);
    let incr = create(&target, &db, &config);
    assert!(
        incr.parent.is_some(),
        "incrementals work without the secret key"
    );
    let identity_file = dir.path().join("key.txt");
    std::fs::write(&identity_file, key.to_string().expose_secret()).expect("key file");
    let identity = Identity::from_file(&identity_file).expect("identity");

    let err = backup::restore_backup(&target, &incr.id, None, &dir.path().join("a.db"), None)
        .expect_err("no identity");
    assert_eq!(err.code(), Some("identity_required"));
    let other = age::x25519::Identity::generate();
    let wrong = Identity::from_text(other.to_string().expose_secret()).expect("identity");
    let err = backup::restore_backup(
        &target,
        &incr.id,
        Some(&wrong),
        &dir.path().join("b.db"),
        None,
    )
    .expect_err("wrong identity");
    assert_eq!(err.code(), Some("identity_mismatch"));
    assert_eq!(
        restored_rows(&target, &incr.id, dir.path(), Some(&identity)),
        crate::rows(&db)
    );
    // Checksums need no key; a deep verify does.
    assert!(verify(&target, &full.id, false, None).ok);
    assert!(verify(&target, &full.id, true, Some(&identity)).ok);
    let clock = now;
    let err = backup::verify(
        &target,
        &full.id,
        &VerifyOptions {
            deep: true,
            check: Check::Quick,
            identity: None,
            scratch_dir: None,
            now: &clock,
            record: false,
        },
    )
    .expect_err("deep without identity");
    assert_eq!(err.code(), Some("identity_required"));
    // The pages are not in the clear on the target.
    let pack = std::fs::read(dir.path().join("target").join(&full.packs[0].key)).expect("pack");
    assert!(pack.starts_with(b"age-encryption.org/v1"));
}

#[test]
fn prune_applies_its_plan_and_keeps_what_kept_backups_need() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    let conn = database(&db, 1_000);
    let root = dir.path().join("target");
    let rules = BackupTargetConfig {
        name: "local".into(),
        url: format!("file://{}", root.display()),
        keep_last: Some(1),
        keep_within: None,
        keep_hourly: None,
        keep_daily: None,
        keep_weekly: None,
        keep_monthly: None,
        ..BackupTargetConfig::new("", "")
    };
    let target = Target::from_config(&rules).expect("target");
    let config = BackupConfig {
        full_every: 3,
        ..small_config()
    };
    // Chains: full a, incr b, incr c | full d, incr e.
    let mut ids = Vec::new();
    for i in 0..5 {
        add_rows(&conn, 10_000 + i * 10, 10);
        ids.push(create(&target, &db, &config).id);
    }
    let catalog = Catalog::load(&target).expect("catalog");
    assert_eq!(
        catalog.backups.iter().map(|b| b.depth).collect::<Vec<_>>(),
        vec![0, 1, 2, 0, 1]
    );
    // Nothing verified: the plan is refused.
    let plan = retention::plan("local", &catalog, target.rules.as_ref(), now(), vec![]);
    assert!(plan.refused.is_some());
    let err = retention::apply(&target, &plan).expect_err("refused");
    assert_eq!(err.code(), Some("prune_refused"));

    assert!(verify(&target, &ids[1], false, None).ok);
    let catalog = Catalog::load(&target).expect("catalog");
    let plan = retention::plan("local", &catalog, target.rules.as_ref(), now(), vec![]);
    assert!(plan.refused.is_none());
    let kept: Vec<&str> = plan.keep.iter().map(|k| k.id.as_str()).collect();
    // e (last) needs d; b (newest verified) needs a; c goes.
    assert_eq!(kept, vec![&ids[0], &ids[1], &ids[3], &ids[4]]);
    assert_eq!(plan.delete.len(), 1);
    assert_eq!(plan.delete[0].id, ids[2]);
    let pruned = retention::apply(&target, &plan).expect("apply");
    assert_eq!(pruned.backups, 1);
    let after = Catalog::load(&target).expect("catalog");
    assert_eq!(after.backups.len(), 4);
    assert!(!root.join(format!("packs/{}", ids[2])).exists());
    for id in [&ids[1], &ids[4]] {
        assert!(verify(&target, id, true, None).ok);
    }
}

#[test]
fn the_catalog_is_rebuilt_from_the_target_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    database(&db, 500);
    let root = dir.path().join("target");
    let target = file_target(&root);
    let m = create(&target, &db, &small_config());
    verify(&target, &m.id, false, None);
    catalog::record_drill(
        &target,
        &backup::DrillRecord {
            database: "fills".into(),
            at_ms: now(),
            backup_id: Some(m.id.clone()),
            source: Some(format!("backup {} on {}", m.id, target.name)),
            ok: true,
            rto_seconds: 0.5,
            detail: "integrity_check ok".into(),
        },
    )
    .expect("drill");
    std::fs::remove_file(root.join("index.json")).expect("remove index");
    // Leftovers of a backup that died: a pack and a temporary file; neither is listed.
    std::fs::create_dir_all(root.join("packs/20200101T000000.000Z-dead00")).expect("dir");
    std::fs::write(
        root.join("packs/20200101T000000.000Z-dead00/0000.pack"),
        b"x",
    )
    .expect("pack");
    std::fs::write(root.join("backups/x.manifest.tmp-1-0"), b"x").expect("tmp");
    let listed = target.list("backups/").expect("list");
    assert!(
        listed.iter().all(|(k, _)| !k.contains(".tmp-")),
        "a listing skips temporary files: {listed:?}"
    );
    let c = Catalog::load(&target).expect("catalog");
    assert!(c.index_stale);
    assert_eq!(c.backups.len(), 1);
    assert!(c.backups[0].verified_ok());
    let stats = c.stats(&target);
    assert!(stats.databases[0].last_drill.as_ref().is_some_and(|d| d.ok));
    assert!(stats.databases[0].last_verified.is_some());
    let leftovers = retention::leftovers(&target, &c, now()).expect("leftovers");
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(leftovers[0].0.contains("dead00"));
}

#[test]
fn backups_to_s3_list_verify_and_restore() {
    let server = s3::S3Server::start();
    let replica = S3Replica::parse_with_env(
        &s3::url(server.addr, "backups/prod"),
        s3::env_with(s3::SECRET_ACCESS_KEY),
    )
    .expect("s3");
    let target = Target::from_s3(replica);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    let conn = database(&db, 3_000);
    let full = create(&target, &db, &small_config());
    add_rows(&conn, 50_000, 3);
    let incr = create(&target, &db, &small_config());
    assert_eq!(incr.parent.as_deref(), Some(full.id.as_str()));
    assert!(
        server
            .object(&format!("backups/prod/backups/{}.manifest", incr.id))
            .is_file()
    );
    let c = Catalog::load(&target).expect("catalog");
    assert_eq!(c.backups.len(), 2);
    assert!(verify(&target, &incr.id, true, None).ok);
    assert_eq!(
        restored_rows(&target, &incr.id, dir.path(), None),
        crate::rows(&db)
    );
}

#[test]
fn unknown_targets_are_named() {
    let config = BackupConfig::default();
    let err = Target::resolve(&config, "offsite").expect_err("unknown");
    assert_eq!(err.code(), Some("unknown_target"));
    let missing = Target::parse("file:///nonexistent/tradevault-backups").expect("target");
    let err = missing.check_reachable().expect_err("unreachable");
    assert_eq!(err.code(), Some("target_unreachable"));
}

/// A backup plus the replica's files after it restores the latest state: the chain starts right
/// after the last file the backup already holds, and the result equals the live database. A
/// backup newer than the replica's latest point is refused as a base.
#[test]
fn a_backup_and_the_replicas_files_after_it_restore_the_latest_state() {
    use std::sync::Arc;
    use std::time::Duration;
    use tradevault::clock::{Clock, SystemClock};
    use tradevault::replica::{FileReplica, Replica};
    use tradevault::replicate::Engine;
    use tradevault::restore::{self, Target as Point};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let replica = Replica::from(FileReplica::new(dir.path().join("replica")));
    let engine = Engine::start(
        crate::external_spec(&db, &replica, 16 << 20),
        Arc::new(SystemClock) as Arc<dyn Clock>,
    )
    .expect("start");
    let insert = |ids: std::ops::Range<i64>| crate::insert_fills(&conn, ids);
    insert(0..200);
    engine.wait_synced(Duration::from_secs(30)).expect("synced");
    let target = file_target(&dir.path().join("backups"));
    let config = BackupConfig::default();
    let manifest = create(&target, &db, &config);
    insert(200..500);
    engine.wait_synced(Duration::from_secs(30)).expect("synced");
    engine.stop();
    let tail = restore::plan_after(
        &replica,
        Point::Latest,
        manifest.state_min_ms,
        manifest.state_max_ms,
    )
    .expect("plan after the backup");
    let full = restore::plan(&replica, Point::Latest).expect("full plan");
    assert_eq!(tail.txid, full.txid);
    assert!(
        tail.files[0].1 > 1,
        "the chain starts after the backup: {tail:?}"
    );
    assert!(tail.bytes < full.bytes, "{} vs {}", tail.bytes, full.bytes);
    let base = dir.path().join("base.db");
    backup::restore_backup(&target, &manifest.id, None, &base, None).expect("restore backup");
    let out = dir.path().join("restored.db");
    let options = restore::Options {
        base: Some(&base),
        ..Default::default()
    };
    restore::apply_with(&replica, &tail, &out, &options).expect("apply the tail");
    assert_eq!(crate::rows(&out), crate::rows(&db));

    // A backup that holds commits the replica does not is no base for it.
    insert(500..510);
    let newer = create(&target, &db, &config);
    assert!(
        restore::plan_after(
            &replica,
            Point::Latest,
            newer.state_min_ms,
            newer.state_max_ms
        )
        .is_err()
    );
}

/// A drill of an encrypted backup needs the identity: without it the backup is not drilled and,
/// with no other source, the drill says so and fails; with it, the backup restores and its rows
/// match. [`drill::record`] puts each result in the target's catalog.
#[test]
fn drills_of_encrypted_backups_need_the_identity() {
    use tradevault::drill::{self, DrillOptions, DrillSpec};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("fills.db");
    database(&db, 300);
    let target = file_target(&dir.path().join("target"));
    let key = age::x25519::Identity::generate();
    let config = BackupConfig {
        recipients: vec![key.to_public().to_string()],
        ..small_config()
    };
    let m = create(&target, &db, &config);
    let identity = Identity::from_text(key.to_string().expose_secret()).expect("identity");
    let spec = DrillSpec {
        database: "fills".into(),
        path: Some(db.clone()),
        replicas: Vec::new(),
        targets: vec![target.clone()],
        sentinel: None,
    };
    let clock = now;
    let limits = tradevault::config::RestoreConfig::default();
    let scratch = dir.path().join("scratch");
    let options = |identity| DrillOptions {
        scratch: &scratch,
        limits: &limits,
        identity,
        now: &clock,
    };

    let sealed = drill::run(&spec, &options(None));
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    assert!(!sealed[0].ok);
    let error = sealed[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("is encrypted") && error.contains("--identity"),
        "{error}"
    );

    let opened = drill::run(&spec, &options(Some(&identity)));
    assert_eq!(opened.len(), 1, "{opened:?}");
    let d = &opened[0];
    assert!(d.ok, "{d:?}");
    assert_eq!(d.backup_id.as_deref(), Some(m.id.as_str()));
    assert_eq!(d.rows.get("fills"), Some(&300));
    assert_eq!(d.live_rows, d.rows);
    assert!(
        d.checks.iter().all(|c| c.ok) && d.checks.iter().any(|c| c.name == "rows"),
        "{d:?}"
    );
    // A copy that passed is not left behind.
    let left = std::fs::read_dir(&scratch).map_or(0, |d| d.count());
    assert_eq!(left, 0);

    // Two drills recorded at the same millisecond are both kept, the later one a ms on.
    let mut failed = sealed[0].clone();
    failed.at_ms = d.at_ms;
    drill::record(&[failed, d.clone()], std::slice::from_ref(&target));
    let catalog = Catalog::load(&target).expect("catalog");
    assert_eq!(catalog.drills.len(), 2, "{:?}", catalog.drills);
    let last = catalog.stats(&target).databases[0]
        .last_drill
        .clone()
        .expect("last drill");
    assert_eq!(last.at_ms, d.at_ms + 1);
    assert!(last.ok);
    assert_eq!(last.backup_id.as_deref(), Some(m.id.as_str()));
    assert!(
        last.detail.contains("match the backup's counts"),
        "{last:?}"
    );
}
