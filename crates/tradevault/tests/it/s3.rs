//! S3 replicas against a real S3 server in the test process (s3s-fs: each bucket is a directory,
//! SigV4 really verified), driven through the same blocking `Replica` the engine and restore use.
//! The async tests run the server on their own tokio runtime and call the blocking API from it:
//! the replica must not depend on, nor stall, its caller's runtime.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::rows;
use ltx::{Encoder, Header};
use object_store::{ObjectStore, ObjectStoreExt};
use tradevault::Error;
use tradevault::replica::{Replica, ReplicaFile, S3Replica};
use tradevault::replicate::{Replicator, Synced};
use tradevault::restore::{self, Target};

/// The server's only credentials.
pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// The secret of [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// The bucket every test uses.
pub const BUCKET: &str = "tradevault-test";

/// Serves S3 from `root` on 127.0.0.1 on the current tokio runtime, with a bucket [`BUCKET`].
pub async fn serve(root: &Path) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use s3s::auth::SimpleAuth;
    use s3s::service::S3ServiceBuilder;
    std::fs::create_dir_all(root.join(BUCKET)).expect("bucket directory");
    // s3s_fs::Error is not a std error: format it.
    let fs = s3s_fs::FileSystem::new(root).unwrap_or_else(|e| panic!("s3s-fs: {e:?}"));
    let mut service = S3ServiceBuilder::new(fs);
    service.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
    let service = service.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let http = Builder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    addr
}

/// An S3 server on a runtime of its own, for tests that have none.
pub struct S3Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its files: `<root>/<bucket>/<key>`.
    pub root: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Starts a server with an empty bucket [`BUCKET`].
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let addr = runtime.block_on(serve(root.path()));
        S3Server {
            addr,
            root,
            runtime: Some(runtime),
        }
    }

    /// Where the server keeps the object `key`.
    pub fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// The `litestream-timestamp` metadata of the object `key`, read with a HEAD.
    pub fn timestamp_metadata(&self, key: &str) -> Option<String> {
        let runtime = self.runtime.as_ref().expect("running");
        runtime.block_on(head_timestamp(self.addr, key))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// `s3://BUCKET/path?endpoint=http://addr`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("s3://{BUCKET}/{path}?endpoint=http://{addr}")
}

/// The `AWS_*` variables a client of the test server needs, with `secret`.
pub fn env_with(secret: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]
}

/// A replica at `path` on the server at `addr`, with the right credentials.
pub fn replica(addr: SocketAddr, path: &str) -> Replica {
    Replica::from(
        S3Replica::parse_with_env(&url(addr, path), env_with(SECRET_ACCESS_KEY)).expect("replica"),
    )
}

/// A small valid LTX file: `pages` pages of 4 KiB filled with `fill`, TXIDs `min..=max`.
fn ltx_file(min: u64, max: u64, timestamp_ms: i64, fill: u8) -> Vec<u8> {
    let mut enc =
        Encoder::new(Vec::new(), Header::new(4096, 2, min, max, timestamp_ms)).expect("header");
    for pgno in 1..=2u32 {
        enc.encode_page(pgno, &[fill.wrapping_add(pgno as u8); 4096])
            .expect("page");
    }
    enc.finish(0).expect("finish").0
}

/// A raw object_store client of the test server, to look at what the replica wrote.
fn raw_store(addr: SocketAddr) -> object_store::aws::AmazonS3 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://{addr}"))
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .build()
        .expect("raw client")
}

