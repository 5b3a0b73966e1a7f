//! A file replica's journal: `<root>/tradevault-journal`, one preallocated file into which sync
//! mode and the fine log (see `replicate::engine::Db::fine_log`) append each shipment (its LTX
//! file, whole) with one `fdatasync`, before the shipment is in the replica's `ltx/` layout.
//!
//! Why: a new file in the layout costs a new inode, an fsync of it and one of its directory
//! (0.6-0.8 ms on this machine's ext4), where overwriting a few KiB of a file whose blocks are
//! already written costs one data fsync (0.1 ms). So in sync mode a commit's answer waits for the
//! journal alone, and the layout follows a few milliseconds later, merged.
//!
//! Layout: records from offset 0, each a 24-byte head (`TVJ1`, the LTX length as u32, the listed
//! time in ms as i64, and 8 bytes of blake3 over those 16 bytes and the LTX header) then the LTX
//! bytes, the next record at the next multiple of 8. The file is filled with zeros when created,
//! so no append changes its size or allocates a block. When the next record does not fit (or a
//! new writer opens a journal that holds records), the journal is *archived*: renamed whole into
//! `<root>/tradevault-segments/` as `<first TXID>-<last TXID>.tvj` (16 hex digits each), and a new
//! lap starts in a zero-filled file (the spare, `tradevault-journal.spare`, made ahead off the
//! hot path by [`make_spare`], or made then). So a new lap never waits for the layout, and no
//! record is overwritten: a segment is deleted once the layout holds it, in sync mode (see
//! `replicate::journal`), and with a fine log once it is also past the fine window
//! ([`remove_segments_aged`]). Opening a journal cuts off the records at its end whose bytes do
//! not verify (a torn append) before archiving it. A reader walks each file from offset 0 to the
//! first head that does not check (zeros, or the torn end of an append a crash cut) or whose
//! TXIDs do not follow the record before (the older lap a ring journal of an earlier build left).
//! Whatever a walk finds is an LTX file verified by its own checksum before use, and used only
//! where it continues the chain from the layout's newest file (see
//! [`FileReplica::journal_tail`](super::FileReplica::journal_tail)).
//!
//! Litestream ignores the file: its restore reads `ltx/` only.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::file::sync_dir;
use crate::error::{Error, Result};

/// The file's name under a replica's root.
pub const JOURNAL_NAME: &str = "tradevault-journal";
/// The directory of archived laps under a replica's root.
pub const SEGMENTS_DIR: &str = "tradevault-segments";
/// The zero-filled file the next lap starts in, under a replica's root.
pub const SPARE_NAME: &str = "tradevault-journal.spare";
/// The level the journal's records are listed at, so that they are told apart from the layout's
/// files (Litestream's levels are 0 to 9).
pub const JOURNAL_LEVEL: u32 = 100;
/// The journal's size: 16 MiB, several seconds of shipments at 2,000 commits per second.
pub const JOURNAL_BYTES: u64 = 16 << 20;

const MAGIC: [u8; 4] = *b"TVJ1";
const HEAD: usize = 24;

/// One record found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where its LTX bytes start in the journal.
    pub offset: u64,
    /// Their length.
    pub len: u64,
    /// Its listed time (ms since the epoch): a lower bound of the commit times it holds.
    pub created_at_ms: i64,
    /// First transaction, from its LTX header.
    pub min_txid: u64,
    /// Last transaction.
    pub max_txid: u64,
}

/// The journal's path under a replica rooted at `root`.
pub fn path(root: &Path) -> PathBuf {
    root.join(JOURNAL_NAME)
}

fn check(head: &[u8], ltx_header: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&head[..16]);
    h.update(ltx_header);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

