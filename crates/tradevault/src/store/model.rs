//! The rows of the trading journal: what clients send (`New*`) and what the store returns.
//! Returned rows hold decimals and times as the canonical text the database stores, so reading
//! never converts money through anything lossy.

use jiff::Timestamp;
use rusqlite::Row;
use rust_decimal::Decimal;
use serde::Serialize;

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Buy: a positive fill.
    Buy,
    /// Sell: a negative fill.
    Sell,
}

impl Side {
    /// `buy` or `sell`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }

    /// Parses `buy` or `sell`.
    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "buy" => Some(Side::Buy),
            "sell" => Some(Side::Sell),
            _ => None,
        }
    }
}

/// Which rows a read may see: production rows unless the request asks for test data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TestMode {
    /// Only `test_mode = false` rows (the default).
    #[default]
    Production,
    /// Only `test_mode = true` rows.
    Test,
    /// Both.
    All,
}

impl TestMode {
    /// The SQL condition on a `test_mode` column, or `None` for all rows.
    pub fn value(self) -> Option<bool> {
        match self {
            TestMode::Production => Some(false),
            TestMode::Test => Some(true),
            TestMode::All => None,
        }
    }
}

/// A trade (fill) as sent by a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTrade {
    /// Unique id chosen by the client; the idempotency key.
    pub trade_id: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Quantity, greater than zero.
    pub qty: Decimal,
    /// Price, greater than zero.
    pub price: Decimal,
    /// Fee, zero or more.
    pub fee: Decimal,
    /// Currency of the fee.
    pub fee_currency: Option<String>,
    /// When it happened; the store's time when absent.
    pub ts: Option<Timestamp>,
    /// The order it fills (`client_order_id`).
    pub order_id: Option<String>,
    /// The signal that caused it.
    pub signal_id: Option<String>,
    /// The strategy that traded.
    pub strategy: Option<String>,
    /// Test data, kept out of production reads.
    pub test_mode: bool,
    /// Version of the bot that wrote it.
    pub bot_version: Option<String>,
}

/// A stored trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trade {
    /// Store-assigned sequence number.
    pub id: i64,
    /// Client id, unique.
    pub trade_id: String,
    /// Instrument.
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: String,
    /// Quantity (decimal string).
    pub qty: String,
    /// Price (decimal string).
    pub price: String,
    /// Fee (decimal string).
    pub fee: String,
    /// Currency of the fee.
    pub fee_currency: Option<String>,
    /// When it happened (RFC 3339 UTC).
    pub ts: String,
    /// The order it fills.
    pub order_id: Option<String>,
    /// The signal behind it.
    pub signal_id: Option<String>,
    /// The strategy that traded.
    pub strategy: Option<String>,
    /// Test data.
    pub test_mode: bool,
    /// Version of the bot that wrote it.
    pub bot_version: Option<String>,
    /// When the store received it.
    pub created_at: String,
}

impl Trade {
    pub(crate) const COLUMNS: &'static str = "id, trade_id, symbol, side, qty, price, fee, fee_currency, ts, order_id, \
         signal_id, strategy, test_mode, bot_version, created_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Trade> {
        Ok(Trade {
            id: r.get(0)?,
            trade_id: r.get(1)?,
            symbol: r.get(2)?,
            side: r.get(3)?,
            qty: r.get(4)?,
            price: r.get(5)?,
            fee: r.get(6)?,
            fee_currency: r.get(7)?,
            ts: r.get(8)?,
            order_id: r.get(9)?,
            signal_id: r.get(10)?,
            strategy: r.get(11)?,
            test_mode: r.get(12)?,
            bot_version: r.get(13)?,
            created_at: r.get(14)?,
        })
    }
}

/// Order type.
pub const ORDER_TYPES: &[&str] = &["market", "limit"];
/// Order statuses; the last four are terminal.
pub const ORDER_STATUSES: &[&str] = &[
    "new",
    "pending",
    "open",
    "partially_filled",
    "filled",
    "canceled",
    "rejected",
    "expired",
];
/// Statuses an order never leaves.
pub const TERMINAL_STATUSES: &[&str] = &["filled", "canceled", "rejected", "expired"];

