//! [`Progress`]: counters a restore updates as it goes, for another thread to show (the CLI's
//! progress bar polls them); updating them costs a few atomic additions per batch of pages.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// What a restore is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Downloading, verifying and writing pages.
    Apply,
    /// Running the integrity check (and the fsync beside it).
    Check,
    /// Finished (or failed).
    Done,
}

/// How far a restore is; shared between the restore and whoever watches it.
#[derive(Debug, Default)]
pub struct Progress {
    fetched_bytes: AtomicU64,
    applied_bytes: AtomicU64,
    pages: AtomicU64,
    files: AtomicU64,
    stage: AtomicU8,
}

impl Progress {
    /// Bytes of LTX files downloaded so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of LTX files decoded and written so far (the plan's `bytes` when done).
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes.load(Ordering::Relaxed)
    }

    /// Pages written so far (a page changed by several files counts each time).
    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// Files applied so far.
    pub fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Apply,
            1 => Stage::Check,
            _ => Stage::Done,
        }
    }

    pub(super) fn fetched(&self, bytes: u64) {
        self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn applied(&self, bytes: u64, pages: u64) {
        self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.pages.fetch_add(pages, Ordering::Relaxed);
    }

    pub(super) fn file_done(&self, rest_bytes: u64) {
        // The end marker, page index and trailer of a file are applied with its last page.
        self.applied_bytes.fetch_add(rest_bytes, Ordering::Relaxed);
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn set_stage(&self, stage: Stage) {
        let v = match stage {
            Stage::Apply => 0,
            Stage::Check => 1,
            Stage::Done => 2,
        };
        self.stage.store(v, Ordering::Relaxed);
    }
}
