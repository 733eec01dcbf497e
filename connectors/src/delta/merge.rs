//! `toDeltaLake` with saveMode merge: a batch of changes is reduced to what
//! each key ends up as, then applied with delta-rs's MERGE, in the run's
//! gated commit (so a stream's positions commit with it, exactly once).
//!
//! - The rows of a key are reduced to its last change: the greatest
//!   `sequenceBy`, ties (and no `sequenceBy`) broken by source order (see
//!   [`source_order`](super::source_order)). Nulls sort as the oldest.
//! - A change whose sequence is older than the table's row for its key
//!   does not touch that row (late or replayed changes never move a key
//!   back in time); this compares with the table's own sequence columns.
//! - `deleteCondition` marks deletions: the key's row is deleted, and a
//!   deleted key is never inserted, nor brought back by a change older
//!   than its deletion (see [`Tombstones`]).
//! - `keepHistory` (slowly changing dimension type 2) keeps every version
//!   with `__start_at`, `__end_at` and `__is_current`; see [`history`].

use std::ops::Not as _;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNode as _;
use datafusion::common::{Column, DFSchema, JoinType, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{MemTable, TableType};
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::functions_window::expr_fn::{lead, row_number};
use datafusion::logical_expr::{cast, ident, lit, Expr, ExprFunctionExt as _, ExprSchemable as _};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::operations::merge::MergeBuilder;
use deltalake::DeltaTable;
use futures::StreamExt as _;

use crate::error::{ConnectorError, Result};
use dataflow_engine::connector::{InputError, LoadInput, SinkReport, WriteContext};
use dataflow_engine::spec::StorageOptions;

use super::source_order::{numbered, SOURCE_ORDER};
use super::tombstones::{Tombstones, DELETED_AT};
use super::{commit_positions, commit_properties, merge_report, writer_properties, GatedLogStore};

/// A change's sequence (`sequenceBy`), computed while merging.
pub(super) const SEQUENCE: &str = "__sequence";
/// Whether a change is a deletion (`deleteCondition`).
pub(super) const DELETE: &str = "__delete";
/// A change's rank among the changes it competes with (1: the winner).
const RANK: &str = "__rank";
/// Which of two changes with one key and sequence wins: the batch's over
/// the table's, a version's start over the table's end of its predecessor.
const PRIORITY: &str = "__priority";
/// keepHistory: when a version became current (its change's sequence).
pub(super) const START_AT: &str = "__start_at";
/// keepHistory: when it stopped being current (null while it is).
pub(super) const END_AT: &str = "__end_at";
/// keepHistory: whether it is the key's current version.
pub(super) const IS_CURRENT: &str = "__is_current";

/// The options of saveMode merge.
#[derive(Debug, Clone)]
pub(super) struct Merge {
    /// The columns identifying a row.
    pub keys: Vec<String>,
    /// SQL over the input's columns ordering a key's changes.
    pub sequence_by: Option<String>,
    /// SQL over the input's columns: the change deletes its key.
    pub delete_condition: Option<String>,
    /// SQL over `source.*` / `target.*`: matched rows update only where
    /// it holds.
    pub update_condition: Option<String>,
    /// Keep every version (SCD type 2) instead of updating in place.
    pub keep_history: bool,
    /// The table's location, and the options of its store.
    pub path: String,
    pub storage: StorageOptions,
}

impl Merge {
    /// Checks the options against the input's schema while planning: the
    /// keys exist, the expressions parse, no column has a reserved name.
    pub(super) fn check_input(&self, input: &LoadInput<'_>) -> std::result::Result<(), InputError> {
        let schema = input.schema;
        if let (None, Some(source)) = (&self.sequence_by, input.unordered.first()) {
            return Err(InputError::at("sequenceBy", format!(
                "the rows from {source} come in no defined order, so which of several rows of one key is the last would be undefined. Help: set sequenceBy to the column ordering a key's changes (e.g. updated_at); when the keys are unique in the query, any column will do, e.g. the key"
            )));
        }
        if let Some(key) = self
            .keys
            .iter()
            .find(|k| schema.field_with_name(k).is_err())
        {
            return Err(InputError::at(
                "mergeKeys",
                format!(
                    "the input has no column \"{key}\"; its columns: {}",
                    column_list(schema)
                ),
            ));
        }
        let mut reserved = vec![SEQUENCE, DELETE, RANK, PRIORITY, SOURCE_ORDER, DELETED_AT];
        if self.keep_history {
            reserved.extend([START_AT, END_AT, IS_CURRENT]);
        }
        let internal = |name: &str| {
            reserved.contains(&name)
                || ["__deleted_", "__touched_"]
                    .iter()
                    .any(|p| name.starts_with(p))
        };
        if let Some(name) = schema
            .fields()
            .iter()
            .map(|f| f.name())
            .find(|n| internal(n))
        {
            return Err(format!(
                "the input has a column named \"{name}\", a name saveMode merge uses itself. Help: rename it in a sql step"
            ).into());
        }
        let source = qualified(schema, "source").map_err(|e| e.to_string())?;
        let ctx = SessionContext::new();
        let parse = |key: &'static str, sql: &str| {
            ctx.parse_sql_expr(sql, &source)
                .map_err(|e| InputError::at(key, e.to_string()))
        };
        if let Some(sql) = &self.sequence_by {
            let plain = DFSchema::try_from(schema.clone()).map_err(|e| e.to_string())?;
            let expr = ctx.parse_sql_expr(sql, &plain).map_err(|e| match parse("sequenceBy", sql) {
                Ok(_) => InputError::at("sequenceBy", format!(
                    "\"{sql}\" names a table; write it over the input's columns, unqualified (it is computed for the incoming rows and for the table's)"
                )),
                Err(_) => InputError::at("sequenceBy", e.to_string()),
            })?;
            let aggregates = expr.exists(|e| {
                Ok(matches!(
                    e,
                    Expr::AggregateFunction(_) | Expr::WindowFunction(_)
                ))
            });
            if aggregates.unwrap_or(false) {
                return Err(InputError::at(
                    "sequenceBy",
                    format!("\"{sql}\" aggregates rows; it must be computed from each row alone"),
                ));
            }
        }
        if let Some(sql) = &self.delete_condition {
            let expr = parse("deleteCondition", sql)?;
            match expr.get_type(&source) {
                Ok(DataType::Boolean | DataType::Null) => {}
                Ok(other) => {
                    return Err(InputError::at("deleteCondition", format!(
                        "\"{sql}\" is {other}, not a condition (true for a change that deletes its key)"
                    )))
                }
                Err(e) => return Err(InputError::at("deleteCondition", e.to_string())),
            }
        }
        Ok(())
    }

    /// The rows `input` leaves in a table that does not exist yet.
    pub(super) async fn first_write(&self, input: DataFrame) -> Result<DataFrame> {
        let columns = column_names(&input);
        let changes = self.changes(input).await?;
        if self.keep_history {
            let versions = self.versions(None, changes, &columns).await?;
            return Ok(versions
                .filter(ident(DELETE).not())?
                .select(history_columns(&columns))?);
        }
        let latest = self.latest(changes).await?;
        Ok(latest
            .filter(ident(DELETE).not())?
            .select(idents(&columns))?)
    }

    /// The last change per key, without those older than their key's
    /// deletion (whose deletions are recorded now; see [`Tombstones`]).
    async fn latest(&self, changes: DataFrame) -> Result<DataFrame> {
        let latest = last_per(changes, &self.keys)?;
        if self.sequence_by.is_none() || self.delete_condition.is_none() {
            return Ok(latest);
        }
        let tombstones = Tombstones::of(&self.storage, &self.path).await?;
        let latest = tombstones.drop_superseded(latest, &self.keys).await?;
        // Read twice: held rather than computed twice when it fits.
        let latest = held(latest).await?;
        tombstones.record(latest.clone(), &self.keys).await?;
        Ok(latest)
    }

    /// Merges `input` into `table`, committing through `ctx`'s gate.
    pub(super) async fn merge(
        &self,
        table: &DeltaTable,
        input: DataFrame,
        ctx: WriteContext,
        merge_schema: bool,
    ) -> Result<SinkReport> {
        let columns = column_names(&input);
        let target = table.snapshot()?.snapshot().arrow_schema();
        let changes = self.changes(input).await?;
        check_history_columns(&target, table, self.keep_history)?;
        let (source, clauses) = if self.keep_history {
            let versions = self.versions(Some(table), changes, &columns).await?;
            (versions, Clauses::history(&self.keys, &columns))
        } else {
            let latest = self.latest(changes).await?.select(idents(&columns))?;
            let clauses = self.clauses(&latest, &target, &columns)?;
            (latest, clauses)
        };
        let snapshot = table.snapshot()?.snapshot().clone();
        let gate = ctx.gate.clone();
        let log_store = GatedLogStore::wrap(table.log_store(), ctx.gate);
        let (state, plan) = source.into_parts();
        let source = DataFrame::new(state.clone(), plan);
        let mut builder = MergeBuilder::new(log_store, Some(snapshot), clauses.on, source)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_session_state(Arc::new(state))
            .with_merge_schema(merge_schema)
            // Reads the source once (a Kafka range would be read twice).
            .with_streaming(true)
            .with_writer_properties(writer_properties())
            .with_commit_properties(commit_properties(&ctx.marks));
        if let Some(delete) = clauses.delete {
            builder = builder.when_matched_delete(|d| d.predicate(delete))?;
        }
        let set = clauses.set;
        builder = builder.when_matched_update(|u| {
            let u = match clauses.update {
                Some(predicate) => u.predicate(predicate),
                None => u,
            };
            set.iter()
                .fold(u, |u, c| u.update(c.as_str(), column("source", c)))
        })?;
        builder = builder.when_not_matched_insert(|i| {
            let i = match clauses.insert {
                Some(predicate) => i.predicate(predicate),
                None => i,
            };
            set.iter()
                .fold(i, |i, c| i.set(c.as_str(), column("source", c)))
        })?;
        let (merged, metrics) = builder.await?;
        let moved = ctx.marks.iter().any(|mark| {
            let start = ctx.starts.iter().find(|s| s.app_id == mark.app_id);
            start.is_none_or(|s| s.version != mark.version)
        });
        let merged = if merged.version() == table.version() && moved {
            commit_positions(table, gate, &ctx.marks).await?
        } else {
            merged
        };
        merge_report(table, &merged, &metrics)
    }

    /// keepHistory: the versions of every key `changes` touches (see
    /// [`history`]), with the table's versions and the key's deletions
    /// (tombstones, which record the batch's deletions now) taken in.
    async fn versions(
        &self,
        table: Option<&DeltaTable>,
        changes: DataFrame,
        columns: &[String],
    ) -> Result<DataFrame> {
        // Read several times: held rather than computed again when it fits.
        let changes = held(changes).await?;
        let unsequenced = changes
            .clone()
            .filter(ident(SEQUENCE).is_null())?
            .count()
            .await?;
        if unsequenced > 0 {
            return Err(ConnectorError::Rejected(format!(
                "keepHistory: sequenceBy is null for {unsequenced} change(s) of this batch; a version cannot start at an unknown point. Nothing was written. Help: filter them out or give them a sequence in a sql step"
            )));
        }
        let state = changes.clone().into_parts().0;
        let touched = touched_keys(&changes, &self.keys)?;
        let tombstones = Tombstones::of(&self.storage, &self.path).await?;
        let mut earlier = Vec::new();
        if let Some(table) = table {
            let versions = table_frame(table, &state).await?;
            earlier.push((of_keys(versions, &touched, &self.keys)?, Earlier::Versions));
        }
        if let Some(deleted) = tombstones.frame(&state).await? {
            earlier.push((of_keys(deleted, &touched, &self.keys)?, Earlier::Deletions));
        }
        let versions = history(&self.keys, changes.clone(), earlier, columns)?;
        tombstones.record(changes, &self.keys).await?;
        Ok(versions)
    }

    /// The input as changes: numbered in source order, with [`SEQUENCE`]
    /// (null without `sequenceBy`) and [`DELETE`].
    async fn changes(&self, input: DataFrame) -> Result<DataFrame> {
        let input = numbered(input)?.alias("source")?;
        let sequence = match &self.sequence_by {
            Some(sql) => input.parse_sql_expr(sql)?,
            None => lit(ScalarValue::Null),
        };
        let delete = match &self.delete_condition {
            Some(sql) => input.parse_sql_expr(sql)?.is_true(),
            None => lit(false),
        };
        Ok(input
            .with_column(SEQUENCE, sequence)?
            .with_column(DELETE, delete)?)
    }

    /// The MERGE clauses of an in-place merge (no history) of `latest`,
    /// the last change per key, into a table of schema `target`.
    fn clauses(&self, latest: &DataFrame, target: &Schema, columns: &[String]) -> Result<Clauses> {
        let state = latest.clone().into_parts().0;
        let source = qualified(latest.schema().as_arrow(), "source")?;
        let target = qualified(target, "target")?;
        let over_source = |sql: &str| state.create_logical_expr(sql, &source);
        let is_delete = match &self.delete_condition {
            Some(sql) => Some(over_source(sql)?.is_true()),
            None => None,
        };
        let guard = match &self.sequence_by {
            Some(sql) => Some(guard(&state, sql, over_source(sql)?, &target)?),
            None => None,
        };
        let update_condition = match &self.update_condition {
            Some(sql) => Some(state.create_logical_expr(sql, &source.join(&target)?)?),
            None => None,
        };
        let not_deleted = is_delete.clone().map(|d| d.not());
        let all = |parts: [Option<Expr>; 3]| parts.into_iter().flatten().reduce(Expr::and);
        Ok(Clauses {
            on: key_match(&self.keys),
            delete: is_delete.map(|d| all([Some(d), guard.clone(), None]).expect("set")),
            update: all([not_deleted.clone(), guard, update_condition]),
            insert: not_deleted,
            set: columns.to_vec(),
        })
    }
}

