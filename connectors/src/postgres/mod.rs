//! `fromPostgres`: a PostgreSQL table or query, read with binary COPY
//! straight into Arrow, over one or several connections.
//!
//! At plan time the source connects once, prepares `SELECT * FROM <table or
//! query>` to learn the columns and their types (nothing is read), and, for
//! a partitioned read, asks for the partition column's min/max. Each scan
//! then runs `COPY (SELECT <needed columns> FROM ... WHERE <pushed filters>
//! AND <partition range>) TO STDOUT (FORMAT binary)` per partition and
//! decodes the stream batch by batch ([`copy`]).

mod connect;
mod copy;
mod partition;
mod read;
mod scan;
mod sql;
mod tls;
mod types;
mod values;

use std::sync::Arc;

use async_trait::async_trait;
use dataflow_engine::connector::{BoxError, Opened, Resume, Source};
use dataflow_engine::secret::Secret;
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::execution::context::SessionState;
use serde::Deserialize;

use crate::error::{ConnectorError, Result};
use connect::Connector;
use partition::{Bound, Partitioning, RangeKind};
use scan::{PostgresTable, Relation};
use types::PgKind;

/// `fromPostgres` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FromPostgresConfig {
    /// `postgresql://user@host:port/db?sslmode=...`; may hold the password,
    /// so it is a secret too.
    url: Secret,
    /// The password, typically `"${PGPASSWORD}"`; overrides one in `url`.
    password: Option<Secret>,
    /// A file whose first line is the password.
    password_file: Option<String>,
    /// `table` or `schema.table` (exclusive with `query`).
    table: Option<String>,
    /// A SELECT whose result is the relation (exclusive with `table`).
    query: Option<String>,
    /// Integer, date or timestamp column to split the read on.
    partition_column: Option<String>,
    /// Connections reading ranges of `partitionColumn` in parallel.
    num_partitions: Option<usize>,
    /// Start of the range to split (default: the column's minimum).
    lower_bound: Option<Bound>,
    /// End of the range to split (default: the column's maximum).
    upper_bound: Option<Bound>,
    /// Rows per Arrow record batch.
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    /// Retries (with exponential backoff) of a partition whose connection is
    /// lost before it has passed on any row.
    #[serde(default)]
    retries: u32,
    /// Integer, date or timestamp column that only grows (an id,
    /// `updated_at`): each run reads the rows above the last run's maximum.
    incremental_column: Option<String>,
    /// Where the high-water mark is kept when no sink records it in its own
    /// commit (every sink but `toDeltaLake`).
    state_dir: Option<String>,
}

fn default_batch_size() -> usize {
    8192
}

/// The `fromPostgres` source.
#[derive(Debug)]
struct PostgresSource {
    config: FromPostgresConfig,
    /// The FROM item: a quoted table name or `(query) AS "q"`.
    from: String,
}

