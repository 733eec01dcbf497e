//! The built-in transform methods: SQL and the small operators that the
//! Spark app offered (`filterRows`, `selectColumns`, ...).

use std::collections::BTreeMap;

use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::logical_expr::{col, Expr, Partitioning};
use serde::Deserialize;

use crate::cache::StorageLevel;
use crate::error::{Error, Result};
use crate::spec::StepInfo;

/// Every transform method this engine knows, for error messages.
pub const METHODS: &[&str] = &[
    "sql",
    "filterRows",
    "selectColumns",
    "dropColumns",
    "renameColumns",
    "deduplicate",
    "repartition",
    "coalesce",
    "cache",
];

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
#[serde(deny_unknown_fields)]
struct DeduplicateConfig {
    /// Key columns; all columns when absent.
    #[serde(default)]
    columns: Vec<String>,
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

/// What a transform step produces: a relation, possibly asking to be cached.
pub(crate) struct Transformed {
    pub frame: DataFrame,
    pub cache: Option<StorageLevel>,
}

/// Applies transform `info.method` to `input` (`None` when no step precedes
/// it and it names no input; only `sql` can do without one).
pub(crate) async fn apply(
    ctx: &SessionContext,
    info: &StepInfo,
    input: Option<DataFrame>,
) -> Result<Transformed> {
    let plan_err = |key: &str, source: DataFusionError| Error::Plan {
        step: info.step.clone(),
        path: info.key_path(key),
        source,
    };
    let plain = |frame| Ok(Transformed { frame, cache: None });
    if info.step.method == "sql" {
        let cfg: SqlConfig = info.parse()?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = ctx
            .sql_with_options(&cfg.query, options)
            .await
            .map_err(|e| plan_err("query", e))?;
        return plain(frame);
    }
    if !METHODS.contains(&info.step.method.as_str()) {
        return Err(Error::config(
            format!("steps[{}].method", info.step.index),
            Some(info.step.clone()),
            format!(
                "unknown transform method \"{}\"; known: {}",
                info.step.method,
                METHODS.join(", ")
            ),
        ));
    }
    let Some(input) = input else {
        return Err(Error::config(
            format!("steps[{}].input", info.step.index),
            Some(info.step.clone()),
            "this step has no input: no step precedes it; name one with \"input\"",
        ));
    };
    match info.step.method.as_str() {
        "filterRows" => {
            let cfg: FilterConfig = info.parse()?;
            let expr = input
                .parse_sql_expr(&cfg.condition)
                .map_err(|e| plan_err("condition", e))?;
            plain(input.filter(expr).map_err(|e| plan_err("condition", e))?)
        }
        "selectColumns" => {
            let cfg: ColumnsConfig = info.parse()?;
            non_empty(info, &cfg.columns)?;
            let exprs = cfg
                .columns
                .iter()
                .map(|c| input.parse_sql_expr(c))
                .collect::<Result<Vec<Expr>, _>>()
                .map_err(|e| plan_err("columns", e))?;
            plain(input.select(exprs).map_err(|e| plan_err("columns", e))?)
        }
        "dropColumns" => {
            let cfg: ColumnsConfig = info.parse()?;
            non_empty(info, &cfg.columns)?;
            check_columns_exist(info, &input, &cfg.columns, "columns")?;
            let names: Vec<&str> = cfg.columns.iter().map(String::as_str).collect();
            plain(
                input
                    .drop_columns(&names)
                    .map_err(|e| plan_err("columns", e))?,
            )
        }
        "renameColumns" => {
            let cfg: RenameConfig = info.parse()?;
            let old: Vec<String> = cfg.mapping.keys().cloned().collect();
            check_columns_exist(info, &input, &old, "mapping")?;
            let mut frame = input;
            for (from, to) in &cfg.mapping {
                frame = frame
                    .with_column_renamed(from, to)
                    .map_err(|e| plan_err("mapping", e))?;
            }
            plain(frame)
        }
        "deduplicate" => {
            let cfg: DeduplicateConfig = info.parse()?;
            if cfg.columns.is_empty() {
                return plain(input.distinct().map_err(|e| plan_err("columns", e))?);
            }
            check_columns_exist(info, &input, &cfg.columns, "columns")?;
            let on = cfg
                .columns
                .iter()
                .map(|c| col(Column::from_name(c)))
                .collect();
            let all = input.schema().columns().into_iter().map(col).collect();
            plain(
                input
                    .distinct_on(on, all, None)
                    .map_err(|e| plan_err("columns", e))?,
            )
        }
        "repartition" => {
            let cfg: RepartitionConfig = info.parse()?;
            positive(info, cfg.num_partitions)?;
            let partitioning = if cfg.columns.is_empty() {
                Partitioning::RoundRobinBatch(cfg.num_partitions)
            } else {
                check_columns_exist(info, &input, &cfg.columns, "columns")?;
                let exprs = cfg
                    .columns
                    .iter()
                    .map(|c| col(Column::from_name(c)))
                    .collect();
                Partitioning::Hash(exprs, cfg.num_partitions)
            };
            plain(
                input
                    .repartition(partitioning)
                    .map_err(|e| plan_err("numPartitions", e))?,
            )
        }
        "coalesce" => {
            let cfg: CoalesceConfig = info.parse()?;
            positive(info, cfg.num_partitions)?;
            let frame = input
                .repartition(Partitioning::RoundRobinBatch(cfg.num_partitions))
                .map_err(|e| plan_err("numPartitions", e))?;
            plain(frame)
        }
        "cache" => {
            let cfg: CacheConfig = info.parse()?;
            Ok(Transformed {
                frame: input,
                cache: Some(cfg.storage_level),
            })
        }
        _ => unreachable!("checked against METHODS above"),
    }
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
