//! `toKafka`: every row becomes one record (a JSON object, or a column's
//! bytes), keyed by `keyColumn`. The producer is idempotent; with
//! `exactlyOnce` it is transactional and puts the offsets the batch consumed
//! from Kafka into the same transaction, so Kafka → Kafka pipelines write
//! every record exactly once for `read_committed` consumers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dataflow_engine::connector::{BoxError, Mark, Sink, SinkReport, WriteContext};
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::client::{
    blocking, kafka_error, kafka_failure, ClientSettings, Consumer as KafkaConsumer, Context,
    WRITER_RESERVED,
};
use crate::error::{ConnectorError, Result};

/// How long transaction and offset requests may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Records in flight before the sink waits for deliveries.
const IN_FLIGHT: usize = 50_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ValueFormat {
    /// The row as a JSON object.
    #[default]
    Json,
    /// `valueColumn`'s bytes (binary or string).
    Raw,
}

/// `toKafka` config (plus `kafka.*` librdkafka settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ToKafkaConfig {
    /// `host:port,...`.
    bootstrap_servers: String,
    /// The topic records go to.
    topic: String,
    /// The column whose value (as text, or bytes if binary) keys each
    /// record; records without a key are spread over the partitions.
    key_column: Option<String>,
    /// json (default) or raw.
    #[serde(default)]
    format: ValueFormat,
    /// raw: the column holding the value (default `value`).
    value_column: Option<String>,
    /// A transactional producer that commits the records together with the
    /// consumed Kafka offsets.
    #[serde(default)]
    exactly_once: bool,
}

