//! Restore in place: replace a live database's content with a verified staging file, so that no
//! step can make things worse.
//!
//! [`replace`] runs on the only connection that writes the database (the store's writer in an
//! exclusive moment, or a connection to a database no program has open):
//! 1. a journal beside the database records what is about to happen (fsynced);
//! 2. a safety copy of the current content is written (SQLite's backup API, then fsync);
//! 3. the staging file's pages replace the database's in **one write transaction** (the backup API
//!    into the live connection), so a crash at any moment leaves the old or the new content, never
//!    a mixture: SQLite ignores a transaction whose commit frame never reached the WAL;
//! 4. the result is checked (`quick_check`, and the fingerprint must equal the staging file's);
//! 5. if any step after the safety copy fails, the safety copy is put back the same way.
//!
//! The journal names both fingerprints (page count, free pages, schema and rows per table), so the
//! next run after a crash ([`interrupted`]) says which content the database holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a database holds, cheaply compared: pages, free pages, schema text and rows per table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `PRAGMA page_count`.
    pub pages: u64,
    /// `PRAGMA freelist_count`.
    pub free_pages: u64,
    /// A hash of every `sqlite_schema.sql`.
    pub schema: String,
    /// Rows per table.
    pub rows: BTreeMap<String, u64>,
}

/// What [`replace`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Replaced {
    /// The safety copy of the previous content.
    pub safety: PathBuf,
    /// The previous content.
    pub before: Fingerprint,
    /// The content now.
    pub after: Fingerprint,
    /// Time to take the safety copy.
    pub safety_ms: u64,
    /// Time to replace the pages (the one transaction).
    pub swap_ms: u64,
    /// Time to check the result.
    pub check_ms: u64,
}

/// The journal of an in-place restore, `<database>.restore-journal.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The database.
    pub database: PathBuf,
    /// The verified file whose content goes in.
    pub staging: PathBuf,
    /// The safety copy of the content before.
    pub safety: PathBuf,
    /// `started`, `safety_taken`, `replaced`, `rolled_back`.
    pub phase: String,
    /// The content before, once the safety copy is taken.
    pub before: Option<Fingerprint>,
    /// The content of the staging file.
    pub after: Fingerprint,
}

/// What an interrupted in-place restore left.
#[derive(Debug, Clone, Serialize)]
pub struct Interrupted {
    /// Its journal.
    pub journal: Journal,
    /// `new` (the restored content is in), `old` (the previous content is in; the safety copy
    /// holds it too), or `same` (both have the same fingerprint: schema and row counts, so either
    /// may be in, whole).
    pub holds: &'static str,
}

/// The directory beside `db` where an in-place restore stages the new content and keeps safety
/// copies: `.tradevault-restore/` (on the same file system, never inside the data itself).
pub fn work_dir(db: &Path) -> PathBuf {
    db.parent()
        .unwrap_or(Path::new("."))
        .join(".tradevault-restore")
}

/// Local safety copies an in-place restore keeps beside the database (the newest; each is also
/// backed up, type `safety`, to the configured targets, under their retention).
pub const SAFETY_COPIES_KEPT: usize = 2;

/// Tidies [`work_dir`] before an in-place restore of `db`: removes staging files a killed restore
/// left (older than an hour, so never one a restore running now is filling), and, when
/// `backed_up` (each safety copy also went to backup targets), all but the newest
/// [`SAFETY_COPIES_KEPT`] safety copies. Returns what it removed.
pub fn tidy(db: &Path, backed_up: bool) -> Vec<PathBuf> {
    let dir = work_dir(db);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3_600);
    let mut safety = Vec::new();
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // A staging file's own staging file, left by a restore killed while it fetched.
        let (name, fetching) = match name.strip_suffix(".tradevault-restore") {
            Some(n) => (n, true),
            None => (name.as_str(), false),
        };
        let Some(stem) = name.strip_suffix(".db") else {
            continue;
        };
        if stem.starts_with("safety-") && !fetching {
            safety.push(e.path());
        } else if stem.starts_with("staging-")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < hour_ago)
        {
            if fetching {
                let _ = std::fs::remove_file(e.path());
            } else {
                super::remove_database_files(&e.path());
            }
            removed.push(e.path());
        }
    }
    if !backed_up {
        return removed;
    }
    // Their names hold their times: the newest sort last.
    safety.sort();
    let old = safety.len().saturating_sub(SAFETY_COPIES_KEPT);
    for p in safety.into_iter().take(old) {
        super::remove_database_files(&p);
        removed.push(p);
    }
    removed
}

