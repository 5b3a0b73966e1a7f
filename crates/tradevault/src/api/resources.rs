//! The field tables of every resource, and their conversion into store types.

use serde_json::Value;

use super::spec::{Field, Kind, Parsed, Range, parse_object};
use crate::error::{Error, Result};
use crate::store::model::*;
use crate::store::query::{Filter, PageRequest};

const fn req(name: &'static str, kind: Kind, doc: &'static str) -> Field {
    Field {
        name,
        kind,
        required: true,
        doc,
    }
}

const fn opt(name: &'static str, kind: Kind, doc: &'static str) -> Field {
    Field {
        name,
        kind,
        required: false,
        doc,
    }
}

const SYMBOL: Kind = Kind::Text { max: 64 };
const LABEL: Kind = Kind::Text { max: 128 };
const VERSION: Kind = Kind::Text { max: 64 };
const SIDES: &[&str] = &["buy", "sell"];

/// `POST /v1/trades`.
pub const TRADE_FIELDS: &[Field] = &[
    req(
        "trade_id",
        Kind::Id,
        "Unique id chosen by the client; re-sending it is idempotent.",
    ),
    req("symbol", SYMBOL, "Instrument, e.g. BTCUSD."),
    req("side", Kind::OneOf(SIDES), "buy or sell."),
    req(
        "qty",
        Kind::Decimal(Range::Positive),
        "Quantity filled, greater than 0.",
    ),
    req(
        "price",
        Kind::Decimal(Range::Positive),
        "Fill price, greater than 0.",
    ),
    opt(
        "fee",
        Kind::Decimal(Range::NonNegative),
        "Fee paid, 0 or more (default 0).",
    ),
    opt(
        "fee_currency",
        Kind::Text { max: 16 },
        "Currency of the fee.",
    ),
    opt(
        "ts",
        Kind::Timestamp,
        "When the fill happened (default: when the store received it).",
    ),
    opt(
        "order_id",
        Kind::Id,
        "client_order_id of the order this fills; the order must exist.",
    ),
    opt(
        "signal_id",
        Kind::Id,
        "The signal that caused the trade; the signal must exist.",
    ),
    opt("strategy", LABEL, "Strategy that traded."),
    opt(
        "test_mode",
        Kind::Bool,
        "Test data, kept out of production reads (default false).",
    ),
    opt("bot_version", VERSION, "Version of the bot that wrote it."),
];

/// `POST /v1/orders`.
pub const ORDER_FIELDS: &[Field] = &[
    req(
        "client_order_id",
        Kind::Id,
        "Unique id chosen by the client; re-sending it is idempotent.",
    ),
    req("symbol", SYMBOL, "Instrument."),
    req("side", Kind::OneOf(SIDES), "buy or sell."),
    req("type", Kind::OneOf(ORDER_TYPES), "market or limit."),
    req(
        "qty",
        Kind::Decimal(Range::Positive),
        "Quantity, greater than 0.",
    ),
    opt(
        "limit_price",
        Kind::Decimal(Range::Positive),
        "Limit price: required for limit orders, refused for market orders.",
    ),
    opt(
        "ts",
        Kind::Timestamp,
        "When the order was placed (default: when the store received it).",
    ),
    opt(
        "status",
        Kind::OneOf(ORDER_STATUSES),
        "Initial status (default new).",
    ),
    opt("strategy", LABEL, "Strategy that placed it."),
    opt(
        "signal_id",
        Kind::Id,
        "The signal behind it; the signal must exist.",
    ),
    opt("test_mode", Kind::Bool, "Test data (default false)."),
    opt("bot_version", VERSION, "Version of the bot that wrote it."),
];

/// `PATCH /v1/orders/{client_order_id}`.
pub const ORDER_PATCH_FIELDS: &[Field] = &[req(
    "status",
    Kind::OneOf(ORDER_STATUSES),
    "New status; filled, canceled, rejected and expired are final.",
)];

