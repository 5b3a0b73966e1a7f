//! Write operations, run by the writer inside a transaction and a per-request savepoint.
//! Each returns the stored row and whether it was created (`false`: an identical re-send, which
//! writes nothing). Any error rolls the whole request back.

use rusqlite::{OptionalExtension, params};
use rust_decimal::Decimal;

use super::model::*;
use super::position::{self, Fill, PositionState};
use super::writer::Tx;
use crate::error::{Error, Result};
use crate::exact::{format_decimal, format_timestamp, stored_decimal};

fn sql(action: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| Error::sqlite(action, e)
}

/// `[3].` inside a batch, nothing for a single object: prefixes field names in errors.
pub(crate) fn field_prefix(batch: bool, index: usize) -> String {
    if batch {
        format!("[{index}].")
    } else {
        String::new()
    }
}

fn conflict(prefix: &str, id_field: &str, id: &str, differing: Vec<&str>) -> Error {
    Error::Conflict {
        field: format!("{prefix}{id_field}"),
        message: format!(
            "{id_field} {id:?} was already stored with different content (differs in: {}); nothing was written",
            differing.join(", ")
        ),
    }
}

fn require_order(tx: &Tx<'_>, prefix: &str, field: &str, id: &str) -> Result<()> {
    let found: Option<i64> = tx
        .conn
        .prepare_cached("SELECT 1 FROM orders WHERE client_order_id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(sql("look up order"))?;
    found.map(|_| ()).ok_or_else(|| Error::UnknownReference {
        field: format!("{prefix}{field}"),
        message: format!("{field} {id:?} refers to no order (create the order first)"),
    })
}

fn require_signal(tx: &Tx<'_>, prefix: &str, id: &str) -> Result<()> {
    let found: Option<i64> = tx
        .conn
        .prepare_cached("SELECT 1 FROM signals WHERE signal_id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(sql("look up signal"))?;
    found.map(|_| ()).ok_or_else(|| Error::UnknownReference {
        field: format!("{prefix}signal_id"),
        message: format!("signal_id {id:?} refers to no signal (store the signal first)"),
    })
}

fn ts_text(ts: Option<jiff::Timestamp>, tx: &Tx<'_>) -> String {
    ts.map_or_else(|| tx.now_text.to_owned(), format_timestamp)
}

/// Stores a trade and applies it to its position, or returns the identical trade stored before.
/// The common case (a new trade) costs one INSERT: the unique index finds re-sends and the
/// foreign keys find missing references.
pub(crate) fn insert_trade(tx: &mut Tx<'_>, t: &NewTrade, prefix: &str) -> Result<(Trade, bool)> {
    let trade = Trade {
        id: 0,
        trade_id: t.trade_id.clone(),
        symbol: t.symbol.clone(),
        side: t.side.as_str().to_owned(),
        qty: format_decimal(t.qty),
        price: format_decimal(t.price),
        fee: format_decimal(t.fee),
        fee_currency: t.fee_currency.clone(),
        ts: ts_text(t.ts, tx),
        order_id: t.order_id.clone(),
        signal_id: t.signal_id.clone(),
        strategy: t.strategy.clone(),
        test_mode: t.test_mode,
        bot_version: t.bot_version.clone(),
        created_at: tx.now_text.to_owned(),
    };
    let inserted = tx
        .conn
        .prepare_cached(
            "INSERT INTO trades (trade_id, symbol, side, qty, price, fee, fee_currency, ts, order_id, signal_id, \
             strategy, test_mode, bot_version, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (trade_id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                trade.trade_id,
                trade.symbol,
                trade.side,
                trade.qty,
                trade.price,
                trade.fee,
                trade.fee_currency,
                trade.ts,
                trade.order_id,
                trade.signal_id,
                trade.strategy,
                trade.test_mode,
                trade.bot_version,
                trade.created_at
            ])
        });
    match inserted {
        Ok(1) => {}
        Ok(_) => {
            let stored = tx
                .conn
                .prepare_cached(&format!(
                    "SELECT {} FROM trades WHERE trade_id = ?1",
                    Trade::COLUMNS
                ))
                .and_then(|mut s| s.query_row([&t.trade_id], Trade::from_row))
                .map_err(sql("look up trade"))?;
            let differing = trade_differences(t, &stored);
            if differing.is_empty() {
                return Ok((stored, false));
            }
            return Err(conflict(prefix, "trade_id", &t.trade_id, differing));
        }
        Err(e) if is_foreign_key_violation(&e) => {
            if let Some(order_id) = &t.order_id {
                require_order(tx, prefix, "order_id", order_id)?;
            }
            if let Some(signal_id) = &t.signal_id {
                require_signal(tx, prefix, signal_id)?;
            }
            return Err(Error::sqlite("insert trade", e));
        }
        Err(e) => return Err(Error::sqlite("insert trade", e)),
    }
    let trade = Trade {
        id: tx.conn.last_insert_rowid(),
        ..trade
    };
    tx.count("trades", 1);
    apply_to_position(tx, t, &trade, prefix)?;
    Ok((trade, true))
}

