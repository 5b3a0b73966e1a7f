//! `tradevault backup create|list|show|stats|verify|prune`: thin over `tradevault::backup`.
//! Data on stdout (a table, or `--json`), progress and notes on stderr.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tradevault::Config;
use tradevault::backup::{
    self, BackupRecord, Catalog, CreateOptions, Identity, Kind, Progress, Target, VerifyOptions,
    retention,
};
use tradevault::restore::Check;

use crate::UsageError;

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Take a consistent online backup and write it to every target (or --target).
    Create(CreateArgs),
    /// List the backups on each target (or --target, even a bare one given by URL).
    List(ListArgs),
    /// Everything recorded about one backup.
    Show(ShowArgs),
    /// Counts, bytes, ratio, oldest and newest, last verified, last drill.
    Stats(TargetArgs),
    /// Check every object's checksum; --deep also restores, checks and counts rows.
    Verify(VerifyArgs),
    /// Delete what the targets' retention rules no longer keep (plan first, then apply).
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// A configured target's name, or a URL (file:///path, s3://bucket/path?endpoint=...);
    /// default: every configured target.
    #[arg(long, value_name = "NAME|URL")]
    target: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// A configured [[database]] name or a SQLite file's path; default: the store in --data-dir.
    #[arg(long, value_name = "NAME|PATH")]
    db: Option<String>,
    /// Why: manual (default), scheduled or safety.
    #[arg(long = "type", value_name = "TYPE", default_value = "manual")]
    kind: String,
    /// Take a full backup even where an incremental one could be taken.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Only backups of this database (its name in the catalog).
    #[arg(long, value_name = "NAME")]
    db: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// The backup's id (or a unique start of it).
    id: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The backup's id; default: the newest backup on each target.
    id: Option<String>,
    /// Every backup.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// Also decompress, restore to a scratch file, run PRAGMA integrity_check and compare rows.
    #[arg(long)]
    deep: bool,
    /// With --deep, run quick_check instead of integrity_check (indexes not compared with tables).
    #[arg(long, requires = "deep")]
    quick_check: bool,
    /// age identity file, for a deep verify of an encrypted backup.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Where the scratch database goes (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// Print the plan and delete nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    args: Args,
) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_file, data_dir)?;
    super::start_logging(&config)?;
    match args.command {
        Command::Create(a) => create(&config, a),
        Command::List(a) => list(&config, a),
        Command::Show(a) => show(&config, a),
        Command::Stats(a) => stats(&config, a),
        Command::Verify(a) => verify(&config, a),
        Command::Prune(a) => prune(&config, a),
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The targets named by `--target`, or every configured one.
fn targets(config: &Config, args: &TargetArgs) -> anyhow::Result<Vec<Target>> {
    super::backup_targets(config, args.target.as_deref())
}

fn create(config: &Config, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let kind: Kind = args
        .kind
        .parse()
        .map_err(|e: tradevault::Error| UsageError(e.to_string()))?;
    let targets = targets(config, &args.target)?;
    let super::Database { name, path: db, .. } = super::database(config, args.db.as_deref())?;
    let progress = Progress::default();
    let started = Instant::now();
    let now = || now_ms();
    let options = CreateOptions {
        db,
        source: None,
        database: name,
        kind,
        config: &config.backup,
        full: args.full,
        progress: Some(&progress),
        now: &now,
    };
    let manifests = with_progress(&progress, !args.target.json, "backup", || {
        backup::create(&targets, &options)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    super::mirror_catalogs(config, &targets);
    if args.target.json {
        let out: Vec<serde_json::Value> = manifests
            .iter()
            .zip(&targets)
            .map(|(m, t)| {
                serde_json::json!({
                    "target": t.name,
                    "id": m.id,
                    "database": m.database,
                    "type": m.kind,
                    "incremental": m.parent.is_some(),
                    "parent": m.parent,
                    "pages": m.page_count,
                    "pages_stored": m.pages_stored,
                    "size_bytes": m.size_bytes(),
                    "stored_bytes": m.stored_bytes(),
                    "tables": m.tables,
                    "state_min_ms": m.state_min_ms,
                    "state_max_ms": m.state_max_ms,
                    "seconds": seconds,
                })
            })
            .collect();
        super::print_json(&out)?;
    } else {
        for (m, t) in manifests.iter().zip(&targets) {
            let how = match &m.parent {
                Some(p) => format!(
                    "incremental on {p}, {} of {} pages",
                    m.pages_stored, m.page_count
                ),
                None => format!("full, {} pages", m.page_count),
            };
            outln!(
                "backup written: {} on {}: {} of {} stored ({how}) in {seconds:.2} s",
                m.id,
                t.name,
                super::human_bytes(m.stored_bytes()),
                super::human_bytes(m.size_bytes()),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(config: &Config, args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    for target in targets(config, &args.target)? {
        target.check_reachable()?;
        let catalog = Catalog::load(&target)?;
        for (id, e) in &catalog.unreadable {
            eprintln!(
                "tradevault: {}: backup {id} is not listed: {e}",
                target.name
            );
        }
        let backups: Vec<BackupRecord> = catalog
            .backups
            .into_iter()
            .filter(|b| args.db.as_deref().is_none_or(|d| b.database == d))
            .collect();
        out.push((target, backups, catalog.unreadable));
    }
    if args.target.json {
        let json: Vec<serde_json::Value> = out
            .iter()
            .map(|(t, b, bad)| {
                let b: Vec<_> = b.iter().map(record_json).collect();
                let bad: Vec<_> = bad
                    .iter()
                    .map(|(id, e)| serde_json::json!({"id": id, "error": e}))
                    .collect();
                serde_json::json!({"target": t.name, "url": t.describe(), "backups": b, "unreadable": bad})
            })
            .collect();
        super::print_json(&json)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (target, backups, _) in out {
        outln!(
            "{} ({}): {} backups",
            target.name,
            target.describe(),
            backups.len()
        );
        let mut t = super::table(&[
            "ID", "DATABASE", "TYPE", "KIND", "SIZE", "STORED", "VERIFIED",
        ]);
        for b in &backups {
            t.add_row(vec![
                b.id.clone(),
                b.database.clone(),
                b.kind.clone(),
                if b.depth == 0 {
                    "full".into()
                } else {
                    format!("incr {}", b.depth)
                },
                super::human_bytes(b.size_bytes),
                super::human_bytes(b.stored_bytes),
                verified_text(b),
            ]);
        }
        if !backups.is_empty() {
            outln!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A backup as `--json` shows it: the catalog's record, with its type also under `type` (the
/// name `backup create --json`, `--type` and the store's mirror use) and `verified` always
/// present (`null` until a verification ran).
fn record_json(b: &BackupRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(b).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("type".into(), serde_json::json!(b.kind));
        o.entry("verified").or_insert(serde_json::Value::Null);
    }
    v
}

fn verified_text(b: &BackupRecord) -> String {
    match &b.verified {
        None => "-".into(),
        Some(v) if v.ok => format!("{}{}", v.at, if v.deep { " (deep)" } else { "" }),
        Some(v) => format!("FAILED {}", v.at),
    }
}

fn show(config: &Config, args: ShowArgs) -> anyhow::Result<ExitCode> {
    let mut last_err = None;
    for target in targets(config, &args.target)? {
        target.check_reachable()?;
        let catalog = Catalog::load(&target)?;
        let record = match catalog.find(&args.id) {
            Ok(r) => r.clone(),
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let manifest = catalog.manifest(&target, &record.id)?;
        if args.target.json {
            super::print_json(&serde_json::json!({
                "target": target.name,
                "url": target.describe(),
                "backup": record_json(&record),
                "state_min": backup::format_ms(manifest.state_min_ms),
                "state_max": backup::format_ms(manifest.state_max_ms),
                "wal": manifest.wal,
                "ltx_txid": manifest.ltx_txid,
                "recipients": manifest.recipients,
                "segments": manifest.segments.len(),
                "packs": manifest.packs,
                "page_table": manifest.page_table,
            }))?;
        } else {
            let kind = if record.depth == 0 {
                "full".to_owned()
            } else {
                format!("incremental (depth {})", record.depth)
            };
            outln!(
                "backup {} on {} ({})",
                record.id,
                target.name,
                target.describe()
            );
            outln!("  database   {} ({})", record.database, record.source);
            outln!("  type       {}, {kind}", record.kind);
            outln!("  taken      {}", record.created);
            outln!(
                "  state      every commit before {}, none after {}",
                backup::format_ms(manifest.state_min_ms),
                backup::format_ms(manifest.state_max_ms)
            );
            outln!(
                "  size       {} ({} pages of {} bytes)",
                super::human_bytes(record.size_bytes),
                record.pages,
                record.page_size
            );
            outln!(
                "  stored     {} ({} pages), restore reads {}",
                super::human_bytes(record.stored_bytes),
                record.pages_stored,
                super::human_bytes(record.restore_bytes)
            );
            outln!(
                "  codec      {}{}",
                record.compression,
                if record.encrypted {
                    ", age-encrypted"
                } else {
                    ""
                }
            );
            outln!("  parent     {}", record.parent.as_deref().unwrap_or("-"));
            outln!(
                "  needs      {}",
                if record.depends_on.is_empty() {
                    "-".to_owned()
                } else {
                    record.depends_on.join(", ")
                }
            );
            outln!("  verified   {}", verified_text(&record));
            for (table, n) in &record.tables {
                outln!("  rows       {table}: {n}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    Err(last_err.map_or_else(|| anyhow::anyhow!("no backup {}", args.id), Into::into))
}

fn stats(config: &Config, args: TargetArgs) -> anyhow::Result<ExitCode> {
    let mut all = Vec::new();
    for target in targets(config, &args)? {
        target.check_reachable()?;
        let catalog = Catalog::load(&target)?;
        for (id, e) in &catalog.unreadable {
            eprintln!(
                "tradevault: {}: backup {id} is not counted: {e}",
                target.name
            );
        }
        all.push(catalog.stats(&target));
    }
    if args.json {
        super::print_json(&all)?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in all {
        outln!("{} ({})", s.target, s.url);
        for d in s.databases {
            outln!(
                "  {}: {} backups ({} full), {} stored, ratio {:.2}x{}",
                d.database,
                d.count,
                d.full,
                super::human_bytes(d.stored_bytes),
                d.ratio,
                d.full_ratio
                    .map(|r| format!(" (full backups {r:.2}x)"))
                    .unwrap_or_default()
            );
            if let (Some(o), Some(n)) = (&d.oldest, &d.newest) {
                outln!("    oldest {} ({}), newest {} ({})", o.1, o.0, n.1, n.0);
            }
            match &d.last_verified {
                Some((id, at, deep)) => outln!(
                    "    last verified {at}{} ({id})",
                    if *deep { " deep" } else { "" }
                ),
                None => outln!("    last verified: never"),
            }
            match &d.last_drill {
                Some(dr) => outln!(
                    "    last drill {} {} (rto {:.1} s)",
                    backup::format_ms(dr.at_ms),
                    if dr.ok { "ok" } else { "FAILED" },
                    dr.rto_seconds
                ),
                None => outln!("    last drill: never"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let identity = args
        .identity
        .as_deref()
        .map(Identity::from_file)
        .transpose()?;
    let now = || now_ms();
    let options = VerifyOptions {
        deep: args.deep,
        check: if args.quick_check {
            Check::Quick
        } else {
            Check::Integrity
        },
        identity: identity.as_ref(),
        scratch_dir: args.scratch_dir.clone(),
        now: &now,
        record: true,
    };
    let mut results = Vec::new();
    let mut unreadable = Vec::new();
    let targets = targets(config, &args.target)?;
    for target in &targets {
        target.check_reachable()?;
        let catalog = Catalog::load(target)?;
        // A manifest that cannot be read is a backup that does not verify.
        let damaged: Vec<&(String, String)> = catalog
            .unreadable
            .iter()
            .filter(|(id, _)| args.all || args.id.as_deref().is_some_and(|a| id.starts_with(a)))
            .collect();
        for (id, e) in &damaged {
            if !args.target.json {
                outln!("{id} on {}: CORRUPT\n  {e}", target.name);
            }
            unreadable.push(serde_json::json!({
                "target": target.name,
                "verification": {"id": id, "ok": false, "problems": [e]},
            }));
        }
        if !damaged.is_empty() && !args.all {
            continue;
        }
        let ids: Vec<String> = if args.all {
            catalog.backups.iter().map(|b| b.id.clone()).collect()
        } else if let Some(id) = &args.id {
            match catalog.find(id) {
                Ok(b) => vec![b.id.clone()],
                Err(e) if targets.len() > 1 && args.target.target.is_none() => {
                    tracing::info!(target = %target.name, error = %e, "not on this target");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            // The newest backup of each database file (retention wants one verified per file).
            catalog
                .newest_of_each_file()
                .into_iter()
                .map(|b| b.id.clone())
                .collect()
        };
        for id in ids {
            let v = backup::verify(target, &id, &options)?;
            if !args.target.json {
                if v.ok {
                    outln!(
                        "{} on {}: ok ({} objects, {} read{}) in {:.2} s",
                        v.id,
                        target.name,
                        v.objects,
                        super::human_bytes(v.bytes),
                        v.check
                            .as_deref()
                            .map(|c| format!(", {c} ok, rows match"))
                            .unwrap_or_default(),
                        v.seconds
                    );
                } else {
                    outln!("{} on {}: CORRUPT", v.id, target.name);
                    // A lost pack is one line per segment: the first ones say what and where
                    // (`--json` has them all).
                    const SHOWN: usize = 12;
                    for p in v.problems.iter().take(SHOWN) {
                        outln!("  {p}");
                    }
                    if v.problems.len() > SHOWN {
                        outln!(
                            "  ... and {} more problems (--json lists them all)",
                            v.problems.len() - SHOWN
                        );
                    }
                }
            }
            results.push((target.name.clone(), v));
        }
    }
    super::mirror_catalogs(config, &targets);
    if args.target.json {
        let json: Vec<serde_json::Value> = results
            .iter()
            .map(|(t, v)| serde_json::json!({"target": t, "verification": v}))
            .chain(unreadable.iter().cloned())
            .collect();
        super::print_json(&json)?;
    }
    if !unreadable.is_empty() {
        return Ok(ExitCode::from(1));
    }
    if results.is_empty() {
        if let Some(id) = &args.id {
            return Err(tradevault::Error::backup(
                "not_found",
                format!("no backup {id:?} on any target"),
                Some("run 'tradevault backup list' to see the ids"),
            )
            .into());
        }
        eprintln!("tradevault: no backup to verify");
    }
    if results.iter().any(|(_, v)| !v.ok) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn prune(config: &Config, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(config, &args.target)?;
    let now = now_ms();
    let mut plans = Vec::new();
    for target in &targets {
        target.check_reachable()?;
        let catalog = Catalog::load(target)?;
        let leftovers = retention::leftovers(target, &catalog, now)?;
        let plan = retention::plan(
            &target.name,
            &catalog,
            target.rules.as_ref(),
            now,
            leftovers,
        );
        plans.push(plan);
    }
    let mut refused = None;
    let mut applied = Vec::new();
    for (target, plan) in targets.iter().zip(&plans) {
        if !args.target.json {
            let verb = match (args.dry_run, plan.refused.is_some()) {
                (true, false) => "would delete",
                (true, true) => "would refuse to delete",
                (false, true) => "refusing to delete",
                (false, false) => "deleting",
            };
            outln!(
                "{}: {verb} {} backups ({}){}, keeping {}",
                target.name,
                plan.delete.len(),
                super::human_bytes(plan.bytes),
                if plan.leftovers.is_empty() {
                    String::new()
                } else {
                    format!(" and {} leftover objects", plan.leftovers.len())
                },
                plan.keep.len()
            );
            for d in &plan.delete {
                outln!(
                    "  delete {} ({}, {})",
                    d.id,
                    d.database,
                    super::human_bytes(d.bytes)
                );
            }
            for k in &plan.keep {
                outln!(
                    "  keep   {} ({}): {}",
                    k.id,
                    k.database,
                    k.reasons.join(", ")
                );
            }
            if let Some(why) = &plan.refused {
                outln!("  refused: {why}");
            }
        }
        if args.dry_run || (plan.is_empty() && plan.refused.is_none()) {
            continue;
        }
        match retention::apply(target, plan) {
            Ok(p) => applied.push(serde_json::json!({"target": target.name, "pruned": p})),
            Err(
                e @ tradevault::Error::Backup {
                    code: "prune_refused",
                    ..
                },
            ) => refused = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    super::mirror_catalogs(config, &targets);
    if args.target.json {
        super::print_json(
            &serde_json::json!({"dry_run": args.dry_run, "plans": plans, "applied": applied}),
        )?;
    }
    if let Some(e) = refused {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `work` with a progress bar on stderr (when it is a terminal and `show` is set).
fn with_progress<T>(
    progress: &Progress,
    show: bool,
    what: &str,
    work: impl FnOnce() -> tradevault::Result<T>,
) -> anyhow::Result<T> {
    let bar = if show && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:24}] {pos}/{len} pages, eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    let result = std::thread::scope(|s| {
        let (stop, stopped) = mpsc::channel::<()>();
        let bar = &bar;
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(100))
            {
                bar.set_length(progress.pages_total());
                bar.set_position(progress.pages_done());
            }
        });
        let r = work();
        drop(stop);
        r
    });
    bar.finish_and_clear();
    result.context(format!("{what} failed"))
}
