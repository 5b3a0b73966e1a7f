//! `tradevault drill [--db NAME] [--target NAME|URL] [--replica URL] [--identity FILE] [--json]`:
//! restore the latest state of each database from its replicas and from the newest backup on each
//! target (plus a replica's files after it) into a scratch directory, and check each copy. With a
//! server running on this data directory and no flag, the server's drill job runs (it writes a
//! sentinel just before, and records the result in its job history and metrics); otherwise the
//! drills run here, without a sentinel (nothing is writing to the store), and are recorded in the
//! targets' catalogs and the store's mirror of them. Exits 1 if any drill failed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tradevault::Config;
use tradevault::backup::{Catalog, Identity, Target};
use tradevault::drill::{self, DrillOptions, DrillReport, DrillSpec};

use crate::UsageError;

/// Arguments of `drill`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database: `store`, a configured [[database]] name or a SQLite file's path (default:
    /// every database with a replica or a backup).
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// Drill the backups on this target (a configured target's name, or a URL: file:///path,
    /// s3://bucket/path?endpoint=...) instead of the configured sources. Without --db, every
    /// database it holds backups of.
    #[arg(long, value_name = "NAME|URL")]
    target: Option<String>,
    /// Drill this replica (of --db, default the store) instead of the configured sources; with
    /// --target too, its files after the backup are applied on top of it.
    #[arg(long, value_name = "URL")]
    replica: Option<String>,
    /// The age identity file that decrypts encrypted backups (without it they are not drilled).
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print the result as JSON: `ok`, and one object per drill in `drills`.
    #[arg(long)]
    json: bool,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    super::start_logging(&config)?;
    let no_flag = args.db.is_none()
        && args.replica.is_none()
        && args.target.is_none()
        && args.identity.is_none();
    let result = match (no_flag, super::serve_address(&config)) {
        (true, Some(addr)) if super::store_in_use(&config) => through_server(addr)?,
        _ => here(&config, &args)?,
    };
    let drills: Vec<DrillReport> =
        serde_json::from_value(result["drills"].clone()).context("read the drill reports")?;
    let ok =
        result["ok"].as_bool() == Some(true) && !drills.is_empty() && drills.iter().all(|d| d.ok);
    if args.json {
        super::print_json(&result)?;
    } else {
        for d in &drills {
            outln!("{}", line(d));
        }
    }
    if let Some(e) = result["error"].as_str() {
        eprintln!("tradevault: the drill failed: {e}");
    } else if drills.is_empty() {
        eprintln!("tradevault: nothing was drilled");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One drill as a line of text.
fn line(d: &DrillReport) -> String {
    let source = d.source.as_deref().unwrap_or("?");
    if !d.ok {
        return format!(
            "{}: DRILL FAILED ({source}): {}",
            d.database,
            d.error.as_deref().unwrap_or("?")
        );
    }
    let point = match (d.txid, d.point_time.as_deref()) {
        (Some(txid), Some(t)) => format!("txid {txid} at {t}"),
        (_, Some(t)) => format!("the state of {t}"),
        _ => "?".into(),
    };
    let mut found: Vec<&str> = d
        .checks
        .iter()
        .filter(|c| c.name != "restore")
        .map(|c| c.detail.as_str())
        .collect();
    if d.sentinel_found.is_none() {
        found.push("no sentinel");
    }
    format!(
        "{}: restorable: {point} from {source}, {}, recovered in {:.3} s",
        d.database,
        found.join(", "),
        d.rto_seconds
    )
}

/// Runs the server's drill job and waits for its result.
fn through_server(addr: std::net::SocketAddr) -> anyhow::Result<Value> {
    let mut client = tradevault::http::client::Client::new(addr, Duration::from_secs(60));
    let started = client
        .post("/v1/jobs/drill/run", b"")
        .with_context(|| format!("ask the server at {addr} to run a drill"))?;
    let body = started.json().unwrap_or(Value::Null);
    if started.status != 202 {
        anyhow::bail!(
            "the server at {addr} did not start a drill ({}): {}",
            started.status,
            body["error"]["message"].as_str().unwrap_or("?")
        );
    }
    let id = body["run_id"].as_i64().context("run id")?;
    let deadline = Instant::now() + Duration::from_secs(3_600);
    loop {
        let jobs = client.get("/v1/jobs")?.json()?;
        let run = jobs["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["id"].as_i64() == Some(id));
        if let Some(run) = run
            && run["status"] != "running"
        {
            let mut detail = run["detail"].clone();
            if detail.get("ok").is_none() || detail.get("drills").is_none() {
                detail = json!({ "ok": false, "drills": [], "error": detail["error"] });
            }
            return Ok(detail);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the drill did not end within an hour"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the drills in this process, records them in the targets' catalogs and mirrors those into
/// the store.
fn here(config: &Config, args: &Args) -> anyhow::Result<Value> {
    let identity = args
        .identity
        .as_deref()
        .map(Identity::from_file)
        .transpose()?;
    let db = match args.db.as_deref() {
        None => None,
        Some(d) => match super::database(config, Some(d)) {
            Ok(db) => Some(db),
            // After the primary is gone, a target alone can be drilled for any database it holds.
            Err(e) => {
                let held = args
                    .target
                    .as_deref()
                    .and_then(|t| Target::resolve(&config.backup, t).ok())
                    .and_then(|t| Catalog::load(&t).ok())
                    .is_some_and(|c| c.backups.iter().any(|b| b.database == d));
                if !held {
                    return Err(e);
                }
                Some(super::Database {
                    name: d.to_owned(),
                    path: PathBuf::new(),
                    replicas: Vec::new(),
                    by_path: false,
                })
            }
        },
    };
    let configured_targets = || {
        config
            .backup
            .target
            .iter()
            .map(Target::from_config)
            .collect::<tradevault::Result<Vec<_>>>()
    };
    // The sources: those given (--replica, --target), or with neither, the configured ones.
    let sources = if args.replica.is_none() && args.target.is_none() {
        Sources::configured(
            config,
            config.replication.replica.iter(),
            configured_targets()?,
        )
    } else {
        let mut sources = Sources::default();
        if let Some(url) = &args.replica {
            let of = db.as_ref().map_or("store", |d| d.name.as_str());
            let replicas = vec![(url.clone(), super::configured_replica(config, url))];
            if of == "store" {
                sources.store_replicas = replicas;
            } else {
                sources.database_replicas.insert(of.to_owned(), replicas);
            }
        }
        if let Some(t) = &args.target {
            let target = Target::resolve(&config.backup, t)?;
            target.check_reachable()?;
            sources.targets = vec![target];
        }
        sources
    };
    let specs = specs(config, &sources, db.as_ref())?;
    if specs.is_empty() {
        return Err(UsageError(
            "nothing to drill: no database has a replica or a backup; pass --replica URL or --target NAME|URL, or configure one".into(),
        )
        .into());
    }
    let scratch = scratch_dir(config);
    let now = || jiff::Timestamp::now().as_millisecond();
    let options = DrillOptions {
        scratch: &scratch,
        limits: &config.restore,
        identity: identity.as_ref(),
        now: &now,
    };
    let mut reports = Vec::new();
    for spec in &specs {
        reports.extend(drill::run(spec, &options));
    }
    if !config.store.data_dir.is_dir() {
        // Only if empty: a failed drill's copy stays for a look (its path was logged).
        let _ = std::fs::remove_dir(&scratch);
    }
    // Recorded where the drills came from: --target's target, or every configured target (a
    // replica's drill too, as serve's job records it).
    let record_in = if args.target.is_some() {
        sources.targets.clone()
    } else {
        configured_targets().unwrap_or_default()
    };
    drill::record(&reports, &record_in);
    super::mirror_catalogs(config, &record_in);
    let ok = reports.iter().all(|r| r.ok);
    Ok(json!({ "ok": ok, "drills": reports }))
}

/// Where drills restore: `.tradevault-drill` in the data directory, or a directory of this
/// process in the system's temporary directory when there is no data directory (a bare target
/// drilled from anywhere; removed after the drills unless a failed copy was kept there).
pub fn scratch_dir(config: &Config) -> PathBuf {
    if config.store.data_dir.is_dir() {
        config.store.data_dir.join(".tradevault-drill")
    } else {
        std::env::temp_dir().join(format!("tradevault-drill-{}", std::process::id()))
    }
}

/// What drills restore from.
#[derive(Default)]
pub struct Sources {
    /// The store's replicas: (name, as configured: URL, settings, credentials).
    pub store_replicas: Vec<(String, tradevault::config::ReplicaConfig)>,
    /// The replicas of other databases, by database name.
    pub database_replicas: BTreeMap<String, Vec<(String, tradevault::config::ReplicaConfig)>>,
    /// Backup targets.
    pub targets: Vec<Target>,
    /// Whether the targets are the config's, whose backups (serve's job) cover the store and
    /// every [[database]]: each of them must then have a backup on each target.
    pub targets_configured: bool,
}

impl Sources {
    /// The config's sources, with `store_replicas` as the store's replicas.
    pub fn configured<'a>(
        config: &Config,
        store_replicas: impl Iterator<Item = &'a tradevault::config::ReplicaConfig>,
        targets: Vec<Target>,
    ) -> Sources {
        let named = |r: &tradevault::config::ReplicaConfig| (r.display_name(), r.clone());
        Sources {
            store_replicas: store_replicas.map(named).collect(),
            database_replicas: config
                .database
                .iter()
                .map(|d| (d.name.clone(), d.replica.iter().map(named).collect()))
                .collect(),
            targets,
            targets_configured: true,
        }
    }
}

/// The databases to drill, each with its sources: `db` alone (every source given), or every
/// database that has a replica or a backup: the store and each [[database]] with a replica, or
/// with a backup on a target, or that the configured targets should hold (the store only if its
/// file exists), and any other database the targets hold backups of (from those targets only).
pub fn specs(
    config: &Config,
    sources: &Sources,
    db: Option<&super::Database>,
) -> anyhow::Result<Vec<DrillSpec>> {
    let replicas_of = |name: &str| -> anyhow::Result<Vec<(String, tradevault::replica::Replica)>> {
        let urls = if name == "store" {
            &sources.store_replicas
        } else {
            match sources.database_replicas.get(name) {
                Some(urls) => urls,
                None => return Ok(Vec::new()),
            }
        };
        urls.iter()
            .map(|(n, u)| super::replica_of(u).map(|r| (n.clone(), r)))
            .collect()
    };
    if let Some(d) = db {
        return Ok(vec![DrillSpec {
            database: d.name.clone(),
            // A database known only to a target has no file here to compare rows with.
            path: (!d.path.as_os_str().is_empty()).then(|| d.path.clone()),
            replicas: replicas_of(&d.name)?,
            targets: sources.targets.clone(),
            sentinel: None,
        }]);
    }
    // What each target holds backups of (a target that cannot be read is drilled, and fails, for
    // the databases it should hold).
    let held: Vec<BTreeSet<String>> = sources
        .targets
        .iter()
        .map(|t| {
            Catalog::load(t)
                .map(|c| c.backups.into_iter().map(|b| b.database).collect())
                .unwrap_or_default()
        })
        .collect();
    let on_targets = |name: &str| held.iter().any(|h| h.contains(name));
    let expected = sources.targets_configured && !sources.targets.is_empty();
    let mut local = vec![("store".to_owned(), config.database_path())];
    local.extend(
        config
            .database
            .iter()
            .map(|d| (d.name.clone(), d.path.clone())),
    );
    let mut specs = Vec::new();
    for (name, path) in local {
        let replicas = replicas_of(&name)?;
        let backed_up = expected && (name != "store" || path.is_file());
        if replicas.is_empty() && !backed_up && !on_targets(&name) {
            continue;
        }
        let targets = if backed_up {
            sources.targets.clone()
        } else {
            holding(sources, &held, &name)
        };
        specs.push(DrillSpec {
            database: name,
            path: Some(path),
            replicas,
            targets,
            sentinel: None,
        });
    }
    let others: BTreeSet<&String> = held
        .iter()
        .flatten()
        .filter(|n| !specs.iter().any(|s| s.database == **n))
        .collect();
    for name in others {
        specs.push(DrillSpec {
            database: name.clone(),
            path: None,
            replicas: Vec::new(),
            targets: holding(sources, &held, name),
            sentinel: None,
        });
    }
    Ok(specs)
}

/// The targets that hold a backup of `name`.
fn holding(sources: &Sources, held: &[BTreeSet<String>], name: &str) -> Vec<Target> {
    sources
        .targets
        .iter()
        .zip(held)
        .filter(|(_, h)| h.contains(name))
        .map(|(t, _)| t.clone())
        .collect()
}
