//! Exact values at the edges: decimals for money and quantities, and timestamps.
//!
//! Money never passes through binary floating point. Decimals are parsed from the exact text a
//! client sent (a JSON string or the literal digits of a JSON number), stored as canonical text,
//! and returned as strings. Timestamps are stored as fixed-width RFC 3339 UTC text with nine
//! fractional digits, so that text order is time order and range queries can use indexes.

use std::str::FromStr;

use jiff::Timestamp;
pub use rust_decimal::Decimal;

/// Why a text is not an exact decimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    /// Not a number at all (this includes `NaN` and `Infinity`).
    NotANumber,
    /// More digits than can be held exactly (28 significant digits).
    TooPrecise,
}

impl std::fmt::Display for DecimalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecimalError::NotANumber => f.write_str("not a finite decimal number"),
            DecimalError::TooPrecise => {
                f.write_str("more than 28 significant digits, or out of range")
            }
        }
    }
}

/// Parses a decimal exactly: plain (`"12.50"`) or scientific (`"1.25e1"`) notation.
/// Rejects anything that cannot be represented without rounding.
pub fn parse_decimal(text: &str) -> Result<Decimal, DecimalError> {
    let t = text.trim();
    if t != text {
        return Err(DecimalError::NotANumber);
    }
    let (mantissa, exponent) = match t.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (t, None),
    };
    if !is_plain_number(mantissa) || exponent.is_some_and(|e| !is_integer(e)) {
        return Err(DecimalError::NotANumber);
    }
    if mantissa.bytes().filter(u8::is_ascii_digit).count() > 28 && exponent.is_some() {
        // from_scientific would round a mantissa this long; refuse rather than lose digits.
        return Err(DecimalError::TooPrecise);
    }
    let parsed = match exponent {
        Some(_) => Decimal::from_scientific(t),
        None => Decimal::from_str_exact(t),
    }
    .map_err(|_| DecimalError::TooPrecise)?;
    Ok(parsed.normalize())
}

/// `[+-]digits[.digits]` with at least one digit.
fn is_plain_number(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    (!int.is_empty() || !frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// `[+-]digits` with at least one digit.
fn is_integer(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit())
}

/// Formats a decimal canonically: no exponent, no trailing zeros, `0` never negative.
pub fn format_decimal(d: Decimal) -> String {
    let n = d.normalize();
    if n.is_zero() {
        "0".to_owned()
    } else {
        n.to_string()
    }
}

/// Reads back a decimal this crate stored; the text is canonical, so failure means a damaged row.
pub fn stored_decimal(text: &str) -> Result<Decimal, DecimalError> {
    Decimal::from_str(text).map_err(|_| DecimalError::NotANumber)
}

/// Why a text is not an acceptable timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampError(pub String);

impl std::fmt::Display for TimestampError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses an RFC 3339 timestamp with an offset (`2026-11-22T09:30:00.25+01:00`, `...Z`).
/// Years before 1970 or after 9999 are refused so that the stored text sorts by time.
pub fn parse_timestamp(text: &str) -> Result<Timestamp, TimestampError> {
    let ts: Timestamp = text.parse().map_err(|_| {
        TimestampError(format!(
            "`{text}` is not an RFC 3339 timestamp with an offset"
        ))
    })?;
    if ts < Timestamp::UNIX_EPOCH {
        return Err(TimestampError(format!("`{text}` is before 1970")));
    }
    Ok(ts)
}

/// Formats a timestamp as fixed-width UTC text with nanoseconds: `2026-11-22T09:30:00.250000000Z`.
pub fn format_timestamp(ts: Timestamp) -> String {
    format!("{ts:.9}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly_and_format_canonically() {
        let cases = [
            ("12.50", "12.5"),
            ("0.1", "0.1"),
            ("-0", "0"),
            ("0.000", "0"),
            ("100", "100"),
            ("1e3", "1000"),
            ("1.5E-3", "0.0015"),
            ("+7", "7"),
            (
                "0.30000000000000000000000001",
                "0.30000000000000000000000001",
            ),
            (
                "99999999999999999999.12345678",
                "99999999999999999999.12345678",
            ),
        ];
        for (input, want) in cases {
            let d = parse_decimal(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(format_decimal(d), want, "input {input}");
        }
    }

    #[test]
    fn decimal_arithmetic_is_exact_where_floats_are_not() {
        let a = parse_decimal("0.1").unwrap();
        let b = parse_decimal("0.2").unwrap();
        assert_eq!(format_decimal(a + b), "0.3");
        assert_ne!(0.1f64 + 0.2f64, 0.3f64);
    }

    #[test]
    fn non_numbers_and_lossy_values_are_refused() {
        for bad in [
            "NaN", "nan", "Infinity", "-inf", "", " 1", "1 ", "1.2.3", "abc", "1e", "0x10", "--1",
        ] {
            assert_eq!(
                parse_decimal(bad),
                Err(DecimalError::NotANumber),
                "input {bad:?}"
            );
        }
        for bad in [
            "1.00000000000000000000000000001",
            "123456789012345678901234567890",
            "1e40",
        ] {
            assert_eq!(
                parse_decimal(bad),
                Err(DecimalError::TooPrecise),
                "input {bad:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_stored_fixed_width_utc() {
        let ts = parse_timestamp("2026-11-22T10:30:00.25+01:00").unwrap();
        assert_eq!(format_timestamp(ts), "2026-11-22T09:30:00.250000000Z");
        let z = parse_timestamp("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(format_timestamp(z), "2026-01-02T03:04:05.000000000Z");
        assert!(parse_timestamp("2026-01-02").is_err());
        assert!(
            parse_timestamp("2026-01-02T03:04:05").is_err(),
            "an offset is required"
        );
        assert!(parse_timestamp("1969-12-31T23:59:59Z").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }
}
