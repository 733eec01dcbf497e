//! `fromKafka`: which offsets a run reads, per partition, and the table
//! over them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dataflow_engine::connector::{BoxError, Opened, Resume, Source};
use dataflow_engine::schema::parse_column_list;
use dataflow_engine::spec::StepInfo;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::client::{
    blocking, kafka_error, ClientSettings, Consumer as KafkaConsumer, READER_RESERVED,
};
use super::decode::Format;
use super::read::{OnDecodeError, RangeRead, ReadSettings};
use crate::error::{ConnectorError, Result};
use crate::scan_exec::{PartitionReader, ReaderExec};

/// Records sampled per partition to infer a JSON schema.
const SAMPLE_PER_PARTITION: usize = 200;

/// A position as written in `startingOffsets` / `endingOffsets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Offsets {
    /// `earliest` or `latest`.
    Named(NamedOffset),
    /// `{"topic": {"0": 42, "1": -2}}`: -2 earliest, -1 latest; partitions
    /// not listed start at the earliest offset.
    Exact(BTreeMap<String, BTreeMap<String, i64>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum NamedOffset {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    #[default]
    Raw,
    Json,
    Debezium,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum DecodeErrorName {
    #[default]
    Fail,
    Skip,
    DeadLetter,
}

/// `fromKafka` config (plus `kafka.*` librdkafka settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FromKafkaConfig {
    /// `host:port,...`.
    bootstrap_servers: String,
    /// The topic (exclusive with `topics`).
    topic: Option<String>,
    /// Several topics.
    topics: Option<Vec<String>>,
    /// Where a partition without a recorded position starts (default
    /// earliest: nothing is skipped on a first run).
    #[serde(default = "earliest")]
    starting_offsets: Offsets,
    /// Batch mode and trigger once: where reading stops (default: the
    /// latest offsets when the run starts).
    ending_offsets: Option<Offsets>,
    /// Streaming: at most this many records per micro-batch, split over
    /// the partitions by how much each has waiting.
    max_offsets_per_trigger: Option<i64>,
    /// Fail when records to read were deleted (retention) before being read.
    #[serde(default = "yes")]
    fail_on_data_loss: bool,
    /// Consumer group the committed positions are also written to (for lag
    /// tools); reading never joins the group.
    group_id: Option<String>,
    /// raw (Spark's columns), json, or debezium (change events).
    #[serde(default)]
    format: FormatName,
    /// json: the value's columns, e.g. `"id BIGINT, kind VARCHAR"`;
    /// debezium: the row image's; inferred from a sample when absent.
    schema: Option<String>,
    /// fail, skip or deadLetter.
    #[serde(default)]
    on_decode_error: DecodeErrorName,
    /// deadLetter: the Delta table receiving undecodable records.
    dead_letter_path: Option<String>,
    /// Records per Arrow batch.
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    /// How long metadata, watermark and sampling requests may take, in
    /// milliseconds: a broker that is down fails the run (and `validate`)
    /// after this long.
    #[serde(default = "default_metadata_timeout_ms")]
    metadata_timeout_ms: u64,
}

impl FromKafkaConfig {
    fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.metadata_timeout_ms)
    }
}

fn earliest() -> Offsets {
    Offsets::Named(NamedOffset::Earliest)
}

fn yes() -> bool {
    true
}

fn default_batch_size() -> usize {
    8192
}

fn default_metadata_timeout_ms() -> u64 {
    10_000
}

