//! A replica in a local directory: `<root>/ltx/<level>/<min>-<max>.ltx`, each file's mtime set to
//! its header time (Litestream's restore reads creation times from mtimes).
//!
//! The replication engine's local log is a [`FileReplica::cache`]: its files are written whole
//! under a temporary name and renamed, but neither they nor their directory are fsynced (the
//! engine verifies the cache at startup and always starts with a snapshot). A replica on the same
//! filesystem receives a cache file by [`FileReplica::put_link`]: a hard link, fsync, rename,
//! fsync of the directory, so a shipment costs one inode and two fsyncs in all. A cache gets
//! that inode ahead of time ([`FileReplica::prepare`]): on a busy ext4 without a journal
//! creating a file took 0.3 to 0.8 ms, most of what a synchronous write waited for besides fsyncs;
//! it reuses one its replicas deleted when it can ([`super::recycle::Recycler`]).

use std::fs::{self, File, FileTimes};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use super::recycle::Recycler;
use super::{ReplicaFile, STREAM_BUFFER_BYTES, WriteLtx, journal, verify_ltx};
use crate::error::{Error, Result};

/// A replica in a directory.
#[derive(Debug, Clone)]
pub struct FileReplica {
    root: PathBuf,
    /// Whether `put` fsyncs each file and its directory (false for a cache).
    durable: bool,
    /// A cache's empty file created ahead for its next `put` (shared by clones).
    spare: Arc<Mutex<Option<Spare>>>,
    /// Where deleted files go to be reused, and a cache's new files come from.
    recycler: Option<Arc<Recycler>>,
    /// The sync journal's records [`FileReplica::journal_tail`] found, by TXID range, with their
    /// bytes (shared by clones).
    journal_seen: Arc<Mutex<JournalSeen>>,
    /// Where the records [`FileReplica::segment_points`] listed are, by TXID range (shared by
    /// clones): a segment never changes until it is removed.
    segment_seen: Arc<Mutex<SegmentSeen>>,
}

type JournalSeen = std::collections::BTreeMap<(u64, u64), Arc<Vec<u8>>>;
type SegmentSeen = std::collections::HashMap<(u64, u64), (PathBuf, journal::Record)>;

/// Most record locations a replica keeps from its listings of segments (an hour at 2,000 commits/s
/// is about 450,000 records; a restore lists the few segments around its target).
const SEGMENT_SEEN_MAX: usize = 100_000;

/// A segment of a file replica's journal (see `replica::journal`), as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its first TXID.
    pub first: u64,
    /// Its last TXID.
    pub last: u64,
    /// Its first record's listed time (ms since the epoch); None when it holds no readable record.
    pub first_ms: Option<i64>,
    /// Its file.
    pub path: PathBuf,
}

/// A journal record as a file of level [`journal::JOURNAL_LEVEL`].
fn record_file(record: &journal::Record) -> ReplicaFile {
    ReplicaFile {
        level: journal::JOURNAL_LEVEL,
        min_txid: record.min_txid,
        max_txid: record.max_txid,
        size: record.len,
        created_at_ms: record.created_at_ms,
    }
}

/// An empty file under a temporary name, created before it is needed. Removed if never used.
#[derive(Debug)]
struct Spare {
    level: u32,
    path: PathBuf,
    file: Option<File>,
}

impl Drop for Spare {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl FileReplica {
    /// A replica rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> FileReplica {
        FileReplica {
            root: root.into(),
            durable: true,
            spare: Arc::default(),
            recycler: None,
            journal_seen: Arc::default(),
            segment_seen: Arc::default(),
        }
    }

    /// A cache rooted at `root`: files still appear only when complete (temporary name, rename),
    /// but nothing is fsynced, so after a machine crash a file may be missing or, under its final
    /// name, incomplete. Whoever reads it after a restart verifies it first.
    pub fn cache(root: impl Into<PathBuf>) -> FileReplica {
        FileReplica {
            root: root.into(),
            durable: false,
            spare: Arc::default(),
            recycler: None,
            journal_seen: Arc::default(),
            segment_seen: Arc::default(),
        }
    }

    /// The same, with `recycler` (see [`Recycler`]): a replica deletes into it, a cache takes its
    /// new files from it.
    pub fn with_recycler(self, recycler: Arc<Recycler>) -> FileReplica {
        FileReplica {
            recycler: Some(recycler),
            ..self
        }
    }