fn aligned(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Whether a journal of [`JOURNAL_BYTES`] takes a record of `bytes` LTX bytes at all.
pub fn may_hold(bytes: u64) -> bool {
    record_len(bytes) <= JOURNAL_BYTES / 4
}

/// The room a record of `bytes` LTX bytes takes in the journal.
pub fn record_len(bytes: u64) -> u64 {
    aligned(HEAD as u64 + bytes)
}

/// Appends records to a replica's journal (one writer per replica).
#[derive(Debug)]
pub struct Writer {
    file: File,
    path: PathBuf,
    size: u64,
    /// Where the next record goes.
    offset: u64,
    /// The file's inode: an append to a file no longer at `path` (the replica's directory removed
    /// or replaced) would be lost, so it fails instead.
    ino: u64,
    root: PathBuf,
    /// The first and last TXIDs of this lap's records, which name its segment.
    first_txid: u64,
    last_txid: u64,
}

impl Writer {
    /// Opens the journal under `root` for a new lap from offset 0, always in a new file of `size`
    /// bytes of zeros: the records a journal there holds are archived first (see the module doc),
    /// and a file with none readable is removed (what a torn first append left in it must never
    /// follow a new record).
    pub fn open(root: &Path, size: u64) -> Result<Writer> {
        let path = path(root);
        fs::create_dir_all(root).map_err(|e| Error::io("create replica directory", root, e))?;
        let held = cut_torn(&path, heads(&path, usize::MAX)?)?;
        if let (Some(first), Some(last)) = (held.first(), held.last()) {
            archive(root, first.min_txid, last.max_txid)?;
        } else if path.exists() {
            fs::remove_file(&path).map_err(|e| Error::io("remove journal", &path, e))?;
        }
        fresh(root, size)?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open journal", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("read journal metadata", &path, e))?;
        Ok(Writer {
            file,
            path,
            size: meta.len(),
            offset: 0,
            ino: meta.ino(),
            root: root.to_owned(),
            first_txid: 0,
            last_txid: 0,
        })
    }

    /// Archives this lap's records as a segment and starts a new lap in a zero-filled file. An
    /// empty lap starts again where it is.
    pub fn new_lap(&mut self) -> Result<()> {
        if self.offset == 0 {
            return Ok(());
        }
        let size = self.size;
        archive(&self.root, self.first_txid, self.last_txid)?;
        *self = Writer::open(&self.root, size)?;
        Ok(())
    }

    /// The first and last TXIDs this lap holds; None before its first record.
    pub fn lap(&self) -> Option<(u64, u64)> {
        (self.offset > 0).then_some((self.first_txid, self.last_txid))
    }

    /// Bytes left in this lap.
    pub fn room(&self) -> u64 {
        self.size - self.offset
    }

    /// Whether one record of `bytes` LTX bytes may go into the journal at all (at most a quarter
    /// of it; a larger one goes to the layout alone).
    pub fn could_fit(&self, bytes: u64) -> bool {
        record_len(bytes) <= self.size / 4
    }

    /// Appends `records` (each an LTX file and its listed time) with one write and one
    /// `fdatasync`: when this returns, they are durable. They must fit in [`Writer::room`]
    /// ([`record_len`] each).
    pub fn append(&mut self, records: &[(&[u8], i64)]) -> Result<()> {
        let mut buf = Vec::new();
        let (mut first, mut last) = (self.first_txid, self.last_txid);
        for (ltx, created_at_ms) in records {
            let header = ltx.get(..ltx::HEADER_SIZE).ok_or_else(|| Error::Ltx {
                name: self.path.display().to_string(),
                source: ltx::Error::Header("record shorter than an LTX header".into()),
            })?;
            // A record a reader cannot decode would hide every record after it.
            let decoded = ltx::Header::decode(header.try_into().unwrap_or(&[0; ltx::HEADER_SIZE]))
                .map_err(|source| Error::Ltx {
                    name: self.path.display().to_string(),
                    source,
                })?;
            // Nor would a reader go past a record that does not follow the one before.
            if (self.offset > 0 || !buf.is_empty()) && decoded.min_txid <= last {
                return Err(Error::Internal {
                    message: format!(
                        "journal record of txids {}-{} after txid {last}",
                        decoded.min_txid, decoded.max_txid
                    ),
                });
            }
            if self.offset == 0 && buf.is_empty() {
                first = decoded.min_txid;
            }
            last = decoded.max_txid;
            let mut head = [0u8; HEAD];
            head[..4].copy_from_slice(&MAGIC);
            let len = u32::try_from(ltx.len()).map_err(|_| Error::Internal {
                message: format!("journal record of {} bytes", ltx.len()),
            })?;
            head[4..8].copy_from_slice(&len.to_le_bytes());
            head[8..16].copy_from_slice(&created_at_ms.to_le_bytes());
            let sum = check(&head, header);
            head[16..24].copy_from_slice(&sum);
            buf.extend_from_slice(&head);
            buf.extend_from_slice(ltx);
            buf.resize(
                usize::try_from(aligned(buf.len() as u64)).unwrap_or(buf.len()),
                0,
            );
        }
        match fs::metadata(&self.path) {
            Ok(m) if m.ino() == self.ino => {}
            Ok(_) | Err(_) => {
                return Err(Error::io(
                    "write journal",
                    &self.path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the journal was removed or replaced",
                    ),
                ));
            }
        }
        if self.offset + buf.len() as u64 > self.size {
            return Err(Error::Internal {
                message: "journal records past the journal's end".into(),
            });
        }
        self.file
            .write_all_at(&buf, self.offset)
            .map_err(|e| Error::io("write journal", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync journal", &self.path, e))?;
        self.offset += buf.len() as u64;
        (self.first_txid, self.last_txid) = (first, last);
        Ok(())
    }
}

/// Of `held`, the records of the journal at `path`, those up to the last whose bytes verify: a
/// crash tears only the last append, but an append may hold several records, and a torn one's
/// head may have reached the disk without all of its bytes. The heads of those cut off are
/// zeroed (durably) before the journal is archived, so that no reader of its segment lists them.
fn cut_torn(path: &Path, mut held: Vec<Record>) -> Result<Vec<Record>> {
    if held.is_empty() {
        return Ok(held);
    }
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open journal", path, e))?;
    let mut cut = false;
    while let Some(last) = held.last() {
        let bytes = record_bytes(&file, path, last)?;
        let whole = super::verify_ltx(bytes.as_slice(), String::new)
            .is_ok_and(|h| (h.min_txid, h.max_txid) == (last.min_txid, last.max_txid));
        if whole {
            break;
        }
        file.write_all_at(&[0u8; HEAD], last.offset - HEAD as u64)
            .map_err(|e| Error::io("write journal", path, e))?;
        cut = true;
        held.pop();
    }
    if cut {
        file.sync_data()
            .map_err(|e| Error::io("fdatasync journal", path, e))?;
    }
    Ok(held)
}

/// Writes a zero-filled file of `size` bytes at `to` (through a temporary name, fsynced, with
/// its directory).
fn zeros(root: &Path, to: &Path, size: u64) -> Result<()> {
    let mut temp = to.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let filled = (|| {
        let file = File::create(&temp).map_err(|e| Error::io("create journal", &temp, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            let n = zeros
                .len()
                .min(usize::try_from(size - at).unwrap_or(usize::MAX));
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| Error::io("fill journal", &temp, e))?;
            at += n as u64;
        }
        file.sync_all()
            .map_err(|e| Error::io("fsync journal", &temp, e))
    })();
    // A full disk leaves no half-made file behind.
    if let Err(e) = filled {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    fs::rename(&temp, to).map_err(|e| Error::io("rename journal", to, e))?;
    sync_dir(root)
}

/// Puts a new journal of `size` bytes in place: the spare if it has that size, else a new file.
fn fresh(root: &Path, size: u64) -> Result<()> {
    let (spare, to) = (root.join(SPARE_NAME), path(root));
    if fs::metadata(&spare).is_ok_and(|m| m.len() == size) {
        fs::rename(&spare, &to).map_err(|e| Error::io("rename journal", &to, e))?;
        return sync_dir(root);
    }
    zeros(root, &to, size)
}

/// Makes the zero-filled file the next lap starts in, if there is none: call it off the hot
/// path (the replica's maintenance does). True if it made one.
pub fn make_spare(root: &Path, size: u64) -> Result<bool> {
    let spare = root.join(SPARE_NAME);
    if fs::metadata(&spare).is_ok_and(|m| m.len() == size) || !path(root).exists() {
        return Ok(false);
    }
    zeros(root, &spare, size)?;
    Ok(true)
}

/// Renames the journal under `root`, whose records run from `first` to `last`, into the
/// segments, durably.
fn archive(root: &Path, first: u64, last: u64) -> Result<()> {
    let dir = root.join(SEGMENTS_DIR);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(|e| Error::io("create journal segments", &dir, e))?;
        sync_dir(root)?;
    }
    let to = dir.join(segment_name(first, last));
    let from = path(root);
    fs::rename(&from, &to).map_err(|e| Error::io("archive journal", &to, e))?;
    sync_dir(&dir)?;
    sync_dir(root)
}

/// A segment's file name.
pub fn segment_name(first: u64, last: u64) -> String {
    format!("{first:016x}-{last:016x}.tvj")
}

/// The segments under `root`: (first TXID, last TXID, path), in TXID order.
pub fn segments(root: &Path) -> Result<Vec<(u64, u64, PathBuf)>> {
    let dir = root.join(SEGMENTS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list journal segments", &dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((a, b)) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".tvj"))
            .and_then(|n| n.split_once('-'))
        else {
            continue;
        };
        if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
            found.push((a, b, entry.path()));
        }
    }
    found.sort_by_key(|(a, b, _)| (*a, *b));
    Ok(found)
}

/// How many files the journal, its spare and its segments under `root` make, and their bytes
/// (what can be read of them).
pub fn files(root: &Path) -> (u64, u64) {
    let mut paths = vec![path(root), root.join(SPARE_NAME)];
    paths.extend(
        segments(root)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, _, p)| p),
    );
    paths
        .iter()
        .filter_map(|p| fs::metadata(p).ok())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// Removes the segments under `root` whose records all end at or before `txid` (the layout
