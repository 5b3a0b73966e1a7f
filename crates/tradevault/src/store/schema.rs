//! Versioned migrations, applied in order on open; `PRAGMA user_version` holds the version.
//!
//! Conventions: decimals are TEXT in canonical form (`exact::format_decimal`), times are TEXT in
//! fixed-width UTC (`exact::format_timestamp`), JSON is TEXT, booleans are 0/1. Every row carries
//! `test_mode` and `bot_version`. `created_at` is when the store received the row; `ts` is when
//! the client says it happened.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Migrations; index + 1 is the schema version each one produces. Never edit a released one.
/// 2: the mirror of the backup catalogs (`backup_metadata`, `backup_drills`), seed 000's table.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE signals (
    id                 INTEGER PRIMARY KEY,
    signal_id          TEXT NOT NULL UNIQUE,
    ts                 TEXT NOT NULL,
    symbol             TEXT NOT NULL,
    price              TEXT NOT NULL,
    final_signal       TEXT NOT NULL CHECK (final_signal IN ('buy', 'sell', 'hold')),
    confidence         TEXT NOT NULL,
    aggregation_method TEXT,
    strategies         TEXT NOT NULL DEFAULT '{}',
    strategy_version   TEXT,
    test_mode          INTEGER NOT NULL DEFAULT 0 CHECK (test_mode IN (0, 1)),
    bot_version        TEXT,
    created_at         TEXT NOT NULL
);
CREATE INDEX signals_symbol_ts ON signals (symbol, ts);
CREATE INDEX signals_ts ON signals (ts);

