//! Decoding single values of PostgreSQL's binary format into Arrow builders.
//!
//! One [`ValueBuilder`] per column; it appends each value straight from the
//! COPY byte stream to its builder, with no intermediate allocation.

use std::sync::Arc;

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder,
    ListArray, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{Field, FieldRef, IntervalMonthDayNano};
use datafusion::arrow::error::ArrowError;

use super::types::PgKind;

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Average bytes reserved per value of variable-length columns.
const BYTES_PER_VALUE: usize = 16;

/// Powers of ten that fit an i128.
const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// Why one value could not be decoded (the caller adds the column).
pub(crate) type ValueError = String;

/// Appends binary PostgreSQL values of one kind to an Arrow builder.
#[derive(Debug)]
pub(crate) enum ValueBuilder {
    /// `boolean`.
    Bool(BooleanBuilder),
    /// `smallint`.
    Int2(Int16Builder),
    /// `integer`.
    Int4(Int32Builder),
    /// `bigint`.
    Int8(Int64Builder),
    /// `real`.
    Float4(Float32Builder),
    /// `double precision`.
    Float8(Float64Builder),
    /// `numeric`: unscaled values at `scale`, below `10^precision`.
    Numeric {
        /// The Arrow builder.
        builder: Decimal128Builder,
        /// Target scale.
        scale: i8,
        /// Exclusive bound on the absolute unscaled value.
        limit: i128,
        /// Declared as plain `numeric` (for messages).
        unconstrained: bool,
    },
    /// Types whose binary form is UTF-8 text.
    Text(StringBuilder),
    /// `jsonb`: version byte 1, then text.
    Jsonb(StringBuilder),
    /// `uuid`: 16 bytes, written as canonical text.
    Uuid(StringBuilder),
    /// `bytea`.
    Bytea(BinaryBuilder),
    /// `date`.
    Date(Date32Builder),
    /// `time`.
    Time(Time64MicrosecondBuilder),
    /// `timestamp` / `timestamptz`.
    Timestamp(TimestampMicrosecondBuilder),
    /// `interval`.
    Interval(IntervalMonthDayNanoBuilder),
    /// One-dimensional arrays.
    List(Box<ListValues>),
}

/// The state of a list column: offsets, validity and the element builder.
#[derive(Debug)]
pub(crate) struct ListValues {
    field: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    values: ValueBuilder,
}

fn fixed<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], ValueError> {
    value.try_into().map_err(|_| {
        format!(
            "malformed {what}: {} bytes where {N} were expected",
            value.len()
        )
    })
}

fn utf8(value: &[u8]) -> Result<&str, ValueError> {
    std::str::from_utf8(value).map_err(|e| format!("text is not valid UTF-8: {e}"))
}

fn i16_at(value: &[u8], at: usize) -> Result<i16, ValueError> {
    value
        .get(at..at + 2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "value is truncated".to_string())
}

fn i32_at(value: &[u8], at: usize) -> Result<i32, ValueError> {
    value
        .get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "value is truncated".to_string())
}