    /// Its root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn level_dir(&self, level: u32) -> PathBuf {
        self.root.join("ltx").join(level.to_string())
    }

    /// Where a file of `level` covering `min..=max` lives.
    pub fn path_of(&self, level: u32, min_txid: u64, max_txid: u64) -> PathBuf {
        self.level_dir(level)
            .join(ltx::file_name(min_txid, max_txid))
    }

    /// Creates the directory of `level` if needed; new directories are durable only once their
    /// parents are synced: the root, `ltx`, the level.
    fn ensure_level_dir(&self, level: u32) -> Result<PathBuf> {
        let dir = self.level_dir(level);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create replica directory", &dir, e))?;
            if self.durable {
                for d in [self.root.as_path(), &self.root.join("ltx")] {
                    sync_dir(d)?;
                }
            }
        }
        Ok(dir)
    }

    /// Creates, in a cache, the empty file its next `put` at `level` writes (under a temporary
    /// name), unless one is ready. Call it when nothing waits: creating a file is the slow part
    /// of a cache's `put`. Does nothing for a durable replica.
    pub fn prepare(&self, level: u32) -> Result<()> {
        if self.durable {
            return Ok(());
        }
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.as_ref().is_some_and(|s| s.level == level) {
            return Ok(());
        }
        let dir = self.ensure_level_dir(level)?;
        let (path, file) = match self.recycled(true) {
            Some(kept) => kept,
            None => {
                let path = temp_name(&dir.join("spare"));
                // Readable too: a streamed file is read back to be verified.
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| Error::io("create replica file", &path, e))?;
                (path, file)
            }
        };
        *spare = Some(Spare {
            level,
            path,
            file: Some(file),
        });
        Ok(())
    }

    /// An emptied file for a cache's next file, if its recycler has one; `settle` when nothing
    /// waits (see [`Recycler::take`]).
    fn recycled(&self, settle: bool) -> Option<(PathBuf, File)> {
        match &self.recycler {
            Some(r) if !self.durable => r.take(settle),
            _ => None,
        }
    }

    /// The spare file for `level`, if one is ready: (temporary path, file).
    /// Not one that is being created: a `put` never waits for that.
    fn take_spare(&self, level: u32) -> Option<(PathBuf, File)> {
        let mut slot = match self.spare.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if slot.as_ref().is_none_or(|s| s.level != level) {
            return None;
        }
        let mut spare = slot.take()?;
        let file = spare.file.take()?;
        Some((std::mem::take(&mut spare.path), file))
    }

    /// Verifies `bytes` as an LTX file, then writes it so that it appears only when complete:
    /// a temporary name, fsync, rename, fsync of the directory (a cache skips both fsyncs, and
    /// writes into its spare file when one is ready); its mtime is `created_at_ms`, or its
    /// header time (see [`ReplicaFile::created_at_ms`]).
    pub fn put(&self, level: u32, bytes: &[u8], created_at_ms: Option<i64>) -> Result<ReplicaFile> {
        let (header, _) = ltx::Decoder::new(bytes)
            .and_then(|d| d.finish())
            .map_err(|source| Error::Ltx {
                name: format!("file for level {level}"),
                source,
            })?;
        self.put_encoded(level, &header, bytes, created_at_ms)
    }

    /// Writes `bytes`, an LTX file this process's encoder just produced with `header`, as
    /// [`FileReplica::put`] does but without decoding it again: the shipper's files, about a
    /// tenth of its CPU at 2,000 commits/s. A replica reading it later still verifies it.
    pub fn put_encoded(
        &self,
        level: u32,
        header: &ltx::Header,
        bytes: &[u8],
        created_at_ms: Option<i64>,
    ) -> Result<ReplicaFile> {
        self.write_new(
            level,
            header.min_txid,
            header.max_txid,
            created_at_ms,
            |f, tmp| {
                f.write_all(bytes)
                    .map_err(|e| Error::io("write replica file", tmp, e))?;
                Ok(*header)
            },
        )
    }

    /// Writes the LTX file `write` produces straight into the replica's directory under a
    /// temporary name, reads it back to verify it, then installs it as [`FileReplica::put`]
    /// does. Memory: a write buffer, whatever the file's size.
    pub fn put_streamed(
        &self,
        level: u32,
        min_txid: u64,
        max_txid: u64,
        created_at_ms: Option<i64>,
        write: &mut WriteLtx<'_>,
    ) -> Result<ReplicaFile> {
        self.write_new(level, min_txid, max_txid, created_at_ms, |f, tmp| {
            let mut out = BufWriter::with_capacity(STREAM_BUFFER_BYTES, &mut *f);
            write(&mut out)?;
            out.flush()
                .map_err(|e| Error::io("write replica file", tmp, e))?;
            drop(out);
            f.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io("read back replica file", tmp, e))?;
            verify_ltx(&*f, || format!("{} (as written)", tmp.display()))
        })
    }

    /// Verifies the LTX file at `source`, then copies it in (the kernel copies: no buffer here)
    /// and installs it as [`FileReplica::put`] does.
    pub fn put_file(
        &self,
        level: u32,
        source: &Path,
        created_at_ms: Option<i64>,
    ) -> Result<ReplicaFile> {
        let mut from = File::open(source).map_err(|e| Error::io("open ltx file", source, e))?;
        let before = from
            .metadata()
            .map_err(|e| Error::io("read ltx file size", source, e))?;
        let header = verify_ltx(&from, || source.display().to_string())?;
        from.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("read ltx file", source, e))?;
        self.write_new(
            level,
            header.min_txid,
            header.max_txid,
            created_at_ms,
            |f, tmp| {
                let copied = std::io::copy(&mut from, f)
                    .map_err(|e| Error::io("copy into replica file", tmp, e))?;
                // A file a replica deleted may be emptied and reused (see `Recycler`): what was
                // verified must be what was copied.
                unchanged(&from, &before, copied, source)?;
                Ok(header)
            },
        )
    }

    /// Creates the file of `level` covering `min_txid..=max_txid` so that it appears only when
    /// complete: `fill` writes it under a temporary name and returns its verified header; then
    /// its mtime is set to `created_at_ms` (the header time when `None`), and it is fsynced,
    /// renamed, and its directory fsynced (a cache skips both fsyncs). Any failure removes the
    /// temporary file.
    fn write_new(
        &self,
        level: u32,
        min_txid: u64,
        max_txid: u64,
        created_at_ms: Option<i64>,
        fill: impl FnOnce(&mut File, &Path) -> Result<ltx::Header>,
    ) -> Result<ReplicaFile> {
        let dir = self.ensure_level_dir(level)?;
        let path = self.path_of(level, min_txid, max_txid);
        let durable = self.durable;
        let (tmp, file) = match self.take_spare(level).or_else(|| self.recycled(false)) {
            Some((tmp, file)) => (tmp, Ok(file)),
            None => {
                let tmp = temp_name(&path);
                // Readable too: a streamed file is read back to be verified.
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp);
                (tmp, file)
            }
        };
        let written = file
            .map_err(|e| Error::io("create replica file", &tmp, e))
            .and_then(|mut f| {
                let header = fill(&mut f, &tmp)?;
                if (header.min_txid, header.max_txid) != (min_txid, max_txid) {
                    return Err(Error::Internal {
                        message: format!(
                            "ltx file {} holds TXIDs {}-{}",
                            path.display(),
                            header.min_txid,
                            header.max_txid
                        ),
                    });
                }
                let created_ms = created_at_ms.unwrap_or(header.timestamp_ms);
                let created =
                    UNIX_EPOCH + Duration::from_millis(u64::try_from(created_ms).unwrap_or(0));
                f.set_times(FileTimes::new().set_modified(created).set_accessed(created))
                    .map_err(|e| Error::io("set replica file time", &tmp, e))?;
                if durable {
                    f.sync_all()
                        .map_err(|e| Error::io("fsync replica file", &tmp, e))?;
                }
                let size = f
                    .metadata()
                    .map_err(|e| Error::io("read replica file size", &tmp, e))?
                    .len();
                Ok((header, size))
            });
        let (header, size) = match written {
            Ok(w) => w,
            Err(e) => {
                // A full disk must not fill up further with half-written files.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("rename replica file", &path, e));
        }
        if self.durable {
            sync_dir(&dir)?;
        }
        Ok(ReplicaFile {
            level,
            min_txid: header.min_txid,
            max_txid: header.max_txid,
            size,
            created_at_ms: created_at_ms.unwrap_or(header.timestamp_ms),
        })
    }

    /// Puts `file` of the cache `source` at `level` with no copy: a hard link under a temporary
    /// name, an fsync of the file (its bytes, which the cache did not sync, and its link count),
    /// a rename, an fsync of the directory. The caller vouches for the bytes: the engine verifies
    /// its cache at startup and every file it writes there. `Ok(None)` when no link can be made
    /// (another filesystem, or one without hard links): copy instead.
    pub fn put_link(
        &self,
        level: u32,
        source: &FileReplica,
        file: &ReplicaFile,
    ) -> Result<Option<ReplicaFile>> {
        let from = source.path_of(file.level, file.min_txid, file.max_txid);
        let dir = self.ensure_level_dir(level)?;
        let path = self.path_of(level, file.min_txid, file.max_txid);
        let tmp = temp_name(&path);
        match fs::hard_link(&from, &tmp) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::CrossesDevices
                    || e.kind() == std::io::ErrorKind::PermissionDenied
                    || e.kind() == std::io::ErrorKind::Unsupported
                    || e.raw_os_error() == Some(EPERM) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(Error::io("link replica file", &tmp, e)),
        }
        let durable = || -> Result<()> {
            if self.durable {
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io("fsync replica file", &tmp, e))?;
            }
            fs::rename(&tmp, &path).map_err(|e| Error::io("rename replica file", &path, e))
        };
        if let Err(e) = durable() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if self.durable {
            sync_dir(&dir)?;
        }
        Ok(Some(ReplicaFile {
            level,
            ..file.clone()
        }))
    }

    /// The newest TXID any level's file names hold (0: none, or unreadable): names only, no
    /// metadata, so it stays quick with hundreds of thousands of files.
    pub fn newest_txid(&self) -> u64 {
        let Ok(levels) = fs::read_dir(self.root.join("ltx")) else {
            return 0;
        };
        levels
            .flatten()
            .filter_map(|level| fs::read_dir(level.path()).ok())
            .flat_map(|files| files.flatten())
            .filter_map(|f| f.file_name().to_str().and_then(ltx::parse_file_name))
            .map(|(_, max)| max)
            .max()
            .unwrap_or(0)
    }

    /// The files of `level`, ordered by transaction range; names that are not LTX files
    /// (temporary files, anything else) are skipped.
    pub fn list(&self, level: u32) -> Result<Vec<ReplicaFile>> {
        self.list_after(level, 0)
    }

    /// [`FileReplica::list`], skipping (unread) the files that end at or before `txid`.
    pub fn list_after(&self, level: u32, txid: u64) -> Result<Vec<ReplicaFile>> {
        let dir = self.level_dir(level);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list replica directory", &dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list replica directory", &dir, e))?;
            let Some((min_txid, max_txid)) =
                entry.file_name().to_str().and_then(ltx::parse_file_name)
            else {
                continue;
            };
            if max_txid <= txid {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                // Deleted between the listing and now (pruning, compaction): it is not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read replica file metadata", entry.path(), e)),
            };
            let created_at_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            files.push(ReplicaFile {
                level,
                min_txid,
                max_txid,
                size: meta.len(),
                created_at_ms,
            });
        }
        files.sort_by_key(|f| (f.min_txid, f.max_txid));
        Ok(files)
    }

    /// The journal's records as of now, and those of the segments holding a TXID after `after`,
    /// with their bytes (see [`journal::read_after`]).
    pub fn journal_records(&self, after: u64) -> Result<Vec<(journal::Record, Vec<u8>)>> {
        journal::read_after(&self.root, after)
    }

    /// The journal's segments, oldest first, each with its first record's time (one small read
    /// each).
    pub fn segments(&self) -> Result<Vec<Segment>> {
        journal::segments(&self.root)?
            .into_iter()
            .map(|(first, last, path)| {
                let first_ms = journal::first_record(&path)?.map(|r| r.created_at_ms);
                Ok(Segment {
                    first,
                    last,
                    first_ms,
                    path,
                })
            })
            .collect()
    }

    /// The records of `segment` as files of level [`journal::JOURNAL_LEVEL`], read by head (not
    /// verified here: [`FileReplica::read`] returns their bytes, which the restore verifies
    /// before applying anything). A segment removed meanwhile holds none.
    pub fn segment_points(&self, segment: &Segment) -> Result<Vec<ReplicaFile>> {
        let records = journal::segment_records(&segment.path)?;
        let mut seen = self.segment_seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() + records.len() > SEGMENT_SEEN_MAX {
            seen.clear();
        }
        Ok(records
            .into_iter()
            .map(|r| {
                let file = record_file(&r);
                seen.insert((r.min_txid, r.max_txid), (segment.path.clone(), r));
                file
            })
            .collect())
    }

    /// Of `records` (from [`FileReplica::journal_records`]), those that continue the chain from
    /// `newest`, the layout's newest TXID, each verified, with its LTX bytes; the first record that
    /// does not continue or does not verify ends them (the torn end of an append that a crash cut:
    /// its commits were never acknowledged). Their bytes stay with this replica (and its clones),
    /// so that reading them later does not depend on the journal, which may have moved on.
    pub fn journal_tail(
        &self,
        records: Vec<(journal::Record, Vec<u8>)>,
        newest: u64,
    ) -> Vec<(ReplicaFile, Arc<Vec<u8>>)> {
        self.journal_points(records, newest, false)
    }

    /// [`FileReplica::journal_tail`], and with `fine` the records at or before `newest` too (the
    /// fine points inside the layout's files), each verified (one that does not is left out).
    pub fn journal_points(
        &self,
        records: Vec<(journal::Record, Vec<u8>)>,
        newest: u64,
        fine: bool,
    ) -> Vec<(ReplicaFile, Arc<Vec<u8>>)> {
        let verified = |record: &journal::Record, bytes: &[u8]| {
            verify_ltx(bytes, String::new)
                .is_ok_and(|h| (h.min_txid, h.max_txid) == (record.min_txid, record.max_txid))
        };
        let mut found = Vec::new();
        let mut current = newest;
        for (record, bytes) in records {
            if record.max_txid <= current {
                if fine && record.max_txid <= newest && verified(&record, &bytes) {
                    found.push((record_file(&record), Arc::new(bytes)));
                }
                continue;
            }
            if record.min_txid > current + 1 {
                break;
            }
            if !verified(&record, &bytes) {
                tracing::warn!(journal = %journal::path(&self.root).display(), min_txid = record.min_txid, max_txid = record.max_txid, "a journal record does not verify; the journal ends before it");
                break;
            }
            current = record.max_txid;
            found.push((record_file(&record), Arc::new(bytes)));
        }
        let mut seen = self.journal_seen.lock().unwrap_or_else(|p| p.into_inner());
        // Kept across listings (a clone may plan from an earlier one), within twice a journal.
        if seen.values().map(|b| b.len() as u64).sum::<u64>() > 2 * journal::JOURNAL_BYTES {
            seen.clear();
        }
        for (f, b) in &found {
            seen.insert((f.min_txid, f.max_txid), b.clone());
        }
        drop(seen);
        found
    }

    /// Fsyncs the root, `ltx/` and every level's directory that exists.
    pub fn sync_dirs(&self) -> Result<()> {
        let ltx = self.root.join("ltx");
        for dir in [self.root.clone(), ltx.clone()] {
            if dir.is_dir() {
                sync_dir(&dir)?;
            }
        }
        if let Ok(entries) = fs::read_dir(&ltx) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    sync_dir(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Drops the journal records kept by [`FileReplica::journal_tail`].
    pub fn forget_journal(&self) {
        self.journal_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Reads a file's bytes (verify them with `ltx::Decoder` before applying anything). A journal
    /// record is read as a listing found it.
    pub fn read(&self, file: &ReplicaFile) -> Result<Vec<u8>> {
        if file.level == journal::JOURNAL_LEVEL {
            let key = (file.min_txid, file.max_txid);
            let seen = self
                .journal_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            if let Some(bytes) = seen {
                return Ok(bytes.as_ref().clone());
            }
            let located = self
                .segment_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            if let Some((path, record)) = located {
                return journal::read_record(&path, &record);
            }
            // A listing by another instance, or one whose locations were dropped.
            return journal::find_record(&self.root, file.min_txid, file.max_txid)?
                .ok_or_else(|| {
                    Error::io(
                        "read journal record",
                        journal::path(&self.root),
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "no record of txids {}-{} (its segment was removed: the layout holds it, or it was past the fine window)",
                                file.min_txid, file.max_txid
                            ),
                        ),
                    )
                });
        }
        let path = self.path_of(file.level, file.min_txid, file.max_txid);
        fs::read(&path).map_err(|e| Error::io("read replica file", &path, e))
    }

    /// Opens a file to read it at offsets (verify it before applying anything). An open file
    /// stays readable if pruning removes its name meanwhile, until the pool it went to empties
    /// it (see `Recycler`): the checksums then fail.
    pub fn open(&self, file: &ReplicaFile) -> Result<File> {
        let path = self.path_of(file.level, file.min_txid, file.max_txid);
        File::open(&path).map_err(|e| Error::io("open replica file", &path, e))
    }

    /// Removes the temporary files of `levels` and the files that do not verify (a cache after a
    /// machine crash: a name that survived without its bytes). Returns the LTX files removed.
    /// Only for a directory no other process writes.
    pub fn remove_unverified(&self, levels: &[u32]) -> Result<Vec<ReplicaFile>> {
        let mut removed = Vec::new();
        for &level in levels {
            let dir = self.level_dir(level);
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| n.ends_with(".tmp"))
                    {
                        fs::remove_file(entry.path())
                            .map_err(|e| Error::io("delete temporary file", entry.path(), e))?;
                    }
                }
            }
            for f in self.list(level)? {
                // Streamed: a snapshot in the cache can be as large as the database.
                let Ok(file) = File::open(self.path_of(level, f.min_txid, f.max_txid)) else {
                    continue;
                };
                let ok = verify_ltx(file, String::new)
                    .is_ok_and(|h| (h.min_txid, h.max_txid) == (f.min_txid, f.max_txid));
                if !ok {
                    self.delete(&f)?;
                    removed.push(f);
                }
            }
        }
        Ok(removed)
    }

    /// Removes a file; a file already gone is not an error.
    pub fn delete(&self, file: &ReplicaFile) -> Result<()> {
        // A cache's files only through `retire`: an uploader may still be copying one.
        self.remove(file, self.durable)
    }

    /// Removes a cache's file that every replica already holds, so that no uploader reads it
    /// again, into the pool when there is one (see `Recycler`).
    pub fn retire(&self, file: &ReplicaFile) -> Result<()> {
        self.remove(file, true)
    }

    fn remove(&self, file: &ReplicaFile, into_pool: bool) -> Result<()> {
        let path = self.path_of(file.level, file.min_txid, file.max_txid);
        let deleted = match &self.recycler {
            Some(r) if into_pool => r.give(&path),
            _ => fs::remove_file(&path),
        };
        match deleted {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete replica file", &path, e)),
        }
    }
}

