//! A replica in an S3-compatible bucket, in Litestream 0.5.17's layout: the key of a file is
//! `<path>/<level as %04x>/<min>-<max>.ltx` and its user metadata `litestream-timestamp` holds the
//! header time as Go's RFC3339Nano (docs/ltx-litestream-0.5.17.md §4.2).
//!
//! The operations are blocking, over the async `object_store` client: each [`S3Replica`] owns a
//! one-worker tokio runtime and sends every operation there, so it works from plain threads (the
//! replication engine) and from inside a caller's runtime alike (`serve`, tests running an S3
//! server), and never calls `block_on` on anyone's worker thread.
//!
//! Creation times: a listing (ListObjectsV2) carries no user metadata, so the header time of a
//! file comes from a HEAD. Each replica remembers the times of the files it wrote or looked at
//! (by key, size and ETag where listed), so a HEAD is made once per file and process, several at
//! a time, and never for a file this process wrote. An object without the metadata falls back to
//! its LastModified, as Litestream does.
//!
//! Large files are uploaded from their file in parts (CreateMultipartUpload, UploadPart one part
//! at a time, CompleteMultipartUpload; AbortMultipartUpload on any failure): memory holds one part.
//! S3 still shows the object only once it is complete.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RetryConfig,
};

use super::{ReplicaFile, STREAM_BUFFER_BYTES, WriteLtx, verify_ltx};
pub use crate::config::S3Settings;
use crate::error::{Error, Result};

/// The user metadata key Litestream stores the header time under.
pub const TIMESTAMP_METADATA: &str = "litestream-timestamp";

/// Attempts after the first for a request that failed to connect or got a 5xx/429 answer.
const RETRIES_MAX: usize = 3;
/// No retry starts later than this after the first attempt (object_store's default: 180 s).
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TCP (and TLS) connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An operation without a body gets this long, retries included; one with a body gets this plus
/// its size at [`THROUGHPUT_MIN_BYTES_PER_SECOND`], so large snapshots are not cut short.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest transfer an operation with a body is given time for.
const THROUGHPUT_MIN_BYTES_PER_SECOND: u64 = 1024 * 1024;
/// HEAD requests in flight while a listing looks up creation times.
const HEADS_IN_FLIGHT: usize = 8;
/// Files larger than this are uploaded in parts of this size (one part in memory at a time).
pub const PART_BYTES: u64 = 16 << 20;
/// The smallest part S3 accepts (every part but the last).
pub const PART_BYTES_MIN: u64 = 5 << 20;

/// A replica in an S3-compatible bucket (`s3://bucket/path?endpoint=...`).
#[derive(Clone)]
pub struct S3Replica {
    client: Arc<Client>,
    runtime: Arc<Runtime>,
    /// Files larger than this go up in parts of this size.
    part_bytes: u64,
}

/// What the operations share: the object store client, where the replica is, known times.
struct Client {
    store: AmazonS3,
    /// `<path>` without leading or trailing slashes; empty for the bucket's root.
    prefix: String,
    /// `s3://bucket/path` and the endpoint: safe to print (no credentials).
    description: String,
    /// Header times of files seen, by key: (size, ETag, ms since the epoch).
    times: Mutex<HashMap<String, (u64, Option<String>, i64)>>,
}

/// The replica's own runtime; dropped without waiting, so it may be dropped anywhere, even inside
/// another runtime.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for S3Replica {
    // Not derived: the object store client holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("S3Replica")
            .field(&self.client.description)
            .finish()
    }
}

/// What an `s3://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    region: Option<String>,
    force_path_style: Option<bool>,
    sign_payload: Option<bool>,
    skip_verify: bool,
}

impl S3Replica {
    /// A replica for `url`, with credentials and settings from the process environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`, ...).
    pub fn parse(url: &str) -> Result<S3Replica> {
        S3Replica::parse_with_env(url, std::env::vars())
    }

    /// A replica for `url` with the settings of its config entry (credentials, region), which win
    /// over the process environment's `AWS_*` variables (see [`S3Settings`]).
    pub fn parse_with(url: &str, settings: &S3Settings) -> Result<S3Replica> {
        S3Replica::parse_with_settings(url, settings, std::env::vars())
    }