/// With `sequenceBy`: a change (of sequence `incoming`) applies to the
/// table's row for its key only when it is not older than that row; a row
/// with a null sequence is the oldest.
fn guard(state: &SessionState, sql: &str, incoming: Expr, target: &DFSchema) -> Result<Expr> {
    let current = state.create_logical_expr(sql, target).map_err(|e| {
        ConnectorError::Rejected(format!(
            "sequenceBy \"{sql}\" cannot be computed from the Delta table's columns ({e}): each change is compared with the table's row for its key. Help: the table needs the columns sequenceBy reads; add them (a run with mergeSchema: true, without sequenceBy) or write to a new table"
        ))
    })?;
    Ok(current
        .clone()
        .is_null()
        .or(incoming.gt_eq(current).is_true()))
}

/// A MERGE's join and clauses.
struct Clauses {
    /// Joins a target row to its source row.
    on: Expr,
    /// Matched rows where this holds are deleted.
    delete: Option<Expr>,
    /// Matched rows (where this holds) are updated.
    update: Option<Expr>,
    /// Unmatched source rows (where this holds) are inserted.
    insert: Option<Expr>,
    /// The columns updated and inserted.
    set: Vec<String>,
}

impl Clauses {
    /// keepHistory: every version of a touched key is matched by its key
    /// and start, and updated (its end may have moved) or inserted.
    fn history(keys: &[String], columns: &[String]) -> Clauses {
        let start = |side| Expr::Column(Column::new(Some(side), START_AT));
        let on = key_match(keys).and(start("target").eq(start("source")));
        let mut set = columns.to_vec();
        set.extend([START_AT, END_AT, IS_CURRENT].map(String::from));
        // A deletion at a version's start (a tie it wins) removes it.
        let deletion = column("source", DELETE);
        Clauses {
            on,
            delete: Some(deletion.clone()),
            update: None,
            insert: Some(deletion.not()),
            set,
        }
    }
}