/// Where the journal of an in-place restore of `db` lives.
pub fn journal_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".restore-journal.json");
    db.with_file_name(name)
}

/// The fingerprint of what `conn`'s main database holds.
pub fn fingerprint(conn: &Connection) -> Result<Fingerprint> {
    let sql = |e| Error::sqlite("fingerprint database", e);
    let pages = conn
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map_err(sql)?;
    let free_pages = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))
        .map_err(sql)?;
    let mut stmt = conn
        .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
        .map_err(sql)?;
    let schema: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql)?;
    let mut digest = ltx::Checksum::new();
    for (kind, name, text) in &schema {
        digest.update(kind.as_bytes());
        digest.update(name.as_bytes());
        digest.update(text.as_bytes());
    }
    // Counted as backups count them, so a backup's recorded rows compare with a restore's.
    let rows = crate::snapshot::row_counts(conn, Path::new(conn.path().unwrap_or("")))?;
    Ok(Fingerprint {
        pages: pages as u64,
        free_pages: free_pages as u64,
        schema: format!("{:016x}", digest.finish()),
        rows,
    })
}

/// Replaces what `conn` (the only writer of `db`) holds with `staging`'s content, taking a safety
/// copy to `safety` first and putting it back if anything after fails. See the module docs.
pub fn replace(
    conn: &mut Connection,
    db: &Path,
    staging: &Path,
    safety: &Path,
) -> Result<Replaced> {
    replace_checked(conn, db, staging, safety, &|_| Ok(()))
}

