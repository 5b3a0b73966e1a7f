//! Records and values as SQLite reads and compares them: varints, record headers, fields,
//! the order of two values under a collation, and the hash the index sums add up.

use super::Why;
use super::plan::Collation;

pub(super) fn be32(page: &[u8], at: usize) -> std::result::Result<u32, Why> {
    let b = page
        .get(at..at + 4)
        .ok_or("a page number runs off its page")?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// SQLite's variable-length integer at `at`: its value and length.
#[inline(always)]
pub(super) fn varint(buf: &[u8], at: usize) -> std::result::Result<(u64, usize), Why> {
    match buf.get(at) {
        Some(b) if *b < 0x80 => return Ok((u64::from(*b), 1)),
        None => return Err("a varint runs off its buffer"),
        _ => {}
    }
    let mut v = 0u64;
    for i in 0..9 {
        let b = *buf.get(at + i).ok_or("a varint runs off its buffer")?;
        if i == 8 {
            return Ok(((v << 8) | u64::from(b), 9));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    unreachable!("the loop returns by its ninth byte")
}

/// One field of a record: its serial type and where its bytes start in the payload.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    pub(super) serial: u64,
    pub(super) at: usize,
}

/// The length of a field of serial type `serial` (0 for the reserved types 10 and 11).
#[inline]
fn serial_len(serial: u64) -> usize {
    match serial {
        0 | 8..=11 => 0,
        1..=4 => serial as usize,
        5 => 6,
        6 | 7 => 8,
        n => ((n - 12) / 2) as usize,
    }
}

/// A record's header, parsed by [`record`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Header {
    /// Where the last field's bytes end.
    pub(super) end: usize,
    /// Every varint of the header is in its fewest bytes: none starts with a byte that adds only
    /// a continuation (0x80), as SQLite writes them.
    pub(super) canonical: bool,
}

/// Parses a record's header into `fields`; the fields' bytes must lie within the payload.
#[inline]
pub(super) fn record(payload: &[u8], fields: &mut Vec<Field>) -> std::result::Result<Header, Why> {
    fields.clear();
    let (header, mut pos) = varint(payload, 0)?;
    let header = usize::try_from(header).map_err(|_| "a record header is too long")?;
    if header > payload.len() || header < pos {
        return Err("a record header runs off its payload");
    }
    let mut padded = payload[0] == 0x80;
    let mut body = header;
    while pos < header {
        padded |= payload[pos] == 0x80;
        let (serial, n) = varint(payload, pos)?;
        pos += n;
        if matches!(serial, 10 | 11) {
            return Err("a record uses a reserved serial type");
        }
        fields.push(Field { serial, at: body });
        body = body.saturating_add(serial_len(serial));
    }
    if pos != header || body > payload.len() {
        return Err("a record's fields run off its payload");
    }
    Ok(Header {
        end: body,
        canonical: !padded,
    })
}

/// A value as a lookup compares it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl Value<'_> {
    pub(super) fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl Field {
    /// The field's bytes in the record.
    #[inline]
    pub(super) fn raw<'a>(&self, payload: &'a [u8]) -> std::result::Result<&'a [u8], Why> {
        payload
            .get(self.at..self.at + serial_len(self.serial))
            .ok_or("a field runs off its record")
    }

    #[inline(always)]
    pub(super) fn value<'a>(&self, payload: &'a [u8]) -> std::result::Result<Value<'a>, Why> {
        let at = self.at;
        let int = |n: usize| -> std::result::Result<i64, Why> {
            let b = payload
                .get(at..at + n)
                .ok_or("a field runs off its record")?;
            // Big-endian two's complement of n bytes: the first byte carries the sign.
            let mut v = i64::from(b[0] as i8);
            for x in &b[1..] {
                v = (v << 8) | i64::from(*x);
            }
            Ok(v)
        };
        Ok(match self.serial {
            0 => Value::Null,
            1..=4 => Value::Int(int(self.serial as usize)?),
            5 => Value::Int(int(6)?),
            6 => Value::Int(int(8)?),
            7 => {
                let b = payload
                    .get(at..at + 8)
                    .ok_or("a field runs off its record")?;
                let f = f64::from_bits(u64::from_be_bytes(b.try_into().expect("8 bytes")));
                if f.is_nan() {
                    Value::Null
                } else {
                    Value::Real(f)
                }
            }
            8 => Value::Int(0),
            9 => Value::Int(1),
            n => {
                let len = ((n - 12) / 2) as usize;
                let b = payload
                    .get(at..at + len)
                    .ok_or("a field runs off its record")?;
                if n % 2 == 0 {
                    Value::Blob(b)
                } else {
                    Value::Text(b)
                }
            }
        })
    }
}

/// The integer equal to `f`, if there is one.
pub(super) fn exact_int(f: f64) -> Option<i64> {
    // -2^63 is exact; 2^63 is not an i64.
    if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
    {
        Some(f as i64)
    } else {
        None
    }
}

