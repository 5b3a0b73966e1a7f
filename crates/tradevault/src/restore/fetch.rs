//! [`Fetcher`]: downloads a plan's files ahead of the one being applied, on a few threads, and
//! hands them out in plan order.
//!
//! Memory is bounded: a download starts only while the files downloaded but not yet applied, with
//! it, stay within the byte budget (one file is always allowed, however large). Downloads start in
//! plan order, so the file the applier waits for is never kept waiting behind later ones.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::Progress;
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile};

/// Downloads shared between the applier and the download threads.
pub(super) struct Fetcher<'a> {
    replica: &'a Replica,
    files: &'a [ReplicaFile],
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
    ready: BTreeMap<usize, Result<Vec<u8>>>,
    /// The applier stopped: download nothing more.
    stopped: bool,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(
        replica: &'a Replica,
        files: &'a [ReplicaFile],
        budget_bytes: u64,
        progress: Option<&'a Progress>,
    ) -> Fetcher<'a> {
        Fetcher {
            replica,
            files,
            budget_bytes,
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
            let result = self.replica.read(&self.files[i]);
            if let (Ok(bytes), Some(p)) = (&result, self.progress) {
                p.fetched(bytes.len() as u64);
            }
            self.lock().ready.insert(i, result);
            self.changed.notify_all();
        }
    }

    /// Waits for file `i` of the plan and takes it; call [`Fetcher::applied`] when done with it.
    pub(super) fn take(&self, i: usize) -> Result<Vec<u8>> {
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
                    .put(0, &enc.finish(0).expect("finish").0)
                    .expect("put"),
            );
        }
        let largest = files.iter().map(|f| f.size).max().unwrap_or(0);
        for budget in [1, 2 * largest, 100 * largest] {
            let fetcher = Fetcher::new(&replica, &files, budget, None);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| fetcher.run());
                }
                for (i, file) in files.iter().enumerate() {
                    let bytes = fetcher.take(i).expect("downloaded");
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
                fetcher.stop();
            });
        }
        // A stopped fetcher hands out nothing more, and its threads return.
        let fetcher = Fetcher::new(&replica, &files, 1, None);
        fetcher.stop();
        std::thread::scope(|s| {
            s.spawn(|| fetcher.run());
        });
        assert!(fetcher.take(0).is_err());
    }
}
