//! `fromFiles` and `toFiles`: CSV, newline-delimited JSON and Parquet, on
//! the local file system or an object store, through DataFusion's listing
//! tables and file sinks.

mod sink;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use dataflow_engine::connector::{BoxError, Opened, Resume, Source};
use dataflow_engine::schema::parse_column_list;
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::parsers::CompressionTypeVariant;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::context::SessionState;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use futures::StreamExt;
use serde::Deserialize;

use crate::error::ConnectorError;
use crate::storage::check_path;
pub(crate) use sink::sink;

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
    /// In a streaming pipeline: read the files as a stream (Spark's
    /// `readStream`): each micro-batch reads the files not read yet. Needs
    /// `schema`. Default false: the files are a static table.
    #[serde(default)]
    streaming: bool,
    /// Streaming: at most this many new files per micro-batch (default: all).
    max_files_per_trigger: Option<usize>,
    /// Streaming: newest files first (default: oldest first).
    #[serde(default)]
    latest_first: bool,
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
    check_path(info, "path", &config.path)?;
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
    stream::check(info, &config)?;
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
    async fn extension(&self, url: &ListingTableUrl, store: &dyn ObjectStore) -> String {
        let one_file = !url.is_collection()
            && url.get_glob().is_none()
            && store.head(url.prefix()).await.is_ok();
        if one_file {
            return String::new();
        }
        let compression =
            FileCompressionType::from(CompressionTypeVariant::from(self.config.compression));
        self.file_format()
            .get_ext_with_compression(&compression)
            .map(|ext| format!(".{ext}"))
            .unwrap_or_else(|_| self.format.extension().to_string())
    }

    /// The `schema` columns, if given.
    async fn given_schema(&self, state: &SessionState) -> Result<Option<SchemaRef>, BoxError> {
        let Some(columns) = &self.config.schema else {
            return Ok(None);
        };
        let schema = parse_column_list(state, columns)
            .await
            .map_err(|e| Box::new(self.info.error("schema", e.to_string())) as BoxError)?;
        Ok(Some(schema))
    }

    async fn provider(&self, state: &SessionState) -> Result<Arc<dyn TableProvider>, BoxError> {
        let path = &self.config.path;
        let url = listing_url(path)?;
        let store = state.runtime_env().object_store(&url)?;
        let extension = self.extension(&url, store.as_ref()).await;
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
        let config = match self.given_schema(state).await? {
            Some(schema) => config.with_schema(schema),
            None => config.infer_schema(state).await?,
        };
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

/// The listing URL of `path`. DataFusion takes globs in local paths only;
/// a URL's glob is split off the same way: the prefix up to the last `/`
/// before the first glob character, and the pattern after it.
fn listing_url(path: &str) -> datafusion::error::Result<ListingTableUrl> {
    let glob_at = path.find(['*', '?', '[']);
    match glob_at {
        Some(at) if path.contains("://") => {
            let split = path[..at].rfind('/').map_or(0, |slash| slash + 1);
            let (prefix, glob) = path.split_at(split);
            ListingTableUrl::parse(prefix)?.with_glob(glob)
        }
        _ => ListingTableUrl::parse(path),
    }
}

#[async_trait]
impl Source for FileSource {
    fn is_stream(&self) -> bool {
        self.config.streaming
    }

    async fn resume_keys(&self) -> Result<Vec<String>, BoxError> {
        if !self.config.streaming {
            return Ok(Vec::new());
        }
        Ok(self.files().await?.into_iter().map(|f| f.key).collect())
    }

    async fn latest(&self) -> Result<HashMap<String, i64>, BoxError> {
        if !self.config.streaming {
            return Ok(HashMap::new());
        }
        Ok(self
            .files()
            .await?
            .into_iter()
            .map(|f| (f.key, stream::READ))
            .collect())
    }

    async fn open(&self, state: &SessionState, resume: &Resume) -> Result<Opened, BoxError> {
        if self.config.streaming {
            return self.open_stream(state, resume).await;
        }
        Ok(Opened::table(self.provider(state).await?))
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

    #[test]
    fn globs_in_urls_are_split_off() {
        let url = listing_url("s3://b/raw/2026-*/*.csv").unwrap();
        assert_eq!(url.as_str(), "s3://b/raw/");
        assert_eq!(url.get_glob().as_ref().unwrap().as_str(), "2026-*/*.csv");
        assert!(listing_url("s3://b/raw/").unwrap().get_glob().is_none());
    }
}
