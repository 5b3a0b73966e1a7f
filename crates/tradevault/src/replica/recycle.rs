//! Files a database's file replicas delete (and its local log's files every replica holds), kept
//! emptied for its local log's next files.
//!
//! On ext4 without a journal (this project's benchmark machine), a new inode is never one freed
//! in the last 60 s (6 minutes while its inode-table block is dirty): each create steps over
//! every such inode, one buffer lookup each. A replica an hour old deletes a minute of level-0
//! files at a time (its per-second merges), as many inodes as the local log creates; measured at
//! 2,000 commits/s, the sidecar's CPU went from 13.5% of a core to 20-29% once that began, nearly
//! all of it in those steps. Reusing the inodes allocates none.
//!
//! What keeps a reused inode from ever showing wrong bytes under an LTX name:
//! - A durable replica's deletions come here, and of the local log's own only the files every
//!   replica already holds (no uploader reads those again), never a size-bound prune's: an
//!   uploader may still be copying such a file, and relies on an open file keeping its bytes.
//! - A file is renamed into the pool first, so no listing sees it again, and left whole.
//!   Files are emptied in batches (past [`PENDING_MAX`] files or [`PENDING_BYTES`]), each only
//!   once the directories they left were fsynced, and only if the open file has no other name (a
//!   local log file a replica links to stays whole): after a machine crash, no old name can point
//!   at an emptied or reused inode (the guarantee ext4's own delay gives).
//! - An emptied file is handed out [`REUSE_AFTER`] later. A reader that had it open reads its
//!   bytes until it is emptied, then sees it end early, and its checksums fail: nothing is applied
//!   from it. Our own copies to another filesystem or S3 check that the file did not change
//!   while they read it (`FileReplica::put_file`, `S3Replica::put_file`).
//! - Files an earlier run left in the pool are deleted, not reused: where their old names went
//!   is not known. Names carry the process and the pool's instance, so two pools never share one.
//! - Only regular files are taken in (a symbolic link is deleted, not followed).
//!
//! The local log's own names are not fsynced when it deletes them; after a crash one may name a
//! reused inode, and the engine's startup check (`FileReplica::remove_unverified`: the header
//! must match the name) removes it.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most files kept: beyond, they are deleted. A replica deletes about a minute of shipments at
/// once (at most about 7,500: they are at least 8 ms apart), and in sync mode the local log
/// retires up to a file per commit, each kept [`REUSE_AFTER`] before it comes back: 20,000 at
/// 2,000 commits/s.
const POOL_MAX: usize = 32_768;
/// Files renamed into the pool and not yet emptied: at most this many, or this many bytes.
const PENDING_MAX: usize = 1_024;
const PENDING_BYTES: u64 = 32 << 20;
/// How long an emptied file stays in the pool before it is reused.
pub const REUSE_AFTER: Duration = Duration::from_secs(10);

/// A pool of files, named by number, in one directory, shared by a local log and its file
/// replicas. Only one engine uses a database's local log at a time.
#[derive(Debug)]
pub struct Recycler {
    dir: PathBuf,
    /// The start of its files' names: `<pid>.<instance>.`.
    prefix: String,
    reuse_after: Duration,
    state: Mutex<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    /// Emptied, oldest first: (number, when emptied).
    kept: VecDeque<(u64, Instant)>,
    /// Renamed in, not yet emptied: (number, the directory it left).
    pending: Vec<(u64, PathBuf)>,
    pending_bytes: u64,
    next: u64,
}