/// The `fromKafka` source.
struct KafkaSource {
    config: FromKafkaConfig,
    topics: Vec<String>,
    client: ClientSettings,
    /// The step, for config errors found when a run opens the source.
    info: StepInfo,
    /// Where each partition without a recorded position starts, resolved
    /// from `startingOffsets` on the first open and kept for the life of the
    /// source (a stream): `latest` is the end when the stream started, not
    /// at every trigger. `None` before the first open.
    starts: Mutex<Option<HashMap<String, i64>>>,
    /// For metadata, watermarks and group commits; created on first use.
    consumer: Mutex<Option<Arc<KafkaConsumer>>>,
    /// The table schema, fixed for the life of the source.
    schema: OnceCell<(Format, SchemaRef)>,
    /// Records skipped as undecodable (onDecodeError skip).
    settings: OnceCell<Arc<ReadSettings>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("config", &self.config)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Builds a `fromKafka` source from its step config.
pub(crate) fn source(info: &StepInfo) -> dataflow_engine::Result<Arc<dyn Source>> {
    let (config, client) = ClientSettings::parse_step(
        info,
        |c: &FromKafkaConfig| c.bootstrap_servers.as_str(),
        READER_RESERVED,
    )?;
    let topics = match (&config.topic, &config.topics) {
        (Some(topic), None) => vec![topic.clone()],
        (None, Some(topics)) if !topics.is_empty() => topics.clone(),
        _ => return Err(info.error("topic", "set exactly one of topic and topics")),
    };
    if let Some(bad) = topics.iter().find(|t| t.is_empty() || t.contains('/')) {
        return Err(info.error("topic", format!("\"{bad}\" is not a topic name")));
    }
    check_offsets(&config.starting_offsets, false).map_err(|m| info.error("startingOffsets", m))?;
    if let Some(ending) = &config.ending_offsets {
        check_offsets(ending, true).map_err(|m| info.error("endingOffsets", m))?;
    }
    if config.batch_size == 0 {
        return Err(info.error("batchSize", "must be at least 1"));
    }
    if config.max_offsets_per_trigger.is_some_and(|m| m < 1) {
        return Err(info.error("maxOffsetsPerTrigger", "must be at least 1"));
    }
    if config.format == FormatName::Raw && config.schema.is_some() {
        return Err(info.error("schema", "only applies with format json or debezium"));
    }
    match (config.on_decode_error, &config.dead_letter_path) {
        (DecodeErrorName::DeadLetter, None) => return Err(info.error(
            "deadLetterPath",
            "onDecodeError deadLetter needs deadLetterPath, the Delta table receiving bad records",
        )),
        (DecodeErrorName::Fail | DecodeErrorName::Skip, Some(_)) => {
            return Err(info.error(
                "deadLetterPath",
                "only applies with onDecodeError deadLetter",
            ))
        }
        (_, Some(path)) => crate::storage::check_path(info, "deadLetterPath", path)?,
        _ => {}
    }
    if config.on_decode_error != DecodeErrorName::Fail && config.format == FormatName::Raw {
        return Err(info.error(
            "onDecodeError",
            "only applies with format json or debezium (raw values are never decoded)",
        ));
    }
    Ok(Arc::new(KafkaSource {
        config,
        topics,
        client,
        info: info.clone(),
        starts: Mutex::new(None),
        consumer: Mutex::new(None),
        schema: OnceCell::new(),
        settings: OnceCell::new(),
    }))
}

impl KafkaSource {
    /// The shared consumer (metadata, watermarks, group commits).
    fn consumer(&self) -> Result<Arc<KafkaConsumer>> {
        let mut slot = self.consumer.lock().expect("consumer lock");
        if let Some(consumer) = slot.as_ref() {
            return Ok(consumer.clone());
        }
        let consumer: KafkaConsumer = self.client.create(
            &self
                .client
                .range_reader_config(self.config.group_id.as_deref().unwrap_or("dataflow"), true),
            "creating a client",
        )?;
        let consumer = Arc::new(consumer);
        *slot = Some(consumer.clone());
        Ok(consumer)
    }

    /// Runs blocking client calls off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KafkaConsumer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let consumer = self.consumer()?;
        blocking(move || f(&consumer)).await
    }

    /// Every partition of the topics, with its (low, high) watermarks.
    async fn partitions(&self) -> Result<Vec<(String, i32, i64, i64)>> {
        let topics = self.topics.clone();
        let servers = self.client.bootstrap_servers.clone();
        let timeout = self.config.metadata_timeout();
        self.blocking(move |consumer| {
            let mut out = Vec::new();
            for topic in &topics {
                let metadata = consumer
                    .fetch_metadata(Some(topic), timeout)
                    .map_err(|e| kafka_error("reading metadata", &servers, e))?;
                let partitions = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                    .ok_or_else(|| {
                        ConnectorError::Rejected(format!(
                            "Kafka at {servers}: topic \"{topic}\" does not exist"
                        ))
                    })?;
                for partition in partitions {
                    let (low, high) = consumer
                        .fetch_watermarks(topic, partition, timeout)
                        .map_err(|e| kafka_error("reading offsets", &servers, e))?;
                    out.push((topic.clone(), partition, low, high));
                }
            }
            out.sort();
            probe_ends(consumer, &mut out)
                .map_err(|e| kafka_error("reading offsets", &servers, e))?;
            Ok(out)
        })
        .await
    }

