//! A `deduplicate` over a stream, kept across micro-batches (Spark's
//! `dropDuplicates` and `dropDuplicatesWithinWatermark` on a stream).
//!
//! Each batch's rows, already one per key within the batch, lose those
//! whose key the state holds; the keys of the rows that pass join the
//! state with the time they expire. A key leaves the state once the
//! watermark passes its expiry:
//! - `withinWatermark`: the first row's event time plus the watermark's
//!   delay (a duplicate within the delay of the first row is dropped);
//! - the event-time column among the keys: the row's event time (a later
//!   duplicate would be behind the watermark, hence late);
//! - otherwise never: the state holds every key ever seen, as in Spark.
//!
//! A key whose row has no event time leaves the state with its batch.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{binary_expr, cast, col, lit, Expr, JoinType, Operator};

/// The state column holding when a key expires (µs since the epoch; null:
/// never).
const EXPIRES: &str = "__expires";
const BATCH: &str = "__batch";
const KEPT: &str = "__kept";

/// When a key seen by a stream's `deduplicate` leaves its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// Never: every key is kept.
    Never,
    /// When the watermark passes this event-time column's value.
    At(String),
    /// When the watermark passes this event-time column's value plus a
    /// delay (µs).
    After(String, i64),
}

/// A stream's `deduplicate`: its keys and when they expire.
#[derive(Debug, Clone)]
pub struct StatefulDedup {
    /// The key columns.
    pub keys: Vec<String>,
    /// When a key leaves the state.
    pub expiry: Expiry,
}

impl StatefulDedup {
    /// The state's schema for rows of `input`: the keys and their expiry.
    pub fn state_schema(&self, input: &Schema) -> Result<SchemaRef> {
        let mut fields = Vec::with_capacity(self.keys.len() + 1);
        for key in &self.keys {
            fields.push(input.field_with_name(key)?.clone().with_nullable(true));
        }
        fields.push(Field::new(EXPIRES, DataType::Int64, true));
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The rows of `batch` whose key is not in `kept` (null keys equal).
    pub fn new_rows(
        &self,
        ctx: &SessionContext,
        batch: DataFrame,
        kept: Arc<MemTable>,
    ) -> Result<DataFrame> {
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let batch = batch.alias(BATCH)?;
        let kept = ctx.read_table(kept)?.alias(KEPT)?;
        let on: Vec<Expr> = self
            .keys
            .iter()
            .map(|k| {
                binary_expr(
                    qualified(BATCH, k),
                    Operator::IsNotDistinctFrom,
                    qualified(KEPT, k),
                )
            })
            .collect();
        batch.join_on(kept, JoinType::LeftAnti, on)?.select(
            names
                .iter()
                .map(|n| qualified(BATCH, n).alias(n))
                .collect::<Vec<Expr>>(),
        )
    }

    /// The state after a batch: `kept` and the keys of `rows` (the batch's
    /// new rows), less the keys the `watermark` (µs) passed.
    pub fn new_state(
        &self,
        ctx: &SessionContext,
        kept: Arc<MemTable>,
        rows: DataFrame,
        watermark: Option<i64>,
    ) -> Result<DataFrame> {
        let expires = match &self.expiry {
            Expiry::Never => lit(ScalarValue::Int64(None)),
            Expiry::At(column) => micros(column),
            Expiry::After(column, delay) => micros(column) + lit(*delay),
        };
        let mut added: Vec<Expr> = self.keys.iter().map(|k| unqualified(k)).collect();
        added.push(expires.alias(EXPIRES));
        let state = ctx.read_table(kept)?.union(rows.select(added)?)?;
        match (&self.expiry, watermark) {
            (Expiry::Never, _) | (_, None) => Ok(state),
            // A row without event time never comes again as a duplicate.
            (_, Some(watermark)) => state.filter(unqualified(EXPIRES).gt_eq(lit(watermark))),
        }
    }
}

fn qualified(relation: &str, name: &str) -> Expr {
    col(Column::new(Some(relation), name))
}

fn unqualified(name: &str) -> Expr {
    col(Column::from_name(name))
}

/// Timestamp column `name` as µs since the epoch (as the watermark is).
fn micros(name: &str) -> Expr {
    let ts = cast(
        unqualified(name),
        DataType::Timestamp(TimeUnit::Microsecond, None),
    );
    cast(ts, DataType::Int64)
}
