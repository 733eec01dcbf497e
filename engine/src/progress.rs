//! Live row counts of a running pipeline, for progress displays.
//!
//! Sinks write a DataFrame with DataFusion's or delta-rs's own writers, so
//! the rows are counted on their way in: [`counted`] wraps a load's input in
//! an opaque table whose scan passes every batch through a counter.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{provider_as_source, TableType};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;

/// Rows passed to the loads of the current run; clones share the count.
#[derive(Debug, Clone, Default)]
pub struct RowCounter(Arc<AtomicU64>);

impl RowCounter {
    /// Rows counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Starts again from zero (a new attempt).
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn add(&self, rows: usize) {
        self.0.fetch_add(rows as u64, Ordering::Relaxed);
    }
}

/// `input`, with every row it produces counted in `counter`.
pub fn counted(input: DataFrame, counter: &RowCounter) -> DfResult<DataFrame> {
    let (state, plan) = input.into_parts();
    let view = DataFrame::new(state.clone(), plan).into_view();
    let table = CountingTable {
        inner: view,
        counter: counter.clone(),
    };
    // Not a view DataFusion could inline: the scan below must run.
    let scan = LogicalPlanBuilder::scan("counted", provider_as_source(Arc::new(table)), None)?;
    Ok(DataFrame::new(state, scan.build()?))
}

#[derive(Debug)]
struct CountingTable {
    inner: Arc<dyn TableProvider>,
    counter: RowCounter,
}

#[async_trait]
impl TableProvider for CountingTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = self.inner.scan(state, projection, filters, limit).await?;
        Ok(Arc::new(CountingExec {
            input,
            counter: self.counter.clone(),
        }))
    }
}

/// Passes its input through unchanged, counting rows.
#[derive(Debug)]
struct CountingExec {
    input: Arc<dyn ExecutionPlan>,
    counter: RowCounter,
}

impl DisplayAs for CountingExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CountingExec")
    }
}

impl ExecutionPlan for CountingExec {
    fn name(&self) -> &str {
        "CountingExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "CountingExec takes one child, got {}",
                children.len()
            )));
        }
        Ok(Arc::new(CountingExec {
            input: children.swap_remove(0),
            counter: self.counter.clone(),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let counter = self.counter.clone();
        let stream = self
            .input
            .execute(partition, context)?
            .inspect(move |batch| {
                if let Ok(batch) = batch {
                    counter.add(batch.num_rows());
                }
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit, SessionContext};

    use super::*;

    #[tokio::test]
    async fn counts_rows_and_keeps_them() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT value AS v, value * 2 AS w FROM generate_series(1, 10000)")
            .await
            .unwrap();
        let counter = RowCounter::default();
        let counted = counted(df, &counter).unwrap();
        let names: Vec<_> = counted
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["v", "w"]);
        // Filters and projections on top still apply.
        let rows = counted
            .filter(col("v").gt(lit(9000)))
            .unwrap()
            .select_columns(&["w"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        assert_eq!(rows[0].num_columns(), 1);
        assert!(counter.get() >= 1000, "{}", counter.get());
        counter.reset();
        assert_eq!(counter.get(), 0);
    }
}
