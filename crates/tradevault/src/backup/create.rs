//! [`create`]: one consistent snapshot of a database, written to each target as a full or an
//! incremental backup.
//!
//! Per target, four kinds of thread work at once: this thread reads pages from the snapshot,
//! hashes each one and compares it with the parent backup's page table, gathering the changed
//! pages into segments; `threads` workers compress (and encrypt) segments; a packer puts them, in
//! order, into pack objects of about `pack_bytes`; an uploader stores each full pack while the
//! next one fills. Channels between them are bounded, so memory stays at a few segments and three
//! packs. The page table and then the manifest are written only after every pack is stored: a
//! backup that did not finish is never visible.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use super::catalog::Catalog;
use super::census::Census;
use super::format::{
    self, Fingerprint, Manifest, ObjectSum, PageEntry, Segment, encode_manifest, encode_pages,
    manifest_key, pack_key, pages_key,
};
use super::{Codec, Kind, Progress, Target};
use crate::config::BackupConfig;
use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

/// What to back up, and how.
pub struct CreateOptions<'a> {
    /// The database file.
    pub db: PathBuf,
    /// The file the backup is of, when `db` is a copy of it (an in-place restore's safety copy):
    /// recorded as its source, and whose backups it continues. `None`: `db` itself.
    pub source: Option<PathBuf>,
    /// Its name in the catalog.
    pub database: String,
    /// Why the backup is taken.
    pub kind: Kind,
    /// Compression, encryption, segment and pack sizes, threads, `full_every`.
    pub config: &'a BackupConfig,
    /// Take a full backup even where an incremental one could be taken.
    pub full: bool,
    /// Counters for a progress bar.
    pub progress: Option<&'a Progress>,
    /// The time, in ms since the epoch (the library never reads the wall clock itself).
    pub now: &'a (dyn Fn() -> i64 + Sync),
}

impl CreateOptions<'_> {
    /// The file the backup is of.
    fn source(&self) -> &std::path::Path {
        self.source.as_deref().unwrap_or(&self.db)
    }
}

/// Where a page of the new backup is: in a segment of the parent, or in a new one.
#[derive(Clone, Copy)]
enum Place {
    Parent(u32, u32),
    New(u32, u32),
}

/// The parent backup an incremental one is taken against.
struct Parent {
    manifest: Manifest,
    pages: Vec<PageEntry>,
}

/// Takes one snapshot of `options.db` and writes a backup of it to every target, in turn.
/// Returns the manifest written to each. A target that fails stops the whole call.
pub fn create(targets: &[Target], options: &CreateOptions<'_>) -> Result<Vec<Manifest>> {
    if targets.is_empty() {
        return Err(Error::backup(
            "no_target",
            "no backup target: configure a [[backup.target]] or pass --target",
            Some("add [[backup.target]] with a name and a url to the config"),
        ));
    }
    let codec = Codec::new(
        &options.config.compression,
        options.config.zstd_level as u32,
        &options.config.recipients,
    )?;
    let started_ms = (options.now)();
    let clock = std::time::Instant::now();
    let snapshot = Snapshot::open(&options.db, options.now)?;
    tracing::debug!(
        pages = snapshot.page_count,
        ms = clock.elapsed().as_millis() as u64,
        "backup snapshot open"
    );
    // The first target's pages also give the rows per table (see `census`).
    let census = Census::new(snapshot.page_count);
    let mut out = Vec::new();
    let mut tables = None;
    for target in targets {
        let first = tables.is_none().then_some(&census);
        let mut manifest = write_one(target, &snapshot, &codec, options, started_ms, first)?;
        tracing::debug!(target = %target.name, ms = clock.elapsed().as_millis() as u64, "backup pages stored");
        if tables.is_none() {
            tables = Some(snapshot.row_counts(Some(&census))?);
            tracing::debug!(
                ms = clock.elapsed().as_millis() as u64,
                "backup rows counted"
            );
        }
        manifest.tables = tables.clone().unwrap_or_default();
        manifest.finished_ms = (options.now)();
        finish(target, &manifest)?;
        tracing::debug!(
            ms = clock.elapsed().as_millis() as u64,
            "backup manifest and index written"
        );
        out.push(manifest);
    }
    drop(snapshot);
    Ok(out)
}

/// Writes the page table and then the manifest: from here on the backup exists.
fn finish(target: &Target, manifest: &Manifest) -> Result<()> {
    target.put(&manifest_key(&manifest.id), encode_manifest(manifest)?)?;
    tracing::info!(
        target = %target.name,
        id = %manifest.id,
        pages = manifest.page_count,
        pages_stored = manifest.pages_stored,
        bytes = manifest.stored_bytes(),
        "backup written"
    );
    // The index is a cache of what the manifests say: failing to refresh it loses nothing.
    super::catalog::refresh_index(target);
    Ok(())
}

