//! Field specs: one table per resource says which fields exist, their kinds and limits. The
//! same tables validate request bodies and query strings and generate the OpenAPI document, so
//! the two cannot drift apart.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::exact::{parse_decimal, parse_timestamp};

/// Allowed range of a decimal field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Greater than zero.
    Positive,
    /// Zero or more.
    NonNegative,
    /// From 0 to 1 inclusive.
    UnitInterval,
}

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client-chosen identifier: 1 to 128 bytes, no control characters.
    Id,
    /// A short single-line text of at most `max` bytes.
    Text {
        /// Longest accepted, in bytes.
        max: usize,
    },
    /// A text of at most `max` bytes that may span lines.
    LongText {
        /// Longest accepted, in bytes.
        max: usize,
    },
    /// An exact decimal, given as a JSON string or number, returned as a string.
    Decimal(Range),
    /// An RFC 3339 timestamp with an offset.
    Timestamp,
    /// `true` or `false`.
    Bool,
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// A JSON object, stored verbatim.
    Object,
    /// Any JSON value, stored verbatim.
    Any,
    /// A non-negative integer (query strings: `limit`).
    Count,
    /// An opaque page cursor (query strings).
    Cursor,
}

/// One field of a request body or query string.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name in JSON and in query strings.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// Whether it must be present (and not null).
    pub required: bool,
    /// One sentence for the OpenAPI document.
    pub doc: &'static str,
}

/// A field's validated value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// Id, text, or one of a set.
    Text(String),
    /// An exact decimal.
    Decimal(Decimal),
    /// A timestamp.
    Time(Timestamp),
    /// A boolean.
    Bool(bool),
    /// A count or cursor.
    Count(u64),
    /// Verbatim JSON.
    Json(Value),
}

/// The validated fields of one object, taken out by name.
#[derive(Debug, Default)]
pub struct Parsed {
    vals: Vec<(&'static str, Val)>,
}

impl Parsed {
    fn take(&mut self, name: &str) -> Option<Val> {
        let i = self.vals.iter().position(|(n, _)| *n == name)?;
        Some(self.vals.swap_remove(i).1)
    }