/// [`replace`], with `also` checking the swapped database after the built-in checks: a failure
/// rolls back like theirs (what the tests use to make a check fail).
#[doc(hidden)]
pub fn replace_checked(
    conn: &mut Connection,
    db: &Path,
    staging: &Path,
    safety: &Path,
    also: &dyn Fn(&Connection) -> Result<()>,
) -> Result<Replaced> {
    let source = Connection::open_with_flags(staging, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open the restored file", e))?;
    let after = fingerprint(&source)?;
    let page_size = |c: &Connection| {
        c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_err(|e| Error::sqlite("read page size", e))
    };
    let (theirs, ours) = (page_size(&source)?, page_size(conn)?);
    if theirs != ours {
        return Err(Error::invalid(
            "page_size_mismatch",
            None,
            format!(
                "the restored database has {theirs}-byte pages and {} has {ours}: a WAL database \
                 cannot change its page size in place; restore with --output instead",
                db.display()
            ),
        ));
    }
    let mut journal = Journal {
        started_at: jiff::Timestamp::now().to_string(),
        database: db.to_owned(),
        staging: staging.to_owned(),
        safety: safety.to_owned(),
        phase: "started".into(),
        before: None,
        after: after.clone(),
    };
    let journal_file = journal_path(db);
    write_journal(&journal_file, &journal)?;

    let t = Instant::now();
    let _ = std::fs::remove_file(safety);
    {
        let mut copy =
            Connection::open(safety).map_err(|e| Error::sqlite("create safety copy", e))?;
        let backup = rusqlite::backup::Backup::new(conn, &mut copy)
            .map_err(|e| Error::sqlite("start safety copy", e))?;
        backup
            .step(-1)
            .map_err(|e| Error::sqlite("write safety copy", e))?;
    }
    sync_file(safety)?;
    let before = fingerprint(conn)?;
    let safety_ms = t.elapsed().as_millis() as u64;
    journal.phase = "safety_taken".into();
    journal.before = Some(before.clone());
    write_journal(&journal_file, &journal)?;

    let t = Instant::now();
    let swapped = copy_into(&source, conn).map(|()| t.elapsed().as_millis() as u64);
    let t = Instant::now();
    let checked = swapped.and_then(|swap_ms| {
        let ok: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| Error::sqlite("check the restored database", e))?;
        if ok != "ok" {
            return Err(Error::Corrupt {
                path: db.to_owned(),
                detail: format!("quick_check after the swap: {ok}"),
            });
        }
        let now = fingerprint(conn)?;
        if now.rows != after.rows || now.schema != after.schema {
            return Err(Error::Internal {
                message: format!(
                    "the database does not hold what was restored: {now:?} instead of {after:?}"
                ),
            });
        }
        also(conn)?;
        Ok((swap_ms, now))
    });
    match checked {
        Ok((swap_ms, now)) => {
            journal.phase = "replaced".into();
            write_journal(&journal_file, &journal)?;
            let _ = std::fs::remove_file(&journal_file);
            Ok(Replaced {
                safety: safety.to_owned(),
                before,
                after: now,
                safety_ms,
                swap_ms,
                check_ms: t.elapsed().as_millis() as u64,
            })
        }
        Err(e) => {
            tracing::warn!(database = %db.display(), error = %e, "in-place restore failed; putting the safety copy back");
            let back = Connection::open_with_flags(safety, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| Error::sqlite("open safety copy", e))
                .and_then(|s| copy_into(&s, conn));
            match back {
                Ok(()) => {
                    journal.phase = "rolled_back".into();
                    write_journal(&journal_file, &journal)?;
                    let _ = std::fs::remove_file(&journal_file);
                    Err(Error::Internal {
                        message: format!(
                            "the restore failed and the database was rolled back to its previous \
                             content (also kept in {}): {e}",
                            safety.display()
                        ),
                    })
                }
                Err(again) => Err(Error::Internal {
                    message: format!(
                        "the restore failed ({e}) and so did putting the safety copy back \
                         ({again}); the previous content is in {}",
                        safety.display()
                    ),
                }),
            }
        }
    }
}

/// Checks `file` with `integrity_check`'s verdict ([`crate::integrity`]) and returns its rows per
/// table (an error names what the check found).
pub fn check_file(file: &Path) -> Result<BTreeMap<String, u64>> {
    let checked = crate::integrity::check(file, crate::integrity::Check::Integrity, true)?;
    if !checked.problems.is_empty() {
        return Err(Error::RestoreCorrupt {
            path: file.to_owned(),
            detail: format!("integrity_check: {}", checked.problems.join("; ")),
        });
    }
    Ok(checked.rows)
}

/// [`replace`] for a database no program has open: opens it, replaces, closes.
pub fn replace_file(db: &Path, staging: &Path, safety: &Path) -> Result<Replaced> {
    let mut conn = Connection::open(db).map_err(|e| Error::sqlite("open database", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| Error::sqlite("set busy timeout", e))?;
    replace(&mut conn, db, staging, safety)
}

/// Copies every page of `from` into `to`'s main database in one write transaction.
fn copy_into(from: &Connection, to: &mut Connection) -> Result<()> {
    let backup = rusqlite::backup::Backup::new(from, to)
        .map_err(|e| Error::sqlite("start replacing pages", e))?;
    backup
        .step(-1)
        .map_err(|e| Error::sqlite("replace pages", e))?;
    Ok(())
}

/// Reads the journal an interrupted in-place restore of `db` left, says what `db` holds now
/// (opening it read-only), and removes the journal. `None` if there is none.
pub fn interrupted(db: &Path) -> Result<Option<Interrupted>> {
    let path = journal_path(db);
    // A journal update a crash cut short; the journal itself is whole (written by rename).
    let _ = std::fs::remove_file(path.with_extension("json.tmp"));
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read restore journal", &path, e)),
    };
    let journal: Journal = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
        path: path.clone(),
        detail: format!("not a restore journal: {e}"),
    })?;
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Error::sqlite("open database", e))?;
    let now = fingerprint(&conn)?;
    drop(conn);
    let same = |f: &Fingerprint| f.rows == now.rows && f.schema == now.schema;
    let holds = match (&journal.before, same(&journal.after)) {
        (Some(before), true) if same(before) => "same",
        (_, true) => "new",
        _ => "old",
    };
    std::fs::remove_file(&path).map_err(|e| Error::io("remove restore journal", &path, e))?;
    Ok(Some(Interrupted { journal, holds }))
}

