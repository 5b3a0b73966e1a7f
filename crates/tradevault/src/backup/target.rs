//! [`Target`]: a place that receives backups, as a flat store of named objects: a directory
//! (`file:///absolute/path`) or an S3 prefix (`s3://bucket/path?endpoint=...`, the same client and
//! credential rules as S3 replicas). An object appears only when complete: on disk a temporary
//! name, fsync, rename, fsync of the directory; on S3 one PUT.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{BackupConfig, BackupTargetConfig};
use crate::error::{Error, Result};
use crate::replica::S3Replica;
use crate::replica::s3::S3Settings;

/// Where backups go.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its configured name, or its URL without the query.
    pub name: String,
    kind: Kind,
    /// Its retention rules (none for a target given by URL).
    pub rules: Option<BackupTargetConfig>,
}

#[derive(Debug, Clone)]
enum Kind {
    File(PathBuf),
    S3(S3Replica),
}

/// Marks temporary files on a file target; listings skip them and prune removes old ones.
pub const TEMP_MARK: &str = ".tmp-";

impl Target {
    /// A target for `url` (`file:///absolute/path` or `s3://...`), credentials from `AWS_*`.
    pub fn parse(url: &str) -> Result<Target> {
        Target::parse_with(url, &S3Settings::default())
    }

    /// [`Target::parse`] with the S3 settings of a config entry (credentials, region) over the
    /// `AWS_*` variables.
    pub fn parse_with(url: &str, settings: &S3Settings) -> Result<Target> {
        let name = url.split_once('?').map_or(url, |(u, _)| u).to_owned();
        let kind = match url.split_once("://") {
            Some(("file", path)) if path.starts_with('/') => Kind::File(PathBuf::from(path)),
            Some(("s3", _)) => Kind::S3(S3Replica::parse_with(url, settings)?),
            _ => {
                return Err(Error::backup(
                    "unknown_target",
                    format!(
                        "{url:?} is neither a configured target nor a file:///absolute/path or s3://bucket/path URL"
                    ),
                    Some("see [[backup.target]] in the config, or give a URL"),
                ));
            }
        };
        Ok(Target {
            name,
            kind,
            rules: None,
        })
    }

    /// A target in an S3 bucket, built with its own settings (tests, callers with explicit
    /// credentials).
    pub fn from_s3(replica: S3Replica) -> Target {
        Target {
            name: replica
                .describe()
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned(),
            kind: Kind::S3(replica),
            rules: None,
        }
    }

    /// A configured target by name, or a target by URL.
    pub fn resolve(config: &BackupConfig, name_or_url: &str) -> Result<Target> {
        if let Some(t) = config.target.iter().find(|t| t.name == name_or_url) {
            return Target::from_config(t);
        }
        if name_or_url.contains("://") {
            // A URL of a configured target gets its name, rules and S3 settings too.
            if let Some(t) = config.target.iter().find(|t| t.url == name_or_url) {
                return Target::from_config(t);
            }
            return Target::parse(name_or_url);
        }
        let known: Vec<&str> = config.target.iter().map(|t| t.name.as_str()).collect();
        Err(Error::backup(
            "unknown_target",
            format!(
                "no backup target named {name_or_url:?} (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            Some(
                "add a [[backup.target]] to the config, or pass --target file:///path or s3://bucket/path",
            ),
        ))
    }

    /// The target of a `[[backup.target]]`.
    pub fn from_config(config: &BackupTargetConfig) -> Result<Target> {
        let mut target = Target::parse_with(&config.url, &config.s3())?;
        target.name = config.name.clone();
        target.rules = Some(config.clone());
        Ok(target)
    }

