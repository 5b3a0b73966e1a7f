//! A replica in a local directory: `<root>/ltx/<level>/<min>-<max>.ltx`, each file's mtime set to
//! its header time (Litestream's restore reads creation times from mtimes).

use std::fs::{self, File, FileTimes};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::ReplicaFile;
use crate::error::{Error, Result};

/// A replica in a directory.
#[derive(Debug, Clone)]
pub struct FileReplica {
    root: PathBuf,
}

impl FileReplica {
    /// A replica rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> FileReplica {
        FileReplica { root: root.into() }
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

    /// Verifies `bytes` as an LTX file, then writes it so that it appears only when complete:
    /// a temporary name, fsync, rename, fsync of the directory; its mtime is its header time.
    pub fn put(&self, level: u32, bytes: &[u8]) -> Result<ReplicaFile> {
        let (header, _) = ltx::Decoder::new(bytes)
            .and_then(|d| d.finish())
            .map_err(|source| Error::Ltx {
                name: format!("file for level {level}"),
                source,
            })?;
        let dir = self.level_dir(level);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| Error::io("create replica directory", &dir, e))?;
            // New directories are durable only once their parents are synced: the root, `ltx`, the level.
            for d in [self.root.as_path(), &self.root.join("ltx")] {
                File::open(d)
                    .and_then(|h| h.sync_all())
                    .map_err(|e| Error::io("fsync replica directory", d, e))?;
            }
        }
        let path = self.path_of(level, header.min_txid, header.max_txid);
        // A name of its own: two writers never share a temporary file (nor see it as an LTX file).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("ltx.{}.{n}.tmp", std::process::id()));
        let written = File::create(&tmp)
            .map_err(|e| Error::io("create replica file", &tmp, e))
            .and_then(|mut f| {
                f.write_all(bytes)
                    .map_err(|e| Error::io("write replica file", &tmp, e))?;
                let created = UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(header.timestamp_ms).unwrap_or(0));
                f.set_times(FileTimes::new().set_modified(created).set_accessed(created))
                    .map_err(|e| Error::io("set replica file time", &tmp, e))?;
                f.sync_all()
                    .map_err(|e| Error::io("fsync replica file", &tmp, e))
            });
        if let Err(e) = written {
            // A full disk must not fill up further with half-written files.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename replica file", &path, e))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync replica directory", &dir, e))?;
        Ok(ReplicaFile {
            level,
            min_txid: header.min_txid,
            max_txid: header.max_txid,
            size: bytes.len() as u64,
            created_at_ms: header.timestamp_ms,
        })
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

    /// Reads a file's bytes (verify them with `ltx::Decoder` before applying anything).
    pub fn read(&self, file: &ReplicaFile) -> Result<Vec<u8>> {
        let path = self.path_of(file.level, file.min_txid, file.max_txid);
        fs::read(&path).map_err(|e| Error::io("read replica file", &path, e))
    }

    /// Removes a file; a file already gone is not an error.
    pub fn delete(&self, file: &ReplicaFile) -> Result<()> {
        let path = self.path_of(file.level, file.min_txid, file.max_txid);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete replica file", &path, e)),
        }
    }
}
