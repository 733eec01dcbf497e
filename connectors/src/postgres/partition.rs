//! Splitting a read into ranges of an integer, date or timestamp column, one
//! per connection, as Spark's JDBC reader does: the first range also takes
//! the NULLs and everything below the lower bound, the last everything
//! above the upper bound, so the ranges together cover every row exactly once.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Int64Type, Schema, TimestampMicrosecondType,
};
use serde::Deserialize;
use std::sync::Arc;

use super::connect::Connector;
use super::read::CopyReader;
use super::sql::{date_sql, ident, literal, timestamp_sql};
use super::types::PgKind;
use crate::error::{ConnectorError, Result};

/// A `lowerBound` / `upperBound` as written: a number, or a date or
/// timestamp string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum Bound {
    /// An integer bound.
    Number(i64),
    /// A date or timestamp, in any form PostgreSQL reads.
    Text(String),
}

/// The types a partition or incremental column may have, by how bounds are
/// compared. Values are handled in Arrow units (days, microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeKind {
    Integer,
    Date,
    Timestamp,
    TimestampTz,
}

impl RangeKind {
    /// The range kind of a column kind, `None` for other types.
    pub(crate) fn of(kind: &PgKind) -> Option<RangeKind> {
        match kind {
            PgKind::Int2 | PgKind::Int4 | PgKind::Int8 => Some(RangeKind::Integer),
            PgKind::Date => Some(RangeKind::Date),
            PgKind::Timestamp => Some(RangeKind::Timestamp),
            PgKind::TimestampTz => Some(RangeKind::TimestampTz),
            _ => None,
        }
    }

    /// The type bounds are read as.
    fn pg(self) -> (&'static str, PgKind) {
        match self {
            RangeKind::Integer => ("int8", PgKind::Int8),
            RangeKind::Date => ("date", PgKind::Date),
            RangeKind::Timestamp => ("timestamp", PgKind::Timestamp),
            RangeKind::TimestampTz => ("timestamptz", PgKind::TimestampTz),
        }
    }

    /// A bound value (Arrow units) as a SQL literal.
    pub(crate) fn sql(self, value: i64) -> String {
        let text = match self {
            RangeKind::Integer => Some(value.to_string()),
            RangeKind::Date => i32::try_from(value).ok().and_then(date_sql),
            RangeKind::Timestamp => timestamp_sql(value, false),
            RangeKind::TimestampTz => timestamp_sql(value, true),
        };
        // Arrow renders every value PostgreSQL returned; fall back to the
        // number, which PostgreSQL then rejects with a clear message.
        text.unwrap_or_else(|| value.to_string())
    }
}

/// What to split on.
#[derive(Debug, Clone)]
pub(crate) struct Partitioning<'a> {
    /// The column name.
    pub column: &'a str,
    /// Its kind.
    pub kind: &'a PgKind,
    /// Requested number of partitions.
    pub count: usize,
    /// `lowerBound`, else the column's minimum.
    pub lower: Option<&'a Bound>,
    /// `upperBound`, else the column's maximum.
    pub upper: Option<&'a Bound>,
}

impl Partitioning<'_> {
    /// One WHERE condition per partition (`None`: no condition). Asks the
    /// server for the column's min/max when a bound is not given.
    pub(crate) async fn predicates(
        &self,
        connector: &Connector,
        from: &str,
    ) -> Result<Vec<Option<String>>> {
        let kind = RangeKind::of(self.kind).ok_or_else(|| {
            ConnectorError::Rejected(format!(
                "partitionColumn \"{}\" must be an integer, date or timestamp column, not {}",
                self.column,
                self.kind.data_type()
            ))
        })?;
        if self.count <= 1 {
            return Ok(vec![None]);
        }
        let Some((low, high)) = self.bounds(connector, from, kind).await? else {
            return Ok(vec![None]);
        };
        if low > high && self.lower.is_some() && self.upper.is_some() {
            return Err(ConnectorError::Rejected(format!(
                "lowerBound ({}) is above upperBound ({})",
                kind.sql(low),
                kind.sql(high)
            )));
        }
        if low > high {
            // Only strides depend on the bounds (the first and last
            // partitions are open-ended): a given bound beyond the data
            // leaves one partition that reads everything.
            return Ok(vec![None]);
        }
        let column = ident(self.column);
        let cuts = cuts(low, high, self.count);
        let count = cuts.len() + 1;
        Ok((0..count)
            .map(|i| {
                let above = (i > 0).then(|| format!("{column} >= {}", kind.sql(cuts[i - 1])));
                let below = cuts
                    .get(i)
                    .map(|cut| format!("{column} < {}", kind.sql(*cut)));
                match (above, below) {
                    (None, Some(below)) => Some(format!("({below} OR {column} IS NULL)")),
                    (Some(above), Some(below)) => Some(format!("{above} AND {below}")),
                    (above, None) => above,
                }
            })
            .collect())
    }

    /// The bounds in Arrow units, `None` when the table is empty (or the
    /// column all NULL).
    async fn bounds(
        &self,
        connector: &Connector,
        from: &str,
        kind: RangeKind,
    ) -> Result<Option<(i64, i64)>> {
        let type_name = kind.pg().0;
        let bound = |given: Option<&Bound>, aggregate: &str| match given {
            Some(Bound::Number(n)) => Ok(format!("CAST({n} AS {type_name})")),
            Some(Bound::Text(text)) => literal(text)
                .map(|lit| format!("CAST({lit} AS {type_name})"))
                .ok_or_else(|| ConnectorError::Rejected("a bound contains a NUL character".into())),
            None => Ok(format!(
                "CAST({aggregate}({}) AS {type_name})",
                ident(self.column)
            )),
        };
        let mut select = format!(
            "SELECT {}, {}",
            bound(self.lower, "min")?,
            bound(self.upper, "max")?
        );
        if self.lower.is_none() || self.upper.is_none() {
            select.push_str(&format!(" FROM {from}"));
        }
        let values = kind
            .values(connector, &select, 2)
            .await
            .map_err(|e| bounds_error(e, self.column))?;
        Ok(values[0].zip(values[1]))
    }
}

