//! [`apply`]: downloads a plan's files (a few at once, ahead of the one being applied), decodes
//! each into the staging file in chain order (a large file on several threads, each writing its
//! own pages at their offsets), verifies every file's checksum, then checks the database and gives
//! it its name.
//!
//! Pages are written to the staging file while their file is being verified: the staging file is
//! private (created here, removed on any failure), and the output name appears only after every
//! file was verified whole and the database passed its check.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

pub use crate::integrity::Check;

use super::fetch::Fetcher;
use super::plan::impossible;
use super::{Plan, Progress, Stage};
use crate::config::RestoreConfig;
use crate::error::{Error, Result};
use crate::replica::{Replica, ReplicaFile};

/// A file being applied, read from memory or from disk.
type Decoder<'a> = ltx::RangeDecoder<'a, dyn ltx::ReadAt + 'a>;

/// Pages decoded between two writes: one write per run of consecutive pages, at most this long.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// A file with fewer pages is decoded on one thread: threads cost more than they save.
const PARALLEL_PAGES_MIN: usize = 1_024;

/// How to apply a plan.
#[derive(Debug, Default, Clone)]
pub struct Options<'a> {
    /// Downloads at once, bytes held ahead, decoding threads.
    pub limits: RestoreConfig,
    /// The check the database must pass.
    pub check: Check,
    /// Counters to update as the restore goes, if anyone watches.
    pub progress: Option<&'a Progress>,
    /// A database to start from (a restored backup) instead of an empty file: the plan's files
    /// are applied on top of it (see [`super::plan_after`]).
    pub base: Option<&'a Path>,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Restored {
    /// The plan it followed.
    pub plan: Plan,
    /// The restored database.
    pub output: String,
    /// Its size in pages.
    pub pages: u32,
    /// Its page size in bytes.
    pub page_size: u32,
    /// Its size in bytes.
    pub bytes: u64,
    /// The check it passed.
    pub check: Check,
    /// Seconds spent downloading, verifying and writing pages.
    pub fetch_apply_seconds: f64,
    /// Seconds spent checking the database (the fsync of the staging file runs beside it).
    pub check_seconds: f64,
    /// Seconds the fsync of the staging file took (within `check_seconds`).
    pub sync_seconds: f64,
}

/// Restores `plan` from `replica` into `output`, which must not exist, with the default limits
/// and `PRAGMA integrity_check`.
pub fn apply(replica: &Replica, plan: &Plan, output: &Path) -> Result<Restored> {
    apply_with(replica, plan, output, &Options::default())
}

/// Restores `plan` from `replica` into `output`, which must not exist.
pub fn apply_with(
    replica: &Replica,
    plan: &Plan,
    output: &Path,
    options: &Options<'_>,
) -> Result<Restored> {
    let refuse = |path: &Path, what: &str| {
        let message = format!(
            "{} already exists; restore never overwrites a file{what}",
            path.display()
        );
        Err(Error::invalid("output_exists", None, message))
    };
    if output.exists() {
        return refuse(output, "");
    }
    // A WAL left beside the output would be replayed over the restored pages at the next open.
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", output.display()));
        if side.exists() {
            return refuse(&side, ": remove it first, or restore elsewhere");
        }
    }
    // Ours to remove: created here, or taken over from a restore that was killed.
    let (staging, out) = super::create_staging(output)?;
    let result = copy_base(options.base, &out, &staging)
        .and_then(|()| restore_into(replica, plan, &out, &staging, output, options));
    let _ = std::fs::remove_file(&staging);
    if let Some(p) = options.progress {
        p.set_stage(Stage::Done);
    }
    let restored = result?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(restored)
}

/// Copies the base database, if any, into the staging file.
fn copy_base(base: Option<&Path>, out: &File, staging: &Path) -> Result<()> {
    let Some(base) = base else {
        return Ok(());
    };
    let mut from = File::open(base).map_err(|e| Error::io("open base database", base, e))?;
    let mut to = out;
    std::io::copy(&mut from, &mut to).map_err(|e| Error::io("copy base database", staging, e))?;
    Ok(())
}

