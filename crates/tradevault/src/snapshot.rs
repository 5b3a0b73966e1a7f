//! [`Snapshot`]: a consistent copy of a live SQLite database, page by page, without stopping its
//! writers. Backups read their pages from one, and so does the replicator's snapshot (an LTX file
//! holding every page), which then continues from the WAL position where the snapshot ends.
//!
//! A read-only connection opens a read transaction and keeps it until every page was read (and
//! the rows counted, on that connection: the same state). In WAL mode its read mark stops any
//! checkpoint from copying frames past it into the database file, and stops the WAL from being
//! restarted under it. The snapshot's last frame is the WAL index header's (`-shm`) when BEGIN
//! started: read just before and just after, and started again unless both are the same. The WAL
//! is read up to that frame (every committed transaction, verified frame by frame, the newest
//! version of each page kept in memory) and the database file is read with those pages laid over
//! it. Any page a checkpoint may copy into the file meanwhile is one of those laid over it, so the
//! result is exactly the transaction's state. (Reading the WAL to its end instead takes commits
//! made after BEGIN: the rows counted then disagree with the pages, as a test showed.) A
//! database in rollback-journal mode is read under the transaction's SHARED lock, which holds its
//! writers off until the read ends.
//!
//! Memory: the WAL's distinct pages (the store bounds its WAL at `checkpoint_wal_bytes`); the
//! database file is read in whatever pieces the caller asks for.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::backup::census::Census;
use crate::error::{Error, Result};
use crate::store::wal_path;
use crate::wal::{Position, WalReader};

/// A consistent state of a database being read.
pub struct Snapshot {
    path: PathBuf,
    /// Holds the read transaction. In a mutex only so that a snapshot can be shared by the threads
    /// reading its pages.
    conn: std::sync::Mutex<Option<Connection>>,
    file: std::sync::Arc<File>,
    file_pages: u64,
    /// Bytes per page.
    pub page_size: u32,
    /// Pages in the state.
    pub page_count: u32,
    overlay: HashMap<u32, Vec<u8>>,
    /// Where the commits after the state will be.
    pub continues: Continues,
    /// Every commit finished before this time (ms) is in the state.
    pub state_min_ms: i64,
    /// No commit started after this time (ms) is in the state.
    pub state_max_ms: i64,
}

/// Where the commits after a snapshot's state will be, for a reader of the WAL to go on from.
/// Only the WAL's salts say that it was not restarted meanwhile: a restart needs every frame
/// copied into the database file first, and the file's mtime cannot show that (it is only as fine
/// as the kernel's clock tick, and checkpoints come faster than that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continues {
    /// In the current WAL generation, after this position.
    Wal(Position),
    /// In the WAL generation that starts next, whose first salt the WAL index already holds (the
    /// WAL was restarted or truncated, and no frame was committed to it since).
    NextGeneration(u32),
    /// Unknown: the database is not in WAL mode, or its WAL index was rebuilt without a WAL.
    Unknown,
}

impl Snapshot {
    /// Where the state ends in the WAL: after its last commit (salts, offset and checksum chain,
    /// to continue reading from). `None` when the WAL holds no frame of the current generation.
    pub fn wal(&self) -> Option<Position> {
        match self.continues {
            Continues::Wal(p) => Some(p),
            _ => None,
        }
    }

    /// Opens a consistent snapshot of `db`; `now` gives the time in ms since the epoch.
    pub fn open(db: &Path, now: &dyn Fn() -> i64) -> Result<Snapshot> {
        if !db.is_file() {
            return Err(Error::NotInitialized {
                path: db.to_owned(),
            });
        }
        for _ in 0..1_000 {
            if let Some(s) = Snapshot::try_open(db, now)? {
                return Ok(s);
            }
        }
        Err(Error::Internal {
            message: format!(
                "{}: no stable snapshot in 1000 tries (its WAL index kept changing)",
                db.display()
            ),
        })
    }

