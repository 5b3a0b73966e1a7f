//! Position arithmetic, average-cost method. Pure functions of (position, fill): the writer
//! applies them in the same transaction as the fill, and `check` recomputes them from the fills.
//!
//! Rules: quantities are signed (negative is short); a fill in the position's direction moves the
//! average price to the quantity-weighted mean; a fill against it realizes
//! `(price - avg) * closed_qty * direction` and leaves the average alone; a fill larger than the
//! position closes it and opens the other side at the fill price (a flip). Realized P&L excludes
//! fees, which accumulate on their own.

use rust_decimal::Decimal;

/// The state of one position (one symbol in one mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PositionState {
    /// Signed quantity: positive long, negative short, zero flat.
    pub qty: Decimal,
    /// Average entry price of the open quantity; zero when flat.
    pub avg_price: Decimal,
    /// Realized profit and loss, fees excluded.
    pub realized_pnl: Decimal,
    /// Fees paid on every fill.
    pub fees: Decimal,
}

/// What a fill did to a position; stored in `position_history.event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionEvent {
    /// From flat to a quantity.
    Opened,
    /// Added to the position in its direction.
    Increased,
    /// Took part of the position off.
    Reduced,
    /// Took all of it off, back to flat.
    Closed,
    /// Went through flat to the other side.
    Flipped,
}

impl PositionEvent {
    /// The name stored in the database and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PositionEvent::Opened => "opened",
            PositionEvent::Increased => "increased",
            PositionEvent::Reduced => "reduced",
            PositionEvent::Closed => "closed",
            PositionEvent::Flipped => "flipped",
        }
    }
}

/// A fill applied to a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    /// Signed quantity: positive buys, negative sells. Never zero.
    pub qty: Decimal,
    /// Fill price, greater than zero.
    pub price: Decimal,
    /// Fee paid, zero or more.
    pub fee: Decimal,
}

