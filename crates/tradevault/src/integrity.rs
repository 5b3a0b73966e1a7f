//! [`check`]: `PRAGMA integrity_check`'s verdict (or `quick_check`'s) on a database file that
//! nothing writes (a restored or staged copy), using both cores.
//!
//! SQLite checks on one thread: its b-tree pass (`OP_IntegrityCk`), then every row of every
//! table (a whole record, NOT NULL, column types, CHECK constraints), then for
//! `integrity_check`, every index entry each row needs, by random b-tree seeks that cost 3-5x
//! the rest. Here two threads share the same work, tree by tree, reading each page once:
//!
//! - [`tree`]: every page belongs to exactly one b-tree, overflow chain or the freelist; every
//!   b-tree page is well formed; rowids ascend; leaves lie at one depth;
//! - [`rows`]: each row of a table passes `quick_check`'s tests, and for each index, the key the
//!   index must hold (its columns and the rowid) is hashed and added to that index's sum;
//! - each index is read in key order; every entry must sort strictly after the one before it
//!   (per column collation and direction), a unique index must not repeat a key without NULLs,
//!   the rowid must end the record, and each entry is hashed into the index's own sum;
//! - the two sums and counts must be equal: the index holds exactly the table's keys. Under
//!   `quick_check`, only the counts of indexes that are not partial.
//!
//! Values are hashed as SQLite compares them in a lookup: an integer and a real of equal value
//! hash alike (a REAL column stores 3.0 as the integer 3), text and blobs byte for byte. The hash
//! is keyed by a seed drawn at random for each check, so that no value can be crafted to meet
//! another.
//!
//! The walk never has the last word. Whatever it cannot model and whatever it finds wrong goes
//! to SQLite, whose output is the result:
//!
//! - a table whose rows or indexes the walk cannot judge (expression indexes, partial ones
//!   other than `WHERE column IS NOT NULL`, generated columns, `WITHOUT ROWID`, other
//!   collations, a row it refuses) gets `PRAGMA integrity_check(TABLE)` (or `quick_check`),
//!   while the walk still accounts for its pages;
//! - a table's CHECK constraints, which SQLite drops from a read-only schema, are read from its
//!   definition and evaluated by a query over its rows ([`checks_job`]);
//! - a file the walk cannot model (auto-vacuum, another text encoding, virtual tables, a header
//!   that disagrees with the file's length) or finds a fault in gets SQLite's check of the whole
//!   file (on a connection that can write when a table has CHECK constraints).
//!
//! So every finding comes from SQLite, and the walk's `ok` must be as strong as SQLite's: it is
//! stricter wherever that is simpler, and the tests compare its verdicts with SQLite's on many
//! schemas and on randomly damaged copies.

mod plan;
mod rows;
#[cfg(test)]
mod tests;
mod tree;
mod value;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::error::{Error, Result};

use self::plan::{Collation, Constraints, Index, Plan, Table, plan, quote};
use self::rows::{IndexCheck, RowCheck};
use self::tree::{Claims, Walked};
use self::value::{Field, Hasher, Value, be32, compare, record, varint};

/// How a database is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Check {
    /// `PRAGMA integrity_check`: every b-tree, every index against its table. The default.
    #[default]
    #[serde(rename = "integrity_check")]
    Integrity,
    /// `PRAGMA quick_check`: every b-tree, but indexes are not compared with their tables.
    #[serde(rename = "quick_check")]
    Quick,
}

impl Check {
    /// The pragma whose verdict it gives.
    pub fn pragma(self) -> &'static str {
        match self {
            Check::Integrity => "integrity_check",
            Check::Quick => "quick_check",
        }
    }
}

/// SQLite reports at most this many problems per check.
const MAX_PROBLEMS: usize = 20;

/// The threads a check uses.
const THREADS: usize = 2;

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// SQLite's lines, empty when it said `ok`.
    pub problems: Vec<String>,
    /// Rows per table, when asked for (tables whose count failed are missing).
    pub rows: BTreeMap<String, u64>,
}

