//! The b-tree half of SQLite's check (its `OP_IntegrityCk`), so that both cores can share it:
//! every page of the file belongs to exactly one b-tree, overflow chain or the freelist, or is
//! the lock-byte page; every b-tree page is well formed (its cells and free blocks tile its
//! content area exactly as its header counts them); rowids ascend through each table; all
//! leaves of a tree lie at one depth, at most 20 levels down; every overflow chain is as long as
//! its cell's payload needs.
//!
//! It is stricter than SQLite, never looser. Whatever it cannot model (an auto-vacuum file, an
//! empty page below a root) counts as found, and whatever it finds makes the caller let SQLite
//! describe the whole file. Only an `Ok` is trusted, and only when it is as strong as SQLite's
//! `ok`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{INTERIOR_INDEX, INTERIOR_TABLE, LEAF_INDEX, LEAF_TABLE, Pages, Why, be32, varint};

/// SQLite's deepest b-tree (`BTCURSOR_MAX_DEPTH`).
const MAX_LEVELS: usize = 20;

/// The most leaf bytes read at once (a 64 KiB-page interior page can have 13,000 children).
const BATCH_BYTES: usize = 1 << 20;

/// The leaves under one interior page, read a window at a time.
struct Children {
    /// Their page numbers; empty when they are read one by one.
    numbers: Vec<u32>,
    buf: Vec<u8>,
    /// The children whose pages `buf` holds.
    loaded: std::ops::Range<usize>,
}

/// The byte SQLite locks at 1 GiB: the page that holds it is never used.
const PENDING_BYTE: u64 = 0x4000_0000;

/// Which pages have been claimed, shared by every thread of one check.
pub(super) struct Claims {
    words: Vec<AtomicU64>,
    count: u32,
}

impl Claims {
    /// Pages `1..=count`, the lock-byte page claimed already.
    pub(super) fn new(count: u32, page_size: usize) -> Claims {
        let claims = Claims {
            words: (0..=count / 64).map(|_| AtomicU64::new(0)).collect(),
            count,
        };
        let pending = PENDING_BYTE / page_size as u64 + 1;
        if pending <= u64::from(count) {
            // It is in range: the claim cannot fail.
            let _ = claims.claim(pending as u32);
        }
        claims
    }

    /// Claims page `pgno` for its one owner: it must exist and be unclaimed.
    pub(super) fn claim(&self, pgno: u32) -> Result<(), Why> {
        if pgno == 0 || pgno > self.count {
            return Err("a page number is out of range");
        }
        let bit = 1u64 << (pgno % 64);
        if self.words[(pgno / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            return Err("a page is used twice");
        }
        Ok(())
    }

    /// Every page has its owner.
    pub(super) fn all_claimed(&self) -> bool {
        (1..=self.count).all(|p| {
            self.words[(p / 64) as usize].load(Ordering::Relaxed) & (1u64 << (p % 64)) != 0
        })
    }
}

/// The kind of b-tree: a rowid table's, or an index's (a `WITHOUT ROWID` table's too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Table,
    Index,
}

/// What a reader of a tree's cells is given: the rowid (tables; 0 for indexes) and the payload.
pub(super) type Visit<'v> = &'v mut dyn FnMut(i64, &[u8]) -> Result<(), Why>;

/// What a walk of one tree found.
#[derive(Debug, Default)]
pub(super) struct Walked {
    /// SQLite's count for the tree: a table's rows, an index's entries.
    pub(super) cells: u64,
    /// Why the reader of the cells gave up (its own findings: the structure is sound).
    pub(super) refused: Option<Why>,
}

/// One cell of a page, parsed.
#[derive(Debug, Clone, Copy)]
struct Cell {
    /// The left child (interior pages).
    child: u32,
    /// The rowid (table pages).
    key: i64,
    /// The payload's whole size, where its local part starts, and how long that part is.
    payload: u64,
    local_at: usize,
    local: usize,
    /// The first overflow page, 0 when the payload is all local.
    overflow: u32,
}

