//! `fromDeltaLake` and `toDeltaLake`, on delta-rs.
//!
//! Writes go through delta-rs's `WriteBuilder` (parallel Parquet writing,
//! partitioning, schema evolution, overwrite) over a [`GatedLogStore`], so
//! the commit waits for the run's other sinks.

mod gated_store;
mod merge;
mod source_order;
mod tombstones;
pub mod upkeep;

use std::sync::Arc;

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};

use dataflow_engine::commit::CommitGate;
use dataflow_engine::connector::{
    BoxError, InputError, LoadInput, Mark, Opened, Resume, Rewrite, Sink, SinkReport, Source,
    WriteContext,
};
use dataflow_engine::spec::{Mode, StepInfo, StorageOptions};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionState;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Transaction;
use deltalake::kernel::{normalize_for_delta, StructType};
use deltalake::operations::merge::MergeMetrics;
use deltalake::operations::write::{SchemaMode, WriteBuilder};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode as DeltaSaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use serde::Deserialize;

use crate::error::{ConnectorError, Result};
use crate::save_mode::SaveMode;
use crate::storage::{check_path, is_local, store_for, url_of};
use gated_store::GatedLogStore;
use merge::Merge;
use upkeep::{Every, EveryConfig, Upkeep};

/// The (unloaded) table at `path`, on the pipeline's store for it: the
/// same store DataFusion reads files there with.
fn table_at(storage: &StorageOptions, path: &str) -> Result<DeltaTable> {
    let url = url_of(path)?;
    let builder = DeltaTableBuilder::from_url(url.clone())?;
    let builder = if is_local(&url) {
        builder
    } else {
        builder.with_storage_backend(store_for(storage, &url)?, url)
    };
    Ok(builder.build()?)
}

/// Opens the table at `path`, or `None` when no Delta table is there yet.
async fn open_existing(
    storage: &StorageOptions,
    path: &str,
    version: Option<u64>,
) -> Result<Option<DeltaTable>> {
    let mut table = table_at(storage, path)?;
    if !table.log_store().is_delta_table_location().await? {
        return Ok(None);
    }
    match version {
        Some(v) => table.load_version(v).await?,
        None => table.load().await?,
    }
    Ok(Some(table))
}

/// `fromDeltaLake` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FromDeltaConfig {
    /// Table location.
    path: String,
    /// Read this version instead of the latest (time travel).
    version_as_of: Option<u64>,
}

#[derive(Debug)]
struct DeltaSource {
    config: FromDeltaConfig,
    storage: StorageOptions,
}

