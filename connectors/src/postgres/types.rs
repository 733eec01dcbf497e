//! PostgreSQL types → Arrow types.
//!
//! | PostgreSQL | Arrow |
//! |---|---|
//! | `boolean` | Boolean |
//! | `smallint` / `integer` / `bigint` | Int16 / Int32 / Int64 |
//! | `real` / `double precision` | Float32 / Float64 (NaN and ±Infinity kept) |
//! | `numeric(p,s)`, p ≤ 38 | Decimal128(p, s); s < 0: (p - s, 0); s > p: (s, s) |
//! | `numeric` (no precision) | Decimal128(38, 10), rounded half away from zero |
//! | `text`, `varchar`, `char(n)`, `name`, enums, `json`, `jsonb`, `xml` | Utf8 |
//! | `uuid` | Utf8 (`xxxxxxxx-xxxx-...`, lower case) |
//! | `bytea` | Binary |
//! | `date` | Date32 (`infinity` / `-infinity` → `i32::MAX` / `i32::MIN`) |
//! | `time` | Time64(µs) |
//! | `timestamp` | Timestamp(µs) (`±infinity` → `i64::MAX` / `i64::MIN`) |
//! | `timestamptz` | Timestamp(µs, "UTC") (same) |
//! | `interval` | Interval(MonthDayNano) |
//! | one-dimensional arrays of the above | List |
//! | domains | as their base type |
//!
//! Anything else is refused at plan time with a hint to cast it in `query`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use tokio_postgres::types::{Kind, Type};

/// Precision and scale used for `numeric` columns declared without them.
pub(crate) const UNCONSTRAINED_NUMERIC: (u8, i8) = (38, 10);

/// How one PostgreSQL value is decoded, and the Arrow type it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgKind {
    /// `boolean`.
    Bool,
    /// `smallint`.
    Int2,
    /// `integer`.
    Int4,
    /// `bigint`.
    Int8,
    /// `real`.
    Float4,
    /// `double precision`.
    Float8,
    /// `numeric`, as Decimal128 with this precision and scale.
    Numeric {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
        /// Declared without precision: values are rounded to `scale`.
        unconstrained: bool,
    },
    /// `text` and `varchar`: UTF-8 compared byte-wise under `COLLATE "C"`.
    Text,
    /// Other types whose binary form is their text (`char(n)`, `name`,
    /// enums, `json`, `xml`): decoded as Utf8 but never compared in pushed
    /// filters (padding, enum order and collations differ from Arrow's).
    Label,
    /// `jsonb`: a version byte, then the JSON text.
    Jsonb,
    /// `uuid`, as its canonical text.
    Uuid,
    /// `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `time` (without time zone).
    Time,
    /// `timestamp` (without time zone).
    Timestamp,
    /// `timestamptz`, in UTC.
    TimestampTz,
    /// `interval`.
    Interval,
    /// A one-dimensional array of the element kind.
    Array(Box<PgKind>),
}

impl PgKind {
    /// The kind for a column of type `ty` with type modifier `typmod`, or
    /// `None` when the type is not supported.
    pub(crate) fn of(ty: &Type, typmod: i32) -> Option<PgKind> {
        let kind = match *ty {
            Type::BOOL => PgKind::Bool,
            Type::INT2 => PgKind::Int2,
            Type::INT4 => PgKind::Int4,
            Type::INT8 => PgKind::Int8,
            Type::FLOAT4 => PgKind::Float4,
            Type::FLOAT8 => PgKind::Float8,
            Type::NUMERIC => numeric(typmod)?,
            Type::TEXT | Type::VARCHAR => PgKind::Text,
            Type::BPCHAR | Type::NAME | Type::JSON | Type::XML | Type::UNKNOWN => PgKind::Label,
            Type::JSONB => PgKind::Jsonb,
            Type::UUID => PgKind::Uuid,
            Type::BYTEA => PgKind::Bytea,
            Type::DATE => PgKind::Date,
            Type::TIME => PgKind::Time,
            Type::TIMESTAMP => PgKind::Timestamp,
            Type::TIMESTAMPTZ => PgKind::TimestampTz,
            Type::INTERVAL => PgKind::Interval,
            _ => match ty.kind() {
                Kind::Enum(_) => PgKind::Label,
                Kind::Domain(base) => PgKind::of(base, typmod)?,
                Kind::Array(element) => match PgKind::of(element, typmod)? {
                    PgKind::Array(_) => return None,
                    element => PgKind::Array(Box::new(element)),
                },
                _ => return None,
            },
        };
        Some(kind)
    }

