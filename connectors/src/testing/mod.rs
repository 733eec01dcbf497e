//! Test harness for connector and CLI tests (cargo feature `testing`):
//! real servers started in temporary directories.

pub mod azure;
pub mod duckdb;
pub mod gcs;
pub mod kafka;
pub mod postgres;
mod process;
pub mod s3;
pub mod vault;

pub use azure::AzuriteServer;
pub use duckdb::duckdb_lines;
pub use gcs::GcsServer;
pub use kafka::{KafkaBroker, KafkaRecord, ProducerRecord};
pub use postgres::{PgServer, CERT_USER, USER};
pub use s3::S3Server;
pub use vault::VaultServer;