    /// The offset `offsets` names for a partition with watermarks
    /// `low..high`; `unlisted` for a partition a per-partition map leaves
    /// out (startingOffsets: earliest; endingOffsets: latest, as Spark).
    fn configured(
        offsets: &Offsets,
        topic: &str,
        partition: i32,
        (low, high): (i64, i64),
        unlisted: NamedOffset,
    ) -> i64 {
        let exact = match offsets {
            Offsets::Named(NamedOffset::Earliest) => return low,
            Offsets::Named(NamedOffset::Latest) => return high,
            Offsets::Exact(map) => map
                .get(topic)
                .and_then(|p| p.get(&partition.to_string()))
                .copied(),
        };
        match exact {
            None if unlisted == NamedOffset::Latest => high,
            None | Some(-2) => low,
            Some(-1) => high,
            Some(offset) => offset,
        }
    }

    /// The table's format and schema: from `schema`, or inferred once from
    /// a sample of the records.
    async fn format(&self, state: &SessionState) -> Result<(Format, SchemaRef), BoxError> {
        let (format, schema) = self
            .schema
            .get_or_try_init(|| async {
                let format = match (self.config.format, &self.config.schema) {
                    (FormatName::Raw, _) => Format::Raw,
                    (FormatName::Json, Some(columns)) => Format::Json(
                        parse_column_list(state, columns)
                            .await
                            .map_err(|e| ConnectorError::Rejected(format!("schema: {e}")))?,
                    ),
                    (FormatName::Json, None) => Format::Json(self.infer_schema(json_object).await?),
                    (FormatName::Debezium, Some(columns)) => Format::Debezium(
                        parse_column_list(state, columns)
                            .await
                            .map_err(|e| ConnectorError::Rejected(format!("schema: {e}")))?,
                    ),
                    (FormatName::Debezium, None) => {
                        Format::Debezium(self.infer_schema(row_image).await?)
                    }
                };
                let schema = format.output_schema();
                Ok::<_, BoxError>((format, schema))
            })
            .await?;
        Ok((format.clone(), schema.clone()))
    }