    /// The Arrow type values of this kind become.
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            PgKind::Bool => DataType::Boolean,
            PgKind::Int2 => DataType::Int16,
            PgKind::Int4 => DataType::Int32,
            PgKind::Int8 => DataType::Int64,
            PgKind::Float4 => DataType::Float32,
            PgKind::Float8 => DataType::Float64,
            PgKind::Numeric {
                precision, scale, ..
            } => DataType::Decimal128(*precision, *scale),
            PgKind::Text | PgKind::Label | PgKind::Jsonb | PgKind::Uuid => DataType::Utf8,
            PgKind::Bytea => DataType::Binary,
            PgKind::Date => DataType::Date32,
            PgKind::Time => DataType::Time64(TimeUnit::Microsecond),
            PgKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgKind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgKind::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            PgKind::Array(element) => {
                DataType::List(Arc::new(Field::new_list_field(element.data_type(), true)))
            }
        }
    }
}

/// `numeric(p,s)` from its type modifier: `((p << 16) | (s & 0x7ff)) + 4`,
/// or -1 when declared without precision. `None` when p > 38.
fn numeric(typmod: i32) -> Option<PgKind> {
    if typmod < 4 {
        let (precision, scale) = UNCONSTRAINED_NUMERIC;
        return Some(PgKind::Numeric {
            precision,
            scale,
            unconstrained: true,
        });
    }
    let value = typmod - 4;
    let declared = (value >> 16) & 0xffff;
    // The scale is an 11-bit two's complement number; since PG 15 it may be
    // negative (numeric(5,-2): multiples of 100 below 10^7) or above the
    // precision (numeric(2,5): below 0.001). Arrow allows neither scale >
    // precision nor, in Delta Lake, a negative scale: widen to a type that
    // holds every value exactly.
    let scale = ((value & 0x7ff) ^ 0x400) - 0x400;
    let (precision, scale) = match scale {
        s if s < 0 => (declared - s, 0),
        s => (declared.max(s), s),
    };
    let (precision, scale) = (u8::try_from(precision).ok()?, i8::try_from(scale).ok()?);
    (1..=38).contains(&precision).then_some(PgKind::Numeric {
        precision,
        scale,
        unconstrained: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(
            numeric(typmod(15, 2)),
            Some(PgKind::Numeric {
                precision: 15,
                scale: 2,
                unconstrained: false
            })
        );
        assert_eq!(
            numeric(typmod(5, -2)).map(|k| k.data_type()),
            Some(DataType::Decimal128(7, 0))
        );
        assert_eq!(
            numeric(typmod(2, 5)).map(|k| k.data_type()),
            Some(DataType::Decimal128(5, 5))
        );
        assert_eq!(numeric(typmod(39, 0)), None);
        assert_eq!(numeric(typmod(37, -2)), None);
        assert_eq!(
            numeric(-1).map(|k| k.data_type()),
            Some(DataType::Decimal128(38, 10))
        );
    }

    #[test]
    fn arrays_nest_once() {
        let kind = PgKind::of(&Type::INT4_ARRAY, -1).unwrap();
        assert_eq!(kind, PgKind::Array(Box::new(PgKind::Int4)));
        assert!(PgKind::of(&Type::POINT, -1).is_none());
        assert!(PgKind::of(&Type::TIMETZ, -1).is_none());
    }
}
