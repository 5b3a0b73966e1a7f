//! One file per subcommand, and what they share: loading the config and starting logs.

pub mod backup;
pub mod check;
pub mod drill;
pub mod init;
pub mod jobs;
pub mod replicate;
pub mod restore;
pub mod serve;
pub mod stats;
pub mod status;

use std::path::{Path, PathBuf};

use anyhow::Context;
use tradevault::Config;
use tradevault::config::ReplicaConfig;

use crate::UsageError;

/// Loads the config (defaults, file, environment), then applies `--data-dir`.
pub fn load_config(file: Option<&Path>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = Config::load(file, std::env::vars())?;
    if let Some(dir) = data_dir {
        config.store.data_dir = dir;
    }
    Ok(config)
}

/// Starts logging on stderr per `[log]`; `RUST_LOG` wins when set.
pub fn start_logging(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => {
            EnvFilter::try_new(f).context("RUST_LOG is not a valid filter")?
        }
        _ => EnvFilter::try_new(&config.log.level)
            .map_err(|e| UsageError(format!("invalid config: key `log.level`: {e}")))?,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("start logging: {e}"))
}

/// Prints a value as pretty JSON on stdout (a reader that stopped early, `| head`, is not an
/// error of ours: see [`crate::print_out`]).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encode json")?;
    outln!("{text}");
    Ok(())
}

/// A failure as `--json` prints it on stdout, in the shape of the HTTP API's errors:
/// `{"error": {"code", "message", "hint"}}` (the same message and hint go to stderr too). The
/// code is the library's where it has one (`restore_impossible`, `not_exact`, `output_exists`,
/// a backup's), else one per kind of failure.
pub fn error_json(err: &anyhow::Error) -> serde_json::Value {
    use tradevault::Error as E;
    let lib = err.chain().find_map(|e| e.downcast_ref::<E>());
    let usage = err
        .chain()
        .any(|e| e.downcast_ref::<UsageError>().is_some());
    let code = match lib {
        _ if usage => "usage",
        Some(e) if e.code().is_some() => e.code().unwrap_or("failed"),
        Some(E::Replica { .. }) => "replica_failed",
        Some(E::Ltx { .. }) => "ltx_invalid",
        Some(E::Corrupt { .. } | E::RestoreCorrupt { .. }) => "corrupt",
        Some(E::Io { .. }) => "io_error",
        Some(E::NotFound { .. }) => "not_found",
        Some(E::NotInitialized { .. }) => "no_database",
        Some(E::Locked { .. }) => "locked",
        Some(E::Config { .. } | E::ConfigFile { .. }) => "invalid_config",
        Some(E::Internal { .. }) => "internal",
        _ => "failed",
    };
    serde_json::json!({
        "error": {
            "code": code,
            "message": format!("{err:#}"),
            "hint": lib.and_then(E::hint),
        }
    })
}

/// A table for human output.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_header(header.iter().copied());
    t
}

/// Bytes as a short human figure: `12.4 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The replica of a config entry (its URL, with its S3 settings over the `AWS_*` variables); a
/// malformed URL is a usage error.
pub fn replica_of(r: &ReplicaConfig) -> anyhow::Result<tradevault::replica::Replica> {
    tradevault::replica::Replica::parse_with(&r.url, &r.s3())
        .map_err(|e| UsageError(e.to_string()).into())
}

/// The replica `url` (from `--replica`) names: a configured one (the store's or a
/// `[[database]]`'s, by URL or name) with its settings and credentials, else the URL alone.
pub fn configured_replica(config: &Config, url: &str) -> ReplicaConfig {
    config
        .replication
        .replica
        .iter()
        .chain(config.database.iter().flat_map(|d| d.replica.iter()))
        .find(|r| r.url == url || r.name.as_deref() == Some(url))
        .cloned()
        .unwrap_or_else(|| ReplicaConfig::new(url))
}

/// Where a running `serve` records its pid and address: `<data_dir>/serve.json`.
pub fn serve_info_path(config: &Config) -> PathBuf {
    config.store.data_dir.join("serve.json")
}

/// The address of the running `serve` of this data directory, from `serve.json`.
pub fn serve_address(config: &Config) -> Option<std::net::SocketAddr> {
    let bytes = std::fs::read(serve_info_path(config)).ok()?;
    let info: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    info["listen"].as_str()?.parse().ok()
}