    /// A replica for `url` with the `AWS_*` settings taken from `env` instead of the process
    /// environment. The URL's parameters win over the environment.
    ///
    /// URL: `s3://bucket/path/inside` with the optional parameters of Litestream's URLs:
    /// `endpoint` (an S3-compatible server; plain `http` is allowed when named), `region`,
    /// `force-path-style` (or `forcePathStyle`; the default with an endpoint), `sign-payload`
    /// (or `signPayload`; default true) and `skip-verify` (or `skipVerify`: accept any TLS
    /// certificate).
    pub fn parse_with_env(
        url: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<S3Replica> {
        S3Replica::parse_with_settings(url, &S3Settings::default(), env)
    }

    /// [`S3Replica::parse_with_env`], with `settings` from the config over `env`.
    pub fn parse_with_settings(
        url: &str,
        settings: &S3Settings,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<S3Replica> {
        let location = Location::parse(url)?;
        let (builder, endpoint) = location.builder(url, settings, env)?;
        let mut description = format!("s3://{}", location.bucket);
        if !location.prefix.is_empty() {
            description = format!("{description}/{}", location.prefix);
        }
        if let Some(e) = &endpoint {
            description = format!("{description}?endpoint={e}");
        }
        // reqwest is built without a default crypto provider (ring instead of aws-lc-rs): install
        // it before the first client; a provider already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tradevault-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("start s3 client runtime", "tradevault-s3", e))?;
        let store = {
            let _entered = runtime.enter();
            builder.build().map_err(|e| {
                let message = redacted(&e);
                let hint = if message.contains("AccessKey") {
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY together (or neither, for instance credentials)"
                } else {
                    "check the AWS_* environment variables"
                };
                Error::Replica {
                    replica: description.clone(),
                    message: format!("configure: {message}"),
                    hint: Some(hint),
                }
            })?
        };
        Ok(S3Replica {
            client: Arc::new(Client {
                store,
                prefix: location.prefix,
                description,
                times: Mutex::new(HashMap::new()),
            }),
            runtime: Arc::new(Runtime(Some(runtime))),
            part_bytes: PART_BYTES,
        })
    }

    /// The same replica, uploading files larger than `bytes` in parts of `bytes` (at least
    /// [`PART_BYTES_MIN`], S3's smallest part; the default is [`PART_BYTES`]).
    pub fn with_part_bytes(mut self, bytes: u64) -> S3Replica {
        self.part_bytes = bytes.max(PART_BYTES_MIN);
        self
    }

    /// Where it is: `s3://bucket/path` and the endpoint, never credentials.
    pub fn describe(&self) -> &str {
        &self.client.description
    }

    /// The key of a file of `level` covering `min..=max`: `<path>/<level %04x>/<min>-<max>.ltx`.
    pub fn key_of(&self, level: u32, min_txid: u64, max_txid: u64) -> String {
        self.client.key(level, &ltx::file_name(min_txid, max_txid))
    }

    /// Verifies `bytes` as an LTX file, then uploads it with one PUT (S3 shows an object only
    /// once it is complete), its header time in the `litestream-timestamp` metadata.
    pub fn put(&self, level: u32, bytes: &[u8], created_at_ms: Option<i64>) -> Result<ReplicaFile> {
        let (header, _) = ltx::Decoder::new(bytes)
            .and_then(|d| d.finish())
            .map_err(|source| Error::Ltx {
                name: format!("file for level {level}"),
                source,
            })?;
        let file = self.file_of(level, &header, bytes.len() as u64, created_at_ms);
        let key = self.key_of(level, file.min_txid, file.max_txid);
        let e_tag = self.put_whole(
            &key,
            bytes.to_vec(),
            timestamp_attributes(file.created_at_ms),
        )?;
        self.client
            .remember(&key, file.size, e_tag, file.created_at_ms);
        Ok(file)
    }

    /// Writes the LTX file `write` produces into a temporary file (in the system's temporary
    /// directory), then uploads it as [`S3Replica::put_file`] does and removes it.
    pub fn put_streamed(
        &self,
        level: u32,
        min_txid: u64,
        max_txid: u64,
        created_at_ms: Option<i64>,
        write: &mut WriteLtx<'_>,
    ) -> Result<ReplicaFile> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = std::env::temp_dir().join(format!(
            "tradevault-{}-{n}-{}.tmp",
            std::process::id(),
            ltx::file_name(min_txid, max_txid)
        ));
        let result = File::create(&tmp)
            .map_err(|e| Error::io("create temporary ltx file", &tmp, e))
            .and_then(|f| {
                let mut out = BufWriter::with_capacity(STREAM_BUFFER_BYTES, f);
                write(&mut out)?;
                out.flush()
                    .map_err(|e| Error::io("write temporary ltx file", &tmp, e))
            })
            .and_then(|()| self.put_file(level, &tmp, created_at_ms));
        let _ = std::fs::remove_file(&tmp);
        let file = result?;
        if (file.min_txid, file.max_txid) != (min_txid, max_txid) {
            return Err(Error::Internal {
                message: format!(
                    "ltx file {} holds TXIDs {}-{}",
                    ltx::file_name(min_txid, max_txid),
                    file.min_txid,
                    file.max_txid
                ),
            });
        }
        Ok(file)
    }

    /// Uploads the LTX file at `path`, verified: up to the part size, read once and sent in one
    /// PUT; above, verified as streamed, then sent in parts read from the file one at a time,
    /// and completed only if the file did not change meanwhile (aborted on any failure).
    pub fn put_file(
        &self,
        level: u32,
        path: &std::path::Path,
        created_at_ms: Option<i64>,
    ) -> Result<ReplicaFile> {
        let from = File::open(path).map_err(|e| Error::io("open ltx file", path, e))?;
        let before = from
            .metadata()
            .map_err(|e| Error::io("read ltx file size", path, e))?;
        let size = before.len();
        // Read and uploaded through the same handle (the local log only ever renames complete
        // files into place, and an open file keeps its bytes if its name goes), unless a file
        // replica deleted it into its pool, which may empty and reuse it (see `Recycler`): a
        // small file is verified as read, a large one checked unchanged before it is completed.
        if size <= self.part_bytes {
            let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
            from.read_exact_at(&mut bytes, 0)
                .map_err(|e| Error::io("read ltx file", path, e))?;
            let header = verify_ltx(bytes.as_slice(), || path.display().to_string())?;
            let file = self.file_of(level, &header, size, created_at_ms);
            let key = self.key_of(level, file.min_txid, file.max_txid);
            let e_tag = self.put_whole(&key, bytes, timestamp_attributes(file.created_at_ms))?;
            self.client
                .remember(&key, file.size, e_tag, file.created_at_ms);
            return Ok(file);
        }
        let header = verify_ltx(&from, || path.display().to_string())?;
        let file = self.file_of(level, &header, size, created_at_ms);
        let key = self.key_of(level, file.min_txid, file.max_txid);
        let attributes = timestamp_attributes(file.created_at_ms);
        let e_tag = {
            let unchanged = || super::file::unchanged(&from, &before, size, path);
            self.put_parts(&key, &from, size, attributes, &unchanged)
                .map_err(|e| match e {
                    Error::Io { action, source, .. } => Error::io(action, path, source),
                    other => other,
                })?
                .e_tag
        };
        self.client
            .remember(&key, file.size, e_tag, file.created_at_ms);
        Ok(file)
    }

    fn file_of(
        &self,
        level: u32,
        header: &ltx::Header,
        size: u64,
        created_at_ms: Option<i64>,
    ) -> ReplicaFile {
        ReplicaFile {
            level,
            min_txid: header.min_txid,
            max_txid: header.max_txid,
            size,
            created_at_ms: created_at_ms.unwrap_or(header.timestamp_ms),
        }
    }

    /// One PUT of `bytes` at `key`; returns the ETag.
    fn put_whole(
        &self,
        key: &str,
        bytes: Vec<u8>,
        attributes: Attributes,
    ) -> Result<Option<String>> {
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let limit = deadline(bytes.len() as u64);
        let payload = PutPayload::from(bytes);
        let client = self.client.clone();
        let action = format!("put {key}");
        let path = Key::from(key);
        let result = self.run(async move {
            let put = client.store.put_opts(&path, payload, options);
            client.within(&action, limit, put).await
        })?;
        Ok(result.e_tag)
    }

    /// A multipart upload of `size` bytes of `from` at `key`, one part of `part_bytes` read and
    /// sent at a time; aborted (its parts deleted) if any step fails.
    fn put_parts(
        &self,
        key: &str,
        from: &File,
        size: u64,
        attributes: Attributes,
        unchanged: &dyn Fn() -> Result<()>,
    ) -> Result<PutResult> {
        let client = self.client.clone();
        let path = Key::from(key);
        let action = format!("start upload of {key}");
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self.run(async move {
            let start = client.store.put_multipart_opts(&path, options);
            client.within(&action, OPERATION_TIMEOUT, start).await
        })?;
        let sent = self
            .send_parts(key, &mut upload, from, size)
            .and_then(|()| unchanged());
        let (upload, result) = match sent {
            Ok(()) => {
                let client = self.client.clone();
                let action = format!("complete upload of {key}");
                // Completing joins the parts on the server: give it the time of the whole size.
                let limit = deadline(size);
                self.run(async move {
                    let done = client.within(&action, limit, upload.complete()).await;
                    Ok((upload, done))
                })?
            }
            Err(e) => (upload, Err(e)),
        };
        if result.is_err() {
            let client = self.client.clone();
            let action = format!("abort upload of {key}");
            let mut upload = upload;
            let aborted = self.run(async move {
                client
                    .within(&action, OPERATION_TIMEOUT, upload.abort())
                    .await
            });
            if let Err(e) = aborted {
                tracing::warn!(key, error = %e, "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rules remove them");
            }
        }
        result
    }

    fn send_parts(
        &self,
        key: &str,
        upload: &mut Box<dyn MultipartUpload>,
        from: &File,
        size: u64,
    ) -> Result<()> {
        let mut offset = 0;
        let mut number = 0;
        while offset < size {
            let len = (size - offset).min(self.part_bytes);
            let mut part = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            from.read_exact_at(&mut part, offset)
                .map_err(|e| Error::io("read ltx file", key, e))?;
            number += 1;
            let request = upload.put_part(PutPayload::from(part));
            let client = self.client.clone();
            let action = format!("upload part {number} of {key}");
            self.run(async move { client.within(&action, deadline(len), request).await })?;
            offset += len;
        }
        Ok(())
    }

    /// The files of `level`, ordered by transaction range; keys that are not LTX file names are
    /// skipped. `created_at_ms` is the `litestream-timestamp` metadata (LastModified without it).
    pub fn list(&self, level: u32) -> Result<Vec<ReplicaFile>> {
        self.list_after(level, 0)
    }

    /// [`S3Replica::list`], skipping the files that end at or before `txid` before any HEAD.
    pub fn list_after(&self, level: u32, txid: u64) -> Result<Vec<ReplicaFile>> {
        let client = self.client.clone();
        self.run(async move { client.list(level, txid).await })
    }

    /// A file's bytes (verify them with `ltx::Decoder` before applying anything).
    pub fn read(&self, file: &ReplicaFile) -> Result<Vec<u8>> {
        let client = self.client.clone();
        let key = self.key_of(file.level, file.min_txid, file.max_txid);
        let limit = deadline(file.size);
        self.run(async move {
            let action = format!("read {key}");
            let path = Key::from(key.as_str());
            let get = async {
                let got = client.store.get(&path).await?;
                got.bytes().await
            };
            Ok(client.within(&action, limit, get).await?.to_vec())
        })
    }

    /// A file's first `n` bytes (fewer if it is shorter): one ranged GET.
    pub fn read_head(&self, file: &ReplicaFile, n: usize) -> Result<Vec<u8>> {
        let client = self.client.clone();
        let key = self.key_of(file.level, file.min_txid, file.max_txid);
        let end = (n as u64).min(file.size.max(1));
        self.run(async move {
            let action = format!("read the head of {key}");
            let path = Key::from(key.as_str());
            let get = client.store.get_range(&path, 0..end);
            Ok(client
                .within(&action, OPERATION_TIMEOUT, get)
                .await?
                .to_vec())
        })
    }

    /// Streams a file's bytes into `out` without holding them in memory; returns `out` and the
    /// bytes written (verify them before applying anything).
    pub fn read_to_file(&self, file: &ReplicaFile, out: File) -> Result<(File, u64)> {
        let client = self.client.clone();
        let key = self.key_of(file.level, file.min_txid, file.max_txid);
        let (limit, expected) = (deadline(file.size), file.size);
        self.run(async move {
            let action = format!("read {key}");
            let path = Key::from(key.as_str());
            let mut out = out;
            let mut failed_write = None;
            let get = async {
                let mut body = client.store.get(&path).await?.into_stream();
                let mut written = 0u64;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    if let Err(e) = out.write_all(&chunk) {
                        failed_write = Some(e);
                        break;
                    }
                    written += chunk.len() as u64;
                }
                Ok(written)
            };
            let written = client.within(&action, limit, get).await?;
            if let Some(e) = failed_write {
                return Err(Error::io(
                    "write downloaded replica file",
                    std::path::Path::new(&key),
                    e,
                ));
            }
            if written != expected {
                return Err(Error::Replica {
                    replica: client.description.clone(),
                    message: format!("{action}: {written} bytes received, {expected} listed"),
                    hint: Some("the object changed or the transfer was cut; try again"),
                });
            }
            Ok((out, written))
        })
    }