/// Checks the database file at `path`, which nothing may write meanwhile; with `count_rows`, also
/// counts every table's rows.
pub fn check(path: &Path, check: Check, count_rows: bool) -> Result<Checked> {
    let conn = open(path)?;
    let planned = plan(&conn, path, check);
    match &planned {
        Ok(plan) if !plan.whole => match walk(path, plan, check) {
            Ok(walked) => {
                if !walked.handed.is_empty() {
                    tracing::debug!(handed = ?walked.handed, "SQLite checked tables the walk could not");
                }
                let mut rows = walked.rows;
                rows.retain(|name, _| count_rows && plan.counted.iter().any(|(n, _)| n == name));
                return Ok(Checked {
                    problems: walked.problems,
                    rows,
                });
            }
            Err(why) => {
                tracing::debug!(why, "the walk found a fault; SQLite checks the whole file")
            }
        },
        Ok(_) => tracing::debug!("the walk cannot model this file; SQLite checks it"),
        Err(e) => tracing::debug!(error = %e, "schema unreadable; SQLite checks the whole file"),
    }
    let counted = match planned {
        Ok(plan) => plan.counted,
        Err(_) => crate::snapshot::tables(&conn, path).unwrap_or_default(),
    };
    whole(path, &conn, check, count_rows.then_some(counted.as_slice()))
}

/// SQLite's check of the whole file; the rows counted by SQL on a second thread meanwhile.
fn whole(
    path: &Path,
    conn: &Connection,
    check: Check,
    counted: Option<&[(String, u32)]>,
) -> Result<Checked> {
    let (checked, rows) = std::thread::scope(|s| {
        let rows = s.spawn(|| -> Result<(BTreeMap<String, u64>, Vec<String>)> {
            let (mut rows, mut problems) = (BTreeMap::new(), Vec::new());
            let Some(tables) = counted else {
                return Ok((rows, problems));
            };
            let conn = open(path)?;
            for (table, _) in tables {
                let n: std::result::Result<i64, _> =
                    conn.query_row(&format!("SELECT count(*) FROM {}", quote(table)), [], |r| {
                        r.get(0)
                    });
                match n {
                    Ok(n) => {
                        rows.insert(table.clone(), n as u64);
                    }
                    Err(e) => problems.push(format!("count rows of {table}: {e}")),
                }
            }
            Ok((rows, problems))
        });
        // CHECK constraints need a connection that can write; if SQLite cannot evaluate them
        // there for want of a function (one only the program that wrote the file defines), its
        // read-only check, which skips them, is the verdict.
        let mut lines = None;
        if schema_has_checks(conn)
            && let Ok(writable) = open_for_checks(path, beside(path))
        {
            lines = pragma_lines(&writable, check.pragma(), None)
                .ok()
                .filter(|l| !unknown_function(l, check));
        }
        let lines = lines.map_or_else(|| pragma_lines(conn, check.pragma(), None), Ok);
        (lines, rows.join())
    });
    let mut problems = checked?;
    let (rows, more) = rows.map_err(|_| Error::Internal {
        message: "the row count thread panicked".into(),
    })??;
    problems.extend(more);
    problems.truncate(MAX_PROBLEMS);
    Ok(Checked { problems, rows })
}

/// Opens the file read-only and immutable (no `-wal` or `-shm` beside it), mapped: SQLite reads
/// pages in place from the page cache instead of one `pread` per page.
fn open(path: &Path) -> Result<Connection> {
    let uri = format!("file:{}?immutable=1", uri_path(path));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(&uri, flags)
        .map_err(|e| Error::sqlite("open database to check", e))?;
    conn.pragma_update(None, "mmap_size", file_len(path))
        .map_err(|e| Error::sqlite("map database to check", e))?;
    Ok(conn)
}

/// `path` as the path of a `file:` URI.
fn uri_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

fn file_len(path: &Path) -> i64 {
    std::fs::metadata(path).map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX))
}

