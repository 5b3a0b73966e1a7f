//! `tradevault drill` with no server, against the built binary: a bare target given by URL with no
//! config, a config with backup targets and no replica at all, each drill recorded in the
//! target's catalog (`backup stats`) and the store's mirror, and a damaged backup failing the
//! drill with exit code 1.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{command, succeed};

/// A SQLite database in WAL mode holding `rows` fills, with an index.
pub fn database(path: &Path, rows: u32) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, qty TEXT NOT NULL);
         CREATE INDEX fills_symbol ON fills (symbol);",
    )
    .expect("schema");
    for i in 0..rows {
        conn.execute(
            "INSERT INTO fills (symbol, qty) VALUES (?1, ?2)",
            rusqlite::params![format!("S{}", i % 7), i.to_string()],
        )
        .expect("insert");
    }
}

/// `tradevault ARGS` run in `cwd` (so no `./data` of the caller is used): exit code, stdout.
fn run(cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = command()
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("run tradevault");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "tradevault {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not json ({e}): {text}"))
}

/// Flips bytes in the middle of every pack of backup `id` on the file target at `root`.
pub fn damage(root: &Path, id: &str) {
    let dir = root.join("packs").join(id);
    for entry in std::fs::read_dir(&dir).expect("packs") {
        let path = entry.expect("entry").path();
        let mut bytes = std::fs::read(&path).expect("read pack");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 8] {
            *b ^= 0xff;
        }
        std::fs::write(&path, bytes).expect("write pack");
    }
}

fn backup_id(created: &str) -> String {
    json(created)[0]["id"]
        .as_str()
        .expect("backup id")
        .to_owned()
}

/// Issue 4: `drill --target URL` drills the backups of a bare target with no config, records the
/// drill there (`backup stats` shows it), and fails with exit code 1 once a backup is damaged.
#[test]
fn drill_target_drills_a_bare_target_with_no_config_and_records_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path().join("elsewhere");
    std::fs::create_dir(&cwd).expect("cwd");
    let db = dir.path().join("bot.db");
    database(&db, 300);
    let root = dir.path().join("backups");
    let url = format!("file://{}", root.display());
    let db_arg = db.to_str().expect("utf8");
    let (code, created) = run(
        &cwd,
        &[
            "backup", "create", "--json", "--db", db_arg, "--target", &url,
        ],
    );
    assert_eq!(code, 0);
    let id = backup_id(&created);
    let (_, stats) = run(&cwd, &["backup", "stats", "--target", &url]);
    assert!(stats.contains("last drill: never"), "{stats}");

    let (code, out) = run(&cwd, &["drill", "--json", "--target", &url]);
    assert_eq!(code, 0, "{out}");
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report}");
    let drills = report["drills"].as_array().expect("drills");
    assert_eq!(drills.len(), 1, "{report}");
    let d = &drills[0];
    assert_eq!(d["database"], "bot");
    assert_eq!(d["ok"], true);
    assert_eq!(d["backup_id"], id.as_str());
    assert!(d["source"].as_str().is_some_and(|s| s.contains(&id)), "{d}");
    assert_eq!(d["rows"]["fills"], 300, "{d}");
    assert!(d["rto_seconds"].as_f64().is_some_and(|s| s > 0.0), "{d}");
    let checks: Vec<(&str, bool)> = d["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or("?"), c["ok"] == true))
        .collect();
    assert_eq!(
        checks,
        [("restore", true), ("integrity", true), ("rows", true)],
        "{d}"
    );

    // The target's catalog holds the drill: `backup stats` shows it.
    let (code, stats) = run(&cwd, &["backup", "stats", "--json", "--target", &url]);
    assert_eq!(code, 0);
    let last = &json(&stats)[0]["databases"][0]["last_drill"];
    assert_eq!(last["ok"], true, "{stats}");
    assert_eq!(last["backup_id"], id.as_str(), "{stats}");
    assert!(
        last["source"].as_str().is_some_and(|s| s.contains(&id)),
        "{stats}"
    );
    let (_, text) = run(&cwd, &["drill", "--target", &url]);
    assert!(text.starts_with("bot: restorable: "), "{text}");

    // A damaged backup fails the drill, and that is recorded too.
    damage(&root, &id);
    let (code, text) = run(&cwd, &["drill", "--target", &url]);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("bot: DRILL FAILED"), "{text}");
    let (_, stats) = run(&cwd, &["backup", "stats", "--target", &url]);
    assert!(stats.contains("FAILED"), "{stats}");
    // Nothing to drill at all is a usage error, not a silent success.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("empty target");
    let (code, _) = run(
        &cwd,
        &["drill", "--target", &format!("file://{}", empty.display())],
    );
    assert_eq!(code, 2);
}

