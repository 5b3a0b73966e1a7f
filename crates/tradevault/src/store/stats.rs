//! What `stats` and `check` report: counts, sizes and pages (seed 000's `get_database_stats`),
//! and the health checks: SQLite integrity, foreign keys, and positions recomputed from fills.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use super::position::{self, Fill, PositionState};
use super::schema;
use crate::error::{Error, Result};
use crate::exact::{format_decimal, stored_decimal};

/// Counts, sizes and health of the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The database file.
    pub database_path: String,
    /// Schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    /// Rows per table.
    pub tables: BTreeMap<String, i64>,
    /// Size of the database file.
    pub database_file_size_bytes: u64,
    /// Size of the WAL file.
    pub wal_file_size_bytes: u64,
    /// Both.
    pub total_size_bytes: u64,
    /// Pages in the database.
    pub page_count: i64,
    /// Bytes per page.
    pub page_size: i64,
    /// Unused pages.
    pub freelist_count: i64,
    /// `ok`, or what SQLite's integrity check reported.
    pub integrity: String,
    /// `integrity == "ok"`.
    pub integrity_ok: bool,
    /// When that check ran (absent: just now).
    pub integrity_checked_at: Option<String>,
}

/// Runs `PRAGMA quick_check` and returns `ok` or its first lines.
pub(crate) fn quick_check_text(conn: &Connection, path: &Path) -> Result<String> {
    integrity_text(conn, path, "quick_check")
}

fn integrity_text(conn: &Connection, path: &Path, pragma: &str) -> Result<String> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA {pragma}(20)"))
        .map_err(|e| Error::sqlite_at(path, "check integrity", e))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| Error::sqlite_at(path, "check integrity", e))?;
    Ok(lines.join("; "))
}

pub(crate) fn collect(
    conn: &Connection,
    path: &Path,
    integrity: String,
    checked_at: Option<jiff::Timestamp>,
) -> Result<Stats> {
    let q = |sql: &str| {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map_err(|e| Error::sqlite("read stats", e))
    };
    let mut tables = BTreeMap::new();
    for t in schema::TABLES {
        tables.insert((*t).to_owned(), q(&format!("SELECT count(*) FROM {t}"))?);
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let db_bytes = size(path);
    let wal_bytes = size(&super::wal_path(path));
    Ok(Stats {
        database_path: path.display().to_string(),
        schema_version: schema::version(conn)?,
        tables,
        database_file_size_bytes: db_bytes,
        wal_file_size_bytes: wal_bytes,
        total_size_bytes: db_bytes + wal_bytes,
        page_count: q("PRAGMA page_count")?,
        page_size: q("PRAGMA page_size")?,
        freelist_count: q("PRAGMA freelist_count")?,
        integrity_ok: integrity == "ok",
        integrity,
        integrity_checked_at: checked_at.map(crate::exact::format_timestamp),
    })
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `integrity`, `foreign_keys`, `positions`, `schema`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// Every check `tradevault check` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The database file.
    pub database_path: String,
    /// True when every check passed.
    pub ok: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

pub(crate) fn check(conn: &Connection, path: &Path, full: bool) -> Result<CheckReport> {
    let mut checks = Vec::new();
    let pragma = if full {
        "integrity_check"
    } else {
        "quick_check"
    };
    let integrity = integrity_text(conn, path, pragma)?;
    checks.push(Check {
        name: "integrity".into(),
        ok: integrity == "ok",
        detail: format!("PRAGMA {pragma}: {integrity}"),
    });
    let version = schema::version(conn)?;
    checks.push(Check {
        name: "schema".into(),
        ok: version == schema::SCHEMA_VERSION,
        detail: format!(
            "version {version}, this tradevault writes {}",
            schema::SCHEMA_VERSION
        ),
    });
    if integrity == "ok" && version == schema::SCHEMA_VERSION {
        let fk: i64 = conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(|e| Error::sqlite("check foreign keys", e))?;
        checks.push(Check {
            name: "foreign_keys".into(),
            ok: fk == 0,
            detail: format!("{fk} rows reference missing rows"),
        });
        let mismatches = positions_mismatches(conn)?;
        checks.push(Check {
            name: "positions".into(),
            ok: mismatches.is_empty(),
            detail: if mismatches.is_empty() {
                "every position equals the one recomputed from its fills".into()
            } else {
                format!("differ from their fills: {}", mismatches.join(", "))
            },
        });
    }
    let ok = checks.iter().all(|c| c.ok);
    Ok(CheckReport {
        database_path: path.display().to_string(),
        ok,
        checks,
    })
}

/// Positions recomputed from every fill, in commit order, keyed by (symbol, test_mode).
pub fn recompute_positions(conn: &Connection) -> Result<BTreeMap<(String, bool), PositionState>> {
    let mut stmt = conn
        .prepare("SELECT symbol, test_mode, side, qty, price, fee FROM trades ORDER BY id")
        .map_err(|e| Error::sqlite("read fills", e))?;
    let mut rows = stmt.query([]).map_err(|e| Error::sqlite("read fills", e))?;
    let mut out: BTreeMap<(String, bool), PositionState> = BTreeMap::new();
    let bad = |what: &str| {
        Error::invalid(
            "corrupt_row",
            None,
            format!("a stored fill has an unreadable {what}"),
        )
    };
    while let Some(r) = rows.next().map_err(|e| Error::sqlite("read fills", e))? {
        let (symbol, test_mode, side): (String, bool, String) = (
            r.get(0).map_err(|e| Error::sqlite("read fill", e))?,
            r.get(1).map_err(|e| Error::sqlite("read fill", e))?,
            r.get(2).map_err(|e| Error::sqlite("read fill", e))?,
        );
        let dec = |i: usize| -> Result<rust_decimal::Decimal> {
            let text: String = r.get(i).map_err(|e| Error::sqlite("read fill", e))?;
            stored_decimal(&text).map_err(|_| bad("decimal"))
        };
        let qty = if side == "sell" { -dec(3)? } else { dec(3)? };
        let entry = out.entry((symbol, test_mode)).or_default();
        *entry = position::apply(
            *entry,
            Fill {
                qty,
                price: dec(4)?,
                fee: dec(5)?,
            },
        )
        .map_err(|_| bad("quantity (overflow)"))?
        .0;
    }
    Ok(out)
}

fn positions_mismatches(conn: &Connection) -> Result<Vec<String>> {
    let expected = recompute_positions(conn)?;
    let mut stmt = conn
        .prepare("SELECT symbol, test_mode, qty, avg_price, realized_pnl, fees FROM positions")
        .map_err(|e| Error::sqlite("read positions", e))?;
    let stored: Vec<(String, bool, [String; 4])> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| Error::sqlite("read positions", e))?;
    let mut mismatches = Vec::new();
    for (symbol, test_mode, values) in &stored {
        let want = expected
            .get(&(symbol.clone(), *test_mode))
            .copied()
            .unwrap_or_default();
        let want_text =
            [want.qty, want.avg_price, want.realized_pnl, want.fees].map(format_decimal);
        if &want_text != values {
            mismatches.push(format!(
                "{symbol}{}",
                if *test_mode { " (test)" } else { "" }
            ));
        }
    }
    for (symbol, test_mode) in expected.keys() {
        if !stored.iter().any(|(s, t, _)| s == symbol && t == test_mode) {
            mismatches.push(format!("{symbol} (missing)"));
        }
    }
    Ok(mismatches)
}
