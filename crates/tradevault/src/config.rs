//! Typed configuration: defaults, the TOML file, `TRADEVAULT_<SECTION>_<KEY>` environment
//! overrides, and `validate`. Every limit has its unit in its name and a default here.
//!
//! Precedence, lowest first: defaults, the file, the environment, command-line flags (applied by
//! the binary after loading). Errors name the key and where its value came from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "TRADEVAULT_";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// The trading store.
    pub store: StoreConfig,
    /// Limits of the HTTP API.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
    /// `tradevault restore`.
    pub restore: RestoreConfig,
    /// Replication of the store (`[replication]`, `[[replication.replica]]`).
    pub replication: ReplicationConfig,
    /// Other SQLite databases to replicate and back up (`[[database]]`, each with its
    /// `[[database.replica]]` entries, if any: one with none is backed up but not replicated).
    pub database: Vec<DatabaseConfig>,
    /// The schedules of `serve`'s jobs (`[jobs]`).
    pub jobs: JobsConfig,
    /// Backups (`[backup]`, `[[backup.target]]`).
    pub backup: BackupConfig,
}

/// `[jobs]`: cron expressions (UTC; 5 fields, or 6 with seconds first) for the jobs `serve` runs;
/// an empty string leaves a job to be run only when asked (`POST /v1/jobs/NAME/run`). A job also
/// needs what it works on (backups need a target, drills a replica or a backup).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Backups of the store and every configured database (hourly).
    pub backup: String,
    /// Pruning of backups by each target's retention (daily).
    pub prune: String,
    /// Verification of backups (daily).
    pub verify: String,
    /// Restore drills (weekly).
    pub drill: String,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            backup: "0 * * * *".into(),
            prune: "15 3 * * *".into(),
            verify: "30 3 * * *".into(),
            drill: "0 4 * * 0".into(),
        }
    }
}

/// `[backup]`: how backups are compressed and encrypted, and where they go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// `zstd` (the default) or `gzip`.
    pub compression: String,
    /// zstd level (1 to 19; 3 is zstd's default); gzip uses level 6, as `gzip` does.
    pub zstd_level: u64,
    /// age public keys (`age1...`): when any is given, every segment is encrypted to all of them.
    pub recipients: Vec<String>,
    /// Every `full_every`-th backup of a database on a target is full; the others are incremental
    /// (only the pages changed since the previous backup). 1 makes every backup full.
    pub full_every: u64,
    /// Plain bytes of pages compressed together as one segment.
    pub segment_bytes: u64,
    /// Segments are written in pack objects of about this many bytes.
    pub pack_bytes: u64,
    /// Threads compressing (and encrypting) segments.
    pub threads: u64,
    /// Where backups go.
    pub target: Vec<BackupTargetConfig>,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            compression: "zstd".into(),
            zstd_level: 3,
            recipients: Vec::new(),
            full_every: 24,
            segment_bytes: 4 << 20,
            pack_bytes: 16 << 20,
            threads: 2,
            target: Vec::new(),
        }
    }
}

impl JobsConfig {
    /// (name, schedule) of each job; an empty schedule means "only when asked".
    pub fn schedules(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("backup", self.backup.trim()),
            ("prune", self.prune.trim()),
            ("verify", self.verify.trim()),
            ("drill", self.drill.trim()),
        ]
    }
}

/// `[[backup.target]]`: a place that receives backups, and its retention rules. With no rule at
/// all, prune keeps everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupTargetConfig {
    /// Its name in `--target` and listings.
    pub name: String,
    /// `file:///absolute/path` or `s3://bucket/path?endpoint=...`.
    pub url: String,
    /// Keep the newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u64>,
    /// Keep every backup newer than this (`36h`, `7d`, `4w`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
    /// Keep the newest backup of each of the last N hours that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u64>,
    /// Keep the newest backup of each of the last N days (UTC) that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u64>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u64>,
    /// Keep the newest backup of each of the last N months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u64>,
    /// S3 access key id (an `s3://` target only); see [`S3Settings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// S3 secret access key, set together with `access_key_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// S3 session token of temporary credentials, with the two keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
    /// S3 region (the URL's `?region=` wins over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl BackupTargetConfig {
    /// A target with no retention rule and no S3 settings.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> BackupTargetConfig {
        BackupTargetConfig {
            name: name.into(),
            url: url.into(),
            keep_last: None,
            keep_within: None,
            keep_hourly: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            region: None,
        }
    }

    /// Its S3 settings from the config.
    pub fn s3(&self) -> S3Settings {
        S3Settings {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            region: self.region.clone(),
        }
    }
}

/// A credential from the config. Its `Debug` form is `<redacted>`, so a config, replica or target
/// printed with `{:?}` (a log line, a panic, an error) never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The credential itself, for the S3 client that signs with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The S3 settings a replica or a backup target takes from the config. Keys given here replace
/// the `AWS_*` credentials of the environment as a whole (an `AWS_SESSION_TOKEN` of another
/// identity is not mixed in); the region wins over `AWS_REGION`, and the URL's `?region=` over it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Access key id.
    pub access_key_id: Option<Secret>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
    /// Region of the bucket.
    pub region: Option<String>,
}

