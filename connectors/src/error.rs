//! The connectors' error type.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;

/// Errors raised by sources and sinks at run time.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Planning or execution failed inside DataFusion.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// delta-rs reported a failure.
    #[error(transparent)]
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
        message: String,
        /// The connection was lost or refused (worth retrying), as opposed
        /// to a query the server rejected.
        retryable: bool,
    },
    /// Another sink failed or the run was cancelled; nothing was committed.
    #[error(transparent)]
    Abandoned(#[from] dataflow_engine::commit::CommitAbandoned),
}

impl ConnectorError {
    /// Extends a PostgreSQL error's context with `context` and its message
    /// with `note`; other errors are returned unchanged.
    pub(crate) fn with_postgres_context(self, context: &str, note: &str) -> Self {
        match self {
            ConnectorError::Postgres {
                context: before,
                message,
                retryable,
            } => ConnectorError::Postgres {
                context: format!("{before}{context}"),
                message: format!("{message}{note}"),
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
