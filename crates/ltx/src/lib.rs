//! LTX files: the unit a replica stores. One file holds the pages a run of transactions
//! (`min_txid..=max_txid`) changed, or every page of the database when `min_txid == 1` (a
//! snapshot). This crate writes and reads the exact format Litestream 0.5.17 (LTX v0.5.2) uses,
//! so replicas can be restored by either tool. It does no I/O beyond `Read`, `Write` and positional reads:
//! [`Decoder`] streams a file from a reader; [`RangeDecoder`] decodes one held in memory
//! ([`SliceDecoder`]) or read at offsets ([`ReadAt`], a file) in parts, on several threads, and
//! joins their checksums.
//!
//! Layout (integers big-endian):
//! ```text
//! header      100 bytes   magic "LTX1", flags, page size, commit, TXIDs, timestamp, WAL position
//! page frame  per page    u32 pgno, u16 flags (0x1), u32 block length, one raw LZ4 block
//! end marker  6 bytes     all zero
//! page index  uvarints    (pgno, frame offset, frame length) per page, then 0, then u64 length
//! trailer     16 bytes    post-apply checksum, file checksum
//! ```
//! The file checksum is CRC-64/GO-ISO over the file with every page's LZ4 block replaced by the
//! page itself, with bit 63 set. Files are written with the "no checksum" flag and zero
//! pre-/post-apply database checksums: Litestream 0.5.17's restore refuses anything else.

mod checksum;
mod compact;
mod decoder;
mod encoder;
mod header;
mod slice_decoder;

pub use checksum::{Checksum, page_checksum};
pub use compact::compact;
pub use decoder::{Decoder, Page};
pub use encoder::Encoder;
pub use header::{Header, Trailer};
pub use slice_decoder::{Part, RangeDecoder, ReadAt, SliceDecoder};

/// First four bytes of every LTX file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// Size of the header.
pub const HEADER_SIZE: usize = 100;
/// Size of a page frame's header (pgno and flags), before the block length.
pub const PAGE_HEADER_SIZE: usize = 6;
/// Size of the trailer.
pub const TRAILER_SIZE: usize = 16;
/// Header flag: the pre- and post-apply database checksums are absent (zero).
pub const FLAG_NO_CHECKSUM: u32 = 0x2;
/// Page flag: the page is a raw LZ4 block preceded by its u32 length.
pub const PAGE_FLAG_SIZED_BLOCK: u16 = 0x1;
/// Set in every stored checksum, so that a valid checksum is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// Why a file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The underlying reader or writer failed.
    #[error("ltx i/o")]
    Io(#[from] std::io::Error),
    /// The header is not a valid LTX header.
    #[error("invalid ltx header: {0}")]
    Header(String),
    /// A page frame is malformed, out of order or of the wrong size.
    #[error("invalid ltx page {pgno}: {reason}")]
    Page {
        /// The page number in the frame (0 if unreadable).
        pgno: u32,
        /// What is wrong.
        reason: String,
    },
    /// The page index or the trailer is malformed.
    #[error("invalid ltx trailer: {0}")]
    Trailer(String),
    /// The file's checksum does not match its contents: it is damaged and must not be applied.
    #[error("ltx file checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    ChecksumMismatch {
        /// The checksum in the trailer.
        stored: u64,
        /// The checksum of what was read.
        computed: u64,
    },
    /// The encoder was used out of order.
    #[error("ltx encoder misuse: {0}")]
    Usage(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The page SQLite never uses (the one holding the byte at offset 1 GiB); LTX files never store it.
pub fn lock_pgno(page_size: u32) -> u32 {
    (0x4000_0000 / page_size) + 1
}

/// Whether `size` is a page size SQLite can use (a power of two from 512 to 65536).
pub fn is_valid_page_size(size: u32) -> bool {
    (512..=65_536).contains(&size) && size.is_power_of_two()
}

/// The file name of an LTX file: `<min>-<max>.ltx`, each TXID as 16 lower-case hex digits.
pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// Parses a file name made by [`file_name`]; anything else (temp files, other case) is `None`.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ltx")?;
    let (min, max) = stem.split_once('-')?;
    let hex = |s: &str| {
        (s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    Some((hex(min)?, hex(max)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_refuse_lookalikes() {
        assert_eq!(file_name(1, 0x2a), "0000000000000001-000000000000002a.ltx");
        assert_eq!(
            parse_file_name("0000000000000001-000000000000002a.ltx"),
            Some((1, 0x2a))
        );
        for bad in [
            "0000000000000001-000000000000002A.ltx",
            "0000000000000001-000000000000002a.ltx.tmp",
            "1-2.ltx",
            "0000000000000001_000000000000002a.ltx",
            "000000000000000g-000000000000002a.ltx",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn lock_page_is_at_one_gibibyte() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(65_536), 16_385);
        assert!(is_valid_page_size(4096) && !is_valid_page_size(4095) && !is_valid_page_size(256));
    }
}