CREATE TABLE orders (
    id               INTEGER PRIMARY KEY,
    client_order_id  TEXT NOT NULL UNIQUE,
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    type             TEXT NOT NULL CHECK (type IN ('market', 'limit')),
    qty              TEXT NOT NULL,
    limit_price      TEXT,
    status           TEXT NOT NULL,
    ts               TEXT NOT NULL,
    strategy         TEXT,
    signal_id        TEXT REFERENCES signals (signal_id),
    test_mode        INTEGER NOT NULL DEFAULT 0 CHECK (test_mode IN (0, 1)),
    bot_version      TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX orders_symbol_ts ON orders (symbol, ts);
CREATE INDEX orders_ts ON orders (ts);
CREATE INDEX orders_signal ON orders (signal_id);

CREATE TABLE trades (
    id            INTEGER PRIMARY KEY,
    trade_id      TEXT NOT NULL UNIQUE,
    symbol        TEXT NOT NULL,
    side          TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    qty           TEXT NOT NULL,
    price         TEXT NOT NULL,
    fee           TEXT NOT NULL DEFAULT '0',
    fee_currency  TEXT,
    ts            TEXT NOT NULL,
    order_id      TEXT REFERENCES orders (client_order_id),
    signal_id     TEXT REFERENCES signals (signal_id),
    strategy      TEXT,
    test_mode     INTEGER NOT NULL DEFAULT 0 CHECK (test_mode IN (0, 1)),
    bot_version   TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX trades_symbol_ts ON trades (symbol, ts);
CREATE INDEX trades_ts ON trades (ts);
CREATE INDEX trades_signal ON trades (signal_id) WHERE signal_id IS NOT NULL;
CREATE INDEX trades_order ON trades (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE positions (
    symbol         TEXT NOT NULL,
    test_mode      INTEGER NOT NULL CHECK (test_mode IN (0, 1)),
    qty            TEXT NOT NULL,
    avg_price      TEXT NOT NULL,
    realized_pnl   TEXT NOT NULL,
    fees           TEXT NOT NULL,
    trade_count    INTEGER NOT NULL,
    last_trade_id  TEXT NOT NULL,
    bot_version    TEXT,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (symbol, test_mode)
) WITHOUT ROWID;

CREATE TABLE position_history (
    id                INTEGER PRIMARY KEY,
    symbol            TEXT NOT NULL,
    test_mode         INTEGER NOT NULL CHECK (test_mode IN (0, 1)),
    event             TEXT NOT NULL CHECK (event IN ('opened', 'increased', 'reduced', 'closed', 'flipped')),
    trade_id          TEXT NOT NULL REFERENCES trades (trade_id),
    old_qty           TEXT NOT NULL,
    old_avg_price     TEXT NOT NULL,
    old_realized_pnl  TEXT NOT NULL,
    new_qty           TEXT NOT NULL,
    new_avg_price     TEXT NOT NULL,
    new_realized_pnl  TEXT NOT NULL,
    fee               TEXT NOT NULL,
    ts                TEXT NOT NULL,
    bot_version       TEXT,
    created_at        TEXT NOT NULL
);
CREATE INDEX position_history_symbol ON position_history (symbol, test_mode, id);

CREATE TABLE logs (
    id           INTEGER PRIMARY KEY,
    ts           TEXT NOT NULL,
    level        TEXT NOT NULL CHECK (level IN ('debug', 'info', 'warning', 'error', 'critical')),
    source       TEXT NOT NULL,
    message      TEXT NOT NULL,
    context      TEXT,
    test_mode    INTEGER NOT NULL DEFAULT 0 CHECK (test_mode IN (0, 1)),
    bot_version  TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX logs_ts ON logs (ts);
CREATE INDEX logs_level_ts ON logs (level, ts);

CREATE TABLE bot_status (
    key          TEXT NOT NULL,
    test_mode    INTEGER NOT NULL CHECK (test_mode IN (0, 1)),
    value        TEXT NOT NULL,
    bot_version  TEXT,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (key, test_mode)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE job_runs (
    id             INTEGER PRIMARY KEY,
    job            TEXT NOT NULL,
    trigger        TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual')),
    scheduled_for  TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    finished_at    TEXT,
    status         TEXT NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'skipped')),
    duration_ms    INTEGER,
    detail         TEXT
);
CREATE INDEX job_runs_job ON job_runs (job, id);
"#,
    r#"
CREATE TABLE backup_metadata (
    target                 TEXT NOT NULL,
    backup_id              TEXT NOT NULL,
    database               TEXT NOT NULL,
    backup_path            TEXT NOT NULL,
    backup_time            TEXT NOT NULL,
    backup_type            TEXT NOT NULL CHECK (backup_type IN ('manual', 'scheduled', 'safety')),
    tables                 TEXT NOT NULL DEFAULT '{}',
    size_bytes             INTEGER NOT NULL,
    compressed_size_bytes  INTEGER NOT NULL,
    verified               INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1)),
    verified_at            TEXT,
    parent_id              TEXT,
    mirrored_at            TEXT NOT NULL,
    PRIMARY KEY (target, backup_id)
) WITHOUT ROWID;
CREATE INDEX backup_metadata_time ON backup_metadata (database, backup_time);

CREATE TABLE backup_drills (
    target       TEXT NOT NULL,
    database     TEXT NOT NULL,
    at           TEXT NOT NULL,
    backup_id    TEXT,
    ok           INTEGER NOT NULL CHECK (ok IN (0, 1)),
    rto_seconds  REAL NOT NULL,
    detail       TEXT NOT NULL,
    PRIMARY KEY (target, database, at)
) WITHOUT ROWID;
"#,
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Tables whose rows `stats` counts, in display order.
pub const TABLES: &[&str] = &[
    "trades",
    "orders",
    "positions",
    "position_history",
    "signals",
    "logs",
    "bot_status",
];

/// Reads `PRAGMA user_version`.
pub fn version(conn: &Connection) -> Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| Error::sqlite("read schema version", e))
}

/// Applies every migration newer than the database's version, each in its own transaction.
pub fn migrate(conn: &Connection, path: &std::path::Path) -> Result<i64> {
    let current = version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let target = i as i64 + 1;
        let batch = format!("BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {target};\nCOMMIT;");
        if let Err(e) = conn.execute_batch(&batch) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(Error::sqlite("apply migration", e));
        }
        tracing::info!(version = target, "schema migration applied");
    }
    Ok(SCHEMA_VERSION)
}
