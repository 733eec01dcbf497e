//! Whether retrying a failure may help.
//!
//! A failure is classified from the typed errors in its source chain first:
//! the engine knows [`std::io::Error`], `object_store::Error` and
//! [`DataFusionError`]; the connectors know their libraries' codes
//! (PostgreSQL SQLSTATEs, librdkafka codes, Delta commit conflicts) and add
//! a [`LinkClassifier`] for them through the
//! [`Registry`](crate::connector::Registry). Only when no link of the chain
//! is decisive is the text read: the patterns live in the two tables below
//! and nowhere else.

use std::error::Error as StdError;
use std::fmt;
use std::io::ErrorKind;

use datafusion::error::DataFusionError;
use datafusion::object_store;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Whether retrying a failed run may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The environment may recover: retry after a delay.
    Transient,
    /// Retrying cannot help: fix the config, the data or the credentials.
    Permanent,
}

/// Classifies one link of an error chain by its type, e.g. a connector
/// library's error code; `None` when it does not know the link or the link
/// does not decide (a wrapper: the chain goes on to its source).
pub type LinkClassifier = fn(&(dyn StdError + 'static)) -> Option<ErrorClass>;

/// Classifies failures: typed links first, walking the source chain
/// outermost first, then the text. Cheap to clone.
#[derive(Clone, Default)]
pub struct Classifier {
    links: Vec<LinkClassifier>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Classifier({} link classifiers)", self.links.len())
    }
}

impl Classifier {
    /// A classifier knowing the engine's own error types only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `classify`, asked about every link before the engine's rules.
    pub fn with(mut self, classify: LinkClassifier) -> Self {
        self.links.push(classify);
        self
    }

    /// Classifies a failed run. Config and planning errors and cancellation
    /// are permanent; run-time errors by the first decisive link of their
    /// chain, else by their text (transient only when it matches
    /// [`TRANSIENT`] and not [`PERMANENT`]).
    pub fn classify(&self, err: &Error) -> ErrorClass {
        let chain: &(dyn StdError + 'static) = match err {
            Error::Config { .. } | Error::Plan { .. } | Error::Cancelled => {
                return ErrorClass::Permanent
            }
            Error::Io { source, .. } => source,
            Error::Step { source, .. } => source.as_ref(),
            Error::DataFusion(source) => source,
        };
        self.chain(chain)
            .unwrap_or_else(|| classify_text(&err.to_string()))
    }

    /// The class decided by the first decisive link from `err` on.
    fn chain(&self, err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
        let mut link = Some(err);
        while let Some(err) = link {
            if let Some(class) = self.link(err) {
                return Some(class);
            }
            // An io::Error's source() skips the error it wraps.
            if let Some(inner) = err
                .downcast_ref::<std::io::Error>()
                .and_then(|e| e.get_ref())
            {
                return self.chain(inner);
            }
            link = err.source();
        }
        None
    }

    fn link(&self, err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
        if let Some(class) = self.links.iter().find_map(|classify| classify(err)) {
            return Some(class);
        }
        if let Some(err) = err.downcast_ref::<std::io::Error>() {
            return classify_io(err.kind());
        }
        if let Some(err) = err.downcast_ref::<object_store::Error>() {
            return classify_object_store(err);
        }
        if let Some(err) = err.downcast_ref::<DataFusionError>() {
            return classify_datafusion(err);
        }
        None
    }
}

/// Network trouble is transient; a missing file or a refused permission is
/// not; other kinds (`Other`, say) do not decide.
fn classify_io(kind: ErrorKind) -> Option<ErrorClass> {
    use ErrorKind::*;
    match kind {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | TimedOut
        | Interrupted | WouldBlock | BrokenPipe | HostUnreachable | NetworkUnreachable
        | NetworkDown => Some(ErrorClass::Transient),
        NotFound | PermissionDenied | AlreadyExists | InvalidInput | InvalidData | Unsupported => {
            Some(ErrorClass::Permanent)
        }
        _ => None,
    }
}

/// A failed precondition is a concurrent writer (transient); a missing
/// object, a bad path or missing rights are permanent; generic errors (HTTP,
/// after object_store's own retries) go on to their source and text.
fn classify_object_store(err: &object_store::Error) -> Option<ErrorClass> {
    use object_store::Error::*;
    match err {
        Precondition { .. } => Some(ErrorClass::Transient),
        NotFound { .. }
        | InvalidPath { .. }
        | NotSupported { .. }
        | AlreadyExists { .. }
        | NotModified { .. }
        | NotImplemented { .. }
        | PermissionDenied { .. }
        | Unauthenticated { .. }
        | UnknownConfigurationKey { .. } => Some(ErrorClass::Permanent),
        _ => None,
    }
}

/// Planning, schema and SQL errors are permanent, and so is running out of
/// the run's own memory limit (the same run needs the same memory); wrappers
/// (`External`, `Context`, `Shared`, I/O, object store, Arrow) go on to
/// their source; `Execution` errors are text.
fn classify_datafusion(err: &DataFusionError) -> Option<ErrorClass> {
    use DataFusionError::*;
    match err {
        SQL(..)
        | Plan(_)
        | SchemaError(..)
        | NotImplemented(_)
        | Configuration(_)
        | Internal(_)
        | ResourcesExhausted(_) => Some(ErrorClass::Permanent),
        _ => None,
    }
}

/// Messages (lower case) of failures that retrying cannot fix. Checked first:
/// "authentication failed ... connection reset" is an auth failure.
const PERMANENT: &[&str] = &[
    "authentication failed",
    "password authentication",
    "permission denied",
    "access denied",
    "unauthorized",
    "forbidden",
    "invalid credentials",
    "no field named",
    "schema error",
    "sql error",
    "parser error",
    "no such file",
    "not found",
];

/// Messages (lower case) of failures that may go away by themselves:
/// network trouble, timeouts, unavailable brokers, throttling and 5xx from
/// object stores, serialization failures and Delta commit conflicts.
const TRANSIENT: &[&str] = &[
    "connection refused",
    "connection reset",
    "connection aborted",
    "connection closed",
    "broken pipe",
    "timed out",
    "timeout",
    "deadline has elapsed",
    "broker transport failure",
    "broker not available",
    "brokernotavailable",
    "all brokers down",
    "leader not available",
    "temporarily unavailable",
    "service unavailable",
    "too many requests",
    "slow down",
    "server error (5",
    "internal server error",
    "bad gateway",
    "gateway timeout",
    "status code: 5",
    "status code: 429",
    "could not serialize access",
    "serialization failure",
    "deadlock detected",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
    "concurrent append",
    "concurrent delete",
    "concurrent transaction",
    "metadata changed since last commit",
    "tried committing existing table version",
    "version already exists",
];

/// The fallback for untyped text: transient only when it matches
/// [`TRANSIENT`] and not [`PERMANENT`]; anything unrecognised is permanent.
fn classify_text(message: &str) -> ErrorClass {
    let message = message.to_ascii_lowercase();
    let matches = |table: &[&str]| table.iter().any(|p| message.contains(p));
    if matches(PERMANENT) || !matches(TRANSIENT) {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::StepRef;

    fn step_error(cause: impl Into<crate::error::BoxError>) -> Error {
        let step = StepRef {
            index: 0,
            method: "fromPostgres".into(),
            name: None,
        };
        Error::step(&step, cause)
    }

    fn class(cause: impl Into<crate::error::BoxError>) -> ErrorClass {
        Classifier::new().classify(&step_error(cause))
    }

    #[test]
    fn classifies_untyped_text() {
        let transient = [
            "error connecting to server: Connection refused (os error 111)",
            "Connection reset by peer (os error 104)",
            "operation timed out",
            "Broker: Broker not available",
            "Generic S3 error: HTTP status server error (503 Service Unavailable) for url",
            "Server returned non-2xx status code: 429 Too Many Requests",
            "could not serialize access due to concurrent update",
            "Transaction failed: Commit failed: Concurrent append failed.",
            "Tried committing existing table version: 4",
        ];
        for message in transient {
            assert_eq!(class(message), ErrorClass::Transient, "{message}");
        }
        let permanent = [
            "password authentication failed for user \"etl\"",
            "Schema error: No field named amount",
            "SQL error: ParserError(\"Expected: an expression\")",
            "Object at location data/in.csv not found",
            "permission denied for table orders",
            "division by zero",
            "SASL authentication failed: connection reset",
        ];
        for message in permanent {
            assert_eq!(class(message), ErrorClass::Permanent, "{message}");
        }
    }

    #[test]
    fn classifies_by_variant() {
        let classifier = Classifier::new();
        let config = Error::config("steps[0].config.path", None, "timed out");
        assert_eq!(classifier.classify(&config), ErrorClass::Permanent);
        assert_eq!(
            classifier.classify(&Error::Cancelled),
            ErrorClass::Permanent
        );
        let io = Error::Io {
            context: "reading".into(),
            source: std::io::Error::from(ErrorKind::ConnectionRefused),
        };
        assert_eq!(classifier.classify(&io), ErrorClass::Transient);
        let df = Error::DataFusion(DataFusionError::Execution("connection reset".into()));
        assert_eq!(classifier.classify(&df), ErrorClass::Transient);
    }

    #[test]
    fn classifies_io_kinds_before_text() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::TimedOut,
            ErrorKind::BrokenPipe,
            ErrorKind::HostUnreachable,
        ] {
            // The text alone would be permanent ("not found").
            let err = std::io::Error::new(kind, "peer not found");
            assert_eq!(class(err), ErrorClass::Transient, "{kind:?}");
        }
        for kind in [ErrorKind::NotFound, ErrorKind::PermissionDenied] {
            // The text alone would be transient.
            let err = std::io::Error::new(kind, "timed out");
            assert_eq!(class(err), ErrorClass::Permanent, "{kind:?}");
        }
        // An undecided kind goes on to what it wraps, then to the text.
        let wrapped = std::io::Error::other(std::io::Error::from(ErrorKind::ConnectionAborted));
        assert_eq!(class(wrapped), ErrorClass::Transient);
        assert_eq!(
            class(std::io::Error::other("timeout")),
            ErrorClass::Transient
        );
        assert_eq!(class(std::io::Error::other("boom")), ErrorClass::Permanent);
    }

    #[test]
    fn classifies_object_store_errors() {
        let precondition = object_store::Error::Precondition {
            path: "t/_delta_log/00001.json".into(),
            source: "not found".into(),
        };
        assert_eq!(class(precondition), ErrorClass::Transient);
        let not_found = object_store::Error::NotFound {
            path: "in.csv".into(),
            source: "connection reset".into(),
        };
        assert_eq!(class(not_found), ErrorClass::Permanent);
        let denied = object_store::Error::PermissionDenied {
            path: "in.csv".into(),
            source: "timeout".into(),
        };
        assert_eq!(class(denied), ErrorClass::Permanent);
        // Generic errors are decided by their source.
        let generic = object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(ErrorKind::ConnectionReset)),
        };
        assert_eq!(class(generic), ErrorClass::Transient);
    }

    #[test]
    fn classifies_through_datafusion_wrappers() {
        let reset = || std::io::Error::new(ErrorKind::ConnectionReset, "no field named x");
        let wrapped = [
            DataFusionError::IoError(reset()),
            DataFusionError::External(Box::new(reset())),
            DataFusionError::Context("reading".into(), Box::new(reset().into())),
            DataFusionError::Shared(Arc::new(DataFusionError::External(Box::new(reset())))),
            DataFusionError::ObjectStore(Box::new(object_store::Error::Generic {
                store: "S3",
                source: Box::new(reset()),
            })),
        ];
        for err in wrapped {
            let text = err.to_string();
            assert_eq!(class(err), ErrorClass::Transient, "{text}");
        }
        let permanent = [
            DataFusionError::Plan("connection reset".into()),
            DataFusionError::ResourcesExhausted("timed out waiting for memory".into()),
            DataFusionError::Context(
                "step".into(),
                Box::new(DataFusionError::NotImplemented("timeout".into())),
            ),
        ];
        for err in permanent {
            let text = err.to_string();
            assert_eq!(class(err), ErrorClass::Permanent, "{text}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("library said: permission denied")]
    struct LibraryError {
        busy: bool,
    }

    fn library(err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
        err.downcast_ref::<LibraryError>().map(|e| match e.busy {
            true => ErrorClass::Transient,
            false => ErrorClass::Permanent,
        })
    }

    #[test]
    fn link_classifiers_decide_inside_wrappers() {
        let classifier = Classifier::new().with(library);
        let inside = |busy| {
            let err = DataFusionError::External(Box::new(LibraryError { busy }));
            step_error(DataFusionError::Context("writing".into(), Box::new(err)))
        };
        assert_eq!(classifier.classify(&inside(true)), ErrorClass::Transient);
        assert_eq!(classifier.classify(&inside(false)), ErrorClass::Permanent);
        // Without it, the text decides.
        assert_eq!(
            Classifier::new().classify(&inside(true)),
            ErrorClass::Permanent
        );
    }
}
