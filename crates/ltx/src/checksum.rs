//! CRC-64/GO-ISO, the checksum of LTX files (Go's `hash/crc64` with the ISO table).

use crc::{CRC_64_GO_ISO, Crc, Digest};

use crate::CHECKSUM_FLAG;

static CRC: Crc<u64> = Crc::<u64>::new(&CRC_64_GO_ISO);

/// A running checksum over a byte stream.
pub struct Checksum(Digest<'static, u64>);

impl Checksum {
    /// An empty checksum.
    pub fn new() -> Self {
        Checksum(CRC.digest())
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The checksum as stored: the CRC with bit 63 set.
    pub fn finish(self) -> u64 {
        self.0.finalize() | CHECKSUM_FLAG
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum::new()
    }
}

/// The checksum of one database page: CRC over its big-endian page number and contents, bit 63 set.
/// XOR-ing it over every page gives the database checksum that pre-/post-apply fields would hold.
pub fn page_checksum(pgno: u32, data: &[u8]) -> u64 {
    let mut c = Checksum::new();
    c.update(&pgno.to_be_bytes());
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_crc64_go_iso() {
        // The catalogue check value of CRC-64/GO-ISO.
        let mut c = Checksum::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xb909_56c7_75a4_1001 | CHECKSUM_FLAG);
    }
}
