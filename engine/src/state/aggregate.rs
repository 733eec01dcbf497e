//! A `GROUP BY` over a stream, kept across micro-batches.
//!
//! Each batch aggregates its own rows into partial results (a count, a
//! sum, a min, a max; an average as sum and count), merges them with the
//! state kept from earlier batches (the same partials per group), and the
//! merged partials are the new state. The aggregation node of the plan is
//! replaced by the rows the output mode writes:
//! - `append`: the groups whose event-time window the watermark passed
//!   (final: they leave the state and later rows for them are late);
//! - `update`: the groups this batch changed;
//! - `complete`: every group.
//!
//! With a watermark and a window (or the event-time column) among the
//! keys, groups leave the state once the watermark passes them (append and
//! update): the state holds the groups of the windows still open. Without,
//! it holds every group ever seen.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{plan_err, Column, DFSchemaRef, Result, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider, MemTable};
use datafusion::execution::context::SessionContext;
use datafusion::functions::core::expr_fn::{coalesce, get_field, named_struct};
use datafusion::functions_aggregate::expr_fn::{bool_or, count, max, min, sum};
use datafusion::functions_aggregate::min_max::max_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::{
    cast, col, lit, when, Aggregate, AggregateUDF, Expr, ExprFunctionExt, LogicalPlan,
    LogicalPlanBuilder, WindowFrame, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
};

use crate::spec::OutputMode;
use crate::window::{SESSION_WINDOW, WINDOW};

const TOUCHED: &str = "__touched";

/// How one aggregate function's partial result is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Sum,
    Min,
    Max,
    /// A sum and a count.
    Avg,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "count" => Kind::Count,
            "sum" => Kind::Sum,
            "min" => Kind::Min,
            "max" => Kind::Max,
            "avg" | "mean" => Kind::Avg,
            _ => return None,
        })
    }
}

/// The aggregations of `plan` that read one of `streams` directly (no other
/// such aggregation between them and the stream), views inlined.
pub fn stream_aggregates(
    plan: &LogicalPlan,
    streams: &[Arc<dyn TableProvider>],
) -> Result<Vec<Aggregate>> {
    let plan = inline_views(plan.clone())?;
    let mut found = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node {
            let lowest = reads_stream(&aggregate.input, streams)
                && !has_stream_aggregate(&aggregate.input, streams);
            // A view read twice (e.g. a CTE joined with itself) is one aggregation.
            if lowest && !found.contains(aggregate) {
                found.push(aggregate.clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

fn has_stream_aggregate(plan: &LogicalPlan, streams: &[Arc<dyn TableProvider>]) -> bool {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::Aggregate(a) if reads_stream(&a.input, streams)))
    })
    .unwrap_or(false)
}

/// Whether `plan` scans one of `streams` (views not inlined).
pub fn reads_stream(plan: &LogicalPlan, streams: &[Arc<dyn TableProvider>]) -> bool {
    plan.exists(|node| {
        let LogicalPlan::TableScan(scan) = node else {
            return Ok(false);
        };
        let provider = source_as_provider(&scan.source)?;
        Ok(streams
            .iter()
            .any(|s| std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(&provider))))
    })
    .unwrap_or(false)
}

/// `plan` with every view's plan in place of its scan.
pub fn inline_views(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let LogicalPlan::TableScan(scan) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some(view) = source_as_provider(&scan.source)?
            .get_logical_plan()
            .map(|p| p.into_owned())
        else {
            return Ok(Transformed::no(node));
        };
        let view = inline_views(view)?;
        let mut builder = LogicalPlanBuilder::from(view).alias(scan.table_name.clone())?;
        if let Some(projection) = &scan.projection {
            let schema = builder.schema().clone();
            let columns: Vec<Expr> = projection
                .iter()
                .map(|i| Expr::Column(Column::from(schema.qualified_field(*i))))
                .collect();
            builder = builder.project(columns)?;
        }
        Ok(Transformed::yes(builder.build()?))
    })
    .map(|t| t.data)
}

/// The index of the group key that carries event time: a `window` /
/// `session_window` struct, or the watermark column itself.
pub fn event_time_key(aggregate: &Aggregate, watermark_column: &str) -> Option<usize> {
    let groups = aggregate.group_expr.len();
    (0..groups).find(|&i| {
        let field = aggregate.schema.field(i);
        match field.data_type() {
            DataType::Struct(fields) => {
                [WINDOW, SESSION_WINDOW].contains(&field.name().as_str())
                    && fields.iter().any(|f| f.name() == "end")
            }
            DataType::Timestamp(_, _) => field.name() == watermark_column,
            _ => false,
        }
    })
}

