//! Decoding a `COPY ... TO STDOUT (FORMAT binary)` byte stream into Arrow
//! record batches.
//!
//! The stream is a header, then one tuple per row (a field count, then per
//! field a length — -1 for NULL — and the value), then a trailer (-1). The
//! server sends one row per CopyData message, so tuples are decoded straight
//! from the message bytes; only a tuple split across messages is copied.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;

use super::types::PgKind;
use super::values::ValueBuilder;
use crate::error::{ConnectorError, Result};

/// `PGCOPY\n\xff\r\n\0`, then flags (i32) and header extension length (i32).
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = SIGNATURE.len() + 8;

/// What the bytes at the current position hold.
enum Next {
    /// Not all of the next tuple has arrived.
    Incomplete,
    /// The end-of-data marker.
    Trailer,
    /// A whole tuple of this many bytes.
    Tuple(usize),
}

/// Turns binary COPY data, pushed chunk by chunk, into record batches of
/// `batch_size` rows.
#[derive(Debug)]
pub(crate) struct CopyDecoder {
    schema: SchemaRef,
    columns: Vec<ValueBuilder>,
    batch_size: usize,
    /// Rows in the batch being built.
    rows: usize,
    /// Rows decoded so far, for messages.
    total_rows: u64,
    /// The start of a tuple whose end has not arrived yet.
    pending: BytesMut,
    header_read: bool,
    trailer_read: bool,
    ready: VecDeque<RecordBatch>,
}

impl CopyDecoder {
    /// A decoder for rows of `kinds` (one per field of `schema`).
    pub(crate) fn new(schema: SchemaRef, kinds: &[PgKind], batch_size: usize) -> Result<Self> {
        let columns = kinds
            .iter()
            .map(|kind| ValueBuilder::new(kind, batch_size))
            .collect::<Result<_, _>>()?;
        Ok(CopyDecoder {
            schema,
            columns,
            batch_size: batch_size.max(1),
            rows: 0,
            total_rows: 0,
            pending: BytesMut::new(),
            header_read: false,
            trailer_read: false,
            ready: VecDeque::new(),
        })
    }