impl RangeKind {
    /// The largest value of `column` in `from` above `after` (of all its
    /// values when `None`); `None` when there is none.
    pub(crate) async fn max_above(
        self,
        connector: &Connector,
        from: &str,
        column: &str,
        after: Option<i64>,
    ) -> Result<Option<i64>> {
        let column = ident(column);
        // An `infinity` date or timestamp would be a mark nothing is ever
        // above: such rows are left out, as NULLs are.
        let finite = match self {
            RangeKind::Integer => "TRUE".to_string(),
            _ => format!("isfinite({column})"),
        };
        let mut select = format!(
            "SELECT CAST(max({column}) AS {}) FROM {from} WHERE {finite}",
            self.pg().0
        );
        if let Some(after) = after {
            select.push_str(&format!(" AND {column} > {}", self.sql(after)));
        }
        Ok(self.values(connector, &select, 1).await?[0])
    }

    /// The `count` values of the one row `select` returns, each read as this
    /// kind (NULL → `None`).
    async fn values(
        self,
        connector: &Connector,
        select: &str,
        count: usize,
    ) -> Result<Vec<Option<i64>>> {
        let pg_kind = self.pg().1;
        let fields: Vec<Field> = (0..count)
            .map(|i| Field::new(format!("v{i}"), pg_kind.data_type(), true))
            .collect();
        let kinds = vec![pg_kind; count];
        let mut reader =
            CopyReader::open(connector, select, Arc::new(Schema::new(fields)), &kinds, 1).await?;
        let Some(batch) = reader.next_batch(connector).await? else {
            return Ok(vec![None; count]);
        };
        Ok(batch
            .columns()
            .iter()
            .map(|array| {
                (!array.is_null(0)).then(|| match array.data_type() {
                    DataType::Int64 => array.as_primitive::<Int64Type>().value(0),
                    DataType::Date32 => i64::from(array.as_primitive::<Date32Type>().value(0)),
                    _ => array.as_primitive::<TimestampMicrosecondType>().value(0),
                })
            })
            .collect())
    }
}

fn bounds_error(err: ConnectorError, column: &str) -> ConnectorError {
    err.with_postgres_context(
        &format!(" of the bounds of partitionColumn \"{column}\""),
        "",
    )
}

/// Up to `count - 1` increasing cut points splitting `[low, high]` into
/// ranges of (nearly) equal width; fewer when the range has fewer values.
fn cuts(low: i64, high: i64, count: usize) -> Vec<i64> {
    let width = i128::from(high) - i128::from(low) + 1;
    let count = (count as i128).min(width).max(1);
    (1..count)
        .map(|i| (i128::from(low) + width * i / count) as i64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_are_even_and_distinct() {
        assert_eq!(cuts(1, 100, 4), [26, 51, 76]);
        assert_eq!(cuts(0, 2, 10), [1, 2]);
        assert_eq!(cuts(5, 5, 3), Vec::<i64>::new());
        assert_eq!(cuts(i64::MIN, i64::MAX, 2), [0]);
    }

    #[test]
    fn bound_literals() {
        assert_eq!(RangeKind::Date.sql(0), "'1970-01-01'::date");
        assert_eq!(RangeKind::Integer.sql(-3), "-3");
    }
}
