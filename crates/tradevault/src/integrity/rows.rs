//! The readers of a tree's cells: [`RowCheck`] gives each row of a table `quick_check`'s tests
//! (a whole record, NOT NULL, column types) and adds each index's key for it to that index's sum;
//! [`IndexCheck`] reads an index in key order and sums its entries (see the module above).
//!
//! A reader never has the last word either: a row it cannot judge (a TEXT value in a numeric
//! column, a field missing where the column has a default) or finds wrong makes it refuse, and
//! SQLite then checks that table.

use super::{Collation, Field, Hasher, Index, Sum, Value, Why, compare, record};

/// How the rows of a table are checked, column by column.
#[derive(Debug, Clone)]
pub(super) struct Rows {
    pub(super) columns: Vec<Rule>,
    /// The `INTEGER PRIMARY KEY` column: its field holds NULL, the rowid its value.
    pub(super) rowid: Option<usize>,
}

/// One column's tests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub(super) not_null: bool,
    pub(super) kind: Kind,
    /// A row written before the column was added has no field for it: it reads as NULL if the
    /// column has no default (else SQLite must judge it).
    pub(super) absent_is_null: bool,
}

/// The type test of a column (quick_check's `OP_IsType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// BLOB affinity, or a STRICT table's ANY: every value.
    Any,
    /// TEXT affinity: no integer or real.
    NoNumber,
    /// NUMERIC, INTEGER or REAL affinity: no text that would convert to a number. Text that
    /// might is refused, for SQLite to judge.
    NoText,
    /// A STRICT column: the kinds it allows (bits: 1 integer, 2 real, 4 text, 8 blob, 16 NULL).
    Strict(u8),
}

/// SQLite's affinity of a declared column type (`sqlite3AffinityType`), as the type test it
/// brings: the last four letters seen decide, `INT` anywhere wins.
pub(super) fn affinity(declared: &str) -> Kind {
    if declared.is_empty() {
        return Kind::Any;
    }
    #[derive(PartialEq)]
    enum Aff {
        Numeric,
        Text,
        Blob,
        Real,
    }
    let mut aff = Aff::Numeric;
    let mut h = 0u32;
    for b in declared.bytes() {
        h = (h << 8).wrapping_add(u32::from(b.to_ascii_lowercase()));
        match &h.to_be_bytes() {
            b"char" | b"clob" | b"text" => aff = Aff::Text,
            b"blob" if aff == Aff::Numeric || aff == Aff::Real => aff = Aff::Blob,
            b"real" | b"floa" | b"doub" if aff == Aff::Numeric => aff = Aff::Real,
            [_, b'i', b'n', b't'] => return Kind::NoText,
            _ => {}
        }
    }
    match aff {
        Aff::Text => Kind::NoNumber,
        Aff::Blob => Kind::Any,
        Aff::Numeric | Aff::Real => Kind::NoText,
    }
}

/// The type test of a STRICT table's column, `None` for a type SQLite would not allow.
pub(super) fn strict(declared: &str) -> Option<Kind> {
    Some(match declared.to_ascii_uppercase().as_str() {
        "ANY" => Kind::Any,
        "INT" | "INTEGER" => Kind::Strict(0x11),
        "REAL" => Kind::Strict(0x13),
        "TEXT" => Kind::Strict(0x14),
        "BLOB" => Kind::Strict(0x18),
        _ => return None,
    })
}

/// The kind bit of a serial type, as `OP_IsType` sees it (a NaN real is a real here).
fn kind_bit(serial: u64) -> u8 {
    match serial {
        0 => 0x10,
        7 => 0x02,
        1..=9 => 0x01,
        n if n % 2 == 1 => 0x04,
        _ => 0x08,
    }
}

/// Checks each row of a table and sums the keys its indexes must hold.
pub(super) struct RowCheck<'a> {
    /// `None`: SQLite tests the rows; the walk only sums index keys.
    rows: Option<&'a Rows>,
    /// The check's hash seed.
    seed: u64,
    indexes: &'a [&'a Index],
    pub(super) sums: Vec<Sum>,
    fields: Vec<Field>,
}

impl<'a> RowCheck<'a> {
    pub(super) fn new(rows: Option<&'a Rows>, indexes: &'a [&'a Index], seed: u64) -> RowCheck<'a> {
        RowCheck {
            rows,
            seed,
            indexes,
            sums: vec![Sum::default(); indexes.len()],
            fields: Vec::new(),
        }
    }

    /// The value of column `j` of the row, NULL where the row has no field for it.
    fn value<'p>(&self, payload: &'p [u8], j: usize) -> Result<Value<'p>, Why> {
        match self.fields.get(j) {
            Some(f) => f.value(payload),
            None if self
                .rows
                .and_then(|r| r.columns.get(j))
                .is_some_and(|c| c.absent_is_null) =>
            {
                Ok(Value::Null)
            }
            None => Err("a row is shorter than its table"),
        }
    }

    pub(super) fn row(&mut self, rowid: i64, payload: &[u8]) -> Result<(), Why> {
        let end = record(payload, &mut self.fields)?.end;
        if let Some(rows) = self.rows {
            self.test(rows, payload, end)?;
        }
        for (k, index) in self.indexes.iter().enumerate() {
            if let Some(f) = index.only_if
                && let Value::Null = self.value(payload, f)?
            {
                continue;
            }
            let mut key = Hasher::new(self.seed);
            for column in &index.keys {
                let v = match column.field {
                    None => Value::Int(rowid),
                    Some(f) => self.value(payload, f)?,
                };
                key.value(&v);
            }
            key.value(&Value::Int(rowid));
            self.sums[k].add(key.finish());
        }
        Ok(())
    }