impl ValueBuilder {
    /// A builder for `kind` with room for `capacity` values.
    pub(crate) fn new(kind: &PgKind, capacity: usize) -> Result<Self, ArrowError> {
        let bytes = capacity * BYTES_PER_VALUE;
        Ok(match kind {
            PgKind::Bool => ValueBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            PgKind::Int2 => ValueBuilder::Int2(Int16Builder::with_capacity(capacity)),
            PgKind::Int4 => ValueBuilder::Int4(Int32Builder::with_capacity(capacity)),
            PgKind::Int8 => ValueBuilder::Int8(Int64Builder::with_capacity(capacity)),
            PgKind::Float4 => ValueBuilder::Float4(Float32Builder::with_capacity(capacity)),
            PgKind::Float8 => ValueBuilder::Float8(Float64Builder::with_capacity(capacity)),
            PgKind::Numeric {
                precision,
                scale,
                unconstrained,
            } => ValueBuilder::Numeric {
                builder: Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*precision, *scale)?,
                scale: *scale,
                limit: POW10[usize::from(*precision).min(38)],
                unconstrained: *unconstrained,
            },
            PgKind::Text | PgKind::Label => {
                ValueBuilder::Text(StringBuilder::with_capacity(capacity, bytes))
            }
            PgKind::Jsonb => ValueBuilder::Jsonb(StringBuilder::with_capacity(capacity, bytes)),
            PgKind::Uuid => {
                ValueBuilder::Uuid(StringBuilder::with_capacity(capacity, capacity * 36))
            }
            PgKind::Bytea => ValueBuilder::Bytea(BinaryBuilder::with_capacity(capacity, bytes)),
            PgKind::Date => ValueBuilder::Date(Date32Builder::with_capacity(capacity)),
            PgKind::Time => ValueBuilder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgKind::Timestamp => {
                ValueBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            PgKind::TimestampTz => ValueBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
            PgKind::Interval => {
                ValueBuilder::Interval(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
            PgKind::Array(element) => ValueBuilder::List(Box::new(ListValues {
                field: Arc::new(Field::new_list_field(element.data_type(), true)),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(capacity),
                values: ValueBuilder::new(element, capacity)?,
            })),
        })
    }

    /// Appends one value in PostgreSQL's binary format (`None` is NULL).
    #[inline]
    pub(crate) fn append(&mut self, value: Option<&[u8]>) -> Result<(), ValueError> {
        let Some(v) = value else {
            self.append_null();
            return Ok(());
        };
        match self {
            ValueBuilder::Bool(b) => b.append_value(fixed::<1>(v, "boolean")?[0] != 0),
            ValueBuilder::Int2(b) => b.append_value(i16::from_be_bytes(fixed(v, "smallint")?)),
            ValueBuilder::Int4(b) => b.append_value(i32::from_be_bytes(fixed(v, "integer")?)),
            ValueBuilder::Int8(b) => b.append_value(i64::from_be_bytes(fixed(v, "bigint")?)),
            ValueBuilder::Float4(b) => b.append_value(f32::from_be_bytes(fixed(v, "real")?)),
            ValueBuilder::Float8(b) => b.append_value(f64::from_be_bytes(fixed(v, "double")?)),
            ValueBuilder::Numeric {
                builder,
                scale,
                limit,
                unconstrained,
            } => {
                let unscaled = decimal(v, *scale)?;
                if unscaled.unsigned_abs() >= limit.unsigned_abs() {
                    return Err(format!(
                        "numeric value does not fit {}",
                        if *unconstrained {
                            "Decimal128(38, 10), the type of numeric columns declared without precision"
                        } else {
                            "its Decimal128 type"
                        }
                    ));
                }
                builder.append_value(unscaled)
            }
            ValueBuilder::Text(b) => b.append_value(utf8(v)?),
            ValueBuilder::Jsonb(b) => match v.split_first() {
                Some((&1, json)) => b.append_value(utf8(json)?),
                _ => return Err("unknown jsonb binary version".into()),
            },
            ValueBuilder::Uuid(b) => b.append_value(uuid_text(&fixed(v, "uuid")?, &mut [0; 36])),
            ValueBuilder::Bytea(b) => b.append_value(v),
            ValueBuilder::Date(b) => b.append_value(date(i32::from_be_bytes(fixed(v, "date")?))?),
            ValueBuilder::Time(b) => b.append_value(i64::from_be_bytes(fixed(v, "time")?)),
            ValueBuilder::Timestamp(b) => {
                b.append_value(timestamp(i64::from_be_bytes(fixed(v, "timestamp")?))?)
            }
            ValueBuilder::Interval(b) => b.append_value(interval(&fixed(v, "interval")?)?),
            ValueBuilder::List(list) => list.append(v)?,
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            ValueBuilder::Bool(b) => b.append_null(),
            ValueBuilder::Int2(b) => b.append_null(),
            ValueBuilder::Int4(b) => b.append_null(),
            ValueBuilder::Int8(b) => b.append_null(),
            ValueBuilder::Float4(b) => b.append_null(),
            ValueBuilder::Float8(b) => b.append_null(),
            ValueBuilder::Numeric { builder, .. } => builder.append_null(),
            ValueBuilder::Text(b) | ValueBuilder::Jsonb(b) | ValueBuilder::Uuid(b) => {
                b.append_null()
            }
            ValueBuilder::Bytea(b) => b.append_null(),
            ValueBuilder::Date(b) => b.append_null(),
            ValueBuilder::Time(b) => b.append_null(),
            ValueBuilder::Timestamp(b) => b.append_null(),
            ValueBuilder::Interval(b) => b.append_null(),
            ValueBuilder::List(list) => {
                let end = list.offsets.last().copied().unwrap_or(0);
                list.offsets.push(end);
                list.nulls.append_null();
            }
        }
    }

    /// The values appended since the last call, as an array; the builder is
    /// left empty and ready for the next batch.
    pub(crate) fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            ValueBuilder::Bool(b) => Arc::new(b.finish()),
            ValueBuilder::Int2(b) => Arc::new(b.finish()),
            ValueBuilder::Int4(b) => Arc::new(b.finish()),
            ValueBuilder::Int8(b) => Arc::new(b.finish()),
            ValueBuilder::Float4(b) => Arc::new(b.finish()),
            ValueBuilder::Float8(b) => Arc::new(b.finish()),
            ValueBuilder::Numeric { builder, .. } => Arc::new(builder.finish()),
            ValueBuilder::Text(b) | ValueBuilder::Jsonb(b) | ValueBuilder::Uuid(b) => {
                Arc::new(b.finish())
            }
            ValueBuilder::Bytea(b) => Arc::new(b.finish()),
            ValueBuilder::Date(b) => Arc::new(b.finish()),
            ValueBuilder::Time(b) => Arc::new(b.finish()),
            ValueBuilder::Timestamp(b) => Arc::new(b.finish()),
            ValueBuilder::Interval(b) => Arc::new(b.finish()),
            ValueBuilder::List(list) => {
                let values = list.values.finish()?;
                let offsets = std::mem::replace(&mut list.offsets, vec![0]);
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                Arc::new(ListArray::try_new(
                    list.field.clone(),
                    offsets,
                    values,
                    list.nulls.finish(),
                )?)
            }
        })
    }
}

