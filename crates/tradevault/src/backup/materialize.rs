//! [`restore_backup`]: a backup's pages into a new database file. Its pages may live in its
//! ancestors' packs; the manifest lists every segment it needs, so nothing else is read.
//!
//! Packs are fetched one ahead of the one being decoded; each segment's stored bytes are checked
//! against their blake3 before decoding, and every page against its page-table hash before it is
//! written. Pages go into a staging file this call created; the output name appears only after
//! every page was checked and the file was synced, and never over an existing file.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use std::time::Instant;

use serde::Serialize;

use super::catalog::read_manifest;
use super::codec::{Identity, decode};
use super::format::{self, Fingerprint, Manifest, PageEntry};
use super::{Progress, Target};
use crate::error::{Error, Result};

/// What a restore of a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredBackup {
    /// The backup restored.
    pub id: String,
    /// The file written.
    pub output: String,
    /// Pages written.
    pub pages: u32,
    /// Bytes per page.
    pub page_size: u32,
    /// Bytes of the database.
    pub bytes: u64,
    /// Bytes read from the target.
    pub fetched_bytes: u64,
    /// Objects read from the target.
    pub objects: u64,
    /// Every commit finished before this time is in the restored state (ms since the epoch).
    pub state_min_ms: i64,
    /// No commit started after this time is in it: LTX files after this continue it.
    pub state_max_ms: i64,
    /// Seconds spent fetching, decoding, checking and writing.
    pub seconds: f64,
    /// The manifest of the backup.
    #[serde(skip)]
    pub manifest: Manifest,
}

/// Restores backup `id` from `target` into `output`, which must not exist (nor its `-wal` and
/// `-shm`). `identity` is needed for an encrypted backup. The database is not checked with
/// SQLite here: every page equals the page that was backed up; callers run the check they want.
pub fn restore_backup(
    target: &Target,
    id: &str,
    identity: Option<&Identity>,
    output: &Path,
    progress: Option<&Progress>,
) -> Result<RestoredBackup> {
    let manifest = read_manifest(target, id)?;
    materialize(target, manifest, identity, output, progress, true)
}

/// [`restore_backup`] of a manifest already read (and checked), with `sync: false` for a scratch
/// file that is read at once and deleted (deep verify): no fsync of the file or its directory.
pub(crate) fn materialize(
    target: &Target,
    manifest: Manifest,
    identity: Option<&Identity>,
    output: &Path,
    progress: Option<&Progress>,
    sync: bool,
) -> Result<RestoredBackup> {
    let started = Instant::now();
    for side in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{side}", output.display()));
        if p.exists() {
            return Err(Error::invalid(
                "output_exists",
                None,
                format!(
                    "{} already exists; a restore never overwrites a file",
                    p.display()
                ),
            ));
        }
    }
    let id = manifest.id.clone();
    if !manifest.recipients.is_empty() && identity.is_none() {
        return Err(Error::backup(
            "identity_required",
            format!("backup {id} is encrypted (age) and no identity was given"),
            Some(
                "pass --identity FILE: the age identity whose public key is in [backup] recipients",
            ),
        ));
    }
    let key = format::pages_key(&id);
    let bytes = target.get(&key)?.ok_or_else(|| {
        Error::backup(
            "corrupt_object",
            format!("backup {id}: object {key} is missing"),
            None,
        )
    })?;
    let actual = format::hex_hash(&bytes);
    if actual != manifest.page_table.blake3 {
        return Err(Error::backup(
            "corrupt_object",
            format!(
                "backup {id}: object {key}: expected blake3 {}, actual {actual}",
                manifest.page_table.blake3
            ),
            None,
        ));
    }
    let entries = format::decode_pages(&bytes, &key)?;
    if entries.len() != manifest.page_count as usize {
        return Err(Error::backup(
            "corrupt_object",
            format!(
                "backup {id}: object {key} lists {} pages, the manifest {}",
                entries.len(),
                manifest.page_count
            ),
            None,
        ));
    }
    let (staging, out) = crate::restore::create_staging(output)?;
    let result = fill(
        target, &manifest, &entries, identity, &out, &staging, progress,
    );
    let result = result.and_then(|(fetched, objects)| {
        if sync {
            out.sync_all()
                .map_err(|e| Error::io("fsync staging file", &staging, e))?;
        }
        // Never over an existing file: link fails if the name was taken meanwhile.
        std::fs::hard_link(&staging, output)
            .map_err(|e| Error::io("name restored database", output, e))?;
        Ok((fetched, objects))
    });
    let _ = std::fs::remove_file(&staging);
    let (fetched_bytes, objects) = result?;
    if let Some(dir) = output
        .parent()
        .filter(|d| sync && !d.as_os_str().is_empty())
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(RestoredBackup {
        id: manifest.id.clone(),
        output: output.display().to_string(),
        pages: manifest.page_count,
        page_size: manifest.page_size,
        bytes: manifest.size_bytes(),
        fetched_bytes,
        objects,
        state_min_ms: manifest.state_min_ms,
        state_max_ms: manifest.state_max_ms,
        seconds: started.elapsed().as_secs_f64(),
        manifest,
    })
}