/// `target.k = source.k AND ...` over the merge keys.
pub(super) fn key_match(keys: &[String]) -> Expr {
    keys.iter()
        .map(|k| {
            Expr::Column(Column::new(Some("target"), k.as_str()))
                .eq(Expr::Column(Column::new(Some("source"), k.as_str())))
        })
        .reduce(Expr::and)
        .expect("mergeKeys is not empty")
}

/// Unqualified columns `names`.
pub(super) fn idents(names: &[String]) -> Vec<Expr> {
    names.iter().map(ident).collect()
}

/// Column `name` of `side` (a MERGE's `source` or `target`).
pub(super) fn column(side: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(side), name))
}

/// The last change per `partition` columns: the greatest sequence, then
/// the latest in source order.
pub(super) fn last_per(changes: DataFrame, partition: &[String]) -> Result<DataFrame> {
    let rank = row_number()
        .partition_by(idents(partition))
        .order_by(vec![
            ident(SEQUENCE).sort(false, false),
            ident(PRIORITY).sort(false, false),
            ident(SOURCE_ORDER).sort(false, false),
        ])
        .build()?;
    let ranked = with_priority(changes)?.with_column(RANK, rank)?;
    Ok(ranked.filter(ident(RANK).eq(lit(1u64)))?)
}