/// Builds a `fromPostgres` source from its step config.
pub(crate) fn source(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Source>> {
    let config: FromPostgresConfig = info.parse()?;
    let from = match (&config.table, &config.query) {
        (Some(table), None) => sql::table_name(table).map_err(|e| info.error("table", e))?,
        (None, Some(query)) => {
            let query = query.trim().trim_end_matches(';').trim_end();
            if query.is_empty() {
                return Err(info.error("query", "must not be empty"));
            }
            format!("({query}) AS \"q\"")
        }
        _ => {
            return Err(info.error(
                "table",
                "set exactly one of table (\"schema.table\") and query",
            ))
        }
    };
    if config.password.is_some() && config.password_file.is_some() {
        return Err(info.error("passwordFile", "set password or passwordFile, not both"));
    }
    if config.batch_size == 0 {
        return Err(info.error("batchSize", "must be at least 1"));
    }
    match (&config.partition_column, config.num_partitions) {
        (_, Some(0)) => return Err(info.error("numPartitions", "must be at least 1")),
        (None, Some(n)) if n > 1 => {
            return Err(info.error(
                "numPartitions",
                "needs partitionColumn (an integer, date or timestamp column)",
            ))
        }
        (None, _) if config.lower_bound.is_some() || config.upper_bound.is_some() => {
            return Err(info.error(
                if config.lower_bound.is_some() {
                    "lowerBound"
                } else {
                    "upperBound"
                },
                "only applies with partitionColumn",
            ))
        }
        (Some(_), None) => {
            return Err(info.error(
                "numPartitions",
                "partitionColumn needs numPartitions (connections to read with)",
            ))
        }
        _ => {}
    }
    if let Some(dir) = &config.state_dir {
        crate::storage::check_path(info, "stateDir", dir)?;
    }
    if config.state_dir.is_some() && config.incremental_column.is_none() {
        return Err(info.error("stateDir", "only applies with incrementalColumn"));
    }
    Connector::new(&config.url, None).map_err(|e| info.error("url", e))?;
    Ok(Arc::new(PostgresSource { config, from }))
}

impl PostgresSource {
    fn password(&self) -> Result<Option<Secret>> {
        let Some(path) = &self.config.password_file else {
            return Ok(self.config.password.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(crate::error::io(format!("reading passwordFile {path}")))?;
        Ok(Some(Secret::new(text.lines().next().unwrap_or_default())))
    }

    /// The columns of the relation, from the prepared SELECT's description.
    async fn describe(&self, connector: &Connector) -> Result<(Schema, Vec<PgKind>)> {
        let client = connector.connect().await?;
        let statement = client
            .prepare(&format!("SELECT * FROM {}", self.from))
            .await
            .map_err(|e| connector.error("reading the columns", &e))?;
        let mut fields = Vec::new();
        let mut kinds = Vec::new();
        for column in statement.columns() {
            let name = column.name();
            let ty = column.type_();
            let kind = PgKind::of(ty, column.type_modifier()).ok_or_else(|| {
                ConnectorError::Rejected(format!(
                    "column \"{name}\" has type {}{}, which fromPostgres cannot read. Help: cast it in `query`, e.g. SELECT \"{name}\"::text AS \"{name}\" FROM ...",
                    ty.name(),
                    if column.type_modifier() >= 4 && *ty == tokio_postgres::types::Type::NUMERIC {
                        " with more than 38 digits"
                    } else {
                        ""
                    }
                ))
            })?;
            if fields.iter().any(|f: &Field| f.name() == name) {
                return Err(ConnectorError::Rejected(format!(
                    "the query returns two columns named \"{name}\". Help: alias one of them (AS other_name)"
                )));
            }
            fields.push(Field::new(name, kind.data_type(), true));
            kinds.push(kind);
        }
        Ok((Schema::new(fields), kinds))
    }

    /// The relation to scan, reading only the rows above `last_mark` (the
    /// previous run's high-water mark) when `incrementalColumn` is set; and
    /// the high-water mark this run reaches (at most `until`, when given).
    async fn relation(
        &self,
        last_mark: Option<i64>,
        until: Option<i64>,
    ) -> Result<(Relation, Option<i64>)> {
        let connector = Arc::new(
            Connector::new(&self.config.url, self.password()?).map_err(ConnectorError::Rejected)?,
        );
        let (schema, kinds) = self.describe(&connector).await?;
        let (window, reached) = match &self.config.incremental_column {
            Some(column) => {
                let kind = column_kind(&schema, &kinds, "incrementalColumn", column)?;
                let (window, reached) = self
                    .window(&connector, column, kind, last_mark, until)
                    .await?;
                (Some(window), reached)
            }
            None => (None, None),
        };
        let partitions = self
            .partitions(&connector, &schema, &kinds, window.as_deref())
            .await?;
        let relation = Relation {
            connector,
            from: self.from.clone(),
            kinds,
            schema: Arc::new(schema),
            predicates: window.into_iter().collect(),
            partitions,
            batch_size: self.config.batch_size,
            retries: self.config.retries,
        };
        Ok((relation, reached))
    }

    /// The condition selecting this run's rows of `incrementalColumn`
    /// `column`: above `last_mark`, up to the highest value there now (at
    /// most `until`); and the high-water mark the run then reaches.
    async fn window(
        &self,
        connector: &Connector,
        column: &str,
        kind: &PgKind,
        last_mark: Option<i64>,
        until: Option<i64>,
    ) -> Result<(String, Option<i64>)> {
        let range = RangeKind::of(kind).ok_or_else(|| {
            ConnectorError::Rejected(format!(
                "incrementalColumn \"{column}\" must be an integer, date or timestamp column, not {}",
                kind.data_type()
            ))
        })?;
        let high = range
            .max_above(connector, &self.from, column, last_mark)
            .await
            .map_err(|e| {
                e.with_postgres_context(
                    &format!(" of the high-water mark of incrementalColumn \"{column}\""),
                    "",
                )
            })?;
        // Sinks left apart by a stop between their commits: catch up to
        // the one ahead, no further (see the engine's resume_point).
        let high = match until {
            Some(until) => high.map(|high| high.min(until)),
            None => high,
        };
        let column = sql::ident(column);
        log_window(range, &column, last_mark, high);
        Ok((
            window_predicate(range, &column, last_mark, high),
            high.or(last_mark),
        ))
    }

    /// One extra condition per output partition: ranges of
    /// `partitionColumn` within `window`, or a single unrestricted one.
    async fn partitions(
        &self,
        connector: &Connector,
        schema: &Schema,
        kinds: &[PgKind],
        window: Option<&str>,
    ) -> Result<Vec<Option<String>>> {
        let Some(column) = &self.config.partition_column else {
            return Ok(vec![None]);
        };
        let from = match window {
            Some(window) => format!("(SELECT * FROM {} WHERE {window}) AS \"w\"", self.from),
            None => self.from.clone(),
        };
        Partitioning {
            column,
            kind: column_kind(schema, kinds, "partitionColumn", column)?,
            count: self.config.num_partitions.unwrap_or(1),
            lower: self.config.lower_bound.as_ref(),
            upper: self.config.upper_bound.as_ref(),
        }
        .predicates(connector, &from)
        .await
    }

    /// The previous run's high-water mark: recorded by the sinks, else kept
    /// in the offset log under `stateDir` or the pipeline's
    /// `checkpointLocation` (which the engine reads into `resume` and
    /// updates after the commit).
    fn last_mark(&self, column: &str, resume: &Resume) -> Result<Option<i64>, BoxError> {
        if !resume.recorded_by_sinks && !resume.offset_log {
            return Err(ConnectorError::Rejected(
                "incrementalColumn needs a place to record the high-water mark. Help: load into \
                 toDeltaLake, which records it in the same commit as the rows, or keep it in an \
                 offset log: set the pipeline's checkpointLocation (or this step's stateDir)"
                    .into(),
            )
            .into());
        }
        Ok(resume.marks.get(column).copied())
    }
}

/// The kind of `column`, named by the config key `key`.
fn column_kind<'a>(
    schema: &Schema,
    kinds: &'a [PgKind],
    key: &str,
    column: &str,
) -> Result<&'a PgKind> {
    let index = schema.index_of(column).map_err(|_| {
        ConnectorError::Rejected(format!(
            "{key} \"{column}\" is not a column of the relation"
        ))
    })?;
    Ok(&kinds[index])
}

/// The incremental window over the quoted `column`: above `low` (from the
/// start when `None`) and up to `high`, or no row when nothing is there.
/// Bounded above too: rows arriving during the run wait for the next one,
/// whose window starts exactly at this run's mark.
fn window_predicate(range: RangeKind, column: &str, low: Option<i64>, high: Option<i64>) -> String {
    match (low, high) {
        (_, None) => "FALSE".to_string(),
        (None, Some(high)) => format!("{column} <= {}", range.sql(high)),
        (Some(low), Some(high)) => format!(
            "{column} > {} AND {column} <= {}",
            range.sql(low),
            range.sql(high)
        ),
    }
}

/// Logs which rows of the quoted incremental `column` a run reads.
fn log_window(range: RangeKind, column: &str, last_mark: Option<i64>, high: Option<i64>) {
    let after = last_mark.map_or_else(
        || "from the start".to_string(),
        |m| format!("above {}", range.sql(m)),
    );
    match high {
        Some(high) => tracing::info!(
            "incrementalColumn {column}: reading rows {after} up to {}",
            range.sql(high)
        ),
        None => tracing::info!("incrementalColumn {column}: no rows {after}"),
    }
}

#[async_trait]
impl Source for PostgresSource {
    /// A query's rows come in no defined order (and partitions interleave).
    fn ordered(&self) -> bool {
        false
    }

    async fn resume_keys(&self) -> Result<Vec<String>, BoxError> {
        Ok(self.config.incremental_column.iter().cloned().collect())
    }

    fn offset_log_dir(&self) -> Option<String> {
        self.config.state_dir.clone()
    }

    async fn open(&self, _state: &SessionState, resume: &Resume) -> Result<Opened, BoxError> {
        let last_mark = match &self.config.incremental_column {
            Some(column) => self.last_mark(column, resume)?,
            None => None,
        };
        let until = self
            .config
            .incremental_column
            .as_ref()
            .and_then(|column| resume.until.get(column).copied());
        let (relation, reached) = self.relation(last_mark, until).await?;
        Ok(Opened {
            provider: Arc::new(PostgresTable::new(relation)),
            marks: self
                .config
                .incremental_column
                .iter()
                .zip(reached)
                .map(|(column, mark)| (column.clone(), mark))
                .collect(),
            start: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(config: serde_json::Value) -> StepInfo {
        let mut spec = dataflow_engine::spec::PipelineSpec::load(
            &serde_json::json!({"name": "p", "steps": [
                {"type": "extract", "method": "fromPostgres", "config": config},
                {"type": "load", "method": "toConsole"}]})
            .to_string(),
            &[],
            &|_| None,
        )
        .unwrap();
        spec.steps.remove(0)
    }

    fn error_path(config: serde_json::Value) -> String {
        match source(&info(config)).unwrap_err() {
            dataflow_engine::Error::Config { path, .. } => path,
            other => panic!("expected a config error, got {other}"),
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let url = "postgresql://u@localhost/db";
        let cases = [
            (serde_json::json!({"url": url}), "steps[0].config.table"),
            (
                serde_json::json!({"url": url, "table": "t", "query": "SELECT 1"}),
                "steps[0].config.table",
            ),
            (
                serde_json::json!({"url": url, "table": "t", "numPartitions": 4}),
                "steps[0].config.numPartitions",
            ),
            (
                serde_json::json!({"url": url, "table": "t", "partitionColumn": "id"}),
                "steps[0].config.numPartitions",
            ),
            (
                serde_json::json!({"url": url, "table": "t", "lowerBound": 1}),
                "steps[0].config.lowerBound",
            ),
            (
                serde_json::json!({"url": url, "table": "a b"}),
                "steps[0].config.table",
            ),
            (
                serde_json::json!({"url": url, "table": "t", "batchSize": 0}),
                "steps[0].config.batchSize",
            ),
            (
                serde_json::json!({"url": url, "table": "t", "tabel": 1}),
                "steps[0].config.tabel",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(error_path(config.clone()), path, "{config}");
        }
    }

    #[test]
    fn debug_hides_passwords() {
        let source = source(&info(serde_json::json!({
            "url": "postgresql://u:hunter2@localhost/db", "password": "swordfish", "table": "t"
        })))
        .unwrap();
        let debug = format!("{source:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
    }
}