fn find_parent(
    target: &Target,
    options: &CreateOptions<'_>,
    codec: &Codec,
    page_size: u32,
) -> Option<Parent> {
    if options.full || options.config.full_every <= 1 {
        return None;
    }
    let catalog = match Catalog::load(target) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "catalog unreadable; taking a full backup");
            return None;
        }
    };
    let newest = catalog.newest_from(&options.database, options.source(), None)?;
    if u64::from(newest.depth) + 1 >= options.config.full_every || newest.page_size != page_size {
        return None;
    }
    let load = || -> Result<Parent> {
        let manifest = catalog.manifest(target, &newest.id)?;
        // A backup decodes every segment one way: a change of compression or recipients starts
        // a new chain.
        if manifest.compression != codec.compression || manifest.recipients != codec.recipients() {
            return Err(Error::backup(
                "codec_changed",
                "compression or recipients changed since the previous backup",
                None,
            ));
        }
        let key = pages_key(&manifest.id);
        let bytes = target.get(&key)?.ok_or_else(|| {
            Error::backup("corrupt_object", format!("object {key} is missing"), None)
        })?;
        if format::hex_hash(&bytes) != manifest.page_table.blake3 {
            return Err(Error::backup(
                "corrupt_object",
                format!("object {key}: checksum differs from its manifest's"),
                None,
            ));
        }
        let pages = format::decode_pages(&bytes, &key)?;
        Ok(Parent { manifest, pages })
    };
    match load() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(target = %target.name, parent = %newest.id, error = %e, "no incremental on the previous backup; taking a full backup");
            None
        }
    }
}

/// Where a backup's pages come from, and what is noted as they are read.
#[derive(Clone, Copy)]
struct Source<'a> {
    snapshot: &'a Snapshot,
    fingerprint: Fingerprint,
    /// Pages per segment.
    segment_pages: u32,
    progress: Option<&'a Progress>,
    /// Notes the pages' b-tree headers, for the row counts (the first target only).
    census: Option<&'a Census>,
}

/// A page's fingerprint and place.
type Located = (u64, Place);

/// A segment on its way to a compressor: its index among the new segments and its pages.
type Job = (u32, u32, Vec<u8>);
/// A compressed segment on its way to the packer.
type Done = Result<(u32, u32, Vec<u8>)>;

