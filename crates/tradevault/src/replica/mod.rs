//! Replicas: places that receive LTX files, in the layout Litestream 0.5 uses, so that either
//! tool can restore from them. A file appears on a replica only when complete.
//!
//! [`Replica`] is the one type the rest of the crate uses; each kind of place is a variant with the
//! same operations (put, list, read, delete), all blocking: a directory ([`FileReplica`]) or an
//! S3-compatible bucket ([`S3Replica`]).
//!
//! Large files (snapshots) never pass through memory whole: [`Replica::put_streamed`] encodes
//! into a temporary file and [`Replica::put_file`] copies one (an S3 replica uploads it in parts).

pub mod file;
pub mod journal;
pub mod recycle;
pub mod s3;

pub use file::FileReplica;
pub use s3::S3Replica;

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Bytes buffered when an LTX file is streamed to or from a file.
pub(crate) const STREAM_BUFFER_BYTES: usize = 1 << 20;

/// Writes one LTX file into the writer it is given (see [`Replica::put_streamed`]).
pub type WriteLtx<'a> = dyn FnMut(&mut dyn Write) -> Result<()> + 'a;

/// One LTX file on a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFile {
    /// Compaction level (0 = as shipped, 9 = snapshots).
    pub level: u32,
    /// First transaction it holds.
    pub min_txid: u64,
    /// Last transaction it holds.
    pub max_txid: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its time in listings, in milliseconds since the Unix epoch (a file replica's mtime, an S3
    /// object's `litestream-timestamp`), which chooses the files a time restores. For the points
    /// this engine ships (and its per-second files), a lower bound of the commit times it holds,
    /// after every commit of the files before it; its header time is an upper bound of them (see
    /// `restore`). For a file written by Litestream, and for this engine's 10-second and hourly
    /// merges (levels 2 and 3), both are its header time.
    pub created_at_ms: i64,
}

impl ReplicaFile {
    /// When the point at its end was made, given its header time: never before it was listed (a
    /// file stamped the old way has only its listed time).
    pub fn made(&self, header_ms: i64) -> i64 {
        header_ms.max(self.created_at_ms)
    }

    /// Whether, given its header time, it carries one time (Litestream's files, an older
    /// TradeVault's): its listed time is then no lower bound of its commits, only its header time
    /// an upper one (see `restore`).
    pub fn one_time(&self, header_ms: i64) -> bool {
        header_ms <= self.created_at_ms
    }
}

/// The level Litestream keeps snapshots at.
pub const SNAPSHOT_LEVEL: u32 = 9;

/// A place that holds LTX files.
#[derive(Debug, Clone)]
pub enum Replica {
    /// A local directory (`file:///absolute/path`).
    File(FileReplica),
    /// An S3-compatible bucket (`s3://bucket/path?endpoint=...`).
    S3(S3Replica),
}

impl Replica {
    /// Parses a replica URL: `file:///absolute/path`, or `s3://bucket/path` with optional
    /// `endpoint`, `region`, `force-path-style`, `sign-payload` and `skip-verify` parameters and
    /// credentials from the `AWS_*` environment variables (see [`S3Replica::parse_with_env`]).
    pub fn parse(url: &str) -> Result<Replica> {
        Replica::parse_with(url, &s3::S3Settings::default())
    }

    /// [`Replica::parse`] with the S3 settings of a config entry (credentials, region), which win
    /// over the `AWS_*` variables; a `file://` replica takes none.
    pub fn parse_with(url: &str, settings: &s3::S3Settings) -> Result<Replica> {
        match url.split_once("://") {
            Some(("file", path)) if path.starts_with('/') => {
                Ok(Replica::File(FileReplica::new(path)))
            }
            Some(("file", _)) => Err(bad_url(url, "a file replica needs an absolute path")),
            Some(("s3", _)) => Ok(Replica::S3(S3Replica::parse_with(url, settings)?)),
            _ => Err(bad_url(
                url,
                "a replica is a file:///absolute/path or s3://bucket/path URL",
            )),
        }
    }