/// Walks the tree rooted at `root`: claims its pages and its overflow chains' and checks each
/// page, handing `visit` each row or entry in key order until it refuses one. An `Err` is a
/// finding about the file.
pub(super) fn walk(
    pages: &Pages,
    claims: &Claims,
    root: u32,
    kind: Kind,
    visit: Option<Visit<'_>>,
) -> Result<Walked, Why> {
    let mut w = Walker {
        pages,
        claims,
        kind,
        visit,
        walked: Walked::default(),
        leaf_level: None,
        last_key: None,
        gathered: Vec::new(),
        spans: Vec::new(),
        batch: Vec::new(),
    };
    w.page(root, 0)?;
    Ok(w.walked)
}

/// A guess at the number of pages of the tree rooted at `root`: the product of the fan-outs on
/// its leftmost path (a few reads). Zero for a tree it cannot read.
pub(super) fn guess(pages: &Pages, root: u32) -> u64 {
    let mut page = vec![0u8; pages.page_size];
    let (mut pgno, mut size) = (root, 1u64);
    for _ in 0..MAX_LEVELS {
        if pages.read(pgno, &mut page).is_err() {
            return 0;
        }
        let h = if pgno == 1 { 100 } else { 0 };
        let cells = u64::from(u16::from_be_bytes([page[h + 3], page[h + 4]]));
        match page[h] {
            INTERIOR_TABLE | INTERIOR_INDEX => {
                size = size.saturating_mul(cells + 1);
                let first = usize::from(u16::from_be_bytes([page[h + 12], page[h + 13]]));
                match be32(&page, first) {
                    Ok(child) => pgno = child,
                    Err(_) => return size,
                }
            }
            _ => return size,
        }
    }
    size
}

/// Walks the freelist: its trunk pages and the leaves they list, `total` pages in all.
pub(super) fn freelist(pages: &Pages, claims: &Claims, first: u32, total: u32) -> Result<(), Why> {
    let mut page = vec![0u8; pages.page_size];
    let (mut trunk, mut seen) = (first, 0u64);
    while trunk != 0 {
        claims.claim(trunk)?;
        pages.read(trunk, &mut page)?;
        let leaves = be32(&page, 4)?;
        if leaves as usize > pages.usable / 4 - 2 {
            return Err("a freelist trunk lists too many pages");
        }
        for i in 0..leaves as usize {
            claims.claim(be32(&page, 8 + 4 * i)?)?;
        }
        seen += 1 + u64::from(leaves);
        trunk = be32(&page, 0)?;
    }
    if seen != u64::from(total) {
        return Err("the freelist's length differs from the header's");
    }
    Ok(())
}

struct Walker<'p, 'v> {
    pages: &'p Pages,
    claims: &'p Claims,
    kind: Kind,
    visit: Option<Visit<'v>>,
    walked: Walked,
    /// The depth of the first leaf: every leaf must share it.
    leaf_level: Option<usize>,
    /// The last rowid met in key order, and whether a leaf held it.
    last_key: Option<(i64, bool)>,
    /// A payload gathered from its overflow chain.
    gathered: Vec<u8>,
    /// The spans of a page's cells and free blocks (start << 16 | end).
    spans: Vec<u32>,
    /// The pages of the leaves under one interior page.
    batch: Vec<u8>,
}

impl Walker<'_, '_> {
    fn page(&mut self, pgno: u32, level: usize) -> Result<(), Why> {
        let mut page = vec![0u8; self.pages.page_size];
        self.pages.read(pgno, &mut page)?;
        self.page_in(pgno, level, &page)
    }