/// A connection whose checks run CHECK constraints: SQLite drops them from the schema of a
/// database it cannot write, so this one opens the file for writing, though nothing writes
/// (`query_only`). A database in WAL mode gets a `-wal` and `-shm` beside it while the connection
/// is open, removed when it closes (the file itself is left as it was). A `-wal` or `-shm`
/// already there would be read as part of the database, a `-journal` rolled back into it: then
/// (`beside`), or if the file cannot be opened for writing, the read-only connection is used
/// and CHECK constraints go untested (as `PRAGMA integrity_check` leaves them on a read-only
/// file).
fn open_for_checks(path: &Path, beside: Option<PathBuf>) -> Result<Connection> {
    let writable = if let Some(file) = beside {
        Err(format!("{} is beside it", file.display()))
    } else {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI;
        Connection::open_with_flags(format!("file:{}", uri_path(path)), flags)
            .and_then(|c| {
                c.pragma_update(None, "query_only", true)?;
                c.pragma_update(None, "mmap_size", file_len(path))?;
                // SQLite opens the file, and a WAL-mode file's `-wal`, at the first read. A
                // schema it cannot read now (a CHECK naming no column) is for the check to
                // report, on this connection.
                match c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())) {
                    Err(e)
                        if matches!(
                            e.sqlite_error_code(),
                            Some(
                                rusqlite::ErrorCode::CannotOpen
                                    | rusqlite::ErrorCode::ReadOnly
                                    | rusqlite::ErrorCode::PermissionDenied
                                    | rusqlite::ErrorCode::SystemIoFailure
                            )
                        ) =>
                    {
                        Err(e)
                    }
                    _ => Ok(c),
                }
            })
            .map_err(|e| e.to_string())
    };
    writable.or_else(|why| {
        tracing::warn!(path = %path.display(), why, "CHECK constraints not tested: the file cannot be opened for writing");
        open(path)
    })
}

/// A file SQLite would read or roll back with the database if opened for writing (`-wal`,
/// `-shm`, `-journal`), looked for before the check's own connections make any.
fn beside(path: &Path) -> Option<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", path.display())))
        .find(|p| p.exists())
}

/// Whether any table of the schema has CHECK constraints.
fn schema_has_checks(conn: &Connection) -> bool {
    conn.prepare("SELECT sql FROM sqlite_schema WHERE type = 'table'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, Option<String>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .is_ok_and(|sqls| {
            sqls.iter()
                .flatten()
                .any(|sql| plan::check_constraints(sql) != Constraints::None)
        })
}

/// Whether `lines` are [`pragma_lines`]'s account of a pragma that could not run for want of a
/// function (one only the program that wrote the file defines, in a CHECK constraint).
fn unknown_function(lines: &[String], check: Check) -> bool {
    matches!(lines, [line] if line.starts_with(&format!("{} failed: ", check.pragma()))
        && missing_function(line))
}

/// SQLite's message for a function it does not know (older and newer wordings).
fn missing_function(message: &str) -> bool {
    message.contains("no such function") || message.contains("unknown function")
}

/// The lines of `PRAGMA <pragma>`, or of `PRAGMA <pragma>('table')`; empty for `ok`. A database
/// SQLite cannot even read is one line saying why.
fn pragma_lines(conn: &Connection, pragma: &str, table: Option<&str>) -> Result<Vec<String>> {
    let sql = match table {
        Some(t) => format!("PRAGMA {pragma}('{}')", t.replace('\'', "''")),
        None => format!("PRAGMA {pragma}({MAX_PROBLEMS})"),
    };
    let lines: std::result::Result<Vec<String>, _> = conn
        .prepare(&sql)
        .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect());
    Ok(match lines {
        Ok(l) if l == ["ok"] => Vec::new(),
        Ok(l) => l,
        Err(e) => vec![format!("{pragma} failed: {e}")],
    })
}

/// One piece of the work of a check.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// A table's tree (and its rows).
    Table(usize),
    /// An index's tree: the table, the index.
    Index(usize, usize),
    Freelist,
    /// SQLite's check of a table.
    Sqlite(usize, Check),
    /// A table's CHECK constraints.
    Checks(usize),
}

/// What a job found; `Err` is a fault in the file's structure.
#[derive(Debug)]
enum Done {
    Tree(std::result::Result<Walked, Why>, Option<Sum>, Vec<Sum>),
    Freelist(std::result::Result<(), Why>),
    Sqlite(Result<Vec<String>>),
    Checks(Result<Vec<String>>),
}