/// Builds a `fromDeltaLake` source from its step config.
pub(crate) fn source(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Source>> {
    let config: FromDeltaConfig = info.parse()?;
    check_path(info, "path", &config.path)?;
    Ok(Arc::new(DeltaSource {
        config,
        storage: info.storage.clone(),
    }))
}

#[async_trait]
impl Source for DeltaSource {
    /// A table's files come in no particular order (compaction rewrites
    /// them), so its rows have none either.
    fn ordered(&self) -> bool {
        false
    }

    async fn open(&self, state: &SessionState, _resume: &Resume) -> Result<Opened, BoxError> {
        let path = &self.config.path;
        let table = open_existing(&self.storage, path, self.config.version_as_of)
            .await
            .map_err(|e| {
                ConnectorError::Rejected(format!("cannot open Delta table \"{path}\": {e}"))
            })?
            .ok_or_else(|| {
                ConnectorError::Rejected(format!("no Delta table at \"{path}\" (no _delta_log)"))
            })?;
        table.update_datafusion_session(state)?;
        Ok(Opened::table(table.table_provider().await?))
    }
}

/// `toDeltaLake` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ToDeltaConfig {
    /// Table location; created on first write.
    path: String,
    /// errorIfExists (batch default), append (streaming default), overwrite,
    /// ignore or merge. Streaming pipelines reject errorIfExists and ignore.
    save_mode: Option<SaveMode>,
    /// saveMode merge: the columns identifying a row.
    #[serde(default)]
    merge_keys: Vec<String>,
    /// saveMode merge: SQL over the columns of the input ordering the
    /// changes of a key (the greatest is the last).
    sequence_by: Option<String>,
    /// saveMode merge: SQL over the input's columns; a change where it
    /// holds deletes its key (and such rows are never inserted).
    delete_condition: Option<String>,
    /// saveMode merge: SQL over `source.*` / `target.*`; matched rows are
    /// updated only where it holds (default: always).
    update_condition: Option<String>,
    /// saveMode merge: keep every version of a row (SCD type 2) with
    /// `__start_at`, `__end_at` and `__is_current`.
    #[serde(default)]
    keep_history: bool,
    /// Partition columns for a new table (must match an existing table's).
    #[serde(default)]
    partition_by: Vec<String>,
    /// Add columns the table lacks instead of failing.
    #[serde(default)]
    merge_schema: bool,
    /// With saveMode overwrite: replace the table's schema with the input's.
    #[serde(default)]
    overwrite_schema: bool,
    /// Target size of data files in bytes (delta-rs default: 100 MiB),
    /// for writes and compaction.
    target_file_size: Option<u64>,
    /// Compact small files every N commits and/or T time
    /// (`{"everyCommits": 50}`, `{"interval": "1 hour"}`).
    optimize: Option<EveryConfig>,
    /// Delete files no recent version needs, every N commits and/or T time,
    /// keeping `retentionHours` (default and minimum: the table's, 7 days).
    vacuum: Option<EveryConfig>,
    /// A new table's `delta.checkpointInterval`: a checkpoint every this
    /// many commits (delta-rs default 100), so a long stream's table opens
    /// from its last checkpoint instead of replaying every commit.
    checkpoint_interval: Option<u64>,
}

#[derive(Debug)]
struct DeltaSink {
    config: ToDeltaConfig,
    /// Compaction and vacuum after commits.
    upkeep: Upkeep,
    /// `saveMode` as written, or the mode's default.
    save_mode: SaveMode,
    /// saveMode merge's options.
    merge: Option<Merge>,
    storage: StorageOptions,
    /// The table as last loaded, brought up to date from its new commits
    /// only: a stream writes every few seconds, and replaying the log from
    /// its last checkpoint each time costs more as the log grows.
    loaded: tokio::sync::Mutex<Option<DeltaTable>>,
    /// The table's version after this sink's last commit, and per app id
    /// the position that batch reached: while the table is still at that
    /// version, a batch starting there is not in the table yet.
    committed: std::sync::Mutex<(Option<u64>, HashMap<String, i64>)>,
}

/// The effective saveMode: batch pipelines default to errorIfExists, streaming
/// ones to append; in a streaming pipeline every micro-batch after the first,
/// and every restart, writes to the table the first batch created, so
/// errorIfExists would fail and ignore would drop batches whose positions are
/// still recorded as consumed.
fn effective_save_mode(
    info: &StepInfo,
    written: Option<SaveMode>,
) -> dataflow_engine::Result<SaveMode> {
    let streaming = info.mode == Mode::Streaming;
    match (written, streaming) {
        (Some(SaveMode::ErrorIfExists), true) => Err(info.error(
            "saveMode",
            "saveMode errorIfExists cannot work in a streaming pipeline: every micro-batch after the first (and every restart) writes to the table the first batch created. Help: use append (the streaming default), merge or overwrite",
        )),
        (Some(SaveMode::Ignore), true) => Err(info.error(
            "saveMode",
            "saveMode ignore would silently drop every micro-batch after the first in a streaming pipeline, while the source positions still advance (data loss). Help: use append (the streaming default) or merge",
        )),
        (Some(mode), _) => Ok(mode),
        (None, true) => Ok(SaveMode::Append),
        (None, false) => Ok(SaveMode::ErrorIfExists),
    }
}