    /// Removes a file; a file already gone is not an error.
    pub fn delete(&self, file: &ReplicaFile) -> Result<()> {
        let client = self.client.clone();
        let key = self.key_of(file.level, file.min_txid, file.max_txid);
        self.run(async move {
            let action = format!("delete {key}");
            let path = Key::from(key.as_str());
            let delete = async {
                match client.store.delete(&path).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    other => other,
                }
            };
            client.within(&action, OPERATION_TIMEOUT, delete).await?;
            client.forget(&key);
            Ok(())
        })
    }

    /// Stores `bytes` under `key` (relative to the replica's path) with one PUT: S3 shows the
    /// object only once it is complete. For backups, which keep their own objects beside LTX files.
    pub fn put_object(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        let client = self.client.clone();
        let full = client.object_key(key);
        let limit = deadline(bytes.len() as u64);
        self.run(async move {
            let action = format!("put {full}");
            let path = Key::from(full.as_str());
            let put = client.store.put(&path, PutPayload::from(bytes));
            client.within(&action, limit, put).await?;
            Ok(())
        })
    }

    /// The bytes of the object `key` (relative to the replica's path); `None` when there is none.
    pub fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let client = self.client.clone();
        let full = client.object_key(key);
        self.run(async move {
            let action = format!("read {full}");
            let path = Key::from(full.as_str());
            let get = async {
                match client.store.get(&path).await {
                    Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            };
            // Backup objects are at most a pack (tens of MiB): give them the time of a large one.
            client.within(&action, deadline(256 << 20), get).await
        })
    }

    /// The objects under `prefix` (relative to the replica's path), as (relative key, size),
    /// ordered by key.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let client = self.client.clone();
        let dir = client.object_key(prefix.trim_end_matches('/'));
        self.run(async move {
            let action = format!("list {dir}/");
            let mut stream = client.store.list(Some(&Key::from(dir.as_str())));
            let mut out = Vec::new();
            while let Some(meta) = client
                .within(&action, OPERATION_TIMEOUT, stream.try_next())
                .await?
            {
                let key = meta.location.as_ref();
                let relative = if client.prefix.is_empty() {
                    Some(key)
                } else {
                    key.strip_prefix(client.prefix.as_str())
                        .and_then(|k| k.strip_prefix('/'))
                };
                if let Some(k) = relative {
                    out.push((k.to_owned(), meta.size));
                }
            }
            out.sort();
            Ok(out)
        })
    }

    /// Removes the object `key` (relative to the replica's path); one already gone is not an error.
    pub fn delete_object(&self, key: &str) -> Result<()> {
        let client = self.client.clone();
        let full = client.object_key(key);
        self.run(async move {
            let action = format!("delete {full}");
            let path = Key::from(full.as_str());
            let delete = async {
                match client.store.delete(&path).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    other => other,
                }
            };
            client.within(&action, OPERATION_TIMEOUT, delete).await
        })
    }

    /// Runs `operation` on the replica's runtime and waits for it on this thread. Inside a
    /// multi-threaded runtime the wait is announced with `block_in_place`, so the caller's other
    /// tasks (an S3 server in a test, say) move to another worker meanwhile.
    fn run<T: Send + 'static>(
        &self,
        operation: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let runtime = self.runtime.0.as_ref().ok_or_else(|| Error::Internal {
            message: "s3 client runtime is shut down".into(),
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(operation.await);
        });
        let wait = move || {
            rx.recv().unwrap_or_else(|_| {
                Err(Error::Internal {
                    message: "s3 operation stopped before it finished".into(),
                })
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Client {
    fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn key(&self, level: u32, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{level:04x}/{name}")
        } else {
            format!("{}/{level:04x}/{name}", self.prefix)
        }
    }

    async fn list(self: Arc<Self>, level: u32, after: u64) -> Result<Vec<ReplicaFile>> {
        let dir = self.key(level, "");
        let dir = dir.trim_end_matches('/');
        let action = format!("list {dir}/");
        let mut stream = self.store.list(Some(&Key::from(dir)));
        let mut metas = Vec::new();
        // Each page of the listing gets its own deadline: a long listing is not a stuck one.
        while let Some(meta) = self
            .within(&action, OPERATION_TIMEOUT, stream.try_next())
            .await?
        {
            metas.push(meta);
        }
        drop(stream);
        let mut files = Vec::new();
        let mut unknown = Vec::new();
        for meta in metas {
            let key = meta.location.as_ref();
            // Only names directly under the level's prefix: `<dir>/<min>-<max>.ltx`.
            let Some(range) = key
                .strip_prefix(dir)
                .and_then(|rest| rest.strip_prefix('/'))
                .and_then(ltx::parse_file_name)
            else {
                continue;
            };
            if range.1 <= after {
                continue;
            }
            match self.known(&meta) {
                Some(created_at_ms) => files.push(replica_file(level, range, &meta, created_at_ms)),
                None => unknown.push((range, meta)),
            }
        }
        let looked_up: Vec<ReplicaFile> = futures::stream::iter(unknown)
            .map(|(range, meta)| {
                let client = self.clone();
                async move {
                    let created_at_ms = client.header_time(&meta).await?;
                    Ok::<_, Error>(replica_file(level, range, &meta, created_at_ms))
                }
            })
            .buffer_unordered(HEADS_IN_FLIGHT)
            .try_collect()
            .await?;
        files.extend(looked_up);
        files.sort_by_key(|f| (f.min_txid, f.max_txid));
        Ok(files)
    }

    /// The header time of an object: its `litestream-timestamp` metadata (one HEAD, remembered),
    /// or its LastModified when it has none (asked again by each listing).
    async fn header_time(&self, meta: &ObjectMeta) -> Result<i64> {
        let action = format!("look up {}", meta.location);
        let head = self.store.get_opts(
            &meta.location,
            GetOptions {
                head: true,
                ..GetOptions::default()
            },
        );
        let got = self.within(&action, OPERATION_TIMEOUT, head).await?;
        let stamped = got
            .attributes
            .get(&Attribute::Metadata(TIMESTAMP_METADATA.into()))
            .and_then(|v| v.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond());
        let Some(created_at_ms) = stamped else {
            // Not remembered: some servers (s3s-fs) show a new object before its metadata, so
            // a missing stamp may only be early, and the next listing asks again.
            return Ok(got.meta.last_modified.timestamp_millis());
        };
        self.remember(
            meta.location.as_ref(),
            got.meta.size,
            got.meta.e_tag.clone(),
            created_at_ms,
        );
        Ok(created_at_ms)
    }

    fn known(&self, meta: &ObjectMeta) -> Option<i64> {
        let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        // The ETag tells a replaced object apart; some servers (s3s-fs) list none, and then the
        // size must do (a name is a TXID range: it is only rewritten with the same content).
        match times.get(meta.location.as_ref()) {
            Some((size, e_tag, ms))
                if *size == meta.size
                    && (e_tag.is_none() || meta.e_tag.is_none() || *e_tag == meta.e_tag) =>
            {
                Some(*ms)
            }
            _ => None,
        }
    }

    fn remember(&self, key: &str, size: u64, e_tag: Option<String>, created_at_ms: i64) {
        let mut times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        times.insert(key.to_owned(), (size, e_tag, created_at_ms));
    }

    fn forget(&self, key: &str) {
        let mut times = self.times.lock().unwrap_or_else(|p| p.into_inner());
        times.remove(key);
    }

    /// Runs a request with a deadline and turns its failure into an [`Error::Replica`].
    async fn within<T>(
        &self,
        action: &str,
        limit: Duration,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(action, &e)),
            Err(_) => Err(Error::Replica {
                replica: self.description.clone(),
                message: format!("{action}: no answer within {} s", limit.as_secs()),
                hint: Some("check the endpoint and the network; the server may be overloaded"),
            }),
        }
    }

    fn error(&self, action: &str, e: &object_store::Error) -> Error {
        let (message, hint) = explain(e);
        Error::Replica {
            replica: self.description.clone(),
            message: format!("{action}: {message}"),
            hint,
        }
    }
}