/// Writes every page into `out`; returns bytes and objects fetched.
fn fill(
    target: &Target,
    manifest: &Manifest,
    entries: &[PageEntry],
    identity: Option<&Identity>,
    out: &File,
    staging: &Path,
    progress: Option<&Progress>,
) -> Result<(u64, u64)> {
    let ps = manifest.page_size as usize;
    out.set_len(manifest.size_bytes())
        .map_err(|e| Error::io("size staging file", staging, e))?;
    if let Some(p) = progress {
        p.start(u64::from(manifest.page_count));
    }
    // For each segment, the page numbers of its slots.
    let mut slots: Vec<Vec<(u32, u32)>> = vec![Vec::new(); manifest.segments.len()];
    for (i, e) in entries.iter().enumerate() {
        let seg = slots.get_mut(e.segment as usize).ok_or_else(|| {
            Error::backup(
                "corrupt_object",
                format!(
                    "backup {}: page {} points at segment {} of {}",
                    manifest.id,
                    i + 1,
                    e.segment,
                    manifest.segments.len()
                ),
                None,
            )
        })?;
        seg.push((e.slot, i as u32 + 1));
    }
    // Segments by pack, in pack order.
    let mut by_pack: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in manifest.segments.iter().enumerate() {
        if !slots[i].is_empty() {
            by_pack.entry(s.pack.as_str()).or_default().push(i);
        }
    }
    let encrypted = !manifest.recipients.is_empty();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    // One thread fetches packs (one ahead) and hands out their segments; `threads` workers decode
    // segments from any pack as they come, so no pack waits for the slowest segment of the last.
    type Work = (std::sync::Arc<Vec<u8>>, usize);
    let keys: Vec<&str> = by_pack.keys().copied().collect();
    std::thread::scope(|s| -> Result<(u64, u64)> {
        let (tx, rx) = sync_channel::<Work>(threads * 2);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                let slots = &slots;
                s.spawn(move || -> Result<()> {
                    loop {
                        let work = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((pack, i)) = work else {
                            return Ok(());
                        };
                        decode_segment(
                            manifest, i, &pack, &slots[i], entries, identity, encrypted, out,
                            staging, ps, progress,
                        )?;
                    }
                })
            })
            .collect();
        drop(rx);
        let fetched = (|| -> Result<(u64, u64)> {
            let (mut bytes, mut objects) = (0u64, 0u64);
            for key in keys {
                let pack = target.get(key)?.ok_or_else(|| {
                    Error::backup("corrupt_object", format!("object {key} is missing"), None)
                })?;
                bytes += pack.len() as u64;
                objects += 1;
                if let Some(p) = progress {
                    p.add_bytes(pack.len() as u64);
                }
                let pack = std::sync::Arc::new(pack);
                for &i in &by_pack[key] {
                    // A worker that failed stops taking work: its error is reported below.
                    if tx.send((pack.clone(), i)).is_err() {
                        return Ok((bytes, objects));
                    }
                }
            }
            Ok((bytes, objects))
        })();
        drop(tx);
        for w in workers {
            w.join().map_err(|_| Error::Internal {
                message: "restore thread panicked".into(),
            })??;
        }
        fetched.map_err(|e| named(manifest, e))
    })
}