/// holds them); returns how many.
pub fn remove_segments_through(root: &Path, txid: u64) -> Result<usize> {
    let mut removed = 0;
    for (_, last, path) in segments(root)? {
        if last <= txid {
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove journal segment", &path, e)),
            }
        }
    }
    Ok(removed)
}

/// The records of the journal under `root` and of the segments holding a TXID after `after`,
/// with their LTX bytes, in the order written (each file from offset 0 to the first head that does
/// not check or does not follow the record before); none when there are none. The journal is read
/// first (through one open file: see [`read_records`]), the segments after it: a lap archived
/// meanwhile is found in its segment, so the records are those of one moment or later, never
/// fewer. Their LTX bytes are not verified
/// here. Segments wholly at or before `after` are not read: a replica keeps an hour of them for
/// its fine points (see [`segment_records`]).
pub fn read_after(root: &Path, after: u64) -> Result<Vec<(Record, Vec<u8>)>> {
    let journal = read_records(&path(root))?;
    let mut all = Vec::new();
    for (_, _, segment) in segments(root)?
        .into_iter()
        .filter(|(_, last, _)| *last > after)
    {
        // One removed meanwhile reads as empty: the layout holds it.
        all.extend(read_records(&segment)?);
    }
    let newest = all
        .last()
        .map_or(0, |(r, _): &(Record, Vec<u8>)| r.max_txid);
    // A lap archived after the journal was read is in both: its records once.
    all.extend(journal.into_iter().filter(|(r, _)| r.min_txid > newest));
    Ok(all)
}

