//! Files a database's local log and its file replicas no longer need, kept emptied for the local
//! log's next files instead of being deleted.
//!
//! On ext4 without a journal (this project's benchmark machine), a new inode is never one freed
//! in the last 60 s (6 minutes while its inode-table block is dirty): each create steps over
//! every such inode, one buffer lookup each. A replica an hour old deletes a minute of level-0
//! files at a time (its per-second merges); measured at 2,000 commits/s, the sidecar's CPU rose
//! from 13.5% of a core to 20-29% once that began, nearly all of it in those steps. Reusing the
//! inodes allocates none.
//!
//! A file is taken in only while it has no other name (a local log file that a replica still
//! links to stays whole), by a rename into the pool first, so that no reader ever lists an
//! emptied file under an LTX name; then it is truncated. A reader that opened it before sees it
//! end early, and its checksums fail: nothing is applied from it.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most files kept: beyond, they are deleted. A replica deletes at most a minute's shipments
/// at once (about 7,500: they are at least 8 ms apart), which the local log then takes back
/// one by one.
const POOL_MAX: usize = 16_384;

/// A pool of empty files, named by number, in one directory, shared by a local log and its file
/// replicas. Only one engine uses a database's local log at a time.
#[derive(Debug)]
pub struct Recycler {
    dir: PathBuf,
    pool: Mutex<Vec<u64>>,
    next: AtomicU64,
}

impl Recycler {
    /// A pool in `dir` (created if missing), holding what an earlier run left there.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Recycler> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut pool = Vec::new();
        for entry in fs::read_dir(&dir)?.flatten() {
            let number = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok());
            match number {
                Some(n)
                    if pool.len() < POOL_MAX && entry.file_type().is_ok_and(|t| t.is_file()) =>
                {
                    pool.push(n)
                }
                _ => {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let next = pool.iter().max().map_or(0, |n| n + 1);
        Ok(Recycler {
            dir,
            pool: Mutex::new(pool),
            next: AtomicU64::new(next),
        })
    }

    /// Takes `path` in, emptied, or deletes it (it has another name, the pool is full, or it is
    /// on another filesystem). Either way `path` is gone; a missing file is not an error.
    pub fn give(&self, path: &Path) -> std::io::Result<()> {
        let alone = match fs::symlink_metadata(path) {
            Ok(m) => m.is_file() && m.nlink() == 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let room = self.lock().len() < POOL_MAX;
        if alone && room {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let kept = self.dir.join(n.to_string());
            match fs::rename(path, &kept) {
                Ok(()) => {
                    match File::options().write(true).truncate(true).open(&kept) {
                        Ok(_) => self.lock().push(n),
                        Err(_) => {
                            let _ = fs::remove_file(&kept);
                        }
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // Another filesystem, most likely: deleted below.
                Err(_) => {}
            }
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// An empty file from the pool, open for reading and writing, with its path (in the pool's
    /// directory: rename it where it belongs).
    pub fn take(&self) -> Option<(PathBuf, File)> {
        loop {
            let path = self.dir.join(self.lock().pop()?.to_string());
            let opened = File::options()
                .read(true)
                .write(true)
                .truncate(true)
                .open(&path);
            match opened {
                Ok(file) if file.metadata().is_ok_and(|m| m.nlink() == 1) => {
                    return Some((path, file));
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    /// Files in the pool.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_alone_is_emptied_and_reused_one_with_another_name_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Recycler::open(dir.path().join("pool")).expect("pool");
        let alone = dir.path().join("a.ltx");
        fs::write(&alone, b"old bytes").expect("write");
        let ino = fs::metadata(&alone).expect("meta").ino();
        pool.give(&alone).expect("give");
        assert!(!alone.exists(), "its name is gone");
        assert_eq!(pool.len(), 1);

        let linked = dir.path().join("b.ltx");
        let other = dir.path().join("b-link.ltx");
        fs::write(&linked, b"still needed").expect("write");
        fs::hard_link(&linked, &other).expect("link");
        pool.give(&linked).expect("give");
        assert!(!linked.exists());
        assert_eq!(
            fs::read(&other).expect("read"),
            b"still needed",
            "a file with another name is left whole"
        );
        assert_eq!(pool.len(), 1, "and not taken in");

        pool.give(&dir.path().join("missing.ltx"))
            .expect("a missing file is no error");

        let (path, file) = pool.take().expect("one kept");
        assert_eq!(file.metadata().expect("meta").ino(), ino, "the same inode");
        assert_eq!(file.metadata().expect("meta").len(), 0, "emptied");
        assert!(path.starts_with(dir.path().join("pool")));
        assert!(pool.take().is_none());
    }

    #[test]
    fn a_pool_reopened_keeps_what_was_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.ltx");
        fs::write(&file, b"x").expect("write");
        Recycler::open(dir.path().join("pool"))
            .expect("pool")
            .give(&file)
            .expect("give");
        let again = Recycler::open(dir.path().join("pool")).expect("pool");
        assert_eq!(again.len(), 1);
        assert!(again.take().is_some());
    }
}