/// Builds a `toDeltaLake` sink from its step config.
pub(crate) fn sink(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Sink>> {
    let config: ToDeltaConfig = info.parse()?;
    check_path(info, "path", &config.path)?;
    let save_mode = effective_save_mode(info, config.save_mode)?;
    let merging = save_mode == SaveMode::Merge;
    if merging && config.merge_keys.is_empty() {
        return Err(info.error(
            "mergeKeys",
            "saveMode merge needs mergeKeys, the columns identifying a row",
        ));
    }
    for (key, set) in [
        ("mergeKeys", !config.merge_keys.is_empty()),
        ("sequenceBy", config.sequence_by.is_some()),
        ("deleteCondition", config.delete_condition.is_some()),
        ("updateCondition", config.update_condition.is_some()),
        ("keepHistory", config.keep_history),
    ] {
        if set && !merging {
            return Err(info.error(key, "only applies with saveMode merge"));
        }
    }
    if config.keep_history && config.sequence_by.is_none() {
        return Err(info.error(
            "keepHistory",
            "keepHistory needs sequenceBy: each version starts and ends at a change's sequence",
        ));
    }
    if config.keep_history && config.merge_schema {
        return Err(info.error(
            "mergeSchema",
            "does not apply with keepHistory: the versions already in the table have no values for new columns",
        ));
    }
    if config.keep_history && config.update_condition.is_some() {
        return Err(info.error(
            "updateCondition",
            "does not apply with keepHistory: every change becomes a version",
        ));
    }
    if config.overwrite_schema && save_mode != SaveMode::Overwrite {
        return Err(info.error("overwriteSchema", "only applies with saveMode overwrite"));
    }
    if config.merge_schema && config.overwrite_schema {
        return Err(info.error(
            "mergeSchema",
            "choose one of mergeSchema and overwriteSchema",
        ));
    }
    if config.target_file_size == Some(0) {
        return Err(info.error("targetFileSize", "must be positive"));
    }
    let merge = merging.then(|| Merge {
        keys: config.merge_keys.clone(),
        sequence_by: config.sequence_by.clone(),
        delete_condition: config.delete_condition.clone(),
        update_condition: config.update_condition.clone(),
        keep_history: config.keep_history,
        path: config.path.clone(),
        storage: info.storage.clone(),
    });
    if config.checkpoint_interval == Some(0) {
        return Err(info.error("checkpointInterval", "must be at least 1"));
    }
    let upkeep = Upkeep {
        optimize: config
            .optimize
            .as_ref()
            .map(|c| Every::parse(info, "optimize", c))
            .transpose()?,
        vacuum: config
            .vacuum
            .as_ref()
            .map(|c| Every::parse(info, "vacuum", c))
            .transpose()?,
    };
    Ok(Arc::new(DeltaSink {
        upkeep,
        config,
        save_mode,
        merge,
        storage: info.storage.clone(),
        loaded: tokio::sync::Mutex::default(),
        committed: std::sync::Mutex::default(),
    }))
}

impl DeltaSink {
    fn path(&self) -> &str {
        &self.config.path
    }

    /// The table's latest version, `None` when there is no table yet.
    async fn latest(&self) -> Result<Option<DeltaTable>> {
        let mut loaded = self.loaded.lock().await;
        if let Some(table) = loaded.as_mut() {
            if table.update_incremental(None).await.is_ok() {
                return Ok(Some(table.clone()));
            }
        }
        let table = open_existing(&self.storage, self.path(), None).await?;
        loaded.clone_from(&table);
        Ok(table)
    }

    /// Whether `table` is as this sink's last commit left it and the batch
    /// of `ctx` starts where that commit ended, for every key it reads:
    /// then the table cannot hold the batch.
    fn continues_last_commit(&self, table: &DeltaTable, ctx: &WriteContext) -> bool {
        let committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let (version, positions) = &*committed;
        version.is_some()
            && *version == table.version()
            && ctx.marks.iter().all(|mark| {
                let start = ctx.starts.iter().find(|s| s.app_id == mark.app_id);
                start.is_some_and(|s| positions.get(&s.app_id) == Some(&s.version))
            })
    }

    /// Records that the table, now at its latest version, holds the
    /// positions up to `marks` (unknown version: the next batch checks).
    async fn record_commit(&self, marks: &[Mark]) {
        let version = self.latest().await.ok().flatten().and_then(|t| t.version());
        let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        committed.0 = version;
        for mark in marks {
            committed.1.insert(mark.app_id.clone(), mark.version);
        }
    }

    /// Fails early, with a hint, when the input has columns the table lacks
    /// and schema evolution was not asked for.
    fn check_schema(&self, table: &DeltaTable, input: &DataFrame) -> Result<()> {
        if self.config.merge_schema || self.config.overwrite_schema {
            return Ok(());
        }
        let schema = table.snapshot()?.schema();
        let extra: Vec<&str> = input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|name| schema.field(name).is_none())
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::Rejected(format!(
            "the input has columns the Delta table at \"{}\" does not: {}. Help: set mergeSchema: true to add them{}",
            self.path(),
            extra.join(", "),
            if self.save_mode == SaveMode::Overwrite {
                ", or overwriteSchema: true to replace the schema"
            } else {
                ""
            }
        )))
    }

    /// Whether `table` already holds this run's batch (see [`holds_batch`]).
    async fn holds_batch(&self, table: &DeltaTable, ctx: &WriteContext) -> Result<bool> {
        let starts: HashMap<&str, i64> = ctx
            .starts
            .iter()
            .map(|m| (m.app_id.as_str(), m.version))
            .collect();
        let state = table.snapshot()?;
        let mut ranges = Vec::new();
        for mark in &ctx.marks {
            let start = starts.get(mark.app_id.as_str()).copied();
            if start == Some(mark.version) {
                continue; // nothing read for this key
            }
            let recorded = state
                .transaction_version(table.log_store().as_ref(), &mark.app_id)
                .await?;
            ranges.push(KeyRange {
                app_id: &mark.app_id,
                start,
                end: mark.version,
                recorded,
            });
        }
        holds_batch(self.path(), &ranges)
    }

    /// Writes `input` as saveMode says: skips a batch the table already
    /// holds, merges into an existing table, or writes a new version.
    async fn write_table(&self, input: DataFrame, ctx: WriteContext) -> Result<SinkReport> {
        let existing = self.latest().await?;
        if let Some(table) = &existing {
            if !ctx.marks.is_empty()
                && !self.continues_last_commit(table, &ctx)
                && self.holds_batch(table, &ctx).await?
            {
                return self.skip_held_batch(table, ctx).await;
            }
        }
        let update = self.update_merge(&ctx);
        if let (Some(merge), Some(table)) = (update.as_ref().or(self.merge.as_ref()), &existing) {
            self.check_schema(table, &input)?;
            return merge
                .merge(table, input, ctx, self.config.merge_schema)
                .await;
        }
        let save_mode = match &ctx.rewrite {
            Some(Rewrite::Overwrite) => SaveMode::Overwrite,
            Some(Rewrite::Merge(_)) => SaveMode::Merge,
            None => self.save_mode,
        };
        let mode = match (save_mode, &existing) {
            (SaveMode::ErrorIfExists, Some(_)) => return Err(self.exists_error()),
            (SaveMode::Ignore, Some(table)) => return skip_existing(table, ctx).await,
            // Nothing to merge into yet: the first run creates the table.
            (SaveMode::Merge, _) => DeltaSaveMode::ErrorIfExists,
            (SaveMode::Append, _) => DeltaSaveMode::Append,
            (SaveMode::Overwrite, _) => DeltaSaveMode::Overwrite,
            (SaveMode::ErrorIfExists | SaveMode::Ignore, None) => DeltaSaveMode::ErrorIfExists,
        };
        let input = match &self.merge {
            Some(merge) => merge.first_write(input).await?,
            None => input,
        };
        let table = match existing {
            Some(table) => {
                self.check_schema(&table, &input)?;
                table
            }
            None => table_at(&self.storage, self.path())?,
        };
        self.write_version(table, input, mode, ctx).await
    }

    /// `outputMode` update's merge on the group keys, if the rows are that.
    fn update_merge(&self, ctx: &WriteContext) -> Option<Merge> {
        let Some(Rewrite::Merge(keys)) = &ctx.rewrite else {
            return None;
        };
        Some(Merge {
            keys: keys.clone(),
            sequence_by: None,
            delete_condition: None,
            update_condition: None,
            keep_history: false,
            path: self.config.path.clone(),
            storage: self.storage.clone(),
        })
    }

    /// Skips a batch the table already holds (see [`holds_batch`]).
    async fn skip_held_batch(&self, table: &DeltaTable, ctx: WriteContext) -> Result<SinkReport> {
        let version = table.version().unwrap_or_default();
        tracing::info!(
            "Delta table at \"{}\" already holds this batch (recorded at version {version} or earlier); skipping it",
            self.path()
        );
        skipped(
            ctx,
            format!("skipped: delta version {version} already holds this batch"),
        )
        .await
    }

    /// saveMode errorIfExists, with a table there.
    fn exists_error(&self) -> ConnectorError {
        ConnectorError::Rejected(format!(
            "a Delta table already exists at \"{}\" (saveMode errorIfExists). Help: set saveMode to append, overwrite, merge or ignore",
            self.path()
        ))
    }

    /// Writes `input` as a new version of `table` (delta-rs's
    /// `WriteBuilder`), committed through the run's gate with its marks.
    async fn write_version(
        &self,
        table: DeltaTable,
        input: DataFrame,
        mode: DeltaSaveMode,
        ctx: WriteContext,
    ) -> Result<SinkReport> {
        let snapshot = table.snapshot().ok().map(|s| s.snapshot().clone());
        let log_store = GatedLogStore::wrap(table.log_store(), ctx.gate);
        let (state, plan) = input.into_parts();
        let builder = WriteBuilder::new(log_store, snapshot)
            .with_input_plan(plan)
            .with_session_state(Arc::new(state))
            .with_save_mode(mode)
            .with_writer_properties(writer_properties())
            .with_commit_properties(commit_properties(&ctx.marks));
        let written = self.with_layout(builder).await?;
        report(&written).await
    }

    /// Applies `partitionBy`, schema evolution and `targetFileSize`.
    fn with_layout(&self, mut builder: WriteBuilder) -> WriteBuilder {
        if !self.config.partition_by.is_empty() {
            builder = builder.with_partition_columns(self.config.partition_by.clone());
        }
        if let Some(interval) = self.config.checkpoint_interval {
            builder = builder.with_configuration([(
                "delta.checkpointInterval".to_string(),
                Some(interval.to_string()),
            )]);
        }
        if self.config.merge_schema {
            builder = builder.with_schema_mode(SchemaMode::Merge);
        } else if self.config.overwrite_schema {
            builder = builder.with_schema_mode(SchemaMode::Overwrite);
        }
        if let Some(size) = self
            .config
            .target_file_size
            .and_then(std::num::NonZeroU64::new)
        {
            builder = builder.with_target_file_size(Some(size));
        }
        builder
    }
}

