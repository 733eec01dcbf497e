//! The connectors' error type.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;
use rdkafka::types::RDKafkaErrorCode;
use tokio_postgres::error::SqlState;

/// Errors raised by sources and sinks at run time.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Planning or execution failed inside DataFusion (the source, so that
    /// its codes can be classified).
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// delta-rs reported a failure (the source, so that its commit
    /// conflicts can be classified).
    #[error("{0}")]
    Delta(#[from] DeltaTableError),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Arrow refused to build a batch or array (the source kept for its
    /// kind).
    #[error("{0}")]
    Arrow(#[from] ArrowError),
    /// `context` failed with a typed cause from a library (kept as the
    /// source, so that retries can classify it).
    #[error("{context}: {source}")]
    Context {
        /// What was being done, naming the path or object.
        context: String,
        /// The cause.
        #[source]
        source: DataFusionError,
    },
    /// The data or the target does not allow the operation; the message
    /// says why and how to proceed.
    #[error("{0}")]
    Rejected(String),
    /// PostgreSQL refused or failed an operation; the message is redacted
    /// (no password) and names what was being done.
    #[error("PostgreSQL {context}: {message}")]
    Postgres {
        /// What was being done, e.g. `connecting to app@db:5432/sales`.
        context: String,
        /// The server's or the client library's explanation, redacted.
        /// (The library's error itself is not kept: its text may hold the
        /// password.)
        message: String,
        /// The server's SQLSTATE, when it sent one.
        code: Option<SqlState>,
        /// The connection was lost or refused (worth retrying), as opposed
        /// to a query the server rejected.
        retryable: bool,
    },
    /// A Kafka client call failed; the message is redacted (no `kafka.*`
    /// value) where the client library could echo one.
    #[error("{context}: {message}")]
    Kafka {
        /// What was being done, naming the brokers or the partition.
        context: String,
        /// librdkafka's explanation.
        message: String,
        /// librdkafka's code, when it gave one.
        code: Option<RDKafkaErrorCode>,
    },
    /// Another sink failed or the run was cancelled; nothing was committed.
    #[error(transparent)]
    Abandoned(#[from] dataflow_engine::commit::CommitAbandoned),
}

impl ConnectorError {
    /// A lost or refused PostgreSQL connection, worth another attempt.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::Postgres {
                retryable: true,
                ..
            }
        )
    }

    /// Extends a PostgreSQL error's context with `context` and its message
    /// with `note`; other errors are returned unchanged.
    pub(crate) fn with_postgres_context(self, context: &str, note: &str) -> Self {
        match self {
            ConnectorError::Postgres {
                context: before,
                message,
                code,
                retryable,
            } => ConnectorError::Postgres {
                context: format!("{before}{context}"),
                message: format!("{message}{note}"),
                code,
                retryable,
            },
            other => other,
        }
    }
}

/// Result alias for connector code.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// Wraps an I/O error with the operation and path it concerns.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConnectorError {
    let context = context.into();
    move |source| ConnectorError::Io { context, source }
}
