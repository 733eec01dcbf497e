//! The `ExecutionPlan` shared by sources that read their partitions
//! themselves (PostgreSQL COPY ranges, Kafka offset ranges): one reader per
//! output partition, each run as a task feeding a small channel.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use futures::future::BoxFuture;
use tokio::sync::mpsc::Sender;

/// Batches buffered per partition between its reader and the consumer.
const CHANNEL_BATCHES: usize = 2;

/// Reads one partition: sends its batches, then returns.
pub(crate) trait PartitionReader: Send + Sync + fmt::Debug {
    /// One line describing what this partition reads (for `explain`).
    fn describe(&self) -> String;

    /// Reads the partition into `tx`; stops early when `tx` closes.
    fn read(&self, tx: Sender<DfResult<RecordBatch>>) -> BoxFuture<'static, DfResult<()>>;
}

/// A leaf plan with one [`PartitionReader`] per output partition.
#[derive(Debug)]
pub(crate) struct ReaderExec {
    name: &'static str,
    /// Shown after the name in `explain`, e.g. `source=app@db:5432/shop`.
    header: String,
    /// What one partition reads, as `explain` labels it: `sql` → `sql[0]=...`.
    item: &'static str,
    schema: SchemaRef,
    readers: Vec<Arc<dyn PartitionReader>>,
    properties: Arc<PlanProperties>,
}

impl ReaderExec {
    /// A plan named `name` (e.g. `PostgresScanExec`) reading `readers`,
    /// each shown in `explain` as `item[i]=` and its description.
    pub(crate) fn new(
        name: &'static str,
        header: String,
        item: &'static str,
        schema: SchemaRef,
        readers: Vec<Arc<dyn PartitionReader>>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(readers.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        ReaderExec {
            name,
            header,
            item,
            schema,
            readers,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ReaderExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "{}: {}, partitions={}",
                    self.name,
                    self.header,
                    self.readers.len()
                )?;
                for (i, reader) in self.readers.iter().enumerate() {
                    write!(f, ", {}[{i}]={}", self.item, reader.describe())?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => {
                writeln!(f, "{}", self.header)?;
                for (i, reader) in self.readers.iter().enumerate() {
                    writeln!(f, "{}[{i}]={}", self.item, reader.describe())?;
                }
                Ok(())
            }
        }
    }
}

impl ExecutionPlan for ReaderExec {
    fn name(&self) -> &str {
        self.name
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
        let mut builder =
            RecordBatchReceiverStreamBuilder::new(self.schema.clone(), CHANNEL_BATCHES);
        if self.readers.is_empty() && partition == 0 {
            // Nothing to read: one empty partition.
            return Ok(builder.build());
        }
        let reader = self.readers.get(partition).ok_or_else(|| {
            DataFusionError::Internal(format!("{} has no partition {partition}", self.name))
        })?;
        let tx = builder.tx();
        builder.spawn(reader.read(tx));
        Ok(builder.build())
    }
}
