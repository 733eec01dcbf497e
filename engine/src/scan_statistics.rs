//! Size estimates for file scans without statistics (CSV, JSON), so that
//! DataFusion's join planning builds its hash table on the smaller input.
//!
//! DataFusion knows nothing about the size of a CSV or JSON scan, and then
//! keeps a join's inputs in the order written: `FROM lineitem JOIN orders`
//! would hold all of `lineitem` in memory. The estimate here is the bytes of
//! the files read, times the share of the file's columns the scan keeps; it
//! is marked inexact and only used to compare the two sides of a join.

use std::sync::Arc;

use datafusion::common::stats::Precision;
use datafusion::common::Statistics;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_plan::operator_statistics::{
    ExtendedStatistics, StatisticsProvider, StatisticsRegistry, StatisticsResult,
};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::ExecutionPlan;

/// DataFusion's statistics providers, led by [`FileSizeEstimate`].
pub(crate) fn registry() -> StatisticsRegistry {
    let mut registry = StatisticsRegistry::default_with_builtin_providers();
    registry.register(Arc::new(FileSizeEstimate));
    registry
}

/// Gives file scans with unknown size an inexact size from their files.
#[derive(Debug)]
pub(crate) struct FileSizeEstimate;

impl StatisticsProvider for FileSizeEstimate {
    fn compute_statistics(
        &self,
        plan: &dyn ExecutionPlan,
        _child_stats: &[ExtendedStatistics],
    ) -> Result<StatisticsResult> {
        let Some(config) = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        else {
            return Ok(StatisticsResult::Delegate);
        };
        let stats = StatisticsContext::new().compute(plan, &StatisticsArgs::new())?;
        if stats.total_byte_size != Precision::Absent {
            return Ok(StatisticsResult::Delegate);
        }
        let mut stats = Statistics::clone(&stats);
        stats.total_byte_size = Precision::Inexact(estimate(config, plan.schema().fields().len()));
        Ok(StatisticsResult::Computed(ExtendedStatistics::new(stats)))
    }
}

/// Bytes of the files `config` reads, scaled by `columns` out of the table's.
fn estimate(config: &FileScanConfig, columns: usize) -> usize {
    let bytes: u64 = config
        .file_groups
        .iter()
        .flat_map(|group| group.iter())
        .map(|file| match &file.range {
            Some(range) => (range.end - range.start).max(0) as u64,
            None => file.object_meta.size,
        })
        .sum();
    let all = (config.file_schema().fields().len() + config.table_partition_cols().len()).max(1);
    let share = columns.min(all) as f64 / all as f64;
    (bytes as f64 * share) as usize
}
