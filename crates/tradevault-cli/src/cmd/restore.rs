//! `tradevault restore [--db NAME] [--replica URL] [--latest | --txid N | --timestamp T]
//! [--output PATH | --in-place]`: rebuilds a database from a replica (ours or Litestream 0.5's),
//! verified and integrity-checked, into a new file, or in place of the live database: staged and
//! checked first, then put in by `restore::inplace` (safety copy, one-transaction swap, check,
//! automatic rollback) — by the running server if it has the store open. A progress bar on a
//! terminal; `--json` prints the result on stdout.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tradevault::restore::{self, Check, Plan, Progress, Restored, Stage, Target, inplace};

use crate::UsageError;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database: `store` (default; the one in --data-dir), a configured [[database]] name,
    /// or a SQLite file's path. Its replicas in the config are the sources unless --replica is given.
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    /// The replica to restore from: file:///absolute/path, or s3://bucket/path with optional
    /// ?endpoint=http://host:port&region=R&force-path-style=true (credentials in AWS_* variables,
    /// or the config's when the URL or name is a configured replica's).
    #[arg(long, value_name = "URL")]
    replica: Option<String>,
    /// The backup target to restore from (a configured name or a URL); default: the configured
    /// targets, when a backup is the source.
    #[arg(long, value_name = "NAME|URL")]
    target: Option<String>,
    /// Restore this backup (an id, or the unique start of one) instead of a replica's point.
    #[arg(long, value_name = "ID", conflicts_with_all = ["timestamp", "txid", "latest"])]
    backup: Option<String>,
    /// The age identity file that decrypts an encrypted backup.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Where to write the database; must not exist.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["in_place", "dry_run"])]
    output: Option<PathBuf>,
    /// Replace the database itself: stage and check the restored copy, take a safety copy, swap
    /// in one transaction, check, and roll back automatically if anything fails.
    #[arg(long, conflicts_with = "output")]
    in_place: bool,
    /// Restore the newest state (the default).
    #[arg(long, conflicts_with_all = ["timestamp", "txid"])]
    latest: bool,
    /// Restore the state at this time (RFC 3339), exactly, or refuse and name the nearest points.
    #[arg(long, value_name = "RFC3339", conflicts_with = "txid")]
    timestamp: Option<String>,
    /// With --timestamp: restore the newest point made at or before that time instead of refusing
    /// a time that cannot be restored exactly (commits made after that point may be missing;
    /// `point_time` says when it was).
    #[arg(long, requires = "timestamp")]
    at_or_before: bool,
    /// Restore the state right after this transaction (decimal, or hex with 0x).
    #[arg(long, value_name = "N")]
    txid: Option<String>,
    /// Print the plan (files, bytes, the point reached) and restore nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Check the result with PRAGMA quick_check instead of integrity_check: faster, but indexes
    /// are not compared with their tables.
    #[arg(long)]
    quick_check: bool,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let result = restore(config_file, data_dir, args);
    if json && let Err(e) = &result {
        // A script reading stdout learns why, not just that nothing came; the message and its
        // hint still go to stderr, with the same exit status.
        super::print_json(&super::error_json(e))?;
    }
    result
}

