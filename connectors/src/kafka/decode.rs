//! Kafka records → Arrow: `format: "raw"` gives Spark's columns (key, value,
//! topic, partition, offset, timestamp, timestampType); `format: "json"`
//! decodes each value with a schema into columns, plus `_key`, `_topic`,
//! `_partition`, `_offset` and `_timestamp`; `format: "debezium"` decodes
//! Debezium change events (see [`change_event`]) into the row image plus
//! `_op`, `_lsn` and `_ts_ms`, and the same five columns.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use rdkafka::message::{BorrowedMessage, Message, Timestamp};

/// How record values are read.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    /// Bytes as they are.
    Raw,
    /// One JSON object per value, read with these columns.
    Json(SchemaRef),
    /// One Debezium change event per value; its row image has these columns.
    Debezium(SchemaRef),
}

impl Format {
    /// The columns of the table.
    pub(crate) fn output_schema(&self) -> SchemaRef {
        let timestamp = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        match self {
            Format::Raw => Arc::new(Schema::new(vec![
                Field::new("key", DataType::Binary, true),
                Field::new("value", DataType::Binary, true),
                Field::new("topic", DataType::Utf8, false),
                Field::new("partition", DataType::Int32, false),
                Field::new("offset", DataType::Int64, false),
                Field::new("timestamp", timestamp, true),
                Field::new("timestampType", DataType::Int32, false),
            ])),
            Format::Json(schema) | Format::Debezium(schema) => {
                let mut fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect();
                if matches!(self, Format::Debezium(_)) {
                    fields.extend([
                        Field::new("_op", DataType::Utf8, false),
                        Field::new("_lsn", DataType::Int64, true),
                        Field::new("_ts_ms", DataType::Int64, true),
                    ]);
                }
                fields.extend([
                    Field::new("_key", DataType::Utf8, true),
                    Field::new("_topic", DataType::Utf8, false),
                    Field::new("_partition", DataType::Int32, false),
                    Field::new("_offset", DataType::Int64, false),
                    Field::new("_timestamp", timestamp, true),
                ]);
                Arc::new(Schema::new(fields))
            }
        }
    }
}

/// Records of one partition waiting to be decoded.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// The values, each followed by a newline.
    values: Vec<u8>,
    /// Where each value sits in `values` (before its newline); `None`: the
    /// record has no value.
    value_ranges: Vec<Option<(usize, usize)>>,
    keys: Vec<Option<Vec<u8>>>,
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    timestamp_types: Vec<i32>,
}

/// Decoded values: their columns, the indices of the records they come
/// from, and the records that could not be decoded.
type Decoded = (Vec<ArrayRef>, Vec<usize>, Vec<BadRecord>);

/// A record whose value could not be decoded.
#[derive(Debug, Clone)]
pub(crate) struct BadRecord {
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Why it could not be decoded.
    pub error: String,
}

impl Pending {
    /// Adds a consumed record.
    pub(crate) fn push(&mut self, message: &BorrowedMessage<'_>) {
        let range = message.payload().map(|payload| {
            let start = self.values.len();
            self.values.extend_from_slice(payload);
            (start, self.values.len())
        });
        self.values.push(b'\n');
        self.value_ranges.push(range);
        self.keys.push(message.key().map(<[u8]>::to_vec));
        self.offsets.push(message.offset());
        let (timestamp, kind) = match message.timestamp() {
            Timestamp::NotAvailable => (None, -1),
            Timestamp::CreateTime(t) => (Some(t), 0),
            Timestamp::LogAppendTime(t) => (Some(t), 1),
        };
        self.timestamps.push(timestamp);
        self.timestamp_types.push(kind);
    }

    /// Records held.
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    fn value(&self, i: usize) -> Option<&[u8]> {
        self.value_ranges[i].map(|(start, end)| &self.values[start..end])
    }