/// One source key's part of a batch, and what a table recorded for it.
#[derive(Debug, Clone, Copy)]
struct KeyRange<'a> {
    /// The key's mark app id.
    app_id: &'a str,
    /// The batch reads after this position (from the beginning when absent).
    start: Option<i64>,
    /// ... up to this one.
    end: i64,
    /// The table's `txn` version for the app id, if any.
    recorded: Option<i64>,
}

/// Whether the Delta table at `path` already holds a batch, decided from the
/// table's own `txn` versions: a run that stopped between the commits of
/// two sinks is replayed from the lowest position any sink recorded, and
/// the sinks that committed it already must not write it twice.
///
/// Per source key the batch reads from its start up to its mark: the
/// table holds it when its recorded version reaches the mark, and lacks
/// it when the version is absent or at most the start. Anything else (a
/// version inside the range, or some keys held and others not) means the
/// table holds part of the batch: an error, rather than duplicates.
fn holds_batch(path: &str, ranges: &[KeyRange]) -> Result<bool> {
    let (mut held, mut lacking) = (Vec::new(), Vec::new());
    for range in ranges {
        match range.recorded {
            Some(version) if version >= range.end => held.push(range.app_id),
            None => lacking.push(range.app_id),
            Some(version) if range.start.is_some_and(|start| version <= start) => {
                lacking.push(range.app_id)
            }
            Some(version) => {
                let read = match range.start {
                    Some(start) => format!("{start}..{}", range.end),
                    None => format!("..{}", range.end),
                };
                return Err(ConnectorError::Rejected(format!(
                    "the Delta table at \"{path}\" holds part of this batch: it recorded {} up to {version}, the batch reads {read}. Nothing was written (writing would duplicate rows). Help: its sinks must commit the same batches; check for another pipeline or run writing the same app id",
                    range.app_id
                )));
            }
        }
    }
    if !held.is_empty() && !lacking.is_empty() {
        return Err(ConnectorError::Rejected(format!(
            "the Delta table at \"{path}\" holds this batch for {} but not for {}. Nothing was written (writing would duplicate rows). Help: its sinks must commit the same batches",
            held.join(", "),
            lacking.join(", ")
        )));
    }
    Ok(!held.is_empty())
}

