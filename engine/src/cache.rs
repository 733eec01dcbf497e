//! `cache` steps: a relation computed at most once per run and shared by all
//! its consumers, in memory or in Arrow IPC files of the run's disk manager
//! (the spill directory).
//!
//! The cached relation is a [`StreamingTable`] whose partitions wait on one
//! shared computation; nothing is computed until a sink first reads it.

use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::execution::disk_manager::DiskManager;
use datafusion::execution::spill_file::SpillFile;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream_partitioned;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::spec::StorageLevel;

/// The materialized data, one entry per output partition.
enum Materialized {
    Memory(Vec<Vec<RecordBatch>>),
    /// Spill files of the run's disk manager, deleted when dropped.
    Disk(Vec<Arc<dyn SpillFile>>),
}

/// Shared state of one cached relation.
pub struct CacheState {
    plan: LogicalPlan,
    state: SessionState,
    level: StorageLevel,
    partitions: usize,
    data: OnceCell<Materialized>,
    computations: AtomicUsize,
    rows: AtomicU64,
}

impl fmt::Debug for CacheState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheState")
            .field("level", &self.level)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl CacheState {
    /// How many times the input was computed (0 or 1 in a healthy run).
    pub fn computations(&self) -> usize {
        self.computations.load(Ordering::Relaxed)
    }

    /// Rows held by the cache once computed.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// The storage level.
    pub fn level(&self) -> StorageLevel {
        self.level
    }

    async fn materialize(&self, task: Arc<TaskContext>) -> Result<&Materialized> {
        self.data
            .get_or_try_init(|| async {
                self.computations.fetch_add(1, Ordering::Relaxed);
                let physical = self.state.create_physical_plan(&self.plan).await?;
                let streams = execute_stream_partitioned(physical, task.clone())?;
                let data = match self.level {
                    StorageLevel::Memory => self.collect_memory(streams).await?,
                    StorageLevel::MemoryAndDisk => {
                        self.collect_disk(streams, task.runtime_env().disk_manager.clone())
                            .await?
                    }
                };
                Ok::<_, DataFusionError>(data)
            })
            .await
    }

    async fn collect_memory(
        &self,
        streams: Vec<SendableRecordBatchStream>,
    ) -> Result<Materialized> {
        let collected =
            futures::future::try_join_all(streams.into_iter().map(|s| s.try_collect::<Vec<_>>()))
                .await?;
        let mut buckets = vec![Vec::new(); self.partitions];
        for (i, batches) in collected.into_iter().enumerate() {
            for batch in batches {
                self.rows
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                buckets[i % self.partitions].push(batch);
            }
        }
        Ok(Materialized::Memory(buckets))
    }

    async fn collect_disk(
        &self,
        streams: Vec<SendableRecordBatchStream>,
        disks: Arc<DiskManager>,
    ) -> Result<Materialized> {
        let writes = streams.into_iter().enumerate().map(|(i, mut stream)| {
            let disks = disks.clone();
            async move {
                let file = disks.create_tmp_file(&format!("caching partition {i}"))?;
                let mut writer =
                    FileWriter::try_new(BufWriter::new(file.open_writer()?), &stream.schema())?;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    self.rows
                        .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    writer.write(&batch)?;
                }
                writer.finish()?;
                writer
                    .into_inner()?
                    .into_inner()
                    .map_err(|e| DataFusionError::IoError(e.into_error()))?
                    .finish()?;
                Ok::<_, DataFusionError>(file)
            }
        });
        let files = futures::future::try_join_all(writes).await?;
        Ok(Materialized::Disk(files))
    }
}

/// One partition of the cached relation as seen by a consumer.
#[derive(Debug)]
struct CachePartition {
    cache: Arc<CacheState>,
    schema: SchemaRef,
    index: usize,
}

impl PartitionStream for CachePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, task: Arc<TaskContext>) -> SendableRecordBatchStream {
        let cache = self.cache.clone();
        let index = self.index;
        let batches = futures::stream::once(async move {
            let batches: BoxStream<'static, Result<RecordBatch>> =
                match cache.materialize(task).await? {
                    Materialized::Memory(buckets) => {
                        futures::stream::iter(buckets[index].clone().into_iter().map(Ok)).boxed()
                    }
                    // Read lazily, a batch at a time, file after file.
                    Materialized::Disk(files) => {
                        let readers = files
                            .iter()
                            .skip(index)
                            .step_by(cache.partitions)
                            .map(open_cache_file)
                            .collect::<Result<Vec<_>>>()?;
                        let batches = readers.into_iter().flatten();
                        futures::stream::iter(batches.map(|b| b.map_err(DataFusionError::from)))
                            .boxed()
                    }
                };
            Ok::<_, DataFusionError>(batches)
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

/// A reader of one cache file written by [`CacheState`].
fn open_cache_file(file: &Arc<dyn SpillFile>) -> Result<FileReader<File>> {
    let path = file
        .path()
        .ok_or_else(|| DataFusionError::Internal("a cache file has no local path".into()))?;
    Ok(FileReader::try_new(File::open(path)?, None)?)
}

/// Wraps `plan` in a cache; returns the table to read it through and the
/// shared state (for the run summary).
pub(crate) fn cached_table(
    plan: LogicalPlan,
    state: SessionState,
    level: StorageLevel,
) -> Result<(Arc<dyn TableProvider>, Arc<CacheState>)> {
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let partitions = state.config().target_partitions().max(1);
    let cache = Arc::new(CacheState {
        plan,
        state,
        level,
        partitions,
        data: OnceCell::new(),
        computations: AtomicUsize::new(0),
        rows: AtomicU64::new(0),
    });
    let streams = (0..partitions)
        .map(|index| {
            Arc::new(CachePartition {
                cache: cache.clone(),
                schema: schema.clone(),
                index,
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    let table = StreamingTable::try_new(schema, streams)?;
    Ok((Arc::new(table), cache))
}