    /// A JSON schema inferred from the first records of every partition,
    /// each read as an object by `object`.
    async fn infer_schema(
        &self,
        object: fn(&[u8]) -> Option<serde_json::Value>,
    ) -> Result<SchemaRef> {
        let partitions = self.partitions().await?;
        let client = self.client.clone();
        let servers = self.client.bootstrap_servers.clone();
        let timeout = self.config.metadata_timeout();
        self.blocking(move |_| {
            let consumer: KafkaConsumer =
                    client.create(&client.range_reader_config("dataflow-sample", true), "creating a client")?;
            let mut values = Vec::new();
            for (topic, partition, low, high) in partitions.iter().filter(|p| p.3 > p.2) {
                let mut assignment = TopicPartitionList::new();
                assignment
                    .add_partition_offset(topic, *partition, Offset::Offset(*low))
                    .and_then(|_| consumer.assign(&assignment))
                    .map_err(|e| kafka_error("sampling records", &servers, e))?;
                let wanted = SAMPLE_PER_PARTITION.min((high - low) as usize);
                let mut read = 0;
                let deadline = std::time::Instant::now() + timeout;
                while read < wanted && std::time::Instant::now() < deadline {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(message)) => {
                            read += 1;
                            if let Some(value) = message.payload().and_then(object) {
                                values.push(value);
                            }
                        }
                        Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                        _ => {}
                    }
                }
            }
            if values.is_empty() {
                return Err(ConnectorError::Rejected(
                    "cannot infer the JSON schema: no JSON object in the topic yet. Help: set schema, e.g. \"id BIGINT, kind VARCHAR\"".into(),
                ));
            }
            let schema = infer_json_schema_from_iterator(values.iter().map(Ok))
                .map_err(|e| ConnectorError::Rejected(format!("cannot infer the JSON schema: {e}")))?;
            Ok(Arc::new(schema))
        })
        .await
    }

    async fn read_settings(&self, state: &SessionState) -> Result<Arc<ReadSettings>, BoxError> {
        let (format, schema) = self.format(state).await?;
        let settings = self
            .settings
            .get_or_init(|| async {
                Arc::new(ReadSettings {
                    client: self.client.clone(),
                    format,
                    schema,
                    batch_size: self.config.batch_size,
                    on_decode_error: match (
                        self.config.on_decode_error,
                        &self.config.dead_letter_path,
                    ) {
                        (DecodeErrorName::Skip, _) => OnDecodeError::Skip(AtomicU64::new(0)),
                        (DecodeErrorName::DeadLetter, Some(path)) => {
                            OnDecodeError::DeadLetter(path.clone(), self.info.storage.clone())
                        }
                        _ => OnDecodeError::Fail,
                    },
                })
            })
            .await;
        Ok(settings.clone())
    }

    /// This run's range of every partition (topic, partition, low and high
    /// watermarks): from the position a sink recorded, else where the
    /// partition starts, up to its end.
    fn ranges(
        &self,
        partitions: Vec<(String, i32, i64, i64)>,
        resume: &Resume,
    ) -> Result<Vec<Range>> {
        let mut starts = self.starts.lock().expect("starts lock");
        let first_open = starts.is_none();
        let starts = starts.get_or_insert_with(HashMap::new);
        let mut ranges = Vec::new();
        for (topic, partition, low, high) in partitions {
            let key = format!("{topic}/{partition}");
            let start = match resume.marks.get(&key) {
                Some(mark) => *mark,
                // Resolved once: an empty batch does not move a `latest`
                // start, so records arriving later are read.
                None => *starts.entry(key.clone()).or_insert_with(|| {
                    self.unrecorded_start(first_open, &topic, partition, (low, high))
                }),
            };
            let start = self.available_start(&key, start, (low, high))?;
            let end = self.end(&key, &topic, partition, (low, high), resume);
            ranges.push(Range {
                topic,
                partition,
                start,
                end: end.max(start),
            });
        }
        Ok(ranges)
    }

    /// Where a partition without a recorded position starts: as
    /// `startingOffsets` says on the first open. A partition that appears
    /// later starts at its earliest offset (as Spark), so none of its
    /// records are skipped.
    fn unrecorded_start(
        &self,
        first_open: bool,
        topic: &str,
        partition: i32,
        (low, high): (i64, i64),
    ) -> i64 {
        if !first_open {
            return low;
        }
        Self::configured(
            &self.config.starting_offsets,
            topic,
            partition,
            (low, high),
            NamedOffset::Earliest,
        )
    }

    /// `start`, when the topic still holds it; otherwise (records deleted
    /// before being read) an error, or the earliest offset with
    /// `failOnDataLoss` false.
    fn available_start(&self, key: &str, start: i64, (low, high): (i64, i64)) -> Result<i64> {
        if (low..=high).contains(&start) {
            return Ok(start);
        }
        let what = format!(
            "Kafka {key}: offset {start} is outside the offsets still in the topic ({low}..{high})"
        );
        if self.config.fail_on_data_loss {
            return Err(ConnectorError::Rejected(format!(
                "{what}: records were deleted before being read, or the topic was recreated. Help: set failOnDataLoss to false to continue from offset {low}"
            )));
        }
        tracing::warn!("{what}; continuing from {low} (failOnDataLoss is false)");
        Ok(low)
    }

    /// Where a partition's read stops: its high watermark, or
    /// `endingOffsets` in a bounded read; never past `resume.until`
    /// (trigger availableNow: what was there at start).
    fn end(
        &self,
        key: &str,
        topic: &str,
        partition: i32,
        (low, high): (i64, i64),
        resume: &Resume,
    ) -> i64 {
        let mut end = high;
        if !resume.micro_batch {
            if let Some(ending) = &self.config.ending_offsets {
                end = Self::configured(ending, topic, partition, (low, high), NamedOffset::Latest)
                    .min(high);
            }
        }
        match resume.until.get(key) {
            Some(until) => end.min(*until),
            None => end,
        }
    }
}

