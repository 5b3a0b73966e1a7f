//! Replicas: places that receive LTX files, in the layout Litestream 0.5 uses, so that either
//! tool can restore from them. A file appears on a replica only when complete.

pub mod file;

pub use file::FileReplica;

/// One LTX file on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFile {
    /// Compaction level (0 = as shipped, 9 = snapshots).
    pub level: u32,
    /// First transaction it holds.
    pub min_txid: u64,
    /// Last transaction it holds.
    pub max_txid: u64,
    /// Its size in bytes.
    pub size: u64,
    /// When it was made, in milliseconds since the Unix epoch (the header's timestamp).
    pub created_at_ms: i64,
}

/// The level Litestream keeps snapshots at.
pub const SNAPSHOT_LEVEL: u32 = 9;