/// What the walk of a whole file found.
#[derive(Debug)]
struct Walk {
    /// SQLite's lines for the tables it checked.
    problems: Vec<String>,
    /// Every table's rows.
    rows: BTreeMap<String, u64>,
    /// The tables the walk handed to SQLite, and why.
    handed: Vec<(String, Why)>,
}

/// The walk of the whole file, on both cores; `Err` when SQLite must check the whole file.
fn walk(path: &Path, plan: &Plan, check: Check) -> std::result::Result<Walk, Why> {
    let pages = Pages::open(path).map_err(|_| "the file cannot be read")?;
    let (free_first, free_total) = pages.modelled()?;
    let claims = Claims::new(pages.count, pages.page_size);
    let seed = Hasher::random_seed();
    // The biggest jobs first (longest first shares two threads best): a tree's size is guessed
    // from its leftmost path, SQLite's check of a table costs about twice the walk's.
    let mut jobs = Vec::new();
    for (t, table) in plan.tables.iter().enumerate() {
        let size = tree::guess(&pages, table.root);
        jobs.push((size, Job::Table(t)));
        for (i, index) in table.indexes.iter().enumerate() {
            jobs.push((tree::guess(&pages, index.root), Job::Index(t, i)));
        }
        if let Some(c) = table.sqlite(check) {
            jobs.push((2 * size, Job::Sqlite(t, c)));
        }
        if matches!(table.constraints, Constraints::Checks(_)) {
            jobs.push((size, Job::Checks(t)));
        }
    }
    jobs.push((0, Job::Freelist));
    jobs.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    let jobs: Vec<Job> = jobs.into_iter().map(|(_, job)| job).collect();
    let done = run(path, &jobs, |job, conn| match job {
        Job::Table(t) => table_job(&pages, &claims, &plan.tables[t], check, seed),
        Job::Index(t, i) => index_job(&pages, &claims, &plan.tables[t], i, check, seed),
        Job::Freelist => Done::Freelist(tree::freelist(&pages, &claims, free_first, free_total)),
        Job::Sqlite(t, c) => sqlite_job(conn, &plan.tables[t], c),
        Job::Checks(t) => checks_job(conn, &plan.tables[t]),
    })?;

    // Any fault in the structure, or a page nobody owns: SQLite describes the file.
    let mut trees: BTreeMap<(usize, Option<usize>), (Walked, Option<Sum>, Vec<Sum>)> =
        BTreeMap::new();
    // SQLite's lines, by table, and for CHECK constraints.
    let mut said = BTreeMap::new();
    let mut constraints = Vec::new();
    for (job, done) in jobs.iter().zip(done) {
        match (job, done) {
            (Job::Table(t), Done::Tree(walked, sum, sums)) => {
                trees.insert((*t, None), (walked?, sum, sums));
            }
            (Job::Index(t, i), Done::Tree(walked, sum, sums)) => {
                trees.insert((*t, Some(*i)), (walked?, sum, sums));
            }
            (Job::Freelist, Done::Freelist(freed)) => freed?,
            (Job::Sqlite(t, _), Done::Sqlite(lines)) => {
                said.insert(*t, lines.map_err(|_| "SQLite could not check a table")?);
            }
            (Job::Checks(_), Done::Checks(lines)) => {
                constraints.extend(lines.map_err(|_| "SQLite could not check a table")?);
            }
            _ => return Err("a job's result went astray"),
        }
    }
    if !claims.all_claimed() {
        return Err("a page is never used");
    }

    // Each table the walk judged: its indexes must hold its rows' keys.
    let (mut again, mut handed) = (Vec::new(), Vec::new());
    let mut rows = BTreeMap::new();
    for (t, table) in plan.tables.iter().enumerate() {
        let (walked, _, sums) = &trees[&(t, None)];
        rows.insert(table.name.clone(), walked.cells);
        if !table.walked(check) {
            continue;
        }
        let mut why = walked.refused;
        for (i, index) in table.indexes.iter().enumerate() {
            let (entries, sum, _) = &trees[&(t, Some(i))];
            let agrees = match check {
                Check::Integrity => entries.refused.is_none() && sum.as_ref() == sums.get(i),
                Check::Quick => index.partial || entries.cells == walked.cells,
            };
            if !agrees {
                tracing::debug!(table = %table.name, index = %index.name, "index check failed");
                why = why
                    .or(entries.refused)
                    .or(Some("an index disagrees with its table"));
            }
        }
        if let Some(why) = why {
            tracing::debug!(table = %table.name, why, "the walk handed the table to SQLite");
            handed.push((table.name.clone(), why));
            again.push(t);
        }
    }
    // The schema's own table has no name SQLite checks alone.
    if again.contains(&0) {
        return Err("the schema's rows need SQLite");
    }
    let jobs: Vec<Job> = again.into_iter().map(|t| Job::Sqlite(t, check)).collect();
    let done = run(path, &jobs, |job, conn| match job {
        Job::Sqlite(t, c) => sqlite_job(conn, &plan.tables[t], c),
        _ => Done::Freelist(Err("only SQLite's jobs run again")),
    })?;
    for (job, done) in jobs.iter().zip(done) {
        match (job, done) {
            // The whole table's check says all its rows' check said, if it ran before.
            (Job::Sqlite(t, _), Done::Sqlite(lines)) => {
                said.insert(*t, lines.map_err(|_| "SQLite could not check a table")?);
            }
            _ => return Err("a job's result went astray"),
        }
    }
    let mut problems: Vec<String> = said.into_values().flatten().collect();
    problems.extend(constraints);
    problems.truncate(MAX_PROBLEMS);
    Ok(Walk {
        problems,
        rows,
        handed,
    })
}