/// An order as sent by a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// Unique id chosen by the client; the idempotency key.
    pub client_order_id: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// `market` or `limit`.
    pub order_type: String,
    /// Quantity, greater than zero.
    pub qty: Decimal,
    /// Limit price, required for limit orders.
    pub limit_price: Option<Decimal>,
    /// Initial status (`new` by default).
    pub status: String,
    /// When it was placed; the store's time when absent.
    pub ts: Option<Timestamp>,
    /// Strategy.
    pub strategy: Option<String>,
    /// Signal behind it.
    pub signal_id: Option<String>,
    /// Test data.
    pub test_mode: bool,
    /// Bot version.
    pub bot_version: Option<String>,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    /// Store-assigned sequence number.
    pub id: i64,
    /// Client id, unique.
    pub client_order_id: String,
    /// Instrument.
    pub symbol: String,
    /// `buy` or `sell`.
    pub side: String,
    /// `market` or `limit`.
    #[serde(rename = "type")]
    pub order_type: String,
    /// Quantity.
    pub qty: String,
    /// Limit price.
    pub limit_price: Option<String>,
    /// Current status.
    pub status: String,
    /// When it was placed.
    pub ts: String,
    /// Strategy.
    pub strategy: Option<String>,
    /// Signal behind it.
    pub signal_id: Option<String>,
    /// Test data.
    pub test_mode: bool,
    /// Bot version.
    pub bot_version: Option<String>,
    /// When the store received it.
    pub created_at: String,
    /// Last status change.
    pub updated_at: String,
}

impl Order {
    pub(crate) const COLUMNS: &'static str = "id, client_order_id, symbol, side, type, qty, limit_price, status, ts, \
         strategy, signal_id, test_mode, bot_version, created_at, updated_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Order> {
        Ok(Order {
            id: r.get(0)?,
            client_order_id: r.get(1)?,
            symbol: r.get(2)?,
            side: r.get(3)?,
            order_type: r.get(4)?,
            qty: r.get(5)?,
            limit_price: r.get(6)?,
            status: r.get(7)?,
            ts: r.get(8)?,
            strategy: r.get(9)?,
            signal_id: r.get(10)?,
            test_mode: r.get(11)?,
            bot_version: r.get(12)?,
            created_at: r.get(13)?,
            updated_at: r.get(14)?,
        })
    }
}

/// Final signal values.
pub const FINAL_SIGNALS: &[&str] = &["buy", "sell", "hold"];

/// A signal as sent by a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSignal {
    /// Unique id chosen by the client; the idempotency key.
    pub signal_id: String,
    /// When it was produced; the store's time when absent.
    pub ts: Option<Timestamp>,
    /// Instrument.
    pub symbol: String,
    /// Price it was computed at.
    pub price: Decimal,
    /// `buy`, `sell` or `hold`.
    pub final_signal: String,
    /// Confidence, 0 to 1.
    pub confidence: Decimal,
    /// How the strategies were combined.
    pub aggregation_method: Option<String>,
    /// Per-strategy breakdown (a JSON object), stored verbatim.
    pub strategies: serde_json::Value,
    /// Hash or version of the strategy set.
    pub strategy_version: Option<String>,
    /// Test data.
    pub test_mode: bool,
    /// Bot version.
    pub bot_version: Option<String>,
}

/// A stored signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signal {
    /// Store-assigned sequence number.
    pub id: i64,
    /// Client id, unique.
    pub signal_id: String,
    /// When it was produced.
    pub ts: String,
    /// Instrument.
    pub symbol: String,
    /// Price.
    pub price: String,
    /// `buy`, `sell` or `hold`.
    pub final_signal: String,
    /// Confidence, 0 to 1.
    pub confidence: String,
    /// How the strategies were combined.
    pub aggregation_method: Option<String>,
    /// Per-strategy breakdown.
    pub strategies: serde_json::Value,
    /// Strategy set version.
    pub strategy_version: Option<String>,
    /// Test data.
    pub test_mode: bool,
    /// Bot version.
    pub bot_version: Option<String>,
    /// When the store received it.
    pub created_at: String,
}

impl Signal {
    pub(crate) const COLUMNS: &'static str = "id, signal_id, ts, symbol, price, final_signal, confidence, \
         aggregation_method, strategies, strategy_version, test_mode, bot_version, created_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Signal> {
        Ok(Signal {
            id: r.get(0)?,
            signal_id: r.get(1)?,
            ts: r.get(2)?,
            symbol: r.get(3)?,
            price: r.get(4)?,
            final_signal: r.get(5)?,
            confidence: r.get(6)?,
            aggregation_method: r.get(7)?,
            strategies: json_column(r, 8)?,
            strategy_version: r.get(9)?,
            test_mode: r.get(10)?,
            bot_version: r.get(11)?,
            created_at: r.get(12)?,
        })
    }
}

/// A stored position: one symbol in one mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// Instrument.
    pub symbol: String,
    /// Signed quantity: negative is short.
    pub qty: String,
    /// Average entry price of the open quantity; `0` when flat.
    pub avg_price: String,
    /// Realized P&L, fees excluded.
    pub realized_pnl: String,
    /// Fees paid.
    pub fees: String,
    /// Test data.
    pub test_mode: bool,
    /// Fills applied.
    pub trade_count: i64,
    /// The last fill applied.
    pub last_trade_id: String,
    /// Bot version of the last fill.
    pub bot_version: Option<String>,
    /// When the last fill was applied.
    pub updated_at: String,
}

