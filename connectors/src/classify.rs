//! Whether retrying may help, read from the connectors' libraries' codes:
//! PostgreSQL SQLSTATEs, librdkafka error codes and delta-rs commit
//! conflicts. The engine asks [`classify_link`] about every link of a
//! failure's source chain (it is registered in [`crate::registry`]).

use std::error::Error as StdError;

use dataflow_engine::classify::ErrorClass;
use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
use deltalake::DeltaTableError;
use rdkafka::types::RDKafkaErrorCode;
use tokio_postgres::error::SqlState;

use crate::error::ConnectorError;

/// The class of one link of an error chain, when it is a connector error or
/// a connector library's error this module knows; `None` otherwise.
pub(crate) fn classify_link(err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
    if let Some(err) = err.downcast_ref::<ConnectorError>() {
        return match err {
            ConnectorError::Postgres {
                retryable, code, ..
            } => postgres(*retryable, code.as_ref()),
            ConnectorError::Kafka { code, .. } => code.and_then(kafka),
            _ => None,
        };
    }
    if let Some(err) = err.downcast_ref::<DeltaTableError>() {
        return match err {
            DeltaTableError::VersionAlreadyExists(_) => Some(ErrorClass::Transient),
            _ => None,
        };
    }
    if let Some(err) = err.downcast_ref::<TransactionError>() {
        return delta_transaction(err);
    }
    err.downcast_ref::<CommitConflictError>()
        .map(delta_conflict)
}

/// A lost or refused connection (`retryable`) is transient; otherwise the
/// server's SQLSTATE decides.
fn postgres(retryable: bool, code: Option<&SqlState>) -> Option<ErrorClass> {
    if retryable {
        return Some(ErrorClass::Transient);
    }
    code.map(sqlstate)
}

