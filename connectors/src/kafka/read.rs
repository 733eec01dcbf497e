//! Reading one partition's offset range with its own consumer (assigned,
//! never joining a group), decoding as records arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dataflow_engine::spec::StorageOptions;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::error::{DataFusionError, Result as DfResult};
use futures::future::BoxFuture;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::Sender;

use super::client::{ClientSettings, Consumer as KafkaConsumer, Context};
use super::decode::{BadRecord, Format, Pending};
use crate::error::ConnectorError;
use crate::scan_exec::PartitionReader;

/// A read that makes no progress for this long fails (the broker is gone).
const STALL: Duration = Duration::from_secs(60);
/// A read with short fetch waits that gets nothing for this long tries
/// again with librdkafka's default wait.
const QUICK_STALL: Duration = Duration::from_secs(3);

/// How far a range read got.
struct Cursor {
    /// The next offset to read.
    next: i64,
    /// Records read but not yet sent.
    pending: Pending,
    /// The last client error seen, for the stall message.
    last_error: Option<KafkaError>,
}

/// What to do with a record whose value cannot be decoded.
#[derive(Debug)]
pub(crate) enum OnDecodeError {
    /// Fail the batch, naming the record.
    Fail,
    /// Drop it; counted.
    Skip(AtomicU64),
    /// Append it, with the reason, to the Delta table at this path (on
    /// the pipeline's store for it).
    DeadLetter(String, StorageOptions),
}

/// What every partition read of one `fromKafka` step shares.
#[derive(Debug)]
pub(crate) struct ReadSettings {
    /// Where to connect.
    pub client: ClientSettings,
    /// How values are decoded.
    pub format: Format,
    /// The full table schema.
    pub schema: SchemaRef,
    /// Records per Arrow batch.
    pub batch_size: usize,
    /// Bad values.
    pub on_decode_error: OnDecodeError,
}

/// One partition's offsets `[start, end)`, read into `projection` columns.
#[derive(Debug)]
pub(crate) struct RangeRead {
    pub settings: Arc<ReadSettings>,
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub projection: Option<Vec<usize>>,
}

impl PartitionReader for RangeRead {
    fn describe(&self) -> String {
        format!(
            "{}/{} offsets {}..{}",
            self.topic, self.partition, self.start, self.end
        )
    }

    fn read(&self, tx: Sender<DfResult<RecordBatch>>) -> BoxFuture<'static, DfResult<()>> {
        let read = RangeRead {
            settings: self.settings.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            start: self.start,
            end: self.end,
            projection: self.projection.clone(),
        };
        let runtime = tokio::runtime::Handle::current();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read.run(&tx, &runtime))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        })
    }
}

impl RangeRead {
    /// A failed read at `offset`, with librdkafka's `code` when known.
    fn error(
        &self,
        offset: i64,
        message: impl std::fmt::Display,
        code: Option<RDKafkaErrorCode>,
    ) -> DataFusionError {
        DataFusionError::External(Box::new(ConnectorError::Kafka {
            context: format!(
                "reading Kafka {}/{} at offset {offset}",
                self.topic, self.partition
            ),
            message: message.to_string(),
            code,
        }))
    }

