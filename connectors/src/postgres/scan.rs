//! The `fromPostgres` table: a DataFusion `TableProvider` whose scans push
//! projections, filters and limits into one `COPY (SELECT ...)` per
//! partition, and the `ExecutionPlan` that runs those partitions in parallel.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};

use super::connect::Connector;
use super::read::PartitionRead;
use super::sql::{filter, ident};
use super::types::PgKind;

/// Batches buffered per partition between the reader and its consumer.
const CHANNEL_BATCHES: usize = 2;

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
        let selects = relation
            .partitions
            .iter()
            .map(|range| relation.select(&columns, &conditions, range.as_deref(), limit))
            .collect();
        Ok(Arc::new(PostgresScanExec::new(
            relation.clone(),
            schema,
            kinds,
            selects,
        )))
    }
}

/// Reads one `COPY (SELECT ...)` per output partition, each on its own
/// connection.
#[derive(Debug)]
pub(crate) struct PostgresScanExec {
    relation: Arc<Relation>,
    schema: SchemaRef,
    kinds: Vec<PgKind>,
    /// One SELECT per output partition.
    selects: Vec<String>,
    properties: Arc<PlanProperties>,
}

impl PostgresScanExec {
    fn new(
        relation: Arc<Relation>,
        schema: SchemaRef,
        kinds: Vec<PgKind>,
        selects: Vec<String>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(selects.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        PostgresScanExec {
            relation,
            schema,
            kinds,
            selects,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for PostgresScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let source = self.relation.connector.target();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "PostgresScanExec: source={source}, partitions={}",
                    self.selects.len()
                )?;
                for (i, select) in self.selects.iter().enumerate() {
                    write!(f, ", sql[{i}]={select}")?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                writeln!(f, "source={source}")?;
                for (i, select) in self.selects.iter().enumerate() {
                    writeln!(f, "sql[{i}]={select}")?;
                }
                Ok(())
            }
        }
    }
}

impl ExecutionPlan for PostgresScanExec {
    fn name(&self) -> &str {
        "PostgresScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let select = self.selects.get(partition).ok_or_else(|| {
            DataFusionError::Internal(format!("PostgresScanExec has no partition {partition}"))
        })?;
        let relation = &self.relation;
        let read = PartitionRead {
            connector: relation.connector.clone(),
            select: select.clone(),
            schema: self.schema.clone(),
            kinds: self.kinds.clone(),
            batch_size: relation.batch_size,
            retries: relation.retries,
            label: format!("partition {} of {}", partition + 1, self.selects.len()),
        };
        let mut builder =
            RecordBatchReceiverStreamBuilder::new(self.schema.clone(), CHANNEL_BATCHES);
        let tx = builder.tx();
        builder.spawn(read.run(tx));
        Ok(builder.build())
    }
}
