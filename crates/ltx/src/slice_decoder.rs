//! Decodes an LTX file held in memory, in parts: the page index locates every frame, so the pages
//! can be decoded in any split (on several threads), each part summed on its own, and the file is
//! verified once the parts are joined by [`SliceDecoder::finish`]. Until that returned `Ok`, the
//! pages a part gave out are unverified: a caller writes them only where a failure discards them.
//!
//! It accepts exactly the files [`crate::Decoder`] accepts, and gives the same pages.

use std::ops::Range;

use crate::encoder::next_snapshot_pgno;
use crate::{
    Checksum, Error, FLAG_NO_CHECKSUM, HEADER_SIZE, Header, PAGE_FLAG_SIZED_BLOCK,
    PAGE_HEADER_SIZE, Result, TRAILER_SIZE, Trailer, lock_pgno,
};

/// Bytes of a frame before its LZ4 block: page number, flags, block length.
const FRAME_HEAD: usize = PAGE_HEADER_SIZE + 4;

/// An LTX file in memory whose header, page index and trailer were checked against each other.
pub struct SliceDecoder<'a> {
    bytes: &'a [u8],
    header: Header,
    /// (pgno, offset, size) of every frame, from the page index.
    frames: Vec<(u32, usize, usize)>,
    /// Where the end marker starts: everything from here to the file checksum is the tail.
    tail: usize,
    trailer: Trailer,
}

/// The pages `range` of a file, decoded in order, and the checksum of their frames.
pub struct Part {
    range: Range<usize>,
    next: usize,
    checksum: Checksum,
}

impl Part {
    /// The frames (by position in the file) this part covers.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Whether every frame of the part was decoded.
    pub fn is_done(&self) -> bool {
        self.next == self.range.end
    }
}