    /// A text field, if present.
    pub fn text(&mut self, name: &str) -> Option<String> {
        match self.take(name) {
            Some(Val::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// A decimal field, if present.
    pub fn decimal(&mut self, name: &str) -> Option<Decimal> {
        match self.take(name) {
            Some(Val::Decimal(d)) => Some(d),
            _ => None,
        }
    }

    /// A timestamp field, if present.
    pub fn time(&mut self, name: &str) -> Option<Timestamp> {
        match self.take(name) {
            Some(Val::Time(t)) => Some(t),
            _ => None,
        }
    }

    /// A boolean field, if present.
    pub fn bool(&mut self, name: &str) -> Option<bool> {
        match self.take(name) {
            Some(Val::Bool(b)) => Some(b),
            _ => None,
        }
    }

    /// A count or cursor field, if present.
    pub fn count(&mut self, name: &str) -> Option<u64> {
        match self.take(name) {
            Some(Val::Count(c)) => Some(c),
            _ => None,
        }
    }

    /// A JSON field, if present.
    pub fn json(&mut self, name: &str) -> Option<Value> {
        match self.take(name) {
            Some(Val::Json(v)) => Some(v),
            _ => None,
        }
    }

    /// A required text field; the spec guarantees it is there.
    pub fn required_text(&mut self, name: &str) -> Result<String> {
        self.text(name).ok_or_else(|| missing(name, ""))
    }

    /// A required decimal field; the spec guarantees it is there.
    pub fn required_decimal(&mut self, name: &str) -> Result<Decimal> {
        self.decimal(name).ok_or_else(|| missing(name, ""))
    }
}

fn missing(name: &str, prefix: &str) -> Error {
    Error::invalid(
        "missing_field",
        Some(format!("{prefix}{name}")),
        format!("{prefix}{name} is required"),
    )
}

/// Parses a request body as JSON. Numbers keep their exact text.
pub fn parse_json(body: &[u8]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(
            "malformed_json",
            None,
            "the request body is empty; send a JSON object or array",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Error::invalid(
            "malformed_json",
            None,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// Validates one JSON object against `spec`. `prefix` (`[2].`) locates it inside a batch.
pub fn parse_object(value: &Value, spec: &[Field], prefix: &str) -> Result<Parsed> {
    let Value::Object(map) = value else {
        let at = if prefix.is_empty() {
            "the request body".to_owned()
        } else {
            prefix.trim_end_matches('.').to_owned()
        };
        return Err(Error::invalid(
            "invalid_type",
            none_if_empty(prefix),
            format!("{at} must be a JSON object"),
        ));
    };
    for key in map.keys() {
        if !spec.iter().any(|f| f.name == key) {
            let known: Vec<&str> = spec.iter().map(|f| f.name).collect();
            return Err(Error::invalid(
                "unknown_field",
                Some(format!("{prefix}{key}")),
                format!(
                    "unknown field {prefix}{key}; known fields: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    let mut parsed = Parsed::default();
    for field in spec {
        match map.get(field.name) {
            // A required "any JSON" field may well be null; elsewhere null means absent.
            Some(Value::Null) if field.required && field.kind == Kind::Any => {
                parsed.vals.push((field.name, Val::Json(Value::Null)));
            }
            None | Some(Value::Null) if field.required => return Err(missing(field.name, prefix)),
            None | Some(Value::Null) => {}
            Some(v) => parsed
                .vals
                .push((field.name, parse_value(field, v, prefix)?)),
        }
    }
    Ok(parsed)
}

fn none_if_empty(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        None
    } else {
        Some(prefix.trim_end_matches('.').to_owned())
    }
}

fn parse_value(field: &Field, v: &Value, prefix: &str) -> Result<Val> {
    let name = format!("{prefix}{}", field.name);
    let wrong_type = |expected: &str| {
        Error::invalid(
            "invalid_type",
            Some(name.clone()),
            format!("{name} must be {expected}, not {}", json_type(v)),
        )
    };
    match field.kind {
        Kind::Id | Kind::Text { .. } | Kind::LongText { .. } | Kind::OneOf(_) => {
            let Value::String(s) = v else {
                return Err(wrong_type("a string"));
            };
            check_text(field.kind, s, &name).map(Val::Text)
        }
        Kind::Decimal(range) => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(wrong_type("a decimal number or a string holding one")),
            };
            check_decimal(range, &text, &name).map(Val::Decimal)
        }
        Kind::Timestamp => {
            let Value::String(s) = v else {
                return Err(wrong_type("an RFC 3339 timestamp string"));
            };
            parse_timestamp(s).map(Val::Time).map_err(|e| {
                Error::invalid("invalid_value", Some(name.clone()), format!("{name}: {e}"))
            })
        }
        Kind::Bool => match v {
            Value::Bool(b) => Ok(Val::Bool(*b)),
            _ => Err(wrong_type("true or false")),
        },
        Kind::Object => match v {
            Value::Object(_) => Ok(Val::Json(v.clone())),
            _ => Err(wrong_type("a JSON object")),
        },
        Kind::Any => Ok(Val::Json(v.clone())),
        Kind::Count | Kind::Cursor => match v {
            Value::Number(n) => n
                .as_u64()
                .map(Val::Count)
                .ok_or_else(|| wrong_type("a non-negative integer")),
            _ => Err(wrong_type("a non-negative integer")),
        },
    }
}

fn check_text(kind: Kind, s: &str, name: &str) -> Result<String> {
    let invalid =
        |code: &'static str, message: String| Error::invalid(code, Some(name.to_owned()), message);
    let (max, multiline) = match kind {
        Kind::Id => (128, false),
        Kind::Text { max } => (max, false),
        Kind::LongText { max } => (max, true),
        Kind::OneOf(allowed) => {
            return if allowed.contains(&s) {
                Ok(s.to_owned())
            } else {
                Err(invalid(
                    "invalid_value",
                    format!("{name} must be one of {}, not {s:?}", allowed.join(", ")),
                ))
            };
        }
        _ => (usize::MAX, true),
    };
    if s.is_empty() {
        return Err(invalid(
            "invalid_value",
            format!("{name} must not be empty"),
        ));
    }
    if s.len() > max {
        return Err(invalid(
            "too_long",
            format!("{name} is {} bytes long; the limit is {max}", s.len()),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(invalid(
            "invalid_value",
            format!("{name} must not contain control characters"),
        ));
    }
    if kind == Kind::Id && s.trim() != s {
        return Err(invalid(
            "invalid_value",
            format!("{name} must not start or end with whitespace"),
        ));
    }
    Ok(s.to_owned())
}

fn check_decimal(range: Range, text: &str, name: &str) -> Result<Decimal> {
    let d = parse_decimal(text).map_err(|e| {
        Error::invalid(
            "invalid_value",
            Some(name.to_owned()),
            format!("{name}: {text:?} is {e}"),
        )
    })?;
    let ok = match range {
        Range::Positive => d > Decimal::ZERO,
        Range::NonNegative => d >= Decimal::ZERO,
        Range::UnitInterval => d >= Decimal::ZERO && d <= Decimal::ONE,
    };
    if !ok {
        let want = match range {
            Range::Positive => "greater than 0",
            Range::NonNegative => "0 or more",
            Range::UnitInterval => "between 0 and 1",
        };
        return Err(Error::invalid(
            "invalid_value",
            Some(name.to_owned()),
            format!("{name} must be {want}, not {text}"),
        ));
    }
    Ok(d)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Validates an identifier taken from a URL path (`/v1/status/{key}`).
pub fn check_id(name: &str, value: &str) -> Result<()> {
    check_text(Kind::Id, value, name).map(|_| ())
}

/// Validates a query string's pairs against `spec`: unknown or repeated parameters are refused.
pub fn parse_query(pairs: &[(String, String)], spec: &[Field]) -> Result<Parsed> {
    let mut parsed = Parsed::default();
    // An empty value means "not given": clients fill URL templates (`?symbol=&from=`).
    let pairs: Vec<&(String, String)> = pairs.iter().filter(|(_, v)| !v.is_empty()).collect();
    for (i, &(key, raw)) in pairs.iter().enumerate() {
        let Some(field) = spec.iter().find(|f| f.name == key) else {
            let known: Vec<&str> = spec.iter().map(|f| f.name).collect();
            let list = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(Error::invalid(
                "invalid_query",
                Some(key.clone()),
                format!("unknown query parameter {key}; known: {list}"),
            ));
        };
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(Error::invalid(
                "invalid_query",
                Some(key.clone()),
                format!("query parameter {key} is given more than once"),
            ));
        }
        if raw.contains('\u{FFFD}') {
            let message = format!("{key} is not valid UTF-8 once percent-decoded");
            return Err(Error::invalid("invalid_query", Some(key.clone()), message));
        }
        let value = match field.kind {
            Kind::Bool => match raw.as_str() {
                "true" | "1" => Val::Bool(true),
                "false" | "0" => Val::Bool(false),
                _ => {
                    return Err(Error::invalid(
                        "invalid_query",
                        Some(key.clone()),
                        format!("{key} must be true or false, not {raw:?}"),
                    ));
                }
            },
            Kind::Count | Kind::Cursor => match raw.parse::<u64>() {
                Ok(n) => Val::Count(n),
                Err(_) => {
                    let what = if field.kind == Kind::Cursor {
                        "a next_cursor value from a previous page"
                    } else {
                        "a non-negative integer"
                    };
                    return Err(Error::invalid(
                        "invalid_query",
                        Some(key.clone()),
                        format!("{key} must be {what}, not {raw:?}"),
                    ));
                }
            },
            _ => parse_value(field, &Value::String(raw.clone()), "").map_err(|e| match e {
                Error::Invalid { field, message, .. } => {
                    Error::invalid("invalid_query", field, message)
                }
                other => other,
            })?,
        };
        parsed.vals.push((field.name, value));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC: &[Field] = &[
        Field {
            name: "id",
            kind: Kind::Id,
            required: true,
            doc: "",
        },
        Field {
            name: "qty",
            kind: Kind::Decimal(Range::Positive),
            required: true,
            doc: "",
        },
        Field {
            name: "note",
            kind: Kind::Text { max: 4 },
            required: false,
            doc: "",
        },
        Field {
            name: "ok",
            kind: Kind::Bool,
            required: false,
            doc: "",
        },
    ];

    fn code_and_field(r: Result<Parsed>) -> (String, Option<String>) {
        match r {
            Err(Error::Invalid { code, field, .. }) => (code.to_owned(), field),
            other => panic!("expected an invalid-input error, got {other:?}"),
        }
    }

    #[test]
    fn decimals_keep_their_exact_digits_from_json_numbers() {
        let v: Value = serde_json::from_str(r#"{"id":"a","qty":0.1000000000000000055511151231}"#)
            .expect("json");
        let mut p = parse_object(&v, SPEC, "").expect("valid");
        assert_eq!(
            p.decimal("qty").expect("qty").to_string(),
            "0.1000000000000000055511151231"
        );
        // More digits than can be held exactly are refused, never rounded.
        let v: Value =
            serde_json::from_str(r#"{"id":"a","qty":0.1000000000000000055511151231257827}"#)
                .expect("json");
        assert!(matches!(
            parse_object(&v, SPEC, ""),
            Err(Error::Invalid {
                code: "invalid_value",
                ..
            })
        ));
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let cases = [
            (json!({"qty": "1"}), "missing_field", Some("id")),
            (json!({"id": "a", "qty": "0"}), "invalid_value", Some("qty")),
            (
                json!({"id": "a", "qty": "-1"}),
                "invalid_value",
                Some("qty"),
            ),
            (
                json!({"id": "a", "qty": "NaN"}),
                "invalid_value",
                Some("qty"),
            ),
            (json!({"id": "a", "qty": true}), "invalid_type", Some("qty")),
            (
                json!({"id": "a", "qty": 1, "x": 1}),
                "unknown_field",
                Some("x"),
            ),
            (
                json!({"id": "a", "qty": 1, "note": "toolong"}),
                "too_long",
                Some("note"),
            ),
            (json!({"id": "", "qty": 1}), "invalid_value", Some("id")),
            (
                json!({"id": "a\u{0}b", "qty": 1}),
                "invalid_value",
                Some("id"),
            ),
            (
                json!({"id": "a", "qty": 1, "ok": "yes"}),
                "invalid_type",
                Some("ok"),
            ),
            (json!({"id": null, "qty": 1}), "missing_field", Some("id")),
            (json!([1]), "invalid_type", None),
        ];
        for (body, code, field) in cases {
            let (c, f) = code_and_field(parse_object(&body, SPEC, ""));
            assert_eq!((c.as_str(), f.as_deref()), (code, field), "body {body}");
        }
        let (_, f) = code_and_field(parse_object(&json!({"id": "a", "qty": 0}), SPEC, "[3]."));
        assert_eq!(f.as_deref(), Some("[3].qty"));
    }

    #[test]
    fn malformed_json_is_refused() {
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"{\"a\":}",
            b"NaN",
            b"{\"qty\": NaN}",
            b"{\"qty\": Infinity}",
        ] {
            assert!(
                matches!(
                    parse_json(body),
                    Err(Error::Invalid {
                        code: "malformed_json",
                        ..
                    })
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn query_strings_refuse_unknown_and_repeated_parameters() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let spec = &[Field {
            name: "limit",
            kind: Kind::Count,
            required: false,
            doc: "",
        }];
        assert_eq!(
            parse_query(&q(&[("limit", "5")]), spec)
                .expect("ok")
                .count("limit"),
            Some(5)
        );
        assert!(parse_query(&q(&[("limit", "-1")]), spec).is_err());
        assert!(parse_query(&q(&[("limt", "5")]), spec).is_err());
        assert!(parse_query(&q(&[("limit", "5"), ("limit", "6")]), spec).is_err());
    }
}