    /// Decodes the records of `topic`/`partition` with `format`: the rows,
    /// and the records that could not be decoded (JSON only).
    pub(crate) fn decode(
        self,
        format: &Format,
        output: &SchemaRef,
        topic: &str,
        partition: i32,
    ) -> Result<(RecordBatch, Vec<BadRecord>), ArrowError> {
        let n = self.len();
        let (mut columns, kept, bad): Decoded = match format {
            Format::Raw => {
                let values: BinaryArray = (0..n).map(|i| self.value(i)).collect();
                (
                    vec![self.key_array(0..n), Arc::new(values)],
                    (0..n).collect(),
                    Vec::new(),
                )
            }
            Format::Json(schema) => {
                let (batch, kept, bad) = self.decode_json(schema)?;
                (batch.columns().to_vec(), kept, bad)
            }
            Format::Debezium(schema) => self.decode_changes(schema)?,
        };
        let kept_len = kept.len();
        let topics: StringArray = std::iter::repeat_n(Some(topic), kept_len).collect();
        let partitions = Int32Array::from(vec![partition; kept_len]);
        let offsets: Int64Array = kept.iter().map(|&i| self.offsets[i]).collect();
        let timestamps: TimestampMillisecondArray = kept
            .iter()
            .map(|&i| self.timestamps[i])
            .collect::<TimestampMillisecondArray>()
            .with_timezone("UTC");
        match format {
            Format::Raw => {
                let kinds: Int32Array = kept.iter().map(|&i| self.timestamp_types[i]).collect();
                columns.extend([
                    Arc::new(topics) as ArrayRef,
                    Arc::new(partitions),
                    Arc::new(offsets),
                    Arc::new(timestamps),
                    Arc::new(kinds),
                ]);
            }
            Format::Json(_) | Format::Debezium(_) => {
                let keys: StringArray = kept
                    .iter()
                    .map(|&i| self.keys[i].as_deref().map(String::from_utf8_lossy))
                    .collect();
                columns.extend([
                    Arc::new(keys) as ArrayRef,
                    Arc::new(topics),
                    Arc::new(partitions),
                    Arc::new(offsets),
                    Arc::new(timestamps),
                ]);
            }
        }
        Ok((RecordBatch::try_new(output.clone(), columns)?, bad))
    }

    fn key_array(&self, rows: std::ops::Range<usize>) -> ArrayRef {
        let keys: BinaryArray = rows.map(|i| self.keys[i].as_deref()).collect();
        Arc::new(keys)
    }

    /// Debezium change events: the row images decoded as JSON, then `_op`,
    /// `_lsn` and `_ts_ms`; the records kept (tombstones are skipped) and the bad.
    fn decode_changes(&self, schema: &SchemaRef) -> Result<Decoded, ArrowError> {
        let mut images = Pending::default();
        let (mut events, mut kept, mut bad) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.len() {
            let Some(value) = self.value(i) else {
                continue; // a tombstone: compaction's marker, not a change
            };
            match change_event(value) {
                Ok(event) => {
                    images.push_value(&event.image, self.offsets[i]);
                    events.push(event);
                    kept.push(i);
                }
                Err(error) => bad.push(self.bad(i, error)),
            }
        }
        let (rows, decoded, unreadable) = images.decode_json(schema)?;
        for image in unreadable {
            // Offsets increase within a partition.
            if let Ok(j) = images.offsets.binary_search(&image.offset) {
                bad.push(self.bad(kept[j], format!("the row image: {}", image.error)));
            }
        }
        let ops: StringArray = decoded.iter().map(|&j| Some(events[j].op)).collect();
        let lsns: Int64Array = decoded.iter().map(|&j| events[j].lsn).collect();
        let times: Int64Array = decoded.iter().map(|&j| events[j].ts_ms).collect();
        let mut columns = rows.columns().to_vec();
        columns.extend([Arc::new(ops) as ArrayRef, Arc::new(lsns), Arc::new(times)]);
        Ok((columns, decoded.iter().map(|&j| kept[j]).collect(), bad))
    }

    /// Adds a bare value (no key, time) at `offset`.
    fn push_value(&mut self, value: &[u8], offset: i64) {
        let start = self.values.len();
        self.values.extend_from_slice(value);
        self.value_ranges.push(Some((start, self.values.len())));
        self.values.push(b'\n');
        self.keys.push(None);
        self.offsets.push(offset);
        self.timestamps.push(None);
        self.timestamp_types.push(-1);
    }

    /// Record `i` as a bad record.
    fn bad(&self, i: usize, error: String) -> BadRecord {
        BadRecord {
            offset: self.offsets[i],
            key: self.keys[i].clone(),
            value: self.value(i).map(<[u8]>::to_vec),
            error,
        }
    }

    /// All values in one pass; on any failure, value by value to find the
    /// bad ones.
    fn decode_json(
        &self,
        schema: &SchemaRef,
    ) -> Result<(RecordBatch, Vec<usize>, Vec<BadRecord>), ArrowError> {
        let n = self.len();
        let whole = (|| {
            let mut decoder = ReaderBuilder::new(schema.clone())
                .with_batch_size(n.max(1))
                .build_decoder()?;
            if decoder.decode(&self.values)? != self.values.len() {
                return Ok(None);
            }
            decoder.flush()
        })();
        if let Ok(Some(batch)) = whole {
            if batch.num_rows() == n && self.value_ranges.iter().all(Option::is_some) {
                return Ok((batch, (0..n).collect(), Vec::new()));
            }
        }
        let mut rows = Vec::new();
        let mut kept = Vec::new();
        let mut bad = Vec::new();
        for i in 0..n {
            match decode_one(schema, self.value(i)) {
                Ok(row) => {
                    rows.push(row);
                    kept.push(i);
                }
                Err(error) => bad.push(self.bad(i, error)),
            }
        }
        Ok((concat_batches(schema, &rows)?, kept, bad))
    }
}

