//! Read queries: filters, cursor pages, single lookups. Run on the read-only connections.
//! Every list is ordered by the store's sequence number (`id`), which is commit order; a cursor
//! is the last id of the previous page.

use jiff::Timestamp;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row};
use serde::Serialize;

use super::model::*;
use crate::error::{Error, Result};
use crate::exact::format_timestamp;

/// Which page of a list to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Most rows to return.
    pub limit: u64,
    /// Return rows after this sequence number (the previous page's `next_cursor`).
    pub after: Option<i64>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters shared by the lists: each `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Instrument.
    pub symbol: Option<String>,
    /// `ts` at or after this time.
    pub from: Option<Timestamp>,
    /// `ts` strictly before this time.
    pub to: Option<Timestamp>,
    /// Production, test or both.
    pub test_mode: TestMode,
    /// Strategy (trades, orders).
    pub strategy: Option<String>,
    /// Signal (trades, orders).
    pub signal_id: Option<String>,
    /// Order (trades).
    pub order_id: Option<String>,
    /// Order status (orders).
    pub status: Option<String>,
    /// Final signal (signals).
    pub final_signal: Option<String>,
    /// Log level (logs).
    pub level: Option<String>,
    /// Log source (logs).
    pub source: Option<String>,
}

/// A WHERE clause under construction.
struct Where {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Where {
    fn new() -> Self {
        Where {
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    fn add(&mut self, column: &str, op: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.params.push(v);
            self.clauses
                .push(format!("{column} {op} ?{}", self.params.len()));
        }
    }

    fn text(&mut self, column: &str, value: &Option<String>) {
        self.add(column, "=", value.clone().map(Value::Text));
    }

    fn common(&mut self, f: &Filter) {
        self.text("symbol", &f.symbol);
        self.add("ts", ">=", f.from.map(|t| Value::Text(format_timestamp(t))));
        self.add("ts", "<", f.to.map(|t| Value::Text(format_timestamp(t))));
        self.add(
            "test_mode",
            "=",
            f.test_mode.value().map(|b| Value::Integer(b.into())),
        );
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

fn page<T>(
    conn: &Connection,
    table: &str,
    columns: &str,
    mut w: Where,
    page: PageRequest,
    from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
    id_of: fn(&T) -> i64,
) -> Result<Page<T>> {
    w.add("id", ">", page.after.map(Value::Integer));
    w.params.push(Value::Integer(
        i64::try_from(page.limit)
            .unwrap_or(i64::MAX)
            .saturating_add(1),
    ));
    let sql = format!(
        "SELECT {columns} FROM {table}{} ORDER BY id LIMIT ?{}",
        w.sql(),
        w.params.len()
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(|e| Error::sqlite("prepare list query", e))?;
    let mut items = stmt
        .query_map(rusqlite::params_from_iter(w.params.iter()), from_row)
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<T>>>())
        .map_err(|e| Error::sqlite("run list query", e))?;
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|t| id_of(t).to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

fn one<T>(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    from_row: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>> {
    conn.prepare_cached(sql)
        .and_then(|mut s| {
            s.query_row(rusqlite::params_from_iter(params.iter()), from_row)
                .optional()
        })
        .map_err(|e| Error::sqlite("look up row", e))
}

fn mode_clause(mode: TestMode) -> &'static str {
    match mode {
        TestMode::Production => " AND test_mode = 0",
        TestMode::Test => " AND test_mode = 1",
        TestMode::All => "",
    }
}

/// Trades matching `f`.
pub fn trades(conn: &Connection, f: &Filter, p: PageRequest) -> Result<Page<Trade>> {
    let mut w = Where::new();
    w.common(f);
    w.text("strategy", &f.strategy);
    w.text("signal_id", &f.signal_id);
    w.text("order_id", &f.order_id);
    page(conn, "trades", Trade::COLUMNS, w, p, Trade::from_row, |t| {
        t.id
    })
}

/// One trade by its client id, if visible in `mode`.
pub fn trade(conn: &Connection, trade_id: &str, mode: TestMode) -> Result<Option<Trade>> {
    let sql = format!(
        "SELECT {} FROM trades WHERE trade_id = ?1{}",
        Trade::COLUMNS,
        mode_clause(mode)
    );
    one(conn, &sql, &[Value::Text(trade_id.into())], Trade::from_row)
}

/// Orders matching `f`.
pub fn orders(conn: &Connection, f: &Filter, p: PageRequest) -> Result<Page<Order>> {
    let mut w = Where::new();
    w.common(f);
    w.text("strategy", &f.strategy);
    w.text("signal_id", &f.signal_id);
    w.text("status", &f.status);
    page(conn, "orders", Order::COLUMNS, w, p, Order::from_row, |o| {
        o.id
    })
}

/// One order by its client id, if visible in `mode`.
pub fn order(conn: &Connection, client_order_id: &str, mode: TestMode) -> Result<Option<Order>> {
    let sql = format!(
        "SELECT {} FROM orders WHERE client_order_id = ?1{}",
        Order::COLUMNS,
        mode_clause(mode)
    );
    one(
        conn,
        &sql,
        &[Value::Text(client_order_id.into())],
        Order::from_row,
    )
}

/// Signals matching `f`.
pub fn signals(conn: &Connection, f: &Filter, p: PageRequest) -> Result<Page<Signal>> {
    let mut w = Where::new();
    w.common(f);
    w.text("final_signal", &f.final_signal);
    page(
        conn,
        "signals",
        Signal::COLUMNS,
        w,
        p,
        Signal::from_row,
        |s| s.id,
    )
}

/// One signal by its client id, if visible in `mode`.
pub fn signal(conn: &Connection, signal_id: &str, mode: TestMode) -> Result<Option<Signal>> {
    let sql = format!(
        "SELECT {} FROM signals WHERE signal_id = ?1{}",
        Signal::COLUMNS,
        mode_clause(mode)
    );
    one(
        conn,
        &sql,
        &[Value::Text(signal_id.into())],
        Signal::from_row,
    )
}

/// Log entries matching `f`.
pub fn logs(conn: &Connection, f: &Filter, p: PageRequest) -> Result<Page<LogEntry>> {
    let mut w = Where::new();
    w.common(f);
    w.text("level", &f.level);
    w.text("source", &f.source);
    page(
        conn,
        "logs",
        LogEntry::COLUMNS,
        w,
        p,
        LogEntry::from_row,
        |l| l.id,
    )
}

/// Every position visible in `mode`, optionally of one symbol, ordered by symbol.
pub fn positions(conn: &Connection, mode: TestMode, symbol: Option<&str>) -> Result<Vec<Position>> {
    let mut w = Where::new();
    w.add(
        "test_mode",
        "=",
        mode.value().map(|b| Value::Integer(b.into())),
    );
    w.add("symbol", "=", symbol.map(|s| Value::Text(s.into())));
    let sql = format!(
        "SELECT {} FROM positions{} ORDER BY symbol, test_mode",
        Position::COLUMNS,
        w.sql()
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(
                rusqlite::params_from_iter(w.params.iter()),
                Position::from_row,
            )?
            .collect()
        })
        .map_err(|e| Error::sqlite("list positions", e))
}

/// The changes of one symbol's position, oldest first.
pub fn position_history(
    conn: &Connection,
    symbol: &str,
    mode: TestMode,
    p: PageRequest,
) -> Result<Page<PositionChange>> {
    let mut w = Where::new();
    w.add("symbol", "=", Some(Value::Text(symbol.into())));
    w.add(
        "test_mode",
        "=",
        mode.value().map(|b| Value::Integer(b.into())),
    );
    page(
        conn,
        "position_history",
        PositionChange::COLUMNS,
        w,
        p,
        PositionChange::from_row,
        |c| c.id,
    )
}

/// Every status value visible in `mode`, ordered by key.
pub fn statuses(conn: &Connection, mode: TestMode) -> Result<Vec<Status>> {
    let mut w = Where::new();
    w.add(
        "test_mode",
        "=",
        mode.value().map(|b| Value::Integer(b.into())),
    );
    let sql = format!(
        "SELECT {} FROM bot_status{} ORDER BY key, test_mode",
        Status::COLUMNS,
        w.sql()
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(
                rusqlite::params_from_iter(w.params.iter()),
                Status::from_row,
            )?
            .collect()
        })
        .map_err(|e| Error::sqlite("list status", e))
}

/// One status value, if visible in `mode` (production wins over test when both are asked for).
pub fn status(conn: &Connection, key: &str, mode: TestMode) -> Result<Option<Status>> {
    let sql = format!(
        "SELECT {} FROM bot_status WHERE key = ?1{} ORDER BY test_mode LIMIT 1",
        Status::COLUMNS,
        mode_clause(mode)
    );
    one(conn, &sql, &[Value::Text(key.into())], Status::from_row)
}
