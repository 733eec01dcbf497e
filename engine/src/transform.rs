//! The built-in transform methods: SQL and the small operators that the
//! Spark app offered (`filterRows`, `selectColumns`, ...).

use std::collections::BTreeMap;

use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::logical_expr::{col, Expr, Partitioning};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::spec::StorageLevel;
use crate::spec::{parse_duration, Mode, StepInfo, StepKind};
use crate::window::rewrite_windows;
use datafusion::arrow::datatypes::DataType;
use datafusion::sql::parser::Statement as DFStatement;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlConfig {
    /// A single SELECT (or WITH ... SELECT) over registered names.
    query: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfig {
    /// A SQL boolean expression, e.g. `amount > 0 AND status = 'paid'`.
    condition: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnsConfig {
    columns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeduplicateConfig {
    /// Key columns; all columns when absent.
    #[serde(default)]
    columns: Vec<String>,
    /// In a stream, forget a key once the watermark passes its first row's
    /// event time plus the delay (Spark's `dropDuplicatesWithinWatermark`).
    #[serde(default)]
    within_watermark: bool,
}

/// Name of the `deduplicate` method.
pub(crate) const DEDUPLICATE: &str = "deduplicate";

/// A `deduplicate` step's settings.
pub(crate) struct Dedup {
    /// The key columns (every column of the input when none are named).
    pub keys: Vec<String>,
    /// Whether keys are kept only within the watermark's delay.
    pub within_watermark: bool,
}

/// The settings of `deduplicate` step `info` over `input`.
pub(crate) fn dedup(info: &StepInfo, input: &DataFrame) -> Result<Dedup> {
    let cfg: DeduplicateConfig = info.parse()?;
    let keys = if cfg.columns.is_empty() {
        input
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    } else {
        cfg.columns
    };
    Ok(Dedup {
        keys,
        within_watermark: cfg.within_watermark,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameConfig {
    mapping: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RepartitionConfig {
    num_partitions: usize,
    /// Hash-partition on these columns; round-robin when absent.
    #[serde(default)]
    columns: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CoalesceConfig {
    num_partitions: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CacheConfig {
    #[serde(default)]
    storage_level: StorageLevel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WatermarkConfig {
    /// The event-time column (a timestamp).
    column: String,
    /// How late an event may come, e.g. `"10 minutes"`.
    delay: String,
    /// A Delta table receiving the rows behind the watermark (streaming).
    late_data_path: Option<String>,
}

/// Name of the `withWatermark` method.
pub(crate) const WITH_WATERMARK: &str = "withWatermark";
/// The load method writing a watermark's late rows (`lateDataPath`).
const LATE_DATA_METHOD: &str = "toDeltaLake";
/// The column telling why a row is in `lateDataPath`.
pub(crate) const LATE_REASON: &str = "_late_reason";

/// A `withWatermark` step's settings (Spark's `withWatermark(column, delay)`).
#[derive(Debug, Clone)]
pub(crate) struct Watermark {
    /// The event-time column.
    pub column: String,
    /// The watermark is the greatest event time seen less this.
    pub delay: std::time::Duration,
}

/// The settings of `withWatermark` step `info`.
pub(crate) fn watermark(info: &StepInfo) -> Result<Watermark> {
    let cfg: WatermarkConfig = info.parse()?;
    let delay = parse_duration(&cfg.delay).ok_or_else(|| {
        info.error(
            "delay",
            format!("\"{}\" is not a duration such as \"10 minutes\"", cfg.delay),
        )
    })?;
    Ok(Watermark {
        column: cfg.column,
        delay,
    })
}

/// The load writing the late rows of `withWatermark` step `info` to its
/// `lateDataPath`, in a streaming pipeline.
pub(crate) fn late_data_load(info: &StepInfo) -> Result<Option<StepInfo>> {
    if info.step.method != WITH_WATERMARK || info.mode != Mode::Streaming {
        return Ok(None);
    }
    let cfg: WatermarkConfig = info.parse()?;
    let Some(path) = cfg.late_data_path else {
        return Ok(None);
    };
    let mut load = info.clone();
    load.kind = StepKind::Load;
    load.step.method = LATE_DATA_METHOD.to_string();
    load.step.name = Some(format!(
        "lateData of {}",
        info.step.name.as_deref().unwrap_or(WITH_WATERMARK)
    ));
    load.config =
        serde_json::Map::from_iter([("path".to_string(), serde_json::Value::String(path))]);
    Ok(Some(load))
}

/// What a transform step produces: a relation, possibly asking to be cached.
pub(crate) struct Transformed {
    pub frame: DataFrame,
    pub cache: Option<StorageLevel>,
}

/// How a transform method derives its relation.
#[derive(Clone, Copy)]
enum Method {
    /// From a SQL query over the registered relations: needs no input.
    Query,
    /// From its input relation.
    Unary(fn(&StepInfo, DataFrame) -> Result<Transformed>),
}

/// Every transform method, by name, in the order error messages list them.
const TRANSFORMS: [(&str, Method); 10] = [
    ("sql", Method::Query),
    ("filterRows", Method::Unary(filter_rows)),
    ("selectColumns", Method::Unary(select_columns)),
    ("dropColumns", Method::Unary(drop_columns)),
    ("renameColumns", Method::Unary(rename_columns)),
    (DEDUPLICATE, Method::Unary(deduplicate)),
    ("repartition", Method::Unary(repartition)),
    ("coalesce", Method::Unary(coalesce)),
    ("cache", Method::Unary(cache)),
    (WITH_WATERMARK, Method::Unary(with_watermark)),
];

/// Applies transform `info.method` to `input` (`None` when no step precedes
/// it and it names no input; only `sql` can do without one).
pub(crate) async fn apply(
    ctx: &SessionContext,
    info: &StepInfo,
    input: Option<DataFrame>,
) -> Result<Transformed> {
    let method = TRANSFORMS
        .iter()
        .find(|(name, _)| *name == info.step.method)
        .map(|(_, method)| *method)
        .ok_or_else(|| unknown_method(info))?;
    let unary = match method {
        Method::Query => return sql(ctx, info).await,
        Method::Unary(unary) => unary,
    };
    let Some(input) = input else {
        return Err(Error::config(
            format!("steps[{}].input", info.step.index),
            Some(info.step.clone()),
            "this step has no input: no step precedes it; name one with \"input\"",
        ));
    };
    unary(info, input)
}

fn unknown_method(info: &StepInfo) -> Error {
    let known: Vec<&str> = TRANSFORMS.iter().map(|(name, _)| *name).collect();
    Error::config(
        format!("steps[{}].method", info.step.index),
        Some(info.step.clone()),
        format!(
            "unknown transform method \"{}\"; known: {}",
            info.step.method,
            known.join(", ")
        ),
    )
}

/// A planning error about `key` of `info`'s config.
fn plan_err<'a>(info: &'a StepInfo, key: &'a str) -> impl Fn(DataFusionError) -> Error + 'a {
    move |source| Error::Plan {
        step: info.step.clone(),
        path: info.key_path(key),
        source,
    }
}

/// A relation that asks for no cache.
fn plain(frame: DataFrame) -> Result<Transformed> {
    Ok(Transformed { frame, cache: None })
}

/// `sql`: a single query over the registered relations.
async fn sql(ctx: &SessionContext, info: &StepInfo) -> Result<Transformed> {
    let cfg: SqlConfig = info.parse()?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    plain(
        plan_sql(ctx, &cfg.query, options)
            .await
            .map_err(plan_err(info, "query"))?,
    )
}

/// Plans `query` with Spark's event-time windows (see [`rewrite_windows`]).
async fn plan_sql(
    ctx: &SessionContext,
    query: &str,
    options: SQLOptions,
) -> datafusion::error::Result<DataFrame> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(query, &dialect)?;
    if let DFStatement::Statement(inner) = &mut statement {
        rewrite_windows(inner)?;
    }
    let plan = state.statement_to_plan(statement).await?;
    options.verify_plan(&plan)?;
    ctx.execute_logical_plan(plan).await
}

/// `filterRows`: the rows matching a SQL condition.
fn filter_rows(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: FilterConfig = info.parse()?;
    let expr = input
        .parse_sql_expr(&cfg.condition)
        .map_err(plan_err(info, "condition"))?;
    plain(input.filter(expr).map_err(plan_err(info, "condition"))?)
}

/// `selectColumns`: SQL expressions over the input's columns.
fn select_columns(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: ColumnsConfig = info.parse()?;
    non_empty(info, &cfg.columns)?;
    let exprs = cfg
        .columns
        .iter()
        .map(|c| input.parse_sql_expr(c))
        .collect::<Result<Vec<Expr>, _>>()
        .map_err(plan_err(info, "columns"))?;
    plain(input.select(exprs).map_err(plan_err(info, "columns"))?)
}

/// `dropColumns`: the input without some columns.
fn drop_columns(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: ColumnsConfig = info.parse()?;
    non_empty(info, &cfg.columns)?;
    check_columns_exist(info, &input, &cfg.columns, "columns")?;
    let names: Vec<&str> = cfg.columns.iter().map(String::as_str).collect();
    plain(
        input
            .drop_columns(&names)
            .map_err(plan_err(info, "columns"))?,
    )
}

/// `renameColumns`: old name → new name.
fn rename_columns(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: RenameConfig = info.parse()?;
    let old: Vec<String> = cfg.mapping.keys().cloned().collect();
    check_columns_exist(info, &input, &old, "mapping")?;
    let mut frame = input;
    for (from, to) in &cfg.mapping {
        frame = frame
            .with_column_renamed(from, to)
            .map_err(plan_err(info, "mapping"))?;
    }
    plain(frame)
}

/// `deduplicate`: one row per distinct key (all columns when none given);
/// a stream keeps the keys across micro-batches (see `state::dedup`).
fn deduplicate(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: DeduplicateConfig = info.parse()?;
    if cfg.columns.is_empty() {
        return plain(input.distinct().map_err(plan_err(info, "columns"))?);
    }
    check_columns_exist(info, &input, &cfg.columns, "columns")?;
    let on = column_exprs(&cfg.columns);
    let all = input.schema().columns().into_iter().map(col).collect();
    plain(
        input
            .distinct_on(on, all, None)
            .map_err(plan_err(info, "columns"))?,
    )
}

/// `repartition`: hash-partitioned on columns, else round-robin.
fn repartition(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: RepartitionConfig = info.parse()?;
    positive(info, cfg.num_partitions)?;
    let partitioning = if cfg.columns.is_empty() {
        Partitioning::RoundRobinBatch(cfg.num_partitions)
    } else {
        check_columns_exist(info, &input, &cfg.columns, "columns")?;
        Partitioning::Hash(column_exprs(&cfg.columns), cfg.num_partitions)
    };
    plain(
        input
            .repartition(partitioning)
            .map_err(plan_err(info, "numPartitions"))?,
    )
}

/// `coalesce`: fewer partitions, round-robin.
fn coalesce(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: CoalesceConfig = info.parse()?;
    positive(info, cfg.num_partitions)?;
    let frame = input
        .repartition(Partitioning::RoundRobinBatch(cfg.num_partitions))
        .map_err(plan_err(info, "numPartitions"))?;
    plain(frame)
}

/// `cache`: the input, cached at a storage level.
fn cache(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let cfg: CacheConfig = info.parse()?;
    Ok(Transformed {
        frame: input,
        cache: Some(cfg.storage_level),
    })
}

/// `withWatermark`: the input; a stream sets the rows behind the watermark
/// apart when a stateful operator reads them (see `state::event_time`).
fn with_watermark(info: &StepInfo, input: DataFrame) -> Result<Transformed> {
    let watermark = watermark(info)?;
    check_columns_exist(
        info,
        &input,
        std::slice::from_ref(&watermark.column),
        "column",
    )?;
    let field = input
        .schema()
        .field_with_unqualified_name(&watermark.column)
        .map_err(plan_err(info, "column"))?;
    if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
        return Err(info.error(
            "column",
            format!(
                "the event-time column {} is {}, not a timestamp. Help: CAST it AS TIMESTAMP in an earlier step",
                watermark.column,
                field.data_type()
            ),
        ));
    }
    plain(input)
}

/// Column references by exact name.
fn column_exprs(columns: &[String]) -> Vec<Expr> {
    columns.iter().map(|c| col(Column::from_name(c))).collect()
}

fn non_empty(info: &StepInfo, columns: &[String]) -> Result<()> {
    if columns.is_empty() {
        return Err(info.error("columns", "list at least one column"));
    }
    Ok(())
}

fn positive(info: &StepInfo, n: usize) -> Result<()> {
    if n == 0 {
        return Err(info.error("numPartitions", "must be at least 1"));
    }
    Ok(())
}

fn check_columns_exist(
    info: &StepInfo,
    input: &DataFrame,
    columns: &[String],
    key: &str,
) -> Result<()> {
    let fields = input.schema().fields();
    let missing: Vec<&str> = columns
        .iter()
        .filter(|c| !fields.iter().any(|f| f.name() == *c))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let available: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
    Err(info.error(
        key,
        format!(
            "no such column: {}; the input has: {}",
            missing.join(", "),
            available.join(", ")
        ),
    ))
}