/// An aggregation over a stream, split into what each batch computes.
#[derive(Debug, Clone)]
pub struct StatefulAggregate {
    /// The aggregation as planned.
    pub aggregate: Aggregate,
    kinds: Vec<Kind>,
    /// The group key carrying event time, if any.
    event_time: Option<usize>,
}

impl StatefulAggregate {
    /// Splits `aggregate`; an error names an aggregate function that
    /// cannot be kept across batches.
    pub fn new(aggregate: Aggregate, watermark_column: Option<&str>) -> Result<Self> {
        let mut kinds = Vec::new();
        for expr in &aggregate.aggr_expr {
            let Expr::AggregateFunction(function) = unalias(expr) else {
                return plan_err!("{expr} is not an aggregate function");
            };
            let params = &function.params;
            let name = function.func.name().to_ascii_lowercase();
            let kind = Kind::of(&name).filter(|_| {
                !params.distinct
                    && params.filter.is_none()
                    && params.order_by.is_empty()
                    && params.args.len() == 1
            });
            let Some(kind) = kind else {
                return plan_err!(
                    "{expr} cannot be kept across micro-batches; a streaming GROUP BY supports count, sum, min, max and avg (without DISTINCT, FILTER or ORDER BY)"
                );
            };
            kinds.push(kind);
        }
        let event_time = watermark_column.and_then(|c| event_time_key(&aggregate, c));
        Ok(StatefulAggregate {
            aggregate,
            kinds,
            event_time,
        })
    }

    /// Whether groups can leave the state (a watermark over a key).
    pub fn has_event_time(&self) -> bool {
        self.event_time.is_some()
    }