    /// Its directory, for a local replica.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        match self {
            Replica::File(r) => Some(r.root()),
            Replica::S3(_) => None,
        }
    }

    /// Where it is, for messages and status (never holds credentials).
    pub fn describe(&self) -> String {
        match self {
            Replica::File(r) => format!("file://{}", r.root().display()),
            Replica::S3(r) => r.describe().to_owned(),
        }
    }

    /// Verifies `bytes` as an LTX file and stores it at `level`; it appears only when complete.
    /// Its creation time (what listings show) is `created_at_ms`, or its header time.
    pub fn put(&self, level: u32, bytes: &[u8], created_at_ms: Option<i64>) -> Result<ReplicaFile> {
        match self {
            Replica::File(r) => r.put(level, bytes, created_at_ms),
            Replica::S3(r) => r.put(level, bytes, created_at_ms),
        }
    }

    /// Stores `bytes`, an LTX file this process's encoder just produced with `header`: a file
    /// replica skips decoding it again ([`FileReplica::put_encoded`]); S3 verifies as `put`.
    pub fn put_encoded(
        &self,
        level: u32,
        header: &ltx::Header,
        bytes: &[u8],
        created_at_ms: Option<i64>,
    ) -> Result<ReplicaFile> {
        match self {
            Replica::File(r) => r.put_encoded(level, header, bytes, created_at_ms),
            Replica::S3(r) => r.put(level, bytes, created_at_ms),
        }
    }

    /// Stores at `level` the LTX file covering `min_txid..=max_txid` that `write` produces,
    /// without holding it in memory: it is written to a temporary file (in the replica's own
    /// directory for a local replica, which then only renames it), verified whole, then stored as
    /// [`Replica::put`] would. It appears only when complete.
    pub fn put_streamed(
        &self,
        level: u32,
        min_txid: u64,
        max_txid: u64,
        created_at_ms: Option<i64>,
        write: &mut WriteLtx<'_>,
    ) -> Result<ReplicaFile> {
        match self {
            Replica::File(r) => r.put_streamed(level, min_txid, max_txid, created_at_ms, write),
            Replica::S3(r) => r.put_streamed(level, min_txid, max_txid, created_at_ms, write),
        }
    }

    /// Verifies the LTX file at `path` and stores a copy of it at `level`, streamed (an S3
    /// replica uploads a large file in parts). It appears only when complete.
    pub fn put_file(
        &self,
        level: u32,
        path: &Path,
        created_at_ms: Option<i64>,
    ) -> Result<ReplicaFile> {
        match self {
            Replica::File(r) => r.put_file(level, path, created_at_ms),
            Replica::S3(r) => r.put_file(level, path, created_at_ms),
        }
    }

    /// The files of `level`, ordered by transaction range.
    pub fn list(&self, level: u32) -> Result<Vec<ReplicaFile>> {
        match self {
            Replica::File(r) => r.list(level),
            Replica::S3(r) => r.list(level),
        }
    }

    /// The files of every level, snapshots last, each level ordered by transaction range.
    pub fn list_all(&self) -> Result<Vec<ReplicaFile>> {
        let mut all = Vec::new();
        for level in 0..=SNAPSHOT_LEVEL {
            all.extend(self.list(level)?);
        }
        Ok(all)
    }

    /// What a restore of the latest state may use (see [`Replica::list_restorable_for`]).
    pub fn list_restorable(&self) -> Result<Vec<ReplicaFile>> {
        self.list_restorable_for(crate::restore::Target::Latest)
    }

    /// What a restore of `target` may use: [`Replica::list_all`], and on a file replica the
    /// records of its journal and segments that continue past the layout's newest file (level
    /// [`journal::JOURNAL_LEVEL`], verified, up to the first that does not verify), and the
    /// fine points around `target`: the records of the segments between the layout's last file
    /// before it and the first record after it (the layout of a replica with a fine log has a
    /// file a second; its segments keep every shipment for the fine window, several hundred
    /// thousand records an hour, so only the few segments a target needs are read).
    ///
    /// The journal and its segments are read before the layout is listed: a segment removed by
    /// then is in the layout, so the records past the layout's newest file continue it with no
    /// gap.
    pub fn list_restorable_for(&self, target: crate::restore::Target) -> Result<Vec<ReplicaFile>> {
        let Replica::File(r) = self else {
            return self.list_all();
        };
        let journal = r.journal_records(r.newest_txid())?;
        let mut all = self.list_all()?;
        let newest = all.iter().map(|f| f.max_txid).max().unwrap_or(0);
        // The journal's own records inside the layout's files are fine points too.
        let fine = target != crate::restore::Target::Latest;
        let read: Vec<ReplicaFile> = r
            .journal_points(journal, newest, fine)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        // Past the layout, the verified tail serves (a torn record ends it).
        let listed: std::collections::HashSet<u64> = read.iter().map(|f| f.min_txid).collect();
        let more: Vec<ReplicaFile> = fine_points(r, &all, target)?
            .into_iter()
            .filter(|f| f.max_txid <= newest && !listed.contains(&f.min_txid))
            .collect();
        all.extend(read);
        all.extend(more);
        Ok(all)
    }

    /// The files of `level` that end after `txid`, ordered by transaction range.
    pub fn list_after(&self, level: u32, txid: u64) -> Result<Vec<ReplicaFile>> {
        match self {
            Replica::File(r) => r.list_after(level, txid),
            Replica::S3(r) => r.list_after(level, txid),
        }
    }

    /// A file's bytes (verify them with `ltx::Decoder` before applying anything).
    pub fn read(&self, file: &ReplicaFile) -> Result<Vec<u8>> {
        match self {
            Replica::File(r) => r.read(file),
            Replica::S3(r) => r.read(file),
        }
    }

    /// A file's header time: when it was made (see `restore` for what a file's two times mean).
    pub fn header_time(&self, file: &ReplicaFile) -> Result<i64> {
        Ok(self.header(file)?.timestamp_ms)
    }

    /// A file's header, read alone (its first bytes; the rest is not verified here).
    pub fn header(&self, file: &ReplicaFile) -> Result<ltx::Header> {
        let name = || {
            format!(
                "{}/ltx/{}/{}",
                self.describe(),
                file.level,
                ltx::file_name(file.min_txid, file.max_txid)
            )
        };
        let bytes = match self {
            Replica::File(r) if file.level == journal::JOURNAL_LEVEL => {
                let mut bytes = r.read(file)?;
                bytes.truncate(ltx::HEADER_SIZE);
                bytes
            }
            Replica::File(r) => {
                use std::io::Read;
                let mut head = Vec::with_capacity(ltx::HEADER_SIZE);
                r.open(file)?
                    .take(ltx::HEADER_SIZE as u64)
                    .read_to_end(&mut head)
                    .map_err(|e| Error::io("read ltx header", name(), e))?;
                head
            }
            Replica::S3(r) => r.read_head(file, ltx::HEADER_SIZE)?,
        };
        let head: &[u8; ltx::HEADER_SIZE] =
            bytes.as_slice().try_into().map_err(|_| Error::Ltx {
                name: name(),
                source: ltx::Error::Header("file shorter than a header".into()),
            })?;
        ltx::Header::decode(head).map_err(|source| Error::Ltx {
            name: name(),
            source,
        })
    }

    /// A file on disk to read at offsets, without holding it in memory: a local replica's own
    /// file, or an S3 object streamed into the file `spill` creates. Verify it before applying.
    pub fn read_to_disk(
        &self,
        file: &ReplicaFile,
        spill: impl FnOnce() -> Result<std::fs::File>,
    ) -> Result<std::fs::File> {
        match self {
            Replica::File(r) if file.level == journal::JOURNAL_LEVEL => {
                use std::io::Write;
                let bytes = r.read(file)?;
                let mut out = spill()?;
                out.write_all(&bytes)
                    .map_err(|e| Error::io("write download file", r.root(), e))?;
                Ok(out)
            }
            Replica::File(r) => r.open(file),
            Replica::S3(r) => r.read_to_file(file, spill()?).map(|(f, _)| f),
        }
    }

    /// Removes a file; a file already gone is not an error.
    pub fn delete(&self, file: &ReplicaFile) -> Result<()> {
        match self {
            Replica::File(r) => r.delete(file),
            Replica::S3(r) => r.delete(file),
        }
    }
}