/// The error for a column of `data_type`, which Delta cannot hold.
fn unsupported_column(name: &str, data_type: &DataType) -> String {
    let hint = match data_type {
        DataType::Time32(_) | DataType::Time64(_) => format!(
            "CAST({} AS VARCHAR), or a timestamp on a fixed day, e.g. \
             CAST('1970-01-01 ' || CAST({0} AS VARCHAR) AS TIMESTAMP) as Spark writes TIME columns",
            quote(name)
        ),
        _ => format!("CAST({} AS VARCHAR)", quote(name)),
    };
    format!(
        "column \"{name}\" has type {data_type}, which a Delta table cannot hold. \
         Help: convert it in a sql step before this load, e.g. {hint}"
    )
}

/// How data files are written.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

/// Double-quotes an identifier for delta-rs's SQL expressions.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A write that leaves the table as it is: the run's commit may go ahead,
/// and the summary says why nothing was written.
async fn skipped(ctx: WriteContext, detail: String) -> Result<SinkReport> {
    ctx.gate.ready().await?;
    Ok(SinkReport {
        detail,
        ..Default::default()
    })
}

/// saveMode ignore, with a table there.
async fn skip_existing(table: &DeltaTable, ctx: WriteContext) -> Result<SinkReport> {
    let version = table.version().unwrap_or_default();
    skipped(
        ctx,
        format!("skipped: table exists at version {version} (saveMode ignore)"),
    )
    .await
}