fn named(manifest: &Manifest, e: Error) -> Error {
    match e {
        Error::Backup {
            code,
            message,
            hint,
        } => Error::Backup {
            code,
            message: format!("backup {}: {message}", manifest.id),
            hint,
        },
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_segment(
    manifest: &Manifest,
    index: usize,
    pack: &[u8],
    slots: &[(u32, u32)],
    entries: &[PageEntry],
    identity: Option<&Identity>,
    encrypted: bool,
    out: &File,
    staging: &Path,
    ps: usize,
    progress: Option<&Progress>,
) -> Result<()> {
    let seg = &manifest.segments[index];
    let fingerprint = Fingerprint::parse(&manifest.page_fingerprint).ok_or_else(|| {
        Error::backup(
            "corrupt_object",
            format!(
                "backup {}: unknown page fingerprint {:?}",
                manifest.id, manifest.page_fingerprint
            ),
            None,
        )
    })?;
    let corrupt = |what: String| {
        Error::backup(
            "corrupt_object",
            format!(
                "backup {}: object {}: segment at offset {} ({} bytes, {} pages): {what}",
                manifest.id, seg.pack, seg.offset, seg.len, seg.pages
            ),
            Some(
                "verify the other targets with 'tradevault backup verify --all'; restore from a backup that passes",
            ),
        )
    };
    let end = seg
        .offset
        .checked_add(seg.len)
        .filter(|e| *e <= pack.len() as u64);
    let Some(end) = end else {
        return Err(corrupt(format!(
            "the object holds only {} bytes",
            pack.len()
        )));
    };
    let stored = &pack[seg.offset as usize..end as usize];
    let actual = format::hex_hash(stored);
    if actual != seg.blake3 {
        return Err(corrupt(format!(
            "expected blake3 {}, actual {actual}",
            seg.blake3
        )));
    }
    let plain = decode(stored, &manifest.compression, encrypted, identity, seg.pages as usize * ps)
        .map_err(|why| {
            if why.contains("decrypt") || why.contains("identity") {
                Error::backup(
                    "identity_mismatch",
                    format!("backup {}: cannot decrypt {}: {why}", manifest.id, seg.pack),
                    Some("pass the identity whose public key was in [backup] recipients when it was taken"),
                )
            } else {
                corrupt(why)
            }
        })?;
    // Runs of consecutive page numbers are written with one call.
    let mut sorted: Vec<(u32, u32)> = slots.to_vec();
    sorted.sort_by_key(|(_, pgno)| *pgno);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i + 1;
        while j < sorted.len()
            && sorted[j].1 == sorted[j - 1].1 + 1
            && sorted[j].0 == sorted[j - 1].0 + 1
        {
            j += 1;
        }
        for &(slot, pgno) in &sorted[i..j] {
            let page = plain
                .get(slot as usize * ps..(slot as usize + 1) * ps)
                .ok_or_else(|| corrupt(format!("page {pgno} is at slot {slot}, past its end")))?;
            if fingerprint.of(page) != entries[pgno as usize - 1].fp {
                return Err(corrupt(format!(
                    "page {pgno} differs from its fingerprint in the page table"
                )));
            }
        }
        let (first_slot, first_pgno) = sorted[i];
        let run = &plain[first_slot as usize * ps..(first_slot as usize + (j - i)) * ps];
        out.write_all_at(run, u64::from(first_pgno - 1) * ps as u64)
            .map_err(|e| Error::io("write restored pages", staging, e))?;
        if let Some(p) = progress {
            p.add_pages((j - i) as u64);
        }
        i = j;
    }
    Ok(())
}