fn replica_file(
    level: u32,
    (min_txid, max_txid): (u64, u64),
    meta: &ObjectMeta,
    created_at_ms: i64,
) -> ReplicaFile {
    ReplicaFile {
        level,
        min_txid,
        max_txid,
        size: meta.size,
        created_at_ms,
    }
}

/// The `litestream-timestamp` metadata of a file created at `created_at_ms`.
fn timestamp_attributes(created_at_ms: i64) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(TIMESTAMP_METADATA.into()),
        rfc3339_nano(created_at_ms).into(),
    );
    attributes
}

/// The time an operation moving `bytes` may take, retries included.
fn deadline(bytes: u64) -> Duration {
    OPERATION_TIMEOUT + Duration::from_secs(bytes / THROUGHPUT_MIN_BYTES_PER_SECOND)
}

/// What went wrong, in an operator's words, and what to do about it. Only the S3 error code and
/// message of an answer are kept: the rest of an S3 error body can echo the access key id and
/// the string that was signed.
fn explain(e: &object_store::Error) -> (String, Option<&'static str>) {
    let chain = error_chain(e);
    // Without AWS_ACCESS_KEY_ID, object_store asks the instance metadata service (or the web
    // identity or container endpoints) for credentials; its failures must not read as the bucket's.
    let fetching_credentials = chain.iter().any(|m| {
        [
            "/latest/api/token",
            "/latest/meta-data/",
            "169.254.170.2",
            "REDACTED",
        ]
        .iter()
        .any(|s| m.contains(s))
    });
    if fetching_credentials {
        let cause = chain.last().cloned().unwrap_or_default();
        return (
            format!("cannot get credentials: {cause}"),
            Some(
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access_key_id and secret_access_key in the config; without them the instance metadata service is asked",
            ),
        );
    }
    let status = chain.iter().find_map(|m| {
        let at = m.find("status code: ")? + "status code: ".len();
        m.get(at..at + 3)?.parse::<u16>().ok()
    });
    let code = chain.iter().find_map(|m| xml_element(m, "Code"));
    let said = chain.iter().find_map(|m| xml_element(m, "Message"));
    if let Some(status) = status {
        let mut message = status.to_string();
        if let Some(code) = &code {
            message = format!("{message} {code}");
        }
        if let Some(said) = said {
            message = format!("{message}: {said}");
        }
        let hint = match (status, code.as_deref()) {
            (_, Some("SignatureDoesNotMatch")) => Some(
                "check AWS_SECRET_ACCESS_KEY (or secret_access_key in the config): the server computes another signature with the secret it holds for this key",
            ),
            (_, Some("InvalidAccessKeyId")) => Some(
                "check AWS_ACCESS_KEY_ID (or access_key_id in the config): the server does not know this key",
            ),
            (_, Some("NoSuchBucket")) => {
                Some("create the bucket first (tradevault never creates buckets), or fix its name")
            }
            (_, Some("AccessDenied")) | (403, _) => Some(
                "the credentials may not use this bucket: allow s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject",
            ),
            (_, Some("PermanentRedirect" | "AuthorizationHeaderMalformed")) | (301, _) => {
                Some("set the bucket's region with ?region= or AWS_REGION")
            }
            (401, _) => Some(
                "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (or their keys in the config)",
            ),
            _ => None,
        };
        return (message, hint);
    }
    if chain.iter().any(|m| m.contains("redirect")) {
        return (
            "redirected: the bucket is in another region".into(),
            Some("set the bucket's region with ?region= or AWS_REGION"),
        );
    }
    // No answer from the server: connection refused, DNS, TLS. The innermost cause says which.
    let cause = chain.last().cloned().unwrap_or_default();
    let hint =
        Some("check the endpoint (?endpoint= or AWS_ENDPOINT_URL) and that the server is up");
    let retried = chain
        .iter()
        .find_map(|m| {
            let at = m.find("after ")? + "after ".len();
            let n: String = m[at..].chars().take_while(char::is_ascii_digit).collect();
            n.parse::<u32>().ok()
        })
        .map(|n| format!(" (after {n} retries)"))
        .unwrap_or_default();
    (format!("cannot reach the server: {cause}{retried}"), hint)
}

