//! Test harness for connector and CLI tests (cargo feature `testing`):
//! real servers started in temporary directories.

pub mod postgres;

pub use postgres::PgServer;