/// `changes` with a [`PRIORITY`] column (0 where it had none).
fn with_priority(changes: DataFrame) -> Result<DataFrame> {
    if changes.schema().has_column_with_unqualified_name(PRIORITY) {
        return Ok(changes);
    }
    Ok(changes.with_column(PRIORITY, lit(0i32))?)
}

/// `frame`'s rows held in memory when the memory pool grants them (then
/// each reader reads them rather than computing them again), else `frame`.
/// The pool's grant is released when the last reader is dropped.
async fn held(frame: DataFrame) -> Result<DataFrame> {
    let state = frame.clone().into_parts().0;
    let pool = state.runtime_env().memory_pool.clone();
    let reservation = MemoryConsumer::new("merge changes").register(&pool);
    let mut stream = frame.clone().execute_stream().await?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if reservation.try_grow(batch.get_array_memory_size()).is_err() {
            return Ok(frame);
        }
        batches.push(batch);
    }
    let table = HeldTable {
        rows: MemTable::try_new(schema, vec![batches])?,
        _reservation: reservation,
    };
    Ok(SessionContext::new_with_state(state).read_table(Arc::new(table))?)
}

/// Rows held in memory, with the memory pool's grant for them.
#[derive(Debug)]
struct HeldTable {
    rows: MemTable,
    _reservation: MemoryReservation,
}