/// Checks the offsets given in `startingOffsets` (or, `ending`, in
/// `endingOffsets`, where earliest makes no sense).
fn check_offsets(offsets: &Offsets, ending: bool) -> std::result::Result<(), String> {
    let earliest = match offsets {
        Offsets::Named(named) => *named == NamedOffset::Earliest,
        Offsets::Exact(map) => {
            for (topic, partitions) in map {
                for (partition, offset) in partitions {
                    if partition.parse::<i32>().map_or(true, |p| p < 0) {
                        return Err(format!(
                            "{topic}: \"{partition}\" is not a partition number"
                        ));
                    }
                    if *offset < -2 {
                        return Err(format!(
                            "{topic}/{partition}: {offset} is not an offset (-2 earliest, -1 latest, or 0 and up)"
                        ));
                    }
                }
            }
            map.values().flat_map(|p| p.values()).any(|o| *o == -2)
        }
    };
    if ending && earliest {
        return Err("earliest (-2) cannot end a read; use latest (-1), an offset, or leave the partition out (it then reads to the latest offset)".into());
    }
    Ok(())
}

/// A record's value as a JSON object (format json).
fn json_object(value: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .filter(serde_json::Value::is_object)
}

/// A Debezium change event's row image (format debezium).
fn row_image(value: &[u8]) -> Option<serde_json::Value> {
    let event = super::decode::change_event(value).ok()?;
    serde_json::from_slice(&event.image).ok()
}

/// Moves each high watermark up to the offset after the last record
/// actually there. Some Kafka-compatible brokers (tansu 0.6) report the last
/// batch's base offset + 1; reading that batch to its end costs one small
/// fetch per partition and is a no-op on brokers that report correctly.
fn probe_ends(
    consumer: &KafkaConsumer,
    partitions: &mut [(String, i32, i64, i64)],
) -> rdkafka::error::KafkaResult<()> {
    let mut assignment = TopicPartitionList::new();
    for (topic, partition, low, high) in partitions.iter() {
        if high > low {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(high - 1))?;
        }
    }
    let mut open = assignment.count();
    if open == 0 {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open > 0 && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(message)) => {
                if let Some(entry) = partitions
                    .iter_mut()
                    .find(|p| p.0 == message.topic() && p.1 == message.partition())
                {
                    entry.3 = entry.3.max(message.offset() + 1);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            _ => {}
        }
    }
    consumer.unassign()
}

/// One partition's part of a run.
#[derive(Debug, Clone)]
struct Range {
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
}

impl Range {
    fn key(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }
}