/// Every message in an error's source chain, outermost first, each without the ones inside it.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        out.push(err.to_string());
        next = err.source();
    }
    out
}

fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{name}>"))?;
    Some(text[start..start + len].trim().to_owned()).filter(|s| !s.is_empty())
}

/// An error's text with nothing that can hold a secret: only the first line of its chain.
fn redacted(e: &object_store::Error) -> String {
    match e {
        object_store::Error::Generic { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Go's `time.RFC3339Nano` in UTC, as Litestream writes it: the fraction without trailing zeros,
/// and none at all on a whole second (`2026-11-22T05:43:24.306Z`, `...:30.5Z`, `...:30Z`).
pub fn rfc3339_nano(ms: i64) -> String {
    let ts = jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let millis = ms.rem_euclid(1000);
    if millis != 0 {
        let fraction = format!("{millis:03}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

impl Location {
    fn parse(url: &str) -> Result<Location> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad_url(url, "an S3 replica is an s3://bucket/path URL"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !bucket_ok {
            return Err(bad_url(
                url,
                "the bucket name is missing or holds characters other than letters, digits, '.', '-' and '_'",
            ));
        }
        let prefix = path.trim_matches('/');
        if !prefix.is_empty() && Key::parse(prefix).is_err() {
            return Err(bad_url(
                url,
                "the path must be names separated by single '/', without '.' or '..'",
            ));
        }
        let mut location = Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            region: None,
            force_path_style: None,
            sign_payload: None,
            skip_verify: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw).ok_or_else(|| {
                bad_url(
                    url,
                    &format!("parameter `{name}` is not valid percent-encoding"),
                )
            })?;
            let flag = || match value.as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(bad_url(
                    url,
                    &format!("parameter `{name}` must be true or false"),
                )),
            };
            match name {
                "endpoint" => {
                    location.endpoint = Some(
                        endpoint_with_scheme(&value)
                            .map_err(|why| bad_url(url, &format!("endpoint {why}")))?,
                    )
                }
                "region" if !value.is_empty() => location.region = Some(value),
                "force-path-style" | "forcePathStyle" => location.force_path_style = Some(flag()?),
                "sign-payload" | "signPayload" => location.sign_payload = Some(flag()?),
                "skip-verify" | "skipVerify" => location.skip_verify = flag()?,
                _ => {
                    return Err(bad_url(
                        url,
                        &format!(
                            "unknown parameter `{name}` (known: endpoint, region, force-path-style, sign-payload, skip-verify; credentials come from the config or AWS_* variables, never the URL)"
                        ),
                    ));
                }
            }
        }
        Ok(location)
    }

    /// An object_store builder for this location, with settings from `env` (`AWS_*`, as
    /// `AmazonS3Builder::from_env` reads them) under the URL's, and the endpoint in use.
    fn builder(
        &self,
        url: &str,
        settings: &S3Settings,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(AmazonS3Builder, Option<String>)> {
        let mut options = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // Each operation has its own deadline, scaled to its size (see `deadline`).
            .with_timeout_disabled();
        if self.skip_verify {
            options = options.with_allow_invalid_certificates(true);
        }
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: RETRIES_MAX,
                retry_timeout: RETRY_TIMEOUT,
            });
        // The endpoint is kept aside: the addressing style decides how it is used.
        let mut env_endpoint = None;
        // Keys from the config replace the environment's credentials as a whole: a session token
        // of another identity must not be sent with them.
        let own_keys = settings.access_key_id.is_some();
        for (key, value) in env {
            if !key.starts_with("AWS_") || value.is_empty() {
                continue;
            }
            let lower = key.to_ascii_lowercase();
            if matches!(lower.as_str(), "aws_endpoint_url" | "aws_endpoint") {
                env_endpoint = Some(value);
            } else if let Ok(config_key) = lower.parse::<AmazonS3ConfigKey>() {
                let credential = matches!(
                    config_key,
                    AmazonS3ConfigKey::AccessKeyId
                        | AmazonS3ConfigKey::SecretAccessKey
                        | AmazonS3ConfigKey::Token
                );
                if !(own_keys && credential) {
                    builder = builder.with_config(config_key, value);
                }
            }
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder
                .with_access_key_id(id.expose())
                .with_secret_access_key(secret.expose());
            if let Some(token) = &settings.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        let endpoint = match (&self.endpoint, env_endpoint) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(e)) => Some(
                endpoint_with_scheme(&e)
                    .map_err(|why| bad_url(url, &format!("AWS_ENDPOINT_URL {why}")))?,
            ),
            (None, None) => None,
        };
        if let Some(region) = &self.region {
            builder = builder.with_region(region);
        }
        builder = builder.with_bucket_name(&self.bucket);
        // Litestream's defaults: path style with a custom endpoint, virtual-hosted style on AWS.
        builder = match (&endpoint, self.force_path_style) {
            (Some(e), Some(false)) => {
                let (scheme, host) = e.split_once("://").unwrap_or(("https", e));
                builder
                    .with_endpoint(format!("{scheme}://{}.{host}", self.bucket))
                    .with_virtual_hosted_style_request(true)
            }
            (Some(e), _) => builder
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false),
            (None, Some(true)) => builder.with_virtual_hosted_style_request(false),
            (None, _) => builder.with_virtual_hosted_style_request(true),
        };
        if let Some(sign) = self.sign_payload {
            builder = builder.with_unsigned_payload(!sign);
        }
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        Ok((builder, endpoint))
    }
}