/// The records of the segments of `r` that a restore of `target` may need beside `layout` (the
/// replica's files): for a TXID, those from the layout's last file ending at or before it up to
/// it; for a time, those from the start of the layout's file listed last by then up to the first
/// record listed after it. None for the latest state (the tail past the layout serves it).
fn fine_points(
    r: &FileReplica,
    layout: &[ReplicaFile],
    target: crate::restore::Target,
) -> Result<Vec<ReplicaFile>> {
    use crate::restore::Target;
    let (from, upto) = match target {
        Target::Latest => return Ok(Vec::new()),
        Target::Txid(t) => {
            let reached = layout.iter().map(|f| f.max_txid).filter(|m| *m <= t).max();
            (reached.unwrap_or(0) + 1, Bound::Txid(t))
        }
        Target::Time(ms) | Target::AtOrBefore(ms) => {
            // Levels 0 and 1 are listed at their first point's time; a coarser file is listed
            // when made, and would send the search back an hour.
            let from = layout
                .iter()
                .filter(|f| f.created_at_ms <= ms && f.level <= 1 && f.min_txid != 1)
                .max_by_key(|f| (f.created_at_ms, f.max_txid))
                .map_or(1, |f| f.min_txid);
            (from, Bound::Time(ms))
        }
    };
    let mut points = Vec::new();
    for s in r.segments()? {
        // (One with no record was removed meanwhile.)
        if s.last < from || s.first_ms.is_none() {
            continue;
        }
        let after = match upto {
            Bound::Txid(t) => s.first > t,
            Bound::Time(ms) => s.first_ms.is_some_and(|t| t > ms),
        };
        points.extend(r.segment_points(&s)?);
        // For a time, the first segment listed after it holds the point after it.
        if after {
            break;
        }
    }
    Ok(points)
}

/// Where [`fine_points`] stops.
#[derive(Clone, Copy)]
enum Bound {
    Txid(u64),
    Time(i64),
}

/// Reads a whole LTX file from `r` and verifies it (every page decoded, the checksum last);
/// returns its header. Memory: a read buffer and the page index.
pub(crate) fn verify_ltx(r: impl Read, name: impl Fn() -> String) -> Result<ltx::Header> {
    let reader = std::io::BufReader::with_capacity(STREAM_BUFFER_BYTES, r);
    ltx::Decoder::new(reader)
        .and_then(|d| d.finish())
        .map(|(header, _)| header)
        .map_err(|source| Error::Ltx {
            name: name(),
            source,
        })
}

fn bad_url(url: &str, why: &str) -> Error {
    Error::invalid("replica_url", None, format!("{url}: {why}"))
}

impl From<FileReplica> for Replica {
    fn from(r: FileReplica) -> Replica {
        Replica::File(r)
    }
}

impl From<S3Replica> for Replica {
    fn from(r: S3Replica) -> Replica {
        Replica::S3(r)
    }
}