impl ListValues {
    /// Appends one array: `ndim`, flags, element type, then for one
    /// dimension its length and lower bound, then the elements.
    fn append(&mut self, v: &[u8]) -> Result<(), ValueError> {
        let ndim = i32_at(v, 0)?;
        let count = match ndim {
            0 => 0,
            1 => i32_at(v, 12)?,
            _ => {
                return Err(format!(
                    "{ndim}-dimensional array: only one-dimensional arrays are supported"
                ))
            }
        };
        let mut pos = if ndim == 0 { 12 } else { 20 };
        for _ in 0..count {
            let len = i32_at(v, pos)?;
            pos += 4;
            if len < 0 {
                self.values.append(None)?;
            } else {
                let end = pos + len as usize;
                let element = v.get(pos..end).ok_or("array element is truncated")?;
                self.values.append(Some(element))?;
                pos = end;
            }
        }
        let end = self.offsets.last().copied().unwrap_or(0);
        let end = end
            .checked_add(count)
            .ok_or("more array elements than one batch can hold: lower batchSize")?;
        self.offsets.push(end);
        self.nulls.append_non_null();
        Ok(())
    }
}

/// `date`: days since 2000-01-01; `±infinity` stay `i32::MAX` / `i32::MIN`.
fn date(days: i32) -> Result<i32, ValueError> {
    match days {
        i32::MAX | i32::MIN => Ok(days),
        _ => days
            .checked_add(EPOCH_DAYS)
            .ok_or_else(|| "date out of range".into()),
    }
}

/// `timestamp(tz)`: µs since 2000-01-01; `±infinity` stay `i64::MAX` / `i64::MIN`.
fn timestamp(micros: i64) -> Result<i64, ValueError> {
    match micros {
        i64::MAX | i64::MIN => Ok(micros),
        _ => micros
            .checked_add(EPOCH_MICROS)
            .ok_or_else(|| "timestamp out of range".into()),
    }
}

/// `interval`: µs (i64), days (i32), months (i32).
fn interval(v: &[u8; 16]) -> Result<IntervalMonthDayNano, ValueError> {
    let [m0, m1, m2, m3, m4, m5, m6, m7, d0, d1, d2, d3, o0, o1, o2, o3] = *v;
    let micros = i64::from_be_bytes([m0, m1, m2, m3, m4, m5, m6, m7]);
    Ok(IntervalMonthDayNano {
        months: i32::from_be_bytes([o0, o1, o2, o3]),
        days: i32::from_be_bytes([d0, d1, d2, d3]),
        nanoseconds: micros
            .checked_mul(1000)
            .ok_or("interval too long for nanoseconds")?,
    })
}

/// The canonical text of a uuid, written into `out` without allocating.
fn uuid_text<'a>(bytes: &[u8; 16], out: &'a mut [u8; 36]) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pos = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[pos] = b'-';
            pos += 1;
        }
        out[pos] = HEX[usize::from(b >> 4)];
        out[pos + 1] = HEX[usize::from(b & 0xf)];
        pos += 2;
    }
    // Only ASCII hex digits and dashes were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// A binary `numeric` as an unscaled i128 at `scale`, rounding half away