/// Commit properties recording the run's marks as Delta transactions.
fn commit_properties(marks: &[Mark]) -> CommitProperties {
    CommitProperties::default().with_application_transactions(
        marks
            .iter()
            .map(|m| Transaction::new(&m.app_id, m.version))
            .collect(),
    )
}

/// Records `marks` in a commit of their own, holding no data: a batch whose
/// merge changed nothing (delta-rs then makes no commit) still moves the
/// table's positions, as every batch must.
async fn commit_positions(
    table: &DeltaTable,
    gate: CommitGate,
    marks: &[Mark],
) -> Result<DeltaTable> {
    let log_store = GatedLogStore::wrap(table.log_store(), gate);
    let operation = DeltaOperation::Write {
        mode: DeltaSaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    CommitBuilder::from(commit_properties(marks))
        .build(Some(table.snapshot()?), log_store, operation)
        .await?;
    let mut after = table.clone();
    after.update_incremental(None).await?;
    Ok(after)
}

/// The summary of a MERGE from delta-rs's metrics: the rows inserted,
/// updated and deleted, and the bytes of the files it added (those in
/// `after` but not in `before`).
fn merge_report(
    before: &DeltaTable,
    after: &DeltaTable,
    metrics: &MergeMetrics,
) -> Result<SinkReport> {
    let existing: HashSet<String> = before
        .snapshot()?
        .log_data()
        .iter()
        .map(|file| file.path().into_owned())
        .collect();
    let bytes = after
        .snapshot()?
        .log_data()
        .iter()
        .filter(|file| !existing.contains(file.path().as_ref()))
        .map(|file| u64::try_from(file.size()).unwrap_or(0))
        .sum();
    let version = after.version().unwrap_or_default();
    let (ins, upd, del) = (
        metrics.num_target_rows_inserted as u64,
        metrics.num_target_rows_updated as u64,
        metrics.num_target_rows_deleted as u64,
    );
    Ok(SinkReport {
        rows: ins + upd + del,
        bytes,
        detail: format!("delta version {version}: {ins} inserted, {upd} updated, {del} deleted"),
    })
}

/// The summary of the write that produced `table`'s current version, read
/// from its commit (delta-rs's `WriteBuilder` returns no metrics).
async fn report(table: &DeltaTable) -> Result<SinkReport> {
    let version = table.version().unwrap_or_default();
    let Some(entry) = table.log_store().read_commit_entry(version).await? else {
        return Ok(SinkReport::default());
    };
    let (mut metrics, mut bytes, mut stats_rows) = (serde_json::Value::Null, 0u64, 0u64);
    for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let action: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| ConnectorError::Rejected(e.to_string()))?;
        if let Some(add) = action.get("add") {
            bytes += add["size"].as_u64().unwrap_or(0);
            let stats: Option<serde_json::Value> = add["stats"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok());
            stats_rows += stats.and_then(|s| s["numRecords"].as_u64()).unwrap_or(0);
        }
        if let Some(m) = action.pointer("/commitInfo/operationMetrics") {
            metrics = m.clone();
        }
    }
    Ok(SinkReport {
        rows: metrics["num_added_rows"].as_u64().unwrap_or(stats_rows),
        bytes,
        detail: format!("delta version {version}"),
    })
}