#[async_trait::async_trait]
impl TableProvider for HeldTable {
    fn schema(&self) -> SchemaRef {
        self.rows.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.rows.scan(state, projection, filters, limit).await
    }
}

/// The names of `input`'s columns.
pub(super) fn column_names(input: &DataFrame) -> Vec<String> {
    input
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// `schema`'s columns as a comma-separated list.
fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `schema` with every column qualified by `qualifier`.
fn qualified(schema: &Schema, qualifier: &str) -> Result<DFSchema> {
    Ok(DFSchema::try_from_qualified_schema(qualifier, schema)?)
}

/// keepHistory needs its columns in an existing table, and a table with
/// them is only merged into with keepHistory (an in-place update would
/// overwrite every version of a key).
fn check_history_columns(target: &Schema, table: &DeltaTable, keep_history: bool) -> Result<()> {
    let missing: Vec<&str> = [START_AT, END_AT, IS_CURRENT]
        .into_iter()
        .filter(|c| target.field_with_name(c).is_err())
        .collect();
    let url = table.table_url();
    match (keep_history, missing.is_empty()) {
        (true, false) => Err(ConnectorError::Rejected(format!(
            "keepHistory: the Delta table at \"{url}\" has no {} column: it was written without keepHistory. Help: write the history to a new table",
            missing.join(", ")
        ))),
        (false, true) => Err(ConnectorError::Rejected(format!(
            "the Delta table at \"{url}\" holds a history (keepHistory): merging into it without keepHistory would overwrite every version of a key. Help: set keepHistory: true"
        ))),
        _ => Ok(()),
    }
}

/// The distinct keys of `changes`, renamed `__touched_<i>`.
fn touched_keys(changes: &DataFrame, keys: &[String]) -> Result<DataFrame> {
    let renamed = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ident(k).alias(format!("__touched_{i}")))
        .collect::<Vec<_>>();
    Ok(changes.clone().select(renamed)?.distinct()?)
}