/// Fails unless `file` still has the size and change time of `before`, and `read` bytes of it
/// were read.
pub(crate) fn unchanged(file: &File, before: &fs::Metadata, read: u64, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let after = file
        .metadata()
        .map_err(|e| Error::io("read ltx file size", path, e))?;
    let same = read == before.len()
        && after.len() == before.len()
        && (after.ctime(), after.ctime_nsec()) == (before.ctime(), before.ctime_nsec());
    if same {
        Ok(())
    } else {
        Err(Error::io(
            "copy ltx file",
            path,
            std::io::Error::other("the file changed while it was read"),
        ))
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync replica directory", dir, e))
}

/// What some filesystems answer a hard link with when they have none.
const EPERM: i32 = 1;

/// A name of its own for the file that becomes `path`: two writers never share a temporary file
/// (nor see it as an LTX file).
fn temp_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("ltx.{}.{n}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Replica;
    use std::os::unix::fs::FileExt;

    fn ltx_file(txid: u64) -> Vec<u8> {
        let header = ltx::Header::new(512, 1, txid, txid, 1_000 * txid as i64);
        let mut enc = ltx::Encoder::new(Vec::new(), header).expect("header");
        enc.encode_page(1, &[txid as u8; 512]).expect("page");
        enc.finish(0).expect("finish").0
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_copy_of_a_file_that_changed_while_it_was_read_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.ltx");
        fs::write(&path, ltx_file(1)).expect("write");
        let file = File::open(&path).expect("open");
        let before = file.metadata().expect("meta");
        unchanged(&file, &before, before.len(), &path).expect("unchanged");
        assert!(
            unchanged(&file, &before, before.len() - 1, &path).is_err(),
            "read short"
        );
        File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .expect("empty it");
        assert!(
            unchanged(&file, &before, before.len(), &path).is_err(),
            "emptied"
        );
    }

    /// A cache and a replica sharing a pool that reuses at once, as the engine wires them.
    fn wired() -> (tempfile::TempDir, Arc<Recycler>, FileReplica, FileReplica) {
        let dir = tempfile::tempdir().expect("tempdir");
        let recycler = Arc::new(
            Recycler::open(dir.path().join("recycle"))
                .expect("pool")
                .reusing_after(Duration::ZERO),
        );
        let cache = FileReplica::cache(dir.path().join("local")).with_recycler(recycler.clone());
        let replica = FileReplica::new(dir.path().join("replica")).with_recycler(recycler.clone());
        (dir, recycler, cache, replica)
    }

    /// The engine's wiring: a file the replica still links to is deleted from the cache but
    /// kept whole; once the replica deletes it too, its inode holds the cache's next file.
    #[test]
    fn deleted_files_come_back_as_the_caches_next_files_never_while_linked() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, recycler, cache, replica) = wired();
        let first = cache.put(0, &ltx_file(1), None).expect("put");
        let linked = replica
            .put_link(0, &cache, &first)
            .expect("link")
            .expect("same filesystem");
        let ino = fs::metadata(cache.path_of(0, 1, 1)).expect("meta").ino();
        cache.delete(&first).expect("delete");
        assert!(
            recycler.is_empty(),
            "a cache's deletions never go to the pool"
        );
        assert_eq!(replica.read(&linked).expect("read"), ltx_file(1));
        replica.delete(&linked).expect("delete");
        assert_eq!(recycler.len(), 1);
        cache.prepare(0).expect("prepare");
        let second = cache.put(0, &ltx_file(2), None).expect("put");
        let path = cache.path_of(0, 2, 2);
        assert_eq!(
            fs::metadata(&path).expect("meta").ino(),
            ino,
            "the same inode"
        );
        assert_eq!(cache.read(&second).expect("read"), ltx_file(2));
        assert!(replica.list(0).expect("list").is_empty());
        assert!(recycler.is_empty());
        // The cache's own deletions are never reused: an uploader may still be copying the file.
        cache.delete(&second).expect("delete");
        assert!(recycler.is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn a_cache_file_every_replica_holds_is_retired_into_the_pool_unless_linked() {
        use std::os::unix::fs::MetadataExt;
        let (_dir, recycler, cache, replica) = wired();
        let first = cache.put(0, &ltx_file(1), None).expect("put");
        let ino = fs::metadata(cache.path_of(0, 1, 1)).expect("meta").ino();
        cache.retire(&first).expect("retire");
        assert!(!cache.path_of(0, 1, 1).exists());
        assert_eq!(recycler.len(), 1);
        cache.prepare(0).expect("prepare");
        let second = cache.put(0, &ltx_file(2), None).expect("put");
        assert_eq!(
            fs::metadata(cache.path_of(0, 2, 2)).expect("meta").ino(),
            ino,
            "the retired file's inode holds the next file"
        );
        assert_eq!(cache.read(&second).expect("read"), ltx_file(2));
        // A file a replica links to keeps its bytes under the replica's name.
        let linked = replica
            .put_link(0, &cache, &second)
            .expect("link")
            .expect("same filesystem");
        cache.retire(&second).expect("retire");
        cache.prepare(0).expect("prepare");
        let third = cache.put(0, &ltx_file(3), None).expect("put");
        assert_ne!(
            fs::metadata(cache.path_of(0, 3, 3)).expect("meta").ino(),
            ino,
            "a linked file is never reused"
        );
        assert_eq!(cache.read(&third).expect("read"), ltx_file(3));
        assert_eq!(replica.read(&linked).expect("read"), ltx_file(2));
    }

    #[test]
    fn a_cache_writes_into_the_file_it_prepared_and_removes_an_unused_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = FileReplica::cache(dir.path());
        let level0 = dir.path().join("ltx").join("0");
        cache.prepare(0).expect("prepare");
        let spare = names(&level0);
        assert!(
            matches!(spare.as_slice(), [n] if n.ends_with(".tmp")),
            "{spare:?}"
        );
        assert!(
            cache.list(0).expect("list").is_empty(),
            "a spare is no file"
        );
        // Preparing again keeps the one that is ready.
        cache.prepare(0).expect("prepare");
        assert_eq!(names(&level0), spare);
        let written = cache.put(0, &ltx_file(1), None).expect("put");
        assert_eq!(
            names(&level0),
            [ltx::file_name(1, 1)],
            "the spare became the file"
        );
        assert_eq!(
            cache.read(&written).expect("read"),
            ltx_file(1),
            "its bytes are the file's"
        );
        // With no spare ready, a put creates its own file.
        cache.put(0, &ltx_file(2), None).expect("put");
        assert_eq!(cache.list(0).expect("list").len(), 2);
        // A spare that is never used goes with the last handle on the cache.
        cache.prepare(0).expect("prepare");
        let clone = cache.clone();
        drop(cache);
        assert_eq!(names(&level0).len(), 3, "a clone still holds the spare");
        drop(clone);
        assert_eq!(names(&level0), [ltx::file_name(1, 1), ltx::file_name(2, 2)]);
    }

    /// An LTX file of TXIDs `min..=max` (one page), made at `max` seconds.
    fn ltx_range(min: u64, max: u64) -> Vec<u8> {
        let header = ltx::Header::new(512, 1, min, max, 1_000 * max as i64);
        let mut enc = ltx::Encoder::new(Vec::new(), header).expect("header");
        enc.encode_page(1, &[max as u8; 512]).expect("page");
        enc.finish(0).expect("finish").0
    }

    #[test]
    fn a_fine_log_restores_every_point_inside_the_layouts_merged_files() {
        use crate::restore::{Target, plan};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let r = FileReplica::new(root);
        // The journal: TXID t listed at t s - 0.5 s and made at t s, in laps of 2 KiB.
        let mut w = journal::Writer::open(root, 2 << 10).expect("journal");
        for t in 1..=40u64 {
            let f = ltx_file(t);
            if w.room() < journal::record_len(f.len() as u64) {
                w.new_lap().expect("lap");
            }
            w.append(&[(&f, 1_000 * t as i64 - 500)]).expect("append");
        }
        assert!(journal::segments(root).expect("segments").len() >= 3);
        // The layout: the snapshot, then a file merging each ten TXIDs, up to 31.
        r.put(0, &ltx_file(1), Some(500)).expect("put");
        for (a, b) in [(2, 11), (12, 21), (22, 31)] {
            r.put(0, &ltx_range(a, b), Some(1_000 * a as i64 - 500))
                .expect("put");
        }
        let replica = Replica::File(r.clone());
        for t in 1..=40 {
            let p = plan(&replica, Target::Txid(t)).expect("a fine point");
            assert_eq!(p.txid, t);
        }
        assert_eq!(plan(&replica, Target::Latest).expect("latest").txid, 40);
        let inside = replica
            .list_restorable()
            .expect("list")
            .iter()
            .filter(|f| f.level == journal::JOURNAL_LEVEL && f.max_txid <= 31)
            .count();
        assert_eq!(
            inside, 0,
            "the latest state lists no point inside the layout"
        );
        // Inside a merged file, between two points: exact, from the fine points.
        let p = plan(&replica, Target::Time(15_200)).expect("exact");
        assert_eq!((p.txid, p.point_ms), (15, 15_000));
        assert!(p.files.iter().any(|f| f.0 == journal::JOURNAL_LEVEL));
        // Among TXID 16's commits (listed at 15.5 s, made at 16 s): refused, never older.
        let e = plan(&replica, Target::Time(15_700)).expect_err("inexact");
        assert!(e.to_string().contains("txid 15"), "{e}");
        // A segment past the fine window goes once the layout holds it, the oldest first.
        assert_eq!(
            journal::remove_segments_aged(root, 0, i64::MAX).expect("remove"),
            0,
            "never one the layout lacks"
        );
        let before = journal::segments(root).expect("segments");
        let removed = journal::remove_segments_aged(root, 31, 12_000).expect("remove");
        let after = journal::segments(root).expect("segments");
        // The record after TXID 11 was listed at 11.5 s, the one after 12 at 12.5 s.
        let aged = before.iter().take_while(|(_, last, _)| *last <= 11).count();
        assert!(aged >= 1);
        assert_eq!(removed, aged);
        assert_eq!(after[..], before[aged..]);
        for t in [25, 31, 35] {
            assert_eq!(plan(&replica, Target::Txid(t)).expect("still").txid, t);
        }
    }

    #[test]
    fn the_journal_tail_continues_the_layout_and_ends_before_a_torn_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = FileReplica::new(dir.path());
        r.put(0, &ltx_file(1), None).expect("put");
        let mut w = journal::Writer::open(dir.path(), 64 << 10).expect("journal");
        let files: Vec<Vec<u8>> = (1..=4).map(ltx_file).collect();
        w.append(&files.iter().map(|f| (f.as_slice(), 0)).collect::<Vec<_>>())
            .expect("append");
        let tail = |r: &FileReplica| -> Vec<u64> {
            let records = r.journal_records(0).expect("records");
            let newest = r.newest_txid();
            r.journal_tail(records, newest)
                .iter()
                .map(|(f, _)| f.max_txid)
                .collect()
        };
        // TXID 1 is in the layout: the tail is what continues it.
        assert_eq!(tail(&r), vec![2, 3, 4]);
        // A bit of TXID 3's pages flipped (its head still checks): the tail ends before it.
        let third = journal::scan(dir.path()).expect("scan")[2].clone();
        let file = File::options()
            .write(true)
            .open(journal::path(dir.path()))
            .expect("open");
        file.write_all_at(&[0x5a], third.offset + third.len - 20)
            .expect("flip");
        assert_eq!(tail(&r), vec![2]);
        assert_eq!(
            Replica::File(r.clone())
                .list_restorable()
                .expect("list")
                .iter()
                .map(|f| (f.level, f.max_txid))
                .collect::<Vec<_>>(),
            vec![(0, 1), (journal::JOURNAL_LEVEL, 2)]
        );
    }

    #[test]
    fn newest_txid_reads_every_level_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = FileReplica::new(dir.path());
        assert_eq!(r.newest_txid(), 0, "no directory yet");
        r.put(0, &ltx_file(3), None).expect("put");
        r.put(9, &ltx_file(7), None).expect("put");
        r.put(0, &ltx_file(5), None).expect("put");
        fs::write(
            r.level_dir(0)
                .join("0000000000000001-0000000000000063.ltx.1.tmp"),
            b"",
        )
        .expect("temp");
        assert_eq!(r.newest_txid(), 7);
    }

    #[test]
    fn a_durable_replica_prepares_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let replica = FileReplica::new(dir.path());
        replica.prepare(0).expect("prepare");
        assert!(!dir.path().join("ltx").exists());
    }
}