/// Runs `jobs` on [`THREADS`] threads, each taking the next job when it is free; stops early
/// when a job finds a fault. `work` gets a job and a way to this thread's SQLite connection.
fn run<F>(path: &Path, jobs: &[Job], work: F) -> std::result::Result<Vec<Done>, Why>
where
    F: Fn(Job, &mut Lazy<'_>) -> Done + Sync,
{
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let beside = beside(path);
    let done: Vec<Mutex<Option<Done>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..THREADS.min(jobs.len()) {
            s.spawn(|| {
                let mut conn = Lazy {
                    path,
                    conn: None,
                    writable: None,
                    beside: beside.clone(),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = std::time::Instant::now();
                    let d = work(jobs[i], &mut conn);
                    tracing::debug!(job = ?jobs[i], seconds = started.elapsed().as_secs_f64(), "check job done");
                    if matches!(
                        d,
                        Done::Tree(Err(_), ..)
                            | Done::Freelist(Err(_))
                            | Done::Sqlite(Err(_))
                            | Done::Checks(Err(_))
                    ) {
                        stop.store(true, Ordering::Relaxed);
                    }
                    *done[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
                }
            });
        }
    });
    let done: Vec<Option<Done>> = done
        .into_iter()
        .map(|d| d.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    // The fault that stopped the others, rather than the jobs it left undone.
    for d in done.iter().flatten() {
        match d {
            Done::Tree(Err(why), ..) | Done::Freelist(Err(why)) => return Err(why),
            Done::Sqlite(Err(_)) | Done::Checks(Err(_)) => {
                return Err("SQLite could not check a table");
            }
            _ => {}
        }
    }
    done.into_iter()
        .map(|d| d.ok_or("a job did not run"))
        .collect()
}

/// A thread's connections for SQLite's checks, each opened when first needed.
struct Lazy<'p> {
    path: &'p Path,
    conn: Option<Connection>,
    /// For tables with CHECK constraints (see [`open_for_checks`]).
    writable: Option<Connection>,
    /// What lay beside the file before the check began (see [`beside`]).
    beside: Option<PathBuf>,
}

impl Lazy<'_> {
    fn get(&mut self, checks: bool) -> Result<&Connection> {
        if checks {
            if self.writable.is_none() {
                self.writable = Some(open_for_checks(self.path, self.beside.clone())?);
            }
            return Ok(self.writable.as_ref().expect("just opened"));
        }
        if self.conn.is_none() {
            self.conn = Some(open(self.path)?);
        }
        Ok(self.conn.as_ref().expect("just opened"))
    }
}

