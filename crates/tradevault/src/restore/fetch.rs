//! [`Fetcher`]: downloads a plan's files ahead of the one being applied, on a few threads, and
//! hands them out in plan order.
//!
//! Memory and disk are bounded: a download starts only while the files downloaded but not yet
//! applied, with it, stay within the byte budget (one file is always allowed). A file of
//! `restore.memory_file_bytes_max` or more is never held in memory: a local replica's file is read
//! where it is, an S3 object is streamed into an unnamed file beside the staging file. Downloads
//! start in plan order, so the file the applier waits for is never kept waiting behind later ones.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::Progress;
use crate::config::RestoreConfig;
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile};

/// A downloaded file, ready to decode.
pub(super) enum Fetched {
    Memory(Vec<u8>),
    /// Read at offsets: the local replica's file, or an unnamed copy of an S3 object.
    Disk(File),
}

impl Fetched {
    /// Its bytes, to decode at any offset.
    pub(super) fn source(&self) -> &dyn ltx::ReadAt {
        match self {
            Fetched::Memory(bytes) => bytes,
            Fetched::Disk(file) => file,
        }
    }

    /// Its length in bytes.
    pub(super) fn len(&self) -> u64 {
        self.source().size().unwrap_or(0)
    }
}

/// Downloads shared between the applier and the download threads.
pub(super) struct Fetcher<'a> {
    replica: &'a Replica,
    files: &'a [ReplicaFile],
    /// Where S3 objects read from disk go: beside this path, named after it, unlinked at once.
    spill_beside: &'a Path,
    /// Files this large are read from disk.
    disk_bytes: u64,
    budget_bytes: u64,
    progress: Option<&'a Progress>,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The next file to download.
    next: usize,
    /// Bytes of files downloading or downloaded and not yet applied.
    held_bytes: u64,
    /// Downloaded files waiting to be applied, by position in the plan.
    ready: BTreeMap<usize, Result<Fetched>>,
    /// The applier stopped: download nothing more.
    stopped: bool,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(
        replica: &'a Replica,
        files: &'a [ReplicaFile],
        spill_beside: &'a Path,
        limits: &RestoreConfig,
        progress: Option<&'a Progress>,
    ) -> Fetcher<'a> {
        Fetcher {
            replica,
            files,
            spill_beside,
            disk_bytes: limits.memory_file_bytes_max,
            budget_bytes: limits.downloaded_bytes_max,
            progress,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// The body of a download thread: downloads the next file the budget allows, until none is
    /// left or the applier stopped.
    pub(super) fn run(&self) {
        // A thread that dies leaves a file the applier would wait for forever: stop everything.
        struct StopOnPanic<'f, 'a>(&'f Fetcher<'a>);
        impl Drop for StopOnPanic<'_, '_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.stop();
                }
            }
        }
        let _guard = StopOnPanic(self);
        loop {
            let i = {
                let mut state = self.lock();
                loop {
                    if state.stopped || state.next >= self.files.len() {
                        return;
                    }
                    let size = self.files[state.next].size;
                    if state.held_bytes == 0 || state.held_bytes + size <= self.budget_bytes {
                        break;
                    }
                    state = self.wait(state);
                }
                state.next += 1;
                state.held_bytes += self.files[state.next - 1].size;
                state.next - 1
            };
            let file = &self.files[i];
            let result = if file.size >= self.disk_bytes {
                self.replica
                    .read_to_disk(file, || self.spill_file(i))
                    .map(Fetched::Disk)
            } else {
                self.replica.read(file).map(Fetched::Memory)
            };
            if let (Ok(fetched), Some(p)) = (&result, self.progress) {
                p.fetched(fetched.len());
            }
            self.lock().ready.insert(i, result);
            self.changed.notify_all();
        }
    }

    /// An unnamed file for file `i` of the plan (its name goes at once: nothing is left behind,
    /// and a name left by a killed process, which holds its pid, is never in the way).
    fn spill_file(&self, i: usize) -> Result<File> {
        let path = format!(
            "{}.{}.{i}.ltx",
            self.spill_beside.display(),
            std::process::id()
        );
        let path = Path::new(&path);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create download file", path, e))?;
        std::fs::remove_file(path).map_err(|e| Error::io("unlink download file", path, e))?;
        Ok(file)
    }

    /// Waits for file `i` of the plan and takes it; call [`Fetcher::applied`] when done with it.
    pub(super) fn take(&self, i: usize) -> Result<Fetched> {
        let mut state = self.lock();
        loop {
            if let Some(result) = state.ready.remove(&i) {
                return result;
            }
            if state.stopped {
                return Err(Error::Internal {
                    message: "restore downloads stopped".into(),
                });
            }
            state = self.wait(state);
        }
    }

    /// File `i` was applied: its bytes no longer count against the budget.
    pub(super) fn applied(&self, i: usize) {
        self.lock().held_bytes -= self.files[i].size;
        self.changed.notify_all();
    }

    /// Stops the downloads (after an error, or at the end): threads finish the file they are
    /// reading and exit.
    pub(super) fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.ready.clear();
        drop(state);
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere (every change is one statement).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'g>(&self, guard: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::FileReplica;

    #[test]
    fn files_come_in_plan_order_and_downloads_stay_within_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let replica = Replica::from(FileReplica::new(dir.path()));
        let mut files = Vec::new();
        for txid in 1..=8u64 {
            let header = ltx::Header::new(512, 1, txid, txid, 1_000 * txid as i64);
            let mut enc = ltx::Encoder::new(Vec::new(), header).expect("header");
            enc.encode_page(1, &[txid as u8; 512]).expect("page");
            files.push(
                replica
                    .put(0, &enc.finish(0).expect("finish").0, None)
                    .expect("put"),
            );
        }
        let largest = files.iter().map(|f| f.size).max().unwrap_or(0);
        let spill = dir.path().join("out.db");
        for (budget, disk) in [
            (1, u64::MAX),
            (2 * largest, u64::MAX),
            (100 * largest, u64::MAX),
            (1, 1),
            (2 * largest, largest),
        ] {
            let limits = RestoreConfig {
                downloaded_bytes_max: budget,
                memory_file_bytes_max: disk,
                ..RestoreConfig::default()
            };
            let fetcher = Fetcher::new(&replica, &files, &spill, &limits, None);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| fetcher.run());
                }
                for (i, file) in files.iter().enumerate() {
                    let fetched = fetcher.take(i).expect("downloaded");
                    assert_eq!(
                        matches!(fetched, Fetched::Disk(_)),
                        file.size >= disk,
                        "file {i} of {} bytes read from disk from {disk} bytes",
                        file.size
                    );
                    let mut bytes = vec![0u8; fetched.len() as usize];
                    fetched.source().read_exact_at(&mut bytes, 0).expect("read");
                    assert_eq!(
                        bytes,
                        replica.read(file).expect("read"),
                        "file {i} in order"
                    );
                    let held = fetcher.lock().held_bytes;
                    assert!(
                        held <= budget.max(largest),
                        "{held} bytes held, budget {budget}"
                    );
                    fetcher.applied(i);
                }
                assert_eq!(fetcher.lock().held_bytes, 0, "every byte given back");
                fetcher.stop();
            });
        }
        // A stopped fetcher hands out nothing more, and its threads return.
        let fetcher = Fetcher::new(&replica, &files, &spill, &RestoreConfig::default(), None);
        fetcher.stop();
        std::thread::scope(|s| {
            s.spawn(|| fetcher.run());
        });
        assert!(fetcher.take(0).is_err());
    }
}