impl Position {
    pub(crate) const COLUMNS: &'static str = "symbol, qty, avg_price, realized_pnl, fees, test_mode, trade_count, last_trade_id, bot_version, updated_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Position> {
        Ok(Position {
            symbol: r.get(0)?,
            qty: r.get(1)?,
            avg_price: r.get(2)?,
            realized_pnl: r.get(3)?,
            fees: r.get(4)?,
            test_mode: r.get(5)?,
            trade_count: r.get(6)?,
            last_trade_id: r.get(7)?,
            bot_version: r.get(8)?,
            updated_at: r.get(9)?,
        })
    }
}

/// One change of a position, with the values before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PositionChange {
    /// Sequence number.
    pub id: i64,
    /// Instrument.
    pub symbol: String,
    /// Test data.
    pub test_mode: bool,
    /// `opened`, `increased`, `reduced`, `closed` or `flipped`.
    pub event: String,
    /// The fill that caused it.
    pub trade_id: String,
    /// Quantity before.
    pub old_qty: String,
    /// Average price before.
    pub old_avg_price: String,
    /// Realized P&L before.
    pub old_realized_pnl: String,
    /// Quantity after.
    pub new_qty: String,
    /// Average price after.
    pub new_avg_price: String,
    /// Realized P&L after.
    pub new_realized_pnl: String,
    /// Fee of the fill.
    pub fee: String,
    /// Time of the fill.
    pub ts: String,
    /// Bot version of the fill.
    pub bot_version: Option<String>,
    /// When the store applied it.
    pub created_at: String,
}

impl PositionChange {
    pub(crate) const COLUMNS: &'static str = "id, symbol, test_mode, event, trade_id, old_qty, old_avg_price, \
         old_realized_pnl, new_qty, new_avg_price, new_realized_pnl, fee, ts, bot_version, created_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<PositionChange> {
        Ok(PositionChange {
            id: r.get(0)?,
            symbol: r.get(1)?,
            test_mode: r.get(2)?,
            event: r.get(3)?,
            trade_id: r.get(4)?,
            old_qty: r.get(5)?,
            old_avg_price: r.get(6)?,
            old_realized_pnl: r.get(7)?,
            new_qty: r.get(8)?,
            new_avg_price: r.get(9)?,
            new_realized_pnl: r.get(10)?,
            fee: r.get(11)?,
            ts: r.get(12)?,
            bot_version: r.get(13)?,
            created_at: r.get(14)?,
        })
    }
}

/// Log levels, least severe first.
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warning", "error", "critical"];

/// A log entry as sent by a client, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLog {
    /// When it happened; the store's time when absent.
    pub ts: Option<Timestamp>,
    /// One of [`LOG_LEVELS`].
    pub level: String,
    /// Component that logged it.
    pub source: String,
    /// The message.
    pub message: String,
    /// Structured context (any JSON), stored verbatim.
    pub context: Option<serde_json::Value>,
    /// Test data.
    pub test_mode: bool,
    /// Bot version.
    pub bot_version: Option<String>,
}

/// A stored log entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// Sequence number.
    pub id: i64,
    /// When it happened.
    pub ts: String,
    /// Level.
    pub level: String,
    /// Component.
    pub source: String,
    /// Message.
    pub message: String,
    /// Structured context.
    pub context: Option<serde_json::Value>,
    /// Test data.
    pub test_mode: bool,
    /// Bot version.
    pub bot_version: Option<String>,
    /// When the store received it.
    pub created_at: String,
}

impl LogEntry {
    pub(crate) const COLUMNS: &'static str =
        "id, ts, level, source, message, context, test_mode, bot_version, created_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<LogEntry> {
        let context: Option<String> = r.get(5)?;
        Ok(LogEntry {
            id: r.get(0)?,
            ts: r.get(1)?,
            level: r.get(2)?,
            source: r.get(3)?,
            message: r.get(4)?,
            context: context.map(|t| parse_json(&t, 5)).transpose()?,
            test_mode: r.get(6)?,
            bot_version: r.get(7)?,
            created_at: r.get(8)?,
        })
    }
}

/// One runtime-state value of a bot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The key.
    pub key: String,
    /// Any JSON value.
    pub value: serde_json::Value,
    /// Test data.
    pub test_mode: bool,
    /// Bot version that set it.
    pub bot_version: Option<String>,
    /// When it was set.
    pub updated_at: String,
}

impl Status {
    pub(crate) const COLUMNS: &'static str = "key, value, test_mode, bot_version, updated_at";

    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Status> {
        Ok(Status {
            key: r.get(0)?,
            value: json_column(r, 1)?,
            test_mode: r.get(2)?,
            bot_version: r.get(3)?,
            updated_at: r.get(4)?,
        })
    }
}

fn json_column(r: &Row<'_>, idx: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = r.get(idx)?;
    parse_json(&text, idx)
}

fn parse_json(text: &str, idx: usize) -> rusqlite::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}