fn restore(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    super::start_logging(&config)?;
    let super::Database {
        name: db_name,
        path: db_path,
        replicas: configured,
        by_path,
    } = match super::database(&config, args.db.as_deref()) {
        Ok(db) => db,
        // After the primary is gone, a bare target is all there is: any database it holds
        // backups of restores by name.
        Err(e) => match (args.db.as_deref(), args.target.as_deref()) {
            (Some(name), Some(_)) if on_targets(&config, &args, name) => {
                if args.in_place {
                    return Err(UsageError(format!(
                        "--db {name:?} is known only to the target, not as a file here: restore it with --output PATH"
                    ))
                    .into());
                }
                super::Database {
                    name: name.to_owned(),
                    path: PathBuf::new(),
                    replicas: Vec::new(),
                    by_path: false,
                }
            }
            _ => return Err(e),
        },
    };
    let from_file = by_path.then_some(db_path.as_path());
    // An in-place restore a crash interrupted says what it left before anything else happens.
    if db_path.exists()
        && let Some(left) = inplace::interrupted(&db_path)?
    {
        let holds = match left.holds {
            "new" => "the restored content (the restore had completed)",
            "same" => {
                "the old or the new content, whole (both have the same schema and row counts, \
                 which is all this check compares; the safety copy holds the old)"
            }
            _ => "its previous content (the restore had not completed)",
        };
        eprintln!(
            "tradevault: an in-place restore of {} started at {} was interrupted; the database holds {holds}; the safety copy is {}",
            db_path.display(),
            left.journal.started_at,
            left.journal.safety.display()
        );
    }
    let source = match (&args.replica, configured.first()) {
        (Some(url), _) => Some(super::configured_replica(&config, url)),
        (None, Some(r)) => Some(r.clone()),
        (None, None) => None,
    };
    // A backup is the source when asked for, or when there is no replica: the newest one.
    let Some(source) = source
        .filter(|_| args.backup.is_none() && (args.target.is_none() || args.replica.is_some()))
    else {
        return from_backup(&config, &args, &db_name, &db_path, from_file);
    };
    let replica = super::replica_of(&source)?;
    let target = target_of(&args)?;
    let started = Instant::now();
    // One listing of the replica serves every plan below (listed again if a live replica's
    // compaction deleted a file before its header was read).
    let mut attempts = 0;
    let (files, mut plan) = loop {
        let files = replica.list_restorable_for(target)?;
        // A configured replica that holds nothing yet (a new one, or one emptied) cannot reach
        // the latest state, and the newest backup is the newest state known: restore that, and
        // say so.
        if files.is_empty()
            && target == Target::Latest
            && args.replica.is_none()
            && (args.target.is_some() || !config.backup.target.is_empty())
        {
            eprintln!(
                "tradevault: the replica {} holds no LTX files; restoring the newest backup instead",
                replica.describe()
            );
            return from_backup(&config, &args, &db_name, &db_path, from_file);
        }
        match restore::plan_listed(&replica, &files, target) {
            Err(e) if e.is_not_found() && attempts < restore::RELIST_MAX => attempts += 1,
            planned => break (files, planned?),
        }
    };
    // A backup plus the replica's files after it, when that reads fewer bytes.
    let via_backup = if args.replica.is_none() || args.target.is_some() {
        cheaper_via_backup(&config, &args, &db_name, from_file, &replica, &files, &plan)
    } else {
        None
    };
    if let Some((_, record, tail)) = &via_backup {
        tracing::info!(backup = %record.id, files = tail.files.len(), "restoring a backup and the replica's files after it");
        plan = tail.clone();
    }
    let planned = started.elapsed();
    if args.dry_run {
        if let Some((target, record, _)) = &via_backup {
            if !args.json {
                outln!(
                    "backup {} from {} ({} to fetch, the state at {}), then:",
                    record.id,
                    target.name,
                    super::human_bytes(record.restore_bytes),
                    tradevault::backup::format_ms(record.state_max_ms)
                );
            } else {
                let mut out = serde_json::to_value(&plan)?;
                out["backup"] = serde_json::json!({ "target": target.name, "id": record.id, "fetch_bytes": record.restore_bytes });
                super::print_json(&out)?;
                return Ok(ExitCode::SUCCESS);
            }
        }
        print_plan(&plan, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (output, in_place) = staging_for(&args, &db_path, !config.backup.target.is_empty())?;
    let base = match &via_backup {
        Some((target, record, _)) => {
            let dir = inplace::work_dir(&db_path);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let file = dir.join(format!("base-{}.db", record.id));
            restore::remove_database_files(&file);
            let identity = args
                .identity
                .as_deref()
                .map(tradevault::backup::Identity::from_file)
                .transpose()?;
            tradevault::backup::restore_backup(target, &record.id, identity.as_ref(), &file, None)?;
            Some(file)
        }
        None => None,
    };
    let progress = Progress::default();
    let options = restore::Options {
        base: base.as_deref(),
        limits: config.restore.clone(),
        check: if args.quick_check {
            Check::Quick
        } else {
            Check::Integrity
        },
        progress: Some(&progress),
    };
    let restored = std::thread::scope(|s| {
        let (stop, stopped) = mpsc::channel::<()>();
        let (plan, progress, check) = (&plan, &progress, options.check);
        s.spawn(move || show_progress(plan, progress, check, &stopped));
        let restored = restore::apply_with(&replica, plan, &output, &options);
        drop(stop);
        restored
    });
    if let Some(base) = &base {
        restore::remove_database_files(base);
    }
    let restored = restored?;
    if let Some(safety) = in_place {
        let swapped = put_in_place(&config, &db_name, &db_path, &output, &safety);
        restore::remove_database_files(&output);
        let replaced = swapped?;
        let safety_backup = safety_backup(&config, &db_name, &db_path, &safety);
        remirror(&config, &db_name);
        let total = started.elapsed();
        if args.json {
            let mut out = summary(&restored, planned, total);
            out["output"] = serde_json::json!(db_path);
            out["in_place"] = serde_json::to_value(&replaced)?;
            out["safety_backup"] = safety_backup;
            super::print_json(&out)?;
        } else {
            outln!(
                "restored {} in place to txid {} at {} ({} pages; previous content kept in {}) in {:.2} s",
                db_path.display(),
                plan.txid,
                plan.point_time,
                replaced["after"]["pages"],
                replaced["safety"].as_str().unwrap_or("?"),
                total.as_secs_f64()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let total = started.elapsed();
    if args.json {
        super::print_json(&summary(&restored, planned, total))?;
    } else {
        let checked = match restored.check {
            Check::Integrity => "integrity ok",
            Check::Quick => "quick_check ok, indexes not compared",
        };
        outln!(
            "restored {} to txid {} at {} ({} pages, {}, {checked}) from {} files in {:.2} s",
            restored.output,
            plan.txid,
            plan.point_time,
            restored.pages,
            super::human_bytes(restored.bytes),
            plan.files.len(),
            total.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Puts `staging` in place of `db`: through the running server if it holds the store, else
/// directly, once no other program has the database open.
fn put_in_place(
    config: &tradevault::Config,
    name: &str,
    db: &Path,
    staging: &Path,
    safety: &Path,
) -> anyhow::Result<serde_json::Value> {
    if !db.exists() {
        return Err(UsageError(format!(
            "{} does not exist: restore with --output to create it",
            db.display()
        ))
        .into());
    }
    if name == "store" {
        let clock: std::sync::Arc<dyn tradevault::clock::Clock> =
            std::sync::Arc::new(tradevault::clock::SystemClock);
        match tradevault::Store::open(&config.store, clock) {
            Ok(store) => {
                let (db, staging, safety) = (db.to_owned(), staging.to_owned(), safety.to_owned());
                let replaced = store
                    .exclusive_blocking(move |conn| inplace::replace(conn, &db, &staging, &safety));
                store.close();
                return Ok(serde_json::to_value(replaced?)?);
            }
            Err(tradevault::Error::Locked { .. }) => {
                return through_server(config, staging, safety);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let users = super::open_by_others(db);
    if !users.is_empty() {
        return Err(UsageError(format!(
            "{} is open in {}: stop {} first (an in-place restore needs the database to itself)",
            db.display(),
            users.join(", "),
            if users.len() == 1 { "it" } else { "them" }
        ))
        .into());
    }
    let replaced = inplace::replace_file(db, staging, safety)?;
    Ok(serde_json::to_value(replaced)?)
}

/// Asks the server that holds the store to put the staged file in (`POST /v1/admin/restore`).
fn through_server(
    config: &tradevault::Config,
    staging: &Path,
    safety: &Path,
) -> anyhow::Result<serde_json::Value> {
    let addr = super::serve_address(config).ok_or_else(|| {
        UsageError(format!(
            "the store in {} is open in another process, and no running server's address is known \
             ({} is missing): stop that process, or restore with --output",
            config.store.data_dir.display(),
            super::serve_info_path(config).display()
        ))
    })?;
    let body = serde_json::json!({ "staging": staging, "safety": safety });
    let mut client = tradevault::http::client::Client::new(addr, Duration::from_secs(3_600));
    let answer = client
        .post("/v1/admin/restore", body.to_string().as_bytes())
        .with_context(|| format!("ask the server at {addr} to put the restored store in"))?;
    let json = answer.json().unwrap_or(serde_json::Value::Null);
    if answer.status != 200 {
        anyhow::bail!(
            "the server at {addr} refused or failed the in-place restore ({}): {}",
            answer.status,
            json["error"]["message"]
                .as_str()
                .map_or_else(|| answer.text(), str::to_owned)
        );
    }
    Ok(json)
}

fn target_of(args: &Args) -> anyhow::Result<Target> {
    Ok(match (&args.timestamp, &args.txid) {
        (Some(t), _) => {
            let ts: jiff::Timestamp = t
                .parse()
                .map_err(|_| UsageError(format!("--timestamp {t:?} is not an RFC 3339 time")))?;
            if args.at_or_before {
                Target::AtOrBefore(ts.as_millisecond())
            } else {
                Target::Time(ts.as_millisecond())
            }
        }
        (None, Some(n)) => {
            let parsed = match n.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => n.parse(),
            };
            Target::Txid(parsed.map_err(|_| UsageError(format!("--txid {n:?} is not a number")))?)
        }
        (None, None) => Target::Latest,
    })
}

fn print_plan(plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(plan);
    }
    for (level, min, max, size) in &plan.files {
        let place = if *level == tradevault::replica::journal::JOURNAL_LEVEL {
            "journal".to_owned()
        } else {
            format!("level {level}")
        };
        outln!(
            "{place}  {}  {}",
            ltx::file_name(*min, *max),
            super::human_bytes(*size)
        );
    }
    outln!(
        "would restore txid {} at {} ({} files, {})",
        plan.txid,
        plan.point_time,
        plan.files.len(),
        super::human_bytes(plan.bytes)
    );
    Ok(())
}

/// The `--json` result: the point restored, what it took, and how long each step ran.
fn summary(restored: &Restored, planned: Duration, total: Duration) -> serde_json::Value {
    let plan = &restored.plan;
    serde_json::json!({
        "output": restored.output,
        "txid": plan.txid,
        "point_ms": plan.point_ms,
        "point_time": plan.point_time,
        "files": plan.files.len(),
        "fetched_bytes": plan.bytes,
        "bytes": restored.bytes,
        "pages": restored.pages,
        "page_size": restored.page_size,
        "check": restored.check,
        "durations": {
            "plan_seconds": planned.as_secs_f64(),
            "fetch_apply_seconds": restored.fetch_apply_seconds,
            "check_seconds": restored.check_seconds,
            "sync_seconds": restored.sync_seconds,
            "total_seconds": total.as_secs_f64(),
        },
    })
}

/// Draws a progress bar on stderr while the restore runs, if stderr is a terminal: bytes of LTX
/// files applied, pages written and an ETA, then a spinner during the check. Returns when `stop`'s
/// sender is dropped.
fn show_progress(plan: &Plan, progress: &Progress, check: Check, stop: &mpsc::Receiver<()>) {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(plan.bytes), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let style = |template: &str| {
        ProgressStyle::with_template(template)
            .context("progress bar template")
            .map(|s| s.progress_chars("=> "))
    };
    let apply = style("{msg} [{bar:24}] {binary_bytes}/{binary_total_bytes} eta {eta}");
    let checking = style("{spinner} {msg} {elapsed}");
    if let Ok(s) = &apply {
        bar.set_style(s.clone());
    }
    let files = plan.files.len() as u64;
    let mut stage = Stage::Apply;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(100)) {
        if stage == Stage::Apply && progress.stage() != Stage::Apply {
            stage = progress.stage();
            if let Ok(s) = &checking {
                bar.set_style(s.clone());
            }
            bar.set_message(format!("{} of {} pages", check.pragma(), progress.pages()));
        }
        if stage == Stage::Apply {
            bar.set_position(progress.applied_bytes());
            bar.set_message(format!(
                "file {}/{files}, {} pages",
                (progress.files() + 1).min(files),
                progress.pages()
            ));
        }
        bar.tick();
    }
    bar.finish_and_clear();
}

/// Restores a backup: `--backup ID`, or the newest backup of the database (when it has no
/// replica, or `--target` alone was given), into `--output` or in place.
fn from_backup(
    config: &tradevault::Config,
    args: &Args,
    db_name: &str,
    db_path: &Path,
    source: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use tradevault::backup::{Catalog, Identity};
    // A malformed --timestamp or --txid is said as such first.
    let by_time = match target_of(args)? {
        // Every commit a backup holds was made by its state's end: the newest backup whose state
        // ended by T is the newest state made by then.
        Target::AtOrBefore(ms) if args.backup.is_none() => Some(ms),
        Target::Latest => None,
        _ => {
            return Err(UsageError(
                "--timestamp and --txid need a replica (--replica URL, or one in the config): a backup restores to its own time only (pick one with --backup ID, or --timestamp T --at-or-before for the newest taken by T)".into(),
            )
            .into());
        }
    };
    if args.target.is_none() && config.backup.target.is_empty() {
        return Err(UsageError(format!(
            "nothing to restore {db_name} from: pass --replica URL or --target URL, or configure a replica or a backup target"
        ))
        .into());
    }
    let targets = super::backup_targets(config, args.target.as_deref())?;
    if args.target.is_some() {
        // The one target asked for: a wrong URL is said as such, not as "no backup".
        for t in &targets {
            t.check_reachable()?;
        }
    }
    // The backup asked for, on the first target that has it; or the newest of this database, on
    // any target.
    let mut found: Option<(tradevault::backup::Target, tradevault::backup::BackupRecord)> = None;
    let mut misses = Vec::new();
    for target in &targets {
        let catalog = match Catalog::load(target) {
            Ok(c) => c,
            Err(e) => {
                misses.push(format!("{}: {e}", target.name));
                continue;
            }
        };
        let record = match &args.backup {
            Some(id) => catalog.find(id).ok().cloned(),
            None => match source {
                Some(path) => catalog.newest_from(db_name, path, by_time).cloned(),
                None => catalog.newest(Some(db_name), by_time).cloned(),
            },
        };
        match record {
            // The backup asked for: the first target that has it.
            Some(r) if args.backup.is_some() => {
                found = Some((target.clone(), r));
                break;
            }
            // The newest: across every target (one may have missed the last backups while it was
            // unreachable); on a tie, the first in the config's order.
            Some(r) => {
                let newer = found
                    .as_ref()
                    .is_none_or(|(_, b)| r.state_max_ms > b.state_max_ms);
                if newer {
                    found = Some((target.clone(), r));
                }
            }
            None if catalog.unreadable.is_empty() => {
                misses.push(format!("{}: no such backup", target.name))
            }
            None => misses.push(format!(
                "{}: no such backup among those readable; {} manifest(s) cannot be read: {}",
                target.name,
                catalog.unreadable.len(),
                catalog.unreadable_list()
            )),
        }
    }
    let Some((target, record)) = found else {
        return Err(tradevault::Error::backup(
            "not_found",
            format!(
                "no backup {} on any target ({})",
                match (&args.backup, by_time) {
                    (Some(id), _) => format!("{id} of {db_name}"),
                    (None, Some(ms)) => format!(
                        "of {db_name} whose state ended by {}",
                        tradevault::backup::format_ms(ms)
                    ),
                    (None, None) => format!("at all of {db_name}"),
                },
                misses.join("; ")
            ),
            Some("run 'tradevault backup list' to see the ids"),
        )
        .into());
    };
    // The objects a restore reads: the manifest, the page table, and each pack holding one of
    // its segments (its own or its ancestors'), with the bytes read from each.
    let manifest = tradevault::backup::catalog::read_manifest(&target, &record.id)?;
    let mut packs: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for seg in &manifest.segments {
        *packs.entry(seg.pack.as_str()).or_default() += seg.len;
    }
    let mut objects = vec![
        serde_json::json!({"key": tradevault::backup::format::manifest_key(&record.id)}),
        serde_json::json!({"key": manifest.page_table.key, "bytes": manifest.page_table.size}),
    ];
    objects.extend(
        packs
            .iter()
            .map(|(key, bytes)| serde_json::json!({"key": key, "bytes": bytes})),
    );
    let plan = serde_json::json!({
        "source": "backup",
        "target": target.name,
        "backup_id": record.id,
        "database": record.database,
        "object_count": objects.len(),
        "objects": objects,
        "fetch_bytes": record.restore_bytes,
        "result_time": tradevault::backup::format_ms(record.state_max_ms),
        "state_min_ms": record.state_min_ms,
        "state_max_ms": record.state_max_ms,
        "encrypted": record.encrypted,
    });
    if args.dry_run {
        if args.json {
            super::print_json(&plan)?;
        } else {
            outln!(
                "would restore backup {} of {} from {}: {} to fetch, the state at {}",
                record.id,
                record.database,
                target.name,
                super::human_bytes(record.restore_bytes),
                tradevault::backup::format_ms(record.state_max_ms)
            );
            for o in plan["objects"].as_array().into_iter().flatten() {
                match o["bytes"].as_u64() {
                    Some(b) => outln!(
                        "  {} ({})",
                        o["key"].as_str().unwrap_or("?"),
                        super::human_bytes(b)
                    ),
                    None => outln!("  {}", o["key"].as_str().unwrap_or("?")),
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let identity = args
        .identity
        .as_deref()
        .map(Identity::from_file)
        .transpose()?;
    let started = Instant::now();
    let (output, in_place) = staging_for(args, db_path, !config.backup.target.is_empty())?;
    // A failed restore leaves nothing under `output` (it refuses a name that exists, and names
    // its file only once complete): only a file it made, and which then fails its check, goes.
    let restored =
        tradevault::backup::restore_backup(&target, &record.id, identity.as_ref(), &output, None)?;
    let rows = match tradevault::restore::inplace::check_file(&output) {
        Ok(rows) => rows,
        Err(e) => {
            restore::remove_database_files(&output);
            return Err(e.into());
        }
    };
    let mut out = serde_json::json!({
        "output": if in_place.is_some() { db_path.display().to_string() } else { output.display().to_string() },
        "plan": plan,
        "pages": restored.pages,
        "bytes": restored.bytes,
        "fetched_bytes": restored.fetched_bytes,
        "rows": rows,
        "check": "integrity_check",
    });
    let kept = in_place.clone();
    if let Some(safety) = in_place {
        let swapped = put_in_place(config, db_name, db_path, &output, &safety);
        restore::remove_database_files(&output);
        out["in_place"] = swapped?;
        out["safety_backup"] = safety_backup(config, db_name, db_path, &safety);
        remirror(config, db_name);
    }
    out["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    if args.json {
        super::print_json(&out)?;
    } else {
        outln!(
            "restored backup {} of {} ({} pages, integrity ok) to {}{} in {:.2} s",
            record.id,
            record.database,
            restored.pages,
            out["output"].as_str().unwrap_or("?"),
            kept.map(|s| format!(" in place; previous content kept in {}", s.display()))
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a restore writes: `--output`, or for `--in-place` a staging file beside the database,
/// with the safety copy's path.
fn staging_for(
    args: &Args,
    db_path: &Path,
    backed_up: bool,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    match (&args.output, args.in_place) {
        (Some(out), false) => Ok((out.clone(), None)),
        (_, true) => {
            // Safety copies go only if each also went to a backup target.
            for p in inplace::tidy(db_path, backed_up) {
                tracing::info!(path = %p.display(), "removed an old staging file or safety copy");
            }
            let dir = inplace::work_dir(db_path);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let stamp = jiff::Timestamp::now()
                .strftime("%Y%m%dT%H%M%S%.3fZ")
                .to_string();
            Ok((
                dir.join(format!("staging-{stamp}.db")),
                Some(dir.join(format!("safety-{stamp}.db"))),
            ))
        }
        (None, false) => Err(UsageError("pass --output PATH or --in-place".into()).into()),
    }
}

/// The safety copy of an in-place restore, backed up (type safety) to every configured target,
/// so it falls under their retention like any backup; the local copy stays as well (the newest
/// `inplace::SAFETY_COPIES_KEPT` of them).
fn safety_backup(
    config: &tradevault::Config,
    db_name: &str,
    db_path: &Path,
    safety: &Path,
) -> serde_json::Value {
    use tradevault::backup::{CreateOptions, Kind};
    if config.backup.target.is_empty() {
        return serde_json::json!({ "local": safety, "targets": [] });
    }
    let targets = match super::backup_targets(config, None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "tradevault: the safety copy stays in {} but could not be backed up: {e}",
                safety.display()
            );
            return serde_json::json!({ "local": safety, "error": e.to_string() });
        }
    };
    let now = || jiff::Timestamp::now().as_millisecond();
    let options = CreateOptions {
        db: safety.to_owned(),
        // The database's content before the restore: a backup of the database itself.
        source: Some(db_path.to_owned()),
        database: db_name.to_owned(),
        kind: Kind::Safety,
        config: &config.backup,
        full: false,
        progress: None,
        now: &now,
    };
    match tradevault::backup::create(&targets, &options) {
        Ok(manifests) => serde_json::json!({
            "local": safety,
            "targets": manifests.iter().zip(&targets).map(|(m, t)| serde_json::json!({"target": t.name, "id": m.id})).collect::<Vec<_>>(),
        }),
        Err(e) => {
            eprintln!(
                "tradevault: the safety copy stays in {} but could not be backed up: {e}",
                safety.display()
            );
            serde_json::json!({ "local": safety, "error": e.to_string() })
        }
    }
}

/// The newest backup of `db_name` on the configured targets (or `--target`) from which the
/// replica's files (`files`, all its levels) reach the point of `plan`, if restoring it and those
/// files reads fewer bytes than `plan`.
fn cheaper_via_backup(
    config: &tradevault::Config,
    args: &Args,
    db_name: &str,
    source: Option<&Path>,
    replica: &tradevault::replica::Replica,
    files: &[tradevault::replica::ReplicaFile],
    plan: &Plan,
) -> Option<(
    tradevault::backup::Target,
    tradevault::backup::BackupRecord,
    Plan,
)> {
    use tradevault::backup::{Catalog, Target as BackupTarget};
    // Best effort: without usable targets, the replica alone is the plan.
    let targets = super::backup_targets(config, args.target.as_deref()).unwrap_or_default();
    let mut best: Option<(BackupTarget, tradevault::backup::BackupRecord, Plan)> = None;
    for t in targets {
        let Ok(catalog) = Catalog::load(&t) else {
            continue;
        };
        let mut candidates: Vec<_> = catalog
            .backups
            .iter()
            .filter(|b| b.database == db_name && (!b.encrypted || args.identity.is_some()))
            .filter(|b| source.is_none_or(|p| b.taken_from(p)))
            .filter(|b| b.state_max_ms <= plan.point_ms)
            .collect();
        candidates.sort_by_key(|b| std::cmp::Reverse(b.state_max_ms));
        for b in candidates.into_iter().take(3) {
            let header_time = |f: &tradevault::replica::ReplicaFile| replica.header_time(f);
            let Ok(tail) = restore::plan_after_listed(
                files,
                plan,
                b.state_min_ms,
                b.state_max_ms,
                &header_time,
            ) else {
                continue;
            };
            let cost = b.restore_bytes + tail.bytes;
            let better = best.as_ref().map_or(cost < plan.bytes, |(_, rb, rp)| {
                cost < rb.restore_bytes + rp.bytes
            });
            if better {
                best = Some((t.clone(), b.clone(), tail));
            }
        }
    }
    best
}

/// Whether a target `--target` names holds backups of a database called `name`.
fn on_targets(config: &tradevault::Config, args: &Args, name: &str) -> bool {
    super::backup_targets(config, args.target.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| tradevault::backup::Catalog::load(t).ok())
        .any(|c| c.backups.iter().any(|b| b.database == name))
}

/// The store restored in place holds the backup catalogs' mirror as it was then: mirror the
/// configured targets again (through the running server when it holds the store).
fn remirror(config: &tradevault::Config, db_name: &str) {
    if db_name != "store" || config.backup.target.is_empty() {
        return;
    }
    match super::backup_targets(config, None) {
        Ok(targets) => super::mirror_catalogs(config, &targets),
        Err(e) => {
            eprintln!("note: backup catalogs not mirrored again into the restored store: {e}")
        }
    }
}