    /// Decodes every whole tuple in `chunk` (after what is left over from
    /// earlier chunks); full batches become available from [`Self::next_batch`].
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.pending.is_empty() {
            let used = self.decode(chunk)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(chunk);
            let used = self.decode(&data)?;
            data.advance(used);
            self.pending = data;
        }
        Ok(())
    }

    /// A full batch, if one is ready.
    pub(crate) fn next_batch(&mut self) -> Option<RecordBatch> {
        self.ready.pop_front()
    }

    /// Rows decoded so far.
    pub(crate) fn rows_decoded(&self) -> u64 {
        self.total_rows
    }

    /// Ends the stream: checks it was complete and returns the last,
    /// partial batch (if any rows remain).
    pub(crate) fn finish(mut self) -> Result<Option<RecordBatch>> {
        if !self.trailer_read || !self.pending.is_empty() {
            return Err(ConnectorError::Rejected(
                "the COPY data ended early (connection lost?)".into(),
            ));
        }
        if self.rows == 0 {
            return Ok(self.ready.pop_front());
        }
        self.flush().map(Some)
    }

    fn malformed(&self, what: &str) -> ConnectorError {
        ConnectorError::Rejected(format!(
            "malformed binary COPY data after {} rows: {what}",
            self.total_rows
        ))
    }

    /// Decodes from `data`; returns how many bytes were consumed.
    fn decode(&mut self, data: &[u8]) -> Result<usize> {
        let mut pos = 0;
        if !self.header_read {
            if data.len() < HEADER_LEN {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(self.malformed("missing PGCOPY signature"));
            }
            let extension = read_i32(data, SIGNATURE.len() + 4).unwrap_or(0);
            let Ok(extension) = usize::try_from(extension) else {
                return Err(self.malformed("negative header extension length"));
            };
            if data.len() < HEADER_LEN + extension {
                return Ok(0);
            }
            pos = HEADER_LEN + extension;
            self.header_read = true;
        }
        while pos < data.len() && !self.trailer_read {
            match self.next(&data[pos..])? {
                Next::Incomplete => break,
                Next::Trailer => {
                    self.trailer_read = true;
                    pos += 2;
                }
                Next::Tuple(len) => {
                    self.tuple(&data[pos + 2..pos + len])?;
                    pos += len;
                }
            }
        }
        Ok(pos)
    }

    /// Finds where the tuple starting at `data` ends, without decoding it.
    fn next(&self, data: &[u8]) -> Result<Next> {
        let Some(count) = read_i16(data, 0) else {
            return Ok(Next::Incomplete);
        };
        if count == -1 {
            return Ok(Next::Trailer);
        }
        if usize::try_from(count).ok() != Some(self.columns.len()) {
            return Err(self.malformed(&format!(
                "a row has {count} fields, {} were expected",
                self.columns.len()
            )));
        }
        let mut pos = 2;
        for _ in 0..count {
            let Some(len) = read_i32(data, pos) else {
                return Ok(Next::Incomplete);
            };
            pos += 4 + usize::try_from(len).unwrap_or(0);
            if pos > data.len() {
                return Ok(Next::Incomplete);
            }
        }
        Ok(Next::Tuple(pos))
    }

    /// Appends the fields of one whole tuple (field count already skipped).
    fn tuple(&mut self, mut data: &[u8]) -> Result<()> {
        for index in 0..self.columns.len() {
            let len = i32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let value = if len < 0 {
                data = &data[4..];
                None
            } else {
                let (value, rest) = data[4..].split_at(len as usize);
                data = rest;
                Some(value)
            };
            if let Err(message) = self.columns[index].append(value) {
                return Err(self.value_error(index, &message));
            }
        }
        self.rows += 1;
        self.total_rows += 1;
        if self.rows == self.batch_size {
            let batch = self.flush()?;
            self.ready.push_back(batch);
        }
        Ok(())
    }

    fn value_error(&self, index: usize, message: &str) -> ConnectorError {
        let name = self.schema.field(index).name();
        ConnectorError::Rejected(format!(
            "column \"{name}\", row {}: {message}. Help: cast the column in `query`, e.g. SELECT \"{name}\"::text",
            self.total_rows + 1
        ))
    }

    /// The rows decoded since the last batch, as a batch.
    fn flush(&mut self) -> Result<RecordBatch> {
        let columns = self
            .columns
            .iter_mut()
            .map(ValueBuilder::finish)
            .collect::<Result<Vec<_>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

fn read_i16(data: &[u8], at: usize) -> Option<i16> {
    data.get(at..at + 2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
}

fn read_i32(data: &[u8], at: usize) -> Option<i32> {
    data.get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};

    use super::*;

    /// A binary COPY stream of one int4 column.
    fn stream(values: &[Option<i32>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&[0; 8]);
        for v in values {
            out.extend_from_slice(&1i16.to_be_bytes());
            match v {
                Some(v) => {
                    out.extend_from_slice(&4i32.to_be_bytes());
                    out.extend_from_slice(&v.to_be_bytes());
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn decoder(batch_size: usize) -> CopyDecoder {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, true)]));
        CopyDecoder::new(schema, &[PgKind::Int4], batch_size).unwrap()
    }

    #[test]
    fn any_chunking_gives_the_same_batches() {
        let values: Vec<Option<i32>> = (0..10).map(|i| (i % 3 != 0).then_some(i)).collect();
        let data = stream(&values);
        for chunk in [1, 3, 7, data.len()] {
            let mut d = decoder(4);
            let mut batches = Vec::new();
            for piece in data.chunks(chunk) {
                d.push(piece).unwrap();
                batches.extend(std::iter::from_fn(|| d.next_batch()));
            }
            batches.extend(d.finish().unwrap());
            let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
            assert_eq!(sizes, [4, 4, 2], "chunk {chunk}");
            let got: Vec<Option<i32>> = batches
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_primitive::<Int32Type>()
                        .iter()
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(got, values);
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let data = stream(&[Some(1), Some(2)]);
        let mut d = decoder(10);
        d.push(&data[..data.len() - 5]).unwrap();
        assert!(d.finish().is_err());
    }
}