#[async_trait]
impl Sink for DeltaSink {
    async fn write(&self, input: DataFrame, ctx: WriteContext) -> Result<SinkReport, BoxError> {
        let marks = ctx.marks.clone();
        let report = self.write_table(input, ctx).await?;
        if self.upkeep.optimize.is_some() || self.upkeep.vacuum.is_some() {
            if let Some(table) = self.latest().await? {
                let version = table.version().unwrap_or_default();
                self.upkeep
                    .after_commit(
                        &self.storage,
                        self.path(),
                        version,
                        self.config.target_file_size,
                    )
                    .await;
            }
        }
        self.record_commit(&marks).await;
        Ok(report)
    }

    /// Every column must convert to a Delta type the way delta-rs converts
    /// it when writing (after its own normalization, e.g. of string views).
    fn check_input(&self, input: &LoadInput<'_>) -> std::result::Result<(), InputError> {
        let schema = input.schema;
        if let Some(merge) = &self.merge {
            merge.check_input(input)?;
        }
        if let (Some(rewrite), Some(mode)) = (&input.rewrite, self.config.save_mode) {
            if mode != SaveMode::Append {
                let writes = match rewrite {
                    Rewrite::Merge(_) => "merges the changed groups on their keys",
                    Rewrite::Overwrite => "overwrites the table with the whole result",
                };
                return Err(InputError::at(
                    "saveMode",
                    format!("the streaming aggregation's outputMode already says how rows are written (it {writes}); remove saveMode"),
                ));
            }
        }
        let normalized = normalize_for_delta(&Arc::new(schema.clone()));
        for field in normalized.fields() {
            let single = Arc::new(Schema::new(vec![field.clone()]));
            let converted: std::result::Result<StructType, _> = single.try_into_kernel();
            if converted.is_err() {
                return Err(unsupported_column(field.name(), field.data_type()).into());
            }
        }
        Ok(())
    }