/// The rows of `frame` whose keys are among `touched` (from
/// [`touched_keys`]); key names are taken exactly as written.
fn of_keys(frame: DataFrame, touched: &DataFrame, keys: &[String]) -> Result<DataFrame> {
    let on = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ident(k).eq(ident(format!("__touched_{i}"))));
    Ok(frame.join_on(touched.clone(), JoinType::LeftSemi, on)?)
}

/// The Delta table `table` as a frame of `state`'s session.
pub(super) async fn table_frame(table: &DeltaTable, state: &SessionState) -> Result<DataFrame> {
    table.update_datafusion_session(state)?;
    let provider = table.table_provider().await?;
    Ok(SessionContext::new_with_state(state.clone()).read_table(provider)?)
}

/// What the table knew of a key before this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Earlier {
    /// Its versions: each one's start is an upsert, its end a deletion
    /// (which the next version's start, at the same sequence, outranks).
    Versions,
    /// Its last deletion (a tombstone: keys and sequence).
    Deletions,
}

/// keepHistory: the versions of the keys `changes` touches, with what the
/// table knew of them (`earlier`). Each upsert starts a version that ends
/// at the key's next change; deletions only end versions, and are kept (with
/// [`DELETE`]) so that one winning a tie with a version's start removes it.
/// Of two changes with one key and sequence, the batch's (then the later in
/// source order) wins.
fn history(
    keys: &[String],
    changes: DataFrame,
    earlier: Vec<(DataFrame, Earlier)>,
    columns: &[String],
) -> Result<DataFrame> {
    let types: Vec<(String, DataType)> = columns
        .iter()
        .map(|c| {
            let field = changes.schema().field_with_unqualified_name(c)?;
            Ok((c.clone(), field.data_type().clone()))
        })
        .collect::<Result<_>>()?;
    let sequence_type = changes
        .schema()
        .field_with_unqualified_name(SEQUENCE)?
        .data_type()
        .clone();
    let as_changes = |frame: DataFrame, sequence: &str, delete: bool, priority: i32| {
        let mut select: Vec<Expr> = types
            .iter()
            .map(|(c, t)| {
                let value = if frame.schema().has_column_with_unqualified_name(c) {
                    ident(c)
                } else {
                    lit(ScalarValue::Null)
                };
                cast(value, t.clone()).alias(c)
            })
            .collect();
        select.extend([
            cast(ident(sequence), sequence_type.clone()).alias(SEQUENCE),
            lit(delete).alias(DELETE),
            lit(priority).alias(PRIORITY),
            lit(0u64).alias(SOURCE_ORDER),
        ]);
        frame.select(select)
    };
    let mut select: Vec<Expr> = idents(columns);
    select.extend([
        ident(SEQUENCE),
        ident(DELETE),
        lit(2i32).alias(PRIORITY),
        ident(SOURCE_ORDER),
    ]);
    let mut events = changes.select(select)?;
    for (frame, kind) in earlier {
        events = match kind {
            Earlier::Versions => {
                let ends = frame.clone().filter(ident(END_AT).is_not_null())?;
                events
                    .union(as_changes(frame, START_AT, false, 1)?)?
                    .union(as_changes(ends, END_AT, true, 0)?)?
            }
            Earlier::Deletions => events.union(as_changes(frame, SEQUENCE, true, 0)?)?,
        };
    }
    let mut by_sequence = keys.to_vec();
    by_sequence.push(SEQUENCE.into());
    let winners = last_per(events, &by_sequence)?;
    let end = lead(ident(SEQUENCE), Some(1), None)
        .partition_by(idents(keys))
        .order_by(vec![ident(SEQUENCE).sort(true, true)])
        .build()?;
    let mut select = history_columns(columns);
    select.push(ident(DELETE));
    Ok(winners
        .with_column(END_AT, end)?
        .with_column(START_AT, ident(SEQUENCE))?
        .with_column(IS_CURRENT, ident(END_AT).is_null())?
        .select(select)?)
}

/// `columns` and keepHistory's own.
fn history_columns(columns: &[String]) -> Vec<Expr> {
    let mut select = idents(columns);
    select.extend([START_AT, END_AT, IS_CURRENT].map(ident));
    select
}
