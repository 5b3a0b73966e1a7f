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
//! One difference: a time restores the newest point at or before it (Litestream takes files
//! strictly before it).

mod apply;
mod fetch;
mod plan;
mod progress;

pub use apply::{Check, Options, Restored, apply, apply_with};
pub use plan::{Plan, plan};
pub use progress::{Progress, Stage};

/// What to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest state on the replica.
    Latest,
    /// The state right after this transaction.
    Txid(u64),
    /// The newest state replicated at or before this time (milliseconds since the epoch).
    Time(i64),
}