fn write_one(
    target: &Target,
    snapshot: &Snapshot,
    codec: &Codec,
    options: &CreateOptions<'_>,
    started_ms: i64,
    census: Option<&Census>,
) -> Result<Manifest> {
    let config = options.config;
    let ps = snapshot.page_size as usize;
    let id = super::new_id(started_ms, &format!("{}/{}", target.name, options.database));
    let clock = std::time::Instant::now();
    let parent = find_parent(target, options, codec, snapshot.page_size);
    tracing::debug!(
        parent = parent.is_some(),
        ms = clock.elapsed().as_millis() as u64,
        "backup parent looked up"
    );
    let segment_pages = (config.segment_bytes as usize / ps).max(1) as u32;
    let fingerprint = if codec.recipients().is_empty() {
        Fingerprint::Crc64
    } else {
        Fingerprint::Blake3
    };
    let threads = config.threads.max(1) as usize;
    if let Some(p) = options.progress {
        p.start(u64::from(snapshot.page_count));
    }
    let (places, kept, new_segments, packs, page_table) = std::thread::scope(|s| {
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..threads {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            s.spawn(move || compress_worker(&rx, &tx, codec));
        }
        // Only the workers hold the ends they use: when the packer stops, they stop, and then
        // the reader's sends fail instead of waiting forever.
        drop((done_tx, job_rx));
        let packer = s.spawn(|| pack(target, &id, config.pack_bytes, done_rx, options.progress));
        let source = Source {
            snapshot,
            fingerprint,
            segment_pages,
            progress: options.progress,
            census,
        };
        let read = match parent.as_ref() {
            Some(p) => read_changed(&source, p, threads, job_tx),
            None => read_pages(&source, job_tx),
        };
        // The page table needs only where each page is: it is stored while the compressors and
        // the packer finish the last segments.
        let table = read.and_then(|places| {
            let (kept, entries) = number(&places);
            let pages_bytes = encode_pages(&entries)?;
            let page_table = ObjectSum {
                key: pages_key(&id),
                size: pages_bytes.len() as u64,
                blake3: format::hex_hash(&pages_bytes),
            };
            target.put(&page_table.key, pages_bytes)?;
            Ok((places, kept, page_table))
        });
        let packed = packer.join().map_err(|_| Error::Internal {
            message: "backup packer panicked".into(),
        })?;
        // A packer failure (the target) explains a reader that could not send: report it first.
        let (segments, packs) = packed?;
        let (places, kept, page_table) = table?;
        Ok::<_, Error>((places, kept, segments, packs, page_table))
    })?;
    tracing::debug!(
        ms = clock.elapsed().as_millis() as u64,
        "backup pages read and packed"
    );
    // The parent's segments still used, in the order the page table numbers them, then the new.
    let mut segments: Vec<Segment> = Vec::with_capacity(kept.len() + new_segments.len());
    if let Some(p) = &parent {
        segments.extend(
            kept.iter()
                .map(|seg| p.manifest.segments[*seg as usize].clone()),
        );
    }
    segments.extend(new_segments);
    let pages_stored = places
        .iter()
        .filter(|(_, p)| matches!(p, Place::New(..)))
        .count() as u32;
    let owners: BTreeSet<String> = segments
        .iter()
        .filter_map(|s| format::pack_owner(&s.pack))
        .filter(|o| *o != id)
        .map(str::to_owned)
        .collect();
    Ok(Manifest {
        id: id.clone(),
        database: options.database.clone(),
        source: super::catalog::comparable(options.source())
            .display()
            .to_string(),
        kind: options.kind.as_str().to_owned(),
        started_ms,
        finished_ms: 0,
        state_min_ms: snapshot.state_min_ms,
        state_max_ms: snapshot.state_max_ms,
        wal: snapshot.wal().map(|p| super::format::WalMark {
            salt1: p.salt1,
            salt2: p.salt2,
            offset: p.offset,
        }),
        ltx_txid: None,
        page_size: snapshot.page_size,
        page_count: snapshot.page_count,
        page_fingerprint: fingerprint.as_str().to_owned(),
        tables: BTreeMap::new(),
        compression: codec.compression.clone(),
        level: codec.level,
        recipients: codec.recipients(),
        parent: parent.as_ref().map(|p| p.manifest.id.clone()),
        depends_on: owners.into_iter().collect(),
        depth: parent.as_ref().map_or(0, |p| p.manifest.depth + 1),
        pages_stored,
        segments,
        packs,
        page_table,
    })
}

/// Numbers the segments a backup's pages are in: the parent's that are still used (returned,
/// in order), then the new ones; and gives each page its entry.
fn number(places: &[Located]) -> (Vec<u32>, Vec<PageEntry>) {
    let used: BTreeSet<u32> = places
        .iter()
        .filter_map(|(_, place)| match place {
            Place::Parent(seg, _) => Some(*seg),
            Place::New(..) => None,
        })
        .collect();
    let kept: Vec<u32> = used.into_iter().collect();
    let renumber: BTreeMap<u32, u32> = kept
        .iter()
        .enumerate()
        .map(|(i, seg)| (*seg, i as u32))
        .collect();
    let first_new = kept.len() as u32;
    let entries = places
        .iter()
        .map(|(fp, place)| match place {
            Place::Parent(seg, slot) => PageEntry {
                segment: renumber[seg],
                slot: *slot,
                fp: *fp,
            },
            Place::New(seg, slot) => PageEntry {
                segment: first_new + seg,
                slot: *slot,
                fp: *fp,
            },
        })
        .collect();
    (kept, entries)
}

