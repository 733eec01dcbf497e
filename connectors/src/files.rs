//! `fromFiles` and `toFiles`: CSV, newline-delimited JSON and Parquet on the
//! local file system, through DataFusion's listing tables and file sinks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dataflow_engine::connector::{
    BoxError, Opened, Resume, Sink, SinkReport, Source, WriteContext,
};
use dataflow_engine::schema::parse_column_list;
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::catalog::TableProvider;
use datafusion::common::config::{
    ConfigNonZeroUsize, CsvOptions, JsonOptions, TableParquetOptions,
};
use datafusion::common::parsers::CompressionTypeVariant;
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{LogicalPlan, Partitioning};
use futures::StreamExt;
use serde::Deserialize;

use crate::error::{io, ConnectorError, Result};
use crate::save_mode::SaveMode;

/// File formats for `fromFiles` / `toFiles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    Csv,
    /// Newline-delimited JSON, one object per line.
    Json,
    Parquet,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Csv => ".csv",
            Format::Json => ".json",
            Format::Parquet => ".parquet",
        }
    }

    /// The format a path's extension implies, e.g. `orders/*.csv`.
    fn from_path(path: &str) -> Option<Format> {
        let lower = path.to_ascii_lowercase();
        let lower = lower.trim_end_matches(".gz").trim_end_matches(".zst");
        [Format::Csv, Format::Json, Format::Parquet]
            .into_iter()
            .find(|f| {
                lower.ends_with(f.extension()) || (*f == Format::Json && lower.ends_with(".jsonl"))
            })
    }
}

/// Compression of CSV and JSON files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TextCompression {
    #[default]
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl From<TextCompression> for CompressionTypeVariant {
    fn from(c: TextCompression) -> Self {
        match c {
            TextCompression::None => CompressionTypeVariant::UNCOMPRESSED,
            TextCompression::Gzip => CompressionTypeVariant::GZIP,
            TextCompression::Bzip2 => CompressionTypeVariant::BZIP2,
            TextCompression::Xz => CompressionTypeVariant::XZ,
            TextCompression::Zstd => CompressionTypeVariant::ZSTD,
        }
    }
}

/// `fromFiles` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FromFilesConfig {
    /// A file, a directory (every file of the format inside, hive-style
    /// `key=value` sub-directories become columns) or a glob.
    path: String,
    /// csv, json or parquet; taken from the path's extension when absent.
    format: Option<Format>,
    /// CSV: the first line holds column names. Default false, as in Spark.
    #[serde(default)]
    header: bool,
    /// CSV: field separator, one character. Default `,`.
    delimiter: Option<String>,
    /// CSV: quote character. Default `"`.
    quote: Option<String>,
    /// CSV: escape character inside quoted fields.
    escape: Option<String>,
    /// CSV: a regular expression matching values read as NULL, e.g. `^(NA|)$`.
    null_value: Option<String>,
    /// CSV/JSON compression: none, gzip, bzip2, xz, zstd.
    #[serde(default)]
    compression: TextCompression,
    /// Column list, e.g. `"id BIGINT, name VARCHAR, ts TIMESTAMP"`; inferred
    /// from the data when absent.
    schema: Option<String>,
    /// Rows read to infer a CSV/JSON schema. Default 1000.
    infer_schema_rows: Option<usize>,
}

/// The `fromFiles` source.
#[derive(Debug)]
struct FileSource {
    info: StepInfo,
    config: FromFilesConfig,
    format: Format,
}

fn single_char(
    info: &StepInfo,
    key: &str,
    value: &Option<String>,
) -> dataflow_engine::Result<Option<u8>> {
    match value.as_deref() {
        None => Ok(None),
        Some(s) if s.len() == 1 && s.is_ascii() => Ok(Some(s.as_bytes()[0])),
        Some("\\t") => Ok(Some(b'\t')),
        Some(_) => Err(info.error(key, "must be a single ASCII character")),
    }
}