/// `POST /v1/signals`.
pub const SIGNAL_FIELDS: &[Field] = &[
    req(
        "signal_id",
        Kind::Id,
        "Unique id chosen by the client; re-sending it is idempotent.",
    ),
    opt(
        "ts",
        Kind::Timestamp,
        "When the signal was produced (default: when the store received it).",
    ),
    req("symbol", SYMBOL, "Instrument."),
    req(
        "price",
        Kind::Decimal(Range::Positive),
        "Price the signal was computed at.",
    ),
    req(
        "final_signal",
        Kind::OneOf(FINAL_SIGNALS),
        "buy, sell or hold.",
    ),
    req(
        "confidence",
        Kind::Decimal(Range::UnitInterval),
        "Confidence from 0 to 1.",
    ),
    opt(
        "aggregation_method",
        Kind::Text { max: 64 },
        "How the strategies were combined.",
    ),
    opt(
        "strategies",
        Kind::Object,
        "Per-strategy breakdown, stored verbatim (default {}).",
    ),
    opt(
        "strategy_version",
        LABEL,
        "Version or hash of the strategy set.",
    ),
    opt("test_mode", Kind::Bool, "Test data (default false)."),
    opt("bot_version", VERSION, "Version of the bot that wrote it."),
];

/// `POST /v1/logs`.
pub const LOG_FIELDS: &[Field] = &[
    opt(
        "ts",
        Kind::Timestamp,
        "When it happened (default: when the store received it).",
    ),
    req(
        "level",
        Kind::OneOf(LOG_LEVELS),
        "debug, info, warning, error or critical.",
    ),
    req("source", LABEL, "Component that logged it."),
    req("message", Kind::LongText { max: 16 * 1024 }, "The message."),
    opt(
        "context",
        Kind::Any,
        "Structured context, any JSON, stored verbatim.",
    ),
    opt("test_mode", Kind::Bool, "Test data (default false)."),
    opt("bot_version", VERSION, "Version of the bot that wrote it."),
];

/// `PUT /v1/status/{key}`.
pub const STATUS_FIELDS: &[Field] = &[
    req("value", Kind::Any, "Any JSON value."),
    opt("test_mode", Kind::Bool, "Test data (default false)."),
    opt("bot_version", VERSION, "Version of the bot that set it."),
];

/// `POST /v1/admin/restore`: files written by `tradevault restore --in-place`.
pub const ADMIN_RESTORE_FIELDS: &[Field] = &[
    req(
        "staging",
        Kind::LongText { max: 4096 },
        "The verified, checked database to put in: a file in <data_dir>/.tradevault-restore/.",
    ),
    req(
        "safety",
        Kind::LongText { max: 4096 },
        "Where to write the safety copy of the current content: a new file in the same directory.",
    ),
];

const TEST_MODE_PARAM: Field = opt(
    "test_mode",
    Kind::OneOf(&["false", "true", "all", "0", "1"]),
    "false (default): production rows; true: test rows; all: both.",
);
const LIMIT: Field = opt(
    "limit",
    Kind::Count,
    "Most rows to return (default and maximum are configured: api.page_limit_*).",
);
const CURSOR: Field = opt("cursor", Kind::Cursor, "next_cursor of the previous page.");
const FROM: Field = opt(
    "from",
    Kind::Timestamp,
    "Only rows with ts at or after this time.",
);
const TO: Field = opt(
    "to",
    Kind::Timestamp,
    "Only rows with ts strictly before this time.",
);