/// An incremental backup: fingerprints every page on `threads` threads and sends the pages
/// whose fingerprint differs from the parent's to the compressors as it finds them, so that
/// compression runs beside the scan. A reader's batch starts at [`FIRST_BATCH_PAGES`] (a few
/// hundred changed pages are spread over every compressor) and doubles up to a segment with each
/// batch sent (a mostly changed database still gets whole segments). Unchanged pages keep the
/// parent's entry.
fn read_changed(
    source: &Source<'_>,
    parent: &Parent,
    threads: usize,
    jobs: SyncSender<Job>,
) -> Result<Vec<Located>> {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
    let Source {
        snapshot,
        fingerprint,
        segment_pages,
        progress,
        census,
    } = *source;
    let ps = snapshot.page_size as usize;
    let total = snapshot.page_count;
    // Read in pieces that stay in a core's cache until they are fingerprinted: with whole
    // segments (4 MiB) the fingerprints read every page from memory a second time.
    let scan_pages = ((SCAN_BYTES / ps) as u32).max(1);
    let ranges = total.div_ceil(scan_pages);
    let (next_range, next_segment) = (AtomicU32::new(0), AtomicU32::new(0));
    // A reader that fails stops the others: the backup fails anyway.
    let failed = AtomicBool::new(false);
    let kept = |i: usize, fp: u64| parent.pages.get(i).is_some_and(|e| e.fp == fp);
    let stopped = || Error::Internal {
        message: "backup writer stopped".into(),
    };
    let scan = || -> Result<Scanned> {
        let mut buf = vec![0u8; scan_pages as usize * ps];
        let mut out = Scanned::default();
        let mut batch = FIRST_BATCH_PAGES.min(segment_pages);
        let mut pending: Vec<u8> = Vec::new();
        let mut pending_pgnos: Vec<u32> = Vec::new();
        let mut send = |pending: &mut Vec<u8>, pgnos: &mut Vec<u32>| -> Result<()> {
            let index = next_segment.fetch_add(1, Relaxed);
            for (slot, pgno) in pgnos.drain(..).enumerate() {
                out.new_places.push((pgno, index, slot as u32));
            }
            let pages = (pending.len() / ps) as u32;
            jobs.send((index, pages, std::mem::take(pending)))
                .map_err(|_| stopped())
        };
        loop {
            let r = next_range.fetch_add(1, Relaxed);
            if r >= ranges || failed.load(Relaxed) {
                break;
            }
            let first = r * scan_pages + 1;
            let n = scan_pages.min(total - first + 1);
            let chunk = &mut buf[..n as usize * ps];
            snapshot.read_pages(first, chunk)?;
            if let Some(c) = census {
                c.record(first, chunk, ps);
            }
            let mut fps = Vec::with_capacity(n as usize);
            for (i, page) in chunk.chunks(ps).enumerate() {
                let fp = fingerprint.of(page);
                let pgno = first + i as u32;
                if !kept(pgno as usize - 1, fp) {
                    pending.extend_from_slice(page);
                    pending_pgnos.push(pgno);
                    if pending_pgnos.len() as u32 == batch {
                        send(&mut pending, &mut pending_pgnos)?;
                        batch = (batch * 2).min(segment_pages);
                    }
                }
                fps.push(fp);
            }
            out.fps.push((r, fps));
            if let Some(p) = progress {
                p.add_pages(u64::from(n));
            }
        }
        if !pending_pgnos.is_empty() {
            send(&mut pending, &mut pending_pgnos)?;
        }
        Ok(out)
    };
    let scanned: Vec<Result<Scanned>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let scanned = scan();
                    if scanned.is_err() {
                        failed.store(true, Relaxed);
                    }
                    scanned
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::Internal {
                        message: "backup reading thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    drop(jobs);
    let mut fps = vec![0u64; total as usize];
    let mut new_places = Vec::new();
    for part in scanned {
        let part = part?;
        for (r, cs) in part.fps {
            let at = (r * scan_pages) as usize;
            fps[at..at + cs.len()].copy_from_slice(&cs);
        }
        new_places.extend(part.new_places);
    }
    new_places.sort_unstable();
    let mut new_places = new_places.into_iter().peekable();
    let mut places = Vec::with_capacity(total as usize);
    for (i, fp) in fps.into_iter().enumerate() {
        let pgno = i as u32 + 1;
        match new_places.next_if(|&(p, _, _)| p == pgno) {
            Some((_, segment, slot)) => places.push((fp, Place::New(segment, slot))),
            None => {
                let e =
                    parent
                        .pages
                        .get(i)
                        .filter(|e| e.fp == fp)
                        .ok_or_else(|| Error::Internal {
                            message: format!("backup page {pgno} was neither kept nor sent"),
                        })?;
                places.push((fp, Place::Parent(e.segment, e.slot)));
            }
        }
    }
    Ok(places)
}

/// Bytes an incremental backup's scan reads at a time.
const SCAN_BYTES: usize = 256 * 1024;

/// Changed pages an incremental backup's reader gathers before its first segment.
const FIRST_BATCH_PAGES: u32 = 64;

/// What one reader of an incremental backup found: each range's fingerprints, and where each
/// changed page went (page number, segment, slot).
#[derive(Default)]
struct Scanned {
    fps: Vec<(u32, Vec<u64>)>,
    new_places: Vec<(u32, u32, u32)>,
}

/// A full backup: reads every page, hashes it, and sends them all, a segment at a time.
fn read_pages(source: &Source<'_>, jobs: SyncSender<Job>) -> Result<Vec<Located>> {
    let Source {
        snapshot,
        fingerprint,
        segment_pages,
        progress,
        census,
    } = *source;
    let ps = snapshot.page_size as usize;
    let total = snapshot.page_count;
    let mut places = Vec::with_capacity(total as usize);
    let segment_bytes = segment_pages as usize * ps;
    let mut buf = vec![0u8; segment_bytes];
    let mut pending: Vec<u8> = Vec::with_capacity(segment_bytes);
    let mut pending_pages = 0u32;
    let mut next_segment = 0u32;
    let stopped = || Error::Internal {
        message: "backup writer stopped".into(),
    };
    let mut first = 1u32;
    while first <= total {
        let n = segment_pages.min(total - first + 1);
        let chunk = &mut buf[..n as usize * ps];
        snapshot.read_pages(first, chunk)?;
        if let Some(c) = census {
            c.record(first, chunk, ps);
        }
        for i in 0..n {
            let page = &chunk[i as usize * ps..(i as usize + 1) * ps];
            places.push((
                fingerprint.of(page),
                Place::New(next_segment, pending_pages),
            ));
            pending.extend_from_slice(page);
            pending_pages += 1;
            if pending_pages == segment_pages {
                let full = std::mem::replace(&mut pending, Vec::with_capacity(segment_bytes));
                jobs.send((next_segment, pending_pages, full))
                    .map_err(|_| stopped())?;
                next_segment += 1;
                pending_pages = 0;
            }
        }
        if let Some(p) = progress {
            p.add_pages(u64::from(n));
        }
        first += n;
    }
    if pending_pages > 0 {
        jobs.send((next_segment, pending_pages, pending))
            .map_err(|_| stopped())?;
    }
    Ok(places)
}

fn compress_worker(jobs: &Mutex<Receiver<Job>>, done: &SyncSender<Done>, codec: &Codec) {
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((index, pages, plain)) = job else {
            return;
        };
        let result = codec.encode(&plain).map(|stored| (index, pages, stored));
        if done.send(result).is_err() {
            return;
        }
    }
}

