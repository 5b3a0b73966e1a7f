//! Who checks what: the schema read table by table, each table's rows and indexes planned for
//! the walk or for SQLite.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::Check;
use super::rows::{self, Rows, Rule};
use crate::error::{Error, Result};

/// Who checks what.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// The schema has something only SQLite's whole check covers (a virtual table, a text encoding
    /// other than UTF-8).
    pub(super) whole: bool,
    /// Every table with a b-tree, SQLite's own and the schema's (page 1) included.
    pub(super) tables: Vec<Table>,
    /// The tables a backup counts the rows of, with their root pages.
    pub(super) counted: Vec<(String, u32)>,
}

/// A table, its b-tree and its indexes'.
#[derive(Debug)]
pub(super) struct Table {
    pub(super) name: String,
    pub(super) root: u32,
    /// A rowid table; `false`: `WITHOUT ROWID`, whose tree is an index's.
    pub(super) rowid: bool,
    /// A rowid table without generated columns: the walk can read its rows.
    pub(super) modelled: bool,
    /// How its rows are checked; `None`: SQLite checks them.
    pub(super) rows: Option<Rows>,
    pub(super) indexes: Vec<IndexTree>,
    /// Its CHECK constraints (SQLite drops them from a read-only database's schema).
    pub(super) constraints: Constraints,
}

/// A table's CHECK constraints, read from its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Constraints {
    None,
    /// Their expressions, evaluated by a query over the table.
    Checks(Vec<String>),
    /// A definition the scan cannot read to its end: SQLite checks the table on a connection
    /// that can write.
    Unreadable,
}

/// An index's b-tree.
#[derive(Debug)]
pub(super) struct IndexTree {
    pub(super) name: String,
    pub(super) root: u32,
    pub(super) partial: bool,
    /// What the walk checks its entries against; `None`: SQLite must, under `integrity_check`.
    pub(super) model: Option<Index>,
}

impl Table {
    /// What SQLite must check of this table alone: nothing, its rows (`quick_check`: rows whose
    /// column rules the walk cannot read, such as an unknown STRICT type, or CHECK constraints),
    /// or everything (the check asked for).
    pub(super) fn sqlite(&self, check: Check) -> Option<Check> {
        if !self.modelled
            || (check == Check::Integrity && self.indexes.iter().any(|i| i.model.is_none()))
        {
            Some(check)
        } else if self.rows.is_none() || self.constraints == Constraints::Unreadable {
            Some(Check::Quick)
        } else {
            None
        }
    }

    /// The walk judges its indexes (SQLite does not check the whole table).
    pub(super) fn walked(&self, check: Check) -> bool {
        self.sqlite(check) != Some(check)
    }
}

#[derive(Debug)]
pub(super) struct Index {
    pub(super) unique: bool,
    /// Its key columns, in order.
    pub(super) keys: Vec<Key>,
    /// A partial index `WHERE column IS NOT NULL`: the record field it requires, and it holds
    /// only the rows where that field is not NULL.
    pub(super) only_if: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    /// The record field of the table row it copies, `None` for the rowid.
    pub(super) field: Option<usize>,
    pub(super) desc: bool,
    pub(super) collation: Collation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Collation {
    Binary,
    NoCase,
    RTrim,
}

/// Reads the schema and decides, table by table, who checks what.
pub(super) fn plan(conn: &Connection, path: &Path, check: Check) -> Result<Plan> {
    let q = |e| Error::sqlite("read the schema to check", e);
    let mut plan = Plan {
        counted: crate::snapshot::tables(conn, path)?,
        ..Plan::default()
    };
    let encoding: String = conn
        .query_row("PRAGMA encoding", [], |r| r.get(0))
        .map_err(q)?;
    let virtual_tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND rootpage = 0",
            [],
            |r| r.get(0),
        )
        .map_err(q)?;
    if encoding != "UTF-8" || virtual_tables > 0 {
        // Virtual tables' own checks run only in the whole pragma.
        plan.whole = true;
        return Ok(plan);
    }
    // The schema's own table: five columns, `rootpage` an integer, the rest text.
    let text = Rule {
        not_null: false,
        kind: rows::Kind::NoNumber,
        absent_is_null: true,
    };
    let int = Rule {
        kind: rows::Kind::NoText,
        ..text
    };
    plan.tables.push(Table {
        name: "sqlite_schema".into(),
        root: 1,
        rowid: true,
        modelled: true,
        rows: Some(Rows {
            columns: vec![text, text, text, int, text],
            rowid: None,
        }),
        indexes: Vec::new(),
        constraints: Constraints::None,
    });
    // Every table with a b-tree, SQLite's own (`sqlite_sequence`, `sqlite_stat1`) included.
    let all: Vec<(String, u32, Option<String>)> = conn
        .prepare(
            "SELECT name, rootpage, sql FROM sqlite_schema WHERE type = 'table' AND rootpage > 0 \
             ORDER BY name",
        )
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(q)?;
    for (name, root, sql) in all {
        let table = table_plan(conn, &name, root, sql.as_deref(), check).map_err(q)?;
        plan.tables.push(table);
    }
    // Every b-tree the schema names is walked, once: else SQLite checks the whole file.
    let mut roots: Vec<u32> = conn
        .prepare("SELECT rootpage FROM sqlite_schema WHERE rootpage > 0")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(q)?;
    roots.push(1);
    let mut planned: Vec<u32> = plan
        .tables
        .iter()
        .flat_map(|t| std::iter::once(t.root).chain(t.indexes.iter().map(|i| i.root)))
        .collect();
    roots.sort_unstable();
    planned.sort_unstable();
    if roots != planned {
        plan.whole = true;
    }
    Ok(plan)
}