    /// Checks page `pgno`, already read into `page`, and the subtree below it.
    fn page_in(&mut self, pgno: u32, level: usize, page: &[u8]) -> Result<(), Why> {
        self.claims.claim(pgno)?;
        if level >= MAX_LEVELS {
            return Err("a b-tree is deeper than SQLite allows");
        }
        let (leaf, right, cells) = self.parse(page, pgno)?;
        if leaf {
            // SQLite never leaves a page below the root empty; a tree that has one is SQLite's
            // to judge.
            if cells.is_empty() && level > 0 {
                return Err("an empty page below a b-tree's root");
            }
            match self.leaf_level {
                None => self.leaf_level = Some(level),
                Some(l) if l != level => return Err("a b-tree's leaves lie at different depths"),
                Some(_) => {}
            }
        } else if cells.is_empty() {
            return Err("an interior page without cells");
        }
        // Leaves are read a run of consecutive pages at a time (one read for what a bulk load
        // wrote in order), at most BATCH_BYTES at once.
        let batched = !leaf && self.leaf_level == Some(level + 1);
        let mut children = Children {
            numbers: if batched {
                cells.iter().map(|c| c.child).chain([right]).collect()
            } else {
                Vec::new()
            },
            buf: if batched {
                std::mem::take(&mut self.batch)
            } else {
                Vec::new()
            },
            loaded: 0..0,
        };
        let result = self.cells_in(page, level, leaf, right, &cells, &mut children);
        // The buffer is kept: growing it once saves zeroing a gigabyte for a gigabyte of leaves.
        if batched {
            self.batch = children.buf;
        }
        result
    }

    /// Walks a page's cells in key order, with its children's subtrees between them.
    fn cells_in(
        &mut self,
        page: &[u8],
        level: usize,
        leaf: bool,
        right: u32,
        cells: &[Cell],
        children: &mut Children,
    ) -> Result<(), Why> {
        for (k, cell) in cells.iter().enumerate() {
            if !leaf {
                self.child(children, k, cell.child, level + 1)?;
            }
            match self.kind {
                Kind::Table if !leaf => {
                    // An interior key bounds its left subtree from above: not below its last key.
                    match self.last_key {
                        Some((k, _)) if cell.key >= k => {}
                        _ => return Err("rowids out of order"),
                    }
                    self.last_key = Some((cell.key, false));
                    continue;
                }
                Kind::Table => {
                    if self.last_key.is_some_and(|(k, _)| cell.key <= k) {
                        return Err("rowids out of order");
                    }
                    self.last_key = Some((cell.key, true));
                }
                Kind::Index => {}
            }
            self.walked.cells += 1;
            self.content(page, cell)?;
        }
        if !leaf {
            self.child(children, cells.len(), right, level + 1)?;
        }
        Ok(())
    }

    /// Walks child `k` of an interior page (page `pgno`): from the batch if the children are
    /// batched (reading the next window of them first if needed), else read alone.
    fn child(
        &mut self,
        children: &mut Children,
        k: usize,
        pgno: u32,
        level: usize,
    ) -> Result<(), Why> {
        if children.numbers.is_empty() {
            return self.page(pgno, level);
        }
        let size = self.pages.page_size;
        if !children.loaded.contains(&k) {
            let window = (BATCH_BYTES / size).max(1);
            let end = (k + window).min(children.numbers.len());
            self.read_run(&children.numbers[k..end], &mut children.buf)?;
            children.loaded = k..end;
        }
        let at = (k - children.loaded.start) * size;
        let buf = std::mem::take(&mut children.buf);
        let result = self.page_in(pgno, level, &buf[at..at + size]);
        children.buf = buf;
        result
    }