    /// Where it is, for messages (never holds credentials).
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::File(root) => format!("file://{}", root.display()),
            Kind::S3(r) => r.describe().to_owned(),
        }
    }

    /// Fails with `target_unreachable` when the target cannot be read at all: a directory that
    /// does not exist, or an S3 endpoint that does not answer.
    pub fn check_reachable(&self) -> Result<()> {
        match &self.kind {
            Kind::File(root) if !root.is_dir() => Err(Error::backup(
                "target_unreachable",
                format!(
                    "backup target {}: {} is not a directory",
                    self.name,
                    root.display()
                ),
                Some("check the path (and that its disk is mounted)"),
            )),
            Kind::File(_) => Ok(()),
            Kind::S3(_) => self.list("index.json").map(|_| ()),
        }
    }

    /// Stores `bytes` as `key`; the object appears only once complete.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match &self.kind {
            Kind::File(root) => put_file(root, key, &bytes),
            Kind::S3(r) => r.put_object(key, bytes).map_err(|e| self.unreachable(e)),
        }
    }

    /// The bytes of `key`, or `None` when there is no such object.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match &self.kind {
            Kind::File(root) => {
                let path = root.join(key);
                match fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io("read backup object", path, e)),
                }
            }
            Kind::S3(r) => r.get_object(key).map_err(|e| self.unreachable(e)),
        }
    }

    /// The objects whose key starts with `prefix` (a directory such as `backups/`), as
    /// (key, size), ordered by key; temporary files are skipped.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        match &self.kind {
            Kind::File(root) => {
                let mut out = Vec::new();
                list_dir(root, root, prefix, &mut out, false)?;
                out.sort();
                Ok(out)
            }
            Kind::S3(r) => r.list_objects(prefix).map_err(|e| self.unreachable(e)),
        }
    }

    /// Temporary files older than `age_ms` (left by a writer that died), for prune.
    pub fn stale_temporaries(&self, now_ms: i64, age_ms: i64) -> Result<Vec<(String, u64)>> {
        let Kind::File(root) = &self.kind else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        list_dir(root, root, "", &mut out, true)?;
        Ok(out
            .into_iter()
            .filter(|(k, _)| {
                fs::metadata(root.join(k))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .is_some_and(|d| (d.as_millis() as i64) < now_ms - age_ms)
            })
            .collect())
    }

    /// Removes `key`; an object already gone is not an error.
    pub fn delete(&self, key: &str) -> Result<()> {
        match &self.kind {
            Kind::File(root) => {
                let path = root.join(key);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        // An emptied pack directory goes too (best effort).
                        if let Some(dir) = path.parent()
                            && dir != root
                        {
                            let _ = fs::remove_dir(dir);
                        }
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::io("delete backup object", path, e)),
                }
            }
            Kind::S3(r) => r.delete_object(key).map_err(|e| self.unreachable(e)),
        }
    }

    /// An S3 failure to get an answer at all becomes `target_unreachable`; answers keep theirs.
    fn unreachable(&self, e: Error) -> Error {
        match e {
            Error::Replica { message, hint, .. }
                if message.contains("cannot reach") || message.contains("no answer") =>
            {
                Error::Backup {
                    code: "target_unreachable",
                    message: format!(
                        "backup target {} ({}): {message}",
                        self.name,
                        self.describe()
                    ),
                    hint,
                }
            }
            Error::Replica { message, hint, .. } => Error::Backup {
                code: "target_error",
                message: format!(
                    "backup target {} ({}): {message}",
                    self.name,
                    self.describe()
                ),
                hint,
            },
            other => other,
        }
    }
}

fn put_file(root: &Path, key: &str, bytes: &[u8]) -> Result<()> {
    let path = root.join(key);
    let dir = path.parent().unwrap_or(root).to_owned();
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(|e| Error::io("create backup directory", &dir, e))?;
        // New directories are durable only once their parents are synced.
        let mut d = dir.as_path();
        while let Some(parent) = d.parent() {
            File::open(parent)
                .and_then(|h| h.sync_all())
                .map_err(|e| Error::io("fsync backup directory", parent, e))?;
            if parent == root || !parent.starts_with(root) {
                break;
            }
            d = parent;
        }
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{name}{TEMP_MARK}{}-{n}", std::process::id()));
    let mut f = File::create(&tmp).map_err(|e| Error::io("create backup object", &tmp, e))?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write backup object", &tmp, e));
    drop(f);
    if let Err(e) = written.and_then(|()| {
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename backup object", &path, e))
    }) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync backup directory", &dir, e))
}

/// Collects files under `root/prefix` (prefix may end inside a name) as keys relative to root:
/// complete ones, or only the temporary ones with `temporaries`.
fn list_dir(
    root: &Path,
    base: &Path,
    prefix: &str,
    out: &mut Vec<(String, u64)>,
    temporaries: bool,
) -> Result<()> {
    let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let dir = if dir_part.is_empty() {
        base.to_owned()
    } else {
        base.join(dir_part)
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list backup target", &dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list backup target", &dir, e))?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let key = rel.to_string_lossy().replace('\\', "/");
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                list_dir(root, root, &sub, out, temporaries)?;
            }
            continue;
        }
        if !key.starts_with(prefix) {
            continue;
        }
        if key.contains(TEMP_MARK) == temporaries {
            out.push((key, meta.len()));
        }
    }
    Ok(())
}
