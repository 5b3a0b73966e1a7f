//! [`verify()`]: checks a backup's objects against their checksums (manifest, page table, every
//! segment it needs, whole packs of its own); deep, it also restores the backup to a scratch file
//! (every page against its hash), runs SQLite's check and compares rows per table with those
//! counted when it was taken. Records the result on the target.

use std::path::PathBuf;
use std::time::Instant;

use super::catalog::{Verification, read_manifest, record_verification};
use super::format::{self, Manifest, pack_owner};
use super::materialize::materialize;
use super::{Identity, Target, format_ms};
use crate::error::{Error, Result};
use crate::restore::Check;

/// How to verify.
pub struct VerifyOptions<'a> {
    /// Also restore to a scratch file, check it and compare row counts.
    pub deep: bool,
    /// The check a deep verify runs.
    pub check: Check,
    /// For encrypted backups, deep.
    pub identity: Option<&'a Identity>,
    /// Where the scratch file goes (default: the system's temporary directory).
    pub scratch_dir: Option<PathBuf>,
    /// The time, ms since the epoch.
    pub now: &'a dyn Fn() -> i64,
    /// Record the result on the target.
    pub record: bool,
}

/// Verifies backup `id` on `target`. Problems found are in the result (`ok == false`), not an
/// error; errors are for a target that cannot be read at all or a missing identity.
pub fn verify(target: &Target, id: &str, options: &VerifyOptions<'_>) -> Result<Verification> {
    let started = Instant::now();
    let at_ms = (options.now)();
    let mut problems = Vec::new();
    let mut objects = 0u64;
    let mut bytes = 0u64;
    let manifest = match read_manifest(target, id) {
        Ok(m) => m,
        Err(
            e @ Error::Backup {
                code: "corrupt_object",
                ..
            },
        ) => {
            problems.push(e.to_string());
            return finish(target, id, options, at_ms, started, problems, 1, 0);
        }
        Err(e) => return Err(e),
    };
    objects += 1;
    if options.deep {
        return verify_deep(target, manifest, options, at_ms, started, objects);
    }
    let pages_key = format::pages_key(id);
    match target.get(&pages_key)? {
        None => problems.push(format!("object {pages_key} is missing")),
        Some(b) => {
            objects += 1;
            bytes += b.len() as u64;
            let actual = format::hex_hash(&b);
            if actual != manifest.page_table.blake3 {
                problems.push(format!(
                    "object {pages_key}: expected blake3 {}, actual {actual}",
                    manifest.page_table.blake3
                ));
            }
        }
    }
    // Each pack once: every segment this backup needs, and whole-object sums of its own.
    let mut packs: std::collections::BTreeMap<&str, Vec<&format::Segment>> =
        std::collections::BTreeMap::new();
    for s in &manifest.segments {
        packs.entry(s.pack.as_str()).or_default().push(s);
    }
    for (key, segs) in packs {
        let Some(pack) = target.get(key)? else {
            problems.push(format!(
                "object {key} is missing (owned by backup {})",
                pack_owner(key).unwrap_or("?")
            ));
            continue;
        };
        objects += 1;
        bytes += pack.len() as u64;
        if let Some(own) = manifest.packs.iter().find(|p| p.key == key) {
            let actual = format::hex_hash(&pack);
            if actual != own.blake3 || pack.len() as u64 != own.size {
                problems.push(format!(
                    "object {key}: expected {} bytes with blake3 {}, actual {} bytes with blake3 {actual}",
                    own.size,
                    own.blake3,
                    pack.len()
                ));
            }
        }
        for s in segs {
            let end = (s.offset + s.len) as usize;
            match pack.get(s.offset as usize..end) {
                None => problems.push(format!(
                    "object {key}: segment at offset {} ({} bytes) is past its end ({} bytes)",
                    s.offset,
                    s.len,
                    pack.len()
                )),
                Some(stored) => {
                    let actual = format::hex_hash(stored);
                    if actual != s.blake3 {
                        problems.push(format!(
                            "object {key}: segment at offset {} ({} bytes, {} pages): expected blake3 {}, actual {actual}",
                            s.offset, s.len, s.pages, s.blake3
                        ));
                    }
                }
            }
        }
    }
    finish(
        target, id, options, at_ms, started, problems, objects, bytes,
    )
}