/// Builds a `fromFiles` source from its step config.
pub(crate) fn source(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Source>> {
    let config: FromFilesConfig = info.parse()?;
    let format = config
        .format
        .or_else(|| Format::from_path(&config.path))
        .ok_or_else(|| {
            info.error(
                "format",
                "cannot tell the format from the path: set format to csv, json or parquet",
            )
        })?;
    for (key, value) in [
        ("delimiter", &config.delimiter),
        ("quote", &config.quote),
        ("escape", &config.escape),
    ] {
        single_char(info, key, value)?;
    }
    let csv_only = [
        ("header", config.header),
        ("delimiter", config.delimiter.is_some()),
        ("nullValue", config.null_value.is_some()),
    ];
    if format != Format::Csv {
        if let Some((key, _)) = csv_only.iter().find(|(_, set)| *set) {
            return Err(info.error(key, "applies to csv files only"));
        }
    }
    if let Some(pattern) = &config.null_value {
        // DataFusion compiles it with `expect` when the files are read.
        if let Err(err) = regex::Regex::new(pattern) {
            // The message draws a caret under the pattern; its last line says
            // what is wrong.
            let text = err.to_string();
            let why = text.lines().last().unwrap_or_default();
            return Err(info.error(
                "nullValue",
                format!(
                    "\"{pattern}\" is not a valid regular expression ({})",
                    why.trim_start_matches("error: ")
                ),
            ));
        }
    }
    if format == Format::Parquet && config.compression != TextCompression::None {
        return Err(info.error(
            "compression",
            "parquet files carry their own compression; remove this key",
        ));
    }
    Ok(Arc::new(FileSource {
        info: info.clone(),
        config,
        format,
    }))
}

impl FileSource {
    fn file_format(&self) -> Arc<dyn FileFormat> {
        let c = &self.config;
        let compression = FileCompressionType::from(CompressionTypeVariant::from(c.compression));
        let rows = c.infer_schema_rows.unwrap_or(1000);
        match self.format {
            Format::Csv => {
                let char_of = |v: &Option<String>| single_char(&self.info, "", v).ok().flatten();
                let mut csv = CsvFormat::default()
                    .with_has_header(c.header)
                    .with_file_compression_type(compression)
                    .with_schema_infer_max_rec(rows)
                    .with_escape(char_of(&c.escape))
                    .with_null_regex(c.null_value.clone());
                if let Some(d) = char_of(&c.delimiter) {
                    csv = csv.with_delimiter(d);
                }
                if let Some(q) = char_of(&c.quote) {
                    csv = csv.with_quote(q);
                }
                Arc::new(csv)
            }
            Format::Json => Arc::new(
                JsonFormat::default()
                    .with_file_compression_type(compression)
                    .with_schema_infer_max_rec(rows),
            ),
            Format::Parquet => Arc::new(ParquetFormat::default()),
        }
    }

    /// The extension files must have: none when the path names one file.
    fn extension(&self) -> String {
        let path = Path::new(&self.config.path);
        if path.is_file() {
            return String::new();
        }
        let compression =
            FileCompressionType::from(CompressionTypeVariant::from(self.config.compression));
        self.file_format()
            .get_ext_with_compression(&compression)
            .map(|ext| format!(".{ext}"))
            .unwrap_or_else(|_| self.format.extension().to_string())
    }

    async fn provider(&self, state: &SessionState) -> Result<Arc<dyn TableProvider>, BoxError> {
        let path = &self.config.path;
        let url = ListingTableUrl::parse(path)?;
        let extension = self.extension();
        let store = state.runtime_env().object_store(&url)?;
        let first = url
            .list_all_files(state, store.as_ref(), &extension)
            .await?
            .next()
            .await;
        match first {
            None => {
                return Err(ConnectorError::Rejected(format!(
                    "no input files: nothing matches \"{path}\"{}",
                    if extension.is_empty() {
                        String::new()
                    } else {
                        format!(" with extension {extension}")
                    }
                ))
                .into())
            }
            Some(Err(source)) => {
                let context = format!("cannot read \"{path}\"");
                return Err(ConnectorError::Context { context, source }.into());
            }
            Some(Ok(_)) => {}
        }
        let options = ListingOptions::new(self.file_format()).with_file_extension(extension);
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_partitions_from_path(state)
            .await?;
        let config = match &self.config.schema {
            Some(columns) => {
                let schema = parse_column_list(state, columns)
                    .await
                    .map_err(|e| Box::new(self.info.error("schema", e.to_string())) as BoxError)?;
                config.with_schema(schema)
            }
            None => config.infer_schema(state).await?,
        };
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

#[async_trait]
impl Source for FileSource {
    async fn open(&self, state: &SessionState, _resume: &Resume) -> Result<Opened, BoxError> {
        Ok(Opened::table(self.provider(state).await?))
    }
}

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

/// The `toFiles` sink: writes into a hidden staging directory beside the
/// target and moves the files into place only after the commit gate opens.
#[derive(Debug)]
struct FileSink {
    config: ToFilesConfig,
    target: PathBuf,
    parquet: Option<ParquetCompression>,
    text: TextCompression,
}

/// Builds a `toFiles` sink from its step config.
pub(crate) fn sink(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Sink>> {
    let config: ToFilesConfig = info.parse()?;
    if config.save_mode == SaveMode::Merge {
        return Err(info.error("saveMode", "merge needs a table format: use toDeltaLake"));
    }
    if config.path.contains("://") && !config.path.starts_with("file://") {
        return Err(info.error(
            "path",
            "toFiles writes to local paths only in this version; use toDeltaLake for object stores",
        ));
    }
    let codec = config.compression.clone().map(serde_json::Value::String);
    let (parquet, text) = match (config.format, codec) {
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
    };
    let target = PathBuf::from(config.path.trim_start_matches("file://"));
    Ok(Arc::new(FileSink {
        config,
        target,
        parquet,
        text,
    }))
}

/// True when `path` exists and holds at least one entry.
fn has_data(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut d| d.next().is_some())
        .unwrap_or(path.is_file())
}

/// Total size of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Moves every file under `from` to the same relative place under `to`.
fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            move_tree(&entry.path(), &dest)?;
        } else {
            std::fs::rename(entry.path(), dest)?;
        }
    }
    Ok(())
}

