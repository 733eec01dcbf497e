//! Kafka: `fromKafka` reads offset ranges of topic partitions (bounded in
//! batch mode, one range per micro-batch when streaming) straight into
//! Arrow; `toKafka` produces rows as records.
//!
//! Positions are per partition, keyed `topic/partition`, valued with the
//! next offset to read; the engine records them with the data (Delta `txn`)
//! and hands them back on restart, so a batch is written exactly once.

mod client;
mod decode;
mod read;
mod sink;
mod source;

pub(crate) use sink::sink;
pub(crate) use source::source;
