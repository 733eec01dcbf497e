//! SQL text for PostgreSQL: quoting, table names, and the translation of
//! DataFusion filters into WHERE conditions that PostgreSQL evaluates with
//! exactly DataFusion's result.

use datafusion::arrow::temporal_conversions::{
    date32_to_datetime, time64us_to_time, timestamp_us_to_datetime,
};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

use super::types::PgKind;

/// `name` as a quoted identifier: `"a""b"`.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a string literal that means the same whatever
/// `standard_conforming_strings` is: `E'it\'s'`. `None` for text with a NUL
/// character, which PostgreSQL strings cannot hold.
pub(crate) fn literal(text: &str) -> Option<String> {
    if text.contains('\0') {
        return None;
    }
    Some(format!(
        "E'{}'",
        text.replace('\\', "\\\\").replace('\'', "\\'")
    ))
}

/// A `table` config value (`name`, `schema.name`, parts optionally
/// double-quoted) as quoted SQL. Unquoted parts are folded to lower case, as
/// PostgreSQL does.
pub(crate) fn table_name(text: &str) -> Result<String, String> {
    let bad = || {
        format!("\"{text}\" is not a table name: use table, schema.table or \"Quoted\".\"Names\"")
    };
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '$' {
                    part.extend(c.to_lowercase());
                    chars.next();
                } else {
                    break;
                }
            }
            if part.chars().next().is_none_or(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
        }
        if part.is_empty() {
            return Err(bad());
        }
        parts.push(ident(&part));
        match chars.next() {
            None => break,
            Some('.') if parts.len() < 2 => {}
            Some(_) => return Err(bad()),
        }
    }
    Ok(parts.join("."))
}

/// Looks up a column's kind by name.
pub(crate) type Columns<'a> = dyn Fn(&str) -> Option<&'a PgKind> + 'a;

/// The SQL for a filter on plain columns, or `None` when PostgreSQL might
/// evaluate it differently from DataFusion (floats, padded or enum text,
/// casts, functions), in which case DataFusion must evaluate it.
pub(crate) fn filter(expr: &Expr, columns: &Columns<'_>) -> Option<String> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => Some(format!(
                "({} {op} {})",
                filter(left, columns)?,
                filter(right, columns)?
            )),
            _ => comparison(left, *op, right, columns)
                .or_else(|| comparison(right, op.swap()?, left, columns)),
        },
        Expr::Not(inner) => Some(format!("(NOT {})", filter(inner, columns)?)),
        Expr::IsNull(inner) => Some(format!("{} IS NULL", column(inner, columns)?.0)),
        Expr::IsNotNull(inner) => Some(format!("{} IS NOT NULL", column(inner, columns)?.0)),
        Expr::Column(_) => match column(expr, columns)? {
            (sql, PgKind::Bool) => Some(sql),
            _ => None,
        },
        Expr::InList(list) => {
            let (sql, kind) = compared_column(&list.expr, columns)?;
            let values = list
                .list
                .iter()
                .map(|item| value(item, kind))
                .collect::<Option<Vec<_>>>()?;
            (!values.is_empty()).then(|| {
                let not = if list.negated { "NOT " } else { "" };
                format!("{sql} {not}IN ({})", values.join(", "))
            })
        }
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let (sql, kind) = compared_column(expr, columns)?;
            let not = if *negated { "NOT " } else { "" };
            Some(format!(
                "{sql} {not}BETWEEN {} AND {}",
                value(low, kind)?,
                value(high, kind)?
            ))
        }
        _ => None,
    }
}

/// `column op literal`.
fn comparison(left: &Expr, op: Operator, right: &Expr, columns: &Columns<'_>) -> Option<String> {
    let sql_op = match op {
        Operator::Eq => "=",
        Operator::NotEq => "<>",
        Operator::Lt => "<",
        Operator::LtEq => "<=",
        Operator::Gt => ">",
        Operator::GtEq => ">=",
        _ => return None,
    };
    let (sql, kind) = compared_column(left, columns)?;
    Some(format!("{sql} {sql_op} {}", value(right, kind)?))
}

/// A plain column reference: its SQL and kind.
fn column<'a>(expr: &Expr, columns: &Columns<'a>) -> Option<(String, &'a PgKind)> {
    match expr {
        Expr::Column(col) => columns(&col.name).map(|kind| (ident(&col.name), kind)),
        _ => None,
    }
}

/// A column that may be compared with literals; text is compared byte-wise
/// (`COLLATE "C"`), as Arrow compares strings.
fn compared_column<'a>(expr: &Expr, columns: &Columns<'a>) -> Option<(String, &'a PgKind)> {
    let (sql, kind) = column(expr, columns)?;
    match kind {
        PgKind::Text => Some((format!("{sql} COLLATE \"C\""), kind)),
        PgKind::Bool
        | PgKind::Int2
        | PgKind::Int4
        | PgKind::Int8
        | PgKind::Date
        | PgKind::Time
        | PgKind::Timestamp
        | PgKind::TimestampTz => Some((sql, kind)),
        PgKind::Numeric { unconstrained, .. } if !unconstrained => Some((sql, kind)),
        _ => None,
    }
}

/// A literal of exactly the column's Arrow type, as SQL of its PostgreSQL type.
fn value(expr: &Expr, kind: &PgKind) -> Option<String> {
    let Expr::Literal(scalar, _) = expr else {
        return None;
    };
    if scalar.data_type() != kind.data_type() {
        return None;
    }
    scalar_sql(scalar)
}