impl S3Settings {
    /// Checks that they make sense for `url`: keys only for `s3://`, both keys or neither, a
    /// token only with them, nothing empty. Returns the offending key and why (never a value).
    pub fn check(&self, url: &str) -> std::result::Result<(), (&'static str, String)> {
        let fields = [
            (
                "access_key_id",
                self.access_key_id.as_ref().map(Secret::expose),
            ),
            (
                "secret_access_key",
                self.secret_access_key.as_ref().map(Secret::expose),
            ),
            (
                "session_token",
                self.session_token.as_ref().map(Secret::expose),
            ),
            ("region", self.region.as_deref()),
        ];
        for (key, value) in fields {
            if value.is_some() && !url.starts_with("s3://") {
                return Err((key, "only an s3:// URL takes S3 settings".into()));
            }
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err((key, "must not be empty".into()));
            }
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => Err(("secret_access_key", "must be set with access_key_id".into())),
            (None, Some(_)) => Err(("access_key_id", "must be set with secret_access_key".into())),
            (None, None) if self.session_token.is_some() => Err((
                "session_token",
                "needs access_key_id and secret_access_key".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Parses a duration such as `90m`, `36h`, `7d` or `4w` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let n: i64 = text[..text.len() - unit.len_utf8()].trim().parse().ok()?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms).filter(|v| *v > 0)
}

/// `[replication]`: how the store is replicated, and its replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// `async` (acknowledge once durable locally) or `sync` (once durable on `sync_replicas`).
    pub mode: String,
    /// In `sync` mode, how many replicas must hold a write before it is acknowledged.
    pub sync_replicas: u64,
    /// In `sync` mode, how long a write waits for its replicas before it is answered 503.
    pub sync_timeout_ms: u64,
    /// The store's replicas.
    pub replica: Vec<ReplicaConfig>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            mode: "async".into(),
            sync_replicas: 1,
            sync_timeout_ms: 5_000,
            replica: Vec::new(),
        }
    }
}

/// `[[database]]`: a SQLite database in WAL mode that another program writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Its name in status, metrics and `--db`.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// How often to look for new commits, in milliseconds (a `stat` of the WAL).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Checkpoint and truncate its WAL once it holds this many bytes.
    #[serde(default = "default_checkpoint_wal_bytes")]
    pub checkpoint_wal_bytes: u64,
    /// Its replicas; none: it is backed up (and drilled from its backups) but not replicated.
    #[serde(default)]
    pub replica: Vec<ReplicaConfig>,
}

fn default_poll_interval_ms() -> u64 {
    10
}

fn default_checkpoint_wal_bytes() -> u64 {
    16 << 20
}

/// `[[replication.replica]]` or `[[database.replica]]`: one replica and its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// `file:///absolute/path` or `s3://bucket/path?endpoint=...`.
    pub url: String,
    /// Its name in status and metrics (default: the URL without its query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Least time between two uploads, in milliseconds. Default: 0 (as soon as committed) for
    /// file replicas, 1000 for S3 (about one upload per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval_ms: Option<u64>,
    /// The point-in-time window: history older than this is deleted, in hours.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// How long every shipped point is kept before points are thinned to one per second, in minutes.
    #[serde(default = "default_fine_minutes")]
    pub fine_minutes: u64,
    /// How often a new snapshot is written, in hours.
    #[serde(default = "default_snapshot_hours")]
    pub snapshot_hours: u64,
    /// S3 access key id (an `s3://` replica only); see [`S3Settings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// S3 secret access key, set together with `access_key_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// S3 session token of temporary credentials, with the two keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Secret>,
    /// S3 region (the URL's `?region=` wins over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

fn default_retention_hours() -> u64 {
    24
}

fn default_fine_minutes() -> u64 {
    60
}

fn default_snapshot_hours() -> u64 {
    24
}

impl ReplicaConfig {
    /// A replica with default settings.
    pub fn new(url: impl Into<String>) -> ReplicaConfig {
        ReplicaConfig {
            url: url.into(),
            name: None,
            sync_interval_ms: None,
            retention_hours: default_retention_hours(),
            fine_minutes: default_fine_minutes(),
            snapshot_hours: default_snapshot_hours(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            region: None,
        }
    }

    /// Its S3 settings from the config.
    pub fn s3(&self) -> S3Settings {
        S3Settings {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            region: self.region.clone(),
        }
    }

    /// Its name: the configured one, or the URL without its query (which may hold settings).
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.url
                .split_once('?')
                .map_or(self.url.as_str(), |(u, _)| u)
                .to_owned()
        })
    }
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub body_bytes_max: u64,
    /// A request that takes longer is answered 503, in seconds.
    pub request_timeout_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7878".into(),
            body_bytes_max: 1 << 20,
            request_timeout_seconds: 30,
        }
    }
}

