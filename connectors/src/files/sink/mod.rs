//! `toFiles`: writes into a hidden staging place beside the target and
//! moves the files into place only after the commit gate opens (see
//! [`local`] and [`remote`] for how, and what a reader sees meanwhile).

mod deferred;
mod local;
mod remote;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use dataflow_engine::commit::{CommitAbandoned, CommitGate};
use dataflow_engine::connector::{BoxError, InputError, LoadInput, Sink, SinkReport, WriteContext};
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::common::config::{
    ConfigNonZeroUsize, CsvOptions, JsonOptions, TableParquetOptions,
};
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::logical_expr::{LogicalPlan, Partitioning};
use serde::Deserialize;
use url::Url;

use super::{Format, TextCompression};
use crate::error::{io, ConnectorError, Result};
use crate::save_mode::SaveMode;
use crate::storage::{check_path, is_local, url_of};
use remote::Remote;

/// Parquet compression codecs for `toFiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ParquetCompression {
    Snappy,
    Zstd,
    Gzip,
    Lz4,
    Brotli,
    None,
}

impl ParquetCompression {
    fn setting(self) -> &'static str {
        match self {
            ParquetCompression::Snappy => "snappy",
            ParquetCompression::Zstd => "zstd(3)",
            ParquetCompression::Gzip => "gzip(6)",
            ParquetCompression::Lz4 => "lz4_raw",
            ParquetCompression::Brotli => "brotli(4)",
            ParquetCompression::None => "uncompressed",
        }
    }
}

/// `toFiles` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ToFilesConfig {
    /// Output directory.
    path: String,
    /// parquet (default), csv or json.
    #[serde(default = "default_format")]
    format: Format,
    /// parquet: snappy (default), zstd, gzip, lz4, brotli, none;
    /// csv/json: none (default), gzip, bzip2, xz, zstd.
    compression: Option<String>,
    /// Columns written as hive-style `key=value` directories.
    #[serde(default)]
    partition_by: Vec<String>,
    /// errorIfExists (default), overwrite, append or ignore.
    #[serde(default)]
    save_mode: SaveMode,
    /// CSV: write a header line. Default true.
    #[serde(default = "yes")]
    header: bool,
}

fn default_format() -> Format {
    Format::Parquet
}

fn yes() -> bool {
    true
}

/// Where `toFiles` writes.
#[derive(Debug)]
enum Target {
    /// A local directory.
    Local(PathBuf),
    /// A prefix in an object store.
    Remote(Url),
}

/// The `toFiles` sink.
#[derive(Debug)]
struct FileSink {
    config: ToFilesConfig,
    target: Target,
    parquet: Option<ParquetCompression>,
    text: TextCompression,
}