fn is_foreign_key_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

fn trade_differences(t: &NewTrade, s: &Trade) -> Vec<&'static str> {
    let mut d = Vec::new();
    let mut check = |name: &'static str, same: bool| {
        if !same {
            d.push(name);
        }
    };
    check("symbol", s.symbol == t.symbol);
    check("side", s.side == t.side.as_str());
    check("qty", s.qty == format_decimal(t.qty));
    check("price", s.price == format_decimal(t.price));
    check("fee", s.fee == format_decimal(t.fee));
    check("fee_currency", s.fee_currency == t.fee_currency);
    // A re-send without `ts` matches whatever time the first one was stored at.
    check("ts", t.ts.is_none_or(|ts| s.ts == format_timestamp(ts)));
    check("order_id", s.order_id == t.order_id);
    check("signal_id", s.signal_id == t.signal_id);
    check("strategy", s.strategy == t.strategy);
    check("test_mode", s.test_mode == t.test_mode);
    check("bot_version", s.bot_version == t.bot_version);
    d
}

/// Reads a position's state; flat and empty when it has never traded.
pub(crate) fn position_state(
    conn: &rusqlite::Connection,
    symbol: &str,
    test_mode: bool,
) -> Result<(PositionState, i64)> {
    let row = conn
        .prepare_cached("SELECT qty, avg_price, realized_pnl, fees, trade_count FROM positions WHERE symbol = ?1 AND test_mode = ?2")
        .and_then(|mut s| {
            s.query_row(params![symbol, test_mode], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get(4)?))
            })
            .optional()
        })
        .map_err(sql("read position"))?;
    let Some((qty, avg, pnl, fees, count)) = row else {
        return Ok((PositionState::default(), 0));
    };
    let dec = |text: &str| {
        stored_decimal(text).map_err(|_| {
            Error::invalid(
                "corrupt_row",
                None,
                format!("position {symbol}: stored value {text:?} is not a decimal"),
            )
        })
    };
    Ok((
        PositionState {
            qty: dec(&qty)?,
            avg_price: dec(&avg)?,
            realized_pnl: dec(&pnl)?,
            fees: dec(&fees)?,
        },
        count,
    ))
}

fn apply_to_position(tx: &mut Tx<'_>, t: &NewTrade, trade: &Trade, prefix: &str) -> Result<()> {
    let (old, count) = position_state(tx.conn, &t.symbol, t.test_mode)?;
    let signed = match t.side {
        Side::Buy => t.qty,
        Side::Sell => -t.qty,
    };
    let (new, event) = position::apply(old, Fill { qty: signed, price: t.price, fee: t.fee }).map_err(|_| {
        Error::invalid(
            "out_of_range",
            Some(format!("{prefix}qty")),
            format!("position {} would exceed the exact decimal range (about 7.9e28); nothing was written", t.symbol),
        )
    })?;
    let f = format_decimal;
    tx.conn
        .prepare_cached(
            "INSERT INTO positions (symbol, test_mode, qty, avg_price, realized_pnl, fees, trade_count, last_trade_id, bot_version, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (symbol, test_mode) DO UPDATE SET qty = excluded.qty, avg_price = excluded.avg_price,
               realized_pnl = excluded.realized_pnl, fees = excluded.fees, trade_count = excluded.trade_count,
               last_trade_id = excluded.last_trade_id, bot_version = excluded.bot_version, updated_at = excluded.updated_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.symbol,
                t.test_mode,
                f(new.qty),
                f(new.avg_price),
                f(new.realized_pnl),
                f(new.fees),
                count + 1,
                t.trade_id,
                t.bot_version,
                tx.now_text
            ])
        })
        .map_err(sql("update position"))?;
    tx.conn
        .prepare_cached(
            "INSERT INTO position_history (symbol, test_mode, event, trade_id, old_qty, old_avg_price, old_realized_pnl,
               new_qty, new_avg_price, new_realized_pnl, fee, ts, bot_version, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .and_then(|mut s| {
            s.execute(params![
                t.symbol,
                t.test_mode,
                event.as_str(),
                t.trade_id,
                f(old.qty),
                f(old.avg_price),
                f(old.realized_pnl),
                f(new.qty),
                f(new.avg_price),
                f(new.realized_pnl),
                f(t.fee),
                trade.ts,
                t.bot_version,
                tx.now_text
            ])
        })
        .map_err(sql("insert position history"))?;
    tx.count("positions", 1);
    tx.count("position_history", 1);
    Ok(())
}

