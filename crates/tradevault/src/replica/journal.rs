//! A file replica's sync journal: `<root>/tradevault-journal`, one preallocated file into which
//! sync mode appends each shipment (its LTX file, whole) with one `fdatasync`, before the
//! shipment is in the replica's `ltx/` layout.
//!
//! Why: a new file in the layout costs a new inode, an fsync of it and one of its directory
//! (0.6-0.8 ms on this machine's ext4), where overwriting a few KiB of a file whose blocks are
//! already written costs one data fsync (0.1 ms). So in sync mode a commit's answer waits for the
//! journal alone, and the layout follows a few milliseconds later, merged.
//!
//! Layout: records from offset 0, each a 24-byte head (`TVJ1`, the LTX length as u32, the listed
//! time in ms as i64, and 8 bytes of blake3 over those 16 bytes and the LTX header) then the LTX
//! bytes, the next record at the next multiple of 8. The file is filled with zeros when created,
//! so no append changes its size or allocates a block. When the next record does not fit, the
//! writer starts again from offset 0 (a new lap), but only once every record of the journal is in
//! the layout. A reader walks the records from offset 0 and stops at the first head that does not
//! check (zeros, the torn end of an append a crash cut, or the middle of an older lap's record).
//! Whatever a walk finds is an LTX file verified by its own checksum before use; records of an
//! older lap that a walk may still reach are older than the layout's newest file, so they never
//! extend a chain (see [`FileReplica::journal_tail`](super::FileReplica::journal_tail)).
//!
//! Litestream ignores the file: its restore reads `ltx/` only.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The file's name under a replica's root.
pub const JOURNAL_NAME: &str = "tradevault-journal";
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
}

impl Writer {
    /// Opens the journal under `root` for a new lap from offset 0, creating it (`size` bytes of
    /// zeros, fsynced, with its directory) when it is missing or shorter. Call it only once the
    /// journal's records are in the layout (the uploader's startup replays them first).
    pub fn open(root: &Path, size: u64) -> Result<Writer> {
        let path = path(root);
        let current = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if current < size {
            fs::create_dir_all(root).map_err(|e| Error::io("create replica directory", root, e))?;
            let temp = root.join(format!("{JOURNAL_NAME}.tmp"));
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
                .map_err(|e| Error::io("fsync journal", &temp, e))?;
            fs::rename(&temp, &path).map_err(|e| Error::io("rename journal", &path, e))?;
            File::open(root)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io("fsync replica directory", root, e))?;
        }
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
        })
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

    /// Starts a new lap at offset 0: only once every record written is in the layout.
    pub fn rewind(&mut self) {
        self.offset = 0;
    }

    /// Appends `records` (each an LTX file and its listed time) with one write and one
    /// `fdatasync`: when this returns, they are durable. They must fit in [`Writer::room`]
    /// ([`record_len`] each).
    pub fn append(&mut self, records: &[(&[u8], i64)]) -> Result<()> {
        let mut buf = Vec::new();
        for (ltx, created_at_ms) in records {
            let header = ltx.get(..ltx::HEADER_SIZE).ok_or_else(|| Error::Ltx {
                name: self.path.display().to_string(),
                source: ltx::Error::Header("record shorter than an LTX header".into()),
            })?;
            // A record a reader cannot decode would hide every record after it.
            ltx::Header::decode(header.try_into().unwrap_or(&[0; ltx::HEADER_SIZE])).map_err(
                |source| Error::Ltx {
                    name: self.path.display().to_string(),
                    source,
                },
            )?;
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
        Ok(())
    }
}

/// The records of the journal under `root` with their LTX bytes, in the order written, from
/// offset 0 to the first head that does not check; none when there is no journal. The file is
/// read once, so the records are those of one moment. Their LTX bytes are not verified here.
pub fn read_all(root: &Path) -> Result<Vec<(Record, Vec<u8>)>> {
    let bytes = read(root)?;
    Ok(walk(&bytes)
        .into_iter()
        .map(|r| {
            let at = usize::try_from(r.offset).unwrap_or(0);
            let len = usize::try_from(r.len).unwrap_or(0);
            let ltx = bytes[at..at + len].to_vec();
            (r, ltx)
        })
        .collect())
}

/// The records of the journal under `root` (see [`read_all`]), without their bytes.
pub fn scan(root: &Path) -> Result<Vec<Record>> {
    Ok(walk(&read(root)?))
}

/// The journal's bytes; none when there is no journal.
fn read(root: &Path) -> Result<Vec<u8>> {
    let path = path(root);
    match fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("read journal", &path, e)),
    }
}

fn walk(bytes: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + HEAD) {
        if head[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default()) as usize;
        let created_at_ms = i64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        let start = at + HEAD;
        let Some(header) = bytes.get(start..start + ltx::HEADER_SIZE) else {
            break;
        };
        if len < ltx::HEADER_SIZE
            || start + len > bytes.len()
            || head[16..24] != check(head, header)
        {
            break;
        }
        let Ok(decoded) = ltx::Header::decode(header.try_into().unwrap_or(&[0; ltx::HEADER_SIZE]))
        else {
            break;
        };
        records.push(Record {
            offset: start as u64,
            len: len as u64,
            created_at_ms,
            min_txid: decoded.min_txid,
            max_txid: decoded.max_txid,
        });
        at = usize::try_from(aligned((start + len) as u64)).unwrap_or(usize::MAX);
    }
    records
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
        assert_eq!(read_all(dir.path()).unwrap()[1].1, b);

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
    fn a_new_lap_hides_the_older_records_it_overwrote_and_reopening_starts_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), 64 << 10).unwrap();
        let mut txid = 0;
        while w.room() >= record_len(5_000) {
            txid += 1;
            w.append(&[(&ltx_file(txid, txid), txid as i64)]).unwrap();
        }
        assert!(txid > 3, "several records fit");
        w.rewind();
        w.append(&[(&ltx_file(txid + 1, txid + 1), 0)]).unwrap();
        let found = scan(dir.path()).unwrap();
        assert_eq!(found[0].min_txid, txid + 1, "the new lap comes first");
        // Whatever follows is older than what the new lap holds, never newer.
        assert!(found[1..].iter().all(|r| r.max_txid <= txid), "{found:?}");

        let mut again = Writer::open(dir.path(), 64 << 10).unwrap();
        again.append(&[(&ltx_file(txid + 2, txid + 2), 0)]).unwrap();
        assert_eq!(scan(dir.path()).unwrap()[0].min_txid, txid + 2);
    }
}
