//! Decodes an LTX file held in memory or read at offsets (a file), in parts: the page index locates every frame, so the pages
//! can be decoded in any split (on several threads), each part summed on its own, and the file is
//! verified once the parts are joined by [`RangeDecoder::finish`]. Until that returned `Ok`, the
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

/// Bytes of frames a part reads at once from a source that is not in memory.
const WINDOW_BYTES: usize = 4 << 20;

/// Where an LTX file's bytes are read from, at any offset: memory, or a file read in pieces so
/// that a file of any size costs a few MiB per part.
pub trait ReadAt: Sync {
    /// The file's length in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// Fills `buf` with the bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// The bytes `range` without a copy, when they are in memory.
    fn slice(&self, range: Range<usize>) -> Option<&[u8]> {
        let _ = range;
        None
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn slice(&self, range: Range<usize>) -> Option<&[u8]> {
        self.get(range)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> std::io::Result<u64> {
        self.as_slice().size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn slice(&self, range: Range<usize>) -> Option<&[u8]> {
        self.get(range)
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.seek_read(buf, offset)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// A [`RangeDecoder`] of a file held in memory.
pub type SliceDecoder<'a> = RangeDecoder<'a, [u8]>;

/// An LTX file whose header, page index and trailer were checked against each other; its pages
/// are read from `S` as they are decoded.
pub struct RangeDecoder<'a, S: ReadAt + ?Sized> {
    source: &'a S,
    header: Header,
    /// The header's bytes, for the checksum.
    head: [u8; HEADER_SIZE],
    /// (pgno, offset, size) of every frame, from the page index.
    frames: Vec<(u32, usize, usize)>,
    /// Everything from the end marker to the file checksum (the tail of the checksum).
    tail: Vec<u8>,
    trailer: Trailer,
    /// Bytes of frames a part reads at once when the source is not in memory.
    window: usize,
}

/// The pages `range` of a file, decoded in order, and the checksum of their frames.
pub struct Part {
    range: Range<usize>,
    next: usize,
    checksum: Checksum,
    /// Frames read ahead from a source not in memory: `window` holds the file from `window_at`.
    window: Vec<u8>,
    window_at: usize,
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

impl<'a, S: ReadAt + ?Sized> RangeDecoder<'a, S> {
    /// Reads the header, the page index and the trailer, and checks them: frames back to back
    /// from the header to the end marker, page numbers ascending and in the database.
    pub fn new(source: &'a S) -> Result<RangeDecoder<'a, S>> {
        let end = usize::try_from(source.size()?)
            .map_err(|_| Error::Trailer("file too large for this machine".into()))?;
        if end < HEADER_SIZE {
            return Err(Error::Header("file shorter than a header".into()));
        }
        let mut head = [0u8; HEADER_SIZE];
        source.read_exact_at(&mut head, 0)?;
        let header = Header::decode(&head)?;
        let short = || Error::Trailer("file ends inside the trailer".into());
        let fixed = HEADER_SIZE + PAGE_HEADER_SIZE + 8 + TRAILER_SIZE;
        if end < fixed + 1 {
            return Err(short());
        }
        let mut last_bytes = [0u8; 8 + TRAILER_SIZE];
        source.read_exact_at(&mut last_bytes, (end - 8 - TRAILER_SIZE) as u64)?;
        let index_len = u64_at(&last_bytes, 0);
        let index_end = end - TRAILER_SIZE - 8;
        let index_start = usize::try_from(index_len)
            .ok()
            .and_then(|n| index_end.checked_sub(n))
            .filter(|&s| s >= HEADER_SIZE + PAGE_HEADER_SIZE)
            .ok_or_else(|| {
                Error::Trailer(format!("page index length {index_len} is impossible"))
            })?;
        let tail_at = index_start - PAGE_HEADER_SIZE;
        let mut tail = vec![0u8; end - tail_at];
        source.read_exact_at(&mut tail, tail_at as u64)?;
        // Offsets in `tail` are file offsets less `tail_at`.
        let (index, index_stop) = (PAGE_HEADER_SIZE, index_end - tail_at);
        let page_size = header.page_size as usize;
        let mut frames = Vec::new();
        let (mut at, mut offset, mut last) = (index, HEADER_SIZE, 0u32);
        loop {
            let pgno = uvarint(&tail, &mut at, index_stop)?;
            if pgno == 0 {
                break;
            }
            let (frame_offset, size) = (
                uvarint(&tail, &mut at, index_stop)?,
                uvarint(&tail, &mut at, index_stop)?,
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
                || size > (tail_at - offset) as u64
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
        if at != index_stop {
            return Err(Error::Trailer(format!(
                "page index length {index_len}, but it is {} bytes",
                at - index
            )));
        }
        if offset != tail_at {
            return Err(Error::Trailer(
                "the page index does not match the pages".into(),
            ));
        }
        if tail[..PAGE_HEADER_SIZE] != [0u8; PAGE_HEADER_SIZE] {
            return Err(Error::Trailer("no end marker after the pages".into()));
        }
        if header.is_snapshot() && next_snapshot_pgno(last, header.page_size) <= header.commit {
            return Err(Error::Trailer(format!(
                "snapshot ends at page {last} of {}",
                header.commit
            )));
        }
        let trailer = Trailer {
            post_apply_checksum: u64_at(&last_bytes, 8),
            file_checksum: u64_at(&last_bytes, 16),
        };
        tail.truncate(tail.len() - 8);
        Ok(RangeDecoder {
            source,
            header,
            head,
            frames,
            tail,
            trailer,
            window: WINDOW_BYTES,
        })
    }

    /// Reads `bytes` of frames at once (at least one frame) when the source is not in memory,
    /// instead of 4 MiB.
    pub fn with_window(mut self, bytes: usize) -> RangeDecoder<'a, S> {
        self.window = bytes;
        self
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
            window: Vec::new(),
            window_at: 0,
        }
    }

    /// Decodes the next page of `part` into `buf` (one page long) and returns its number, or
    /// `None` when the part is done. The page is not verified until [`RangeDecoder::finish`].
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
        let frame = match self.source.slice(offset..offset + size) {
            Some(frame) => frame,
            None => {
                let inside =
                    offset >= part.window_at && offset + size <= part.window_at + part.window.len();
                if !inside {
                    // The next frames of this part, up to a window's worth (a frame at least).
                    let (_, last_at, last_size) = self.frames[part.range.end - 1];
                    let n = (last_at + last_size - offset).min(self.window).max(size);
                    part.window.resize(n, 0);
                    if let Err(e) = self.source.read_exact_at(&mut part.window, offset as u64) {
                        part.window.clear();
                        return Err(e.into());
                    }
                    part.window_at = offset;
                }
                &part.window[offset - part.window_at..][..size]
            }
        };
        let head = &frame[..FRAME_HEAD];
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
        let block = &frame[FRAME_HEAD..];
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
        let mut checksum = Checksum::new();
        checksum.update(&self.head);
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
        checksum.update(&self.tail);
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