/// The records of the journal or segment at `path`, with their bytes, read through one open
/// file (heads first, then each record's bytes): a journal archived and replaced meanwhile is
/// still the file that was opened. None when it is missing.
fn read_records(path: &Path) -> Result<Vec<(Record, Vec<u8>)>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("open journal", path, e)),
    };
    file_heads(&file, path, usize::MAX)?
        .into_iter()
        .map(|r| {
            let bytes = record_bytes(&file, path, &r)?;
            Ok((r, bytes))
        })
        .collect()
}

/// `record`'s LTX bytes, read from `file` (at `path`).
fn record_bytes(file: &File, path: &Path, record: &Record) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; usize::try_from(record.len).unwrap_or(0)];
    file.read_exact_at(&mut bytes, record.offset)
        .map_err(|e| Error::io("read journal", path, e))?;
    Ok(bytes)
}

/// The records of the segments and the journal under `root` (see [`read_after`]), without their
/// bytes.
pub fn scan(root: &Path) -> Result<Vec<Record>> {
    Ok(read_after(root, 0)?.into_iter().map(|(r, _)| r).collect())
}

/// The newest TXID the journal or a segment under `root` holds (0: none), reading the journal
/// and the segments' names only.
pub fn newest_txid(root: &Path) -> Result<u64> {
    let journal = heads(&path(root), usize::MAX)?
        .last()
        .map_or(0, |r| r.max_txid);
    let segments = segments(root)?.last().map_or(0, |(_, last, _)| *last);
    Ok(journal.max(segments))
}