    /// The batch's partial results, plus `__touched` (true).
    pub fn partial(&self) -> Result<LogicalPlan> {
        let aggregate = &self.aggregate;
        let groups: Vec<Expr> = aggregate
            .group_expr
            .iter()
            .enumerate()
            .map(|(j, e)| e.clone().alias(group_name(j)))
            .collect();
        let mut partials = Vec::new();
        for (k, (expr, kind)) in aggregate.aggr_expr.iter().zip(&self.kinds).enumerate() {
            let Expr::AggregateFunction(AggregateFunction { params, .. }) = unalias(expr) else {
                unreachable!("checked in new");
            };
            let arg = params.args[0].clone();
            let parts = match kind {
                Kind::Count => vec![count(arg)],
                Kind::Sum => vec![sum(arg)],
                Kind::Min => vec![min(arg)],
                Kind::Max => vec![max(arg)],
                Kind::Avg => vec![sum(arg.clone()), count(arg)],
            };
            for (i, part) in parts.into_iter().enumerate() {
                partials.push(part.alias(part_name(k, i)));
            }
        }
        let builder = LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
            .aggregate(groups, partials)?;
        let mut columns: Vec<Expr> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| col(Column::from_name(f.name())))
            .collect();
        columns.push(lit(true).alias(TOUCHED));
        builder.project(columns)?.build()
    }

    /// The new state: `partial` and the kept `state` (same schema) merged
    /// per group, `__touched` where the batch changed the group.
    pub fn merged(&self, partial: LogicalPlan, state: Arc<MemTable>) -> Result<LogicalPlan> {
        let schema = partial.schema().clone();
        let groups: Vec<Expr> = (0..self.aggregate.group_expr.len())
            .map(|j| col(Column::from_name(group_name(j))))
            .collect();
        let mut merges = Vec::new();
        for (k, kind) in self.kinds.iter().enumerate() {
            let parts = if *kind == Kind::Avg { 2 } else { 1 };
            for i in 0..parts {
                let name = part_name(k, i);
                let column = col(Column::from_name(&name));
                let merged = match kind {
                    Kind::Min => min(column),
                    Kind::Max => max(column),
                    Kind::Count | Kind::Sum | Kind::Avg => sum(column),
                };
                let typed = schema
                    .field_with_unqualified_name(&name)?
                    .data_type()
                    .clone();
                merges.push(cast(merged, typed).alias(name));
            }
        }
        merges.push(bool_or(col(TOUCHED)).alias(TOUCHED));
        let state =
            LogicalPlanBuilder::scan("__state", provider_as_source(state), None)?.build()?;
        let union = LogicalPlanBuilder::from(partial).union(state)?;
        match self.session_key() {
            Some(j) => sessions_merged(union, j, groups, merges, &schema),
            None => union.aggregate(groups, merges)?.build(),
        }
    }

    /// The group key that is a session window, if any.
    pub fn session_key(&self) -> Option<usize> {
        self.event_time
            .filter(|j| self.aggregate.schema.field(*j).name() == SESSION_WINDOW)
    }

    /// Rows of the merged state whose window the watermark `micros` passed.
    fn closed(&self, schema: &DFSchemaRef, micros: i64) -> Option<Expr> {
        let j = self.event_time?;
        let field = schema.field(j);
        let watermark = |ts: &DataType| {
            cast(
                lit(ScalarValue::TimestampMicrosecond(Some(micros), None)),
                ts.clone(),
            )
        };
        let key = col(Column::from_name(group_name(j)));
        Some(match field.data_type() {
            DataType::Struct(fields) => {
                let end = fields.iter().find(|f| f.name() == "end")?;
                get_field(key, "end").lt_eq(watermark(end.data_type()))
            }
            ts => key.lt(watermark(ts)),
        })
    }

    /// From the merged state (in `merged`): the rows `mode` writes, as the
    /// aggregation's output (same schema), and the rows the state keeps.
    pub fn split(
        &self,
        ctx: &SessionContext,
        merged: Arc<MemTable>,
        mode: OutputMode,
        watermark: Option<i64>,
    ) -> Result<(LogicalPlan, LogicalPlan)> {
        let frame = ctx.read_table(merged)?;
        let schema = frame.schema().clone().into();
        let closed = watermark.and_then(|w| self.closed(&schema, w));
        let written = match (mode, &closed) {
            (OutputMode::Append, Some(closed)) => frame.clone().filter(closed.clone())?,
            // No event time seen yet: every group is still open.
            (OutputMode::Append, None) => frame.clone().filter(lit(false))?,
            (OutputMode::Update, _) => frame.clone().filter(col(TOUCHED))?,
            (OutputMode::Complete, _) => frame.clone(),
        };
        let written = written.select(self.output_exprs())?;
        let kept = match (mode, closed) {
            (OutputMode::Append | OutputMode::Update, Some(closed)) => frame.filter(!closed)?,
            _ => frame,
        };
        let mut columns: Vec<Expr> = kept
            .schema()
            .fields()
            .iter()
            .filter(|f| f.name() != TOUCHED)
            .map(|f| col(Column::from_name(f.name())))
            .collect();
        columns.push(lit(false).alias(TOUCHED));
        let kept = kept.select(columns)?;
        Ok((
            written.into_unoptimized_plan(),
            kept.into_unoptimized_plan(),
        ))
    }

    /// The final values, named and typed as the aggregation's output.
    fn output_exprs(&self) -> Vec<Expr> {
        let schema = &self.aggregate.schema;
        let groups = self.aggregate.group_expr.len();
        let mut exprs = Vec::new();
        for j in 0..groups {
            let (qualifier, field) = schema.qualified_field(j);
            exprs.push(
                col(Column::from_name(group_name(j)))
                    .alias_qualified(qualifier.cloned(), field.name()),
            );
        }
        for (k, kind) in self.kinds.iter().enumerate() {
            let (qualifier, field) = schema.qualified_field(groups + k);
            let part = |i| col(Column::from_name(part_name(k, i)));
            let value = match kind {
                Kind::Count => coalesce(vec![part(0), lit(0i64)]),
                Kind::Avg => cast(part(0), DataType::Float64) / cast(part(1), DataType::Float64),
                Kind::Sum | Kind::Min | Kind::Max => part(0),
            };
            exprs.push(
                cast(value, field.data_type().clone())
                    .alias_qualified(qualifier.cloned(), field.name()),
            );
        }
        exprs
    }
}

/// Sessions merged across batches: per value of the other keys, ordered
/// by start, a session overlapping the ones before it (it starts before
/// their greatest end) joins them; the merged session runs from the first
/// start to the greatest end, its partial results merged (`merges`).
fn sessions_merged(
    union: LogicalPlanBuilder,
    j: usize,
    groups: Vec<Expr>,
    merges: Vec<Expr>,
    schema: &DFSchemaRef,
) -> Result<LogicalPlan> {
    let session = groups[j].clone();
    let keys: Vec<Expr> = groups
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != j)
        .map(|(_, e)| e.clone())
        .collect();
    let (start, end) = (
        get_field(session.clone(), "start"),
        get_field(session, "end"),
    );
    let window = |function: Arc<AggregateUDF>, arg: Expr, frame_end: WindowFrameBound| {
        Expr::from(WindowFunction::new(
            WindowFunctionDefinition::AggregateUDF(function),
            vec![arg],
        ))
        .partition_by(keys.clone())
        .order_by(vec![start.clone().sort(true, false)])
        .window_frame(WindowFrame::new_bounds(
            WindowFrameUnits::Rows,
            WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
            frame_end,
        ))
        .build()
    };
    let previous_end = window(
        max_udaf(),
        end.clone(),
        WindowFrameBound::Preceding(ScalarValue::UInt64(Some(1))),
    )?;
    let starts_anew = when(
        col("__previous_end")
            .is_null()
            .or(start.clone().gt_eq(col("__previous_end"))),
        lit(1i64),
    )
    .otherwise(lit(0i64))?;
    let island = window(sum_udaf(), starts_anew, WindowFrameBound::CurrentRow)?;
    let mut by = keys.clone();
    by.push(col("__island"));
    let mut aggregates = vec![min(start).alias("__first"), max(end).alias("__last")];
    aggregates.extend(merges);
    let merged = union
        .window(vec![previous_end.alias("__previous_end")])?
        .window(vec![island.alias("__island")])?
        .aggregate(by, aggregates)?;
    // Back to the partial's columns, in its order.
    let ts = match schema.field(j).data_type() {
        DataType::Struct(fields) => fields[0].data_type().clone(),
        other => other.clone(),
    };
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            if i == j {
                named_struct(vec![
                    lit("start"),
                    cast(col("__first"), ts.clone()),
                    lit("end"),
                    cast(col("__last"), ts.clone()),
                ])
                .alias(field.name())
            } else {
                col(Column::from_name(field.name()))
            }
        })
        .collect();
    merged.project(columns)?.build()
}

