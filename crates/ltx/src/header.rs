//! The 100-byte header and the 16-byte trailer.

use crate::{
    CHECKSUM_FLAG, Error, FLAG_NO_CHECKSUM, HEADER_SIZE, MAGIC, Result, TRAILER_SIZE,
    is_valid_page_size,
};

/// What an LTX file is about: which transactions, which database size, which page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Only [`FLAG_NO_CHECKSUM`] is defined.
    pub flags: u32,
    /// Database page size in bytes.
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    /// First transaction the file holds (1 for a snapshot).
    pub min_txid: u64,
    /// Last transaction the file holds.
    pub max_txid: u64,
    /// When the file was made, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Database checksum before applying the file (0 with [`FLAG_NO_CHECKSUM`]).
    pub pre_apply_checksum: u64,
    /// Offset in the source WAL of the first frame used (0 if none).
    pub wal_offset: i64,
    /// Bytes of WAL the file covers (0 if none).
    pub wal_size: i64,
    /// First salt of the source WAL header.
    pub wal_salt1: u32,
    /// Second salt of the source WAL header.
    pub wal_salt2: u32,
    /// Writer node id (always 0 in Litestream 0.5).
    pub node_id: u64,
}

impl Header {
    /// A header as Litestream 0.5.17 writes it: no database checksums, no WAL position.
    pub fn new(
        page_size: u32,
        commit: u32,
        min_txid: u64,
        max_txid: u64,
        timestamp_ms: i64,
    ) -> Header {
        Header {
            flags: FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid,
            max_txid,
            timestamp_ms,
            ..Header::default()
        }
    }

    /// Whether the file holds the whole database (it starts at transaction 1).
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// Checks the fields against each other, as the reader of the format does.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Header(m.to_owned()));
        if self.flags & !FLAG_NO_CHECKSUM != 0 {
            return bad(&format!("unknown flags 0x{:08x}", self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return bad(&format!(
                "page size {} is not a power of two from 512 to 65536",
                self.page_size
            ));
        }
        if self.min_txid == 0 || self.max_txid == 0 || self.min_txid > self.max_txid {
            return bad(&format!(
                "transaction range {}..={} is empty or starts at 0",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset < 0 || self.wal_size < 0 {
            return bad("negative WAL offset or size");
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0 || self.wal_size != 0)
            && self.wal_offset == 0
        {
            return bad("WAL salts or size without a WAL offset");
        }
        let no_checksum = self.flags & FLAG_NO_CHECKSUM != 0;
        if (self.is_snapshot() || no_checksum) && self.pre_apply_checksum != 0 {
            return bad("pre-apply checksum must be 0 for a snapshot or without checksums");
        }
        if !self.is_snapshot() && !no_checksum && self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return bad("pre-apply checksum is missing its flag bit");
        }
        Ok(())
    }

    /// The 100 bytes of the header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses and validates a header; bytes 80..100 are reserved and ignored.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header> {
        if &b[0..4] != MAGIC {
            return Err(Error::Header(format!(
                "bad magic {:02x?}, not LTX1",
                &b[0..4]
            )));
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let h = Header {
            flags: u32_at(4),
            page_size: u32_at(8),
            commit: u32_at(12),
            min_txid: u64_at(16),
            max_txid: u64_at(24),
            timestamp_ms: u64_at(32) as i64,
            pre_apply_checksum: u64_at(40),
            wal_offset: u64_at(48) as i64,
            wal_size: u64_at(56) as i64,
            wal_salt1: u32_at(64),
            wal_salt2: u32_at(68),
            node_id: u64_at(72),
        };
        h.validate()?;
        Ok(h)
    }
}

/// The last 16 bytes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    /// Database checksum after applying the file (0 with [`FLAG_NO_CHECKSUM`]).
    pub post_apply_checksum: u64,
    /// Checksum of the whole file (see the crate docs), bit 63 set.
    pub file_checksum: u64,
}

impl Trailer {
    /// The 16 bytes of the trailer.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_refuses_nonsense() {
        let h = Header::new(4096, 7, 3, 5, 1_795_325_863_311);
        assert_eq!(Header::decode(&h.encode()).expect("valid"), h);
        let cases: [(&str, fn(&mut Header)); 6] = [
            ("flags", |h| h.flags = 0x4),
            ("page size", |h| h.page_size = 1000),
            ("zero txid", |h| h.min_txid = 0),
            ("reversed range", |h| h.max_txid = 2),
            ("salt without offset", |h| h.wal_salt1 = 9),
            ("pre-apply without checksums", |h| {
                h.pre_apply_checksum = 1 | CHECKSUM_FLAG
            }),
        ];
        for (name, spoil) in cases {
            let mut bad = h;
            spoil(&mut bad);
            assert!(
                matches!(Header::decode(&bad.encode()), Err(Error::Header(_))),
                "{name}"
            );
        }
        let mut magic = h.encode();
        magic[0] = b'X';
        assert!(Header::decode(&magic).is_err());
    }
}