/// The records of the segment at `path`, read head by head (a few hundred small reads, not its
/// 16 MiB); none when it is missing. A segment never changes once archived, so where a record's
/// bytes are ([`Record::offset`], [`Record::len`]) stays true until it is removed.
pub fn segment_records(path: &Path) -> Result<Vec<Record>> {
    heads(path, usize::MAX)
}

/// The first record of the journal or segment at `path`, read alone.
pub fn first_record(path: &Path) -> Result<Option<Record>> {
    Ok(heads(path, 1)?.into_iter().next())
}

/// Reads `record`'s LTX bytes from the segment at `path` (see [`segment_records`]).
pub fn read_record(path: &Path, record: &Record) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io("open journal segment", path, e))?;
    record_bytes(&file, path, record)
}

/// The LTX bytes of the record of TXIDs `min..=max` under `root`: from the journal, or else from
/// the segment named for a range holding it (the journal is read first: a lap archived meanwhile
/// is in its segment); None when neither holds it.
pub fn find_record(root: &Path, min: u64, max: u64) -> Result<Option<Vec<u8>>> {
    let journal = path(root);
    match File::open(&journal) {
        // Its heads, then the one record's bytes, through the file opened.
        Ok(file) => {
            let found = file_heads(&file, &journal, usize::MAX)?
                .into_iter()
                .find(|r| (r.min_txid, r.max_txid) == (min, max));
            if let Some(r) = found {
                return record_bytes(&file, &journal, &r).map(Some);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("open journal", &journal, e)),
    }
    let Some((_, _, segment)) = segments(root)?
        .into_iter()
        .find(|(first, last, _)| *first <= min && max <= *last)
    else {
        return Ok(None);
    };
    segment_records(&segment)?
        .iter()
        .find(|r| (r.min_txid, r.max_txid) == (min, max))
        .map(|r| read_record(&segment, r))
        .transpose()
}

/// Removes the oldest segments under `root` while the layout holds them (their last TXID at or
/// before `held`) and every record in them was listed before `before_ms` (the next segment's, or
/// the journal's, first record was); returns how many. Reads at most the first head of the
/// segment after the last one removed.
pub fn remove_segments_aged(root: &Path, held: u64, before_ms: i64) -> Result<usize> {
    let listed = segments(root)?;
    let mut removed = 0;
    for (i, (_, last, segment)) in listed.iter().enumerate() {
        if *last > held {
            break;
        }
        let next = match listed.get(i + 1) {
            Some((_, _, next)) => next.clone(),
            None => path(root),
        };
        // A record after this segment's last was listed no earlier than it was.
        match first_record(&next)? {
            Some(r) if r.created_at_ms < before_ms => {}
            _ => break,
        }
        match fs::remove_file(segment) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove journal segment", segment, e)),
        }
    }
    Ok(removed)
}

/// The first `max` records of the file at `path`, read by head: each head and LTX header with one
/// read, checked by [`parse`].
fn heads(path: &Path, max: usize) -> Result<Vec<Record>> {
    match File::open(path) {
        Ok(file) => file_heads(&file, path, max),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("open journal", path, e)),
    }
}

/// [`heads`] of an open `file` (at `path`).
fn file_heads(file: &File, path: &Path, max: usize) -> Result<Vec<Record>> {
    let size = file
        .metadata()
        .map_err(|e| Error::io("read journal metadata", path, e))?
        .len();
    let mut records: Vec<Record> = Vec::new();
    let mut buf = [0u8; HEAD + ltx::HEADER_SIZE];
    let mut at = 0u64;
    while records.len() < max && at + buf.len() as u64 <= size {
        file.read_exact_at(&mut buf, at)
            .map_err(|e| Error::io("read journal", path, e))?;
        let Some(record) = parse(&buf, at, size, records.last()) else {
            break;
        };
        at = aligned(record.offset + record.len);
        records.push(record);
    }
    Ok(records)
}