/// `plan` (views inlined) with `aggregate` (wherever it appears) replaced
/// by `output` (which has its schema), the schemas above recomputed.
pub fn replace_aggregate(
    plan: &LogicalPlan,
    aggregate: &Aggregate,
    output: LogicalPlan,
) -> Result<LogicalPlan> {
    let plan = inline_views(plan.clone())?;
    plan.transform_up(|node| match &node {
        LogicalPlan::Aggregate(a) if a == aggregate => Ok(Transformed::yes(output.clone())),
        LogicalPlan::TableScan(_) | LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
            Ok(Transformed::no(node))
        }
        _ => Ok(Transformed::yes(node.recompute_schema()?)),
    })
    .map(|t| t.data)
}

/// The output columns of `plan` that are `aggregate`'s group keys or are
/// computed from them alone (e.g. `window.start AS window_start`): the
/// keys an `update` merges on. Empty when an operator in between hides them.
pub fn key_columns(plan: &LogicalPlan, aggregate: &Aggregate) -> Result<Vec<String>> {
    let plan = inline_views(plan.clone())?;
    Ok(keys_of(&plan, aggregate).unwrap_or_default())
}

fn keys_of(plan: &LogicalPlan, aggregate: &Aggregate) -> Option<Vec<String>> {
    match plan {
        LogicalPlan::Aggregate(a) if a == aggregate => Some(
            a.schema
                .fields()
                .iter()
                .take(a.group_expr.len())
                .map(|f| f.name().clone())
                .collect(),
        ),
        LogicalPlan::Projection(projection) => {
            let inner = keys_of(&projection.input, aggregate)?;
            let (keys, refs): (Vec<String>, Vec<_>) = projection
                .expr
                .iter()
                .zip(projection.schema.fields())
                .filter_map(|(expr, field)| {
                    let refs = expr.column_refs();
                    let key = !refs.is_empty() && refs.iter().all(|c| inner.contains(&c.name));
                    key.then(|| (field.name().clone(), refs))
                })
                .unzip();
            // Every group key must be told apart in the output, or a merge on
            // the output's keys would fold groups together.
            let covered = inner
                .iter()
                .all(|key| refs.iter().flatten().any(|c| &c.name == key));
            Some(if covered { keys } else { Vec::new() })
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_) => keys_of(plan.inputs()[0], aggregate),
        _ => None,
    }
}

/// An empty state for `partial`'s schema.
pub fn empty_state(schema: SchemaRef) -> Result<Arc<MemTable>> {
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// `batches` as a state table of `schema`; an error when the query's
/// aggregation no longer matches what was kept.
pub fn state_table(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Arc<MemTable>> {
    let mut checked = Vec::with_capacity(batches.len());
    for batch in batches {
        let same = batch.schema().fields().len() == schema.fields().len()
            && batch
                .schema()
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return plan_err!(
                "the aggregation's state in the checkpoint has columns {:?}, the query now needs {:?}: the query changed. Help: start from a new checkpointLocation (and a new sink table)",
                batch.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
                schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>()
            );
        }
        checked.push(RecordBatch::try_new(
            schema.clone(),
            batch.columns().to_vec(),
        )?);
    }
    Ok(Arc::new(MemTable::try_new(schema, vec![checked])?))
}

fn group_name(j: usize) -> String {
    format!("__g{j}")
}

fn part_name(k: usize, i: usize) -> String {
    format!("__p{k}_{i}")
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}