/// Builds a `toFiles` sink from its step config.
pub(crate) fn sink(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Sink>> {
    let config: ToFilesConfig = info.parse()?;
    if config.save_mode == SaveMode::Merge {
        return Err(info.error("saveMode", "merge needs a table format: use toDeltaLake"));
    }
    check_path(info, "path", &config.path)?;
    let (parquet, text) = compression(info, &config)?;
    let target = target(info, &config.path)?;
    Ok(Arc::new(FileSink {
        config,
        target,
        parquet,
        text,
    }))
}

/// The Parquet or CSV/JSON compression `compression` names.
fn compression(
    info: &StepInfo,
    config: &ToFilesConfig,
) -> dataflow_engine::Result<(Option<ParquetCompression>, TextCompression)> {
    let codec = config.compression.clone().map(serde_json::Value::String);
    Ok(match (config.format, codec) {
        (Format::Parquet, None) => (Some(ParquetCompression::Snappy), TextCompression::None),
        (Format::Parquet, Some(c)) => (
            Some(serde_json::from_value(c).map_err(|_| {
                info.error(
                    "compression",
                    "parquet compression is one of snappy, zstd, gzip, lz4, brotli, none",
                )
            })?),
            TextCompression::None,
        ),
        (_, None) => (None, TextCompression::None),
        (_, Some(c)) => (
            None,
            serde_json::from_value(c).map_err(|_| {
                info.error(
                    "compression",
                    "csv/json compression is one of none, gzip, bzip2, xz, zstd",
                )
            })?,
        ),
    })
}

/// The local directory or object-store prefix `path` names.
fn target(info: &StepInfo, path: &str) -> dataflow_engine::Result<Target> {
    let url = url_of(path).map_err(|e| info.error("path", e.to_string()))?;
    if is_local(&url) {
        let local = match path.starts_with("file:") {
            true => url
                .to_file_path()
                .map_err(|()| info.error("path", format!("\"{path}\" is not a local path")))?,
            false => PathBuf::from(path),
        };
        return Ok(Target::Local(local));
    }
    remote::target_key(path, &url).map_err(|m| info.error("path", m))?;
    Ok(Target::Remote(url))
}

impl FileSink {
    fn with_file_count(&self, input: DataFrame) -> Result<DataFrame> {
        if !self.config.partition_by.is_empty() {
            return Ok(input);
        }
        let Some(files) = requested_partitions(&input.clone().into_optimized_plan()?) else {
            return Ok(input);
        };
        let (mut state, plan) = input.into_parts();
        let execution = &mut state.config_mut().options_mut().execution;
        execution.minimum_parallel_output_files = ConfigNonZeroUsize::try_new(files)?;
        execution.soft_max_rows_per_output_file = ConfigNonZeroUsize::try_new(usize::MAX)?;
        Ok(DataFrame::new(state, plan))
    }

    /// Writes `input` as files under `dir` (a directory path or URL ending
    /// in `/`); returns the rows written.
    async fn write_staged(&self, input: DataFrame, dir: &str) -> Result<u64> {
        let input = self.with_file_count(input)?;
        let options =
            DataFrameWriteOptions::new().with_partition_by(self.config.partition_by.clone());
        let counts = match self.config.format {
            Format::Parquet => {
                let mut parquet = TableParquetOptions::default();
                parquet.global.compression = self.parquet.map(|c| c.setting().to_string());
                input.write_parquet(dir, options, Some(parquet)).await?
            }
            Format::Csv => {
                let csv = CsvOptions {
                    has_header: Some(self.config.header),
                    compression: self.text.into(),
                    ..Default::default()
                };
                input.write_csv(dir, options, Some(csv)).await?
            }
            Format::Json => {
                let json = JsonOptions {
                    compression: self.text.into(),
                    ..Default::default()
                };
                input.write_json(dir, options, Some(json)).await?
            }
        };
        Ok(counts
            .iter()
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .map(|a| a.iter().flatten().sum::<u64>())
            })
            .sum())
    }

    /// Stages the files beside the local `target`, then moves them in.
    async fn write_local(
        &self,
        input: DataFrame,
        ctx: WriteContext,
        target: &std::path::Path,
    ) -> Result<(u64, u64)> {
        let staging = local::staging_dir(target);
        let gate = ctx.gate.clone();
        let outcome = until_aborted(&gate, async {
            // DataFusion writes no file for no rows: the (empty) directory
            // is then the output, so a reader sees an empty dataset.
            std::fs::create_dir_all(&staging)
                .map_err(io(format!("creating {}", staging.display())))?;
            let rows = self
                .write_staged(input, &format!("{}/", staging.display()))
                .await?;
            let bytes = local::dir_size(&staging);
            ctx.gate.ready().await?;
            if !local::commit(target, &staging, self.config.save_mode)? {
                return Err(self.exists_error());
            }
            Ok((rows, bytes))
        })
        .await;
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        outcome
    }

    /// Writes the files through a [`remote::Staging`] registered in the
    /// session's `registry`, then makes them visible and writes `_SUCCESS`.
    async fn write_remote(
        &self,
        input: DataFrame,
        ctx: WriteContext,
        target: &Remote,
        registry: Arc<dyn ObjectStoreRegistry>,
    ) -> Result<(u64, u64)> {
        let staging = target.staging();
        registry.register_store(&staging.store_url, staging.store.clone());
        let gate = ctx.gate.clone();
        let outcome = until_aborted(&gate, async {
            let rows = self.write_staged(input, &staging.url).await?;
            let bytes = staging.bytes();
            ctx.gate.ready().await?;
            // Another writer may have created the target meanwhile.
            if self.config.save_mode == SaveMode::ErrorIfExists && target.has_data().await? {
                return Err(self.exists_error());
            }
            target.commit(&staging, self.config.save_mode).await?;
            Ok((rows, bytes))
        })
        .await;
        let _ = registry.deregister_store(&staging.store_url);
        target.discard(&staging).await;
        outcome
    }

    /// With data at the target: the error of saveMode errorIfExists, or
    /// the report of saveMode ignore; `None` when the write goes ahead.
    fn skip_existing(&self, exists: bool) -> Result<Option<SinkReport>> {
        match self.config.save_mode {
            SaveMode::ErrorIfExists if exists => Err(self.exists_error()),
            SaveMode::Ignore if exists => Ok(Some(SinkReport {
                detail: format!("skipped: {} exists (saveMode ignore)", self.config.path),
                ..Default::default()
            })),
            _ => Ok(None),
        }
    }

    fn exists_error(&self) -> ConnectorError {
        ConnectorError::Rejected(format!(
            "{} already exists (saveMode errorIfExists). Help: set saveMode to overwrite, append or ignore",
            self.config.path
        ))
    }
}