    /// Reads the pages `numbers` one after another into `pages`, each run of consecutive page
    /// numbers at once.
    fn read_run(&self, numbers: &[u32], pages: &mut Vec<u8>) -> Result<(), Why> {
        let size = self.pages.page_size;
        if pages.len() < numbers.len() * size {
            pages.resize(numbers.len() * size, 0);
        }
        let mut start = 0;
        while start < numbers.len() {
            let mut end = start + 1;
            while end < numbers.len() && numbers[end] == numbers[end - 1].wrapping_add(1) {
                end += 1;
            }
            let first = numbers[start];
            if first == 0
                || u64::from(first) + (end - start) as u64 - 1 > u64::from(self.pages.count)
            {
                return Err("a page number is out of range");
            }
            self.pages
                .read_at(first, &mut pages[start * size..end * size])?;
            start = end;
        }
        Ok(())
    }

    /// Claims a cell's overflow chain and hands its payload to the reader, if there is one.
    fn content(&mut self, page: &[u8], cell: &Cell) -> Result<(), Why> {
        let wanted = self.visit.is_some() && self.walked.refused.is_none();
        let local = &page[cell.local_at..cell.local_at + cell.local];
        let payload: &[u8] = if cell.overflow == 0 {
            local
        } else {
            let mut gathered = std::mem::take(&mut self.gathered);
            gathered.clear();
            if wanted {
                gathered.extend_from_slice(local);
            }
            self.chain(cell, wanted.then_some(&mut gathered))?;
            self.gathered = gathered;
            &self.gathered
        };
        if wanted
            && let Some(visit) = self.visit.as_mut()
            && let Err(why) = visit(cell.key, payload)
        {
            self.walked.refused = Some(why);
        }
        Ok(())
    }

    /// Claims the overflow pages of `cell`, gathering their bytes into `into` if given.
    fn chain(&self, cell: &Cell, mut into: Option<&mut Vec<u8>>) -> Result<(), Why> {
        let per_page = (self.pages.usable - 4) as u64;
        let pages = (cell.payload - cell.local as u64).div_ceil(per_page);
        let mut left = cell.payload - cell.local as u64;
        let mut next = cell.overflow;
        let mut buf = vec![
            0u8;
            if into.is_some() {
                self.pages.page_size
            } else {
                4
            }
        ];
        for _ in 0..pages {
            if next == 0 {
                return Err("an overflow chain ends early");
            }
            self.claims.claim(next)?;
            if let Some(into) = into.as_deref_mut() {
                self.pages.read(next, &mut buf)?;
                let take = left.min(per_page) as usize;
                into.extend_from_slice(&buf[4..4 + take]);
                left -= take as u64;
            } else {
                self.pages.read_at(next, &mut buf)?;
            }
            next = be32(&buf, 0)?;
        }
        if next != 0 {
            return Err("an overflow chain runs past its payload");
        }
        Ok(())
    }

