//! Where a stream's state lives between micro-batches and restarts: per
//! stateful operator (an aggregation, a `deduplicate`), one snapshot per
//! committed batch under `<checkpointLocation>/state/<operator>/`, an
//! Arrow IPC file holding the state's rows, the watermark and the source
//! positions the batch reached (the marks its sinks commit).
//!
//! A snapshot is written (whole, atomically) before the sinks commit. On
//! restart the stream loads the snapshot whose positions are exactly where
//! the sinks resume: a snapshot of a batch whose commit never happened is
//! ignored (and overwritten by the batch that replaces it). The last
//! [`KEEP`] snapshots are kept.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::{ObjectStoreExt, PutPayload};
use futures::TryStreamExt;

use crate::connector::Mark;
use crate::error::{Error, Result};
use crate::storage::Location;

/// Snapshots kept, the newest among them.
const KEEP: usize = 3;
const MARKS: &str = "dataflow.marks";
const WATERMARK: &str = "dataflow.watermark";

/// A stream's state after a committed batch.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Sequence number: 1 for the first batch.
    pub sequence: u64,
    /// The positions the batch reached: app id → version.
    pub marks: BTreeMap<String, i64>,
    /// The watermark after the batch (µs), if any.
    pub watermark: Option<i64>,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// Their schema.
    pub schema: SchemaRef,
}

/// The snapshots of one stateful operator of a stream under its checkpoint
/// location.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: Location,
}

impl StateStore {
    /// The store of operator `part` under `checkpoint` (a local path or an
    /// object-store URL).
    pub fn new(runtime: &RuntimeEnv, checkpoint: &str, part: &str) -> Result<StateStore> {
        let dir = Location::resolve(runtime, checkpoint)?
            .child("state")
            .child(part);
        Ok(StateStore { dir })
    }

    /// The newest snapshot whose marks are all among `starts` with the
    /// same versions (where the sources resume: a snapshot of a batch that
    /// never committed has positions beyond them); `None` when there is no
    /// snapshot at all; an error when none matches.
    pub async fn load(&self, starts: &[Mark]) -> Result<Option<Snapshot>> {
        let sequences = self.sequences().await?;
        for sequence in sequences.iter().rev() {
            let snapshot = self.read(*sequence).await?;
            let matches = snapshot.marks.iter().all(|(app_id, version)| {
                starts
                    .iter()
                    .any(|m| &m.app_id == app_id && m.version == *version)
            });
            if matches {
                return Ok(Some(snapshot));
            }
        }
        match sequences.last() {
            None => Ok(None),
            Some(newest) => Err(Error::Io {
                context: format!("loading the stream's state from {}", self.dir.shown),
                source: std::io::Error::other(format!(
                    "no state snapshot (newest: {newest}) was taken where the sinks resume; the sink table or the checkpoint was replaced. Help: delete {} to start the aggregation afresh from the sinks' positions",
                    self.dir.shown
                )),
            }),
        }
    }

    /// Writes `snapshot`, then drops the ones older than the last [`KEEP`].
    pub async fn write(&self, snapshot: &Snapshot) -> Result<()> {
        let bytes = encode(snapshot).map_err(|e| self.error("writing", e))?;
        let location = self.file(snapshot.sequence);
        location
            .store
            .put(&location.path, PutPayload::from(bytes))
            .await
            .map_err(|e| self.error("writing", e))?;
        let sequences = self.sequences().await?;
        for old in sequences
            .iter()
            .filter(|s| **s + KEEP as u64 <= snapshot.sequence)
        {
            let location = self.file(*old);
            location
                .store
                .delete(&location.path)
                .await
                .map_err(|e| self.error("cleaning", e))?;
        }
        Ok(())
    }

    fn file(&self, sequence: u64) -> Location {
        self.dir.child(&format!("{sequence:020}.arrow"))
    }

    /// The snapshots' sequence numbers, ascending.
    async fn sequences(&self) -> Result<Vec<u64>> {
        let listed: Vec<_> = self
            .dir
            .store
            .list(Some(&self.dir.path))
            .try_collect()
            .await
            .map_err(|e| self.error("listing", e))?;
        let mut sequences: Vec<u64> = listed
            .iter()
            .filter_map(|meta| {
                meta.location
                    .filename()?
                    .strip_suffix(".arrow")?
                    .parse()
                    .ok()
            })
            .collect();
        sequences.sort_unstable();
        Ok(sequences)
    }

    async fn read(&self, sequence: u64) -> Result<Snapshot> {
        let location = self.file(sequence);
        let bytes = location
            .store
            .get(&location.path)
            .await
            .map_err(|e| self.error("reading", e))?
            .bytes()
            .await
            .map_err(|e| self.error("reading", e))?;
        decode(sequence, bytes.to_vec()).map_err(|e| self.error("reading", e))
    }

    fn error(&self, doing: &str, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Io {
            context: format!("{doing} the stream's state in {}", self.dir.shown),
            source: std::io::Error::other(source),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CodecError(BoxError);

fn encode(snapshot: &Snapshot) -> std::result::Result<Vec<u8>, CodecError> {
    let wrap = |e: BoxError| CodecError(e);
    let mut metadata = snapshot.schema.metadata().clone();
    let marks = serde_json::to_string(&snapshot.marks).map_err(|e| wrap(e.into()))?;
    metadata.insert(MARKS.into(), marks);
    if let Some(watermark) = snapshot.watermark {
        metadata.insert(WATERMARK.into(), watermark.to_string());
    }
    let schema = Arc::new(Schema::new_with_metadata(
        snapshot.schema.fields().clone(),
        metadata,
    ));
    let mut bytes = Vec::new();
    let mut writer = FileWriter::try_new(&mut bytes, &schema).map_err(|e| wrap(e.into()))?;
    for batch in &snapshot.batches {
        let batch = batch
            .clone()
            .with_schema(schema.clone())
            .map_err(|e| wrap(e.into()))?;
        writer.write(&batch).map_err(|e| wrap(e.into()))?;
    }
    writer.finish().map_err(|e| wrap(e.into()))?;
    drop(writer);
    Ok(bytes)
}

fn decode(sequence: u64, bytes: Vec<u8>) -> std::result::Result<Snapshot, CodecError> {
    let wrap = |e: BoxError| CodecError(e);
    let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(|e| wrap(e.into()))?;
    let schema = reader.schema();
    let mut metadata = schema.metadata().clone();
    let marks = metadata.remove(MARKS).unwrap_or_else(|| "{}".into());
    let marks = serde_json::from_str(&marks).map_err(|e| wrap(e.into()))?;
    let watermark = match metadata.remove(WATERMARK) {
        Some(text) => Some(
            text.parse()
                .map_err(|e: std::num::ParseIntError| wrap(e.into()))?,
        ),
        None => None,
    };
    let schema = Arc::new(Schema::new_with_metadata(schema.fields().clone(), metadata));
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| wrap(e.into()))?;
    Ok(Snapshot {
        sequence,
        marks,
        watermark,
        batches,
        schema,
    })
}