fn restore_into(
    replica: &Replica,
    plan: &Plan,
    out: &File,
    staging: &Path,
    output: &Path,
    options: &Options<'_>,
) -> Result<Restored> {
    let started = Instant::now();
    let (pages, page_size) = assemble(replica, plan, out, staging, options)?;
    let fetch_apply = started.elapsed();
    if let Some(p) = options.progress {
        p.set_stage(Stage::Check);
    }
    let checking = Instant::now();
    // The fsync runs beside the check: it flushes the pages the check reads from the page cache.
    let (synced, checked) = std::thread::scope(|s| {
        let sync = s.spawn(|| {
            let t = Instant::now();
            out.sync_all().map(|()| t.elapsed())
        });
        let checked = check_database(staging, options.check);
        (sync.join(), checked)
    });
    let sync_time = synced
        .map_err(|_| Error::Internal {
            message: "the fsync thread panicked".into(),
        })?
        .map_err(|e| Error::io("fsync staging file", staging, e))?;
    checked?;
    let check_time = checking.elapsed();
    // A hard link fails if the name is taken meanwhile: the output appears complete or not at all.
    std::fs::hard_link(staging, output)
        .map_err(|e| Error::io("publish restored database", output, e))?;
    Ok(Restored {
        plan: plan.clone(),
        output: output.display().to_string(),
        pages,
        page_size,
        bytes: u64::from(pages) * u64::from(page_size),
        check: options.check,
        fetch_apply_seconds: fetch_apply.as_secs_f64(),
        check_seconds: check_time.as_secs_f64(),
        sync_seconds: sync_time.as_secs_f64(),
    })
}

/// Downloads and applies every file of the plan, in order, into `out`; returns its pages and
/// page size.
fn assemble(
    replica: &Replica,
    plan: &Plan,
    out: &File,
    staging: &Path,
    options: &Options<'_>,
) -> Result<(u32, u32)> {
    let files: Vec<ReplicaFile> = plan
        .files
        .iter()
        .map(|&(level, min_txid, max_txid, size)| ReplicaFile {
            level,
            min_txid,
            max_txid,
            size,
            created_at_ms: 0,
        })
        .collect();
    let limits = &options.limits;
    let fetcher = Fetcher::new(replica, &files, staging, limits, options.progress);
    let downloads = usize::try_from(limits.downloads_max)
        .unwrap_or(1)
        .clamp(1, files.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..downloads {
            s.spawn(|| fetcher.run());
        }
        let result = apply_files(&fetcher, &files, out, staging, options);
        fetcher.stop();
        result
    })
}

fn apply_files(
    fetcher: &Fetcher<'_>,
    files: &[ReplicaFile],
    out: &File,
    staging: &Path,
    options: &Options<'_>,
) -> Result<(u32, u32)> {
    let (mut commit, mut page_size) = (0u32, 0u32);
    for (i, file) in files.iter().enumerate() {
        let fetched = fetcher.take(i)?;
        let name = ltx::file_name(file.min_txid, file.max_txid);
        let ltx_error = |source| Error::Ltx {
            name: format!("{}/{name}", file.level),
            source,
        };
        let decoder = ltx::RangeDecoder::new(fetched.source()).map_err(ltx_error)?;
        let header = *decoder.header();
        if (header.min_txid, header.max_txid) != (file.min_txid, file.max_txid) {
            let (lo, hi) = (header.min_txid, header.max_txid);
            return Err(impossible(format!(
                "{name} holds transactions {lo}..={hi}: it was renamed or damaged"
            )));
        }
        if page_size != 0 && header.page_size != page_size {
            return Err(impossible(format!(
                "page size changes from {page_size} to {} in {name}",
                header.page_size
            )));
        }
        let threads = usize::try_from(options.limits.decode_threads).unwrap_or(1);
        let parts = write_file(
            &decoder,
            threads,
            out,
            staging,
            options.progress,
            &ltx_error,
        )?;
        // Only now is the file known to be intact; the pages of a damaged one, already in the
        // staging file, are removed with it.
        decoder.finish(parts).map_err(ltx_error)?;
        page_size = header.page_size;
        commit = header.commit;
        if let Some(p) = options.progress {
            let frames = decoder.frame_bytes(0..decoder.page_count());
            p.file_done(fetched.len().saturating_sub(frames));
        }
        drop(decoder);
        drop(fetched);
        fetcher.applied(i);
    }
    let len = u64::from(commit) * u64::from(page_size);
    out.set_len(len)
        .map_err(|e| Error::io("size staging file", staging, e))?;
    Ok((commit, page_size))
}

