//! [`WalReader`]: committed transactions out of a WAL file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const HEADER_SIZE: u64 = 32;
const FRAME_HEADER_SIZE: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
/// The first read of a reader; each later one reads twice as much, up to `READ_MAX`.
const READ_MIN: usize = 64 << 10;
const READ_MAX: usize = 1 << 20;

/// The WAL file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Database page size.
    pub page_size: u32,
    /// Incremented by SQLite at every WAL reset.
    pub checkpoint_seq: u32,
    /// First salt: changes at every WAL reset, so old frames never match new ones.
    pub salt1: u32,
    /// Second salt (random at every reset).
    pub salt2: u32,
    big_endian: bool,
    checksum: (u32, u32),
}

/// Where a reader stopped, to resume from: the byte offset after the last transaction read, the
/// salts of the WAL generation it belongs to, and the checksum chain at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Offset after the last frame read.
    pub offset: u64,
    /// The WAL generation's first salt.
    pub salt1: u32,
    /// The WAL generation's second salt.
    pub salt2: u32,
    /// The cumulative checksum after the last frame read.
    pub checksum: (u32, u32),
}

/// One committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Offset of its first frame.
    pub start: u64,
    /// Offset after its commit frame.
    pub end: u64,
    /// Database size in pages after it.
    pub commit: u32,
    /// Frames it holds.
    pub frames: u32,
    /// The last version of every page it wrote, by page number.
    pub pages: BTreeMap<u32, Vec<u8>>,
}

/// Reads committed transactions from a WAL file, verifying each frame. It reads ahead in large
/// pieces (one `pread` for many frames, not one per frame); what it read ahead is only ever used
/// after the frame's salts and checksum chain verified, as a frame read alone would be.
pub struct WalReader {
    path: PathBuf,
    file: File,
    header: WalHeader,
    position: Position,
    /// Bytes read ahead: `buf[..buf_len]` is the file from offset `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
    buf_len: usize,
    /// How much the next read asks for (doubling from `READ_MIN` to `READ_MAX`).
    ramp: usize,
}

thread_local! {
    /// The read-ahead buffer of the last reader dropped on this thread, for the next one: a
    /// shipper opens a reader at each look at the WAL (a hundred or more a second), and zeroing a
    /// new buffer each time cost it as much as reading the frames did.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for WalReader {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() <= READ_MAX {
            SPARE.with(|s| s.set(buf));
        }
    }
}

impl WalReader {
    /// Opens the WAL at `path` from its first frame. `None` when there is no WAL yet (missing, or
    /// shorter than its header, or a header that does not verify: SQLite will rewrite it).
    pub fn open(path: &Path) -> Result<Option<WalReader>> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open wal", path, e)),
        };
        let mut bytes = [0u8; HEADER_SIZE as usize];
        match file.read_exact(&mut bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(Error::io("read wal header", path, e)),
        }
        let Some(header) = parse_header(&bytes) else {
            return Ok(None);
        };
        let position = Position {
            offset: HEADER_SIZE,
            salt1: header.salt1,
            salt2: header.salt2,
            checksum: header.checksum,
        };
        Ok(Some(WalReader {
            path: path.to_owned(),
            file,
            header,
            position,
            buf: SPARE.with(std::cell::Cell::take),
            buf_at: 0,
            buf_len: 0,
            ramp: READ_MIN,
        }))
    }

    /// Opens the WAL and continues from `position`. `Ok(None)` when the WAL was reset since (its
    /// salts changed) or is gone: the caller must start a new history from the database itself.
    pub fn resume(path: &Path, position: Position) -> Result<Option<WalReader>> {
        let Some(mut reader) = WalReader::open(path)? else {
            return Ok(None);
        };
        if (reader.header.salt1, reader.header.salt2) != (position.salt1, position.salt2) {
            return Ok(None);
        }
        reader.position = position;
        Ok(Some(reader))
    }

    /// The WAL header.
    pub fn header(&self) -> &WalHeader {
        &self.header
    }

    /// Where the next transaction starts.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Reads the next committed transaction, or `None` when the log ends (no more frames, a torn or
    /// uncommitted tail, or frames of an older generation). The position moves only past whole
    /// transactions, so a later call sees a transaction that was being written now.
    pub fn next_transaction(&mut self) -> Result<Option<Transaction>> {
        let frame_len = FRAME_HEADER_SIZE + self.header.page_size as usize;
        let mut offset = self.position.offset;
        let mut checksum = self.position.checksum;
        let mut pages = BTreeMap::new();
        let mut frames = 0u32;
        loop {
            if !self.fill(offset, frame_len)? {
                return Ok(None);
            }
            let at = usize::try_from(offset - self.buf_at).unwrap_or(usize::MAX);
            let frame = &self.buf[at..at + frame_len];
            let word =
                |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
            let (pgno, commit, salt1, salt2) = (word(0), word(4), word(8), word(12));
            if (salt1, salt2) != (self.header.salt1, self.header.salt2) || pgno == 0 {
                return Ok(None);
            }
            checksum = wal_checksum(self.header.big_endian, checksum, &frame[..8]);
            checksum = wal_checksum(
                self.header.big_endian,
                checksum,
                &frame[FRAME_HEADER_SIZE..],
            );
            if checksum != (word(16), word(20)) {
                return Ok(None);
            }
            pages.insert(pgno, frame[FRAME_HEADER_SIZE..].to_vec());
            frames += 1;
            offset += frame_len as u64;
            if commit != 0 {
                let start = self.position.offset;
                self.position.offset = offset;
                self.position.checksum = checksum;
                return Ok(Some(Transaction {
                    start,
                    end: offset,
                    commit,
                    frames,
                    pages,
                }));
            }
        }
    }

    /// Makes `buf` hold the `len` bytes at `offset`, reading ahead from there if it does not;
    /// false when the file ends first.
    fn fill(&mut self, offset: u64, len: usize) -> Result<bool> {
        let end = offset + len as u64;
        if offset >= self.buf_at && end <= self.buf_at + self.buf_len as u64 {
            return Ok(true);
        }
        let want = self.ramp.max(len);
        self.ramp = (self.ramp * 2).min(READ_MAX);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut self.buf[filled..want], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read wal frame", &self.path, e)),
            }
        }
        self.buf_at = offset;
        self.buf_len = filled;
        Ok(filled >= len)
    }
}

fn parse_header(b: &[u8; HEADER_SIZE as usize]) -> Option<WalHeader> {
    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let big_endian = match word(0) {
        MAGIC_BE => true,
        MAGIC_LE => false,
        _ => return None,
    };
    // The WAL header holds 65536 literally (only the database header encodes it as 1).
    let page_size = match word(8) {
        1 => 65_536,
        n if (512..=65_536).contains(&n) && n.is_power_of_two() => n,
        _ => return None,
    };
    let checksum = wal_checksum(big_endian, (0, 0), &b[..24]);
    if checksum != (word(24), word(28)) {
        return None;
    }
    Some(WalHeader {
        page_size,
        checkpoint_seq: word(12),
        salt1: word(16),
        salt2: word(20),
        big_endian,
        checksum,
    })
}

/// SQLite's WAL checksum: Fibonacci-weighted sums over 32-bit words, continuing from `seed`.
fn wal_checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    let (mut s0, mut s1) = seed;
    for pair in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let a = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        s0 = s0.wrapping_add(word(&pair[0..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..8])).wrapping_add(s0);
    }
    (s0, s1)
}
