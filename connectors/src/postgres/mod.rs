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
mod types;
mod values;

use std::sync::Arc;

use async_trait::async_trait;
use dataflow_engine::connector::{BoxError, Source};
use dataflow_engine::secret::Secret;
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::execution::context::SessionState;
use serde::Deserialize;

use crate::error::{ConnectorError, Result};
use connect::Connector;
use partition::{Bound, Partitioning};
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

    async fn relation(&self) -> Result<Relation> {
        let connector = Arc::new(
            Connector::new(&self.config.url, self.password()?).map_err(ConnectorError::Rejected)?,
        );
        let (schema, kinds) = self.describe(&connector).await?;
        let partitions = match &self.config.partition_column {
            Some(column) => {
                let index = schema.index_of(column).map_err(|_| {
                    ConnectorError::Rejected(format!(
                        "partitionColumn \"{column}\" is not a column of the relation"
                    ))
                })?;
                Partitioning {
                    column,
                    kind: &kinds[index],
                    count: self.config.num_partitions.unwrap_or(1),
                    lower: self.config.lower_bound.as_ref(),
                    upper: self.config.upper_bound.as_ref(),
                }
                .predicates(&connector, &self.from)
                .await?
            }
            None => vec![None],
        };
        Ok(Relation {
            connector,
            from: self.from.clone(),
            kinds,
            schema: Arc::new(schema),
            predicates: Vec::new(),
            partitions,
            batch_size: self.config.batch_size,
            retries: self.config.retries,
        })
    }
}

#[async_trait]
impl Source for PostgresSource {
    async fn table_provider(
        &self,
        _state: &SessionState,
    ) -> Result<Arc<dyn TableProvider>, BoxError> {
        Ok(Arc::new(PostgresTable::new(self.relation().await?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(config: serde_json::Value) -> StepInfo {
        let spec = dataflow_engine::spec::PipelineSpec::load(
            &serde_json::json!({"name": "p", "steps": [
                {"type": "extract", "method": "fromPostgres", "config": config},
                {"type": "load", "method": "toConsole"}]})
            .to_string(),
            &[],
            &|_| None,
        )
        .unwrap();
        spec.step_infos().unwrap().remove(0)
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