/// SQLite's check of one table.
fn sqlite_job(conn: &mut Lazy<'_>, table: &Table, check: Check) -> Done {
    let lines = |conn: &mut Lazy<'_>, writable| {
        conn.get(writable)
            .and_then(|conn| pragma_lines(conn, check.pragma(), Some(&table.name)))
    };
    if table.constraints == Constraints::Unreadable {
        // As in [`whole`]: constraints SQLite cannot evaluate go untested.
        match lines(conn, true) {
            Ok(l) if unknown_function(&l, check) => {}
            done => return Done::Sqlite(done),
        }
    }
    Done::Sqlite(lines(conn, false))
}

/// A table's CHECK constraints, evaluated over its rows (read from the table itself, never from
/// an index `quick_check` did not compare with it): SQLite's line for each row where one is
/// false. An expression SQLite cannot prepare, or that fails on a row (an integer overflow,
/// malformed JSON), is a problem as it is for SQLite's own check; only constraints calling a
/// function SQLite does not know (one only the program that wrote the file defines) go
/// untested, as on a read-only file.
fn checks_job(conn: &mut Lazy<'_>, table: &Table) -> Done {
    let Constraints::Checks(exprs) = &table.constraints else {
        return Done::Checks(Ok(Vec::new()));
    };
    let failing: Vec<String> = exprs.iter().map(|e| format!("NOT ({e})")).collect();
    let sql = format!(
        "SELECT count(*) FROM {} NOT INDEXED WHERE {}",
        quote(&table.name),
        failing.join(" OR ")
    );
    let conn = match conn.get(false) {
        Ok(c) => c,
        Err(e) => return Done::Checks(Err(e)),
    };
    let mut statement = match conn.prepare(&sql) {
        Ok(s) => s,
        Err(e) if missing_function(&e.to_string()) => {
            tracing::warn!(table = %table.name, error = %e, "CHECK constraints not tested: SQLite does not know a function they call");
            return Done::Checks(Ok(Vec::new()));
        }
        Err(e) => {
            return Done::Checks(Ok(vec![format!(
                "CHECK constraints of {} cannot be read: {e}",
                table.name
            )]));
        }
    };
    Done::Checks(Ok(match statement.query_row([], |r| r.get::<_, i64>(0)) {
        Ok(n) => vec![
            format!("CHECK constraint failed in {}", table.name);
            usize::try_from(n).unwrap_or(0).min(MAX_PROBLEMS)
        ],
        Err(e) => vec![format!(
            "CHECK constraints of {} failed to run: {e}",
            table.name
        )],
    }))
}

/// Walks a table's tree: its rows checked and its indexes' keys summed when the walk judges it.
fn table_job(pages: &Pages, claims: &Claims, table: &Table, check: Check, seed: u64) -> Done {
    let kind = if table.rowid {
        tree::Kind::Table
    } else {
        tree::Kind::Index
    };
    let walked = table.walked(check);
    let rules = table.rows.as_ref().filter(|_| walked);
    let models: Vec<&Index> = match check {
        Check::Integrity if walked => table
            .indexes
            .iter()
            .filter_map(|i| i.model.as_ref())
            .collect(),
        _ => Vec::new(),
    };
    if rules.is_none() && models.is_empty() {
        return Done::Tree(
            tree::walk(pages, claims, table.root, kind, None),
            None,
            Vec::new(),
        );
    }
    let mut rows = RowCheck::new(rules, &models, seed);
    let walked = tree::walk(
        pages,
        claims,
        table.root,
        kind,
        Some(&mut |rowid, payload| rows.row(rowid, payload)),
    );
    Done::Tree(walked, None, rows.sums)
}

