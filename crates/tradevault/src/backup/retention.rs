//! Retention: [`plan`] decides, from the catalog, the rules and `now` alone, which backups to
//! keep (and why) and which to delete; [`apply`] deletes exactly what a plan says. Nothing is
//! ever deleted without a plan computed first.
//!
//! Rules apply per database file (backups of two files that share a name are apart). A backup
//! is kept if any rule keeps it: the newest `keep_last`; those newer than `keep_within`; the
//! newest of each of the last `keep_hourly` hours (UTC, only hours that have a backup count),
//! and likewise days, ISO weeks and months. Then, whatever the rules: the newest verified backup
//! is kept, and so is every backup a kept one depends on (whose packs hold some of its pages).
//! With no rule at all, everything is kept. A plan that would delete backups of a file none of
//! whose backups passed a verification is refused: prune first needs one backup known to
//! restore.
//!
//! Leftovers of backups that never finished (packs and page tables without a manifest, older
//! than a day, and temporary files older than a day) are deleted too.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::catalog::{BackupRecord, Catalog, refresh_index};
use super::format::{manifest_key, pack_owner, pages_key};
use super::{Target, id_time_ms};
use crate::config::{BackupTargetConfig, parse_duration_ms};
use crate::error::{Error, Result};

/// Leftovers younger than this may belong to a backup still being written.
const LEFTOVER_AGE_MS: i64 = 86_400_000;

/// What prune would do on one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrunePlan {
    /// The target.
    pub target: String,
    /// Backups to delete: id, database, bytes freed.
    pub delete: Vec<Deletion>,
    /// Backups kept, each with why.
    pub keep: Vec<Kept>,
    /// Objects of unfinished backups (and temporary files) to delete: key, size.
    pub leftovers: Vec<(String, u64)>,
    /// Bytes freed in all.
    pub bytes: u64,
    /// Why the plan may not be applied, if it may not.
    pub refused: Option<String>,
}

/// A backup a plan deletes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deletion {
    /// Its id.
    pub id: String,
    /// Its database.
    pub database: String,
    /// Bytes it stored.
    pub bytes: u64,
}

/// A backup a plan keeps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kept {
    /// Its id.
    pub id: String,
    /// Its database.
    pub database: String,
    /// The rules that keep it (`last`, `within 7d`, `daily`, `newest verified`, `needed by X`).
    pub reasons: Vec<String>,
}

/// What applying a plan did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pruned {
    /// Backups deleted.
    pub backups: usize,
    /// Other objects deleted.
    pub leftovers: usize,
    /// Bytes freed.
    pub bytes: u64,
}

impl PrunePlan {
    /// `would delete 3 backups (12.4 GiB)`-style summary numbers: backups and bytes.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.leftovers.is_empty()
    }
}