/// Caps `ranges` to `max` records in all, shared in proportion to what
/// each partition has waiting.
fn cap(ranges: &mut [Range], max: i64) {
    let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
    if total <= max {
        return;
    }
    let mut left = max;
    let ends: Vec<i64> = ranges.iter().map(|r| r.end).collect();
    for range in ranges.iter_mut() {
        let share = ((range.end - range.start) as i128 * max as i128 / total as i128) as i64;
        range.end = range.start + share;
        left -= share;
    }
    // Rounding leftovers go to the first partitions with room.
    for (range, end) in ranges.iter_mut().zip(ends) {
        if left == 0 {
            break;
        }
        if range.end < end {
            range.end += 1;
            left -= 1;
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn resume_keys(&self) -> Result<Vec<String>, BoxError> {
        Ok(self
            .partitions()
            .await?
            .into_iter()
            .map(|(topic, partition, _, _)| format!("{topic}/{partition}"))
            .collect())
    }

    fn is_stream(&self) -> bool {
        true
    }

    async fn latest(&self) -> Result<HashMap<String, i64>, BoxError> {
        Ok(self
            .partitions()
            .await?
            .into_iter()
            .map(|(topic, partition, _, high)| (format!("{topic}/{partition}"), high))
            .collect())
    }

    async fn open(&self, state: &SessionState, resume: &Resume) -> Result<Opened, BoxError> {
        if resume.micro_batch && self.config.ending_offsets.is_some() {
            return Err(Box::new(self.info.error(
                "endingOffsets",
                "only applies in batch mode and with trigger once; a stream reads what arrives (use trigger availableNow to stop at what is there at start)",
            )));
        }
        let settings = self.read_settings(state).await?;
        let partitions = self.partitions().await?;
        let mut ranges = self.ranges(partitions, resume)?;
        if let (true, Some(max)) = (resume.micro_batch, self.config.max_offsets_per_trigger) {
            cap(&mut ranges, max);
        }
        Ok(Opened {
            marks: ranges.iter().map(|r| (r.key(), r.end)).collect(),
            start: ranges.iter().map(|r| (r.key(), r.start)).collect(),
            provider: Arc::new(KafkaTable {
                settings,
                ranges: ranges.into_iter().filter(|r| r.end > r.start).collect(),
            }),
        })
    }

    async fn committed(&self, marks: &[(String, i64)]) -> Result<(), BoxError> {
        if self.config.group_id.is_none() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (key, offset) in marks {
            if let Some((topic, partition)) = key.rsplit_once('/') {
                if let Ok(partition) = partition.parse() {
                    offsets.add_partition_offset(topic, partition, Offset::Offset(*offset))?;
                }
            }
        }
        let servers = self.client.bootstrap_servers.clone();
        // The data is committed already: a failed group commit only delays
        // what lag tools show.
        let committed = self
            .blocking(move |consumer| {
                consumer
                    .commit(&offsets, CommitMode::Sync)
                    .map_err(|e| kafka_error("committing group offsets", &servers, e))
            })
            .await;
        if let Err(e) = committed {
            tracing::warn!("{e}");
        }
        Ok(())
    }
}

/// The table of one run's offset ranges.
#[derive(Debug)]
struct KafkaTable {
    settings: Arc<ReadSettings>,
    ranges: Vec<Range>,
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn schema(&self) -> SchemaRef {
        self.settings.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(self.settings.schema.project(columns)?),
            None => self.settings.schema.clone(),
        };
        let readers = self
            .ranges
            .iter()
            .map(|r| {
                Arc::new(RangeRead {
                    settings: self.settings.clone(),
                    topic: r.topic.clone(),
                    partition: r.partition,
                    start: r.start,
                    end: r.end,
                    projection: projection.cloned(),
                }) as Arc<dyn PartitionReader>
            })
            .collect();
        Ok(Arc::new(ReaderExec::new(
            "KafkaScanExec",
            format!("bootstrap={}", self.settings.client.bootstrap_servers),
            "range",
            schema,
            readers,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, kind: &str, config: serde_json::Value) -> StepInfo {
        let other = if kind == "extract" {
            r#"{"type": "load", "method": "toConsole"}"#
        } else {
            r#"{"type": "extract", "method": "fromFiles", "config": {"path": "x.csv"}}"#
        };
        let step = serde_json::json!({"type": kind, "method": method, "config": config});
        let text = if kind == "extract" {
            format!(r#"{{"name": "p", "steps": [{step}, {other}]}}"#)
        } else {
            format!(r#"{{"name": "p", "steps": [{other}, {step}]}}"#)
        };
        let mut spec = dataflow_engine::spec::PipelineSpec::load(&text, &[], &|_| None).unwrap();
        let index = usize::from(kind != "extract");
        spec.steps.remove(index)
    }

    /// The config error's (path, message) for a `fromKafka` / `toKafka` config.
    fn config_error(method: &str, config: serde_json::Value) -> (String, String) {
        let err = if method == "fromKafka" {
            source(&info(method, "extract", config)).unwrap_err()
        } else {
            super::super::sink::sink(&info(method, "load", config)).unwrap_err()
        };
        let text = err.to_string();
        match err {
            dataflow_engine::Error::Config { path, .. } => (path, text),
            other => panic!("expected a config error, got {other}"),
        }
    }

    fn with(
        mut config: serde_json::Value,
        key: &str,
        value: serde_json::Value,
    ) -> serde_json::Value {
        config[key] = value;
        config
    }

    #[test]
    fn mistyped_or_invalid_kafka_settings_name_the_key_never_the_value() {
        for (method, base, step) in [
            (
                "fromKafka",
                serde_json::json!({"bootstrapServers": "k:9092", "topic": "t"}),
                0,
            ),
            (
                "toKafka",
                serde_json::json!({"bootstrapServers": "k:9092", "topic": "t"}),
                1,
            ),
        ] {
            let (path, text) = config_error(
                method,
                with(base.clone(), "kafka.sasl.pasword", "hunter2XYZ".into()),
            );
            assert_eq!(
                path,
                format!("steps[{step}].config.kafka.sasl.pasword"),
                "{text}"
            );
            assert!(text.contains("sasl.pasword"), "{text}");
            assert!(!text.contains("hunter2XYZ"), "the secret leaked: {text}");
            // An invalid value: librdkafka's message quotes it.
            let (path, text) = config_error(
                method,
                with(base.clone(), "kafka.security.protocol", "hunter2XYZ".into()),
            );
            assert_eq!(
                path,
                format!("steps[{step}].config.kafka.security.protocol"),
                "{text}"
            );
            assert!(!text.contains("hunter2XYZ"), "the secret leaked: {text}");
            // Valid settings pass.
            let ok = with(base.clone(), "kafka.sasl.password", "hunter2XYZ".into());
            let ok = with(ok, "kafka.security.protocol", "SASL_PLAINTEXT".into());
            if method == "fromKafka" {
                source(&info(method, "extract", ok)).unwrap();
            } else {
                super::super::sink::sink(&info(method, "load", ok)).unwrap();
            }
        }
    }

    #[test]
    fn settings_reading_depends_on_cannot_be_overridden() {
        let base = serde_json::json!({"bootstrapServers": "k:9092", "topic": "t"});
        for key in [
            "kafka.enable.partition.eof",
            "kafka.group.id",
            "kafka.enable.auto.commit",
            "kafka.auto.offset.reset",
            "kafka.bootstrap.servers",
        ] {
            let (path, text) = config_error("fromKafka", with(base.clone(), key, "x".into()));
            assert_eq!(path, format!("steps[0].config.{key}"), "{text}");
            assert!(text.contains("cannot be overridden"), "{text}");
        }
        let (path, _) = config_error(
            "toKafka",
            with(base.clone(), "kafka.enable.idempotence", false.into()),
        );
        assert_eq!(path, "steps[1].config.kafka.enable.idempotence");
    }

    #[test]
    fn ending_offsets_cannot_be_earliest_and_unlisted_partitions_end_at_latest() {
        let base = serde_json::json!({"bootstrapServers": "k:9092", "topic": "t"});
        for ending in [
            serde_json::json!("earliest"),
            serde_json::json!({"t": {"0": -2}}),
        ] {
            let (path, text) =
                config_error("fromKafka", with(base.clone(), "endingOffsets", ending));
            assert_eq!(path, "steps[0].config.endingOffsets", "{text}");
            assert!(text.contains("earliest (-2) cannot end a read"), "{text}");
        }
        let (path, text) = config_error(
            "fromKafka",
            with(
                base.clone(),
                "startingOffsets",
                serde_json::json!({"t": {"0": -3}}),
            ),
        );
        assert_eq!(path, "steps[0].config.startingOffsets", "{text}");
        source(&info(
            "fromKafka",
            "extract",
            with(
                base,
                "endingOffsets",
                serde_json::json!({"t": {"0": 5, "1": -1}}),
            ),
        ))
        .unwrap();

        let map: Offsets =
            serde_json::from_value(serde_json::json!({"t": {"0": 5, "1": -1, "2": -2}})).unwrap();
        let at = |topic, partition, unlisted| {
            KafkaSource::configured(&map, topic, partition, (10, 100), unlisted)
        };
        assert_eq!(at("t", 0, NamedOffset::Latest), 5);
        assert_eq!(at("t", 1, NamedOffset::Earliest), 100);
        assert_eq!(at("t", 2, NamedOffset::Latest), 10);
        // Not listed: a start is the earliest offset, an end the latest.
        assert_eq!(at("t", 3, NamedOffset::Earliest), 10);
        assert_eq!(at("t", 3, NamedOffset::Latest), 100);
        assert_eq!(at("other", 0, NamedOffset::Latest), 100);
    }

    #[test]
    fn cap_shares_in_proportion_and_keeps_the_total() {
        let range = |start, end| Range {
            topic: "t".into(),
            partition: 0,
            start,
            end,
        };
        let mut ranges = vec![range(0, 300), range(10, 110), range(5, 5)];
        cap(&mut ranges, 100);
        let sizes: Vec<i64> = ranges.iter().map(|r| r.end - r.start).collect();
        assert_eq!(sizes, [75, 25, 0]);
        let mut ranges = vec![range(0, 1), range(0, 1), range(0, 1)];
        cap(&mut ranges, 2);
        assert_eq!(ranges.iter().map(|r| r.end - r.start).sum::<i64>(), 2);
        // Leftovers never go past what a partition has.
        let mut ranges = vec![range(5, 5), range(0, 1), range(0, 1), range(0, 1)];
        cap(&mut ranges, 2);
        let sizes: Vec<i64> = ranges.iter().map(|r| r.end - r.start).collect();
        assert_eq!(sizes, [0, 1, 1, 0]);
    }
}
