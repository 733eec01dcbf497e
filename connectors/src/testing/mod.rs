//! Test harness for connector and CLI tests (cargo feature `testing`):
//! real servers started in temporary directories.

pub mod kafka;
pub mod postgres;
mod process;
pub mod vault;

pub use kafka::{KafkaBroker, KafkaRecord, ProducerRecord};
pub use postgres::{PgServer, CERT_USER, USER};
pub use vault::VaultServer;