/// SQLSTATEs of conditions that pass by themselves: connection exceptions
/// (class 08), serialization failures and deadlocks, too many connections,
/// a server shutting down or starting up, a lock not available. Every other
/// code (authentication, permissions, an undefined table, bad data) is the
/// server rejecting the request: permanent.
pub(crate) fn sqlstate(code: &SqlState) -> ErrorClass {
    const TRANSIENT: &[SqlState] = &[
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::LOCK_NOT_AVAILABLE,
    ];
    if code.code().starts_with("08") || TRANSIENT.contains(code) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Transport failures, unavailable brokers or leaders and timeouts are
/// transient; authentication and authorization failures permanent; other
/// codes do not decide.
fn kafka(code: RDKafkaErrorCode) -> Option<ErrorClass> {
    use RDKafkaErrorCode::*;
    match code {
        BrokerTransportFailure
        | Resolve
        | AllBrokersDown
        | MessageTimedOut
        | OperationTimedOut
        | RequestTimedOut
        | LeaderNotAvailable
        | NotLeaderForPartition
        | PreferredLeaderNotAvailable
        | BrokerNotAvailable
        | NetworkException
        | CoordinatorLoadInProgress
        | CoordinatorNotAvailable
        | NotCoordinator
        | NotEnoughReplicas
        | NotEnoughReplicasAfterAppend
        | RebalanceInProgress => Some(ErrorClass::Transient),
        Authentication
        | SaslAuthenticationFailed
        | TopicAuthorizationFailed
        | GroupAuthorizationFailed
        | ClusterAuthorizationFailed
        | TransactionalIdAuthorizationFailed => Some(ErrorClass::Permanent),
        _ => None,
    }
}

/// Another writer committed first: the retry reads the new version.
fn delta_transaction(err: &TransactionError) -> Option<ErrorClass> {
    match err {
        TransactionError::VersionAlreadyExists(_) | TransactionError::MaxCommitAttempts(_) => {
            Some(ErrorClass::Transient)
        }
        TransactionError::CommitConflict(conflict) => Some(delta_conflict(conflict)),
        _ => None,
    }
}

/// Concurrent appends, deletes, transactions and metadata or protocol
/// changes are transient; an unsupported protocol or a corrupt table is not.
fn delta_conflict(err: &CommitConflictError) -> ErrorClass {
    use CommitConflictError::*;
    match err {
        ConcurrentAppend
        | ConcurrentDeleteRead
        | ConcurrentDeleteDelete
        | MetadataChanged
        | ConcurrentTransaction
        | ProtocolChanged(_) => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use dataflow_engine::{Error, StepRef};
    use datafusion::error::DataFusionError;

    use super::*;

    /// `cause` as it reaches the engine: inside a DataFusion execution
    /// error, attributed to a step, classified with the registry's rules.
    fn class(cause: ConnectorError) -> ErrorClass {
        let step = StepRef {
            index: 0,
            method: "toDeltaLake".into(),
            name: None,
        };
        let err = DataFusionError::Context(
            "writing".into(),
            Box::new(DataFusionError::External(Box::new(cause))),
        );
        crate::registry()
            .classifier()
            .classify(&Error::step(&step, err))
    }

    fn postgres(code: SqlState, message: &str) -> ConnectorError {
        ConnectorError::Postgres {
            context: "running the query".into(),
            message: message.into(),
            code: Some(code),
            retryable: false,
        }
    }

    #[test]
    fn postgres_sqlstates() {
        // Each message alone would classify the other way.
        for code in [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_FAILURE,
        ] {
            let err = postgres(code.clone(), "permission denied");
            assert_eq!(class(err), ErrorClass::Transient, "{code:?}");
        }
        for code in [
            SqlState::INVALID_PASSWORD,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
            SqlState::DIVISION_BY_ZERO,
        ] {
            let err = postgres(code.clone(), "connection reset");
            assert_eq!(class(err), ErrorClass::Permanent, "{code:?}");
        }
    }

    #[test]
    fn postgres_retryable_flag_reaches_the_run() {
        let lost = ConnectorError::Postgres {
            context: "reading partition 1 of 4".into(),
            message: "db error".into(),
            code: None,
            retryable: true,
        };
        assert_eq!(class(lost), ErrorClass::Transient);
        let unknown = ConnectorError::Postgres {
            context: "connecting".into(),
            message: "tls handshake rejected".into(),
            code: None,
            retryable: false,
        };
        assert_eq!(class(unknown), ErrorClass::Permanent);
    }

    fn kafka(code: RDKafkaErrorCode, message: &str) -> ConnectorError {
        ConnectorError::Kafka {
            context: "Kafka at b:9092: reading metadata".into(),
            message: message.into(),
            code: Some(code),
        }
    }

    #[test]
    fn kafka_codes() {
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::OperationTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert_eq!(
                class(kafka(code, "forbidden")),
                ErrorClass::Transient,
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::Authentication,
            RDKafkaErrorCode::SaslAuthenticationFailed,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert_eq!(
                class(kafka(code, "timed out")),
                ErrorClass::Permanent,
                "{code:?}"
            );
        }
        // A code that does not decide leaves it to the text.
        let other = RDKafkaErrorCode::InvalidMessage;
        assert_eq!(class(kafka(other, "timed out")), ErrorClass::Transient);
        assert_eq!(class(kafka(other, "bad record")), ErrorClass::Permanent);
    }

    fn delta(source: TransactionError) -> ConnectorError {
        ConnectorError::Delta(DeltaTableError::Transaction { source })
    }

    #[test]
    fn delta_transaction_errors() {
        for conflict in [
            CommitConflictError::ConcurrentAppend,
            CommitConflictError::ConcurrentDeleteRead,
            CommitConflictError::ConcurrentDeleteDelete,
            CommitConflictError::ConcurrentTransaction,
            CommitConflictError::MetadataChanged,
        ] {
            let text = conflict.to_string();
            let err = delta(TransactionError::CommitConflict(conflict));
            assert_eq!(class(err), ErrorClass::Transient, "{text}");
        }
        let exists = delta(TransactionError::VersionAlreadyExists(4));
        assert_eq!(class(exists), ErrorClass::Transient);
        let exists = ConnectorError::Delta(DeltaTableError::VersionAlreadyExists(4));
        assert_eq!(class(exists), ErrorClass::Transient);
        let unsupported = delta(TransactionError::CommitConflict(
            CommitConflictError::UnsupportedWriterVersion(9),
        ));
        assert_eq!(class(unsupported), ErrorClass::Permanent);
    }
}