/// Runs `work` (staging, then committing) unless the run's commits are
/// aborted first (another load failed, or the run was cancelled): then it
/// is stopped where it is, and the caller discards what it staged.
async fn until_aborted<T>(gate: &CommitGate, work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::select! {
        outcome = work => outcome,
        () = gate.aborted() => Err(CommitAbandoned.into()),
    }
}

/// The partition count of a repartition at the top of `plan` (below
/// projections and aliases).
fn requested_partitions(plan: &LogicalPlan) -> Option<usize> {
    match plan {
        LogicalPlan::Repartition(r) => match &r.partitioning_scheme {
            Partitioning::RoundRobinBatch(n) | Partitioning::Hash(_, n) => Some(*n),
            _ => None,
        },
        LogicalPlan::Projection(p) => requested_partitions(&p.input),
        LogicalPlan::SubqueryAlias(a) => requested_partitions(&a.input),
        _ => None,
    }
}

#[async_trait]
impl Sink for FileSink {
    /// Files are only ever added: the changed or whole results of a
    /// streaming aggregation (outputMode update, complete) cannot replace
    /// earlier ones.
    fn check_input(&self, input: &LoadInput<'_>) -> std::result::Result<(), InputError> {
        match input.rewrite {
            None => Ok(()),
            Some(_) => Err(InputError::from(
                "toFiles only adds files, so it cannot replace the groups a streaming aggregation rewrites (outputMode update or complete). Help: use toDeltaLake, or outputMode append with a watermark".to_string(),
            )),
        }
    }

    async fn write(&self, input: DataFrame, ctx: WriteContext) -> Result<SinkReport, BoxError> {
        let written = match &self.target {
            Target::Local(dir) => match self.skip_existing(local::has_data(dir))? {
                Some(skipped) => return Ok(skipped),
                None => self.write_local(input, ctx, dir).await?,
            },
            Target::Remote(url) => {
                // The store DataFusion writes the staged files with.
                let registry = input.task_ctx().runtime_env().object_store_registry.clone();
                let store = registry.get_store(url)?;
                let remote = Remote::new(&self.config.path, url, store)?;
                match self.skip_existing(remote.has_data().await?)? {
                    Some(skipped) => return Ok(skipped),
                    None => self.write_remote(input, ctx, &remote, registry).await?,
                }
            }
        };
        let (rows, bytes) = written;
        Ok(SinkReport {
            rows,
            bytes,
            detail: format!(
                "{} files in {}",
                &self.config.format.extension()[1..],
                self.config.path
            ),
        })
    }
}
