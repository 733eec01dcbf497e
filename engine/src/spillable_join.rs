//! Joins too large for the memory limit run as sort-merge joins, which
//! spill, instead of hash joins, which cannot.
//!
//! DataFusion's hash join holds its whole build side in memory and fails
//! when the memory pool is exhausted. A sort-merge join sorts both inputs
//! with spilling sorts and then streams. This rule, run right after
//! DataFusion's join selection (which puts the smaller input on the build
//! side), replaces a hash join whose build side is estimated at more than
//! [`BUILD_SHARE`] of the memory limit; DataFusion's later rules add the
//! repartitioning and sorts the merge join needs.

use std::sync::Arc;

use datafusion::arrow::compute::SortOptions;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::operator_statistics::StatisticsRegistry;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

/// The share of the memory limit a hash join's build side may take, by its
/// estimated size: the hash table and the build batches' copy come on top,
/// and the aggregations and sorts of the same plan need room too.
pub const BUILD_SHARE: f64 = 0.25;

/// The rule; `limit` is the run's memory limit in bytes.
#[derive(Debug)]
pub(crate) struct SpillableJoins {
    limit: usize,
    statistics: StatisticsRegistry,
}

impl SpillableJoins {
    pub(crate) fn new(limit: usize, statistics: StatisticsRegistry) -> Self {
        SpillableJoins { limit, statistics }
    }

    /// The build side's estimated size, when known.
    fn build_bytes(&self, join: &HashJoinExec) -> Option<usize> {
        let stats = self.statistics.compute(join.left().as_ref()).ok()?;
        stats.base().total_byte_size.get_value().copied()
    }

    fn too_large(&self, join: &HashJoinExec) -> bool {
        !join.null_aware
            && self
                .build_bytes(join)
                .is_some_and(|bytes| bytes as f64 > self.limit as f64 * BUILD_SHARE)
    }
}

/// `join` as a sort-merge join with the same inputs, keys and output.
fn sort_merge(join: &HashJoinExec) -> Result<Arc<dyn ExecutionPlan>> {
    let merge: Arc<dyn ExecutionPlan> = Arc::new(SortMergeJoinExec::try_new(
        join.left().clone(),
        join.right().clone(),
        join.on().to_vec(),
        join.filter().cloned(),
        *join.join_type(),
        vec![SortOptions::default(); join.on().len()],
        join.null_equality(),
    )?);
    let Some(columns) = &join.projection else {
        return Ok(merge);
    };
    let schema = merge.schema();
    let exprs = columns.iter().map(|&i| {
        let name = schema.field(i).name().clone();
        (
            Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
            name,
        )
    });
    Ok(Arc::new(ProjectionExec::try_new(exprs, merge)?))
}

impl PhysicalOptimizerRule for SpillableJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match node.downcast_ref::<HashJoinExec>() {
            Some(join) if self.too_large(join) => match sort_merge(join) {
                Ok(merge) => {
                    tracing::debug!(
                        "a hash join's build side may exceed {:.0}% of the memory limit: using a sort-merge join",
                        BUILD_SHARE * 100.0
                    );
                    Ok(Transformed::yes(merge))
                }
                // A join the merge join does not support stays a hash join.
                Err(_) => Ok(Transformed::no(node)),
            },
            _ => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "spillable_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::{collect, displayable, ExecutionPlan};

    use crate::connector::Registry;
    use crate::session::{new_session, RuntimeOptions};
    use crate::spec::MemoryLimit;

    const ROWS: i64 = 300_000;

    /// A table of `ROWS` rows `(k, column)`: k = 0..ROWS, `column` =
    /// k * `factor`.
    fn table(column: &str, factor: i64) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new(column, DataType::Int64, false),
        ]));
        let batches = (0..ROWS)
            .step_by(8192)
            .map(|start| {
                let keys: Vec<i64> = (start..(start + 8192).min(ROWS)).collect();
                let values: Vec<i64> = keys.iter().map(|k| k * factor).collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(keys)),
                        Arc::new(Int64Array::from(values)),
                    ],
                )
                .unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())
    }

    /// Sum of a metric over every operator of `plan`.
    fn total(plan: &Arc<dyn ExecutionPlan>, metric: fn(&Arc<dyn ExecutionPlan>) -> usize) -> usize {
        metric(plan)
            + plan
                .children()
                .into_iter()
                .map(|c| total(c, metric))
                .sum::<usize>()
    }

    #[tokio::test]
    async fn a_join_larger_than_the_limit_spills_and_returns_every_row() {
        let spill = tempfile::tempdir().unwrap();
        let options = RuntimeOptions {
            memory_limit: Some(MemoryLimit::from_bytes(8 << 20)),
            spill_dir: Some(spill.path().to_path_buf()),
            ..Default::default()
        };
        let ctx = new_session(&Registry::new(), &options).unwrap();
        ctx.register_table("l", table("v", 3)).unwrap();
        ctx.register_table("r", table("w", 5)).unwrap();
        // Every key matches once; either side (4.8 MB of data) is more than
        // a quarter of the 8 MiB limit: a hash table would not fit.
        let frame = ctx
            .sql("SELECT l.k, v + w AS s FROM l JOIN r ON l.k = r.k")
            .await
            .unwrap();
        let plan = frame.create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        assert!(text.contains("SortMergeJoin"), "{text}");
        let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
        let mut rows: Vec<(i64, i64)> = batches
            .iter()
            .flat_map(|b| {
                let k = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let s = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                k.values()
                    .iter()
                    .copied()
                    .zip(s.values().iter().copied())
                    .collect::<Vec<_>>()
            })
            .collect();
        rows.sort_unstable();
        let expected: Vec<(i64, i64)> = (0..ROWS).map(|k| (k, 8 * k)).collect();
        assert_eq!(rows, expected);
        let spills = total(&plan, |p| {
            p.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
        });
        assert!(
            spills > 0,
            "the sorts under the merge join spilled:\n{text}"
        );
    }
}