    async fn recorded_marks(
        &self,
        app_ids: &[String],
    ) -> Result<Option<HashMap<String, i64>>, BoxError> {
        let mut recorded = HashMap::new();
        if let Some(table) = open_existing(&self.storage, self.path(), None).await? {
            let state = table.snapshot()?;
            for app_id in app_ids {
                if let Some(version) = state
                    .transaction_version(table.log_store().as_ref(), app_id)
                    .await?
                {
                    recorded.insert(app_id.clone(), version);
                }
            }
        }
        Ok(Some(recorded))
    }
}

/// Appends `batch` to the Delta table at `path`, creating it if needed: for
/// side outputs such as a dead-letter table.
pub(crate) async fn append(storage: &StorageOptions, path: &str, batch: RecordBatch) -> Result<()> {
    if !path.contains("://") {
        std::fs::create_dir_all(path).map_err(crate::error::io(format!("creating {path}")))?;
    }
    let mut table = table_at(storage, path)?;
    match table.load().await {
        Ok(()) | Err(deltalake::DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(e.into()),
    }
    table
        .write(vec![batch])
        .with_save_mode(DeltaSaveMode::Append)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(app_id: &str, start: Option<i64>, end: i64, recorded: Option<i64>) -> KeyRange<'_> {
        KeyRange {
            app_id,
            start,
            end,
            recorded,
        }
    }

    fn rejected(result: Result<bool>) -> String {
        match result {
            Err(ConnectorError::Rejected(message)) => message,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_recorded_up_to_its_marks_is_held() {
        let ranges = [
            range("p/0", Some(10), 20, Some(20)),
            range("p/1", None, 5, Some(7)),
        ];
        assert!(holds_batch("t", &ranges).unwrap());
    }

    #[test]
    fn a_batch_recorded_nowhere_or_up_to_its_start_is_not_held() {
        let ranges = [
            range("p/0", Some(10), 20, Some(10)),
            range("p/1", Some(3), 8, Some(1)),
            range("p/2", None, 5, None),
        ];
        assert!(!holds_batch("t", &ranges).unwrap());
        assert!(!holds_batch("t", &[]).unwrap());
    }

    #[test]
    fn a_version_inside_the_range_is_a_partial_batch() {
        let ranges = [range("p/0", Some(10), 20, Some(15))];
        let message = rejected(holds_batch("t", &ranges));
        assert!(
            message.contains("recorded p/0 up to 15, the batch reads 10..20"),
            "{message}"
        );
        let from_start = [range("p/0", None, 20, Some(15))];
        let message = rejected(holds_batch("t", &from_start));
        assert!(message.contains("the batch reads ..20"), "{message}");
    }

    #[test]
    fn some_keys_held_and_others_not_is_a_partial_batch() {
        let ranges = [
            range("p/0", Some(10), 20, Some(20)),
            range("p/1", Some(10), 20, Some(10)),
        ];
        let message = rejected(holds_batch("t", &ranges));
        assert!(
            message.contains("holds this batch for p/0 but not for p/1"),
            "{message}"
        );
    }
}
