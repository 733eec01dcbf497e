//! Which failures are worth retrying, and the retry loop with exponential
//! backoff and jitter.
//!
//! Connector errors reach the engine boxed into [`Error::Step`] as text, so
//! the classification of run-time failures reads the message: the patterns
//! live in the two tables below and nowhere else.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ops::shutdown::Shutdown;
use crate::spec::Backoff;

/// Whether retrying a failed run may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The environment may recover: retry after a delay.
    Transient,
    /// Retrying cannot help: fix the config, the data or the credentials.
    Permanent,
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

/// Classifies a failed run. Config and planning errors and cancellation are
/// permanent; run-time errors are transient only when their message matches
/// [`TRANSIENT`] and not [`PERMANENT`]; anything unrecognised is permanent.
pub fn classify(err: &Error) -> ErrorClass {
    match err {
        Error::Config { .. } | Error::Plan { .. } | Error::Cancelled => ErrorClass::Permanent,
        Error::Io { source, .. } => classify_io(source.kind()),
        Error::Step { message, .. } => classify_message(message),
        Error::DataFusion(err) => classify_message(&err.to_string()),
    }
}

fn classify_io(kind: std::io::ErrorKind) -> ErrorClass {
    use std::io::ErrorKind::*;
    match kind {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | Interrupted
        | WouldBlock | BrokenPipe => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

fn classify_message(message: &str) -> ErrorClass {
    let message = message.to_ascii_lowercase();
    let matches = |table: &[&str]| table.iter().any(|p| message.contains(p));
    if matches(PERMANENT) || !matches(TRANSIENT) {
        ErrorClass::Permanent
    } else {
        ErrorClass::Transient
    }
}

/// How often and how patiently a run is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Delay bounds.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): a random duration
    /// between half and all of `min(initial * 2^(retry-1), max)`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = 2u64.saturating_pow(retry.saturating_sub(1));
        let ceiling = self
            .backoff
            .initial_ms
            .saturating_mul(exp)
            .min(self.backoff.max_ms);
        let half = ceiling / 2;
        Duration::from_millis(half + fastrand::u64(0..=ceiling - half))
    }
}

/// Runs `attempt(n)` for n = 1, 2, ... until it succeeds, fails permanently,
/// or has failed `policy.retries + 1` times; sleeps [`RetryPolicy::delay`]
/// between attempts. Returns [`Error::Cancelled`] if `shutdown` fires while
/// waiting. `on_retry(n, err, delay)` is told about each retry before its
/// delay.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    shutdown: &Shutdown,
    mut attempt: F,
    mut on_retry: impl FnMut(u32, &Error, Duration),
) -> Result<T, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut n = 1;
    loop {
        let err = match attempt(n).await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if n > policy.retries || classify(&err) == ErrorClass::Permanent {
            return Err(err);
        }
        let delay = policy.delay(n);
        on_retry(n, &err, delay);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.clone().wait() => return Err(Error::Cancelled),
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use datafusion::error::DataFusionError;

    use super::*;
    use crate::error::StepRef;
    use crate::ops::shutdown::shutdown;

    fn step_error(message: &str) -> Error {
        let step = StepRef {
            index: 0,
            method: "fromPostgres".into(),
            name: None,
        };
        Error::step(&step, message)
    }

    #[test]
    fn classifies_step_messages() {
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
            assert_eq!(
                classify(&step_error(message)),
                ErrorClass::Transient,
                "{message}"
            );
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
            assert_eq!(
                classify(&step_error(message)),
                ErrorClass::Permanent,
                "{message}"
            );
        }
    }

    #[test]
    fn classifies_by_variant() {
        let config = Error::config("steps[0].config.path", None, "timed out");
        assert_eq!(classify(&config), ErrorClass::Permanent);
        assert_eq!(classify(&Error::Cancelled), ErrorClass::Permanent);
        let io = |kind| Error::Io {
            context: "reading".into(),
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            classify(&io(std::io::ErrorKind::ConnectionRefused)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&io(std::io::ErrorKind::NotFound)),
            ErrorClass::Permanent
        );
        let df = Error::DataFusion(DataFusionError::Execution("connection reset".into()));
        assert_eq!(classify(&df), ErrorClass::Transient);
    }

    fn policy(retries: u32, initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff: Backoff { initial_ms, max_ms },
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_cap() {
        let p = policy(10, 100, 1000);
        for _ in 0..50 {
            for (retry, ceiling) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1000),
                (30, 1000),
            ] {
                let d = p.delay(retry).as_millis() as u64;
                assert!(d >= ceiling / 2 && d <= ceiling, "retry {retry}: {d}ms");
            }
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let (_trigger, signal) = shutdown();
        let mut retried = Vec::new();
        let result = retry(
            &policy(3, 1, 5),
            &signal,
            |n| async move {
                if n < 3 {
                    Err(step_error("Connection refused (os error 111)"))
                } else {
                    Ok(n)
                }
            },
            |n, _, _| retried.push(n),
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(retried, vec![1, 2]);
    }

    #[tokio::test]
    async fn permanent_failures_and_exhausted_retries_stop() {
        let (_trigger, signal) = shutdown();
        let mut attempts = 0;
        let result: Result<(), _> = retry(
            &policy(5, 1, 5),
            &signal,
            |_| {
                attempts += 1;
                async { Err(step_error("Schema error: No field named x")) }
            },
            |_, _, _| {},
        )
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 1);

        let mut attempts = 0;
        let result: Result<(), _> = retry(
            &policy(2, 1, 5),
            &signal,
            |_| {
                attempts += 1;
                async { Err(step_error("operation timed out")) }
            },
            |_, _, _| {},
        )
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn shutdown_interrupts_the_backoff() {
        let (trigger, signal) = shutdown();
        trigger.fire();
        let result: Result<(), _> = retry(
            &policy(5, 60_000, 60_000),
            &signal,
            |_| async { Err(step_error("connection reset")) },
            |_, _, _| {},
        )
        .await;
        assert!(matches!(result, Err(Error::Cancelled)));
    }
}