/// The record whose head and LTX header are `head` (at least [`HEAD`] plus an LTX header's
/// bytes), at offset `at` of a file of `size` bytes, after `before`: None where a walk ends (zeros,
/// a torn append, a head that does not check, or TXIDs that do not follow `before`).
fn parse(head: &[u8], at: u64, size: u64, before: Option<&Record>) -> Option<Record> {
    if head.get(..4)? != MAGIC {
        return None;
    }
    let len = u64::from(u32::from_le_bytes(head[4..8].try_into().ok()?));
    let created_at_ms = i64::from_le_bytes(head[8..16].try_into().ok()?);
    let start = at + HEAD as u64;
    let header = head.get(HEAD..HEAD + ltx::HEADER_SIZE)?;
    if len < ltx::HEADER_SIZE as u64 || start + len > size || head[16..24] != check(head, header) {
        return None;
    }
    let decoded = ltx::Header::decode(header.try_into().ok()?).ok()?;
    // An older lap's record, left by a ring journal of an earlier build.
    if before.is_some_and(|r| decoded.min_txid <= r.max_txid) {
        return None;
    }
    Some(Record {
        offset: start,
        len,
        created_at_ms,
        min_txid: decoded.min_txid,
        max_txid: decoded.max_txid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ltx_file(min: u64, max: u64) -> Vec<u8> {
        let header = ltx::Header::new(512, 1, min, max, 1_000 + max as i64);
        let mut enc = ltx::Encoder::new(Vec::new(), header).expect("header");
        enc.encode_page(1, &[max as u8; 512]).expect("page");
        enc.finish(0).expect("finish").0
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_append_ends_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 64 << 10).unwrap();
        assert!(
            scan(dir.path()).unwrap().is_empty(),
            "a new journal holds nothing"
        );
        let (a, b, c) = (ltx_file(1, 1), ltx_file(2, 3), ltx_file(4, 4));
        w.append(&[(&a, 10), (&b, 20)]).unwrap();
        w.append(&[(&c, 30)]).unwrap();
        let found = scan(dir.path()).unwrap();
        let ranges: Vec<_> = found
            .iter()
            .map(|r| (r.min_txid, r.max_txid, r.created_at_ms))
            .collect();
        assert_eq!(ranges, vec![(1, 1, 10), (2, 3, 20), (4, 4, 30)]);
        assert_eq!(read_after(dir.path(), 0).unwrap()[1].1, b);

        // A crash in the middle of the last append: its head does not check.
        let file = File::options().write(true).open(path(dir.path())).unwrap();
        file.write_all_at(&[0xff; 8], found[2].offset - 4).unwrap();
        let found = scan(dir.path()).unwrap();
        assert_eq!(
            found.len(),
            2,
            "the torn record and nothing after it: {found:?}"
        );
    }

    #[test]
    fn a_new_lap_archives_the_last_as_a_segment_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut w = Writer::open(root, 64 << 10).unwrap();
        assert!(
            w.new_lap().is_ok() && segments(root).unwrap().is_empty(),
            "an empty lap is not archived"
        );
        let mut txid = 0;
        while w.room() >= record_len(5_000) {
            txid += 1;
            w.append(&[(&ltx_file(txid, txid), txid as i64)]).unwrap();
        }
        assert!(txid > 3, "several records fit");
        assert_eq!(w.lap(), Some((1, txid)));
        assert!(
            w.append(&[(&ltx_file(txid, txid), 0)]).is_err(),
            "a record must follow the one before"
        );
        assert!(make_spare(root, 64 << 10).unwrap(), "a spare is made");
        assert!(!make_spare(root, 64 << 10).unwrap(), "and only one");
        w.new_lap().unwrap();
        assert!(
            !root.join(SPARE_NAME).exists(),
            "the new lap took the spare"
        );
        let first_lap = txid;
        for _ in 0..2 {
            txid += 1;
            w.append(&[(&ltx_file(txid, txid), txid as i64)]).unwrap();
        }
        let listed: Vec<_> = segments(root)
            .unwrap()
            .into_iter()
            .map(|(a, b, _)| (a, b))
            .collect();
        assert_eq!(listed, vec![(1, first_lap)]);
        let found: Vec<u64> = scan(root).unwrap().iter().map(|r| r.max_txid).collect();
        assert_eq!(
            found,
            (1..=txid).collect::<Vec<_>>(),
            "every record, in order"
        );
        let all = read_after(root, 0).unwrap();
        assert_eq!(all[0].1, ltx_file(1, 1), "a segment's record reads back");

        // Reopening archives what the journal held, and starts empty.
        let mut again = Writer::open(root, 64 << 10).unwrap();
        assert_eq!(again.lap(), None);
        assert_eq!(segments(root).unwrap().len(), 2);
        again.append(&[(&ltx_file(txid + 1, txid + 1), 0)]).unwrap();
        assert_eq!(scan(root).unwrap().len() as u64, txid + 1);

        // Segments go once the layout holds them.
        assert_eq!(remove_segments_through(root, first_lap).unwrap(), 1);
        let found: Vec<u64> = scan(root).unwrap().iter().map(|r| r.max_txid).collect();
        assert_eq!(found, (first_lap + 1..=txid + 1).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_is_found_in_the_journal_or_in_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut w = Writer::open(root, 64 << 10).unwrap();
        w.append(&[(&ltx_file(1, 1), 0), (&ltx_file(2, 3), 0)])
            .unwrap();
        w.new_lap().unwrap();
        w.append(&[(&ltx_file(4, 4), 0)]).unwrap();
        assert_eq!(segments(root).unwrap().len(), 1);
        assert_eq!(find_record(root, 2, 3).unwrap(), Some(ltx_file(2, 3)));
        assert_eq!(find_record(root, 4, 4).unwrap(), Some(ltx_file(4, 4)));
        assert_eq!(find_record(root, 2, 2).unwrap(), None, "only whole records");
        assert_eq!(find_record(root, 5, 5).unwrap(), None);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_before_its_lap_is_archived() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut w = Writer::open(root, 64 << 10).unwrap();
        w.append(&[(&ltx_file(1, 1), 0), (&ltx_file(2, 2), 0)])
            .unwrap();
        let last = scan(root).unwrap()[1].clone();
        // Its head reached the disk, the end of its bytes did not.
        let file = File::options().write(true).open(path(root)).unwrap();
        file.write_all_at(&[0u8; 16], last.offset + last.len - 16)
            .unwrap();
        drop(file);
        Writer::open(root, 64 << 10).unwrap();
        let archived = segments(root).unwrap();
        assert_eq!(
            archived
                .iter()
                .map(|(a, b, _)| (*a, *b))
                .collect::<Vec<_>>(),
            vec![(1, 1)]
        );
        let kept: Vec<u64> = segment_records(&archived[0].2)
            .unwrap()
            .iter()
            .map(|r| r.max_txid)
            .collect();
        assert_eq!(kept, vec![1], "the torn record is not listed");
    }

    #[test]
    fn opening_a_journal_with_no_readable_record_starts_a_zeroed_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        Writer::open(root, 64 << 10).unwrap();
        // A torn first append: its head is lost, bytes after it survive.
        let file = File::options().write(true).open(path(root)).unwrap();
        file.write_all_at(&[0xaa; 4096], 4096).unwrap();
        drop(file);
        let mut w = Writer::open(root, 64 << 10).unwrap();
        let bytes = fs::read(path(root)).unwrap();
        assert!(bytes.iter().all(|b| *b == 0), "the new lap starts in zeros");
        assert!(segments(root).unwrap().is_empty(), "nothing to archive");
        w.append(&[(&ltx_file(1, 1), 0)]).unwrap();
        assert_eq!(scan(root).unwrap().len(), 1);
    }

    #[test]
    fn an_older_lap_left_by_a_ring_journal_ends_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut w = Writer::open(root, 64 << 10).unwrap();
        w.append(&[(&ltx_file(5, 5), 0), (&ltx_file(6, 6), 0)])
            .unwrap();
        // What an earlier build's rewound lap left behind the newer records: older TXIDs.
        let found = scan(root).unwrap();
        let end = aligned(found[1].offset + found[1].len);
        let mut stale = Vec::new();
        for t in [3, 4] {
            let ltx = ltx_file(t, t);
            let mut head = [0u8; HEAD];
            head[..4].copy_from_slice(&MAGIC);
            head[4..8].copy_from_slice(&(ltx.len() as u32).to_le_bytes());
            let sum = check(&head, &ltx[..ltx::HEADER_SIZE]);
            head[16..24].copy_from_slice(&sum);
            stale.extend_from_slice(&head);
            stale.extend_from_slice(&ltx);
            stale.resize(aligned(stale.len() as u64) as usize, 0);
        }
        let file = File::options().write(true).open(path(root)).unwrap();
        file.write_all_at(&stale, end).unwrap();
        let found: Vec<u64> = scan(root).unwrap().iter().map(|r| r.max_txid).collect();
        assert_eq!(found, vec![5, 6]);
    }
}