/// `GET /v1/trades`.
pub const TRADE_QUERY: &[Field] = &[
    opt("symbol", SYMBOL, "Only this instrument."),
    FROM,
    TO,
    TEST_MODE_PARAM,
    opt("strategy", LABEL, "Only this strategy."),
    opt("signal_id", Kind::Id, "Only trades caused by this signal."),
    opt("order_id", Kind::Id, "Only fills of this order."),
    LIMIT,
    CURSOR,
];
/// `GET /v1/orders`.
pub const ORDER_QUERY: &[Field] = &[
    opt("symbol", SYMBOL, "Only this instrument."),
    FROM,
    TO,
    TEST_MODE_PARAM,
    opt("strategy", LABEL, "Only this strategy."),
    opt("signal_id", Kind::Id, "Only orders caused by this signal."),
    opt(
        "status",
        Kind::OneOf(ORDER_STATUSES),
        "Only orders in this status.",
    ),
    LIMIT,
    CURSOR,
];
/// `GET /v1/signals`.
pub const SIGNAL_QUERY: &[Field] = &[
    opt("symbol", SYMBOL, "Only this instrument."),
    FROM,
    TO,
    TEST_MODE_PARAM,
    opt(
        "final_signal",
        Kind::OneOf(FINAL_SIGNALS),
        "Only this final signal.",
    ),
    LIMIT,
    CURSOR,
];
/// `GET /v1/logs`.
pub const LOG_QUERY: &[Field] = &[
    opt("level", Kind::OneOf(LOG_LEVELS), "Only this level."),
    opt("source", LABEL, "Only this source."),
    FROM,
    TO,
    TEST_MODE_PARAM,
    LIMIT,
    CURSOR,
];
/// `GET /v1/positions` and `GET /v1/positions/{symbol}`.
pub const POSITION_QUERY: &[Field] = &[
    TEST_MODE_PARAM,
    opt("symbol", SYMBOL, "Only this instrument."),
];
/// Lists under one parent (`/v1/positions/{symbol}/history`, `/v1/signals/{id}/trades`).
pub const CHILD_QUERY: &[Field] = &[TEST_MODE_PARAM, LIMIT, CURSOR];
/// Single-row reads.
pub const MODE_QUERY: &[Field] = &[TEST_MODE_PARAM];
/// `GET /v1/stats`.
pub const STATS_QUERY: &[Field] = &[opt(
    "check",
    Kind::Bool,
    "Run PRAGMA quick_check now instead of reporting the last result.",
)];

/// The objects of a body: one object, or a batch (array) of 1 to `max` objects.
/// Returns them with a flag saying whether the body was a batch.
pub fn body_items(body: &Value, max: u64) -> Result<(Vec<&Value>, bool)> {
    match body {
        Value::Array(items) if items.is_empty() => Err(Error::invalid(
            "empty_batch",
            None,
            "the batch is empty; send at least one item",
        )),
        Value::Array(items) if items.len() as u64 > max => Err(Error::invalid(
            "batch_too_large",
            None,
            format!(
                "the batch has {} items; the limit is {max} (api.batch_items_max)",
                items.len()
            ),
        )),
        Value::Array(items) => Ok((items.iter().collect(), true)),
        Value::Object(_) => Ok((vec![body], false)),
        _ => Err(Error::invalid(
            "invalid_type",
            None,
            "the request body must be a JSON object or an array of objects",
        )),
    }
}

/// Validates every item with `convert`, and refuses an id repeated inside the batch.
pub fn parse_items<T>(
    items: &[&Value],
    batch: bool,
    spec: &[Field],
    id_field: Option<&str>,
    convert: fn(Parsed) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(items.len());
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = if batch {
            format!("[{i}].")
        } else {
            String::new()
        };
        let parsed = parse_object(item, spec, &prefix)?;
        if let Some(id_field) = id_field
            && let Some(id) = item.get(id_field).and_then(Value::as_str)
            && let Some(first) = seen.insert(id, i)
        {
            return Err(Error::invalid(
                "duplicate_id",
                Some(format!("{prefix}{id_field}")),
                format!("{id_field} {id:?} appears twice in the batch (items {first} and {i})"),
            ));
        }
        out.push(convert(parsed).map_err(|e| prefix_field(e, &prefix))?);
    }
    Ok(out)
}

fn prefix_field(e: Error, prefix: &str) -> Error {
    match e {
        Error::Invalid {
            code,
            field: Some(f),
            message,
        } if !prefix.is_empty() => Error::Invalid {
            code,
            field: Some(format!("{prefix}{f}")),
            message: format!("{prefix}{message}"),
        },
        other => other,
    }
}

/// A validated trade.
pub fn new_trade(mut p: Parsed) -> Result<NewTrade> {
    Ok(NewTrade {
        trade_id: p.required_text("trade_id")?,
        symbol: p.required_text("symbol")?,
        side: side(&mut p)?,
        qty: p.required_decimal("qty")?,
        price: p.required_decimal("price")?,
        fee: p.decimal("fee").unwrap_or_default(),
        fee_currency: p.text("fee_currency"),
        ts: p.time("ts"),
        order_id: p.text("order_id"),
        signal_id: p.text("signal_id"),
        strategy: p.text("strategy"),
        test_mode: p.bool("test_mode").unwrap_or(false),
        bot_version: p.text("bot_version"),
    })
}

