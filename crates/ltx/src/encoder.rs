//! Writes an LTX file: header, page frames in ascending order, end marker, page index, trailer.

use std::io::Write;

use crate::{
    CHECKSUM_FLAG, Checksum, Error, FLAG_NO_CHECKSUM, HEADER_SIZE, Header, PAGE_FLAG_SIZED_BLOCK,
    Result, Trailer, lock_pgno,
};

/// Streams one LTX file into a writer. Pages must come in ascending order; a snapshot must hold
/// every page from 1 to `commit` except the lock page.
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    checksum: Checksum,
    offset: u64,
    /// The page index so far, as it is written: (pgno, offset, size) uvarints per page, a few
    /// bytes each rather than a 24-byte tuple (a 1 GiB snapshot has 262,144 pages).
    index: Vec<u8>,
    last_pgno: u32,
    block: Vec<u8>,
    /// LZ4's match table, kept from page to page (a new one per page is an allocation).
    table: lz4_flex::block::CompressTable,
}

impl<W: Write> Encoder<W> {
    /// Validates and writes the header.
    pub fn new(mut w: W, header: Header) -> Result<Encoder<W>> {
        header.validate()?;
        let bytes = header.encode();
        w.write_all(&bytes)?;
        let mut checksum = Checksum::new();
        checksum.update(&bytes);
        Ok(Encoder {
            w,
            header,
            checksum,
            offset: HEADER_SIZE as u64,
            index: Vec::new(),
            last_pgno: 0,
            block: Vec::new(),
            table: lz4_flex::block::CompressTable::default(),
        })
    }

    /// Writes one page, LZ4-compressed. `data` must be exactly one page.
    pub fn encode_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        let h = &self.header;
        let refuse = |reason: String| Err(Error::Page { pgno, reason });
        if data.len() != h.page_size as usize {
            return refuse(format!(
                "{} bytes, the page size is {}",
                data.len(),
                h.page_size
            ));
        }
        if pgno == 0 || pgno > h.commit {
            return refuse(format!("outside the database of {} pages", h.commit));
        }
        if pgno <= self.last_pgno {
            return refuse(format!("not after page {}", self.last_pgno));
        }
        if pgno == lock_pgno(h.page_size) {
            return refuse("the lock page is never stored".into());
        }
        if h.is_snapshot() && pgno != next_snapshot_pgno(self.last_pgno, h.page_size) {
            return refuse(format!(
                "a snapshot holds every page; page {} is missing",
                next_snapshot_pgno(self.last_pgno, h.page_size)
            ));
        }
        self.block
            .resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
        let n = lz4_flex::block::compress_into_with_table(data, &mut self.block, &mut self.table)
            .map_err(|e| Error::Page {
            pgno,
            reason: format!("lz4 compression failed: {e}"),
        })?;
        let len = u32::try_from(n).map_err(|_| Error::Page {
            pgno,
            reason: "compressed page too large".into(),
        })?;
        let mut frame = [0u8; 10];
        frame[0..4].copy_from_slice(&pgno.to_be_bytes());
        frame[4..6].copy_from_slice(&PAGE_FLAG_SIZED_BLOCK.to_be_bytes());
        frame[6..10].copy_from_slice(&len.to_be_bytes());
        self.w.write_all(&frame)?;
        self.w.write_all(&self.block[..n])?;
        // The file checksum covers the page itself, not its compressed form.
        self.checksum.update(&frame);
        self.checksum.update(data);
        let size = 10 + u64::from(len);
        put_uvarint(&mut self.index, u64::from(pgno));
        put_uvarint(&mut self.index, self.offset);
        put_uvarint(&mut self.index, size);
        self.offset += size;
        self.last_pgno = pgno;
        Ok(())
    }

    /// Writes the end marker, the page index and the trailer; returns the writer and the trailer.
    /// `post_apply_checksum` must be 0 for a file without database checksums (the usual case).
    pub fn finish(mut self, post_apply_checksum: u64) -> Result<(W, Trailer)> {
        let h = self.header;
        if h.is_snapshot() && next_snapshot_pgno(self.last_pgno, h.page_size) <= h.commit {
            return Err(Error::Usage(format!(
                "snapshot ends at page {} of {}",
                self.last_pgno, h.commit
            )));
        }
        let no_checksum = h.flags & FLAG_NO_CHECKSUM != 0;
        if no_checksum != (post_apply_checksum == 0)
            || (!no_checksum && post_apply_checksum & CHECKSUM_FLAG == 0)
        {
            return Err(Error::Usage(
                "post-apply checksum must be 0 exactly when the file has no checksums".into(),
            ));
        }
        let mut index = std::mem::take(&mut self.index);
        put_uvarint(&mut index, 0);
        let mut tail = Vec::with_capacity(6 + index.len() + 16);
        tail.extend_from_slice(&[0u8; 6]);
        tail.extend_from_slice(&index);
        tail.extend_from_slice(&(index.len() as u64).to_be_bytes());
        tail.extend_from_slice(&post_apply_checksum.to_be_bytes());
        self.checksum.update(&tail);
        let trailer = Trailer {
            post_apply_checksum,
            file_checksum: self.checksum.finish(),
        };
        self.w.write_all(&tail)?;
        self.w.write_all(&trailer.file_checksum.to_be_bytes())?;
        self.w.flush()?;
        Ok((self.w, trailer))
    }
}

/// The page a snapshot must hold after `last` (skipping the lock page).
pub(crate) fn next_snapshot_pgno(last: u32, page_size: u32) -> u32 {
    let next = last + 1;
    if next == lock_pgno(page_size) {
        next + 1
    } else {
        next
    }
}

/// Appends `v` as an unsigned LEB128 varint (as Go's `binary.PutUvarint`).
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
