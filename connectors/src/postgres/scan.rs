//! The `fromPostgres` table: a DataFusion `TableProvider` whose scans push
//! projections, filters and limits into one `COPY (SELECT ...)` per
//! partition, run in parallel by the shared [`ReaderExec`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::connect::Connector;
use super::read::PartitionRead;
use super::sql::{filter, ident};
use super::types::PgKind;
use crate::scan_exec::{PartitionReader, ReaderExec};

/// Everything every scan of one `fromPostgres` step shares, fixed at plan time.
#[derive(Debug)]
pub(crate) struct Relation {
    /// Where to connect.
    pub connector: Arc<Connector>,
    /// The FROM item: a quoted table name or `(query) AS "q"`.
    pub from: String,
    /// The columns' names and kinds, in schema order.
    pub kinds: Vec<PgKind>,
    /// The full schema.
    pub schema: SchemaRef,
    /// Conditions every scan applies (e.g. an incremental window).
    pub predicates: Vec<String>,
    /// One extra condition per output partition (`None`: the whole range).
    pub partitions: Vec<Option<String>>,
    /// Rows per batch.
    pub batch_size: usize,
    /// Retries of a partition whose connection is lost before it emits rows.
    pub retries: u32,
}

impl Relation {
    fn kind_of(&self, name: &str) -> Option<&PgKind> {
        self.schema
            .index_of(name)
            .ok()
            .and_then(|i| self.kinds.get(i))
    }

    /// `expr` as SQL, when PostgreSQL evaluates it exactly as DataFusion would.
    fn filter_sql(&self, expr: &Expr) -> Option<String> {
        filter(expr, &|name| self.kind_of(name))
    }

    /// The SELECT for one partition: `columns` (indices), the pushed
    /// `conditions`, that partition's range and an optional LIMIT.
    fn select(
        &self,
        columns: &[usize],
        conditions: &[String],
        range: Option<&str>,
        limit: Option<usize>,
    ) -> String {
        let names: Vec<String> = columns
            .iter()
            .map(|&i| ident(self.schema.field(i).name()))
            .collect();
        let mut sql = format!("SELECT {} FROM {}", names.join(", "), self.from);
        let conditions: Vec<&str> = self
            .predicates
            .iter()
            .chain(conditions)
            .map(String::as_str)
            .chain(range)
            .collect();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        sql
    }
}

/// The table DataFusion plans over.
#[derive(Debug)]
pub(crate) struct PostgresTable {
    relation: Arc<Relation>,
}

impl PostgresTable {
    /// A table over `relation`.
    pub(crate) fn new(relation: Relation) -> Self {
        PostgresTable {
            relation: Arc::new(relation),
        }
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
    fn schema(&self) -> SchemaRef {
        self.relation.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.relation.filter_sql(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let relation = &self.relation;
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..relation.schema.fields().len()).collect(),
        };
        let conditions = filters
            .iter()
            .map(|f| {
                relation.filter_sql(f).ok_or_else(|| {
                    DataFusionError::Internal(format!("filter {f} was not offered for pushdown"))
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        let schema = Arc::new(relation.schema.project(&columns)?);
        let kinds = columns.iter().map(|&i| relation.kinds[i].clone()).collect();
        let kinds: Vec<PgKind> = kinds;
        let count = relation.partitions.len();
        // One `COPY (SELECT ...)` per output partition, each on its own
        // connection.
        let readers = relation
            .partitions
            .iter()
            .enumerate()
            .map(|(i, range)| {
                Arc::new(PartitionRead {
                    connector: relation.connector.clone(),
                    select: relation.select(&columns, &conditions, range.as_deref(), limit),
                    schema: schema.clone(),
                    kinds: kinds.clone(),
                    batch_size: relation.batch_size,
                    retries: relation.retries,
                    label: format!("partition {} of {count}", i + 1),
                }) as Arc<dyn PartitionReader>
            })
            .collect();
        Ok(Arc::new(ReaderExec::new(
            "PostgresScanExec",
            format!("source={}", relation.connector.target()),
            "sql",
            schema,
            readers,
        )))
    }
}