/// Plans a prune of `catalog` under `rules` at `now_ms`; `leftovers` are the target's objects
/// that belong to no finished backup (see [`leftovers`]).
pub fn plan(
    target_name: &str,
    catalog: &Catalog,
    rules: Option<&BackupTargetConfig>,
    now_ms: i64,
    leftovers: Vec<(String, u64)>,
) -> PrunePlan {
    // Backups of different files are apart even when they share a name (two bots' `trades.db`
    // backed up by path): one file's newer backups never make another's go.
    let mut by_db: BTreeMap<(&str, std::path::PathBuf), Vec<&BackupRecord>> = BTreeMap::new();
    for b in &catalog.backups {
        by_db
            .entry((b.database.as_str(), b.file()))
            .or_default()
            .push(b);
    }
    let has_rule = rules.is_some_and(|r| {
        r.keep_last.is_some()
            || r.keep_within.is_some()
            || r.keep_hourly.is_some()
            || r.keep_daily.is_some()
            || r.keep_weekly.is_some()
            || r.keep_monthly.is_some()
    });
    let mut reasons: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    fn add<'a>(reasons: &mut BTreeMap<&'a str, Vec<String>>, id: &'a str, why: String) {
        reasons.entry(id).or_default().push(why);
    }
    let mut verified_groups = BTreeSet::new();
    for (group, list) in by_db.iter_mut() {
        // Newest first.
        list.sort_by(|a, b| b.id.cmp(&a.id));
        match rules.filter(|_| has_rule) {
            None => {
                for b in list.iter() {
                    add(&mut reasons, &b.id, "no retention rules".into());
                }
            }
            Some(r) => {
                if let Some(n) = r.keep_last {
                    for b in list.iter().take(n as usize) {
                        add(&mut reasons, &b.id, "last".into());
                    }
                }
                if let Some(w) = &r.keep_within
                    && let Some(ms) = parse_duration_ms(w)
                {
                    for b in list.iter().filter(|b| b.created_ms >= now_ms - ms) {
                        add(&mut reasons, &b.id, format!("within {w}"));
                    }
                }
                let buckets: [(Option<u64>, &str, fn(i64) -> String); 4] = [
                    (r.keep_hourly, "hourly", |ms| bucket(ms, "%Y-%m-%dT%H")),
                    (r.keep_daily, "daily", |ms| bucket(ms, "%Y-%m-%d")),
                    (r.keep_weekly, "weekly", |ms| bucket(ms, "%G-W%V")),
                    (r.keep_monthly, "monthly", |ms| bucket(ms, "%Y-%m")),
                ];
                for (n, name, key) in buckets {
                    let Some(n) = n else { continue };
                    let mut seen = BTreeSet::new();
                    for b in list.iter() {
                        if seen.len() as u64 >= n {
                            break;
                        }
                        if seen.insert(key(b.created_ms)) {
                            add(&mut reasons, &b.id, name.into());
                        }
                    }
                }
            }
        }
        if let Some(b) = list.iter().find(|b| b.verified_ok()) {
            add(&mut reasons, &b.id, "newest verified".into());
            verified_groups.insert(group.clone());
        }
    }
    // Dependencies of kept backups are kept, transitively (a dependency's own dependencies are
    // in its depends_on too, but follow them anyway), whichever file they were taken of.
    let by_id: BTreeMap<&str, &BackupRecord> =
        catalog.backups.iter().map(|b| (b.id.as_str(), b)).collect();
    let mut stack: Vec<String> = reasons.keys().map(|k| (*k).to_owned()).collect();
    while let Some(id) = stack.pop() {
        let Some(b) = by_id.get(id.as_str()) else {
            continue;
        };
        for dep in &b.depends_on {
            if let Some(d) = by_id.get(dep.as_str()) {
                let first = !reasons.contains_key(d.id.as_str());
                reasons
                    .entry(d.id.as_str())
                    .or_default()
                    .push(format!("needed by {id}"));
                if first {
                    stack.push(d.id.clone());
                }
            }
        }
    }
    let mut delete = Vec::new();
    let mut keep = Vec::new();
    let mut refused = None;
    for (group @ (db, file), list) in &by_db {
        let mut deleting = 0;
        for b in list.iter().rev() {
            match reasons.get(b.id.as_str()) {
                Some(why) => keep.push(Kept {
                    id: b.id.clone(),
                    database: (*db).to_owned(),
                    reasons: why.clone(),
                }),
                None => {
                    deleting += 1;
                    delete.push(Deletion {
                        id: b.id.clone(),
                        database: (*db).to_owned(),
                        bytes: b.stored_bytes,
                    });
                }
            }
        }
        if deleting > 0 && !verified_groups.contains(group) {
            let of = format!("{db} ({})", file.display());
            refused = Some(format!(
                "no backup of {of} on {target_name} passed a verification: prune deletes nothing until one has"
            ));
        }
    }
    // A backup whose manifest could not be read (damaged, or a GET that failed just now) is
    // invisible to every rule: its objects would look like leftovers, and a backup it depends
    // on unneeded. Nothing goes until every manifest reads.
    let (delete, leftovers) = if catalog.unreadable.is_empty() {
        (delete, leftovers)
    } else {
        refused = Some(format!(
            "{} backup manifest(s) on {target_name} cannot be read ({}): prune deletes nothing until every one can be read, or is removed",
            catalog.unreadable.len(),
            catalog.unreadable_list()
        ));
        (Vec::new(), Vec::new())
    };
    let bytes =
        delete.iter().map(|d| d.bytes).sum::<u64>() + leftovers.iter().map(|(_, n)| n).sum::<u64>();
    PrunePlan {
        target: target_name.to_owned(),
        delete,
        keep,
        leftovers,
        bytes,
        refused,
    }
}

fn bucket(ms: i64, format: &str) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::UTC)
                .strftime(format)
                .to_string()
        })
        .unwrap_or_default()
}