/// The other processes that have `db` (or its `-wal`) open, as "pid N (command)" (Linux `/proc`).
pub fn open_by_others(db: &Path) -> Vec<String> {
    let Ok(target) = std::fs::canonicalize(db) else {
        return Vec::new();
    };
    let wal = tradevault::store::wal_path(&target);
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let uses = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|l| l == target || l == wal);
        if uses {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            found.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    found
}

/// Whether another process holds the store of this data directory (a running `serve`).
pub fn store_in_use(config: &Config) -> bool {
    let lock = config
        .store
        .data_dir
        .join(format!("{}.lock", tradevault::store::DATABASE_FILE));
    match std::fs::File::open(&lock) {
        Ok(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// A database a command works on: its name (in catalogs, status and metrics), its file, and its
/// configured replicas.
pub struct Database {
    /// `store`, a `[[database]]` name, or a file's stem.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// Its replicas in the config (URL, settings, credentials).
    pub replicas: Vec<ReplicaConfig>,
    /// Named by `--db PATH` (not configured): its backups are those taken from that file, since
    /// another file may have the same stem.
    pub by_path: bool,
}

/// The database `--db` names: `store` (or no `--db`) is the store in `--data-dir`; then a
/// configured `[[database]]` name; then a SQLite file's path: the store's or a configured
/// database's file is that database, any other is named by its file stem (as its backups are),
/// with a hash of its path added when the stem is `store` or a configured database's name.
pub fn database(config: &Config, db: Option<&str>) -> anyhow::Result<Database> {
    match db {
        None | Some("store") => Ok(Database {
            name: "store".into(),
            path: config.database_path(),
            replicas: config.replication.replica.clone(),
            by_path: false,
        }),
        Some(name) => {
            if let Some(d) = config.database.iter().find(|d| d.name == name) {
                return Ok(Database {
                    name: d.name.clone(),
                    path: d.path.clone(),
                    replicas: d.replica.clone(),
                    by_path: false,
                });
            }
            let path = PathBuf::from(name);
            let here = tradevault::backup::catalog::comparable(&path);
            // The file of a configured database, or the store's, given by its path: that database.
            if here == tradevault::backup::catalog::comparable(&config.database_path()) {
                return database(config, None);
            }
            if let Some(d) = config
                .database
                .iter()
                .find(|d| tradevault::backup::catalog::comparable(&d.path) == here)
            {
                return database(config, Some(&d.name));
            }
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            match stem {
                Some(stem) if path.is_file() || name.contains('/') => Ok(Database {
                    // Never the name of the store or of a configured database: its catalogs
                    // would mix this file's backups with that database's.
                    name: if stem == "store" || config.database.iter().any(|d| d.name == stem) {
                        format!(
                            "{stem}-{:08x}",
                            fnv1a(here.to_string_lossy().as_bytes()) as u32
                        )
                    } else {
                        stem
                    },
                    path,
                    replicas: Vec::new(),
                    by_path: true,
                }),
                _ => Err(UsageError(format!(
                    "--db {name:?} is neither \"store\", a configured [[database]] name, nor a file"
                ))
                .into()),
            }
        }
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across builds, for names that last.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The backup targets `--target` names (a configured name or a URL), or every configured one.
pub fn backup_targets(
    config: &Config,
    target: Option<&str>,
) -> anyhow::Result<Vec<tradevault::backup::Target>> {
    use tradevault::backup::Target;
    match target {
        Some(t) => Ok(vec![Target::resolve(&config.backup, t)?]),
        None if config.backup.target.is_empty() => Err(tradevault::Error::backup(
            "no_target",
            "no backup target: pass --target NAME|URL or configure [[backup.target]]",
            Some("e.g. --target file:///var/backups/tradevault"),
        )
        .into()),
        None => config
            .backup
            .target
            .iter()
            .map(|t| Target::from_config(t).map_err(Into::into))
            .collect(),
    }
}

/// Mirrors the targets' catalogs into the store, when the store exists and no server holds it
/// (a running `serve` keeps its own mirror).
pub fn mirror_catalogs(config: &Config, targets: &[tradevault::backup::Target]) {
    if !config.database_path().is_file() {
        return;
    }
    let clock = std::sync::Arc::new(tradevault::clock::SystemClock);
    let store = match tradevault::Store::open(&config.store, clock) {
        Ok(s) => s,
        Err(tradevault::Error::Locked { .. }) => {
            ask_server_to_mirror(config, targets);
            return;
        }
        Err(e) => {
            eprintln!("note: backup catalog not mirrored into the store: {e}");
            return;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("note: backup catalog not mirrored into the store: {e}");
            return;
        }
    };
    for target in targets {
        let result = tradevault::backup::Catalog::load(target).and_then(|c| {
            runtime.block_on(store.mirror_backups(target.name.clone(), target.describe(), c))
        });
        if let Err(e) = result {
            eprintln!(
                "note: backup catalog of {} not mirrored into the store: {e}",
                target.name
            );
        }
    }
    store.close();
}

/// The store is the running server's: asks it to mirror the configured targets (its `mirror`
/// job), and says which of `targets` it cannot (given by URL only).
fn ask_server_to_mirror(config: &Config, targets: &[tradevault::backup::Target]) {
    let configured =
        |t: &tradevault::backup::Target| config.backup.target.iter().any(|c| c.name == t.name);
    let asked = serve_address(config).and_then(|addr| {
        let mut client =
            tradevault::http::client::Client::new(addr, std::time::Duration::from_secs(10));
        // A mirror already running (409) may have read the catalogs before this command changed
        // them: ask again once it is done, for a few seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let answer = client.post("/v1/jobs/mirror/run", b"").ok()?;
            match answer.status {
                202 => return Some(answer),
                409 if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => return None,
            }
        }
    });
    if asked.is_none() {
        eprintln!(
            "note: the store is in use by 'tradevault serve', which did not take the request to update backup_metadata; its next backup job will"
        );
    }
    for t in targets.iter().filter(|t| !configured(t)) {
        eprintln!(
            "note: target {} is not in the config: the running server does not mirror it into backup_metadata",
            t.name
        );
    }
}

/// The per-user directory where processes that replicate a database register it, for `status`:
/// `$XDG_RUNTIME_DIR/tradevault` (a tmpfs of the user's, emptied at reboot), or, without it,
/// `<temp dir>/tradevault-<uid>`. `None` when there is no usable one.
pub fn registry_dir() -> Option<PathBuf> {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => Some(Path::new(&dir).join("tradevault")),
        _ => Some(std::env::temp_dir().join(format!("tradevault-{}", user_id()?))),
    }
}

/// This process's user id (Linux: the owner of `/proc/self`).
fn user_id() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Whether `dir` is this user's alone (its owner, not writable by others): a registry in a shared
/// temporary directory could otherwise be planted by another user.
fn private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && Some(m.uid()) == user_id() && m.mode() & 0o022 == 0)
}

/// The registrations of processes replicating databases, from [`registry_dir`].
pub fn registrations() -> Vec<(PathBuf, tradevault::replicate::status::Registration)> {
    match registry_dir() {
        Some(dir) if private_dir(&dir) => tradevault::replicate::status::Registration::list(&dir),
        _ => Vec::new(),
    }
}

/// Whether process `pid` is alive, as far as `/proc` says (assumed alive without `/proc`).
pub fn process_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

/// A database file's absolute path, symlinks resolved when it exists.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    })
}

