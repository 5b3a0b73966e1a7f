//! `tradevault backup` against the built binary: create beside a running server, list a bare
//! target by URL with no config, a SIGKILL in the middle of a backup leaves nothing visible and
//! the next backup works, clear errors and exit codes, prune's plan.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Server, command};

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = command();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run tradevault");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not json ({e}): {out}"))
}

/// A database in WAL mode holding about `mib` MiB of rows that compress like real ones.
fn big_database(path: &Path, mib: u32) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE ticks (id INTEGER PRIMARY KEY, sym TEXT, px REAL, note TEXT);",
    )
    .expect("schema");
    let rows = mib * 4_000;
    conn.execute_batch("BEGIN").expect("begin");
    let mut x: u64 = 88_172_645_463_325_252;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        conn.execute(
            "INSERT INTO ticks (id, sym, px, note) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                i64::from(i),
                format!("S{}", x % 100),
                (x % 100_000) as f64 / 100.0,
                format!("{:x}{:x}", x, x.rotate_left(17)).repeat(4)
            ],
        )
        .expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
}

#[test]
fn create_beside_a_running_server_then_list_a_bare_target_by_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let d = data.to_str().expect("utf8");
    let target = format!("file://{}", dir.path().join("target").display());
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[jobs]\nbackup = \"\"\nprune = \"\"\nverify = \"\"\ndrill = \"\"\n\
             [[backup.target]]\nname = \"local\"\nurl = \"{target}\"\nkeep_last = 1\n"
        ),
    )
    .expect("config");
    let c = config.to_str().expect("utf8");
    {
        let server = Server::start_args(&data, &[], &["--config", c]);
        let mut api = server.client();
        let t = serde_json::json!({ "trade_id": "a", "symbol": "X", "side": "buy", "qty": "1", "price": "2" });
        assert_eq!(api.post("/v1/trades", &t).0, 201);
        // The store in --data-dir, while the server writes; the configured target by default.
        let (code, out, err) = run(
            &["backup", "create", "--data-dir", d, "--config", c, "--json"],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let created = json(&out);
        assert_eq!(created[0]["target"], "local");
        assert_eq!(created[0]["database"], "store");
        assert_eq!(created[0]["tables"]["trades"], 1);
        // The running server mirrors the catalog into its store when the command asks it to.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mirrored: i64 = rusqlite::Connection::open(data.join("tradevault.db"))
                .and_then(|c| c.query_row("SELECT count(*) FROM backup_metadata", [], |r| r.get(0)))
                .unwrap_or(0);
            if mirrored == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the server never mirrored the backup: {err}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = serde_json::json!({ "trade_id": "b", "symbol": "X", "side": "buy", "qty": "1", "price": "2" });
        assert_eq!(api.post("/v1/trades", &t).0, 201);
        let (code, out, err) = run(
            &[
                "backup",
                "create",
                "--data-dir",
                d,
                "--config",
                c,
                "--type",
                "scheduled",
                "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(json(&out)[0]["incremental"], true);
    }
    // With the server stopped, the catalog is mirrored into the store.
    let (code, _, err) = run(
        &["backup", "verify", "--deep", "--data-dir", d, "--config", c],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let conn = rusqlite::Connection::open(data.join("tradevault.db")).expect("open store");
    let (n, verified): (i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(verified) FROM backup_metadata",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("mirror");
    assert_eq!((n, verified), (2, 1));

    // The primary is gone: only the target and its URL are left.
    std::fs::remove_dir_all(&data).expect("remove data");
    std::fs::remove_file(dir.path().join("target/index.json")).expect("remove index");
    let (code, out, err) = run(&["backup", "list", "--target", &target, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed = json(&out);
    let backups = listed[0]["backups"].as_array().expect("backups");
    assert_eq!(backups.len(), 2);
    assert_eq!(backups[1]["kind"], "scheduled");
    assert_eq!(backups[1]["tables"]["trades"], 2);
    assert_eq!(backups[1]["verified"]["ok"], true);
    let id = backups[1]["id"].as_str().expect("id");
    let (code, out, err) = run(&["backup", "show", id, "--target", &target], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("incremental") && out.contains("trades: 2"),
        "{out}"
    );
    let (code, out, err) = run(&["backup", "stats", "--target", &target, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)[0]["databases"][0]["count"], 2);

    // Prune's plan: keep_last 1 keeps the newest (verified) and the full backup it needs.
    let (code, out, err) = run(&["backup", "prune", "--dry-run", "--config", c], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would delete 0 backups"), "{out}");
    assert!(out.contains("needed by"), "{out}");
}

#[test]
fn errors_have_codes_and_hints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let (code, _, err) = run(
        &["backup", "list", "--target", "offsite", "--data-dir", d],
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("no backup target named \"offsite\"") && err.contains("hint:"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "backup",
            "list",
            "--target",
            "file:///nonexistent/tv-backups",
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is not a directory"), "{err}");
    let (code, _, err) = run(&["backup", "create", "--data-dir", d], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no backup target"), "{err}");
    let (code, _, _) = run(
        &[
            "backup",
            "create",
            "--type",
            "hourly",
            "--target",
            "file:///tmp/x",
        ],
        &[],
    );
    assert_eq!(code, 2, "a bad --type is a usage error");
}

#[test]
fn sigkill_during_create_leaves_no_backup_and_the_next_one_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ticks.db");
    big_database(&db, 24);
    let root = dir.path().join("target");
    let target = format!("file://{}", root.display());
    let dbs = db.to_str().expect("utf8");
    // Small packs, so the first ones land well before the backup ends.
    let env = [
        ("TRADEVAULT_BACKUP_PACK_BYTES", "65536"),
        ("TRADEVAULT_BACKUP_SEGMENT_BYTES", "65536"),
    ];
    let mut killed = 0;
    for _ in 0..3 {
        let mut c = command();
        c.args([
            "backup", "create", "--db", dbs, "--target", &target, "--full",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn");
        let started = Instant::now();
        let packs = root.join("packs");
        // Kill it once it has written some packs, but not its manifest.
        loop {
            let some = std::fs::read_dir(&packs)
                .map(|d| {
                    d.flatten()
                        .any(|e| std::fs::read_dir(e.path()).is_ok_and(|mut p| p.next().is_some()))
                })
                .unwrap_or(false);
            if some || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let finished = child.try_wait().expect("wait").is_some();
        let _ = child.kill();
        let _ = child.wait();
        if !finished {
            killed += 1;
            let (code, out, err) = run(&["backup", "list", "--target", &target, "--json"], &[]);
            assert_eq!(code, 0, "{err}");
            assert_eq!(
                json(&out)[0]["backups"].as_array().map(Vec::len),
                Some(0),
                "a killed backup is not listed: {out}"
            );
            break;
        }
        // It finished before the kill: start again on an empty target.
        std::fs::remove_dir_all(&root).expect("clean");
    }
    assert_eq!(killed, 1, "the backup was never caught in the middle");
    let (code, out, err) = run(
        &[
            "backup", "create", "--db", dbs, "--target", &target, "--json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let id = json(&out)[0]["id"].as_str().expect("id").to_owned();
    let (code, out, err) = run(
        &[
            "backup",
            "verify",
            &id,
            "--deep",
            "--quick-check",
            "--target",
            &target,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["backup", "list", "--target", &target, "--json"], &[]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)[0]["backups"].as_array().map(Vec::len), Some(1));
}

/// A restore refused because its output exists leaves that file alone, whatever the source.
#[test]
fn a_refused_restore_never_touches_the_file_that_was_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (1);")
        .expect("schema");
    drop(conn);
    let target = format!("file://{}", dir.path().join("tgt").display());
    let db_arg = db.to_str().expect("utf8");
    let (code, out, err) = run(
        &[
            "backup", "create", "--db", db_arg, "--target", &target, "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = json(&out)[0]["id"].as_str().expect("id").to_owned();
    let precious = dir.path().join("precious.db");
    std::fs::write(&precious, b"precious").expect("write");
    let (code, _, err) = run(
        &[
            "restore",
            "--target",
            &target,
            "--db",
            db_arg,
            "--backup",
            &id,
            "--output",
            precious.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&precious).expect("still there"), b"precious");
}

/// Two unconfigured files with the same name share a catalog name but never each other's
/// backups: neither is an increment of the other, and each restores as itself; a bare target
/// restores any database it holds by name.
#[test]
fn files_with_the_same_name_keep_their_own_backups() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let one = dir.path().join("bot.db");
    let two = dir.path().join("sub").join("bot.db");
    for (path, table) in [(&one, "a"), (&two, "b")] {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; CREATE TABLE {table}(x); INSERT INTO {table} VALUES (1);"
        ))
        .expect("schema");
    }
    let target = format!("file://{}", dir.path().join("tgt").display());
    let mut parents = Vec::new();
    for path in [&one, &two, &one] {
        let (code, out, err) = run(
            &[
                "backup",
                "create",
                "--db",
                path.to_str().expect("utf8"),
                "--target",
                &target,
                "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        parents.push(json(&out)[0]["parent"].clone());
    }
    assert_eq!(parents[0], Value::Null);
    assert_eq!(
        parents[1],
        Value::Null,
        "sub/bot.db is not an increment of bot.db"
    );
    assert!(
        parents[2].is_string(),
        "bot.db's second backup is an increment"
    );
    // Listings name a backup's type as `backup create --json` and `--type` do, and always say
    // whether it was verified.
    let (code, out, err) = run(&["backup", "list", "--target", &target, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed = &json(&out)[0]["backups"][0];
    assert_eq!(listed["type"], "manual", "{listed}");
    assert_eq!(listed["verified"], Value::Null, "{listed}");
    let tables = |db: &Path| -> Vec<String> {
        let conn = rusqlite::Connection::open(db).expect("open");
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .expect("prepare");
        st.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    for (path, table, out) in [(&two, "b", "two.db"), (&one, "a", "one.db")] {
        let output = dir.path().join(out);
        let (code, stdout, err) = run(
            &[
                "restore",
                "--target",
                &target,
                "--db",
                path.to_str().expect("utf8"),
                "--output",
                output.to_str().expect("utf8"),
            ],
            &[],
        );
        assert_eq!(code, 0, "{stdout}{err}");
        assert_eq!(tables(&output), [table], "{}", path.display());
    }
    // The primary is gone: the target alone restores "bot" by name.
    let output = dir.path().join("by-name.db");
    let (code, stdout, err) = run(
        &[
            "restore",
            "--target",
            &target,
            "--db",
            "bot",
            "--output",
            output.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(tables(&output).len(), 1);
    let (code, _, err) = run(
        &[
            "restore", "--target", &target, "--db", "nobody", "--output", "x.db",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
}

/// One damaged manifest (and no index to fall back on) leaves the target usable: the other
/// backups are listed and restore, and the damaged one is named by list and fails verify.
#[test]
fn a_damaged_manifest_hides_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (1);")
        .expect("schema");
    let tgt = dir.path().join("tgt");
    let target = format!("file://{}", tgt.display());
    let db_arg = db.to_str().expect("utf8");
    let mut ids = Vec::new();
    for _ in 0..2 {
        conn.execute("INSERT INTO a VALUES (2)", [])
            .expect("insert");
        let (code, out, err) = run(
            &[
                "backup", "create", "--db", db_arg, "--target", &target, "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        ids.push(json(&out)[0]["id"].as_str().expect("id").to_owned());
    }
    let manifest = tgt.join("backups").join(format!("{}.manifest", ids[1]));
    let len = std::fs::metadata(&manifest).expect("manifest").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&manifest)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let _ = std::fs::remove_file(tgt.join("index.json"));
    let (code, out, err) = run(&["backup", "list", "--target", &target, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    let listed = &json(&out)[0];
    assert_eq!(
        listed["backups"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["unreadable"][0]["id"], ids[1].as_str(), "{listed}");
    assert!(err.contains(&ids[1]), "{err}");
    let (code, out, _) = run(&["backup", "verify", "--all", "--target", &target], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{} on", ids[1])) && out.contains("CORRUPT"),
        "{out}"
    );
    assert!(out.contains("truncated or damaged"), "{out}");
    let restored = dir.path().join("restored.db");
    let (code, out, err) = run(
        &[
            "restore",
            "--target",
            &target,
            "--db",
            db_arg,
            "--backup",
            &ids[0],
            "--output",
            restored.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    // Prune deletes nothing while a manifest cannot be read: its objects would look unowned.
    let (code, out, err) = run(&["backup", "prune", "--target", &target], &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("cannot be read"),
        "{out}{err}"
    );
    assert!(
        tgt.join("backups")
            .join(format!("{}.pages", ids[1]))
            .exists()
    );
    // Asked for the damaged one, the restore says why it cannot.
    let (code, _, err) = run(
        &[
            "restore",
            "--target",
            &target,
            "--db",
            db_arg,
            "--backup",
            &ids[1],
            "--output",
            dir.path().join("damaged.db").to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot be read") && err.contains(&ids[1]),
        "{err}"
    );
}

/// `restore --dry-run` from a backup lists the objects it would read; a target that does not
/// exist and a malformed time are said as such.
#[test]
fn dry_run_lists_objects_and_bad_sources_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (1);")
        .expect("schema");
    let target = format!("file://{}", dir.path().join("tgt").display());
    let db_arg = db.to_str().expect("utf8");
    let (code, out, err) = run(
        &[
            "backup", "create", "--db", db_arg, "--target", &target, "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = json(&out)[0]["id"].as_str().expect("id").to_owned();
    let (code, out, err) = run(
        &[
            "restore",
            "--target",
            &target,
            "--db",
            db_arg,
            "--backup",
            &id,
            "--dry-run",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let plan = json(&out);
    let keys: Vec<&str> = plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["key"].as_str().expect("key"))
        .collect();
    assert!(
        keys.iter().any(|k| k.ends_with(".manifest"))
            && keys.iter().any(|k| k.ends_with(".pages"))
            && keys.iter().any(|k| k.ends_with(".pack")),
        "{plan}"
    );
    let missing = "file:///nonexistent/tv-backups";
    for args in [
        &["restore", "--target", missing, "--output", "z.db"][..],
        &["backup", "show", "abc", "--target", missing][..],
    ] {
        let (code, _, err) = run(args, &[]);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("is not a directory"), "{args:?}: {err}");
    }
    let (code, _, err) = run(
        &[
            "restore",
            "--target",
            &target,
            "--timestamp",
            "yesterday",
            "--output",
            "z.db",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an RFC 3339 time"), "{err}");
}

/// A configured replica that holds nothing yet leaves the newest backup as the newest state:
/// `restore` restores that, and says so.
#[test]
fn an_empty_replica_falls_back_to_the_newest_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (7);")
        .expect("schema");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[[database]]\nname = \"bot\"\npath = \"{}\"\n[[database.replica]]\nurl = \"file://{}\"\n\
             [[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\n",
            db.display(),
            dir.path().join("replica").display(),
            dir.path().join("tgt").display()
        ),
    )
    .expect("config");
    let c = config.to_str().expect("utf8");
    let (code, out, err) = run(&["backup", "create", "--config", c, "--db", "bot"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let output = dir.path().join("restored.db");
    let (code, out, err) = run(
        &[
            "restore",
            "--config",
            c,
            "--db",
            "bot",
            "--output",
            output.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("restoring the newest backup instead"), "{err}");
    let x: i64 = rusqlite::Connection::open(&output)
        .expect("open")
        .query_row("SELECT x FROM a", [], |r| r.get(0))
        .expect("row");
    assert_eq!(x, 7);
}

/// An unconfigured file whose stem is a configured database's name gets a name of its own, so
/// its backups never restore as that database; the configured file given by its path is that
/// database.
#[test]
fn an_unconfigured_file_never_takes_a_configured_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (sub, table) in [("a", "t"), ("c", "fills")] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        let conn = rusqlite::Connection::open(dir.path().join(sub).join("bot.db")).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; CREATE TABLE {table}(x); INSERT INTO {table} VALUES (1);"
        ))
        .expect("schema");
    }
    let configured = dir.path().join("c").join("bot.db");
    let stranger = dir.path().join("a").join("bot.db");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[[database]]\nname = \"bot\"\npath = \"{}\"\n[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\n",
            configured.display(),
            dir.path().join("tgt").display()
        ),
    )
    .expect("config");
    let c = config.to_str().expect("utf8");
    let create = |db: &str| {
        let (code, out, err) = run(
            &["backup", "create", "--config", c, "--db", db, "--json"],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        json(&out)[0]["database"].as_str().expect("name").to_owned()
    };
    assert_eq!(create("bot"), "bot");
    let other = create(stranger.to_str().expect("utf8"));
    assert!(other.starts_with("bot-") && other.len() == 12, "{other}");
    assert_eq!(
        create(configured.to_str().expect("utf8")),
        "bot",
        "by its path"
    );
    let output = dir.path().join("restored.db");
    let (code, out, err) = run(
        &[
            "restore",
            "--config",
            c,
            "--db",
            "bot",
            "--output",
            output.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let tables: String = rusqlite::Connection::open(&output)
        .expect("open")
        .query_row(
            "SELECT group_concat(name) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .expect("tables");
    assert_eq!(tables, "fills");
}

/// With the primary gone, a bare target is drilled for a database it holds, by name.
#[test]
fn a_bare_target_is_drilled_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("w.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (1);")
        .expect("schema");
    drop(conn);
    let target = format!("file://{}", dir.path().join("tgt").display());
    let (code, out, err) = run(
        &[
            "backup",
            "create",
            "--db",
            db.to_str().expect("utf8"),
            "--target",
            &target,
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    std::fs::remove_file(&db).expect("the primary is gone");
    let data = dir.path().join("data");
    let (code, out, err) = run(
        &[
            "drill",
            "--data-dir",
            data.to_str().expect("utf8"),
            "--target",
            &target,
            "--db",
            "w",
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let drills = json(&out);
    let drills = drills["drills"].as_array().expect("drills");
    assert!(
        !drills.is_empty()
            && drills
                .iter()
                .all(|d| d["database"] == "w" && d["ok"] == true),
        "{drills:?}"
    );
    let (code, _, err) = run(&["drill", "--target", &target, "--db", "nobody"], &[]);
    assert_eq!(code, 2, "{err}");
}

/// Backups alone: `--timestamp T` is refused (nothing says what happened between two backups),
/// and `--timestamp T --at-or-before` restores the newest backup whose state ended by T.
#[test]
fn backups_alone_restore_the_newest_taken_by_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (1);")
        .expect("schema");
    let target = format!("file://{}", dir.path().join("tgt").display());
    let db_arg = db.to_str().expect("utf8");
    let mut ends = Vec::new();
    for x in [2, 3] {
        let (code, out, err) = run(
            &[
                "backup", "create", "--db", db_arg, "--target", &target, "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        conn.execute("INSERT INTO a VALUES (?1)", [x])
            .expect("insert");
        let (code, out, err) = run(&["backup", "list", "--target", &target, "--json"], &[]);
        assert_eq!(code, 0, "{out}{err}");
        let list = json(&out);
        let newest = list
            .pointer("/0/backups")
            .and_then(Value::as_array)
            .and_then(|b| b.iter().max_by_key(|r| r["id"].as_str().map(str::to_owned)))
            .unwrap_or_else(|| panic!("backups in {list}"))
            .clone();
        ends.push(newest["state_max_ms"].as_i64().expect("state_max_ms"));
    }
    let at = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .expect("time")
            .to_string()
    };
    let restore = |ms: i64, extra: &[&str], name: &str| {
        let out = dir.path().join(name);
        let t = at(ms);
        let mut args = vec![
            "restore",
            "--db",
            db_arg,
            "--target",
            &target,
            "--timestamp",
            &t,
            "--output",
            out.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = run(&args, &[]);
        let rows: Vec<i64> = if code == 0 {
            let c = rusqlite::Connection::open(&out).expect("open");
            let mut st = c.prepare("SELECT x FROM a ORDER BY x").expect("select");
            st.query_map([], |r| r.get(0))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("rows")
        } else {
            Vec::new()
        };
        (code, err, rows)
    };
    let (code, err, _) = restore(ends[1], &[], "exact.db");
    assert_eq!(code, 2, "refused without --at-or-before: {err}");
    assert!(err.contains("--at-or-before"), "{err}");
    let (code, err, rows) = restore(ends[0], &["--at-or-before"], "first.db");
    assert_eq!((code, rows), (0, vec![1]), "{err}");
    let (code, err, rows) = restore(ends[1] - 1, &["--at-or-before"], "still-first.db");
    assert_eq!((code, rows), (0, vec![1]), "{err}");
    let (code, err, rows) = restore(ends[1], &["--at-or-before"], "second.db");
    assert_eq!((code, rows), (0, vec![1, 2]), "{err}");
    let (code, err, _) = restore(ends[0] - 1, &["--at-or-before"], "none.db");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("whose state ended by"), "{err}");
    assert!(!dir.path().join("none.db").exists());
}

/// Two unconfigured files with the same stem (two bots' `trades.db`) share a name but not their
/// retention: the default verify checks the newest backup of each file, and prune then keeps
/// each file's newest instead of refusing, or letting one file's backups push out the other's.
#[test]
fn files_sharing_a_name_are_verified_and_pruned_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tgt = dir.path().join("tgt");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\nkeep_last = 1\n",
            tgt.display()
        ),
    )
    .expect("config");
    let c = config.to_str().expect("utf8");
    let mut files = Vec::new();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        let db = dir.path().join(sub).join("trades.db");
        rusqlite::Connection::open(&db)
            .expect("open")
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .expect("schema");
        files.push(db);
    }
    for _ in 0..2 {
        for db in &files {
            let (code, out, err) = run(
                &[
                    "backup",
                    "create",
                    "--config",
                    c,
                    "--db",
                    db.to_str().expect("utf8"),
                    "--full",
                ],
                &[],
            );
            assert_eq!(code, 0, "{out}{err}");
        }
    }
    let (code, out, err) = run(&["backup", "verify", "--config", c, "--json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["backup", "prune", "--config", c, "--json"], &[]);
    assert_eq!(code, 0, "prune is not refused: {out}{err}");
    let (code, out, err) = run(&["backup", "list", "--config", c, "--json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let list = json(&out);
    let sources: Vec<String> = list
        .pointer("/0/backups")
        .and_then(Value::as_array)
        .expect("backups")
        .iter()
        .map(|b| b["source"].as_str().expect("source").to_owned())
        .collect();
    assert_eq!(sources.len(), 2, "one kept per file: {sources:?}");
    for db in &files {
        let canonical = std::fs::canonicalize(db).expect("canonical");
        assert!(
            sources.iter().any(|s| Path::new(s) == canonical),
            "{} kept: {sources:?}",
            db.display()
        );
    }
}

/// With several targets, the newest backup is the newest on any of them: a target that missed
/// the last backup (unreachable then) never makes a restore older.
#[test]
fn the_newest_backup_is_looked_for_on_every_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE a(x); INSERT INTO a VALUES (1);")
        .expect("schema");
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[[database]]\nname = \"bot\"\npath = \"{}\"\n\
             [[backup.target]]\nname = \"first\"\nurl = \"file://{}\"\n\
             [[backup.target]]\nname = \"second\"\nurl = \"file://{}\"\n",
            db.display(),
            dir.path().join("t1").display(),
            dir.path().join("t2").display()
        ),
    )
    .expect("config");
    let c = config.to_str().expect("utf8");
    let (code, out, err) = run(&["backup", "create", "--config", c, "--db", "bot"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    conn.execute("INSERT INTO a VALUES (2)", [])
        .expect("insert");
    let (code, out, err) = run(
        &[
            "backup", "create", "--config", c, "--db", "bot", "--target", "second",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let output = dir.path().join("restored.db");
    let (code, out, err) = run(
        &[
            "restore",
            "--config",
            c,
            "--db",
            "bot",
            "--output",
            output.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let n: i64 = rusqlite::Connection::open(&output)
        .expect("open")
        .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2, "the second target's newer backup: {out}{err}");
}

/// 30 cycles of a backup and a prune, each killed with SIGKILL at a random moment (a quarter of
/// them left to finish): after every kill the catalog lists only backups whose every object is
/// there (`verify --all` passes), and at the end the newest backup restores the database, which
/// the kills never touched.
#[test]
fn sigkills_during_backups_and_prunes_leave_a_consistent_catalog() {
    let mut rng = crate::common::Rng::from_env("sigkills_during_backups_and_prunes");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ticks.db");
    big_database(&db, 6);
    let config = dir.path().join("tv.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\nfull_every = 4\n[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\nkeep_last = 2\n",
            dir.path().join("tgt").display()
        ),
    )
    .expect("config");
    let c = config.to_str().expect("utf8");
    let dbs = db.to_str().expect("utf8");
    // Small segments, each in a pack of its own: a backup writes, and a prune deletes, a hundred
    // objects, and a kill lands among them.
    let env = [
        ("TRADEVAULT_BACKUP_PACK_BYTES", "16384"),
        ("TRADEVAULT_BACKUP_SEGMENT_BYTES", "65536"),
    ];
    let create = ["backup", "create", "--config", c, "--db", dbs];
    let prune = ["backup", "prune", "--config", c];
    // One of each to finish, timed, and one verified backup, which prune requires.
    let timed = |args: &[&str]| {
        let t = Instant::now();
        let (code, out, err) = run(args, &env);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        t.elapsed()
    };
    timed(&create);
    let (code, out, err) = run(&["backup", "verify", "--all", "--config", c], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // Timed on an incremental backup, as most of the cycles' are.
    let create_time = timed(&create);
    let prune_time = timed(&prune).max(Duration::from_millis(5));
    let conn = rusqlite::Connection::open(&db).expect("open");
    let mut kills = 0;
    for cycle in 0..30u32 {
        conn.execute(
            "UPDATE ticks SET px = px + 1 WHERE id % 97 = ?1",
            [i64::from(cycle)],
        )
        .expect("change");
        for (args, took) in [(&create[..], create_time), (&prune[..], prune_time)] {
            let mut cmd = command();
            cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn");
            // Up to 4/3 of a whole run: about a quarter finish before the kill.
            let wait = took.as_micros() as u64 * rng.range(0, 1_333) / 1_000;
            std::thread::sleep(Duration::from_micros(wait));
            if child.try_wait().expect("wait").is_none() {
                kills += 1;
            }
            let _ = child.kill();
            let _ = child.wait();
            let (code, out, err) = run(&["backup", "list", "--config", c, "--json"], &[]);
            assert_eq!(code, 0, "cycle {cycle}, after {args:?}: {out}{err}");
            let (code, out, err) = run(&["backup", "verify", "--all", "--config", c], &[]);
            assert_eq!(
                code, 0,
                "cycle {cycle}, after {args:?}: every listed backup is whole: {out}{err}"
            );
        }
    }
    eprintln!("{kills} of 60 runs killed in the middle");
    assert!(
        kills >= 30,
        "only {kills} of 60 runs were caught in the middle"
    );
    drop(conn);
    let (code, out, err) = run(&create, &env);
    assert_eq!(code, 0, "{out}{err}");
    let output = dir.path().join("restored.db");
    let (code, out, err) = run(
        &[
            "restore",
            "--config",
            c,
            "--db",
            dbs,
            "--output",
            output.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let sum = |p: &Path| -> (i64, f64) {
        rusqlite::Connection::open(p)
            .expect("open")
            .query_row("SELECT count(*), total(px) FROM ticks", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("sum")
    };
    assert_eq!(sum(&output), sum(&db));
    let ok: String = rusqlite::Connection::open(&db)
        .expect("open")
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
}

/// A truncated pack and a flipped bit are found by verify, naming the object, and an in-place
/// restore of that backup is refused with the live database left byte for byte as it was.
#[test]
fn damaged_backups_are_found_and_never_restored_over_the_live_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    big_database(&db, 2);
    let root = dir.path().join("tgt");
    let target = format!("file://{}", root.display());
    let dbs = db.to_str().expect("utf8");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (code, out, err) = run(
            &[
                "backup", "create", "--db", dbs, "--target", &target, "--full", "--json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        ids.push(json(&out)[0]["id"].as_str().expect("id").to_owned());
    }
    // The live database moves on, and is closed (an in-place restore needs that).
    rusqlite::Connection::open(&db)
        .expect("open")
        .execute("DELETE FROM ticks WHERE id % 2 = 0", [])
        .expect("change");
    let live = std::fs::read(&db).expect("read db");
    let pack = |id: &str| root.join("packs").join(id).join("0000.pack");
    // The first backup's pack cut in half; the second's with one bit flipped.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(pack(&ids[0]))
        .expect("open pack");
    let len = f.metadata().expect("len").len();
    f.set_len(len / 2).expect("truncate");
    let mut bytes = std::fs::read(pack(&ids[1])).expect("read pack");
    bytes[100] ^= 0x10;
    std::fs::write(pack(&ids[1]), &bytes).expect("flip");
    for id in &ids {
        let (code, out, err) = run(&["backup", "verify", id, "--target", &target], &[]);
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            out.contains("CORRUPT") && out.contains(&format!("{id}/0000.pack")),
            "{out}{err}"
        );
        let (code, out, err) = run(
            &[
                "restore",
                "--db",
                dbs,
                "--target",
                &target,
                "--backup",
                id,
                "--in-place",
            ],
            &[],
        );
        assert_ne!(code, 0, "refused: {out}{err}");
        assert_eq!(
            std::fs::read(&db).expect("read db"),
            live,
            "the live database is untouched"
        );
    }
}
