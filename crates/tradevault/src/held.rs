//! Files SQLite may hold locks on (a database file and its `-shm` WAL index), opened once per
//! process for reading and never closed while the name still refers to the same file.
//!
//! POSIX advisory locks belong to the process, per file: closing *any* descriptor of a file
//! releases every lock the process holds on it, SQLite's included (its unix VFS keeps its own
//! descriptors open for that reason, but it cannot know about ours). Reading a database's WAL
//! index header with a `File` that was then closed dropped the replication engine's read lock on
//! the WAL (its pin) and the store's own locks: a program's checkpoint could then restart the WAL
//! while frames were not shipped yet, and the replica lost them (the sidecar crash test found it).
//! So every read of such a file goes through a descriptor from here.
//!
//! Cost: one descriptor per database file and per WAL index this process ever read, kept until
//! it exits (or until the name refers to another file: the old descriptor is kept too, since
//! SQLite connections may still use the old file).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

struct Held {
    file: Arc<File>,
    dev: u64,
    ino: u64,
}

fn registry() -> &'static Mutex<(HashMap<PathBuf, Held>, Vec<Arc<File>>)> {
    static OPEN: OnceLock<Mutex<(HashMap<PathBuf, Held>, Vec<Arc<File>>)>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// A read-only descriptor of `path` that is never closed while this process runs.
pub(crate) fn open(path: &Path) -> std::io::Result<Arc<File>> {
    // `stat` needs no descriptor.
    let meta = std::fs::metadata(path)?;
    let mut guard = registry().lock().unwrap_or_else(|p| p.into_inner());
    let (open, retired) = &mut *guard;
    if let Some(h) = open.get(path)
        && (h.dev, h.ino) == (meta.dev(), meta.ino())
    {
        return Ok(h.file.clone());
    }
    let file = Arc::new(File::open(path)?);
    let m = file.metadata()?;
    let held = Held {
        file: file.clone(),
        dev: m.dev(),
        ino: m.ino(),
    };
    if let Some(old) = open.insert(path.to_owned(), held) {
        retired.push(old.file);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PRAGMA wal_checkpoint(TRUNCATE)` from another process (locks taken in this one are seen
    /// by SQLite's own bookkeeping before any `fcntl`): 1 when it could not complete.
    fn truncate_elsewhere(db: &Path) -> String {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0); print(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])")
            .arg(db)
            .output()
            .expect("python3");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The reason this module exists: a descriptor opened and closed beside a SQLite connection
    /// takes that connection's locks with it. Through a held descriptor, a read transaction keeps
    /// its WAL read lock, so another process's TRUNCATE checkpoint cannot restart the WAL under it.
    #[test]
    fn reading_through_a_held_descriptor_keeps_sqlite_s_locks() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let writer = rusqlite::Connection::open(&db).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t(x); INSERT INTO t VALUES (1);",
            )
            .unwrap();
        let reader = rusqlite::Connection::open(&db).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let shm = dir.path().join("t.db-shm");
        assert_eq!(truncate_elsewhere(&db), "1", "the reader holds the WAL");
        for _ in 0..3 {
            drop(open(&shm).unwrap());
            drop(open(&db).unwrap());
        }
        assert_eq!(
            truncate_elsewhere(&db),
            "1",
            "the reader's lock must still hold"
        );
        // What this prevents: open and close a plain descriptor, and the lock is gone.
        drop(File::open(&shm).unwrap());
        assert_eq!(
            truncate_elsewhere(&db),
            "0",
            "a closed descriptor released the reader's lock"
        );
        reader.execute_batch("COMMIT").unwrap();
    }
}
