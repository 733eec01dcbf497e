//! The retry loop with exponential backoff and jitter, for runs; the same
//! [`RetryPolicy`] paces the connectors' own retries (a PostgreSQL
//! partition whose connection was lost). Which failures are worth retrying
//! is [`crate::classify`]'s decision.

use std::future::Future;
use std::time::Duration;

use crate::classify::{Classifier, ErrorClass};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::spec::Backoff;

/// How often and how patiently a failed operation is retried: a run, or a
/// connector's own attempt (with its own parameters).
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

/// How a retried operation ended without succeeding.
#[derive(Debug)]
pub enum GaveUp<E> {
    /// The last attempt failed with `err`, after `retries` retries.
    Failed {
        /// The last attempt's error.
        err: E,
        /// Retries made before giving up.
        retries: u32,
    },
    /// The shutdown signal fired while waiting for the next attempt.
    Cancelled,
}

/// The one retry loop: runs `attempt(n)` for n = 1, 2, ... until it
/// succeeds, fails in a way `retryable` refuses, or has failed
/// `policy.retries + 1` times; sleeps [`RetryPolicy::delay`] between
/// attempts, and stops waiting when `shutdown` (if any) fires.
/// `on_retry(n, err, delay)` is told about each retry before its delay.
pub async fn retry_when<T, E, F, Fut>(
    policy: &RetryPolicy,
    shutdown: Option<&CancellationToken>,
    mut attempt: F,
    mut retryable: impl FnMut(&E) -> bool,
    mut on_retry: impl FnMut(u32, &E, Duration),
) -> Result<T, GaveUp<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut n = 1;
    loop {
        let err = match attempt(n).await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        if n > policy.retries || !retryable(&err) {
            let retries = n - 1;
            return Err(GaveUp::Failed { err, retries });
        }
        let delay = policy.delay(n);
        on_retry(n, &err, delay);
        let cancelled = async {
            match shutdown {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancelled => return Err(GaveUp::Cancelled),
        }
        n += 1;
    }
}

/// [`retry_when`] for runs: retries what `classifier` does not call
/// permanent; returns [`Error::Cancelled`] if `shutdown` fires while
/// waiting.
pub async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    classifier: &Classifier,
    shutdown: &CancellationToken,
    attempt: F,
    on_retry: impl FnMut(u32, &Error, Duration),
) -> Result<T, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let transient = |err: &Error| classifier.classify(err) != ErrorClass::Permanent;
    retry_when(policy, Some(shutdown), attempt, transient, on_retry)
        .await
        .map_err(|gave_up| match gave_up {
            GaveUp::Failed { err, .. } => err,
            GaveUp::Cancelled => Error::Cancelled,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StepRef;

    fn step_error(message: &str) -> Error {
        let step = StepRef {
            index: 0,
            method: "fromPostgres".into(),
            name: None,
        };
        Error::step(&step, message)
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
        let signal = CancellationToken::new();
        let mut retried = Vec::new();
        let result = retry(
            &policy(3, 1, 5),
            &Classifier::new(),
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
        let signal = CancellationToken::new();
        let mut attempts = 0;
        let result: Result<(), _> = retry(
            &policy(5, 1, 5),
            &Classifier::new(),
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
            &Classifier::new(),
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
        let signal = CancellationToken::new();
        signal.cancel();
        let result: Result<(), _> = retry(
            &policy(5, 60_000, 60_000),
            &Classifier::new(),
            &signal,
            |_| async { Err(step_error("connection reset")) },
            |_, _, _| {},
        )
        .await;
        assert!(matches!(result, Err(Error::Cancelled)));
    }
}
