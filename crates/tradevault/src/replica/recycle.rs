//! Files a database's file replicas delete, kept emptied for its local log's next files.
//!
//! On ext4 without a journal (this project's benchmark machine), a new inode is never one freed
//! in the last 60 s (6 minutes while its inode-table block is dirty): each create steps over
//! every such inode, one buffer lookup each. A replica an hour old deletes a minute of level-0
//! files at a time (its per-second merges), as many inodes as the local log creates; measured at
//! 2,000 commits/s, the sidecar's CPU went from 13.5% of a core to 20-29% once that began, nearly
//! all of it in those steps. Reusing the inodes allocates none.
//!
//! What keeps a reused inode from ever showing wrong bytes under an LTX name:
//! - Only a durable replica's deletions come here, never the local log's own: an uploader may
//!   still be copying a local file it pruned (a size-bound prune), and relies on an open file
//!   keeping its bytes.
//! - A file is renamed into the pool first, then checked on the open file to have no other name
//!   (a local log file a replica links to stays whole), and only then emptied: no listing ever
//!   sees an emptied file under an LTX name, and no check races a link.
//! - It is handed out only after [`REUSE_AFTER`], and only once the directory it left was fsynced
//!   since: after a machine crash no old name can still point at it (the guarantee ext4's own
//!   delay gives). A reader that had it open sees it end early, well before it holds other
//!   bytes, and its checksums fail: nothing is applied from it.
//! - Files an earlier run left in the pool are deleted, not reused: where their old names went
//!   is not known.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most files kept: beyond, they are deleted. A replica deletes about a minute of shipments at
/// once (at most about 7,500: they are at least 8 ms apart), which the local log takes back one
/// by one.
const POOL_MAX: usize = 16_384;
/// How long a file stays in the pool before it is reused.
pub const REUSE_AFTER: Duration = Duration::from_secs(10);

/// A pool of empty files, named by number, in one directory, shared by a local log and its file
/// replicas. Only one engine uses a database's local log at a time.
#[derive(Debug)]
pub struct Recycler {
    dir: PathBuf,
    reuse_after: Duration,
    state: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    /// Oldest first.
    kept: VecDeque<Kept>,
    next: u64,
    /// When each directory files left was last fsynced.
    synced: HashMap<PathBuf, Instant>,
}

#[derive(Debug)]
struct Kept {
    number: u64,
    given: Instant,
    /// The directory it left.
    from: PathBuf,
}

impl Recycler {
    /// An empty pool in `dir` (created if missing; what an earlier run left there is deleted).
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Recycler> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Recycler {
            dir,
            reuse_after: REUSE_AFTER,
            state: Mutex::default(),
        })
    }

    /// The same pool, reusing files `after` they were given (tests).
    #[cfg(test)]
    pub(crate) fn reusing_after(self, after: Duration) -> Recycler {
        Recycler {
            reuse_after: after,
            ..self
        }
    }

    /// Takes `path` in, emptied, or deletes it (it has another name, the pool is full, or it is
    /// on another filesystem). Either way `path` is gone; a missing file is not an error.
    pub fn give(&self, path: &Path) -> std::io::Result<()> {
        let number = {
            let mut pool = self.lock();
            (pool.kept.len() < POOL_MAX).then(|| {
                pool.next += 1;
                pool.next
            })
        };
        if let Some(number) = number {
            let kept = self.dir.join(number.to_string());
            if fs::rename(path, &kept).is_ok() {
                let alone = File::options()
                    .write(true)
                    .open(&kept)
                    .and_then(|f| {
                        let m = f.metadata()?;
                        let alone = m.is_file() && m.nlink() == 1;
                        if alone {
                            f.set_len(0)?;
                        }
                        Ok(alone)
                    })
                    .unwrap_or(false);
                if alone {
                    let from = path.parent().map(Path::to_owned).unwrap_or_default();
                    self.lock().kept.push_back(Kept {
                        number,
                        given: Instant::now(),
                        from,
                    });
                } else {
                    // Its other name keeps it whole.
                    let _ = fs::remove_file(&kept);
                }
                return Ok(());
            }
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// An empty file from the pool, given at least [`REUSE_AFTER`] ago, open for reading and
    /// writing, with its path (in the pool's directory: rename it where it belongs).
    pub fn take(&self) -> Option<(PathBuf, File)> {
        let before = Instant::now().checked_sub(self.reuse_after)?;
        loop {
            let kept = {
                let mut pool = self.lock();
                if pool.kept.front().is_none_or(|k| k.given > before) {
                    return None;
                }
                pool.kept.pop_front()?
            };
            // The directory it left must no longer name it, even after a machine crash.
            let synced = self.lock().synced.get(&kept.from).copied();
            if synced.is_none_or(|at| at < kept.given) {
                let at = Instant::now();
                if File::open(&kept.from).and_then(|d| d.sync_all()).is_err() {
                    let _ = fs::remove_file(self.dir.join(kept.number.to_string()));
                    continue;
                }
                self.lock().synced.insert(kept.from.clone(), at);
            }
            let path = self.dir.join(kept.number.to_string());
            match File::options().read(true).write(true).open(&path) {
                Ok(file)
                    if file
                        .metadata()
                        .is_ok_and(|m| m.nlink() == 1 && m.len() == 0) =>
                {
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
        self.lock().kept.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_alone_is_emptied_and_reused_later_one_with_another_name_is_left_whole() {
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

        assert!(pool.take().is_none(), "not before REUSE_AFTER");
        let pool = pool.reusing_after(Duration::ZERO);
        let (path, file) = pool.take().expect("one kept");
        assert_eq!(file.metadata().expect("meta").ino(), ino, "the same inode");
        assert_eq!(file.metadata().expect("meta").len(), 0, "emptied");
        assert!(path.starts_with(dir.path().join("pool")));
        assert!(pool.take().is_none());
    }

    #[test]
    fn a_pool_that_cannot_take_a_file_deletes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Recycler::open(dir.path().join("pool")).expect("pool");
        fs::remove_dir(dir.path().join("pool")).expect("the pool's directory goes");
        let file = dir.path().join("a.ltx");
        fs::write(&file, b"x").expect("write");
        pool.give(&file).expect("give");
        assert!(!file.exists(), "deleted, not leaked");
        assert!(pool.is_empty());
    }

    #[test]
    fn what_an_earlier_run_left_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.ltx");
        fs::write(&file, b"x").expect("write");
        Recycler::open(dir.path().join("pool"))
            .expect("pool")
            .give(&file)
            .expect("give");
        let again = Recycler::open(dir.path().join("pool")).expect("pool");
        assert!(again.is_empty());
        assert_eq!(
            fs::read_dir(dir.path().join("pool")).expect("dir").count(),
            0
        );
    }
}