/// Objects of `target` that belong to no finished backup and are older than a day: packs and
/// page tables without a manifest, records of deleted backups, temporary files.
pub fn leftovers(target: &Target, catalog: &Catalog, now_ms: i64) -> Result<Vec<(String, u64)>> {
    // A backup whose manifest could not be read still owns its objects.
    let ids: BTreeSet<&str> = catalog
        .backups
        .iter()
        .map(|b| b.id.as_str())
        .chain(catalog.unreadable.iter().map(|(id, _)| id.as_str()))
        .collect();
    let old = |id: &str| id_time_ms(id).is_some_and(|t| t < now_ms - LEFTOVER_AGE_MS);
    let mut out = Vec::new();
    for (key, size) in target.list("packs/")? {
        if let Some(owner) = pack_owner(&key)
            && !ids.contains(owner)
            && old(owner)
        {
            out.push((key, size));
        }
    }
    for (key, size) in target.list("backups/")? {
        if let Some(id) = key
            .strip_prefix("backups/")
            .and_then(|k| k.strip_suffix(".pages"))
            && !ids.contains(id)
            && old(id)
        {
            out.push((key, size));
        }
    }
    for (key, size) in target.list("events/")? {
        if let Some(id) = key
            .strip_prefix("events/")
            .and_then(|k| k.split('/').next())
            && !ids.contains(id)
        {
            out.push((key, size));
        }
    }
    out.extend(target.stale_temporaries(now_ms, LEFTOVER_AGE_MS)?);
    Ok(out)
}