/// A Debezium change event, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChangeEvent {
    /// `c` (create), `u` (update), `d` (delete) or `r` (snapshot read).
    pub op: &'static str,
    /// `source.lsn`: the change's position in PostgreSQL's log.
    pub lsn: Option<i64>,
    /// `source.ts_ms`: when the change was made in the database.
    pub ts_ms: Option<i64>,
    /// The row as JSON: `after`, or `before` for a delete.
    pub image: Vec<u8>,
}

/// Decodes a Debezium change event: the JSON envelope Debezium and
/// Redpanda Connect write (`before`, `after`, `op`, `source`), bare or
/// inside `{"schema": ..., "payload": ...}` (JsonConverter with schemas).
pub(crate) fn change_event(value: &[u8]) -> Result<ChangeEvent, String> {
    let envelope: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    let envelope = match envelope.get("payload") {
        Some(payload) if envelope.get("schema").is_some() => payload,
        _ => &envelope,
    };
    let op = match envelope.get("op").and_then(serde_json::Value::as_str) {
        Some("c") => "c",
        Some("u") => "u",
        Some("d") => "d",
        Some("r") => "r",
        Some("t") => {
            return Err(
                "a truncate event (op t) does not change one key; truncate the table instead"
                    .into(),
            )
        }
        Some(other) => {
            return Err(format!(
                "unknown op \"{other}\" (Debezium's are c, u, d, r)"
            ))
        }
        None => return Err("no \"op\": not a Debezium change event".into()),
    };
    let side = if op == "d" { "before" } else { "after" };
    let image = envelope
        .get(side)
        .filter(|image| image.is_object())
        .ok_or_else(|| format!("op {op} without an object in \"{side}\""))?;
    let source = |field: &str| {
        envelope
            .get("source")
            .and_then(|s| s.get(field))
            .and_then(serde_json::Value::as_i64)
    };
    Ok(ChangeEvent {
        op,
        lsn: source("lsn"),
        ts_ms: source("ts_ms"),
        image: serde_json::to_vec(image).map_err(|e| e.to_string())?,
    })
}

/// One value as one row, or why not.
fn decode_one(schema: &SchemaRef, value: Option<&[u8]>) -> Result<RecordBatch, String> {
    let value = value.ok_or("the record has no value (a tombstone)")?;
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(2)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.decode(value).map_err(|e| e.to_string())?;
    match decoder.flush().map_err(|e| e.to_string())? {
        Some(batch) if batch.num_rows() == 1 => Ok(batch),
        Some(batch) if batch.num_rows() > 1 => Err(format!(
            "the value holds {} JSON values, not one object",
            batch.num_rows()
        )),
        _ => Err("the value is empty".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Result<ChangeEvent, String> {
        change_event(json.as_bytes())
    }

    fn image(event: &ChangeEvent) -> serde_json::Value {
        serde_json::from_slice(&event.image).unwrap()
    }

    #[test]
    fn change_events_give_the_row_image_op_and_lsn() {
        let update = event(
            r#"{"before": {"id": 1, "n": "a"}, "after": {"id": 1, "n": "b"}, "op": "u",
                "source": {"lsn": 42, "ts_ms": 7}, "ts_ms": 9}"#,
        )
        .unwrap();
        assert_eq!(
            (update.op, update.lsn, update.ts_ms),
            ("u", Some(42), Some(7))
        );
        assert_eq!(image(&update), serde_json::json!({"id": 1, "n": "b"}));
        let delete = event(
            r#"{"before": {"id": 1, "n": null}, "after": null, "op": "d", "source": {"ts_ms": 7}}"#,
        )
        .unwrap();
        assert_eq!((delete.op, delete.lsn, delete.ts_ms), ("d", None, Some(7)));
        assert_eq!(image(&delete), serde_json::json!({"id": 1, "n": null}));
        let wrapped = event(
            r#"{"schema": {"type": "struct"}, "payload": {"after": {"id": 2}, "op": "r", "source": {"lsn": 5}}}"#,
        )
        .unwrap();
        assert_eq!((wrapped.op, wrapped.lsn), ("r", Some(5)));
        assert_eq!(image(&wrapped), serde_json::json!({"id": 2}));
    }

    #[test]
    fn what_is_not_a_row_change_is_an_error() {
        for (json, why) in [
            ("not json", "not JSON"),
            (r#"{"after": {"id": 1}}"#, "no \"op\""),
            (r#"{"op": "t", "source": {}}"#, "truncate"),
            (r#"{"op": "x", "after": {}}"#, "unknown op \"x\""),
            (
                r#"{"op": "d", "before": null, "after": null}"#,
                "op d without an object in \"before\"",
            ),
            (
                r#"{"op": "c", "after": [1]}"#,
                "op c without an object in \"after\"",
            ),
        ] {
            let error = event(json).unwrap_err();
            assert!(error.contains(why), "{json}: {error}");
        }
    }
}