/// A non-null scalar as a PostgreSQL literal (`None` for NULL or a type
/// without an exact literal form).
pub(crate) fn scalar_sql(scalar: &ScalarValue) -> Option<String> {
    Some(match scalar {
        ScalarValue::Boolean(Some(b)) => b.to_string().to_uppercase(),
        ScalarValue::Int16(Some(v)) => v.to_string(),
        ScalarValue::Int32(Some(v)) => v.to_string(),
        ScalarValue::Int64(Some(v)) => v.to_string(),
        ScalarValue::Decimal128(Some(v), _, scale) => decimal_text(*v, *scale),
        ScalarValue::Utf8(Some(s)) => literal(s)?,
        ScalarValue::Date32(Some(days)) => date_sql(*days)?,
        ScalarValue::Time64Microsecond(Some(us)) => {
            format!("'{}'::time", time64us_to_time(*us)?)
        }
        ScalarValue::TimestampMicrosecond(Some(us), tz) => timestamp_sql(*us, tz.is_some())?,
        _ => return None,
    })
}

/// A `date` literal for Arrow days; `i32::MAX` / `i32::MIN` are ±infinity.
pub(crate) fn date_sql(days: i32) -> Option<String> {
    match days {
        i32::MAX => Some("'infinity'::date".into()),
        i32::MIN => Some("'-infinity'::date".into()),
        _ => Some(format!(
            "'{}'::date",
            four_digit_year(date32_to_datetime(days)?.date().to_string())?
        )),
    }
}

/// A `timestamp` (or `timestamptz`, in UTC) literal for Arrow microseconds;
/// `i64::MAX` / `i64::MIN` are ±infinity.
pub(crate) fn timestamp_sql(micros: i64, utc: bool) -> Option<String> {
    let (text, ty) = match (micros, utc) {
        (i64::MAX, _) => ("infinity".to_string(), ""),
        (i64::MIN, _) => ("-infinity".to_string(), ""),
        (_, false) => (timestamp_us_to_datetime(micros)?.to_string(), ""),
        (_, true) => (timestamp_us_to_datetime(micros)?.to_string(), "+00"),
    };
    let cast = if utc { "timestamptz" } else { "timestamp" };
    Some(format!("'{}{ty}'::{cast}", four_digit_year(text)?))
}

/// Keeps dates in years 0001–9999 (or infinity), whose text both sides read
/// the same way.
fn four_digit_year(text: String) -> Option<String> {
    let bytes = text.as_bytes();
    let plain = bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-';
    (plain && !text.starts_with("0000") || text.ends_with("infinity")).then_some(text)
}

/// An unscaled decimal as text: `12345` at scale 2 is `123.45`.
fn decimal_text(unscaled: i128, scale: i8) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale <= 0 {
        return format!(
            "{sign}{digits}{}",
            "0".repeat(usize::from(scale.unsigned_abs()))
        );
    }
    let scale = usize::from(scale.unsigned_abs());
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn kinds(name: &str) -> Option<&'static PgKind> {
        const NUMERIC: PgKind = PgKind::Numeric {
            precision: 10,
            scale: 2,
            unconstrained: false,
        };
        match name {
            "id" => Some(&PgKind::Int8),
            "name" => Some(&PgKind::Text),
            "code" => Some(&PgKind::Label),
            "price" => Some(&NUMERIC),
            "score" => Some(&PgKind::Float8),
            "ok" => Some(&PgKind::Bool),
            _ => None,
        }
    }

    fn sql(expr: Expr) -> Option<String> {
        filter(&expr, &kinds)
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's a \\"), Some("E'it\\'s a \\\\'".into()));
        assert_eq!(literal("nul\0"), None);
        assert_eq!(
            table_name("Public.Orders"),
            Ok("\"public\".\"orders\"".into())
        );
        assert_eq!(
            table_name("\"My \"\"T\"\"\""),
            Ok("\"My \"\"T\"\"\"".into())
        );
        assert!(table_name("a; DROP TABLE x").is_err());
        assert!(table_name("a.b.c").is_err());
        assert!(table_name("").is_err());
    }

    #[test]
    fn translates_simple_filters() {
        assert_eq!(
            sql(col("id").gt(lit(5i64)).and(col("name").eq(lit("x'y")))),
            Some("(\"id\" > 5 AND \"name\" COLLATE \"C\" = E'x\\'y')".into())
        );
        assert_eq!(sql(lit(5i64).lt_eq(col("id"))), Some("\"id\" >= 5".into()));
        assert_eq!(
            sql(col("id").in_list(vec![lit(1i64), lit(2i64)], true)),
            Some("\"id\" NOT IN (1, 2)".into())
        );
        assert_eq!(
            sql(col("code").is_null().or(col("ok"))),
            Some("(\"code\" IS NULL OR \"ok\")".into())
        );
        let price = Expr::Literal(ScalarValue::Decimal128(Some(-5), 10, 2), None);
        assert_eq!(
            sql(col("price").eq(price)),
            Some("\"price\" = -0.05".into())
        );
    }

    #[test]
    fn refuses_what_might_differ() {
        assert_eq!(sql(col("score").gt(lit(0.0f64))), None, "floats");
        assert_eq!(sql(col("code").eq(lit("a"))), None, "padded text");
        assert_eq!(sql(col("id").gt(lit(5i32))), None, "type mismatch");
        assert_eq!(
            sql(col("id").gt(lit(1i64)).and(col("score").gt(lit(0.0)))),
            None
        );
        assert_eq!(sql(col("nope").is_null()), None);
    }

    #[test]
    fn temporal_literals() {
        assert_eq!(date_sql(0), Some("'1970-01-01'::date".into()));
        assert_eq!(date_sql(i32::MAX), Some("'infinity'::date".into()));
        assert_eq!(
            timestamp_sql(1_500_000, true),
            Some("'1970-01-01 00:00:01.500+00'::timestamptz".into())
        );
        assert_eq!(
            timestamp_sql(i64::MIN, false),
            Some("'-infinity'::timestamp".into())
        );
    }
}