    /// Checks a page's header, cells and free blocks; returns whether it is a leaf, its right
    /// child and its cells in pointer order.
    fn parse(&mut self, page: &[u8], pgno: u32) -> Result<(bool, u32, Vec<Cell>), Why> {
        let usable = self.pages.usable;
        let h = if pgno == 1 { 100 } else { 0 };
        let leaf = match (self.kind, page[h]) {
            (Kind::Table, LEAF_TABLE) | (Kind::Index, LEAF_INDEX) => true,
            (Kind::Table, INTERIOR_TABLE) | (Kind::Index, INTERIOR_INDEX) => false,
            _ => return Err("a b-tree page of the wrong kind"),
        };
        let u16_at = |at: usize| usize::from(u16::from_be_bytes([page[at], page[at + 1]]));
        let first_free = u16_at(h + 1);
        let count = u16_at(h + 3);
        let top = match u16_at(h + 5) {
            0 => 65_536,
            n => n,
        };
        let fragmented = usize::from(page[h + 7]);
        let pointers = h + if leaf { 8 } else { 12 };
        let right = if leaf { 0 } else { be32(page, h + 8)? };
        if count > (self.pages.page_size - 8) / 6 {
            return Err("a page claims too many cells");
        }
        if top < pointers + 2 * count || top > usable {
            return Err("a page's content area is out of place");
        }

        let (min_local, max_local) = self.pages.local_bounds(self.kind == Kind::Table && leaf);
        let mut cells = Vec::with_capacity(count);
        self.spans.clear();
        for i in 0..count {
            let at = u16_at(pointers + 2 * i);
            if at < top || at > usable - 4 {
                return Err("a cell pointer is out of range");
            }
            let mut pos = at;
            let child = if leaf {
                0
            } else {
                pos += 4;
                be32(page, at)?
            };
            let (size, cell) = if self.kind == Kind::Table && !leaf {
                let (key, n) = varint(page, pos)?;
                (
                    4 + n,
                    Cell {
                        child,
                        key: key as i64,
                        payload: 0,
                        local_at: pos,
                        local: 0,
                        overflow: 0,
                    },
                )
            } else {
                let (payload, n) = varint(page, pos)?;
                // SQLite reads a payload size's ninth byte as 7 bits, not 8, and keeps 32 bits:
                // no size it writes needs more than 5 bytes, and a longer one is its to judge.
                if n > 5 {
                    return Err("a payload size is longer than SQLite writes");
                }
                pos += n;
                let key = if self.kind == Kind::Table {
                    let (key, n) = varint(page, pos)?;
                    pos += n;
                    key as i64
                } else {
                    0
                };
                // No payload is longer than the file (nor, in SQLite, than 2^31).
                if payload > u64::from(self.pages.count) * usable as u64 || payload > 1 << 31 {
                    return Err("a cell's payload is longer than the file");
                }
                let payload_len = payload as usize;
                let (local, size) = if payload_len <= max_local {
                    (payload_len, (pos - at + payload_len).max(4))
                } else {
                    let surplus = min_local + (payload_len - min_local) % (usable - 4);
                    let local = if surplus <= max_local {
                        surplus
                    } else {
                        min_local
                    };
                    (local, pos - at + local + 4)
                };
                if at + size > usable {
                    return Err("a cell runs off its page");
                }
                let overflow = if local < payload_len {
                    be32(page, pos + local)?
                } else {
                    0
                };
                // A record's header counts its own size byte and at least one field's.
                if payload > 0 && page[pos] < 2 {
                    return Err("a cell's record header is too short");
                }
                (
                    size,
                    Cell {
                        child,
                        key,
                        payload,
                        local_at: pos,
                        local,
                        overflow,
                    },
                )
            };
            if at + size > usable {
                return Err("a cell runs off its page");
            }
            self.spans
                .push(((at as u32) << 16) | (at + size - 1) as u32);
            cells.push(cell);
        }

        // Free blocks: in ascending order, apart, inside the content area.
        let (mut block, mut free) = (first_free, 0usize);
        if block != 0 && block < top {
            return Err("a free block lies before the content area");
        }
        while block != 0 {
            if block > usable - 4 {
                return Err("a free block is out of range");
            }
            let (next, size) = (u16_at(block), u16_at(block + 2));
            if size < 4 || block + size > usable {
                return Err("a free block has a bad size");
            }
            if next != 0 && next <= block + size + 3 {
                return Err("free blocks out of order");
            }
            free += size;
            self.spans
                .push(((block as u32) << 16) | (block + size - 1) as u32);
            block = next;
        }
        if fragmented + top + free > usable {
            return Err("a page's free space is more than the page");
        }

        // Cells and free blocks tile the content area; the gaps are the fragmented bytes.
        self.spans.sort_unstable();
        let mut end = top - 1;
        let mut gaps = 0usize;
        for span in &self.spans {
            let (start, last) = ((span >> 16) as usize, (span & 0xffff) as usize);
            if start <= end {
                return Err("two cells or free blocks overlap");
            }
            gaps += start - end - 1;
            end = last;
        }
        gaps += usable - end - 1;
        if gaps != fragmented {
            return Err("a page's fragmented bytes differ from its header's count");
        }
        Ok((leaf, right, cells))
    }
}