/// The deep part of [`verify`]: restores the backup to a scratch file (which checks the page table
/// and every segment and page on the way), then checks it with SQLite and counts its rows.
fn verify_deep(
    target: &Target,
    manifest: Manifest,
    options: &VerifyOptions<'_>,
    at_ms: i64,
    started: Instant,
    mut objects: u64,
) -> Result<Verification> {
    let id = manifest.id.clone();
    let id = id.as_str();
    let mut problems = Vec::new();
    let mut bytes = 0u64;
    if !manifest.recipients.is_empty() && options.identity.is_none() {
        return Err(Error::backup(
            "identity_required",
            format!("backup {id} is encrypted: a deep verify decrypts it and needs the identity"),
            Some("pass --identity FILE, or verify without --deep (checksums need no key)"),
        ));
    }
    let dir = options
        .scratch_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let scratch = dir.join(format!("tradevault-verify-{}-{id}.db", std::process::id()));
    // A scratch file is read at once and deleted: it is not synced.
    let restored = materialize(
        target,
        manifest.clone(),
        options.identity,
        &scratch,
        None,
        false,
    );
    let outcome = match restored {
        Err(
            e @ Error::Backup {
                code: "identity_mismatch",
                ..
            },
        ) => Err(e),
        Err(e @ (Error::Backup { .. } | Error::Invalid { .. })) => {
            problems.push(e.to_string());
            Ok(())
        }
        Err(e) => Err(e),
        Ok(r) => {
            objects += r.objects;
            bytes += r.fetched_bytes;
            let checking = Instant::now();
            let checked = check_restored(&scratch, options.check, &manifest.tables, &mut problems);
            tracing::debug!(
                id,
                restore_ms = (r.seconds * 1e3) as u64,
                check_ms = checking.elapsed().as_millis() as u64,
                "backup restored to scratch and checked"
            );
            checked
        }
    };
    crate::restore::remove_database_files(&scratch);
    outcome?;
    finish(
        target, id, options, at_ms, started, problems, objects, bytes,
    )
}

/// Runs the check and compares rows per table with those `expected`.
fn check_restored(
    path: &std::path::Path,
    check: Check,
    expected: &std::collections::BTreeMap<String, u64>,
    problems: &mut Vec<String>,
) -> Result<()> {
    let checked = crate::integrity::check(path, check, true)?;
    if !checked.problems.is_empty() {
        problems.push(format!(
            "{}: {}",
            check.pragma(),
            checked.problems.join("; ")
        ));
    }
    problems.extend(compare_rows(expected, &checked.rows));
    Ok(())
}

/// What differs between the rows per table `actual` (counted in a restored copy) and those
/// `expected` (counted when the backup was taken); empty when they match.
pub(crate) fn compare_rows(
    expected: &std::collections::BTreeMap<String, u64>,
    actual: &std::collections::BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, n) in expected {
        match actual.get(table) {
            Some(a) if a == n => {}
            Some(a) => problems.push(format!(
                "table {table}: {a} rows restored, {n} counted at backup time"
            )),
            None => problems.push(format!(
                "table {table}: missing from the restored database (or unreadable)"
            )),
        }
    }
    // Backups before session 5 skipped every name matching `LIKE 'sqlite_%'` unescaped (such as
    // `sqlitedata`): such a table missing from an old manifest is not a problem.
    let old_skip = |t: &str| t.len() >= 7 && t.as_bytes()[..6].eq_ignore_ascii_case(b"sqlite");
    for table in actual
        .keys()
        .filter(|t| !expected.contains_key(*t) && !old_skip(t))
    {
        problems.push(format!(
            "table {table}: in the restored database, not counted at backup time"
        ));
    }
    problems
}

#[allow(clippy::too_many_arguments)]
fn finish(
    target: &Target,
    id: &str,
    options: &VerifyOptions<'_>,
    at_ms: i64,
    started: Instant,
    problems: Vec<String>,
    objects: u64,
    bytes: u64,
) -> Result<Verification> {
    let v = Verification {
        id: id.to_owned(),
        at_ms,
        at: format_ms(at_ms),
        deep: options.deep,
        check: options.deep.then(|| options.check.pragma().to_owned()),
        ok: problems.is_empty(),
        problems: problems
            .into_iter()
            .map(|p| {
                if p.contains(id) {
                    p
                } else {
                    format!("backup {id}: {p}")
                }
            })
            .collect(),
        objects,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    if options.record {
        record_verification(target, &v)?;
    }
    Ok(v)
}
