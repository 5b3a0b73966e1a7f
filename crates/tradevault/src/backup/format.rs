//! The objects of a backup on its target, each starting with a magic and a version and ending
//! with a blake3 checksum of everything before it:
//!
//! - `backups/<id>.manifest`: `TVBKMANI`, version, then the [`Manifest`] as JSON. Written last: a
//!   backup exists when, and only when, its manifest does.
//! - `backups/<id>.pages`: `TVBKPAGE`, version, then the page table, zstd-compressed: for every
//!   page, the segment holding it, its slot in that segment, and a 64-bit fingerprint of its
//!   plain content ([`Fingerprint`]): what the next incremental backup compares, and what every
//!   restore checks each page against.
//! - `packs/<id>/<n>.pack`: segments back to back. A segment is pages compressed together (zstd
//!   or gzip), then age-encrypted when the backup is. Packs carry no header: the manifest records
//!   each segment's offset, length and blake3, and each pack's size and blake3.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MANIFEST_MAGIC: &[u8; 8] = b"TVBKMANI";
const PAGES_MAGIC: &[u8; 8] = b"TVBKPAGE";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
const CHECKSUM_LEN: usize = 32;

/// Bytes per page in the page table: segment, slot, fingerprint.
const ENTRY_LEN: usize = 4 + 4 + 8;

/// How pages are fingerprinted in a page table.
///
/// Unencrypted backups use CRC-64/NVME: about 15 GB/s here, where blake3 on 4 KiB pages does
/// about 1 GB/s per core, which made reading and hashing the whole database most of an
/// incremental backup's time. A changed page is missed only if its CRC stays the same: 2^-64 for
/// changes that are not crafted, and whoever can craft them can write the database anyway. Stored
/// bytes are covered by blake3 regardless. Encrypted backups use the first 64 bits of blake3: a
/// CRC is linear, so in the clear it would tell someone holding the target more about a page
/// than whether a guess of it is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fingerprint {
    /// CRC-64/NVME.
    Crc64,
    /// blake3, first 8 bytes.
    Blake3,
}

impl Fingerprint {
    /// Its name in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Fingerprint::Crc64 => "crc64-nvme",
            Fingerprint::Blake3 => "blake3-64",
        }
    }

    /// The fingerprint named `name` in a manifest.
    pub fn parse(name: &str) -> Option<Fingerprint> {
        match name {
            "crc64-nvme" => Some(Fingerprint::Crc64),
            "blake3-64" => Some(Fingerprint::Blake3),
            _ => None,
        }
    }

    /// The fingerprint of a page.
    pub fn of(self, page: &[u8]) -> u64 {
        match self {
            Fingerprint::Crc64 => crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, page),
            Fingerprint::Blake3 => {
                let h = blake3::hash(page);
                let b = h.as_bytes();
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
        }
    }
}

/// Everything a backup records about itself; the `.manifest` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The backup's id: `<YYYYMMDDTHHMMSS.mmmZ>-<6 hex>`, sortable by time.
    pub id: String,
    /// The database's name (a configured name, the file's stem, or `store`).
    pub database: String,
    /// The database file it was taken from.
    pub source: String,
    /// `manual`, `scheduled` or `safety`.
    pub kind: String,
    /// When it started, ms since the epoch.
    pub started_ms: i64,
    /// When its manifest was written.
    pub finished_ms: i64,
    /// The state it holds: every commit finished before this time is in it...
    pub state_min_ms: i64,
    /// ...and no commit that started after this time is.
    pub state_max_ms: i64,
    /// Where the source's WAL stood in the state it holds, when it had one.
    pub wal: Option<WalMark>,
    /// The replication TXID of that state, when known (not yet recorded by `create`).
    pub ltx_txid: Option<u64>,
    /// Bytes per page.
    pub page_size: u32,
    /// Pages in the database.
    pub page_count: u32,
    /// How its page table fingerprints pages (`crc64-nvme` or `blake3-64`).
    pub page_fingerprint: String,
    /// Rows per table at backup time (SQLite's own tables excluded).
    pub tables: BTreeMap<String, u64>,
    /// `zstd` or `gzip`.
    pub compression: String,
    /// The compression level used.
    pub level: u32,
    /// The age recipients the segments are encrypted to; empty when not encrypted.
    pub recipients: Vec<String>,
    /// The backup it is an increment of, if any.
    pub parent: Option<String>,
    /// Backups whose packs hold some of its pages (its parent chain), oldest first.
    pub depends_on: Vec<String>,
    /// 0 for a full backup, parent's + 1 for an incremental one.
    pub depth: u32,
    /// Pages it stored itself (all of them for a full backup, the changed ones otherwise).
    pub pages_stored: u32,
    /// Every segment its pages are in, its own and its ancestors'.
    pub segments: Vec<Segment>,
    /// The packs it wrote itself.
    pub packs: Vec<ObjectSum>,
    /// Its page table object.
    pub page_table: ObjectSum,
}

/// A position in a WAL: its generation (salts) and the byte offset after the last commit read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalMark {
    /// First salt of the WAL generation.
    pub salt1: u32,
    /// Second salt.
    pub salt2: u32,
    /// Offset after the last committed frame in the backup.
    pub offset: u64,
}

/// Pages compressed together, stored in a pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Key of its pack.
    pub pack: String,
    /// Its offset in the pack.
    pub offset: u64,
    /// Its stored length.
    pub len: u64,
    /// Pages it holds.
    pub pages: u32,
    /// blake3 of its stored bytes, hex.
    pub blake3: String,
}

/// An object's key, size and blake3 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSum {
    /// Its key on the target.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// blake3 of its bytes, hex.
    pub blake3: String,
}

