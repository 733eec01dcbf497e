//! Running one binary COPY and streaming its rows as record batches, with
//! retries of a partition whose connection was lost before it emitted rows.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::mpsc::Sender;
use tokio_postgres::{Client, CopyOutStream};

use dataflow_engine::ops::retry::{retry_when, GaveUp, RetryPolicy};
use dataflow_engine::spec::Backoff;

use super::connect::Connector;
use super::copy::CopyDecoder;
use super::types::PgKind;
use crate::error::{ConnectorError, Result};
use crate::scan_exec::PartitionReader;

/// Delays between a partition's attempts: from 250 ms, doubling (with
/// jitter, as for runs) up to 30 s.
const BACKOFF: Backoff = Backoff {
    initial_ms: 250,
    max_ms: 30_000,
};

/// The rows of one `COPY (SELECT ...) TO STDOUT (FORMAT binary)`, batch by batch.
pub(crate) struct CopyReader {
    stream: Pin<Box<CopyOutStream>>,
    decoder: Option<CopyDecoder>,
    /// Keeps the connection open while the stream is read.
    _client: Client,
}

impl CopyReader {
    /// Connects and starts the COPY of `select`, whose columns are `kinds`.
    pub(crate) async fn open(
        connector: &Connector,
        select: &str,
        schema: SchemaRef,
        kinds: &[PgKind],
        batch_size: usize,
    ) -> Result<Self> {
        let client = connector.connect().await?;
        let copy = format!("COPY ({select}) TO STDOUT (FORMAT binary)");
        let stream = client
            .copy_out(copy.as_str())
            .await
            .map_err(|e| connector.error("COPY", &e))?;
        Ok(CopyReader {
            stream: Box::pin(stream),
            decoder: Some(CopyDecoder::new(schema, kinds, batch_size)?),
            _client: client,
        })
    }

    /// The next batch, `None` at the end; `connector` redacts errors.
    pub(crate) async fn next_batch(
        &mut self,
        connector: &Connector,
    ) -> Result<Option<RecordBatch>> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(None);
            };
            if let Some(batch) = decoder.next_batch() {
                return Ok(Some(batch));
            }
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| {
                        let rows = decoder.rows_decoded();
                        connector.error(&format!("COPY (after {rows} rows)"), &e)
                    })?;
                    decoder.push(&chunk)?;
                }
                None => return self.decoder.take().map_or(Ok(None), CopyDecoder::finish),
            }
        }
    }
}

/// One output partition's read: the query and how to decode and retry it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionRead {
    /// Where to connect.
    pub connector: Arc<Connector>,
    /// The SELECT to copy.
    pub select: String,
    /// Its output schema.
    pub schema: SchemaRef,
    /// The PostgreSQL kind of every column.
    pub kinds: Vec<PgKind>,
    /// Rows per batch.
    pub batch_size: usize,
    /// Attempts after the first when the connection is lost.
    pub retries: u32,
    /// `partition i of n`, for messages.
    pub label: String,
}

impl PartitionReader for PartitionRead {
    fn describe(&self) -> String {
        self.select.clone()
    }

    fn read(&self, tx: Sender<DfResult<RecordBatch>>) -> BoxFuture<'static, DfResult<()>> {
        Box::pin(self.clone().run(tx))
    }
}

/// A failed attempt at a partition, and how many rows it had passed on.
struct FailedAttempt {
    err: ConnectorError,
    sent: u64,
}

impl FailedAttempt {
    /// A lost connection is worth retrying only before any row was passed
    /// on: a COPY restarted after that could not tell which rows were
    /// already delivered.
    fn retryable(&self) -> bool {
        self.err.is_retryable() && self.sent == 0
    }
}

impl PartitionRead {
    /// Reads the partition into `tx`. A lost connection is retried through
    /// the run's retry loop ([`retry_when`], with [`BACKOFF`]), up to
    /// `retries` times, as long as this partition has not yet passed any
    /// row on; otherwise the read fails (and the run commits nothing).
    /// DataFusion cancels a query by dropping this future, which also ends
    /// a wait between attempts.
    async fn run(self, tx: Sender<DfResult<RecordBatch>>) -> DfResult<()> {
        let policy = RetryPolicy {
            retries: self.retries,
            backoff: BACKOFF,
        };
        let attempt = |_| async {
            let mut sent = 0u64;
            let result = self.attempt(&tx, &mut sent).await;
            result.map_err(|err| FailedAttempt { err, sent })
        };
        let on_retry = |n: u32, failed: &FailedAttempt, delay: Duration| {
            let (label, err, retries) = (&self.label, &failed.err, self.retries);
            tracing::warn!("{label}: {err}; retry {n} of {retries} in {delay:?}");
        };
        let result = retry_when(&policy, None, attempt, FailedAttempt::retryable, on_retry);
        match result.await {
            Ok(()) => Ok(()),
            Err(GaveUp::Failed { err, retries }) => Err(self.gave_up(err, retries)),
            Err(GaveUp::Cancelled) => Err(DataFusionError::Execution(format!(
                "{}: cancelled",
                self.label
            ))),
        }
    }

    /// The error of a partition that gave up after `retries` retries.
    fn gave_up(&self, failed: FailedAttempt, retries: u32) -> DataFusionError {
        let FailedAttempt { err, sent } = failed;
        let note = if err.is_retryable() && sent > 0 && self.retries > 0 {
            format!(" (not retried: {sent} rows had already been passed on)")
        } else if retries > 0 {
            format!(" (after {retries} retries)")
        } else {
            String::new()
        };
        DataFusionError::External(Box::new(
            err.with_postgres_context(&format!(", {}", self.label), &note),
        ))
    }

    async fn attempt(&self, tx: &Sender<DfResult<RecordBatch>>, sent: &mut u64) -> Result<()> {
        let mut reader = CopyReader::open(
            &self.connector,
            &self.select,
            self.schema.clone(),
            &self.kinds,
            self.batch_size,
        )
        .await?;
        while let Some(batch) = reader.next_batch(&self.connector).await? {
            *sent += batch.num_rows() as u64;
            if tx.send(Ok(batch)).await.is_err() {
                // The consumer stopped (a LIMIT was reached, or the run ended).
                break;
            }
        }
        Ok(())
    }
}