/// The `toKafka` sink.
struct KafkaSink {
    config: ToKafkaConfig,
    client: ClientSettings,
    /// Created on the first write, kept for the life of a stream.
    producer: Mutex<Option<Arc<FutureProducer<Context>>>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Builds a `toKafka` sink from its step config.
pub(crate) fn sink(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Sink>> {
    let (config, client) = ClientSettings::parse_step(
        info,
        |c: &ToKafkaConfig| c.bootstrap_servers.as_str(),
        WRITER_RESERVED,
    )?;
    if config.topic.is_empty() {
        return Err(info.error("topic", "must not be empty"));
    }
    if config.format == ValueFormat::Json && config.value_column.is_some() {
        return Err(info.error(
            "valueColumn",
            "only applies with format raw (json writes the whole row)",
        ));
    }
    Ok(Arc::new(KafkaSink {
        config,
        client,
        producer: Mutex::new(None),
    }))
}

/// A mark's app id is `<scope>/<topic>/<partition>`: the consumer group
/// that holds its offset (the scope) and the partition.
fn split_app_id(app_id: &str) -> Option<(&str, &str, i32)> {
    let mut parts = app_id.rsplitn(3, '/');
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?;
    let scope = parts.next()?;
    Some((scope, topic, partition))
}

/// Marks grouped by consumer group: group → offsets.
fn offsets_by_group(marks: &[Mark]) -> Result<BTreeMap<String, TopicPartitionList>> {
    let mut groups: BTreeMap<String, TopicPartitionList> = BTreeMap::new();
    for mark in marks {
        if let Some((scope, topic, partition)) = split_app_id(&mark.app_id) {
            groups
                .entry(scope.to_string())
                .or_default()
                .add_partition_offset(topic, partition, Offset::Offset(mark.version))
                .map_err(|e| ConnectorError::Rejected(format!("offset of {}: {e}", mark.app_id)))?;
        }
    }
    Ok(groups)
}

impl KafkaSink {
    fn servers(&self) -> &str {
        &self.client.bootstrap_servers
    }

    /// The producer, created (and, for exactly-once, registered with the
    /// transaction coordinator) on first use.
    async fn producer(&self, marks: &[Mark]) -> Result<Arc<FutureProducer<Context>>> {
        let mut slot = self.producer.lock().await;
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let mut config = self.client.config();
        if config.get("linger.ms").is_none() {
            config.set("linger.ms", "5");
        }
        config.set("enable.idempotence", "true");
        if self.config.exactly_once && config.get("transactional.id").is_none() {
            // Stable across restarts, so a new process fences the old one.
            let scope = marks
                .first()
                .and_then(|m| split_app_id(&m.app_id))
                .map_or("dataflow", |(scope, _, _)| scope);
            config.set(
                "transactional.id",
                format!("{scope}/toKafka/{}", self.config.topic),
            );
        }
        let producer: FutureProducer<Context> =
            self.client.create(&config, "creating a producer")?;
        let producer = Arc::new(producer);
        if self.config.exactly_once {
            let p = producer.clone();
            let servers = self.servers().to_string();
            blocking(move || {
                p.init_transactions(TIMEOUT)
                    .map_err(|e| kafka_error("initializing transactions", &servers, e))
            })
            .await?;
        }
        *slot = Some(producer.clone());
        Ok(producer)
    }

    /// Produces every row of `input`; the number of records and bytes.
    async fn produce(
        &self,
        producer: &FutureProducer<Context>,
        input: DataFrame,
    ) -> Result<(u64, u64)> {
        let schema = input.schema().as_arrow().clone();
        let encoder = Encoder::new(&self.config, &schema)?;
        let mut stream = input.execute_stream().await?;
        let mut in_flight: FuturesUnordered<DeliveryFuture> = FuturesUnordered::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let (keys, values) = encoder.encode(&batch).map_err(DataFusionError::from)?;
            for (i, value) in values.iter().enumerate() {
                let key = keys
                    .as_ref()
                    .and_then(|k| k.is_valid(i).then(|| k.value(i)));
                loop {
                    let mut record = FutureRecord::<[u8], [u8]>::to(&self.config.topic);
                    if let Some(value) = value {
                        record = record.payload(value);
                    }
                    if let Some(key) = key {
                        record = record.key(key);
                    }
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            in_flight.push(delivery);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // Wait for a delivery to make room.
                            match in_flight.next().await {
                                Some(done) => self.delivered(done)?,
                                None => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                        Err((e, _)) => return Err(kafka_error("producing", self.servers(), e)),
                    }
                }
                records += 1;
                bytes += value.as_ref().map_or(0, Vec::len) as u64;
                while in_flight.len() >= IN_FLIGHT {
                    let done = in_flight.next().await.expect("records in flight");
                    self.delivered(done)?;
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            self.delivered(done)?;
        }
        Ok((records, bytes))
    }

    fn delivered(&self, outcome: <DeliveryFuture as std::future::Future>::Output) -> Result<()> {
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(kafka_error("delivering a record", self.servers(), e)),
            Err(_) => Err(kafka_failure(
                "delivering a record",
                self.servers(),
                "the producer went away",
                None,
            )),
        }
    }

    /// One transaction: the records and the consumed offsets, committed
    /// only when every sink of the run is ready.
    async fn write_transaction(
        &self,
        producer: Arc<FutureProducer<Context>>,
        input: DataFrame,
        ctx: &WriteContext,
    ) -> Result<(u64, u64)> {
        self.in_transaction(&producer, "beginning a transaction", |p| {
            p.begin_transaction()
        })
        .await?;
        let staged = self.stage(&producer, input, ctx).await;
        let ended = match &staged {
            Ok(_) => {
                self.in_transaction(&producer, "committing the transaction", |p| {
                    p.commit_transaction(TIMEOUT)
                })
                .await
            }
            Err(_) => {
                self.in_transaction(&producer, "aborting the transaction", |p| {
                    p.abort_transaction(TIMEOUT)
                })
                .await
            }
        };
        if let Err(e) = &ended {
            // The producer may be fenced or in an unknown state: start over
            // with a new one next time.
            tracing::warn!("{e}");
            *self.producer.lock().await = None;
        }
        let written = staged?;
        ended?;
        Ok(written)
    }

    /// Runs one of the producer's blocking transaction calls (`doing`)
    /// off the async threads.
    async fn in_transaction(
        &self,
        producer: &Arc<FutureProducer<Context>>,
        doing: &'static str,
        call: impl FnOnce(&FutureProducer<Context>) -> KafkaResult<()> + Send + 'static,
    ) -> Result<()> {
        let p = producer.clone();
        let servers = self.servers().to_string();
        blocking(move || call(&p).map_err(|e| kafka_error(doing, &servers, e))).await
    }

    /// The open transaction's content: every row of `input`, then the
    /// offsets the batch consumed; done when every sink of the run is ready.
    async fn stage(
        &self,
        producer: &Arc<FutureProducer<Context>>,
        input: DataFrame,
        ctx: &WriteContext,
    ) -> Result<(u64, u64)> {
        let written = self.produce(producer, input).await?;
        for (group, offsets) in offsets_by_group(&ctx.marks)? {
            self.send_offsets(producer, group, offsets).await?;
        }
        ctx.gate.ready().await?;
        Ok(written)
    }

    /// Adds consumer group `group`'s `offsets` to the open transaction.
    async fn send_offsets(
        &self,
        producer: &Arc<FutureProducer<Context>>,
        group: String,
        offsets: TopicPartitionList,
    ) -> Result<()> {
        let p = producer.clone();
        let s = self.servers().to_string();
        let client = self.client.clone();
        blocking(move || {
            let consumer: KafkaConsumer = client.create(
                &client.range_reader_config(&group, true),
                "creating a client",
            )?;
            let metadata = consumer.group_metadata().ok_or_else(|| {
                kafka_failure(
                    "adding offsets to the transaction",
                    &s,
                    "no group metadata",
                    None,
                )
            })?;
            p.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
                .map_err(|e| kafka_error("adding offsets to the transaction", &s, e))
        })
        .await
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&self, input: DataFrame, ctx: WriteContext) -> Result<SinkReport, BoxError> {
        let producer = self.producer(&ctx.marks).await?;
        let (records, bytes) = if self.config.exactly_once {
            self.write_transaction(producer, input, &ctx).await?
        } else {
            let written = self.produce(&producer, input).await?;
            // Delivered already: Kafka without transactions is at-least-once.
            ctx.gate.ready().await?;
            written
        };
        Ok(SinkReport {
            rows: records,
            bytes,
            detail: format!(
                "{records} records to topic {}{}",
                self.config.topic,
                if self.config.exactly_once {
                    " (committed transaction)"
                } else {
                    ""
                }
            ),
        })
    }

    async fn recorded_marks(
        &self,
        app_ids: &[String],
    ) -> Result<Option<HashMap<String, i64>>, BoxError> {
        if !self.config.exactly_once {
            return Ok(None);
        }
        let marks: Vec<Mark> = app_ids
            .iter()
            .map(|app_id| Mark {
                app_id: app_id.clone(),
                version: 0,
            })
            .collect();
        let groups = offsets_by_group(&marks)?;
        let client = self.client.clone();
        let servers = self.servers().to_string();
        let recorded = blocking(move || {
            let mut recorded = HashMap::new();
            for (group, partitions) in groups {
                let consumer: KafkaConsumer = client.create(
                    &client.range_reader_config(&group, true),
                    "creating a client",
                )?;
                let committed = consumer
                    .committed_offsets(partitions, TIMEOUT)
                    .map_err(|e| kafka_error("reading committed offsets", &servers, e))?;
                for element in committed.elements() {
                    if let Offset::Offset(offset) = element.offset() {
                        recorded.insert(
                            format!("{group}/{}/{}", element.topic(), element.partition()),
                            offset,
                        );
                    }
                }
            }
            Ok(recorded)
        })
        .await?;
        Ok(Some(recorded))
    }
}

/// A batch's record keys (when keyed) and values.
type Encoded = (Option<BinaryArray>, Vec<Option<Vec<u8>>>);

/// Turns rows into record keys and values.
#[derive(Debug)]
struct Encoder {
    format: ValueFormat,
    key: Option<usize>,
    value: Option<usize>,
}

impl Encoder {
    /// Checks the columns the config names against `schema`.
    fn new(config: &ToKafkaConfig, schema: &Schema) -> Result<Self> {
        let column = |name: &str, key: &str| {
            schema.index_of(name).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                ConnectorError::Rejected(format!(
                    "{key} \"{name}\" is not a column of the input (columns: {})",
                    names.join(", ")
                ))
            })
        };
        let key = config
            .key_column
            .as_deref()
            .map(|name| column(name, "keyColumn"))
            .transpose()?;
        let value = match config.format {
            ValueFormat::Json => None,
            ValueFormat::Raw => Some(column(
                config.value_column.as_deref().unwrap_or("value"),
                "valueColumn",
            )?),
        };
        Ok(Encoder {
            format: config.format,
            key,
            value,
        })
    }