/// from zero (as PostgreSQL does) when the value has more digits.
///
/// Layout: ndigits, weight, sign, dscale (i16 each), then ndigits base-10000
/// digits, the first of which is worth `10000^weight`.
pub(crate) fn decimal(v: &[u8], scale: i8) -> Result<i128, ValueError> {
    let ndigits = i16_at(v, 0)?;
    let weight = i32::from(i16_at(v, 2)?);
    let negative = match i16_at(v, 4)? as u16 {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Err("NaN has no decimal representation".into()),
        0xD000 => return Err("Infinity has no decimal representation".into()),
        0xF000 => return Err("-Infinity has no decimal representation".into()),
        sign => return Err(format!("malformed numeric sign {sign:#x}")),
    };
    let overflow = || "numeric value does not fit Decimal128".to_string();
    let mut unscaled: i128 = 0;
    let mut round_up = false;
    for i in 0..i32::from(ndigits.max(0)) {
        let digit = i32::from(i16_at(v, 8 + 2 * i as usize)?);
        // Power of ten this digit is worth in units of 10^-scale.
        let exponent = 4 * (weight - i) + i32::from(scale);
        if exponent >= 0 {
            if digit != 0 {
                let factor = POW10.get(exponent as usize).ok_or_else(overflow)?;
                unscaled = i128::from(digit)
                    .checked_mul(*factor)
                    .and_then(|d| unscaled.checked_add(d))
                    .ok_or_else(overflow)?;
            }
            continue;
        }
        // This digit is (partly) below the scale: keep its high part and
        // round on the first dropped decimal digit; the rest cannot matter.
        // (In i32: i128 division is slow, and a digit is below 10^4.)
        let divisor = 10i32.pow((-exponent).min(5) as u32);
        unscaled = unscaled
            .checked_add(i128::from(digit / divisor))
            .ok_or_else(overflow)?;
        round_up = (digit % divisor) * 10 / divisor >= 5;
        break;
    }
    if round_up {
        unscaled = unscaled.checked_add(1).ok_or_else(overflow)?;
    }
    Ok(if negative { -unscaled } else { unscaled })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Array;

    use super::*;

    /// Binary numeric from base-10000 digits.
    fn numeric(weight: i16, negative: bool, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&(if negative { 0x4000u16 } else { 0 }).to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn decimals_scale_and_round() {
        // 1.25 at scale 2 → 125
        assert_eq!(decimal(&numeric(0, false, &[1, 2500]), 2), Ok(125));
        // 10000 at scale 2
        assert_eq!(decimal(&numeric(1, false, &[1]), 2), Ok(1_000_000));
        // -0.333333333333 at scale 10 → -3333333333
        let third = numeric(-1, true, &[3333, 3333, 3333]);
        assert_eq!(decimal(&third, 10), Ok(-3_333_333_333));
        // 0.66666666666 at scale 10 rounds up
        assert_eq!(
            decimal(&numeric(-1, false, &[6666, 6666, 6666]), 10),
            Ok(6_666_666_667)
        );
        // 0.00005 at scale 4 → 1 (half away from zero), 0.00004 → 0
        assert_eq!(decimal(&numeric(-2, false, &[5000]), 4), Ok(1));
        assert_eq!(decimal(&numeric(-2, false, &[4000]), 4), Ok(0));
        // 1250 at scale -2 → 13 (rounded half away from zero)
        assert_eq!(decimal(&numeric(0, false, &[1250]), -2), Ok(13));
        assert!(decimal(&numeric(10, false, &[1]), 0).is_err());
    }

    #[test]
    fn epochs_and_infinities() {
        assert_eq!(date(0), Ok(EPOCH_DAYS));
        assert_eq!(date(i32::MAX), Ok(i32::MAX));
        assert_eq!(timestamp(i64::MIN), Ok(i64::MIN));
        assert_eq!(timestamp(-EPOCH_MICROS), Ok(0));
    }

    #[test]
    fn uuids_print_canonically() {
        let bytes: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        assert_eq!(
            uuid_text(&bytes, &mut [0; 36]),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
    }

    #[test]
    fn lists_with_nulls() {
        let mut b = ValueBuilder::new(&PgKind::Array(Box::new(PgKind::Int4)), 4).unwrap();
        // ndim 1, no flags, element type int4, 2 elements from index 1: 7, NULL.
        let array: Vec<u8> = [1i32, 0, 23, 2, 1, 4, 7, -1]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        b.append(Some(&array)).unwrap();
        b.append(None).unwrap();
        let list = b.finish().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.null_count(), 1);
        assert_eq!(
            b.finish().unwrap().len(),
            0,
            "finish leaves the builder empty"
        );
    }
}
