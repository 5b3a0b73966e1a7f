//! Test harness: start the real binary on a free port, talk to it, kill it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tradevault::http::client::Client;

/// Path of the built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tradevault")
}

/// A `tradevault` command with a clean environment for config variables.
pub fn command() -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("TRADEVAULT_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info");
    // No registry of running sidecars (`tradevault status`) outside a test's own directory: a
    // path under a file cannot be created, so processes do not register unless a test says where.
    c.env("XDG_RUNTIME_DIR", "/dev/null/tradevault-tests");
    c
}

/// A running `tradevault serve`.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server on `dir` with extra environment variables, and waits until it listens.
    pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::try_start(command(), dir, env)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts a server on `dir`.
    pub fn start(dir: &Path) -> Server {
        Server::start_with(dir, &[])
    }

    /// Starts a server on `dir` with extra `serve` arguments.
    pub fn start_args(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Server {
        Server::try_start_args(command(), dir, env, args)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts `cmd` as a server; `Err` with its stderr if it exits before listening.
    pub fn try_start(cmd: Command, dir: &Path, env: &[(&str, &str)]) -> Result<Server, String> {
        Server::try_start_args(cmd, dir, env, &[])
    }

    /// [`Server::try_start`] with extra `serve` arguments.
    pub fn try_start_args(
        mut cmd: Command,
        dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Server, String> {
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining after the test stops listening, so the server never blocks on stderr.
                let _ = tx.send(line);
            }
        });
        let mut seen = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                    {
                        let addr = addr
                            .parse()
                            .map_err(|e| format!("bad addr in {line:?}: {e}"))?;
                        return Ok(Server { child, addr });
                    }
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().map_err(|e| e.to_string())?;
                    return Err(format!(
                        "exited ({status}) before listening; stderr:\n{seen}"
                    ));
                }
            }
        }
    }

    /// A client for this server.
    pub fn client(&self) -> Api {
        Api(Client::new(self.addr, Duration::from_secs(30)))
    }

    /// The server's process id (the benchmark reads its memory).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// JSON helpers over the client.
pub struct Api(pub Client);

impl Api {
    /// Sends a request and returns status and JSON body (`Value::Null` when the body is not JSON).
    pub fn call(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = self
            .0
            .request(method, path, body.map(str::as_bytes))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.status, r.json().unwrap_or(Value::Null))
    }

    /// GET.
    pub fn get(&mut self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    /// POST with a JSON body.
    pub fn post(&mut self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(&body.to_string()))
    }

    /// Row counts per table, from /v1/stats.
    pub fn counts(&mut self) -> Value {
        let (status, stats) = self.get("/v1/stats");
        assert_eq!(status, 200, "{stats}");
        stats["tables"].clone()
    }
}

/// A small deterministic random generator (xorshift64*), seeded from the environment or the clock.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded by `TRADEVAULT_TEST_SEED` or the time; prints the seed so a failure can be replayed.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("TRADEVAULT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        eprintln!("{test}: SEED={seed} (set TRADEVAULT_TEST_SEED to replay)");
        Rng(seed)
    }

    /// Next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Runs `cmd` to its end and returns its output, failing the test with its stderr unless it
/// succeeded.
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run the binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Opens the store's database directly (the server must be stopped or killed). Closing it never
/// checkpoints, so a WAL left by a crash is still there for the next server to recover.
pub fn open_db(dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.join("tradevault.db")).expect("open database");
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .expect("no checkpoint on close");
    conn
}

/// Waits (bounded) until `f` holds, polling.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A metric's value from a `/metrics` text, 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The test S3 server's only credentials.
pub const S3_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// The secret of [`S3_ACCESS_KEY_ID`].
pub const S3_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const S3_BUCKET: &str = "tradevault-test";

/// A real S3 server (s3s-fs: a bucket is a directory, SigV4 verified) on 127.0.0.1, on a tokio
/// runtime of its own inside the test process, with one empty bucket.
pub struct S3Server {
    addr: SocketAddr,
    root: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl S3Server {
    /// Starts it on a free port.
    pub fn start() -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(S3_BUCKET)).expect("bucket directory");
        // s3s_fs::Error is not a std error: format it.
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap_or_else(|e| panic!("s3s-fs: {e:?}"));
        let mut service = s3s::service::S3ServiceBuilder::new(fs);
        service.set_auth(s3s::auth::SimpleAuth::from_single(
            S3_ACCESS_KEY_ID,
            S3_SECRET_ACCESS_KEY,
        ));
        let service = service.build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        runtime.spawn(async move {
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
        S3Server {
            addr,
            root,
            runtime: Some(runtime),
        }
    }

    /// The URL of a replica at `path` in its bucket.
    pub fn url(&self, path: &str) -> String {
        format!("s3://{S3_BUCKET}/{path}?endpoint=http://{}", self.addr)
    }

    /// Where it keeps the object `key`.
    pub fn object(&self, key: &str) -> std::path::PathBuf {
        self.root.path().join(S3_BUCKET).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A `tradevault` command with `secret` as AWS_SECRET_ACCESS_KEY for the test server, and no
/// other AWS settings from the machine.
pub fn s3_command(secret: &str) -> Command {
    let mut c = command();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1");
    c
}