/// SQLite's order of two values: NULL, numbers, text (by collation), blobs.
pub(super) fn compare(a: &Value<'_>, b: &Value<'_>, collation: Collation) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let class = |v: &Value<'_>| match v {
        Value::Null => 0,
        Value::Int(_) | Value::Real(_) => 1,
        Value::Text(_) => 2,
        Value::Blob(_) => 3,
    };
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Real(x), Value::Real(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Value::Int(i), Value::Real(r)) => int_real(*i, *r),
        (Value::Real(r), Value::Int(i)) => int_real(*i, *r).reverse(),
        (Value::Text(x), Value::Text(y)) => match collation {
            Collation::Binary => x.cmp(y),
            // `sqlite3StrNICmp` over the shorter length, which stops at a NUL in the first
            // text; the lengths decide a tie.
            Collation::NoCase => {
                for (a, b) in x.iter().zip(y.iter()) {
                    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
                    if a == 0 || a != b {
                        return a.cmp(&b).then(x.len().cmp(&y.len()));
                    }
                }
                x.len().cmp(&y.len())
            }
            Collation::RTrim => {
                let trim = |s: &[u8]| {
                    let end = s.iter().rposition(|c| *c != b' ').map_or(0, |p| p + 1);
                    s[..end].to_vec()
                };
                trim(x).cmp(&trim(y))
            }
        },
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

/// An integer against a real, exactly (as SQLite's `sqlite3IntFloatCompare`).
pub(super) fn int_real(i: i64, r: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let y = r as i64;
    match i.cmp(&y) {
        Ordering::Equal => (i as f64).partial_cmp(&r).unwrap_or(Ordering::Equal),
        o => o,
    }
}

/// A 64-bit hash of a sequence of values (multiply-fold), for sums that differ when any one
/// entry differs, but for a chance of 2^-64; not meant to resist an adversary, who would have to
/// be able to write the database anyway. Values that are equal in a lookup hash alike: a real
/// with an integer value hashes as that integer.
pub(super) struct Hasher(u64);

impl Hasher {
    pub(super) const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    /// The multiplier of a value's bytes.
    pub(super) const DATA: u64 = 0xd6e8_feb8_6659_fd93;
    /// A value's kind picks the multiplier of its first word, so that values of different kinds
    /// meet only by chance, never by arithmetic (a tag added to the bits would let an integer
    /// stand for a real).
    pub(super) const NULL: u64 = 0x2545_f491_4f6c_dd1d;
    pub(super) const INT: u64 = 0xbf58_476d_1ce4_e5b9;
    pub(super) const REAL: u64 = 0x94d0_49bb_1331_11eb;
    pub(super) const TEXT: u64 = 0xff51_afd7_ed55_8ccd;
    pub(super) const BLOB: u64 = 0xc4ce_b9fe_1a85_ec53;

    /// A hasher keyed by `seed`: one seed, drawn at random, for every key of one check, so that
    /// no value can be chosen in advance to meet another.
    pub(super) fn new(seed: u64) -> Hasher {
        Hasher(seed ^ Self::SEED)
    }

    /// A seed no one can know in advance (the standard library's per-process random keys).
    pub(super) fn random_seed() -> u64 {
        use std::hash::{BuildHasher, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(Self::SEED);
        h.finish()
    }

    #[inline]
    pub(super) fn word(&mut self, w: u64, multiplier: u64) {
        // The multiplier enters before and after the product: a zero operand gives every
        // multiplier the same product, and a value that zeroes it would let an integer meet a
        // real (two reviews found such pairs); the state it leaves still tells the kinds apart.
        let r = u128::from(self.0 ^ w ^ multiplier) * u128::from(multiplier);
        self.0 = (r as u64) ^ ((r >> 64) as u64) ^ multiplier;
    }

    #[inline(always)]
    pub(super) fn value(&mut self, v: &Value<'_>) {
        match *v {
            Value::Null => self.word(0, Self::NULL),
            Value::Int(i) => self.word(i as u64, Self::INT),
            Value::Real(f) => match exact_int(f) {
                Some(i) => self.word(i as u64, Self::INT),
                None => self.word(f.to_bits(), Self::REAL),
            },
            Value::Text(b) | Value::Blob(b) => {
                let kind = if matches!(v, Value::Text(_)) {
                    Self::TEXT
                } else {
                    Self::BLOB
                };
                self.word(b.len() as u64, kind);
                let mut chunks = b.chunks_exact(8);
                for c in &mut chunks {
                    self.word(
                        u64::from_le_bytes(c.try_into().expect("8 bytes")),
                        Self::DATA,
                    );
                }
                if !chunks.remainder().is_empty() {
                    let mut tail = [0u8; 8];
                    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
                    self.word(u64::from_le_bytes(tail), Self::DATA);
                }
            }
        }
    }

    pub(super) fn finish(&self) -> u64 {
        let mut h = Hasher(self.0);
        h.word(Self::SEED, Self::DATA);
        h.0
    }
}