fn config(dir: &Path, data: &Path, databases: &[(&str, &PathBuf)], target: &Path) -> PathBuf {
    let mut text = format!("[store]\ndata_dir = \"{}\"\n\n", data.display());
    for (name, path) in databases {
        text.push_str(&format!(
            "[[database]]\nname = \"{name}\"\npath = \"{}\"\n\n",
            path.display()
        ));
    }
    text.push_str(&format!(
        "[[backup.target]]\nname = \"local\"\nurl = \"file://{}\"\n",
        target.display()
    ));
    let path = dir.join("tradevault.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Issue 4: with backup targets configured and no replica anywhere, `drill` restores from the
/// backups (each configured database and the store), fails a database its target lacks, and
/// records every drill in the catalog and in the store's mirror (`backup_drills`).
#[test]
fn drill_restores_from_backups_when_only_targets_are_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (bot, journal) = (dir.path().join("bot.db"), dir.path().join("journal.db"));
    database(&bot, 120);
    database(&journal, 40);
    let root = dir.path().join("backups");
    let cfg = config(
        dir.path(),
        &data,
        &[("bot", &bot), ("journal", &journal)],
        &root,
    );
    let cfg = cfg.to_str().expect("utf8");
    let cwd = dir.path();
    succeed(command().current_dir(cwd).args(["init", "--config", cfg]));
    for db in ["store", "bot"] {
        succeed(
            command()
                .current_dir(cwd)
                .args(["backup", "create", "--config", cfg, "--db", db]),
        );
    }

    let (code, text) = run(cwd, &["drill", "--config", cfg, "--db", "bot"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.starts_with("bot: restorable: ") && text.contains(" on local"),
        "{text}"
    );
    // journal was never backed up: its drill fails, the others pass.
    let (code, out) = run(cwd, &["drill", "--json", "--config", cfg]);
    assert_eq!(code, 1, "{out}");
    let report = json(&out);
    let by_db = |name: &str| {
        report["drills"]
            .as_array()
            .expect("drills")
            .iter()
            .find(|d| d["database"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no drill of {name}: {report}"))
    };
    assert_eq!(by_db("store")["ok"], true, "{report}");
    assert_eq!(by_db("bot")["rows"]["fills"], 120, "{report}");
    let journal_drill = by_db("journal");
    assert_eq!(journal_drill["ok"], false);
    assert!(
        journal_drill["error"]
            .as_str()
            .is_some_and(|e| e.contains("no backup of journal")),
        "{journal_drill}"
    );

    succeed(
        command()
            .current_dir(cwd)
            .args(["backup", "create", "--config", cfg, "--db", "journal"]),
    );
    let (code, text) = run(cwd, &["drill", "--config", cfg]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains(": restorable: ")), "{text}");
    let (_, stats) = run(cwd, &["backup", "stats", "--config", cfg]);
    assert!(!stats.contains("last drill: never"), "{stats}");
    assert_eq!(stats.matches("last drill ").count(), 3, "{stats}");

    // The store mirrors the catalog, drills included.
    let conn = rusqlite::Connection::open(data.join("tradevault.db")).expect("store");
    let (passed, failed): (i64, i64) = conn
        .query_row(
            "SELECT sum(ok), sum(1 - ok) FROM backup_drills WHERE target = 'local'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("backup_drills");
    // Passed: bot alone, then store and bot, then all three; failed: journal once.
    assert_eq!((passed, failed), (6, 1));
}
