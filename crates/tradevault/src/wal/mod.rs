//! Reading the SQLite WAL: committed transactions, in order, each verified by the WAL's own salts
//! and cumulative checksums. What the replication engine cuts into LTX files.
//!
//! Format (sqlite.org/fileformat2.html#walformat): a 32-byte header (magic, version, page size,
//! checkpoint sequence, two salts, a checksum of the header), then frames of a 24-byte header
//! (page number, database size after commit or 0, the salts, a cumulative checksum) and one page.
//! A frame belongs to the log only if its salts match the header's and its checksum continues the
//! chain; the log ends at the first frame that does not. A transaction is the frames up to and
//! including one whose "database size" field is non-zero (its commit frame).

mod reader;

pub use reader::{Position, Transaction, WalHeader, WalReader};