/// Puts compressed segments, in index order, into packs of about `pack_bytes`; a thread of its
/// own stores each full pack, so compression goes on while a pack is written and synced.
fn pack(
    target: &Target,
    id: &str,
    pack_bytes: u64,
    done: Receiver<Done>,
    progress: Option<&Progress>,
) -> Result<(Vec<Segment>, Vec<ObjectSum>)> {
    std::thread::scope(|s| {
        let (full_tx, full_rx) = sync_channel::<(String, Vec<u8>)>(1);
        let uploader = s.spawn(move || -> Result<()> {
            for (key, bytes) in full_rx {
                let len = bytes.len() as u64;
                target.put(&key, bytes)?;
                if let Some(p) = progress {
                    p.add_bytes(len);
                }
            }
            Ok(())
        });
        let packed = fill_packs(id, pack_bytes, done, &full_tx);
        drop(full_tx);
        let uploaded = uploader.join().map_err(|_| Error::Internal {
            message: "backup uploader panicked".into(),
        })?;
        // The target's failure explains a packer that could not hand over a pack.
        uploaded?;
        packed
    })
}

fn fill_packs(
    id: &str,
    pack_bytes: u64,
    done: Receiver<Done>,
    full: &SyncSender<(String, Vec<u8>)>,
) -> Result<(Vec<Segment>, Vec<ObjectSum>)> {
    let mut waiting: BTreeMap<u32, (u32, Vec<u8>)> = BTreeMap::new();
    let mut next = 0u32;
    let mut segments = Vec::new();
    let mut packs = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let flush = |buf: &mut Vec<u8>, packs: &mut Vec<ObjectSum>| -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let key = pack_key(id, packs.len() as u32);
        packs.push(ObjectSum {
            key: key.clone(),
            size: buf.len() as u64,
            blake3: format::hex_hash(buf),
        });
        full.send((key, std::mem::take(buf)))
            .map_err(|_| Error::Internal {
                message: "backup uploader stopped".into(),
            })
    };
    for result in done {
        let (index, pages, stored) = result?;
        waiting.insert(index, (pages, stored));
        while let Some((pages, stored)) = waiting.remove(&next) {
            segments.push(Segment {
                pack: pack_key(id, packs.len() as u32),
                offset: buf.len() as u64,
                len: stored.len() as u64,
                pages,
                blake3: format::hex_hash(&stored),
            });
            buf.extend_from_slice(&stored);
            next += 1;
            if buf.len() as u64 >= pack_bytes {
                flush(&mut buf, &mut packs)?;
            }
        }
    }
    if !waiting.is_empty() {
        return Err(Error::Internal {
            message: "backup segments went missing between compression and packing".into(),
        });
    }
    flush(&mut buf, &mut packs)?;
    Ok((segments, packs))
}