/// This process's registrations of the databases it replicates, removed when dropped (a clean
/// stop); a registration another process has taken over since is left alone.
pub struct Registered(Vec<PathBuf>);

impl Registered {
    /// Registers each (name, file). Failing to is not an error: `status` then needs the path.
    pub fn new<'a>(databases: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Registered {
        use tradevault::replicate::status::Registration;
        let mut files = Vec::new();
        let Some(dir) = registry_dir() else {
            return Registered(files);
        };
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
        };
        if let Err(e) = made {
            tracing::debug!(dir = %dir.display(), error = %e, "no registry for tradevault status");
            return Registered(files);
        }
        if !private_dir(&dir) {
            tracing::warn!(dir = %dir.display(), "the registry directory is not this user's alone; not registering (tradevault status needs the database's path)");
            return Registered(files);
        }
        for (name, path) in databases {
            let registration = Registration {
                database: name.to_owned(),
                path: absolute(path),
                pid: std::process::id(),
                pid_ns: tradevault::replicate::status::pid_namespace(),
            };
            match registration.write(&dir) {
                Ok(file) => files.push(file),
                Err(e) => tracing::debug!(error = %e, "could not register for tradevault status"),
            }
        }
        Registered(files)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for file in &self.0 {
            let ours = std::fs::read(file)
                .ok()
                .and_then(|b| {
                    serde_json::from_slice::<tradevault::replicate::status::Registration>(&b).ok()
                })
                .is_some_and(|r| r.pid == std::process::id());
            if ours {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}