    /// `quick_check`'s tests of a row whose fields end at `end`.
    fn test(&self, rows: &Rows, payload: &[u8], end: usize) -> Result<(), Why> {
        // The header read in whole accounts for every byte (OP_Column's test), and is no
        // longer than SQLite reads.
        if end != payload.len() || !short_header(payload) {
            return Err("a record's fields do not fill its payload");
        }
        for (j, rule) in rows.columns.iter().enumerate() {
            if Some(j) == rows.rowid {
                continue;
            }
            let Some(field) = self.fields.get(j) else {
                if rule.absent_is_null {
                    continue;
                }
                return Err("a row is shorter than its table");
            };
            let bit = kind_bit(field.serial);
            let typed = match rule.kind {
                Kind::Any => true,
                Kind::NoNumber => bit & 0x03 == 0,
                Kind::NoText => bit != 0x04 || !may_be_number(field.raw(payload)?),
                Kind::Strict(mask) => bit & mask != 0,
            };
            if !typed {
                return Err("a value does not suit its column's type");
            }
            // A NaN real reads as NULL.
            if rule.not_null
                && (field.serial == 0 || field.serial == 7 && field.value(payload)?.is_null())
            {
                return Err("a NOT NULL column holds NULL");
            }
        }
        Ok(())
    }
}

/// Whether SQLite's numeric affinity might turn this text into a number: some digits, among
/// nothing but signs, points and exponents, between white space, up to a NUL (as
/// `sqlite3AtoF` reads it). Looser than SQLite, never stricter: `1e` passes here.
fn may_be_number(text: &[u8]) -> bool {
    let text = text.split(|b| *b == 0).next().unwrap_or_default();
    let space = |b: &u8| matches!(b, b' ' | 0x09..=0x0d);
    let start = text.iter().position(|b| !space(b)).unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |p| p + 1);
    let core = &text[start..end];
    core.iter().any(u8::is_ascii_digit)
        && core
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
}

/// A record header no longer than SQLite reads (98,307 bytes).
fn short_header(payload: &[u8]) -> bool {
    super::varint(payload, 0).is_ok_and(|(n, _)| n <= 98_307)
}

/// Reads an index in key order: entries must sort strictly after the one before (per column
/// collation and direction), a unique index must not repeat a key without NULLs, the rowid must
/// end the record; each entry is added to the index's sum.
pub(super) struct IndexCheck<'a> {
    index: &'a Index,
    /// The check's hash seed.
    seed: u64,
    pub(super) sum: Sum,
    /// The previous entry's record and its fields.
    previous: Vec<u8>,
    previous_fields: Vec<Field>,
    fields: Vec<Field>,
}

impl<'a> IndexCheck<'a> {
    pub(super) fn new(index: &'a Index, seed: u64) -> IndexCheck<'a> {
        IndexCheck {
            index,
            seed,
            sum: Sum::default(),
            previous: Vec::new(),
            previous_fields: Vec::new(),
            fields: Vec::new(),
        }
    }

    pub(super) fn entry(&mut self, payload: &[u8]) -> Result<(), Why> {
        // SQLite reads the rowid from the payload's last bytes: they must be the last field's.
        let header = record(payload, &mut self.fields)?;
        if header.end != payload.len() {
            return Err("an index entry has bytes past its rowid");
        }
        // SQLite's lookups read a header's varints as SQLite writes them, in fewest bytes (a
        // type from its first byte, the next field at the usual distance): a longer one that
        // decodes to the same value misleads them (a review found it).
        if !header.canonical {
            return Err("an index entry's header has a varint longer than it needs");
        }
        let keys = &self.index.keys;
        if self.fields.len() != keys.len() + 1 {
            return Err("an index entry has the wrong number of columns");
        }
        let Value::Int(_) = self.fields[keys.len()].value(payload)? else {
            return Err("an index entry does not end with a rowid");
        };
        if self.sum.entries > 0 {
            let mut order = std::cmp::Ordering::Equal;
            let mut null = false;
            for (i, k) in keys.iter().enumerate() {
                let (pa, pb) = (self.previous_fields[i], self.fields[i]);
                // The same bytes of the same kind: equal under any collation (the common case
                // of consecutive entries), without decoding either.
                if pa.serial == pb.serial && pa.raw(&self.previous)? == pb.raw(payload)? {
                    null |= pb.serial == 0 || (pb.serial == 7 && pb.value(payload)?.is_null());
                    continue;
                }
                let a = pa.value(&self.previous)?;
                let b = pb.value(payload)?;
                null |= matches!(b, Value::Null);
                let o = compare(&a, &b, k.collation);
                if o != std::cmp::Ordering::Equal {
                    order = if k.desc { o.reverse() } else { o };
                    break;
                }
            }
            if order == std::cmp::Ordering::Equal {
                if self.index.unique && !null {
                    return Err("a unique index repeats a key");
                }
                let a = self.previous_fields[keys.len()].value(&self.previous)?;
                let b = self.fields[keys.len()].value(payload)?;
                order = compare(&a, &b, Collation::Binary);
            }
            if order != std::cmp::Ordering::Less {
                return Err("index entries out of order");
            }
        }
        let mut key = Hasher::new(self.seed);
        for f in &self.fields {
            key.value(&f.value(payload)?);
        }
        self.sum.add(key.finish());
        self.previous.clear();
        self.previous.extend_from_slice(payload);
        std::mem::swap(&mut self.previous_fields, &mut self.fields);
        Ok(())
    }
}