/// Decodes every page of a file into `out`, in `threads` parts if it is large; returns the parts
/// for [`ltx::RangeDecoder::finish`] to verify.
fn write_file(
    decoder: &Decoder<'_>,
    threads: usize,
    out: &File,
    staging: &Path,
    progress: Option<&Progress>,
    ltx_error: &(dyn Fn(ltx::Error) -> Error + Sync),
) -> Result<Vec<ltx::Part>> {
    let n = decoder.page_count();
    let parts = if n >= PARALLEL_PAGES_MIN {
        threads.max(1)
    } else {
        1
    };
    let ranges: Vec<Range<usize>> = (0..parts)
        .map(|k| n * k / parts..n * (k + 1) / parts)
        .collect();
    std::thread::scope(|s| {
        let others: Vec<_> = ranges[1..]
            .iter()
            .map(|r| {
                let r = r.clone();
                s.spawn(move || write_part(decoder, r, out, staging, progress, ltx_error))
            })
            .collect();
        let mut done = vec![write_part(
            decoder,
            ranges[0].clone(),
            out,
            staging,
            progress,
            ltx_error,
        )];
        for other in others {
            done.push(other.join().unwrap_or_else(|_| {
                Err(Error::Internal {
                    message: "a decoding thread panicked".into(),
                })
            }));
        }
        done.into_iter().collect()
    })
}

/// Decodes the pages `range` of a file and writes them at their offsets, one write per run of
/// consecutive pages (a snapshot is one long run).
fn write_part(
    decoder: &Decoder<'_>,
    range: Range<usize>,
    out: &File,
    staging: &Path,
    progress: Option<&Progress>,
    ltx_error: &(dyn Fn(ltx::Error) -> Error + Sync),
) -> Result<ltx::Part> {
    let page_size = decoder.header().page_size as usize;
    let batch_pages = (WRITE_BATCH_BYTES / page_size).max(1);
    let mut buf = vec![0u8; batch_pages * page_size];
    let mut part = decoder.part(range.clone());
    let mut i = range.start;
    while i < range.end {
        let first = decoder.pgno(i);
        let mut run = 0;
        while i + run < range.end
            && run < batch_pages
            && u64::from(decoder.pgno(i + run)) == u64::from(first) + run as u64
        {
            let page = &mut buf[run * page_size..(run + 1) * page_size];
            decoder.decode_next(&mut part, page).map_err(ltx_error)?;
            run += 1;
        }
        let offset = u64::from(first - 1) * page_size as u64;
        write_at(out, &buf[..run * page_size], offset)
            .map_err(|e| Error::io("write staging file", staging, e))?;
        if let Some(p) = progress {
            p.applied(decoder.frame_bytes(i..i + run), run as u64);
        }
        i += run;
    }
    Ok(part)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Checks the staged database; anything but `ok` refuses it.
fn check_database(path: &Path, check: Check) -> Result<()> {
    let checked = crate::integrity::check(path, check, false)?;
    if !checked.problems.is_empty() {
        return Err(Error::RestoreCorrupt {
            path: path.to_owned(),
            detail: checked.problems.join("; "),
        });
    }
    Ok(())
}