fn get_order(tx: &Tx<'_>, client_order_id: &str) -> Result<Option<Order>> {
    tx.conn
        .prepare_cached(&format!(
            "SELECT {} FROM orders WHERE client_order_id = ?1",
            Order::COLUMNS
        ))
        .and_then(|mut s| s.query_row([client_order_id], Order::from_row).optional())
        .map_err(sql("look up order"))
}

/// Stores an order, or returns the identical order stored before.
pub(crate) fn insert_order(tx: &mut Tx<'_>, o: &NewOrder, prefix: &str) -> Result<(Order, bool)> {
    if let Some(stored) = get_order(tx, &o.client_order_id)? {
        let opt = |d: Option<Decimal>| d.map(format_decimal);
        let mut differing = Vec::new();
        for (name, same) in [
            ("symbol", stored.symbol == o.symbol),
            ("side", stored.side == o.side.as_str()),
            ("type", stored.order_type == o.order_type),
            ("qty", stored.qty == format_decimal(o.qty)),
            ("limit_price", stored.limit_price == opt(o.limit_price)),
            (
                "ts",
                o.ts.is_none_or(|ts| stored.ts == format_timestamp(ts)),
            ),
            ("strategy", stored.strategy == o.strategy),
            ("signal_id", stored.signal_id == o.signal_id),
            ("test_mode", stored.test_mode == o.test_mode),
            ("bot_version", stored.bot_version == o.bot_version),
        ] {
            if !same {
                differing.push(name);
            }
        }
        // The status moves on after creation (PATCH), so a re-send is matched on everything else.
        if differing.is_empty() {
            return Ok((stored, false));
        }
        return Err(conflict(
            prefix,
            "client_order_id",
            &o.client_order_id,
            differing,
        ));
    }
    if let Some(signal_id) = &o.signal_id {
        require_signal(tx, prefix, signal_id)?;
    }
    let ts = ts_text(o.ts, tx);
    tx.conn
        .prepare_cached(
            "INSERT INTO orders (client_order_id, symbol, side, type, qty, limit_price, status, ts, strategy, signal_id,
               test_mode, bot_version, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
        )
        .and_then(|mut s| {
            s.execute(params![
                o.client_order_id,
                o.symbol,
                o.side.as_str(),
                o.order_type,
                format_decimal(o.qty),
                o.limit_price.map(format_decimal),
                o.status,
                ts,
                o.strategy,
                o.signal_id,
                o.test_mode,
                o.bot_version,
                tx.now_text
            ])
        })
        .map_err(sql("insert order"))?;
    tx.count("orders", 1);
    let stored = get_order(tx, &o.client_order_id)?.ok_or_else(|| Error::NotFound {
        what: format!("order {:?} just inserted", o.client_order_id),
    })?;
    Ok((stored, true))
}

/// Moves an order to `status`. Re-sending the current status changes nothing; a terminal
/// status (`filled`, `canceled`, ...) is never left.
pub(crate) fn update_order_status(
    tx: &mut Tx<'_>,
    client_order_id: &str,
    status: &str,
) -> Result<(Order, bool)> {
    let Some(order) = get_order(tx, client_order_id)? else {
        return Err(Error::NotFound {
            what: format!("order {client_order_id:?}"),
        });
    };
    if order.status == status {
        return Ok((order, false));
    }
    if TERMINAL_STATUSES.contains(&order.status.as_str()) {
        return Err(Error::Conflict {
            field: "status".into(),
            message: format!(
                "order {client_order_id:?} is {} and cannot become {status}",
                order.status
            ),
        });
    }
    tx.conn
        .prepare_cached("UPDATE orders SET status = ?1, updated_at = ?2 WHERE client_order_id = ?3")
        .and_then(|mut s| s.execute(params![status, tx.now_text, client_order_id]))
        .map_err(sql("update order status"))?;
    tx.count("orders", 1);
    let updated = Order {
        status: status.to_owned(),
        updated_at: tx.now_text.to_owned(),
        ..order
    };
    Ok((updated, true))
}