fn write_journal(path: &Path, journal: &Journal) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(journal).map_err(|e| Error::Internal {
        message: format!("encode restore journal: {e}"),
    })?;
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("write restore journal", &tmp, e))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write restore journal", path, e))?;
    if let Some(dir) = path.parent() {
        sync_file(dir)?;
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_keeps_the_newest_safety_copies_and_fresh_staging_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("bot.db");
        let work = work_dir(&db);
        std::fs::create_dir(&work).expect("work dir");
        let names = [
            "safety-20261120T100000.000Z.db",
            "safety-20261121T100000.000Z.db",
            "safety-20261122T100000.000Z.db",
            "staging-20261120T100000.000Z.db",
            "staging-20261122T100000.000Z.db",
            "notes.txt",
            "staging-20261119T100000.000Z.db.tradevault-restore",
        ];
        for n in names {
            std::fs::write(work.join(n), b"x").expect("write");
        }
        // Staging files killed restores left two hours ago.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7_200);
        for n in [names[3], names[6]] {
            std::fs::File::options()
                .write(true)
                .open(work.join(n))
                .and_then(|f| f.set_modified(old))
                .expect("age");
        }
        // With no backup target, every safety copy stays: it is the only one.
        let mut removed: Vec<String> = tidy(&db, false)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, [names[6], names[3]]);
        assert!(work.join(names[0]).exists());
        let mut removed: Vec<String> = tidy(&db, true)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, [names[0]]);
        for n in [names[1], names[2], names[4], names[5]] {
            assert!(work.join(n).exists(), "{n} kept");
        }
        assert_eq!(
            tidy(&db, true),
            Vec::<PathBuf>::new(),
            "nothing more to tidy"
        );
    }

    #[test]
    fn a_failing_check_after_the_swap_puts_the_safety_copy_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, staging) = (dir.path().join("bot.db"), dir.path().join("staging.db"));
        for (path, rows) in [(&db, 1..40), (&staging, 100..103)] {
            let c = Connection::open(path).expect("open");
            c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER, pad TEXT);")
                .expect("schema");
            for i in rows {
                c.execute("INSERT INTO t VALUES (?1, hex(randomblob(300)))", [i])
                    .expect("insert");
            }
        }
        let rows = |c: &Connection| -> Vec<i64> {
            let mut st = c.prepare("SELECT x FROM t ORDER BY x").expect("select");
            st.query_map([], |r| r.get(0))
                .expect("rows")
                .collect::<std::result::Result<_, _>>()
                .expect("rows")
        };
        let mut conn = Connection::open(&db).expect("open");
        let before = rows(&conn);
        let safety = dir.path().join("safety.db");
        let err = replace_checked(&mut conn, &db, &staging, &safety, &|c| {
            // The swap did happen: the check sees the restored rows, then fails.
            assert_eq!(rows(c), vec![100, 101, 102]);
            Err(Error::Internal {
                message: "the check after the swap failed".into(),
            })
        })
        .expect_err("the check failed");
        assert!(err.to_string().contains("rolled back"), "{err}");
        assert_eq!(rows(&conn), before, "the previous content is back");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(ok, "ok");
        assert!(safety.is_file(), "the safety copy is kept");
        assert!(
            interrupted(&db).expect("journal").is_none(),
            "nothing left to finish"
        );
        // And with every check passing, the same call replaces the content.
        let done = replace(&mut conn, &db, &staging, &safety).expect("replace");
        assert_eq!(rows(&conn), vec![100, 101, 102]);
        assert_eq!(done.safety, safety);
    }
}