impl Recycler {
    /// An empty pool in `dir` (created if missing; what an earlier run left there is deleted).
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Recycler> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        Ok(Recycler {
            dir,
            prefix: format!("{}.{instance}.", std::process::id()),
            reuse_after: REUSE_AFTER,
            state: Mutex::default(),
        })
    }

    /// The same pool, reusing files `after` they were emptied (tests).
    #[cfg(test)]
    pub(crate) fn reusing_after(self, after: Duration) -> Recycler {
        Recycler {
            reuse_after: after,
            ..self
        }
    }

    /// Takes `path` in, or deletes it (the pool is full, it has another name, or it is on another
    /// filesystem). Either way `path` is gone; a missing file is not an error.
    pub fn give(&self, path: &Path) -> std::io::Result<()> {
        let number = {
            let mut pool = self.lock();
            (pool.kept.len() + pool.pending.len() < POOL_MAX).then(|| {
                pool.next += 1;
                pool.next
            })
        };
        // A file with another name (a local log file a replica links to) would only be deleted
        // from the pool later: delete it now, without the rename.
        let regular = fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_file() && m.nlink() == 1);
        if let (Some(number), Some(meta)) = (number, regular) {
            let kept = self.path_of(number);
            if fs::rename(path, &kept).is_ok() {
                let len = meta.len();
                let from = path.parent().map(Path::to_owned).unwrap_or_default();
                let full = {
                    let mut pool = self.lock();
                    pool.pending.push((number, from));
                    pool.pending_bytes += len;
                    pool.pending.len() >= PENDING_MAX || pool.pending_bytes >= PENDING_BYTES
                };
                if full {
                    self.empty_pending();
                }
                return Ok(());
            }
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Fsyncs the directories the pending files left, then empties each that has no other name
    /// (deletes the others' pool names).
    fn empty_pending(&self) {
        let pending = {
            let mut pool = self.lock();
            pool.pending_bytes = 0;
            std::mem::take(&mut pool.pending)
        };
        let dirs: BTreeSet<&PathBuf> = pending.iter().map(|(_, from)| from).collect();
        let synced: BTreeSet<&PathBuf> = dirs
            .into_iter()
            .filter(|d| File::open(d).and_then(|f| f.sync_all()).is_ok())
            .collect();
        for (number, from) in &pending {
            let path = self.path_of(*number);
            // Only this pool names files so: still the regular file it took in.
            let emptied = synced.contains(from)
                && fs::symlink_metadata(&path).is_ok_and(|m| m.is_file())
                && File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        let m = f.metadata()?;
                        if !(m.is_file() && m.nlink() == 1) {
                            return Ok(false);
                        }
                        f.set_len(0)?;
                        Ok(true)
                    })
                    .unwrap_or(false);
            if emptied {
                self.lock().kept.push_back((*number, Instant::now()));
            } else {
                // Another name keeps it whole; or its old name may still be on disk.
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// An emptied file from the pool, emptied at least [`REUSE_AFTER`] ago, open for reading and
    /// writing, with its path (in the pool's directory: rename it where it belongs). With
    /// `settle` (when nothing waits), first empties the files still pending if none is emptied.
    pub fn take(&self, settle: bool) -> Option<(PathBuf, File)> {
        if settle {
            let (none_kept, some_pending) = {
                let pool = self.lock();
                (pool.kept.is_empty(), !pool.pending.is_empty())
            };
            if none_kept && some_pending {
                self.empty_pending();
            }
        }
        let before = Instant::now().checked_sub(self.reuse_after)?;
        loop {
            let number = {
                let mut pool = self.lock();
                if pool.kept.front().is_none_or(|(_, at)| *at > before) {
                    return None;
                }
                pool.kept.pop_front()?.0
            };
            let path = self.path_of(number);
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

    /// Files in the pool, emptied or not.
    pub fn len(&self) -> usize {
        let pool = self.lock();
        pool.kept.len() + pool.pending.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn path_of(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{}{number}", self.prefix))
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

        let linked = dir.path().join("b.ltx");
        let other = dir.path().join("b-link.ltx");
        fs::write(&linked, b"still needed").expect("write");
        fs::hard_link(&linked, &other).expect("link");
        pool.give(&linked).expect("give");
        assert!(!linked.exists());
        assert_eq!(
            pool.len(),
            1,
            "a file with another name is deleted, not taken in"
        );

        // One that gains another name while it waits to be emptied is let go of then.
        let late = dir.path().join("c.ltx");
        let late_other = dir.path().join("c-link.ltx");
        fs::write(&late, b"needed later").expect("write");
        pool.give(&late).expect("give");
        let number = pool.lock().pending.last().expect("pending").0;
        fs::hard_link(pool.path_of(number), &late_other).expect("link");
        assert_eq!(pool.len(), 2, "both renamed in, neither emptied yet");

        pool.give(&dir.path().join("missing.ltx"))
            .expect("a missing file is no error");

        // The first take empties the pending files, which are reused only REUSE_AFTER later.
        assert!(pool.take(true).is_none(), "not before REUSE_AFTER");
        assert_eq!(fs::read(&other).expect("read"), b"still needed");
        assert_eq!(
            fs::read(&late_other).expect("read"),
            b"needed later",
            "a file with another name is left whole"
        );
        assert_eq!(pool.len(), 1, "and let go of");
        let pool = pool.reusing_after(Duration::ZERO);
        let (path, file) = pool.take(false).expect("one kept");
        assert_eq!(file.metadata().expect("meta").ino(), ino, "the same inode");
        assert_eq!(file.metadata().expect("meta").len(), 0, "emptied");
        assert!(path.starts_with(dir.path().join("pool")));
        assert!(pool.take(true).is_none());
    }

    #[test]
    fn a_symbolic_link_is_deleted_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Recycler::open(dir.path().join("pool")).expect("pool");
        let target = dir.path().join("target");
        fs::write(&target, b"someone's bytes").expect("write");
        let link = dir.path().join("a.ltx");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        pool.give(&link).expect("give");
        assert!(fs::symlink_metadata(&link).is_err(), "the link is gone");
        assert!(pool.is_empty());
        assert_eq!(fs::read(&target).expect("read"), b"someone's bytes");
    }

    #[test]
    fn files_are_emptied_in_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Recycler::open(dir.path().join("pool"))
            .expect("pool")
            .reusing_after(Duration::ZERO);
        for i in 0..PENDING_MAX {
            let f = dir.path().join(format!("{i}.ltx"));
            fs::write(&f, b"bytes").expect("write");
            pool.give(&f).expect("give");
        }
        assert_eq!(pool.lock().pending.len(), 0, "the batch was emptied");
        assert_eq!(pool.lock().kept.len(), PENDING_MAX);
        let (_, file) = pool.take(false).expect("one");
        assert_eq!(file.metadata().expect("meta").len(), 0);
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