/// Stores a signal, or returns the identical signal stored before.
pub(crate) fn insert_signal(
    tx: &mut Tx<'_>,
    s: &NewSignal,
    prefix: &str,
) -> Result<(Signal, bool)> {
    let get = |tx: &Tx<'_>| {
        tx.conn
            .prepare_cached(&format!(
                "SELECT {} FROM signals WHERE signal_id = ?1",
                Signal::COLUMNS
            ))
            .and_then(|mut st| st.query_row([&s.signal_id], Signal::from_row).optional())
            .map_err(sql("look up signal"))
    };
    if let Some(stored) = get(tx)? {
        let mut differing = Vec::new();
        for (name, same) in [
            (
                "ts",
                s.ts.is_none_or(|ts| stored.ts == format_timestamp(ts)),
            ),
            ("symbol", stored.symbol == s.symbol),
            ("price", stored.price == format_decimal(s.price)),
            ("final_signal", stored.final_signal == s.final_signal),
            (
                "confidence",
                stored.confidence == format_decimal(s.confidence),
            ),
            (
                "aggregation_method",
                stored.aggregation_method == s.aggregation_method,
            ),
            ("strategies", stored.strategies == s.strategies),
            (
                "strategy_version",
                stored.strategy_version == s.strategy_version,
            ),
            ("test_mode", stored.test_mode == s.test_mode),
            ("bot_version", stored.bot_version == s.bot_version),
        ] {
            if !same {
                differing.push(name);
            }
        }
        if differing.is_empty() {
            return Ok((stored, false));
        }
        return Err(conflict(prefix, "signal_id", &s.signal_id, differing));
    }
    let strategies = serde_json::to_string(&s.strategies).map_err(|e| {
        Error::invalid(
            "invalid_value",
            Some(format!("{prefix}strategies")),
            e.to_string(),
        )
    })?;
    tx.conn
        .prepare_cached(
            "INSERT INTO signals (signal_id, ts, symbol, price, final_signal, confidence, aggregation_method, strategies,
               strategy_version, test_mode, bot_version, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .and_then(|mut st| {
            st.execute(params![
                s.signal_id,
                ts_text(s.ts, tx),
                s.symbol,
                format_decimal(s.price),
                s.final_signal,
                format_decimal(s.confidence),
                s.aggregation_method,
                strategies,
                s.strategy_version,
                s.test_mode,
                s.bot_version,
                tx.now_text
            ])
        })
        .map_err(sql("insert signal"))?;
    tx.count("signals", 1);
    let stored = get(tx)?.ok_or_else(|| Error::NotFound {
        what: format!("signal {:?} just inserted", s.signal_id),
    })?;
    Ok((stored, true))
}

/// Appends a log entry.
pub(crate) fn insert_log(tx: &mut Tx<'_>, l: &NewLog) -> Result<LogEntry> {
    let context = l.context.as_ref().map(|c| c.to_string());
    let ts = ts_text(l.ts, tx);
    tx.conn
        .prepare_cached(
            "INSERT INTO logs (ts, level, source, message, context, test_mode, bot_version, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![ts, l.level, l.source, l.message, context, l.test_mode, l.bot_version, tx.now_text])
        })
        .map_err(sql("insert log"))?;
    tx.count("logs", 1);
    Ok(LogEntry {
        id: tx.conn.last_insert_rowid(),
        ts,
        level: l.level.clone(),
        source: l.source.clone(),
        message: l.message.clone(),
        context: l.context.clone(),
        test_mode: l.test_mode,
        bot_version: l.bot_version.clone(),
        created_at: tx.now_text.to_owned(),
    })
}

/// Sets one runtime-state value.
pub(crate) fn put_status(
    tx: &mut Tx<'_>,
    key: &str,
    value: &serde_json::Value,
    test_mode: bool,
    bot_version: Option<&str>,
) -> Result<Status> {
    tx.conn
        .prepare_cached(
            "INSERT INTO bot_status (key, test_mode, value, bot_version, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (key, test_mode) DO UPDATE SET value = excluded.value, bot_version = excluded.bot_version,
               updated_at = excluded.updated_at",
        )
        .and_then(|mut s| s.execute(params![key, test_mode, value.to_string(), bot_version, tx.now_text]))
        .map_err(sql("set status"))?;
    tx.count("bot_status", 1);
    Ok(Status {
        key: key.to_owned(),
        value: value.clone(),
        test_mode,
        bot_version: bot_version.map(str::to_owned),
        updated_at: tx.now_text.to_owned(),
    })
}