impl FileSink {
    fn sibling(&self, tag: &str) -> PathBuf {
        let name = self
            .target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = self
            .target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parent.join(format!(".{name}.{tag}-{}", uuid::Uuid::new_v4()))
    }

    /// A `coalesce` or `repartition` right before an unpartitioned write
    /// sets the number of files, as in Spark (`coalesce(1)`: one file):
    /// DataFusion's writer otherwise picks it (4 when there are enough
    /// record batches, more past 50 M rows per file).
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

    async fn write_staged(&self, input: DataFrame, staging: &Path) -> Result<u64> {
        // DataFusion writes no file for no rows: the (empty) directory is
        // then the output, so a reader sees an empty dataset.
        std::fs::create_dir_all(staging).map_err(io(format!("creating {}", staging.display())))?;
        let dir = format!("{}/", staging.display());
        let input = self.with_file_count(input)?;
        let options =
            DataFrameWriteOptions::new().with_partition_by(self.config.partition_by.clone());
        let counts = match self.config.format {
            Format::Parquet => {
                let mut parquet = TableParquetOptions::default();
                parquet.global.compression = self.parquet.map(|c| c.setting().to_string());
                input.write_parquet(&dir, options, Some(parquet)).await?
            }
            Format::Csv => {
                let csv = CsvOptions {
                    has_header: Some(self.config.header),
                    compression: self.text.into(),
                    ..Default::default()
                };
                input.write_csv(&dir, options, Some(csv)).await?
            }
            Format::Json => {
                let json = JsonOptions {
                    compression: self.text.into(),
                    ..Default::default()
                };
                input.write_json(&dir, options, Some(json)).await?
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

    fn commit(&self, staging: &Path) -> Result<()> {
        let target = &self.target;
        match self.config.save_mode {
            SaveMode::Append => move_tree(staging, target)
                .map_err(io(format!("moving files into {}", target.display())))?,
            _ => {
                if target.exists() {
                    if self.config.save_mode != SaveMode::Overwrite {
                        return Err(self.exists_error());
                    }
                    let old = self.sibling("replaced");
                    std::fs::rename(target, &old)
                        .map_err(io(format!("moving aside {}", target.display())))?;
                    std::fs::rename(staging, target)
                        .map_err(io(format!("moving output into {}", target.display())))?;
                    std::fs::remove_dir_all(&old)
                        .map_err(io(format!("removing old {}", old.display())))?;
                } else {
                    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent)
                            .map_err(io(format!("creating {}", parent.display())))?;
                    }
                    std::fs::rename(staging, target)
                        .map_err(io(format!("moving output into {}", target.display())))?;
                }
            }
        }
        Ok(())
    }

    fn exists_error(&self) -> ConnectorError {
        ConnectorError::Rejected(format!(
            "{} already exists (saveMode errorIfExists). Help: set saveMode to overwrite, append or ignore",
            self.target.display()
        ))
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
    async fn write(&self, input: DataFrame, ctx: WriteContext) -> Result<SinkReport, BoxError> {
        let exists = has_data(&self.target);
        match self.config.save_mode {
            SaveMode::ErrorIfExists if exists => return Err(self.exists_error().into()),
            SaveMode::Ignore if exists => {
                return Ok(SinkReport {
                    detail: format!(
                        "skipped: {} exists (saveMode ignore)",
                        self.target.display()
                    ),
                    ..Default::default()
                })
            }
            _ => {}
        }
        let staging = self.sibling("staging");
        let outcome = async {
            let rows = self.write_staged(input, &staging).await?;
            let bytes = dir_size(&staging);
            ctx.gate.ready().await?;
            self.commit(&staging)?;
            Ok::<_, ConnectorError>((rows, bytes))
        }
        .await;
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        let (rows, bytes) = outcome?;
        Ok(SinkReport {
            rows,
            bytes,
            detail: format!(
                "{} files in {}",
                &self.config.format.extension()[1..],
                self.target.display()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_path() {
        assert_eq!(Format::from_path("a/*.csv"), Some(Format::Csv));
        assert_eq!(Format::from_path("a/b.JSONL"), Some(Format::Json));
        assert_eq!(Format::from_path("a/b.csv.gz"), Some(Format::Csv));
        assert_eq!(Format::from_path("a/b"), None);
    }
}