/// `[store]`: the SQLite trading store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding `tradevault.db`.
    pub data_dir: PathBuf,
    /// How long a connection waits for a lock held by another process, in milliseconds.
    pub busy_timeout_ms: u64,
    /// Read-only connections serving queries.
    pub read_connections: u64,
    /// Most requests committed together in one transaction (group commit).
    pub group_commit_max: u64,
    /// Most write requests waiting for the writer; more wait in the HTTP layer.
    pub write_queue_max: u64,
    /// The writer checkpoints the WAL into the database once it holds this many bytes.
    pub checkpoint_wal_bytes: u64,
    /// SQLite page cache per connection, in KiB.
    pub cache_kib: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("./data"),
            busy_timeout_ms: 5_000,
            read_connections: 4,
            group_commit_max: 512,
            write_queue_max: 4_096,
            checkpoint_wal_bytes: 16 << 20,
            cache_kib: 16 << 10,
        }
    }
}

/// `[api]`: limits of the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Most items in one batch write.
    pub batch_items_max: u64,
    /// Rows per page when the request gives no `limit`.
    pub page_limit_default: u64,
    /// Largest `limit` a request may ask for.
    pub page_limit_max: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            batch_items_max: 1_000,
            page_limit_default: 100,
            page_limit_max: 1_000,
        }
    }
}