/// The `litestream-timestamp` metadata of `key`, read with a HEAD by another client.
async fn head_timestamp(addr: SocketAddr, key: &str) -> Option<String> {
    let head = raw_store(addr)
        .get_opts(
            &key.into(),
            object_store::GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await
        .expect("head");
    head.attributes
        .get(&object_store::Attribute::Metadata(
            "litestream-timestamp".into(),
        ))
        .map(|v| v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn put_list_read_delete_in_litestreams_layout() {
    let root = tempfile::tempdir().expect("tempdir");
    let addr = serve(root.path()).await;
    let replica = replica(addr, "prod/bot");
    assert_eq!(
        replica.describe(),
        format!("s3://{BUCKET}/prod/bot?endpoint=http://{addr}")
    );
    assert!(replica.local_root().is_none());
    assert_eq!(replica.list(0).expect("empty list"), vec![]);

    // 2026-11-22T05:43:24.306Z, .5 and a whole second: Go's RFC3339Nano drops trailing zeros.
    let t = 1_795_326_204_306;
    let snapshot = ltx_file(1, 1, t, 1);
    let first = replica.put(0, &snapshot, None).expect("put level 0");
    let second = replica
        .put(0, &ltx_file(2, 2, t + 6_194, 2), None)
        .expect("put");
    let compacted = replica
        .put(9, &ltx_file(1, 2, t + 6_694, 3), None)
        .expect("put level 9");
    assert_eq!(
        first,
        ReplicaFile {
            level: 0,
            min_txid: 1,
            max_txid: 1,
            size: snapshot.len() as u64,
            created_at_ms: t,
        }
    );
    for (key, stamp) in [
        (
            "prod/bot/0000/0000000000000001-0000000000000001.ltx",
            "2026-11-22T05:43:24.306Z",
        ),
        (
            "prod/bot/0000/0000000000000002-0000000000000002.ltx",
            "2026-11-22T05:43:30.5Z",
        ),
        (
            "prod/bot/0009/0000000000000001-0000000000000002.ltx",
            "2026-11-22T05:43:31Z",
        ),
    ] {
        assert!(
            root.path().join(BUCKET).join(key).is_file(),
            "{key} in Litestream's layout"
        );
        let metadata = head_timestamp(addr, key).await;
        assert_eq!(metadata.as_deref(), Some(stamp), "{key}");
    }
    assert_eq!(
        replica.list(0).expect("list"),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(replica.list(9).expect("list"), vec![compacted.clone()]);
    assert_eq!(replica.read(&first).expect("read"), snapshot);

    // A new process knows none of the times: they come back from the metadata.
    let fresh = self::replica(addr, "prod/bot");
    assert_eq!(
        fresh.list(0).expect("list"),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(fresh.list(9).expect("list"), vec![compacted.clone()]);
    // Once known, a time costs no more requests: with the metadata gone from the server (s3s-fs
    // keeps it in `.bucket-*.metadata.json` files beside the buckets), both replicas still list
    // the header times, while a third one falls back to LastModified.
    for entry in std::fs::read_dir(root.path()).expect("server root") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().ends_with(".metadata.json") {
            std::fs::remove_file(&path).expect("remove metadata");
        }
    }
    for known in [&replica, &fresh] {
        assert_eq!(
            known.list(0).expect("list"),
            vec![first.clone(), second.clone()]
        );
    }
    let third = self::replica(addr, "prod/bot").list(0).expect("list");
    assert_ne!(third[0].created_at_ms, t, "{third:?}");
    assert_eq!((third[0].min_txid, third[0].size), (1, first.size));

    // Other keys under a level are not LTX files; an object without the metadata has its
    // LastModified as its time, as in Litestream.
    let raw = raw_store(addr);
    raw.put(&"prod/bot/0000/notes.txt".into(), "x".into())
        .await
        .expect("put");
    raw.put(
        &"prod/bot/0000/x/0000000000000005-0000000000000005.ltx".into(),
        "x".into(),
    )
    .await
    .expect("put");
    let bare = ltx_file(3, 3, t, 4);
    let bare_key = "prod/bot/0000/0000000000000003-0000000000000003.ltx";
    raw.put(&bare_key.into(), bare.clone().into())
        .await
        .expect("put");
    let modified = raw
        .head(&bare_key.into())
        .await
        .expect("head")
        .last_modified;
    let listed = fresh.list(0).expect("list");
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[2].created_at_ms, modified.timestamp_millis());
    assert_ne!(listed[2].created_at_ms, t);
    // A missing stamp is not remembered: s3s-fs shows a new object before its metadata, so the
    // stamp may arrive later, here with the same bytes (the same size and ETag).
    let mut stamped = object_store::Attributes::new();
    stamped.insert(
        object_store::Attribute::Metadata("litestream-timestamp".into()),
        jiff::Timestamp::from_millisecond(t)
            .expect("time")
            .to_string()
            .into(),
    );
    raw.put_opts(
        &bare_key.into(),
        bare.clone().into(),
        object_store::PutOptions {
            attributes: stamped,
            ..Default::default()
        },
    )
    .await
    .expect("put with the stamp");
    let listed = fresh.list(0).expect("list");
    assert_eq!(listed[2].created_at_ms, t, "{listed:?}");

    // Nothing invalid is uploaded.
    let mut torn = ltx_file(4, 4, t, 5);
    torn.truncate(torn.len() - 1);
    assert!(matches!(
        replica.put(0, &torn, None),
        Err(Error::Ltx { .. })
    ));
    assert!(
        !root
            .path()
            .join(BUCKET)
            .join("prod/bot/0000/0000000000000004-0000000000000004.ltx")
            .exists()
    );

    replica.delete(&second).expect("delete");
    replica
        .delete(&second)
        .expect("a file already gone is not an error");
    assert_eq!(replica.list(0).expect("list").len(), 2);
    assert!(matches!(
        replica.read(&second),
        Err(Error::Replica { ref message, .. }) if message.contains(": 404")
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_a_clear_error_without_credentials() {
    let root = tempfile::tempdir().expect("tempdir");
    let addr = serve(root.path()).await;
    let wrong = "not-the-secret-at-all";
    let replica = Replica::from(
        S3Replica::parse_with_env(&url(addr, "db"), env_with(wrong)).expect("replica"),
    );
    for result in [
        replica.list(0).map(|_| ()),
        replica.put(0, &ltx_file(1, 1, 0, 0), None).map(|_| ()),
    ] {
        let e = result.expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("403 SignatureDoesNotMatch"), "{text}");
        assert!(
            text.contains(&format!("s3://{BUCKET}/db")),
            "names the replica: {text}"
        );
        assert!(
            e.hint()
                .is_some_and(|h| h.contains("AWS_SECRET_ACCESS_KEY")),
            "{:?}",
            e.hint()
        );
        for secret in [wrong, ACCESS_KEY_ID, SECRET_ACCESS_KEY] {
            assert!(!text.contains(secret), "{text}");
            assert!(!format!("{e:?}").contains(secret), "{e:?}");
        }
    }
    assert!(!format!("{replica:?}").contains(wrong));
    assert!(!replica.describe().contains(wrong));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_endpoint_fails_after_a_few_retries() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let replica = replica(addr, "db");
    let e = replica.list(0).expect_err("nothing listens");
    let text = e.to_string();
    assert!(matches!(e, Error::Replica { .. }), "{e:?}");
    assert!(text.contains("cannot reach the server"), "{text}");
    assert!(text.contains("after 3 retries"), "bounded retries: {text}");
    assert!(
        e.hint().is_some_and(|h| h.contains("endpoint")),
        "{:?}",
        e.hint()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_are_a_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let addr = serve(root.path()).await;
    // Without keys object_store asks the instance metadata service: here one that is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let env = vec![("AWS_METADATA_ENDPOINT".to_owned(), format!("http://{dead}"))];
    let replica = Replica::from(S3Replica::parse_with_env(&url(addr, "db"), env).expect("replica"));
    let e = replica.list(0).expect_err("no credentials");
    assert!(e.to_string().contains("cannot get credentials"), "{e}");
    assert!(
        e.hint().is_some_and(|h| h.contains("AWS_ACCESS_KEY_ID")),
        "{:?}",
        e.hint()
    );
}

#[test]
fn a_bad_url_is_a_usage_error() {
    for bad in [
        "s3://",
        "s3:///db",
        "s3://bkt/a//b",
        "s3://bkt/db?unknown=1",
    ] {
        assert!(
            matches!(
                Replica::parse(bad),
                Err(Error::Invalid {
                    code: "replica_url",
                    ..
                })
            ),
            "{bad}"
        );
    }
}

fn insert(conn: &rusqlite::Connection, from: u32, n: u32) {
    for i in from..from + n {
        conn.execute(
            "INSERT INTO fills (id, qty) VALUES (?1, printf('%d.%03d', ?1, ?1 % 1000))",
            [i],
        )
        .expect("insert");
    }
}

/// A database in WAL mode that only the test checkpoints, with 100 rows in `fills`.
fn wal_database(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE fills (id INTEGER PRIMARY KEY, qty TEXT);",
    )
    .expect("schema");
    insert(&conn, 0, 100);
    conn
}

/// Restores `target` from `replica` into a new file in `dir` and returns its rows.
fn restore_rows(replica: &Replica, target: Target, dir: &Path, name: &str) -> Vec<(i64, String)> {
    let plan = restore::plan(replica, target).unwrap_or_else(|e| panic!("{name}: plan: {e}"));
    let out = dir.join(name);
    restore::apply(replica, &plan, &out).unwrap_or_else(|e| panic!("{name}: apply: {e}"));
    // Every file streamed to disk and read from there in pieces: the same rows.
    let streamed = dir.join(format!("{name}.streamed"));
    let options = restore::Options {
        limits: tradevault::config::RestoreConfig {
            memory_file_bytes_max: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    restore::apply_with(replica, &plan, &streamed, &options)
        .unwrap_or_else(|e| panic!("{name}: apply from disk: {e}"));
    assert_eq!(rows(&streamed), rows(&out), "{name}: from disk");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ltx"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{name}: downloads left behind: {leftovers:?}"
    );
    rows(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replicator_ships_to_s3_and_restore_rebuilds_every_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let addr = serve(root.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = wal_database(&db);
    // Times long before the uploads: a restore to a time can only work from the header times
    // in the metadata, never from LastModified.
    let t0 = 1_700_000_000_000;
    let mut r = Replicator::new(&db, replica(addr, "bot")).expect("replicator");
    let mut states = Vec::new();
    assert!(matches!(
        r.sync(t0).expect("sync"),
        Synced::Snapshot { txid: 1, .. }
    ));
    states.push(rows(&db));
    insert(&conn, 100, 5);
    assert!(matches!(
        r.sync(t0 + 1_000).expect("sync"),
        Synced::Transactions {
            txid: 2,
            transactions: 5,
            ..
        }
    ));
    states.push(rows(&db));
    insert(&conn, 105, 3);
    assert!(matches!(
        r.sync(t0 + 2_000).expect("sync"),
        Synced::Transactions { txid: 3, .. }
    ));
    states.push(rows(&db));
    conn.execute_batch("PRAGMA wal_checkpoint(RESTART)")
        .expect("checkpoint");
    insert(&conn, 108, 4);
    assert!(matches!(
        r.sync(t0 + 3_000).expect("sync"),
        Synced::Snapshot { txid: 4, .. }
    ));
    states.push(rows(&db));
    insert(&conn, 112, 2);
    assert!(matches!(
        r.sync(t0 + 4_000).expect("sync"),
        Synced::Transactions { txid: 5, .. }
    ));
    states.push(rows(&db));
    assert!(
        root.path()
            .join(BUCKET)
            .join("bot/0009/0000000000000001-0000000000000004.ltx")
            .is_file()
    );

    // Another process: knows nothing of what was written, and continues after TXID 5.
    let other = replica(addr, "bot");
    assert_eq!(
        Replicator::new(&db, other.clone()).expect("again").txid(),
        5
    );
    let out = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        restore_rows(&other, Target::Latest, out.path(), "latest.db"),
        rows(&db)
    );
    for (i, want) in states.iter().enumerate() {
        let txid = i as u64 + 1;
        let got = restore_rows(
            &other,
            Target::Txid(txid),
            out.path(),
            &format!("txid-{txid}.db"),
        );
        assert_eq!(&got, want, "the state at txid {txid}");
    }
    let plan = restore::plan(&other, Target::Time(t0 + 1_500)).expect("plan to a time");
    assert_eq!(
        (plan.txid, plan.point_ms),
        (2, t0 + 1_001),
        "header times, not upload times"
    );
    assert_eq!(
        restore_rows(&other, Target::Time(t0 + 2_001), out.path(), "t2.db"),
        states[2]
    );
}

/// The litestream binary, skipped (or failed in CI) as in the file replica's interop tests.
fn litestream() -> Option<PathBuf> {
    crate::litestream::litestream()
}

/// A `litestream` command talking to the test server: credentials in its environment, and no
/// AWS_CA_BUNDLE (the Go SDK fails on a plain-HTTP endpoint when one is set).
fn litestream_command(bin: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    cmd
}

/// Litestream's URL for the replica at `path`: its parameter names.
fn litestream_url(server: &S3Server, path: &str) -> String {
    format!(
        "s3://{BUCKET}/{path}?endpoint=http://{}&region=us-east-1&forcePathStyle=true",
        server.addr
    )
}

/// Milliseconds since the epoch, strictly after `after`.
fn now_after(after: i64) -> i64 {
    loop {
        let now = jiff::Timestamp::now().as_millisecond();
        if now > after {
            return now;
        }
        std::thread::yield_now();
    }
}

#[test]
fn litestream_restores_our_s3_replica_latest_by_txid_and_at_a_time() {
    let Some(bin) = litestream() else { return };
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = wal_database(&db);
    let replica = replica(server.addr, "bot");
    let mut r = Replicator::new(&db, replica).expect("replicator");
    // Litestream checks a time against the files' LastModified: stamp them when uploaded.
    let mut states = Vec::new();
    let mut times: Vec<i64> = Vec::new();
    for (n, gap_ms) in [(0, 0), (5, 0), (3, 100)] {
        insert(&conn, 200 + n * 10, n);
        let t = now_after(times.last().map_or(0, |t| t + gap_ms));
        r.sync(t).expect("sync");
        states.push(rows(&db));
        times.push(t);
    }
    let run = |args: &[&str], out: &Path| {
        let result = litestream_command(&bin)
            .arg("restore")
            .args(args)
            .arg("-o")
            .arg(out)
            .arg(litestream_url(&server, "bot"))
            .output()
            .expect("run litestream restore");
        assert!(
            result.status.success(),
            "litestream restore {args:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        rows(out)
    };
    assert_eq!(run(&[], &dir.path().join("latest.db")), rows(&db));
    assert_eq!(
        run(&["-txid", "0000000000000002"], &dir.path().join("t2.db")),
        states[1]
    );
    // Litestream takes the files whose metadata time is strictly before the time, after checking
    // that the time is within the files' LastModified (file mtimes here, which lag the clock by up
    // to a tick): the third file's time, or its LastModified if earlier, gives the second state.
    let mtime = |k: u64| {
        let key = format!("bot/0000/{}", ltx::file_name(k, k));
        let modified = std::fs::metadata(server.object(&key))
            .and_then(|m| m.modified())
            .expect("mtime");
        jiff::Timestamp::try_from(modified)
            .expect("time")
            .as_millisecond()
    };
    let at = jiff::Timestamp::from_millisecond(times[2].min(mtime(3)))
        .expect("time")
        .to_string();
    assert_eq!(
        run(&["-timestamp", &at], &dir.path().join("at.db")),
        states[1]
    );
}

#[test]
fn tradevault_restores_what_litestream_replicated_to_s3() {
    let Some(bin) = litestream() else { return };
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = wal_database(&db);
    let config = dir.path().join("litestream.yml");
    std::fs::write(
        &config,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      type: s3\n      bucket: {BUCKET}\n      path: app\n      endpoint: http://{}\n      region: us-east-1\n      force-path-style: true\n      sync-interval: 100ms\n",
            db.display(),
            server.addr
        ),
    )
    .expect("config");
    let log = dir.path().join("litestream.log");
    let mut child = litestream_command(&bin)
        .args(["replicate", "-config"])
        .arg(&config)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.path().join("litestream.err")).expect("log"))
        .spawn()
        .expect("start litestream replicate");
    let replica = replica(server.addr, "app");
    let out = tempfile::tempdir().expect("tempdir");
    // Write while it runs; after each write, wait (bounded) until the replica restores to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut attempt = 0;
    for n in [0, 7, 11] {
        insert(&conn, 1_000 + n * 100, n);
        let want = rows(&db);
        loop {
            attempt += 1;
            let got = restore::plan(&replica, Target::Latest).ok().map(|_| {
                restore_rows(
                    &replica,
                    Target::Latest,
                    out.path(),
                    &format!("try-{attempt}.db"),
                )
            });
            if got.as_ref() == Some(&want) {
                break;
            }
            if std::time::Instant::now() > deadline || child.try_wait().expect("status").is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "litestream's replica never reached {} rows (last restore: {:?} rows); its log:\n{}{}",
                    want.len(),
                    got.map(|g| g.len()),
                    std::fs::read_to_string(&log).unwrap_or_default(),
                    std::fs::read_to_string(dir.path().join("litestream.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    child.kill().expect("stop litestream");
    child.wait().expect("reap litestream");
    // What Litestream wrote: its layout and its metadata, read back as header times.
    let level0 = replica.list(0).expect("list");
    assert!(!level0.is_empty());
    assert!(
        server.object("app/0000").is_dir(),
        "level directories are %04x"
    );
    for f in &level0 {
        let key = format!("app/0000/{}", ltx::file_name(f.min_txid, f.max_txid));
        let stamp = server
            .timestamp_metadata(&key)
            .expect("litestream stamps its files");
        let stamped: jiff::Timestamp = stamp.parse().expect("RFC 3339");
        assert_eq!(f.created_at_ms, stamped.as_millisecond(), "{key}: {stamp}");
    }
}

/// The part size the multipart tests use: S3's smallest (s3s-fs refuses smaller parts too).
const PART_BYTES: u64 = 5 << 20;

/// A database in WAL mode holding about `mib` MiB of random (incompressible) bytes, so that its
/// snapshot is larger than one part even after LZ4.
fn incompressible_database(path: &Path, mib: u32) -> rusqlite::Connection {
    let conn = wal_database(path);
    conn.execute_batch("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);")
        .expect("blobs");
    for i in 0..mib * 8 {
        conn.execute(
            "INSERT INTO blobs (id, data) VALUES (?1, randomblob(131072))",
            [i],
        )
        .expect("blob");
    }
    conn
}

/// Every blob's id and content hash, to compare a restore with the source.
fn blob_sums(db: &Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, hex(substr(data, 1, 16)) || length(data) FROM blobs ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// The ETag of the object `key`, as the server lists it after a HEAD.
fn e_tag(server: &S3Server, key: &str) -> String {
    let runtime = server.runtime.as_ref().expect("running");
    runtime
        .block_on(raw_store(server.addr).head(&key.into()))
        .expect("head")
        .e_tag
        .unwrap_or_default()
}

#[test]
fn a_snapshot_larger_than_a_part_goes_up_in_parts_and_restores() {
    use tradevault::replica::FileReplica;
    use tradevault::replicate::{DatabaseSpec, Engine, ReplicaSpec, Retention, Source};
    let server = S3Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = incompressible_database(&db, 12);
    let s3 = |path: &str| {
        Replica::from(
            S3Replica::parse_with_env(&url(server.addr, path), env_with(SECRET_ACCESS_KEY))
                .expect("replica")
                .with_part_bytes(PART_BYTES),
        )
    };

    // The engine's uploader copies its local log's snapshot to S3 from the file, in parts.
    let engine = Engine::start(
        vec![DatabaseSpec {
            name: "bot".into(),
            source: Source::External(db.clone()),
            replicas: vec![ReplicaSpec {
                name: "s3".into(),
                replica: s3("engine"),
                sync_interval: Duration::ZERO,
                retention: Retention::default(),
            }],
            poll_interval: Duration::from_millis(2),
            checkpoint_wal_bytes: 64 << 20,
        }],
        Arc::new(tradevault::clock::SystemClock),
    )
    .expect("start");
    engine.wait_synced(Duration::from_secs(60)).expect("synced");
    engine.stop();
    let local = FileReplica::cache(dir.path().join(".bot.db-tradevault"));
    let snapshot = &local.list(0).expect("local log")[0];
    assert_eq!(snapshot.min_txid, 1);
    assert!(
        snapshot.size > 2 * PART_BYTES,
        "the snapshot ({} bytes) spans three parts",
        snapshot.size
    );
    let key = format!("engine/0000/{}", ltx::file_name(1, snapshot.max_txid));
    assert!(
        e_tag(&server, &key).ends_with("-3\""),
        "a multipart upload of three parts, not {}",
        e_tag(&server, &key)
    );
    assert!(
        server.timestamp_metadata(&key).is_some(),
        "a multipart upload keeps the header time"
    );
    let out = tempfile::tempdir().expect("tempdir");
    let restored = out.path().join("engine.db");
    let replica = s3("engine");
    let plan = restore::plan(&replica, Target::Latest).expect("plan");
    restore::apply(&replica, &plan, &restored).expect("apply");
    assert_eq!(blob_sums(&restored), blob_sums(&db));

    // The replicator alone streams its snapshot through a temporary file to S3, and continues
    // from the WAL where the snapshot ended.
    let mut r = Replicator::new(&db, s3("alone")).expect("replicator");
    assert!(matches!(
        r.sync(1_700_000_000_000).expect("sync"),
        Synced::Snapshot { txid: 1, .. }
    ));
    insert(&conn, 100, 3);
    assert!(matches!(
        r.sync(1_700_000_001_000).expect("sync"),
        Synced::Transactions {
            txid: 2,
            transactions: 3,
            ..
        }
    ));
    assert!(e_tag(&server, &format!("alone/0000/{}", ltx::file_name(1, 1))).ends_with("-3\""));
    let replica = s3("alone");
    let restored = out.path().join("alone.db");
    let plan = restore::plan(&replica, Target::Latest).expect("plan");
    restore::apply(&replica, &plan, &restored).expect("apply");
    assert_eq!(blob_sums(&restored), blob_sums(&db));
    assert_eq!(rows(&restored), rows(&db));
}

/// Credentials from a config entry reach the real server with no AWS_* variable at all, and win
/// over the environment's: a wrong secret in the config fails even with the right one in the
/// environment. Nothing printed shows them.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_from_the_config_win_over_the_environment() {
    use tradevault::config::{S3Settings, Secret};
    let root = tempfile::tempdir().expect("tempdir");
    let addr = serve(root.path()).await;
    let settings = |secret: &str| S3Settings {
        access_key_id: Some(Secret::new(ACCESS_KEY_ID)),
        secret_access_key: Some(Secret::new(secret)),
        session_token: None,
        region: Some("us-east-1".into()),
    };
    let from_config = Replica::from(
        S3Replica::parse_with_settings(&url(addr, "db"), &settings(SECRET_ACCESS_KEY), Vec::new())
            .expect("replica"),
    );
    let file = from_config
        .put(0, &ltx_file(1, 1, 0, 7), None)
        .expect("put");
    assert_eq!(from_config.list(0).expect("list"), vec![file]);

    // The environment has the right secret and a session token of another identity; the
    // config's keys replace both.
    let mut env = env_with(SECRET_ACCESS_KEY);
    env.push(("AWS_SESSION_TOKEN".into(), "token-of-someone-else".into()));
    let with_token = Replica::from(
        S3Replica::parse_with_settings(&url(addr, "db"), &settings(SECRET_ACCESS_KEY), env.clone())
            .expect("replica"),
    );
    assert_eq!(with_token.list(0).expect("list").len(), 1);
    let wrong = "wrong-secret-in-the-config";
    let wrong_settings = settings(wrong);
    let refused = Replica::from(
        S3Replica::parse_with_settings(&url(addr, "db"), &wrong_settings, env).expect("replica"),
    );
    let e = refused.list(0).expect_err("the config's secret is used");
    let text = e.to_string();
    assert!(text.contains("403 SignatureDoesNotMatch"), "{text}");
    for shown in [
        text,
        format!("{e:?}"),
        format!("{refused:?}"),
        format!("{wrong_settings:?}"),
    ] {
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains(ACCESS_KEY_ID), "{shown}");
    }
}

/// On an object store the minute's maintenance pass builds levels 2 and 3 from the listing it
/// makes anyway (and no level 1: an S3 replica's points are a second or more apart already): a
/// file per 10 seconds of points once they have passed, which the latest state takes.
#[tokio::test(flavor = "multi_thread")]
async fn the_engine_merges_an_s3_replicas_points_into_coarser_files() {
    use crate::engine::eventually;
    use tradevault::clock::Clock;
    use tradevault::replicate::{DatabaseSpec, Engine, ReplicaSpec, Retention, Source};
    let root = tempfile::tempdir().expect("tempdir");
    let addr = serve(root.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bot.db");
    let conn = crate::fills_db(&db);
    let (clock, at) = crate::manual_clock(1_795_000_020);
    let s3 = replica(addr, "bot");
    let engine = Engine::start(
        vec![DatabaseSpec {
            name: "bot".into(),
            source: Source::External(db.clone()),
            replicas: vec![ReplicaSpec {
                name: "s3".into(),
                replica: s3.clone(),
                sync_interval: Duration::from_millis(1_000),
                retention: Retention::default(),
            }],
            poll_interval: Duration::from_millis(2),
            checkpoint_wal_bytes: 16 << 20,
        }],
        clock.clone() as Arc<dyn Clock>,
    )
    .expect("start");
    // Four points in the first 10 seconds.
    for i in 0..4i64 {
        clock.set(at(i * 2_000));
        let want = engine.status()[0].txid + 1;
        conn.execute("INSERT INTO fills (id, qty) VALUES (?1, '1.5')", [i])
            .expect("insert");
        eventually("the commit on the replica", || {
            let s = &engine.status()[0];
            s.txid >= want && s.replicas[0].txid == Some(s.txid)
        });
    }
    let points = s3.list(0).expect("list");
    assert!(points.len() >= 4, "{points:?}");
    clock.set(at(2 * 60_000));
    eventually("a 10 s file", || !s3.list(2).expect("list").is_empty());
    assert!(s3.list(1).expect("list").is_empty(), "no level 1 on S3");
    let plan = restore::plan(&s3, Target::Latest).expect("plan");
    assert!(plan.files.iter().any(|f| f.0 == 2), "{plan:?}");
    assert!(plan.files.len() < points.len(), "{plan:?}");
    let out = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        restore_rows(&s3, Target::Latest, out.path(), "latest.db"),
        rows(&db)
    );
    // Every point is still there to restore.
    for p in points {
        let plan = restore::plan(&s3, Target::Txid(p.max_txid)).expect("a point");
        assert_eq!(plan.txid, p.max_txid);
    }
    engine.stop();
}