/// Walks an index's tree, its entries checked and summed when the walk judges its table.
fn index_job(
    pages: &Pages,
    claims: &Claims,
    table: &Table,
    i: usize,
    check: Check,
    seed: u64,
) -> Done {
    let index = &table.indexes[i];
    let model = match check {
        Check::Integrity if table.walked(check) => index.model.as_ref(),
        _ => None,
    };
    let Some(model) = model else {
        return Done::Tree(
            tree::walk(pages, claims, index.root, tree::Kind::Index, None),
            None,
            Vec::new(),
        );
    };
    let mut entries = IndexCheck::new(model, seed);
    let walked = tree::walk(
        pages,
        claims,
        index.root,
        tree::Kind::Index,
        Some(&mut |_, payload| entries.entry(payload)),
    );
    Done::Tree(walked, Some(entries.sum), Vec::new())
}

/// The b-tree page kinds (the first byte of a page's header).
pub(crate) const INTERIOR_INDEX: u8 = 2;
pub(crate) const INTERIOR_TABLE: u8 = 5;
pub(crate) const LEAF_INDEX: u8 = 10;
pub(crate) const LEAF_TABLE: u8 = 13;

/// Why the walk handed a table or the file to SQLite.
type Why = &'static str;

/// The database file, read a page at a time.
struct Pages {
    file: File,
    page_size: usize,
    usable: usize,
    count: u32,
    /// The file's length in bytes.
    len: u64,
    header: [u8; 100],
}

/// One index's side of the comparison: entries and the sum of their hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sum {
    entries: u64,
    hash: u64,
}

impl Sum {
    fn add(&mut self, h: u64) {
        self.entries += 1;
        self.hash = self.hash.wrapping_add(h);
    }
}

impl Pages {
    fn open(path: &Path) -> Result<Pages> {
        let file = File::open(path).map_err(|e| Error::io("open database to check", path, e))?;
        let mut header = [0u8; 100];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| Error::io("read database header", path, e))?;
        let page_size = match u16::from_be_bytes([header[16], header[17]]) {
            1 => 65_536,
            n => usize::from(n),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat database to check", path, e))?
            .len();
        let usable = page_size.saturating_sub(usize::from(header[20]));
        Ok(Pages {
            file,
            page_size,
            usable,
            count: u32::try_from(len / page_size.max(1) as u64).unwrap_or(u32::MAX),
            len,
            header,
        })
    }

    /// Checks that the walk can model the file (a page size SQLite allows, no auto-vacuum, a
    /// page count that matches the file's length) and returns its freelist: the first trunk page
    /// and the number of pages.
    fn modelled(&self) -> std::result::Result<(u32, u32), Why> {
        let h = &self.header;
        let word = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        if !self.page_size.is_power_of_two()
            || !(512..=65_536).contains(&self.page_size)
            || self.usable < 480
        {
            return Err("a page size SQLite does not allow");
        }
        if !self.len.is_multiple_of(self.page_size as u64) || self.count == 0 {
            return Err("the file is not a whole number of pages");
        }
        // Auto-vacuum's pointer maps are SQLite's to check.
        if word(52) != 0 || word(64) != 0 {
            return Err("an auto-vacuum file");
        }
        // The header's page count holds when its change counter is current.
        if word(24) != word(92) || word(28) != self.count {
            return Err("the header's page count differs from the file's");
        }
        Ok((word(32), word(36)))
    }

    fn read(&self, pgno: u32, buf: &mut Vec<u8>) -> std::result::Result<(), Why> {
        buf.resize(self.page_size, 0);
        self.read_at(pgno, buf)
    }

    /// Reads `buf.len()` bytes from the start of page `pgno` (a page's first bytes, or a run of
    /// pages).
    fn read_at(&self, pgno: u32, buf: &mut [u8]) -> std::result::Result<(), Why> {
        if pgno == 0 || pgno > self.count {
            return Err("page number out of range");
        }
        self.file
            .read_exact_at(buf, u64::from(pgno - 1) * self.page_size as u64)
            .map_err(|_| "page unreadable")
    }

    /// The least and most payload a cell keeps on its page (table leaves keep more).
    fn local_bounds(&self, table_leaf: bool) -> (usize, usize) {
        let u = self.usable;
        let min = (u - 12) * 32 / 255 - 23;
        let max = if table_leaf {
            u - 35
        } else {
            (u - 12) * 64 / 255 - 23
        };
        (min, max)
    }
}
