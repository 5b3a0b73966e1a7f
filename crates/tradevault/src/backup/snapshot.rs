//! [`Snapshot`]: a consistent copy of a live SQLite database, page by page, without stopping its
//! writers.
//!
//! A read-only connection opens a read transaction and keeps it until every page was read. In WAL
//! mode that read mark stops any checkpoint from copying frames past it into the database file,
//! and stops the WAL from being restarted under it. The WAL is then read to its end (every
//! committed transaction, verified frame by frame, the newest version of each page kept in
//! memory), and the database file is read with those pages laid over it. Any page a checkpoint
//! may copy into the file meanwhile is one of those laid over it, so the result is exactly the
//! state after the WAL's last commit. If the WAL's header changed while it was read (a reset), the
//! whole read starts again. A database in rollback-journal mode is read under the transaction's
//! SHARED lock, which holds its writers off until the read ends.
//!
//! Memory: the WAL's distinct pages (the store bounds its WAL at `checkpoint_wal_bytes`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::format::WalMark;
use crate::error::{Error, Result};
use crate::store::wal_path;
use crate::wal::WalReader;

/// A consistent state of a database being read.
pub struct Snapshot {
    path: PathBuf,
    conn: Option<Connection>,
    file: File,
    file_pages: u64,
    /// Bytes per page.
    pub page_size: u32,
    /// Pages in the state.
    pub page_count: u32,
    overlay: HashMap<u32, Vec<u8>>,
    /// Where the WAL stood, if there is one.
    pub wal: Option<WalMark>,
    /// Every commit finished before this time (ms) is in the state.
    pub state_min_ms: i64,
    /// No commit started after this time (ms) is in the state.
    pub state_max_ms: i64,
}

impl Snapshot {
    /// Opens a consistent snapshot of `db`; `now` gives the time in ms since the epoch.
    pub fn open(db: &Path, now: &dyn Fn() -> i64) -> Result<Snapshot> {
        if !db.is_file() {
            return Err(Error::NotInitialized { path: db.to_owned() });
        }
        for _ in 0..16 {
            if let Some(s) = Snapshot::try_open(db, now)? {
                return Ok(s);
            }
        }
        Err(Error::Internal {
            message: format!("the wal of {} kept being reset while it was read", db.display()),
        })
    }

    fn try_open(db: &Path, now: &dyn Fn() -> i64) -> Result<Option<Snapshot>> {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite("open database for backup", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| Error::sqlite("set busy timeout", e))?;
        // The read transaction starts with the first read, and lasts until the connection closes.
        conn.execute_batch("BEGIN")
            .and_then(|()| conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())))
            .map_err(|e| corrupt_or(db, e))?;
        let file = File::open(db).map_err(|e| Error::io("open database", db, e))?;
        let mut header = [0u8; 100];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| Error::io("read database header", db, e))?;
        if &header[..16] != b"SQLite format 3\0" {
            return Err(Error::Corrupt {
                path: db.to_owned(),
                detail: "not a SQLite database (bad header)".into(),
            });
        }
        let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
        let page_size = if raw == 1 { 65_536 } else { raw };
        let wal_mode = header[18] == 2;
        let state_min_ms = now();
        let mut overlay = HashMap::new();
        let mut commit = None;
        let mut wal = None;
        let wal_file = wal_path(db);
        if wal_mode && let Some(mut reader) = WalReader::open(&wal_file)? {
            let before = *reader.header();
            if before.page_size == page_size {
                while let Some(t) = reader.next_transaction()? {
                    for (pgno, data) in t.pages {
                        if pgno <= t.commit {
                            overlay.insert(pgno, data);
                        }
                    }
                    commit = Some(t.commit);
                }
                let after = WalReader::open(&wal_file)?.map(|r| *r.header());
                if after != Some(before) {
                    return Ok(None);
                }
                let p = reader.position();
                wal = Some(WalMark {
                    salt1: p.salt1,
                    salt2: p.salt2,
                    offset: p.offset,
                });
            }
        }
        let state_max_ms = now();
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("read database size", db, e))?
            .len();
        let file_pages = file_len / u64::from(page_size);
        let page_count = match commit {
            Some(c) => c,
            None => u32::try_from(file_pages).map_err(|_| Error::Internal {
                message: "database too large".into(),
            })?,
        };
        overlay.retain(|pgno, _| *pgno <= page_count);
        Ok(Some(Snapshot {
            path: db.to_owned(),
            conn: Some(conn),
            file,
            file_pages,
            page_size,
            page_count,
            overlay,
            wal,
            state_min_ms,
            state_max_ms,
        }))
    }

    /// Reads `buf.len() / page_size` pages starting at page `first` (1-based) into `buf`.
    pub fn read_pages(&self, first: u32, buf: &mut [u8]) -> Result<()> {
        let ps = self.page_size as usize;
        let count = (buf.len() / ps) as u32;
        let in_file = (self.file_pages.saturating_sub(u64::from(first) - 1)).min(u64::from(count));
        let file_bytes = in_file as usize * ps;
        if file_bytes > 0 {
            self.file
                .read_exact_at(&mut buf[..file_bytes], (u64::from(first) - 1) * ps as u64)
                .map_err(|e| Error::io("read database pages", &self.path, e))?;
        }
        for i in 0..count {
            let pgno = first + i;
            let at = i as usize * ps;
            if let Some(page) = self.overlay.get(&pgno) {
                buf[at..at + ps].copy_from_slice(page);
            } else if at >= file_bytes {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    detail: format!("page {pgno} is neither in the file nor in its WAL"),
                });
            }
        }
        Ok(())
    }

    /// Takes the connection holding the read transaction, to count rows on another thread; give
    /// it back with [`Snapshot::put_connection`] (or drop the snapshot only after the pages).
    pub fn take_connection(&mut self) -> Option<Connection> {
        self.conn.take()
    }

    /// Gives back the connection taken with [`Snapshot::take_connection`].
    pub fn put_connection(&mut self, conn: Connection) {
        self.conn = Some(conn);
    }
}

/// Rows per table (SQLite's own and virtual tables left out), in the connection's transaction.
pub fn row_counts(conn: &Connection, path: &Path) -> Result<BTreeMap<String, u64>> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| corrupt_or(path, e))?;
    let mut out = BTreeMap::new();
    for name in names {
        let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let n: i64 = conn
            .query_row(&sql, [], |r| r.get(0))
            .map_err(|e| corrupt_or(path, e))?;
        out.insert(name, n as u64);
    }
    Ok(out)
}

fn corrupt_or(path: &Path, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::NotADatabase | C::DatabaseCorrupt) => Error::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => Error::sqlite("read database for backup", e),
    }
}