impl Manifest {
    /// Bytes this backup stored itself (packs, page table, and about the manifest).
    pub fn stored_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.size).sum::<u64>() + self.page_table.size
    }

    /// The database's size.
    pub fn size_bytes(&self) -> u64 {
        u64::from(self.page_count) * u64::from(self.page_size)
    }
}

/// One page's entry in the page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntry {
    /// Index into [`Manifest::segments`].
    pub segment: u32,
    /// Its place among the segment's pages.
    pub slot: u32,
    /// The fingerprint of its content ([`Fingerprint`], named in the manifest).
    pub fp: u64,
}

/// The key of a backup's manifest.
pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}.manifest")
}

/// The key of a backup's page table.
pub fn pages_key(id: &str) -> String {
    format!("backups/{id}.pages")
}

/// The key of a backup's `n`-th pack.
pub fn pack_key(id: &str, n: u32) -> String {
    format!("packs/{id}/{n:04}.pack")
}

/// The backup id a pack key belongs to.
pub fn pack_owner(key: &str) -> Option<&str> {
    key.strip_prefix("packs/")?
        .split_once('/')
        .map(|(id, _)| id)
}

/// Hex blake3 of `bytes`.
pub fn hex_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn framed(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 44);
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn unframed<'a>(magic: &[u8; 8], bytes: &'a [u8], key: &str) -> Result<&'a [u8]> {
    let corrupt = |what: String| {
        Error::backup(
            "corrupt_object",
            format!("object {key}: {what}"),
            Some(
                "run 'tradevault backup verify' on the other targets; restore from another backup",
            ),
        )
    };
    if bytes.len() < 12 + CHECKSUM_LEN || &bytes[..8] != magic {
        return Err(corrupt("not a tradevault backup object (bad magic)".into()));
    }
    let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let actual = blake3::hash(content);
    if actual.as_bytes() != sum {
        return Err(corrupt(format!(
            "checksum mismatch: its last 32 bytes ({}) are not the blake3 of the {} before them \
             ({}): the object is truncated or damaged",
            hex(sum),
            content.len(),
            actual.to_hex()
        )));
    }
    let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(corrupt(format!(
            "format version {version}; this tradevault reads version {VERSION}"
        )));
    }
    Ok(&content[12..])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes a manifest object.
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(m).map_err(|e| Error::Internal {
        message: format!("encode manifest: {e}"),
    })?;
    Ok(framed(MANIFEST_MAGIC, &json))
}

/// Decodes and checks a manifest object.
pub fn decode_manifest(bytes: &[u8], key: &str) -> Result<Manifest> {
    let body = unframed(MANIFEST_MAGIC, bytes, key)?;
    serde_json::from_slice(body).map_err(|e| {
        Error::backup(
            "corrupt_object",
            format!("object {key}: manifest does not parse: {e}"),
            None,
        )
    })
}

/// Encodes a page table object: columns (segments, slots, hashes), zstd-compressed.
pub fn encode_pages(entries: &[PageEntry]) -> Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(entries.len() * ENTRY_LEN + 4);
    raw.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        raw.extend_from_slice(&e.segment.to_be_bytes());
    }
    for e in entries {
        raw.extend_from_slice(&e.slot.to_be_bytes());
    }
    for e in entries {
        raw.extend_from_slice(&e.fp.to_be_bytes());
    }
    // Level 1: a third of the table is fingerprints, which no level compresses, and an
    // incremental backup writes the whole table.
    let compressed = zstd::bulk::compress(&raw, 1).map_err(|e| Error::Internal {
        message: format!("compress page table: {e}"),
    })?;
    Ok(framed(PAGES_MAGIC, &compressed))
}

/// Decodes and checks a page table object.
pub fn decode_pages(bytes: &[u8], key: &str) -> Result<Vec<PageEntry>> {
    let body = unframed(PAGES_MAGIC, bytes, key)?;
    let bad = |what: &str| Error::backup("corrupt_object", format!("object {key}: {what}"), None);
    let raw = zstd::stream::decode_all(body).map_err(|_| bad("page table does not decompress"))?;
    if raw.len() < 4 {
        return Err(bad("page table is truncated"));
    }
    let n = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    if raw.len() != 4 + n * ENTRY_LEN {
        return Err(bad("page table has the wrong length"));
    }
    let u32_at = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let fps = 4 + n * 8;
    Ok((0..n)
        .map(|i| {
            let mut fp = [0u8; 8];
            fp.copy_from_slice(&raw[fps + i * 8..fps + (i + 1) * 8]);
            PageEntry {
                segment: u32_at(4 + i * 4),
                slot: u32_at(4 + n * 4 + i * 4),
                fp: u64::from_be_bytes(fp),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_table_round_trip_and_damage_is_named() {
        let entries: Vec<PageEntry> = (0..1000u32)
            .map(|i| PageEntry {
                segment: i / 256,
                slot: i % 256,
                fp: Fingerprint::Crc64.of(&i.to_be_bytes()),
            })
            .collect();
        let mut bytes = encode_pages(&entries).expect("encode");
        assert_eq!(decode_pages(&bytes, "p").expect("decode"), entries);
        bytes[20] ^= 1;
        let err = decode_pages(&bytes, "backups/x.pages").expect_err("damaged");
        assert_eq!(err.code(), Some("corrupt_object"));
        assert!(err.to_string().contains("backups/x.pages"), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn pack_keys_name_their_backup() {
        let key = pack_key("20261122T084300.000Z-abcdef", 3);
        assert_eq!(key, "packs/20261122T084300.000Z-abcdef/0003.pack");
        assert_eq!(pack_owner(&key), Some("20261122T084300.000Z-abcdef"));
    }
}