fn side(p: &mut Parsed) -> Result<Side> {
    let s = p.required_text("side")?;
    Side::parse(&s).ok_or_else(|| {
        Error::invalid(
            "invalid_value",
            Some("side".into()),
            format!("side must be buy or sell, not {s:?}"),
        )
    })
}

/// A validated order.
pub fn new_order(mut p: Parsed) -> Result<NewOrder> {
    let order_type = p.required_text("type")?;
    let limit_price = p.decimal("limit_price");
    match (order_type.as_str(), limit_price) {
        ("limit", None) => {
            return Err(Error::invalid(
                "missing_field",
                Some("limit_price".into()),
                "limit_price is required for a limit order",
            ));
        }
        ("market", Some(_)) => {
            return Err(Error::invalid(
                "invalid_value",
                Some("limit_price".into()),
                "limit_price must be absent for a market order",
            ));
        }
        _ => {}
    }
    Ok(NewOrder {
        client_order_id: p.required_text("client_order_id")?,
        symbol: p.required_text("symbol")?,
        side: side(&mut p)?,
        order_type,
        qty: p.required_decimal("qty")?,
        limit_price,
        status: p.text("status").unwrap_or_else(|| "new".into()),
        ts: p.time("ts"),
        strategy: p.text("strategy"),
        signal_id: p.text("signal_id"),
        test_mode: p.bool("test_mode").unwrap_or(false),
        bot_version: p.text("bot_version"),
    })
}

/// A validated signal.
pub fn new_signal(mut p: Parsed) -> Result<NewSignal> {
    Ok(NewSignal {
        signal_id: p.required_text("signal_id")?,
        ts: p.time("ts"),
        symbol: p.required_text("symbol")?,
        price: p.required_decimal("price")?,
        final_signal: p.required_text("final_signal")?,
        confidence: p.required_decimal("confidence")?,
        aggregation_method: p.text("aggregation_method"),
        strategies: p
            .json("strategies")
            .unwrap_or_else(|| Value::Object(Default::default())),
        strategy_version: p.text("strategy_version"),
        test_mode: p.bool("test_mode").unwrap_or(false),
        bot_version: p.text("bot_version"),
    })
}

/// A validated log entry.
pub fn new_log(mut p: Parsed) -> Result<NewLog> {
    Ok(NewLog {
        ts: p.time("ts"),
        level: p.required_text("level")?,
        source: p.required_text("source")?,
        message: p.required_text("message")?,
        context: p.json("context"),
        test_mode: p.bool("test_mode").unwrap_or(false),
        bot_version: p.text("bot_version"),
    })
}

/// The `test_mode` query parameter.
pub fn test_mode(p: &mut Parsed) -> TestMode {
    match p.text("test_mode").as_deref() {
        Some("true" | "1") => TestMode::Test,
        Some("all") => TestMode::All,
        _ => TestMode::Production,
    }
}

/// The list filter from a parsed query string.
pub fn filter(p: &mut Parsed) -> Filter {
    Filter {
        symbol: p.text("symbol"),
        from: p.time("from"),
        to: p.time("to"),
        test_mode: test_mode(p),
        strategy: p.text("strategy"),
        signal_id: p.text("signal_id"),
        order_id: p.text("order_id"),
        status: p.text("status"),
        final_signal: p.text("final_signal"),
        level: p.text("level"),
        source: p.text("source"),
    }
}

/// The page request from a parsed query string, bounded by the configured limits.
pub fn page(p: &mut Parsed, limit_default: u64, limit_max: u64) -> Result<PageRequest> {
    let limit = p.count("limit").unwrap_or(limit_default);
    if limit == 0 || limit > limit_max {
        return Err(Error::invalid(
            "invalid_query",
            Some("limit".into()),
            format!("limit must be from 1 to {limit_max}, not {limit}"),
        ));
    }
    let after = p
        .count("cursor")
        .map(|c| {
            i64::try_from(c).map_err(|_| {
                Error::invalid(
                    "invalid_query",
                    Some("cursor".into()),
                    "cursor is out of range",
                )
            })
        })
        .transpose()?;
    Ok(PageRequest { limit, after })
}