    fn run(
        &self,
        tx: &Sender<DfResult<RecordBatch>>,
        runtime: &tokio::runtime::Handle,
    ) -> DfResult<()> {
        let mut cursor = Cursor {
            next: self.start,
            pending: Pending::default(),
            last_error: None,
        };
        // Short fetch waits first. A broker that answers them with nothing
        // at all (tansu, deep into a partition of many small batches) gets
        // a consumer with librdkafka's default wait instead.
        let mut quick = true;
        loop {
            let client = &self.settings.client;
            let consumer: KafkaConsumer = client
                .range_reader_config("dataflow-reader", quick)
                .set("auto.offset.reset", "error")
                .create_with_context(Context::default())
                .map_err(|e| {
                    let code = e.rdkafka_error_code();
                    self.error(cursor.next, client.describe(&e), code)
                })?;
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&self.topic, self.partition, Offset::Offset(cursor.next))
                .and_then(|_| consumer.assign(&assignment))
                .map_err(|e| self.error(cursor.next, &e, e.rdkafka_error_code()))?;
            let patience = if quick { QUICK_STALL } else { STALL };
            if self.read_range(&consumer, &mut cursor, patience, tx, runtime)? {
                return Ok(());
            }
            if !quick {
                let code = cursor
                    .last_error
                    .as_ref()
                    .and_then(|e| e.rdkafka_error_code());
                let cause = cursor
                    .last_error
                    .map_or("no records arrive".to_string(), |e| e.to_string());
                return Err(self.error(
                    cursor.next,
                    format!("no progress for {}s: {cause}", STALL.as_secs()),
                    code,
                ));
            }
            tracing::debug!(
                "Kafka {}/{}: nothing with short fetch waits at offset {}; reading with the default wait",
                self.topic,
                self.partition,
                cursor.next
            );
            quick = false;
        }
    }

    /// Reads from `consumer` (assigned at `cursor.next`) up to the end of
    /// the range, sending batches: true when done (or no one listens any
    /// more), false when nothing arrived for `patience`.
    fn read_range(
        &self,
        consumer: &KafkaConsumer,
        cursor: &mut Cursor,
        patience: Duration,
        tx: &Sender<DfResult<RecordBatch>>,
        runtime: &tokio::runtime::Handle,
    ) -> DfResult<bool> {
        let mut progress = Instant::now();
        while cursor.next < self.end {
            if tx.is_closed() {
                return Ok(true);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    progress = Instant::now();
                    if message.offset() >= self.end {
                        break;
                    }
                    cursor.next = message.offset() + 1;
                    cursor.pending.push(&message);
                    if cursor.pending.len() >= self.settings.batch_size
                        && !self.send(std::mem::take(&mut cursor.pending), tx, runtime)?
                    {
                        return Ok(true);
                    }
                }
                // Nothing more in the partition (the range ends in
                // transaction markers or compacted records).
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    return Err(self.error(
                        cursor.next,
                        "the offset is no longer in Kafka (deleted by retention?). Help: set failOnDataLoss to false to skip what was lost",
                        None,
                    ));
                }
                // Broker restarts and the like: librdkafka reconnects.
                Some(Err(e)) => {
                    tracing::debug!("Kafka {}/{}: {e}", self.topic, self.partition);
                    cursor.last_error = Some(e);
                }
                None => {}
            }
            if progress.elapsed() > patience {
                return Ok(false);
            }
        }
        let pending = std::mem::take(&mut cursor.pending);
        if pending.len() > 0 {
            self.send(pending, tx, runtime)?;
        }
        Ok(true)
    }

    /// Decodes `pending` and sends the rows; false when the consumer is gone.
    fn send(
        &self,
        pending: Pending,
        tx: &Sender<DfResult<RecordBatch>>,
        runtime: &tokio::runtime::Handle,
    ) -> DfResult<bool> {
        let settings = &self.settings;
        let (batch, bad) = pending.decode(
            &settings.format,
            &settings.schema,
            &self.topic,
            self.partition,
        )?;
        if let Some(first) = bad.first() {
            match &settings.on_decode_error {
                OnDecodeError::Fail => {
                    return Err(self.error(
                        first.offset,
                        format!(
                            "cannot decode the value: {}. Help: set onDecodeError to skip or deadLetter to let such records through",
                            first.error
                        ),
                        None,
                    ))
                }
                OnDecodeError::Skip(count) => {
                    count.fetch_add(bad.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        "skipped {} undecodable records of Kafka {}/{} (first at offset {}: {})",
                        bad.len(),
                        self.topic,
                        self.partition,
                        first.offset,
                        first.error
                    );
                }
                OnDecodeError::DeadLetter(path, storage) => {
                    let letters = dead_letters(&self.topic, self.partition, &bad)?;
                    runtime
                        .block_on(crate::delta::append(storage, path, letters))
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    tracing::warn!(
                        "{} undecodable records of Kafka {}/{} went to the dead-letter table {path}",
                        bad.len(),
                        self.topic,
                        self.partition
                    );
                }
            }
        }
        let batch = match &self.projection {
            Some(columns) => batch.project(columns)?,
            None => batch,
        };
        Ok(tx.blocking_send(Ok(batch)).is_ok())
    }
}

/// The dead-letter table's rows for `bad`.
fn dead_letters(topic: &str, partition: i32, bad: &[BadRecord]) -> DfResult<RecordBatch> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("error", DataType::Utf8, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let n = bad.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            bad.iter()
                .map(|b| b.key.as_deref())
                .collect::<BinaryArray>(),
        ),
        Arc::new(
            bad.iter()
                .map(|b| b.value.as_deref())
                .collect::<BinaryArray>(),
        ),
        Arc::new(StringArray::from(vec![topic; n])),
        Arc::new(Int32Array::from(vec![partition; n])),
        Arc::new(bad.iter().map(|b| b.offset).collect::<Int64Array>()),
        Arc::new(
            bad.iter()
                .map(|b| Some(b.error.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;

    use super::*;

    /// Produces `values` to t/0 in one committed transaction.
    fn produce(servers: &str, values: std::ops::Range<i64>) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("transactional.id", "read-test")
            .create()
            .unwrap();
        let timeout = Duration::from_secs(10);
        producer.init_transactions(timeout).unwrap();
        producer.begin_transaction().unwrap();
        for i in values {
            let value = i.to_string();
            producer
                .send(BaseRecord::<(), str>::to("t").partition(0).payload(&value))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(timeout).unwrap();
        producer.commit_transaction(timeout).unwrap();
    }

    /// Reads `start..end` of partition t/0: the offsets of the rows read.
    async fn read(servers: &str, start: i64, end: i64) -> DfResult<Vec<i64>> {
        let format = Format::Raw;
        let schema = format.output_schema();
        let read = RangeRead {
            settings: Arc::new(ReadSettings {
                client: ClientSettings {
                    bootstrap_servers: servers.to_string(),
                    passthrough: BTreeMap::new(),
                },
                format,
                schema,
                batch_size: 1000,
                on_decode_error: OnDecodeError::Fail,
            }),
            topic: "t".into(),
            partition: 0,
            start,
            end,
            projection: Some(vec![4]),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        read.read(tx).await?;
        let mut offsets = Vec::new();
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            offsets.extend(column.values().iter().copied());
        }
        Ok(offsets)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_range_ending_in_a_transaction_marker_is_done_at_the_marker() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let servers = cluster.bootstrap_servers();
        produce(&servers, 0..3);
        // Records 0..3, the commit marker at 3.
        let started = Instant::now();
        assert_eq!(read(&servers, 0, 4).await.unwrap(), [0, 1, 2]);
        assert!(started.elapsed() < QUICK_STALL, "{:?}", started.elapsed());
    }
}
