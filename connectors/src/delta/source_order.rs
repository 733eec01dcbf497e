//! Rows numbered in the order their sources produced them, so that "the
//! last change of a key" is defined without a sequence column.
//!
//! The input is planned without round-robin repartitioning and executed
//! without file work stealing (an idle partition reading a sibling's files),
//! so every partition keeps its source's order: a Kafka partition's
//! offsets, or contiguous runs of files (sorted by path) and of rows within
//! them.
//! [`SourceOrderExec`] then numbers each partition's rows as
//! `partition << 40 | row`. Joins, aggregations and `repartition` steps
//! do not keep an order; after them only `sequenceBy` is meaningful.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt as _;

/// The column holding each row's place in source order.
pub(super) const SOURCE_ORDER: &str = "__source_order";

/// Bits of a row number within its partition.
const ROW_BITS: u32 = 40;

/// `input` with a [`SOURCE_ORDER`] column (see the module docs).
pub(super) fn numbered(input: DataFrame) -> DfResult<DataFrame> {
    let (state, plan) = input.into_parts();
    let mut planning = state.clone();
    let options = planning.config_mut().options_mut();
    options.optimizer.enable_round_robin_repartition = false;
    options.execution.enable_file_stream_work_stealing = false;
    let mut fields: Vec<Field> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SOURCE_ORDER, DataType::UInt64, false));
    let table = NumberedTable {
        planning,
        plan,
        schema: Arc::new(Schema::new(fields)),
    };
    SessionContext::new_with_state(state).read_table(Arc::new(table))
}

/// Numbers the rows of each partition of its input (see the module docs).
#[derive(Debug)]
struct SourceOrderExec {
    input: Arc<dyn ExecutionPlan>,
    /// Executes `input` with the settings it was planned with.
    context: Arc<TaskContext>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl SourceOrderExec {
    fn new(input: Arc<dyn ExecutionPlan>, schema: SchemaRef, context: Arc<TaskContext>) -> Self {
        let from = input.properties();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            from.output_partitioning().clone(),
            from.emission_type,
            from.boundedness,
        );
        SourceOrderExec {
            input,
            context,
            schema,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for SourceOrderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let input = datafusion::physical_plan::displayable(self.input.as_ref()).one_line();
        write!(
            f,
            "SourceOrderExec: input=[{}]",
            input.to_string().trim_end()
        )
    }
}

impl ExecutionPlan for SourceOrderExec {
    fn name(&self) -> &str {
        "SourceOrderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// None: the input is planned already, and optimizing the plan this
    /// one is part of must not reorder it (e.g. by repartitioning it).
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
        let schema = self.schema.clone();
        let mut next = (partition as u64) << ROW_BITS;
        let stream = self
            .input
            .execute(partition, self.context.clone())?
            .map(move |batch| {
                let batch = batch?;
                let rows = batch.num_rows() as u64;
                let order = UInt64Array::from_iter_values(next..next + rows);
                next += rows;
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(order));
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// A logical plan read as a table of its rows numbered in source order:
/// planned afresh (without round-robin repartitioning) for every scan, so
/// that each execution starts from a new plan, and the plan reading it
/// cannot reorder it.
#[derive(Debug)]
struct NumberedTable {
    planning: SessionState,
    plan: LogicalPlan,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for NumberedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = self.planning.create_physical_plan(&self.plan).await?;
        let numbered: Arc<dyn ExecutionPlan> = Arc::new(SourceOrderExec::new(
            input,
            self.schema.clone(),
            self.planning.task_ctx(),
        ));
        let Some(columns) = projection else {
            return Ok(numbered);
        };
        let exprs = columns.iter().map(|&i| {
            let name = self.schema.field(i).name();
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(name, i));
            (column, name.clone())
        });
        Ok(Arc::new(ProjectionExec::try_new(exprs, numbered)?))
    }
}
