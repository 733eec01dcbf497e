//! `toConsole`: prints the first rows as a table, like Spark's `show()`.

use std::sync::Arc;

use async_trait::async_trait;
use dataflow_engine::connector::{BoxError, Sink, SinkReport, WriteContext};
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::dataframe::DataFrame;
use serde::Deserialize;

/// `toConsole` config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConsoleConfig {
    /// Rows to print. Default 20.
    #[serde(default = "default_rows")]
    num_rows: usize,
}

fn default_rows() -> usize {
    20
}

#[derive(Debug)]
struct ConsoleSink {
    config: ConsoleConfig,
}

/// Builds a `toConsole` sink from its step config.
pub(crate) fn sink(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Sink>> {
    Ok(Arc::new(ConsoleSink {
        config: info.parse()?,
    }))
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn write(&self, input: DataFrame, _ctx: WriteContext) -> Result<SinkReport, BoxError> {
        let n = self.config.num_rows;
        // One row more than shown tells whether the output was cut (no limit
        // at all when `numRows` is the largest count: `n + 1` would wrap).
        let batches = input.limit(0, n.checked_add(1))?.collect().await?;
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let shown: Vec<_> = {
            let mut left = n;
            batches
                .into_iter()
                .filter_map(|b| {
                    let take = left.min(b.num_rows());
                    left -= take;
                    (take > 0).then(|| b.slice(0, take))
                })
                .collect()
        };
        println!("{}", pretty_format_batches(&shown)?);
        if total > n {
            println!("only showing the first {n} rows");
        }
        Ok(SinkReport {
            rows: total.min(n) as u64,
            bytes: 0,
            detail: "printed".to_string(),
        })
    }
}