/// The plan for one table, defined by `sql`.
fn table_plan(
    conn: &Connection,
    name: &str,
    root: u32,
    sql: Option<&str>,
    check: Check,
) -> rusqlite::Result<Table> {
    let quoted = quote(name);
    let columns: Vec<Column> = conn
        .prepare(&format!("PRAGMA table_xinfo({quoted})"))?
        .query_map([], |r| {
            Ok(Column {
                cid: r.get(0)?,
                name: r.get(1)?,
                declared: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                not_null: r.get::<_, i64>(3)? != 0,
                default: r.get::<_, Option<String>>(4)?.is_some(),
                pk: r.get::<_, i64>(5)? > 0,
                hidden: r.get::<_, i64>(6)? != 0,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let (strict, without_rowid): (bool, bool) = conn.query_row(
        "SELECT strict, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // (name, unique, partial)
    let listed: Vec<(String, bool, bool)> = conn
        .prepare(&format!("PRAGMA index_list({quoted})"))?
        .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get(4)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let alias = if without_rowid {
        None
    } else {
        rowid_alias(conn, &quoted, &columns)?
    };
    // Generated columns are not stored where the walk would look for them.
    let modelled = !without_rowid && !columns.iter().any(|c| c.hidden);
    let rows = if modelled {
        row_rules(&columns, strict, alias)
    } else {
        None
    };
    let mut indexes = Vec::new();
    for (index, unique, partial) in listed {
        // A `WITHOUT ROWID` table's primary key is the table's own tree, with no row here.
        let (root, sql): (Option<u32>, Option<String>) = conn
            .query_row(
                "SELECT rootpage, sql FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                [&index],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((None, None));
        // An index without a b-tree of its own: if the schema names one, the roots will not
        // match and SQLite checks the whole file.
        let Some(root) = root.filter(|r| *r > 0) else {
            continue;
        };
        let model = if check == Check::Integrity && modelled {
            index_model(
                conn,
                &quoted,
                &columns,
                alias,
                &index,
                unique,
                partial,
                sql.as_deref(),
            )?
        } else {
            None
        };
        indexes.push(IndexTree {
            name: index,
            root,
            partial,
            model,
        });
    }
    Ok(Table {
        name: name.to_owned(),
        root,
        rowid: !without_rowid,
        modelled,
        rows,
        indexes,
        constraints: sql.map_or(Constraints::None, check_constraints),
    })
}

/// The CHECK constraints of a `CREATE TABLE` statement: the parenthesized expression after each
/// `CHECK` keyword outside quotes and comments (the keyword is reserved: never a bare name).
pub(super) fn check_constraints(sql: &str) -> Constraints {
    // SQLite reads a statement up to a NUL.
    let sql = sql.split('\0').next().unwrap_or_default();
    let b = sql.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match opaque(b, i) {
            Some(Some(end)) => {
                i = end;
                continue;
            }
            Some(None) => return Constraints::Unreadable,
            None => {}
        }
        if !word(b[i]) {
            i += 1;
            continue;
        }
        let end = b[i..]
            .iter()
            .position(|c| !word(*c))
            .map_or(b.len(), |n| i + n);
        let keyword = b[i..end].eq_ignore_ascii_case(b"check");
        i = end;
        if !keyword {
            continue;
        }
        // Its expression: between the parenthesis after it (past spaces and comments) and the
        // one that closes it.
        let mut j = end;
        while j < b.len() {
            if b[j].is_ascii_whitespace() {
                j += 1;
            } else if b[j..].starts_with(b"--") || b[j..].starts_with(b"/*") {
                j = opaque(b, j).flatten().unwrap_or(b.len());
            } else {
                break;
            }
        }
        if b.get(j) != Some(&b'(') {
            return Constraints::Unreadable;
        }
        let (open, mut depth) = (j, 0usize);
        loop {
            match opaque(b, j) {
                Some(Some(next)) => {
                    j = next;
                    continue;
                }
                Some(None) => return Constraints::Unreadable,
                None => {}
            }
            match b.get(j) {
                None => return Constraints::Unreadable,
                Some(b'(') => depth += 1,
                Some(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Some(_) => {}
            }
            j += 1;
        }
        exprs.push(sql[open + 1..j].to_owned());
        i = j + 1;
    }
    if exprs.is_empty() {
        Constraints::None
    } else {
        Constraints::Checks(exprs)
    }
}

/// Where the quoted text or comment that starts at `i` ends (`Some(None)`: it never does),
/// `None` if none starts there. A doubled quote inside quoted text is read as two texts.
fn opaque(b: &[u8], i: usize) -> Option<Option<usize>> {
    let close = match b.get(i)? {
        b'\'' => b'\'',
        b'"' => b'"',
        b'`' => b'`',
        b'[' => b']',
        b'-' if b.get(i + 1) == Some(&b'-') => {
            // To the end of the line, or of the text.
            return Some(Some(
                b[i..]
                    .iter()
                    .position(|c| *c == b'\n')
                    .map_or(b.len(), |n| i + n + 1),
            ));
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            // SQLite ends an unterminated comment at the end of the text.
            return Some(Some(
                b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(b.len(), |n| i + n + 4),
            ));
        }
        _ => return None,
    };
    Some(
        b[i + 1..]
            .iter()
            .position(|c| *c == close)
            .map(|n| i + n + 2),
    )
}

/// The tests of each column of a table's rows, `None` when SQLite must run them.
fn row_rules(columns: &[Column], strict: bool, alias: Option<i64>) -> Option<Rows> {
    let mut rules = Vec::with_capacity(columns.len());
    for (j, c) in columns.iter().enumerate() {
        // Stored in column order: without generated columns, field j is column j.
        if c.cid != j as i64 {
            return None;
        }
        let kind = if strict {
            rows::strict(&c.declared)?
        } else {
            rows::affinity(&c.declared)
        };
        rules.push(Rule {
            not_null: c.not_null,
            kind,
            absent_is_null: !c.not_null && !c.default,
        });
    }
    Some(Rows {
        columns: rules,
        rowid: alias.and_then(|a| usize::try_from(a).ok()),
    })
}

/// How the walk checks one index of a table, `None` when SQLite must.
#[allow(clippy::too_many_arguments)]
fn index_model(
    conn: &Connection,
    table: &str,
    columns: &[Column],
    alias: Option<i64>,
    index: &str,
    unique: bool,
    partial: bool,
    sql: Option<&str>,
) -> rusqlite::Result<Option<Index>> {
    // The one partial index the walk can model: `WHERE column IS NOT NULL`.
    let only_if = if partial {
        let Some(column) = sql.and_then(not_null_column) else {
            return Ok(None);
        };
        let cid = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&column))
            .map(|c| c.cid);
        // SQLite must agree that `column IS NOT NULL` selects this index's rows: it uses a
        // partial index only for a condition that implies the index's own.
        let confirmed = conn
            .prepare(&format!(
                "EXPLAIN SELECT 1 FROM {table} INDEXED BY {} WHERE {} IS NOT NULL",
                quote(index),
                quote(&column)
            ))
            .is_ok();
        if !confirmed {
            return Ok(None);
        }
        match cid {
            None => return Ok(None),
            // The rowid is never NULL.
            Some(c) if Some(c) == alias => None,
            Some(c) => Some(usize::try_from(c).map_err(|_| rusqlite::Error::InvalidQuery)?),
        }
    } else {
        None
    };
    // (cid, desc, collation, key)
    let xinfo: Vec<(i64, bool, String, bool)> = conn
        .prepare(&format!("PRAGMA index_xinfo({})", quote(index)))?
        .query_map([], |r| Ok((r.get(1)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut keys = Vec::new();
    for (cid, desc, collation, _) in xinfo.iter().filter(|c| c.3) {
        let collation = match collation.to_ascii_uppercase().as_str() {
            "BINARY" => Collation::Binary,
            "NOCASE" => Collation::NoCase,
            "RTRIM" => Collation::RTrim,
            _ => return Ok(None),
        };
        let field = match *cid {
            -2 => return Ok(None),
            -1 => None,
            c if Some(c) == alias => None,
            c => Some(usize::try_from(c).map_err(|_| rusqlite::Error::InvalidQuery)?),
        };
        keys.push(Key {
            field,
            desc: *desc,
            collation,
        });
    }
    // The one column after the keys is the rowid.
    if xinfo.len() != keys.len() + 1 || xinfo.last().is_none_or(|c| c.3 || c.0 != -1) {
        return Ok(None);
    }
    Ok(Some(Index {
        unique,
        keys,
        only_if,
    }))
}

/// A column of a table, as `PRAGMA table_xinfo` lists it.
struct Column {
    cid: i64,
    name: String,
    /// Its declared type, `""` for none.
    declared: String,
    not_null: bool,
    /// It has a DEFAULT clause.
    default: bool,
    /// Part of the primary key.
    pk: bool,
    /// Generated (or a virtual table's hidden column).
    hidden: bool,
}

/// The column that is the rowid (an `INTEGER PRIMARY KEY`), asked of SQLite itself: reading it
/// compiles to the `Rowid` opcode instead of `Column`.
fn rowid_alias(
    conn: &Connection,
    table: &str,
    columns: &[Column],
) -> rusqlite::Result<Option<i64>> {
    let mut pk = columns.iter().filter(|c| c.pk);
    let (Some(column), None) = (pk.next(), pk.next()) else {
        return Ok(None);
    };
    let opcodes: Vec<String> = conn
        .prepare(&format!(
            "EXPLAIN SELECT {} FROM {table} NOT INDEXED",
            quote(&column.name)
        ))?
        .query_map([], |r| r.get(1))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(opcodes.iter().any(|o| o == "Rowid").then_some(column.cid))
}

pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The column of a partial index's `WHERE column IS NOT NULL` (or `NOT NULL`, `NOTNULL`), from
/// its `CREATE INDEX` text; `None` for any other condition, and for any text it might misread
/// (comments, a `WHERE` that does not follow the column list).
pub(super) fn not_null_column(sql: &str) -> Option<String> {
    if sql.contains("--") || sql.contains("/*") {
        return None;
    }
    let upper = sql.to_ascii_uppercase();
    let at = upper.rfind("WHERE")?;
    let before = sql[..at].trim_end();
    let after = upper[at + 5..].chars().next();
    if !before.ends_with(')') || !after.is_some_and(|c| c.is_whitespace() || c == '(') {
        return None;
    }
    let mut condition = sql[at + 5..].trim();
    while let Some(inner) = condition
        .strip_prefix('(')
        .and_then(|c| c.strip_suffix(')'))
    {
        condition = inner.trim();
    }
    let words: Vec<&str> = condition.split_whitespace().collect();
    let column = match words[..] {
        [c, is, not, null]
            if is.eq_ignore_ascii_case("IS")
                && not.eq_ignore_ascii_case("NOT")
                && null.eq_ignore_ascii_case("NULL") =>
        {
            c
        }
        [c, not, null] if not.eq_ignore_ascii_case("NOT") && null.eq_ignore_ascii_case("NULL") => c,
        [c, notnull] if notnull.eq_ignore_ascii_case("NOTNULL") => c,
        _ => return None,
    };
    let unquoted = match column.as_bytes() {
        [b'"', .., b'"'] => column[1..column.len() - 1].replace("\"\"", "\""),
        [b'`', .., b'`'] => column[1..column.len() - 1].replace("``", "`"),
        [b'[', .., b']'] => column[1..column.len() - 1].to_owned(),
        // An unquoted name starts with a letter or `_` (`1` would be a number: always true).
        [first, ..]
            if (first.is_ascii_alphabetic() || *first == b'_')
                && column
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            column.to_owned()
        }
        _ => return None,
    };
    // A quoted name with a space was split above; quotes inside mean something else.
    (!unquoted.is_empty() && !unquoted.contains(['"', '\'', '`', '[', ']'])).then_some(unquoted)
}