/// `[log]`: diagnostics on stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a full filter (`tradevault=debug,info`).
    pub level: String,
    /// `text` or `json` (one object per line).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[restore]`: how a restore fetches and decodes LTX files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreConfig {
    /// LTX files downloaded at once, ahead of the one being applied.
    pub downloads_max: u64,
    /// Bytes of downloaded files held before they are applied (in memory, or on disk for large
    /// S3 files); one file is always allowed, so a restore holds at most this, or its largest file.
    pub downloaded_bytes_max: u64,
    /// Threads decoding (decompressing and checksumming) the pages of one large file.
    pub decode_threads: u64,
    /// An LTX file at least this large (a snapshot) is never held in memory: it is read where it
    /// is on a local replica, or streamed from S3 into an unnamed file beside the output.
    pub memory_file_bytes_max: u64,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            downloads_max: 4,
            downloaded_bytes_max: 256 << 20,
            decode_threads: 2,
            memory_file_bytes_max: 16 << 20,
        }
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then `TRADEVAULT_*` variables from `env`, and validates.
    /// Errors name the key and where its value came from: the file, or the variable.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let defaults = to_table(&Config::default());
        let mut merged = defaults.clone();
        let mut origins: HashMap<String, String> = HashMap::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| Error::ConfigFile {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?;
            merge_checked(
                &mut merged,
                &defaults,
                table,
                &path.display().to_string(),
                &mut origins,
            )?;
        }
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, value) in vars {
            apply_env(&mut merged, &defaults, &name, &value, &mut origins)?;
        }
        // Where a value the file or environment did not set came from: the whole config decides
        // whether it fits (a default beyond a maximum the file set), so name the file.
        let fallback = file.map_or_else(|| "defaults".into(), |p| p.display().to_string());
        let config: Config =
            toml::Value::Table(merged.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let (key, message) = locate_error(&merged, &e);
                    Error::Config {
                        source_name: origin_of(&origins, &key).unwrap_or_else(|| fallback.clone()),
                        key,
                        message,
                    }
                })?;
        config
            .validate_with(&|key| origin_of(&origins, key).unwrap_or_else(|| fallback.clone()))?;
        Ok(config)
    }

    /// Checks every value's meaning and bounds (types are checked on load).
    pub fn validate(&self) -> Result<()> {
        self.validate_with(&|_| "config".into())
    }

    /// [`Config::validate`], naming where each key's value came from with `origin(key)`.
    fn validate_with(&self, origin: &dyn Fn(&str) -> String) -> Result<()> {
        let bad = |key: &str, message: String| Error::Config {
            source_name: origin(key),
            key: key.into(),
            message,
        };
        self.listen_addr().map_err(|m| bad("server.listen", m))?;
        // (key, value, largest accepted): every limit is at least 1 and at most something sane.
        let bounded = [
            ("server.body_bytes_max", self.server.body_bytes_max, 1 << 30),
            (
                "server.request_timeout_seconds",
                self.server.request_timeout_seconds,
                3_600,
            ),
            (
                "store.busy_timeout_ms",
                self.store.busy_timeout_ms.max(1),
                3_600_000,
            ),
            ("store.read_connections", self.store.read_connections, 64),
            (
                "store.group_commit_max",
                self.store.group_commit_max,
                65_536,
            ),
            ("store.write_queue_max", self.store.write_queue_max, 1 << 20),
            (
                "store.checkpoint_wal_bytes",
                self.store.checkpoint_wal_bytes,
                1 << 32,
            ),
            ("store.cache_kib", self.store.cache_kib.max(1), 16 << 20),
            ("api.batch_items_max", self.api.batch_items_max, 100_000),
            (
                "api.page_limit_default",
                self.api.page_limit_default,
                100_000,
            ),
            ("api.page_limit_max", self.api.page_limit_max, 100_000),
            ("restore.downloads_max", self.restore.downloads_max, 64),
            (
                "restore.downloaded_bytes_max",
                self.restore.downloaded_bytes_max,
                1 << 40,
            ),
            ("restore.decode_threads", self.restore.decode_threads, 64),
            (
                "restore.memory_file_bytes_max",
                self.restore.memory_file_bytes_max,
                1 << 40,
            ),
        ];
        for (key, value, max) in bounded {
            if value == 0 {
                return Err(bad(key, "must be greater than 0".into()));
            }
            if value > max {
                return Err(bad(key, format!("must be at most {max}, not {value}")));
            }
        }
        if self.api.page_limit_default > self.api.page_limit_max {
            return Err(bad(
                "api.page_limit_default",
                "must not exceed api.page_limit_max".into(),
            ));
        }
        if self.store.data_dir.as_os_str().is_empty() {
            return Err(bad("store.data_dir", "must not be empty".into()));
        }
        if !matches!(self.replication.mode.as_str(), "async" | "sync") {
            return Err(bad(
                "replication.mode",
                format!(
                    "must be \"async\" or \"sync\", not {:?}",
                    self.replication.mode
                ),
            ));
        }
        // Against the number of replicas it is checked where they are all known (`serve` adds
        // those of --replica).
        if self.replication.mode == "sync" && self.replication.sync_replicas == 0 {
            return Err(bad(
                "replication.sync_replicas",
                "must be at least 1 in sync mode".into(),
            ));
        }
        if !(1..=600_000).contains(&self.replication.sync_timeout_ms) {
            return Err(bad(
                "replication.sync_timeout_ms",
                "must be between 1 and 600000".into(),
            ));
        }
        for (name, schedule) in self.jobs.schedules() {
            if schedule.is_empty() {
                continue;
            }
            crate::jobs::parse_schedule(schedule).map_err(|m| bad(&format!("jobs.{name}"), m))?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, db) in self.database.iter().enumerate() {
            let key = |k: &str| format!("database[{i}].{k}");
            if db.name.is_empty() || !names.insert(db.name.clone()) {
                return Err(bad(&key("name"), "must be present and unique".into()));
            }
            if db.path.as_os_str().is_empty() {
                return Err(bad(&key("path"), "must not be empty".into()));
            }
            if !(1..=60_000).contains(&db.poll_interval_ms) {
                return Err(bad(
                    &key("poll_interval_ms"),
                    "must be between 1 and 60000".into(),
                ));
            }
        }
        let replicas = self
            .replication
            .replica
            .iter()
            .enumerate()
            .map(|(j, r)| (format!("replication.replica[{j}]"), r))
            .chain(self.database.iter().enumerate().flat_map(|(i, d)| {
                d.replica
                    .iter()
                    .enumerate()
                    .map(move |(j, r)| (format!("database[{i}].replica[{j}]"), r))
            }));
        for (entry, r) in replicas {
            if !(r.url.starts_with("file:///") || r.url.starts_with("s3://")) {
                return Err(bad(
                    &format!("{entry}.url"),
                    format!(
                        "{:?} is not a file:///absolute/path or s3://bucket/path URL",
                        r.url
                    ),
                ));
            }
            r.s3()
                .check(&r.url)
                .map_err(|(k, why)| bad(&format!("{entry}.{k}"), why))?;
            if r.name.as_deref() == Some("local") {
                return Err(bad(
                    &format!("{entry}.name"),
                    "\"local\" is reserved: it is the metrics label of the engine's own shipping (reading the WAL, writing the local log)".into(),
                ));
            }
            for (k, v) in [
                ("retention_hours", r.retention_hours),
                ("snapshot_hours", r.snapshot_hours),
            ] {
                if v == 0 {
                    return Err(bad(
                        &format!("{entry}.{k}"),
                        format!("{}: must be at least 1", r.url),
                    ));
                }
            }
            if r.fine_minutes > r.retention_hours.saturating_mul(60) {
                return Err(bad(
                    &format!("{entry}.fine_minutes"),
                    format!(
                        "{}: must not exceed the retention window ({} h)",
                        r.url, r.retention_hours
                    ),
                ));
            }
        }
        self.validate_backup(&bad)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(bad(
                "log.format",
                format!("must be \"text\" or \"json\", not {:?}", self.log.format),
            ));
        }
        Ok(())
    }

    fn validate_backup(&self, bad: &dyn Fn(&str, String) -> Error) -> Result<()> {
        let b = &self.backup;
        if !matches!(b.compression.as_str(), "zstd" | "gzip") {
            return Err(bad(
                "backup.compression",
                format!("must be \"zstd\" or \"gzip\", not {:?}", b.compression),
            ));
        }
        let bounded = [
            ("backup.zstd_level", b.zstd_level, 19),
            ("backup.full_every", b.full_every, 10_000),
            ("backup.segment_bytes", b.segment_bytes, 64 << 20),
            ("backup.pack_bytes", b.pack_bytes, 4 << 30),
            ("backup.threads", b.threads, 64),
        ];
        for (key, value, max) in bounded {
            if value == 0 || value > max {
                return Err(bad(
                    key,
                    format!("must be between 1 and {max}, not {value}"),
                ));
            }
        }
        if b.segment_bytes < 65_536 {
            return Err(bad("backup.segment_bytes", "must be at least 65536".into()));
        }
        for r in &b.recipients {
            if r.parse::<age::x25519::Recipient>().is_err() {
                return Err(bad(
                    "backup.recipients",
                    format!("{r:?} is not an age public key (age1...)"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in b.target.iter().enumerate() {
            let key = |k: &str| format!("backup.target[{i}].{k}");
            if t.name.is_empty() || t.name.contains("://") || !names.insert(t.name.clone()) {
                return Err(bad(
                    &key("name"),
                    "must be present, unique, and not a URL".into(),
                ));
            }
            if !(t.url.starts_with("file:///") || t.url.starts_with("s3://")) {
                return Err(bad(
                    &key("url"),
                    format!(
                        "{:?} is not a file:///absolute/path or s3://bucket/path URL",
                        t.url
                    ),
                ));
            }
            t.s3().check(&t.url).map_err(|(k, why)| bad(&key(k), why))?;
            if let Some(w) = &t.keep_within
                && parse_duration_ms(w).is_none()
            {
                return Err(bad(
                    &key("keep_within"),
                    format!("{w:?} is not a duration such as 36h, 7d or 4w"),
                ));
            }
        }
        Ok(())
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> std::result::Result<SocketAddr, String> {
        self.server.listen.parse().map_err(|_| {
            format!(
                "{:?} is not an address of the form host:port (e.g. 127.0.0.1:7878)",
                self.server.listen
            )
        })
    }

    /// Path of the store's database file.
    pub fn database_path(&self) -> PathBuf {
        self.store.data_dir.join(crate::store::DATABASE_FILE)
    }
}

/// Where the value of `key` came from: the key itself, or the entry or section holding it
/// (`database[1].name` came with `database`).
fn origin_of(origins: &HashMap<String, String>, key: &str) -> Option<String> {
    let mut k = key;
    loop {
        if let Some(origin) = origins.get(k) {
            return Some(origin.clone());
        }
        k = &k[..k.rfind(['.', '['])?];
    }
}

/// The key a failed deserialization is about, with an entry's index (`database[1].replica[0].
/// retention_hours`, found by deserializing each `[[...]]` entry alone), and its message.
fn locate_error(merged: &toml::Table, e: &toml::de::Error) -> (String, String) {
    use serde::de::DeserializeOwned;
    fn first_bad<T: DeserializeOwned>(
        entries: Option<&toml::Value>,
        key: &str,
    ) -> Option<(String, toml::de::Error)> {
        let entries = entries?.as_array()?;
        entries.iter().enumerate().find_map(|(i, v)| {
            v.clone()
                .try_into::<T>()
                .err()
                .map(|e| (format!("{key}[{i}]"), e))
        })
    }
    let section = |name: &str| merged.get(name).and_then(toml::Value::as_table);
    let mut found = None;
    if let Some(databases) = merged.get("database").and_then(toml::Value::as_array) {
        for (i, d) in databases.iter().enumerate() {
            found = first_bad::<ReplicaConfig>(d.get("replica"), &format!("database[{i}].replica"))
                .or_else(|| {
                    d.clone()
                        .try_into::<DatabaseConfig>()
                        .err()
                        .map(|e| (format!("database[{i}]"), e))
                });
            if found.is_some() {
                break;
            }
        }
    }
    let found = found
        .or_else(|| {
            first_bad::<ReplicaConfig>(
                section("replication").and_then(|t| t.get("replica")),
                "replication.replica",
            )
        })
        .or_else(|| {
            first_bad::<BackupTargetConfig>(
                section("backup").and_then(|t| t.get("target")),
                "backup.target",
            )
        });
    // toml's text: the message, then "in `path.to.key`" when it knows the key.
    let split = |e: &toml::de::Error| {
        let text = e.to_string();
        let message = text.lines().next().unwrap_or_default().trim().to_owned();
        let path = text.lines().find_map(|l| {
            l.trim()
                .strip_prefix("in `")?
                .strip_suffix('`')
                .map(str::to_owned)
        });
        (message, path)
    };
    let Some((entry, inner)) = found else {
        let (message, path) = split(e);
        return (path.unwrap_or_else(|| "?".into()), message);
    };
    let (message, path) = split(&inner);
    // The field: where toml says it went wrong inside the entry, or the field it names.
    let named = ["unknown field `", "missing field `"].iter().find_map(|p| {
        let rest = message.split_once(p)?.1;
        Some(rest.split('`').next()?.to_owned())
    });
    match path.or(named) {
        Some(field) => (format!("{entry}.{field}"), message),
        None => (entry, message),
    }
}

fn to_table(config: &Config) -> toml::Table {
    match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        // A struct of plain fields always serializes to a table.
        _ => unreachable!("config serializes to a table"),
    }
}

/// Copies `incoming` into `merged`, refusing unknown keys and values of the wrong type.
fn merge_checked(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    incoming: toml::Table,
    origin: &str,
    origins: &mut HashMap<String, String>,
) -> Result<()> {
    let bad = |key: String, message: String| Error::Config {
        source_name: origin.into(),
        key,
        message,
    };
    for (section, value) in incoming {
        if let Some(toml::Value::Array(_)) = defaults.get(&section) {
            // Arrays of tables ([[database]]): their fields are checked when deserialized.
            if !value.is_array() {
                return Err(bad(
                    section,
                    "must be an array of tables ([[section]])".into(),
                ));
            }
            origins.insert(section.clone(), origin.to_owned());
            merged.insert(section, value);
            continue;
        }
        let Some(toml::Value::Table(default_section)) = defaults.get(&section) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            return Err(bad(
                section,
                format!("unknown section; known sections: {}", known.join(", ")),
            ));
        };
        let toml::Value::Table(entries) = value else {
            return Err(bad(section, "must be a table ([section])".into()));
        };
        for (key, value) in entries {
            let full = format!("{section}.{key}");
            let Some(default) = default_section.get(&key) else {
                let known: Vec<&str> = default_section.keys().map(String::as_str).collect();
                return Err(bad(
                    full,
                    format!("unknown key; keys in [{section}]: {}", known.join(", ")),
                ));
            };
            if default.type_str() != value.type_str() {
                return Err(bad(
                    full,
                    format!(
                        "must be {}, not {}",
                        article(default.type_str()),
                        article(value.type_str())
                    ),
                ));
            }
            if let toml::Value::Integer(i) = value
                && i < 0
            {
                return Err(bad(full, "must not be negative".into()));
            }
            if let Some(toml::Value::Table(target)) = merged.get_mut(&section) {
                origins.insert(full, origin.to_owned());
                target.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Applies one `TRADEVAULT_<SECTION>_<KEY>` variable, typed after the default value of that key.
fn apply_env(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    name: &str,
    raw: &str,
    origins: &mut HashMap<String, String>,
) -> Result<()> {
    let rest = &name[ENV_PREFIX.len()..];
    let Some((section, key)) = rest.split_once('_') else {
        return Ok(());
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    // Variables of other sections (TRADEVAULT_CONFIG, say) are not config keys.
    let Some(toml::Value::Table(default_section)) = defaults.get(&section) else {
        return Ok(());
    };
    let bad = |message: String| Error::Config {
        source_name: format!("environment variable {name}"),
        key: format!("{section}.{key}"),
        message,
    };
    let Some(default) = default_section.get(&key) else {
        return Err(bad("unknown key".into()));
    };
    let value = match default {
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .map(toml::Value::Integer)
            .ok_or_else(|| bad(format!("must be a non-negative integer, not {raw:?}")))?,
        toml::Value::Array(_) => {
            return Err(bad(
                "a list cannot be set from the environment; use the config file".into(),
            ));
        }
        toml::Value::Boolean(_) => match raw.trim() {
            "true" | "1" => toml::Value::Boolean(true),
            "false" | "0" => toml::Value::Boolean(false),
            _ => return Err(bad(format!("must be true or false, not {raw:?}"))),
        },
        _ => toml::Value::String(raw.to_owned()),
    };
    if let Some(toml::Value::Table(target)) = merged.get_mut(&section) {
        origins.insert(
            format!("{section}.{key}"),
            format!("environment variable {name}"),
        );
        target.insert(key, value);
    }
    Ok(())
}

fn article(type_str: &str) -> String {
    match type_str {
        "integer" | "array" => format!("an {type_str}"),
        other => format!("a {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid_and_zero_config() {
        let c = Config::load(None, Vec::new()).expect("defaults load");
        assert_eq!(c, Config::default());
        assert_eq!(c.database_path(), PathBuf::from("./data/tradevault.db"));
        assert_eq!(c.listen_addr().expect("addr").to_string(), "127.0.0.1:7878");
    }

    #[test]
    fn file_then_env_override() {
        let c = load_text(
            "[server]\nlisten = \"127.0.0.1:9000\"\n[store]\nread_connections = 2\n",
            &[
                ("TRADEVAULT_STORE_READ_CONNECTIONS", "8"),
                ("TRADEVAULT_CONFIG", "ignored.toml"),
                ("OTHER_VAR", "x"),
            ],
        )
        .expect("load");
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.store.read_connections, 8);
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            ("[server]\nlisten = 5\n", &[], "server.listen"),
            ("[server]\nlisen = \"x\"\n", &[], "server.lisen"),
            ("[nope]\na = 1\n", &[], "nope"),
            ("[server]\nlisten = \"localhost\"\n", &[], "server.listen"),
            ("[api]\npage_limit_max = 0\n", &[], "api.page_limit_max"),
            (
                "[api]\npage_limit_default = 5000\n",
                &[],
                "api.page_limit_default",
            ),
            (
                "[store]\nbusy_timeout_ms = -1\n",
                &[],
                "store.busy_timeout_ms",
            ),
            (
                "",
                &[("TRADEVAULT_STORE_READ_CONNECTIONS", "many")],
                "store.read_connections",
            ),
            ("", &[("TRADEVAULT_SERVER_LISTN", "x")], "server.listn"),
            ("[log]\nformat = \"xml\"\n", &[], "log.format"),
            (
                "",
                &[("TRADEVAULT_API_PAGE_LIMIT_MAX", "0")],
                "api.page_limit_max",
            ),
            (
                "",
                &[("TRADEVAULT_STORE_WRITE_QUEUE_MAX", "4611686018427387904")],
                "store.write_queue_max",
            ),
            (
                "[store]\ngroup_commit_max = 99999999\n",
                &[],
                "store.group_commit_max",
            ),
            // Entries of [[...]] arrays: the file and the entry's index, never "defaults" or "?".
            (
                "[[database]]\nname = \"a\"\npath = \"/x\"\n[[database.replica]]\nurl = \"file:///r\"\n\
                 [[database]]\nname = \"a\"\npath = \"/y\"\n[[database.replica]]\nurl = \"file:///r\"\n",
                &[],
                "database[1].name",
            ),
            (
                "[[database]]\nname = \"a\"\npath = \"/x\"\nacess_key = 1\n",
                &[],
                "database[0].acess_key",
            ),
            (
                "[[database]]\nname = \"a\"\npath = \"/x\"\n[[database.replica]]\nurl = \"file:///r\"\n\
                 [[database.replica]]\nurl = \"file:///s\"\nretention_hours = \"x\"\n",
                &[],
                "database[0].replica[1].retention_hours",
            ),
            (
                "[[backup.target]]\nname = \"a\"\n",
                &[],
                "backup.target[0].url",
            ),
            (
                "[[replication.replica]]\nurl = \"file:///r\"\nretention_hours = 0\n",
                &[],
                "replication.replica[0].retention_hours",
            ),
            (
                "[api]\npage_limit_max = 50\n",
                &[],
                "api.page_limit_default",
            ),
        ];
        for (text, env, key) in cases {
            match load_text(text, env) {
                Err(Error::Config {
                    key: k,
                    source_name,
                    ..
                }) => {
                    assert_eq!(&k, key, "for {text:?}");
                    assert!(
                        source_name.ends_with("t.toml") || source_name.contains("TRADEVAULT_"),
                        "{source_name}"
                    );
                }
                other => panic!("expected a config error for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn backup_section_and_targets() {
        let c = load_text(
            "[backup]\ncompression = \"gzip\"\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n\
             [[backup.target]]\nname = \"local\"\nurl = \"file:///var/backups/tv\"\nkeep_last = 3\nkeep_within = \"7d\"\n\
             [[backup.target]]\nname = \"s3\"\nurl = \"s3://b/p\"\nkeep_daily = 7\n",
            &[("TRADEVAULT_BACKUP_ZSTD_LEVEL", "5")],
        )
        .expect("load");
        assert_eq!(c.backup.compression, "gzip");
        assert_eq!(c.backup.zstd_level, 5);
        assert_eq!(c.backup.target.len(), 2);
        assert_eq!(c.backup.target[0].keep_last, Some(3));
        assert_eq!(c.backup.target[1].keep_daily, Some(7));
        assert_eq!(parse_duration_ms("7d"), Some(7 * 86_400_000));
        assert_eq!(parse_duration_ms("36h"), Some(36 * 3_600_000));
        assert_eq!(parse_duration_ms("7x"), None);
        let cases: &[(&str, &str)] = &[
            (
                "[[database]]\nname = \"a\"\npath = \"/x\"\n[[database.replica]]\nurl = \"ftp://host/r\"\n",
                "database[0].replica[0].url",
            ),
            (
                "[[replication.replica]]\nurl = \"file:///r\"\nname = \"local\"\n",
                "replication.replica[0].name",
            ),
            ("[backup]\ncompression = \"xz\"\n", "backup.compression"),
            ("[backup]\nzstd_level = 30\n", "backup.zstd_level"),
            (
                "[backup]\nrecipients = [\"age1nope\"]\n",
                "backup.recipients",
            ),
            (
                "[[backup.target]]\nname = \"a\"\nurl = \"/relative\"\n",
                "backup.target[0].url",
            ),
            (
                "[[backup.target]]\nname = \"a\"\nurl = \"file:///x\"\nkeep_within = \"soon\"\n",
                "backup.target[0].keep_within",
            ),
            (
                "[[backup.target]]\nname = \"a\"\nurl = \"file:///x\"\n[[backup.target]]\nname = \"a\"\nurl = \"file:///y\"\n",
                "backup.target[1].name",
            ),
        ];
        for (text, key) in cases {
            match load_text(text, &[]) {
                Err(Error::Config { key: k, .. }) => assert_eq!(&k, key, "for {text:?}"),
                other => panic!("expected a config error for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_database_may_be_backed_up_without_a_replica() {
        let c = load_text(
            "[[database]]\nname = \"bot\"\npath = \"/srv/bot/bot.db\"\n\
             [[database]]\nname = \"fills\"\npath = \"/srv/fills.db\"\n\
             [[database.replica]]\nurl = \"file:///var/replicas/fills\"\n\
             [[backup.target]]\nname = \"local\"\nurl = \"file:///var/backups/tv\"\n",
            &[],
        )
        .expect("a [[database]] with no replica is valid");
        assert!(c.database[0].replica.is_empty());
        assert_eq!(c.database[1].replica.len(), 1);
    }

    #[test]
    fn s3_credentials_in_entries_are_parsed_checked_and_never_shown() {
        let c = load_text(
            "[[replication.replica]]\nurl = \"s3://b/store\"\naccess_key_id = \"AKIDSTORE\"\n\
             secret_access_key = \"store-secret\"\nsession_token = \"store-token\"\nregion = \"eu-west-1\"\n\
             [[database]]\nname = \"bot\"\npath = \"/srv/bot.db\"\n[[database.replica]]\nurl = \"s3://b/bot\"\n\
             access_key_id = \"AKIDBOT\"\nsecret_access_key = \"bot-secret\"\n\
             [[backup.target]]\nname = \"s3\"\nurl = \"s3://b/backups\"\naccess_key_id = \"AKIDBACKUP\"\n\
             secret_access_key = \"backup-secret\"\n",
            &[],
        )
        .expect("load");
        let store = c.replication.replica[0].s3();
        assert_eq!(
            store.secret_access_key.as_ref().map(Secret::expose),
            Some("store-secret")
        );
        assert_eq!(
            store.session_token.as_ref().map(Secret::expose),
            Some("store-token")
        );
        assert_eq!(store.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            c.database[0].replica[0]
                .s3()
                .access_key_id
                .as_ref()
                .map(Secret::expose),
            Some("AKIDBOT")
        );
        assert_eq!(
            c.backup.target[0]
                .s3()
                .secret_access_key
                .as_ref()
                .map(Secret::expose),
            Some("backup-secret")
        );
        let shown = format!("{c:?}");
        for secret in [
            "AKIDSTORE",
            "store-secret",
            "store-token",
            "AKIDBOT",
            "bot-secret",
            "AKIDBACKUP",
            "backup-secret",
        ] {
            assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");

        let cases: &[(&str, &str)] = &[
            (
                "[[replication.replica]]\nurl = \"s3://b/p\"\naccess_key_id = \"AKID\"\n",
                "replication.replica[0].secret_access_key",
            ),
            (
                "[[replication.replica]]\nurl = \"file:///r\"\naccess_key_id = \"AKID\"\nsecret_access_key = \"s\"\n",
                "replication.replica[0].access_key_id",
            ),
            (
                "[[database]]\nname = \"a\"\npath = \"/x\"\n[[database.replica]]\nurl = \"s3://b/p\"\nsession_token = \"t\"\n",
                "database[0].replica[0].session_token",
            ),
            (
                "[[backup.target]]\nname = \"a\"\nurl = \"s3://b/p\"\nsecret_access_key = \"top-secret\"\n",
                "backup.target[0].access_key_id",
            ),
            (
                "[[backup.target]]\nname = \"a\"\nurl = \"s3://b/p\"\naccess_key_id = \"\"\nsecret_access_key = \"top-secret\"\n",
                "backup.target[0].access_key_id",
            ),
        ];
        for (text, key) in cases {
            match load_text(text, &[]) {
                Err(e @ Error::Config { .. }) => {
                    assert!(
                        matches!(&e, Error::Config { key: k, .. } if k == key),
                        "for {text:?}: {e}"
                    );
                    assert!(!e.to_string().contains("top-secret"), "{e}");
                }
                other => panic!("expected a config error for {text:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unparsable_file_names_the_file() {
        let err = load_text("[server\n", &[]).expect_err("parse error");
        assert!(matches!(err, Error::ConfigFile { .. }), "{err:?}");
        assert!(err.to_string().contains("t.toml"));
    }
}