    fn try_open(db: &Path, now: &dyn Fn() -> i64) -> Result<Option<Snapshot>> {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite("open database for backup", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| Error::sqlite("set busy timeout", e))?;
        // Never a descriptor of our own that is closed afterwards: see `held`.
        let file = crate::held::open(db).map_err(|e| Error::io("open database", db, e))?;
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
        if !ltx::is_valid_page_size(page_size) {
            return Err(Error::Corrupt {
                path: db.to_owned(),
                detail: format!("page size {page_size} in its header is invalid"),
            });
        }
        let wal_mode = header[18] == 2;
        let shm = PathBuf::from(format!("{}-shm", db.display()));
        // The read transaction starts with the first read. Its snapshot is the WAL index header
        // it found: when the header is the same just before and just after, that header (its
        // last valid frame, its salts) describes the snapshot exactly.
        // One read outside a transaction opens (and, if needed, rebuilds) the WAL index.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|e| Error::sqlite_at(db, "read database for backup", e))?;
        let state_min_ms = now();
        let before = if wal_mode { shm_header(&shm)? } else { None };
        conn.execute_batch("BEGIN")
            .and_then(|()| conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())))
            .map_err(|e| Error::sqlite_at(db, "read database for backup", e))?;
        let after = if wal_mode { shm_header(&shm)? } else { None };
        let state_max_ms = now();
        if wal_mode && (before.is_none() || before != after) {
            return Ok(None);
        }
        let mut overlay = HashMap::new();
        let mut commit = None;
        let mut continues = Continues::Unknown;
        // A WAL index rebuilt with no WAL has zero salts: the first frame gets random ones, so
        // the salts cannot say where the next commits go (Unknown).
        if let Some(h) = after.filter(|h| h.max_frame == 0 && h.salts != (0, 0)) {
            continues = Continues::NextGeneration(h.salts.0);
        }
        if let Some(h) = after.filter(|h| h.max_frame > 0) {
            // Frames up to max_frame are the snapshot's; no checkpoint copies frames past the
            // read mark. The file may hold some of them already (up to `backfilled`): laying
            // them over it again changes nothing, and reading them gives the position after
            // them, from which the next read of this generation goes on.
            let Some(mut reader) = WalReader::open(&wal_path(db))? else {
                return Ok(None);
            };
            let wh = *reader.header();
            if wh.page_size != page_size || (wh.salt1, wh.salt2) != h.salts {
                return Ok(None);
            }
            let limit = 32 + u64::from(h.max_frame) * (24 + u64::from(page_size));
            let mut end = reader.position();
            while let Some(t) = reader.next_transaction()? {
                if t.end > limit {
                    break;
                }
                // The reader is past `t` now: the position to continue from is after it.
                end = reader.position();
                for (pgno, data) in t.pages {
                    if pgno <= t.commit {
                        overlay.insert(pgno, data);
                    }
                }
                commit = Some(t.commit);
            }
            if end.offset != limit {
                return Ok(None);
            }
            continues = Continues::Wal(end);
        }
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("read database size", db, e))?
            .len();
        let file_pages = file_len / u64::from(page_size);
        let page_count = match (commit, after) {
            (Some(c), _) => c,
            // Everything is in the file; the WAL index knows its size in pages.
            (None, Some(h)) if h.pages > 0 => h.pages,
            _ => u32::try_from(file_pages).map_err(|_| Error::Internal {
                message: "database too large".into(),
            })?,
        };
        overlay.retain(|pgno, _| *pgno <= page_count);
        Ok(Some(Snapshot {
            path: db.to_owned(),
            conn: std::sync::Mutex::new(Some(conn)),
            file,
            file_pages,
            page_size,
            page_count,
            overlay,
            continues,
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
            } else if at >= file_bytes && pgno == ltx::lock_pgno(self.page_size) {
                // SQLite never writes the lock page: a database grown past it in the WAL has
                // it in neither place (a checkpoint leaves a hole there).
                buf[at..at + ps].fill(0);
            } else if at >= file_bytes {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    detail: format!("page {pgno} is neither in the file nor in its WAL"),
                });
            }
        }
        Ok(())
    }

    /// Rows per table in this state: from `census` (the pages' own b-tree headers, noted while
    /// they were read) where it can walk a table's tree, else with `count(*)` in the snapshot's
    /// read transaction.
    pub fn row_counts(&self, census: Option<&Census>) -> Result<BTreeMap<String, u64>> {
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = guard.as_ref() else {
            return Ok(BTreeMap::new());
        };
        let tables = tables(conn, &self.path)?;
        let roots: Vec<u32> = tables.iter().map(|t| t.1).collect();
        let walked = census.map_or_else(|| vec![None; roots.len()], |c| c.rows(&roots));
        let mut out = BTreeMap::new();
        for ((name, _), rows) in tables.into_iter().zip(walked) {
            let rows = match rows {
                Some(n) => n,
                None => count(conn, &self.path, &name)?,
            };
            out.insert(name, rows);
        }
        Ok(out)
    }
}

/// What a snapshot needs of the WAL index (the `-shm` file, SQLite's `WalIndexHdr` and
/// `nBackfill`, in native byte order): its header as a whole, to compare, and a few fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShmHeader {
    bytes: [u8; 48],
    max_frame: u32,
    pages: u32,
    salts: (u32, u32),
    backfilled: u32,
}

fn shm_header(path: &Path) -> Result<Option<ShmHeader>> {
    let f = match crate::held::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open wal index", path, e)),
    };
    let mut b = [0u8; 104];
    if f.read_exact_at(&mut b, 0).is_err() {
        return Ok(None);
    }
    // SQLite writes the second copy first: a header being written shows two different copies.
    if b[..48] != b[48..96] || b[12] == 0 {
        return Ok(None);
    }
    let ne = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut bytes = [0u8; 48];
    bytes.copy_from_slice(&b[..48]);
    Ok(Some(ShmHeader {
        bytes,
        max_frame: ne(16),
        pages: ne(20),
        // The salts are copied from the WAL header as bytes: big-endian words there.
        salts: (
            u32::from_be_bytes([b[32], b[33], b[34], b[35]]),
            u32::from_be_bytes([b[36], b[37], b[38], b[39]]),
        ),
        backfilled: ne(96),
    }))
}

/// Rows per table (SQLite's own and virtual tables left out), in the connection's transaction.
pub fn row_counts(conn: &Connection, path: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for (name, _) in tables(conn, path)? {
        let n = count(conn, path, &name)?;
        out.insert(name, n);
    }
    Ok(out)
}

/// The tables [`row_counts`] counts, with their root pages, by name.
pub(crate) fn tables(conn: &Connection, path: &Path) -> Result<Vec<(String, u32)>> {
    conn.prepare(
        "SELECT name, rootpage FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%' \
         ORDER BY name",
    )
    .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
    .map_err(|e| Error::sqlite_at(path, "read database for backup", e))
}

fn count(conn: &Connection, path: &Path, table: &str) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM \"{}\"", table.replace('"', "\"\""));
    conn.query_row(&sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| Error::sqlite_at(path, "read database for backup", e))
}
