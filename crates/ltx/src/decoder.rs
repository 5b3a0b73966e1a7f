//! Reads an LTX file and verifies it. Pages are handed out as they are read, but the file is only
//! known to be intact once [`Decoder::finish`] (or [`Decoder::decode_all`]) returned `Ok`: a
//! caller must not apply any page of a file before that.

use std::io::Read;

use crate::encoder::next_snapshot_pgno;
use crate::{
    Checksum, Error, FLAG_NO_CHECKSUM, HEADER_SIZE, Header, PAGE_FLAG_SIZED_BLOCK, Result, Trailer,
    lock_pgno,
};

/// One page of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Its page number, from 1.
    pub pgno: u32,
    /// Its contents, exactly one page.
    pub data: Vec<u8>,
}

/// Streams pages out of one LTX file, checking structure as it goes and the checksum at the end.
pub struct Decoder<R: Read> {
    r: R,
    header: Header,
    checksum: Checksum,
    offset: u64,
    /// The page index the frames read so far call for, as (pgno, offset, size) uvarints: a few
    /// bytes per page, compared with the file's own index at the end.
    frames: Vec<u8>,
    last_pgno: u32,
    block: Vec<u8>,
    trailer: Option<Trailer>,
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(mut r: R) -> Result<Decoder<R>> {
        let mut bytes = [0u8; HEADER_SIZE];
        r.read_exact(&mut bytes)
            .map_err(|e| eof_as(e, || Error::Header("file shorter than a header".into())))?;
        let header = Header::decode(&bytes)?;
        let mut checksum = Checksum::new();
        checksum.update(&bytes);
        Ok(Decoder {
            r,
            header,
            checksum,
            offset: HEADER_SIZE as u64,
            frames: Vec::new(),
            last_pgno: 0,
            block: Vec::new(),
            trailer: None,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads the next page into `buf` (one page long) and returns its number, or `None` after the
    /// last page, once the index and the trailer were read and the checksum verified.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let page_size = self.header.page_size as usize;
        if buf.len() != page_size {
            return Err(Error::Usage(format!(
                "buffer of {} bytes for pages of {page_size}",
                buf.len()
            )));
        }
        let mut head = [0u8; 6];
        self.read(&mut head, "page header")?;
        let pgno = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = u16::from_be_bytes([head[4], head[5]]);
        if pgno == 0 && flags == 0 {
            self.checksum.update(&head);
            self.read_tail()?;
            return Ok(None);
        }
        let bad = |reason: String| Err(Error::Page { pgno, reason });
        if flags != PAGE_FLAG_SIZED_BLOCK {
            return bad(format!("unsupported page flags 0x{flags:04x}"));
        }
        if pgno == 0
            || pgno > self.header.commit
            || pgno <= self.last_pgno
            || pgno == lock_pgno(self.header.page_size)
        {
            return bad(format!(
                "out of place after page {} in a database of {} pages",
                self.last_pgno, self.header.commit
            ));
        }
        if self.header.is_snapshot()
            && pgno != next_snapshot_pgno(self.last_pgno, self.header.page_size)
        {
            return bad("a snapshot is missing pages".into());
        }
        let mut len = [0u8; 4];
        self.read(&mut len, "page length")?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > lz4_flex::block::get_maximum_output_size(page_size) {
            return bad(format!(
                "compressed length {len} is impossible for a {page_size}-byte page"
            ));
        }
        self.block.resize(len, 0);
        let mut block = std::mem::take(&mut self.block);
        let read = self.read(&mut block, "page data");
        self.block = block;
        read?;
        match lz4_flex::block::decompress_into(&self.block, buf) {
            Ok(n) if n == page_size => {}
            Ok(n) => return bad(format!("decompresses to {n} bytes, not {page_size}")),
            Err(e) => return bad(format!("lz4 block is corrupt: {e}")),
        }
        self.checksum.update(&head);
        self.checksum.update(&(len as u32).to_be_bytes());
        self.checksum.update(buf);
        let size = 10 + len as u64;
        crate::encoder::put_uvarint(&mut self.frames, u64::from(pgno));
        crate::encoder::put_uvarint(&mut self.frames, self.offset);
        crate::encoder::put_uvarint(&mut self.frames, size);
        self.offset += size;
        self.last_pgno = pgno;
        Ok(Some(pgno))
    }

    /// Reads the rest of the file and verifies it; returns the header and the trailer.
    pub fn finish(mut self) -> Result<(Header, Trailer)> {
        let mut buf = vec![0u8; self.header.page_size as usize];
        while self.next_page(&mut buf)?.is_some() {}
        let trailer = self
            .trailer
            .ok_or_else(|| Error::Trailer("not read".into()))?;
        Ok((self.header, trailer))
    }

    /// Reads and verifies a whole file, returning its pages only if it is intact.
    pub fn decode_all(r: R) -> Result<(Header, Vec<Page>, Trailer)> {
        let mut d = Decoder::new(r)?;
        let mut pages = Vec::new();
        let mut buf = vec![0u8; d.header.page_size as usize];
        while let Some(pgno) = d.next_page(&mut buf)? {
            pages.push(Page {
                pgno,
                data: buf.clone(),
            });
        }
        let (header, trailer) = d.finish()?;
        Ok((header, pages, trailer))
    }

    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.r
            .read_exact(buf)
            .map_err(|e| eof_as(e, || Error::Trailer(format!("file ends inside the {what}"))))
    }

    /// Page index, its length, and the trailer; then the checksum and the end of the file.
    fn read_tail(&mut self) -> Result<()> {
        // The file's index is read entry by entry, each compared with the one its frames call
        // for and summed as it goes: nothing of it is kept.
        let expected = std::mem::take(&mut self.frames);
        let mut at = 0;
        let mut index_bytes = 0u64;
        // Index bytes read and not yet summed.
        let mut pending = Vec::with_capacity(4_096 + 30);
        let mismatch = || Error::Trailer("the page index does not match the pages".into());
        loop {
            let pgno = self.uvarint(&mut pending)?;
            if pgno != 0 {
                let offset = self.uvarint(&mut pending)?;
                let size = self.uvarint(&mut pending)?;
                for value in [pgno, offset, size] {
                    if next_uvarint(&expected, &mut at) != Some(value) {
                        return Err(mismatch());
                    }
                }
            }
            if pgno == 0 || pending.len() >= 4_096 {
                self.checksum.update(&pending);
                index_bytes += pending.len() as u64;
                pending.clear();
            }
            if pgno == 0 {
                break;
            }
        }
        if at != expected.len() {
            return Err(mismatch());
        }
        let mut rest = [0u8; 24];
        self.read(&mut rest, "trailer")?;
        let index_len = u64::from_be_bytes(rest[0..8].try_into().unwrap_or_default());
        if index_len != index_bytes {
            return Err(Error::Trailer(format!(
                "page index length {index_len}, but it is {index_bytes} bytes"
            )));
        }
        self.checksum.update(&rest[0..16]);
        let post_apply_checksum = u64::from_be_bytes(rest[8..16].try_into().unwrap_or_default());
        let stored = u64::from_be_bytes(rest[16..24].try_into().unwrap_or_default());
        let computed = std::mem::take(&mut self.checksum).finish();
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }
        if self.header.flags & FLAG_NO_CHECKSUM != 0 && post_apply_checksum != 0 {
            return Err(Error::Trailer(
                "post-apply checksum in a file without checksums".into(),
            ));
        }
        if self.header.is_snapshot()
            && next_snapshot_pgno(self.last_pgno, self.header.page_size) <= self.header.commit
        {
            return Err(Error::Trailer(format!(
                "snapshot ends at page {} of {}",
                self.last_pgno, self.header.commit
            )));
        }
        let mut extra = [0u8; 1];
        if self.r.read(&mut extra)? != 0 {
            return Err(Error::Trailer("bytes after the trailer".into()));
        }
        self.trailer = Some(Trailer {
            post_apply_checksum,
            file_checksum: stored,
        });
        Ok(())
    }

    /// Reads one uvarint of the page index, appending its bytes to `raw`.
    fn uvarint(&mut self, raw: &mut Vec<u8>) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8; 1];
            self.read(&mut b, "page index")?;
            raw.push(b[0]);
            v |= u64::from(b[0] & 0x7f) << shift;
            if b[0] < 0x80 {
                return Ok(v);
            }
        }
        Err(Error::Trailer("page index varint too long".into()))
    }
}

/// The uvarint at `*at` in `bytes` (written by this crate: well formed), moving `*at` past it.
fn next_uvarint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn eof_as(e: std::io::Error, f: impl FnOnce() -> Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        f()
    } else {
        Error::Io(e)
    }
}