/// The arithmetic overflowed the exact decimal range (about 7.9e28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Applies `fill` to `pos`, returning the new state and what happened.
pub fn apply(pos: PositionState, fill: Fill) -> Result<(PositionState, PositionEvent), Overflow> {
    assert!(!fill.qty.is_zero(), "a fill has a non-zero quantity");
    let add = |a: Decimal, b: Decimal| a.checked_add(b).ok_or(Overflow);
    let mul = |a: Decimal, b: Decimal| a.checked_mul(b).ok_or(Overflow);
    let fees = add(pos.fees, fill.fee)?;
    let new_qty = add(pos.qty, fill.qty)?;
    let same_direction = pos.qty.is_sign_positive() == fill.qty.is_sign_positive();
    let mut next = PositionState {
        qty: new_qty,
        avg_price: pos.avg_price,
        realized_pnl: pos.realized_pnl,
        fees,
    };
    let event = if pos.qty.is_zero() {
        next.avg_price = fill.price;
        PositionEvent::Opened
    } else if same_direction {
        let cost = add(
            mul(pos.qty.abs(), pos.avg_price)?,
            mul(fill.qty.abs(), fill.price)?,
        )?;
        next.avg_price = cost.checked_div(new_qty.abs()).ok_or(Overflow)?.normalize();
        PositionEvent::Increased
    } else {
        let closed = fill.qty.abs().min(pos.qty.abs());
        let direction = if pos.qty.is_sign_positive() {
            Decimal::ONE
        } else {
            Decimal::NEGATIVE_ONE
        };
        let pnl = mul(mul(fill.price - pos.avg_price, closed)?, direction)?;
        next.realized_pnl = add(pos.realized_pnl, pnl)?;
        if new_qty.is_zero() {
            next.avg_price = Decimal::ZERO;
            PositionEvent::Closed
        } else if new_qty.is_sign_positive() == pos.qty.is_sign_positive() {
            PositionEvent::Reduced
        } else {
            next.avg_price = fill.price;
            PositionEvent::Flipped
        }
    };
    next.qty = next.qty.normalize();
    next.realized_pnl = next.realized_pnl.normalize();
    next.fees = next.fees.normalize();
    Ok((next, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::{format_decimal, parse_decimal};

    fn d(s: &str) -> Decimal {
        parse_decimal(s).expect("decimal")
    }

    fn fill(qty: &str, price: &str, fee: &str) -> Fill {
        Fill {
            qty: d(qty),
            price: d(price),
            fee: d(fee),
        }
    }

    /// Each row: the fill, then the expected event, qty, avg_price, realized_pnl, fees.
    #[test]
    fn table_of_fills() {
        let steps = [
            (
                fill("10", "100", "1"),
                PositionEvent::Opened,
                "10",
                "100",
                "0",
                "1",
            ),
            (
                fill("10", "110", "1"),
                PositionEvent::Increased,
                "20",
                "105",
                "0",
                "2",
            ),
            (
                fill("-5", "120", "0.5"),
                PositionEvent::Reduced,
                "15",
                "105",
                "75",
                "2.5",
            ),
            (
                fill("-15", "100", "0"),
                PositionEvent::Closed,
                "0",
                "0",
                "0",
                "2.5",
            ),
            (
                fill("-4", "50", "0.1"),
                PositionEvent::Opened,
                "-4",
                "50",
                "0",
                "2.6",
            ),
            (
                fill("-4", "60", "0"),
                PositionEvent::Increased,
                "-8",
                "55",
                "0",
                "2.6",
            ),
            (
                fill("2", "45", "0"),
                PositionEvent::Reduced,
                "-6",
                "55",
                "20",
                "2.6",
            ),
            (
                fill("10", "40", "0.4"),
                PositionEvent::Flipped,
                "4",
                "40",
                "110",
                "3",
            ),
            (
                fill("-0.5", "41.5", "0"),
                PositionEvent::Reduced,
                "3.5",
                "40",
                "110.75",
                "3",
            ),
        ];
        let mut pos = PositionState::default();
        for (i, (f, event, qty, avg, pnl, fees)) in steps.into_iter().enumerate() {
            let (next, ev) = apply(pos, f).expect("no overflow");
            assert_eq!(ev, event, "step {i}");
            assert_eq!(format_decimal(next.qty), qty, "qty at step {i}");
            assert_eq!(format_decimal(next.avg_price), avg, "avg at step {i}");
            assert_eq!(format_decimal(next.realized_pnl), pnl, "pnl at step {i}");
            assert_eq!(format_decimal(next.fees), fees, "fees at step {i}");
            pos = next;
        }
    }

    #[test]
    fn realized_pnl_is_exact_with_decimal_prices() {
        let mut pos = PositionState::default();
        for _ in 0..3 {
            pos = apply(pos, fill("0.1", "0.1", "0")).expect("ok").0;
        }
        let (closed, ev) = apply(pos, fill("-0.3", "0.2", "0")).expect("ok");
        assert_eq!(ev, PositionEvent::Closed);
        assert_eq!(format_decimal(closed.realized_pnl), "0.03");
    }

    #[test]
    fn overflow_is_reported_not_panicked() {
        let pos = apply(
            PositionState::default(),
            fill("10000000000000000000", "10000000000", "0"),
        )
        .expect("ok")
        .0;
        assert_eq!(
            apply(pos, fill("10000000000000000000", "10000000000", "0")),
            Err(Overflow)
        );
    }

    proptest::proptest! {
        /// Whatever the fills, the quantity is their sum and a flat position has no average price.
        #[test]
        fn qty_is_the_sum_of_fills(fills in proptest::collection::vec((-1000i64..1000, 1i64..100_000, 0i64..100), 1..50)) {
            let mut pos = PositionState::default();
            let mut sum = Decimal::ZERO;
            let mut fee_sum = Decimal::ZERO;
            for (q, p, fee) in fills.into_iter().filter(|(q, _, _)| *q != 0) {
                let f = Fill { qty: Decimal::new(q, 2), price: Decimal::new(p, 2), fee: Decimal::new(fee, 3) };
                pos = apply(pos, f).expect("small values never overflow").0;
                sum += f.qty;
                fee_sum += f.fee;
            }
            proptest::prop_assert_eq!(pos.qty, sum.normalize());
            proptest::prop_assert_eq!(pos.fees, fee_sum.normalize());
            if pos.qty.is_zero() { proptest::prop_assert!(pos.avg_price.is_zero()); }
            else { proptest::prop_assert!(pos.avg_price > Decimal::ZERO); }
        }
    }
}