/// `host:port` or `http(s)://host[:port][/]`, as `scheme://host[:port]`; plain `host:port` is
/// `http`, as in Litestream. Credentials in it are refused: they belong in `AWS_*` variables.
fn endpoint_with_scheme(value: &str) -> std::result::Result<String, &'static str> {
    let with_scheme = if value.starts_with("http://") || value.starts_with("https://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let (_, host) = with_scheme.split_once("://").unwrap_or(("", ""));
    let host = host.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err("must be scheme://host[:port]");
    }
    if host.contains('@') {
        return Err("must not hold credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    }
    Ok(with_scheme.trim_end_matches('/').to_owned())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A bad `s3://` URL; only the part before `?` is echoed (parameters are not for messages).
fn bad_url(url: &str, why: &str) -> Error {
    let shown = url.split('?').next().unwrap_or(url);
    Error::invalid("replica_url", None, format!("{shown}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_go_rfc3339_nano() {
        let ms = |s: &str| s.parse::<jiff::Timestamp>().expect("time").as_millisecond();
        for text in [
            "2026-11-22T05:43:24.306Z",
            "2026-11-22T05:43:30.5Z",
            "2026-11-22T05:43:30.05Z",
            "2026-11-22T05:43:30Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339_nano(ms(text)), text);
        }
    }

    #[test]
    fn urls_follow_litestream() {
        let l = Location::parse("s3://bkt/db/prod?endpoint=127.0.0.1:9000&region=eu-west-1&force-path-style=true&sign-payload=false")
            .expect("parse");
        assert_eq!(
            l,
            Location {
                bucket: "bkt".into(),
                prefix: "db/prod".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-west-1".into()),
                force_path_style: Some(true),
                sign_payload: Some(false),
                skip_verify: false,
            }
        );
        let l = Location::parse(
            "s3://bkt/?forcePathStyle=false&endpoint=https%3A%2F%2Fs3.example.com%2F",
        )
        .expect("parse");
        assert_eq!(
            (l.prefix.as_str(), l.endpoint.as_deref(), l.force_path_style),
            ("", Some("https://s3.example.com"), Some(false))
        );
        for bad in [
            "s3://",
            "s3:///db",
            "s3://b/k/../x",
            "s3://bkt/a//b",
            "s3://bkt/../b",
            "s3://bkt/db?secret=x",
            "s3://bkt/db?force-path-style=yes",
            "s3://bkt/db?endpoint=http://user:pw@host:9000",
            "s3://bkt/db?endpoint=%zz",
        ] {
            let e = Location::parse(bad).expect_err(bad);
            assert!(
                matches!(
                    &e,
                    Error::Invalid {
                        code: "replica_url",
                        ..
                    }
                ),
                "{bad}: {e:?}"
            );
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn keys_follow_litestream() {
        let r = S3Replica::parse_with_env("s3://bkt/db?endpoint=http://127.0.0.1:1", Vec::new())
            .expect("replica");
        assert_eq!(
            r.key_of(9, 1, 0x10),
            "db/0009/0000000000000001-0000000000000010.ltx"
        );
        assert_eq!(
            r.key_of(10, 3, 4),
            "db/000a/0000000000000003-0000000000000004.ltx"
        );
        let root = S3Replica::parse_with_env("s3://bkt", Vec::new()).expect("replica");
        assert_eq!(
            root.key_of(0, 1, 1),
            "0000/0000000000000001-0000000000000001.ltx"
        );
        assert_eq!(r.describe(), "s3://bkt/db?endpoint=http://127.0.0.1:1");
        assert_eq!(root.describe(), "s3://bkt");
    }

    #[test]
    fn s3_errors_keep_only_code_and_message() {
        let body = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId></Error>";
        let e = object_store::Error::PermissionDenied {
            path: "db/0000/x.ltx".into(),
            source: body.into(),
        };
        let (message, hint) = explain(&e);
        assert_eq!(
            message,
            "403 SignatureDoesNotMatch: The request signature we calculated does not match"
        );
        assert!(hint.is_some_and(|h| h.contains("AWS_SECRET_ACCESS_KEY")));
    }
}