    /// The keys (if keyed) and values of `batch`'s rows.
    fn encode(&self, batch: &RecordBatch) -> Result<Encoded, ArrowError> {
        let keys = self.key.map(|i| as_bytes(batch.column(i))).transpose()?;
        let values = match (self.format, self.value) {
            (ValueFormat::Raw, Some(i)) => {
                let bytes = as_bytes(batch.column(i))?;
                (0..bytes.len())
                    .map(|row| bytes.is_valid(row).then(|| bytes.value(row).to_vec()))
                    .collect()
            }
            _ => {
                let mut writer = LineDelimitedWriter::new(Vec::new());
                writer.write(batch)?;
                writer.finish()?;
                let text = writer.into_inner();
                text.split(|b| *b == b'\n')
                    .take(batch.num_rows())
                    .map(|line| Some(line.to_vec()))
                    .collect()
            }
        };
        Ok((keys, values))
    }
}

/// A column as bytes: binary as is, anything else as its text.
fn as_bytes(column: &ArrayRef) -> Result<BinaryArray, ArrowError> {
    let text = match column.data_type() {
        DataType::Binary | DataType::Utf8 => column.clone(),
        _ => cast(column, &DataType::Utf8)?,
    };
    let bytes = cast(&text, &DataType::Binary)?;
    Ok(bytes
        .as_any()
        .downcast_ref::<BinaryArray>()
        .expect("cast to Binary")
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;

    fn config(format: ValueFormat, key: Option<&str>, value: Option<&str>) -> ToKafkaConfig {
        ToKafkaConfig {
            bootstrap_servers: "x:1".into(),
            topic: "t".into(),
            key_column: key.map(String::from),
            format,
            value_column: value.map(String::from),
            exactly_once: false,
        }
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("a\"b"), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn json_rows_keyed_by_a_column() {
        let batch = batch();
        let encoder = Encoder::new(
            &config(ValueFormat::Json, Some("id"), None),
            &batch.schema(),
        )
        .unwrap();
        let (keys, values) = encoder.encode(&batch).unwrap();
        let keys = keys.unwrap();
        assert_eq!(keys.value(0), b"1");
        assert!(keys.is_null(1));
        assert_eq!(
            values[0].as_deref(),
            Some(&br#"{"id":1,"name":"a\"b"}"#[..])
        );
        assert_eq!(values[1].as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn raw_values_and_unknown_columns() {
        let batch = batch();
        let encoder = Encoder::new(
            &config(ValueFormat::Raw, None, Some("name")),
            &batch.schema(),
        )
        .unwrap();
        let (keys, values) = encoder.encode(&batch).unwrap();
        assert!(keys.is_none());
        assert_eq!(values, vec![Some(b"a\"b".to_vec()), None]);
        let err = Encoder::new(&config(ValueFormat::Raw, None, None), &batch.schema()).unwrap_err();
        assert!(err.to_string().contains("valueColumn \"value\""), "{err}");
    }

    #[test]
    fn app_ids_split_into_group_and_partition() {
        assert_eq!(
            split_app_id("dataflow/p/events/in/3"),
            Some(("dataflow/p/events", "in", 3))
        );
        assert_eq!(split_app_id("nonsense"), None);
    }
}