impl<'a> SliceDecoder<'a> {
    /// Checks the header, the page index (frames back to back from the header to the end marker,
    /// page numbers ascending and in the database) and the trailer's place.
    pub fn new(bytes: &'a [u8]) -> Result<SliceDecoder<'a>> {
        let head: &[u8; HEADER_SIZE] = bytes
            .get(..HEADER_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Header("file shorter than a header".into()))?;
        let header = Header::decode(head)?;
        let short = || Error::Trailer("file ends inside the trailer".into());
        let end = bytes.len();
        let fixed = HEADER_SIZE + PAGE_HEADER_SIZE + 8 + TRAILER_SIZE;
        if end < fixed + 1 {
            return Err(short());
        }
        let index_len = u64_at(bytes, end - TRAILER_SIZE - 8);
        let index_end = end - TRAILER_SIZE - 8;
        let index_start = usize::try_from(index_len)
            .ok()
            .and_then(|n| index_end.checked_sub(n))
            .filter(|&s| s >= HEADER_SIZE + PAGE_HEADER_SIZE)
            .ok_or_else(|| {
                Error::Trailer(format!("page index length {index_len} is impossible"))
            })?;
        let tail = index_start - PAGE_HEADER_SIZE;
        let page_size = header.page_size as usize;
        let mut frames = Vec::new();
        let (mut at, mut offset, mut last) = (index_start, HEADER_SIZE, 0u32);
        loop {
            let pgno = uvarint(bytes, &mut at, index_end)?;
            if pgno == 0 {
                break;
            }
            let (frame_offset, size) = (
                uvarint(bytes, &mut at, index_end)?,
                uvarint(bytes, &mut at, index_end)?,
            );
            let pgno = u32::try_from(pgno)
                .map_err(|_| Error::Trailer("page number out of range".into()))?;
            let bad = |reason: String| Err(Error::Page { pgno, reason });
            if pgno <= last || pgno > header.commit || pgno == lock_pgno(header.page_size) {
                return bad(format!(
                    "out of place after page {last} in a database of {} pages",
                    header.commit
                ));
            }
            if header.is_snapshot() && pgno != next_snapshot_pgno(last, header.page_size) {
                return bad("a snapshot is missing pages".into());
            }
            let block = (size as usize).wrapping_sub(FRAME_HEAD);
            if frame_offset != offset as u64
                || size > (tail - offset) as u64
                || size <= FRAME_HEAD as u64
                || block > lz4_flex::block::get_maximum_output_size(page_size)
            {
                return Err(Error::Trailer(
                    "the page index does not match the pages".into(),
                ));
            }
            frames.push((pgno, offset, size as usize));
            offset += size as usize;
            last = pgno;
        }
        if at != index_end {
            return Err(Error::Trailer(format!(
                "page index length {index_len}, but it is {} bytes",
                at - index_start
            )));
        }
        if offset != tail {
            return Err(Error::Trailer(
                "the page index does not match the pages".into(),
            ));
        }
        if bytes[tail..index_start] != [0u8; PAGE_HEADER_SIZE] {
            return Err(Error::Trailer("no end marker after the pages".into()));
        }
        if header.is_snapshot() && next_snapshot_pgno(last, header.page_size) <= header.commit {
            return Err(Error::Trailer(format!(
                "snapshot ends at page {last} of {}",
                header.commit
            )));
        }
        let trailer = Trailer {
            post_apply_checksum: u64_at(bytes, end - TRAILER_SIZE),
            file_checksum: u64_at(bytes, end - 8),
        };
        Ok(SliceDecoder {
            bytes,
            header,
            frames,
            tail,
            trailer,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// How many pages the file holds.
    pub fn page_count(&self) -> usize {
        self.frames.len()
    }

    /// The page number of the `i`th page, from the index (not verified before `finish`).
    pub fn pgno(&self, i: usize) -> u32 {
        self.frames[i].0
    }

    /// Bytes of the frames `range` in the file (for progress).
    pub fn frame_bytes(&self, range: Range<usize>) -> u64 {
        self.frames[range].iter().map(|f| f.2 as u64).sum()
    }

    /// A part to decode the pages `range` (positions in the file, not page numbers).
    pub fn part(&self, range: Range<usize>) -> Part {
        let range = range.start.min(self.frames.len())..range.end.min(self.frames.len());
        Part {
            next: range.start,
            range,
            checksum: Checksum::new(),
        }
    }

    /// Decodes the next page of `part` into `buf` (one page long) and returns its number, or
    /// `None` when the part is done. The page is not verified until [`SliceDecoder::finish`].
    pub fn decode_next(&self, part: &mut Part, buf: &mut [u8]) -> Result<Option<u32>> {
        if part.next >= part.range.end {
            return Ok(None);
        }
        let page_size = self.header.page_size as usize;
        if buf.len() != page_size {
            return Err(Error::Usage(format!(
                "buffer of {} bytes for pages of {page_size}",
                buf.len()
            )));
        }
        let (pgno, offset, size) = self.frames[part.next];
        let head = &self.bytes[offset..offset + FRAME_HEAD];
        let bad = |reason: String| Err(Error::Page { pgno, reason });
        let flags = u16::from_be_bytes([head[4], head[5]]);
        if u32::from_be_bytes([head[0], head[1], head[2], head[3]]) != pgno {
            return Err(Error::Trailer(
                "the page index does not match the pages".into(),
            ));
        }
        if flags != PAGE_FLAG_SIZED_BLOCK {
            return bad(format!("unsupported page flags 0x{flags:04x}"));
        }
        let len = u32::from_be_bytes([head[6], head[7], head[8], head[9]]) as usize;
        if len != size - FRAME_HEAD {
            return Err(Error::Trailer(
                "the page index does not match the pages".into(),
            ));
        }
        let block = &self.bytes[offset + FRAME_HEAD..offset + size];
        match lz4_flex::block::decompress_into(block, buf) {
            Ok(n) if n == page_size => {}
            Ok(n) => return bad(format!("decompresses to {n} bytes, not {page_size}")),
            Err(e) => return bad(format!("lz4 block is corrupt: {e}")),
        }
        // The file checksum covers each page itself, not its compressed form.
        part.checksum.update(head);
        part.checksum.update(buf);
        part.next += 1;
        Ok(Some(pgno))
    }

    /// Verifies the file: `parts` must cover every page in order, each decoded to its end, and the
    /// checksum of the header, the parts and the tail must be the one in the trailer.
    pub fn finish(&self, parts: impl IntoIterator<Item = Part>) -> Result<(Header, Trailer)> {
        let end = self.bytes.len();
        let mut checksum = Checksum::new();
        checksum.update(&self.bytes[..HEADER_SIZE]);
        let mut covered = 0;
        for part in parts {
            if part.range.start != covered || !part.is_done() {
                return Err(Error::Usage(format!(
                    "pages {covered}.. were not all decoded before finish"
                )));
            }
            covered = part.range.end;
            checksum.append(&part.checksum);
        }
        if covered != self.frames.len() {
            return Err(Error::Usage(format!(
                "pages {covered}.. were not all decoded before finish"
            )));
        }
        checksum.update(&self.bytes[self.tail..end - 8]);
        let computed = checksum.finish();
        let stored = self.trailer.file_checksum;
        if stored != computed {
            return Err(Error::ChecksumMismatch { stored, computed });
        }
        if self.header.flags & FLAG_NO_CHECKSUM != 0 && self.trailer.post_apply_checksum != 0 {
            return Err(Error::Trailer(
                "post-apply checksum in a file without checksums".into(),
            ));
        }
        Ok((self.header, self.trailer))
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(a)
}

/// An unsigned LEB128 varint at `*at`, which must end before `end`.
fn uvarint(bytes: &[u8], at: &mut usize, end: usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if *at >= end {
            return Err(Error::Trailer("file ends inside the page index".into()));
        }
        let b = bytes[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(Error::Trailer("page index varint too long".into()))
}
