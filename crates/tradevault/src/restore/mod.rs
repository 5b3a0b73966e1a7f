//! Restore from a replica: [`plan`] which LTX files reach the target, then [`apply`] them: download
//! the next files in parallel (bounded in files and bytes), decode each straight into a staging
//! file (large files on several threads), verify every file's checksum, check the result with
//! `PRAGMA integrity_check`, and only then give it its name, never over an existing file, `-wal`
//! or `-shm`. Any failure removes the staging file; nothing is ever written under the output name
//! before the whole database was verified and checked.
//!
//! Chains are planned with Litestream 0.5's rules (docs/ltx-litestream-0.5.17.md §6), so either
//! tool's replicas restore here: start from the newest usable snapshot (level 9), then keep taking,
//! across all levels, the file that continues the chain and reaches furthest. Files are applied in
//! chain order, so a later file's page replaces an earlier one's.
//!
//! A time `T` restores exactly or is refused, never silently older or newer. Each file the
//! engine writes has two times:
//! - its listed time (a file replica's mtime, an S3 object's `litestream-timestamp`, what
//!   Litestream reads): a lower bound of the commit times of the transactions it holds, after
//!   every commit of the files before it, so listed times increase along a chain;
//! - its header time: when it was made, after every commit it holds (a merged file keeps the
//!   latest of its inputs'). A file written by Litestream has one time for both.
//!
//! The chain for `T` takes the files listed at or before `T` (Litestream: strictly before). The
//! state after its last file, `last`, is the state at `T` exactly when `T` is at or after
//! `last`'s header time: every commit it holds was made by then, and every commit of the files
//! after it later than `T` (they are listed after `T`). Otherwise `T` falls among `last`'s own
//! commits, and the restore is refused (`not_exact`) with the nearest points restorable
//! exactly: the chain without `last` and the chain with it, each with its TXID and the time it
//! was made, to be asked for with `--txid`. While commits arrive faster than files are made, a
//! file's first commit comes before the previous file was made, and no time between them is
//! exact: only the points themselves are.
//!
//! A `T` before the first snapshot, or after the newest file's listed time (commits after it may
//! not have reached the replica), is refused with the nearest points.

mod apply;
mod fetch;
pub mod inplace;
mod plan;
mod progress;

pub use apply::{Check, Options, Restored, apply, apply_with};
pub use plan::{HeaderTime, Plan, plan, plan_after, plan_after_listed, plan_files, plan_listed};
pub use progress::{Progress, Stage};

/// Removes a database file and the files SQLite keeps beside it (`-wal`, `-shm`, `-journal`),
/// ignoring the ones that are not there: for scratch and staging copies.
pub fn remove_database_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

/// What to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest state on the replica.
    Latest,
    /// The state right after this transaction.
    Txid(u64),
    /// The state at this time (milliseconds since the epoch), if it can be restored exactly.
    Time(i64),
}