/// Deletes what `plan` says, newest backup first, each manifest first (so it leaves listings at
/// once), then its page table, records and packs; then the leftovers. Refused plans are not
/// applied. Newest first: an incremental backup reads its ancestors' packs, and is always newer
/// than they are, so a prune killed halfway never leaves a listed backup whose packs are gone.
pub fn apply(target: &Target, plan: &PrunePlan) -> Result<Pruned> {
    if let Some(why) = &plan.refused {
        return Err(Error::backup(
            "prune_refused",
            why.clone(),
            Some("run 'tradevault backup verify' (or --all) first"),
        ));
    }
    let packs = target.list("packs/")?;
    let events = target.list("events/")?;
    let mut bytes = 0;
    let mut newest_first: Vec<&Deletion> = plan.delete.iter().collect();
    newest_first.sort_by(|a, b| {
        id_time_ms(&b.id)
            .cmp(&id_time_ms(&a.id))
            .then(b.id.cmp(&a.id))
    });
    for d in newest_first {
        target.delete(&manifest_key(&d.id))?;
        target.delete(&pages_key(&d.id))?;
        for (key, _) in events
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("events/{}/", d.id)))
        {
            target.delete(key)?;
        }
        for (key, _) in packs
            .iter()
            .filter(|(k, _)| pack_owner(k) == Some(d.id.as_str()))
        {
            target.delete(key)?;
        }
        bytes += d.bytes;
        tracing::info!(target = %plan.target, id = %d.id, bytes = d.bytes, "backup deleted");
    }
    for (key, size) in &plan.leftovers {
        target.delete(key)?;
        bytes += size;
    }
    refresh_index(target);
    Ok(Pruned {
        backups: plan.delete.len(),
        leftovers: plan.leftovers.len(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::catalog::Verification;

    const HOUR: i64 = 3_600_000;
    const NOW: i64 = 1_763_800_000_000;

    fn record(hours_ago: i64, depth: u32, deps: &[String], verified: bool) -> BackupRecord {
        let ms = NOW - hours_ago * HOUR;
        let id = crate::backup::new_id(ms, "t");
        BackupRecord {
            id: id.clone(),
            database: "store".into(),
            source: "x".into(),
            kind: "scheduled".into(),
            created_ms: ms,
            created: String::new(),
            state_max_ms: ms,
            state_min_ms: ms,
            tables: BTreeMap::new(),
            size_bytes: 100,
            stored_bytes: 10,
            restore_bytes: 10,
            pages: 1,
            pages_stored: 1,
            page_size: 4096,
            compression: "zstd".into(),
            encrypted: false,
            parent: deps.last().cloned(),
            depends_on: deps.to_vec(),
            depth,
            verified: verified.then(|| Verification {
                id,
                at_ms: ms,
                at: String::new(),
                deep: false,
                check: None,
                ok: true,
                problems: vec![],
                objects: 1,
                bytes: 1,
                seconds: 0.0,
            }),
        }
    }

    fn catalog(backups: Vec<BackupRecord>) -> Catalog {
        let mut c = Catalog::empty();
        c.backups = backups;
        c
    }

    fn rules() -> BackupTargetConfig {
        BackupTargetConfig::new("t", "file:///t")
    }

    /// 48 hourly backups: a full one every 24 hours, incrementals in between; the oldest full
    /// one verified.
    fn chain() -> Vec<BackupRecord> {
        let mut out: Vec<BackupRecord> = Vec::new();
        let mut deps: Vec<String> = Vec::new();
        for h in (0..48).rev() {
            let depth = (47 - h) % 24;
            if depth == 0 {
                deps.clear();
            }
            let b = record(h, depth as u32, &deps, h == 47);
            deps.push(b.id.clone());
            out.push(b);
        }
        out
    }

    #[test]
    fn no_rules_keep_everything() {
        let c = catalog(chain());
        let p = plan("t", &c, None, NOW, vec![]);
        assert!(p.delete.is_empty());
        assert_eq!(p.keep.len(), 48);
    }

    #[test]
    fn keep_last_keeps_the_chain_it_needs_and_the_newest_verified() {
        let c = catalog(chain());
        let r = BackupTargetConfig {
            keep_last: Some(3),
            ..rules()
        };
        let p = plan("t", &c, Some(&r), NOW, vec![]);
        assert!(p.refused.is_none());
        let kept: BTreeSet<&str> = p.keep.iter().map(|k| k.id.as_str()).collect();
        // The newest 3 are incrementals 21..23 of the second chain: they need its full backup
        // and incrementals 1..20; the oldest backup (verified) stays too.
        assert_eq!(kept.len(), 24 + 1, "{kept:?}");
        let oldest = &c.backups[0];
        assert!(kept.contains(oldest.id.as_str()));
        let why = &p
            .keep
            .iter()
            .find(|k| k.id == oldest.id)
            .expect("kept")
            .reasons;
        assert!(why.contains(&"newest verified".to_owned()), "{why:?}");
        // Every kept backup's dependencies are kept.
        for b in &c.backups {
            if kept.contains(b.id.as_str()) {
                for d in &b.depends_on {
                    assert!(kept.contains(d.as_str()), "{} needs {d}", b.id);
                }
            }
        }
        assert_eq!(p.delete.len(), 48 - 25);
        assert_eq!(p.bytes, 23 * 10);
    }

    #[test]
    fn buckets_and_within() {
        let c = catalog(chain());
        let r = BackupTargetConfig {
            keep_within: Some("2h".into()),
            keep_daily: Some(1),
            ..rules()
        };
        let p = plan("t", &c, Some(&r), NOW, vec![]);
        let newest = &c.backups[47];
        let why = &p
            .keep
            .iter()
            .find(|k| k.id == newest.id)
            .expect("kept")
            .reasons;
        assert!(
            why.iter().any(|w| w == "within 2h") && why.iter().any(|w| w == "daily"),
            "{why:?}"
        );
    }

    #[test]
    fn refused_without_a_verified_backup() {
        let mut backups = chain();
        for b in &mut backups {
            b.verified = None;
        }
        let c = catalog(backups);
        let r = BackupTargetConfig {
            keep_last: Some(1),
            ..rules()
        };
        let p = plan("t", &c, Some(&r), NOW, vec![]);
        assert!(!p.delete.is_empty());
        assert!(p.refused.is_some());
    }

    #[test]
    fn files_sharing_a_name_are_kept_apart() {
        // Two bots' trades.db, backed up by path under the same name: the other file's newer
        // backups must not make this one's only backups go.
        let mut backups = Vec::new();
        for (source, hours) in [("/a/trades.db", [30, 20, 10]), ("/b/trades.db", [3, 2, 1])] {
            for h in hours {
                let mut b = record(h, 0, &[], h == 30 || h == 3);
                b.id = crate::backup::new_id(NOW - h * HOUR, source);
                b.database = "trades".into();
                b.source = source.into();
                backups.push(b);
            }
        }
        let c = catalog(backups);
        let r = BackupTargetConfig {
            keep_last: Some(1),
            ..rules()
        };
        let p = plan("t", &c, Some(&r), NOW, vec![]);
        assert!(p.refused.is_none(), "{:?}", p.refused);
        let kept: BTreeSet<&str> = p.keep.iter().map(|k| k.id.as_str()).collect();
        for (i, b) in c.backups.iter().enumerate() {
            // Per file: the newest (last) and the newest verified (first) stay.
            let expected = i % 3 != 1;
            assert_eq!(
                kept.contains(b.id.as_str()),
                expected,
                "{} of {}",
                b.id,
                b.source
            );
        }
        assert_eq!(p.delete.len(), 2);
    }
}
