//! The commit gate: all sinks of a run stage their output, then commit only
//! once every sink has staged successfully. A failure or Ctrl-C before that
//! point aborts every commit, so each target stays at its previous version.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting { arrived: usize },
    Open,
    Aborted,
}

/// Returned by [`CommitGate::ready`] when the run was aborted: the sink must
/// discard what it staged.
#[derive(Debug, thiserror::Error)]
#[error("commit abandoned because another step failed or the run was cancelled")]
pub struct CommitAbandoned;

/// One sink's handle on the run's shared gate.
#[derive(Debug, Clone)]
pub struct CommitGate {
    phase: Arc<watch::Sender<Phase>>,
    expected: usize,
    arrived: Arc<AtomicBool>,
    opened_at: Arc<OnceLock<Instant>>,
}

impl CommitGate {
    /// Creates one handle per participant of a gate that opens when all have
    /// called [`ready`](Self::ready).
    pub fn for_participants(count: usize) -> Vec<CommitGate> {
        let phase = Arc::new(watch::Sender::new(Phase::Waiting { arrived: 0 }));
        let opened_at = Arc::new(OnceLock::new());
        (0..count)
            .map(|_| CommitGate {
                phase: phase.clone(),
                expected: count,
                arrived: Arc::new(AtomicBool::new(false)),
                opened_at: opened_at.clone(),
            })
            .collect()
    }

    /// Announces that this sink has staged everything, then waits until all
    /// sinks have (`Ok`: commit now) or the run was aborted (`Err`: discard).
    /// Calling it again returns the same outcome without counting twice.
    pub async fn ready(&self) -> Result<(), CommitAbandoned> {
        if !self.arrived.swap(true, Ordering::SeqCst) {
            let expected = self.expected;
            self.phase.send_modify(|phase| {
                if let Phase::Waiting { arrived } = phase {
                    *arrived += 1;
                    if *arrived >= expected {
                        *phase = Phase::Open;
                        let _ = self.opened_at.set(Instant::now());
                    }
                }
            });
        }
        let mut rx = self.phase.subscribe();
        let phase = rx
            .wait_for(|phase| !matches!(phase, Phase::Waiting { .. }))
            .await
            .map(|phase| *phase)
            .unwrap_or(Phase::Aborted);
        match phase {
            Phase::Open => Ok(()),
            _ => Err(CommitAbandoned),
        }
    }

    /// Aborts the run's commits unless the gate already opened; returns
    /// whether the abort took effect.
    pub fn abort(&self) -> bool {
        let mut aborted = false;
        self.phase.send_modify(|phase| {
            if matches!(phase, Phase::Waiting { .. }) {
                *phase = Phase::Aborted;
                aborted = true;
            }
        });
        aborted
    }

    /// Resolves once the run's commits are aborted; never if the gate
    /// opens. A sink still staging races its work against it, to stop and
    /// discard what it staged at once.
    pub async fn aborted(&self) {
        let mut rx = self.phase.subscribe();
        let settled = rx
            .wait_for(|phase| !matches!(phase, Phase::Waiting { .. }))
            .await
            .map(|phase| *phase);
        if !matches!(settled, Ok(Phase::Aborted)) {
            std::future::pending::<()>().await;
        }
    }

    /// When the gate opened (the run's commit point), if it did.
    pub fn opened_at(&self) -> Option<Instant> {
        self.opened_at.get().copied()
    }

    /// True once every participant is ready and commits may proceed.
    pub fn is_open(&self) -> bool {
        *self.phase.borrow() == Phase::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_when_all_arrive() {
        let gates = CommitGate::for_participants(2);
        let (a, b) = (gates[0].clone(), gates[1].clone());
        let first = tokio::spawn(async move { a.ready().await.is_ok() });
        assert!(!gates[1].is_open());
        assert!(b.ready().await.is_ok());
        assert!(first.await.unwrap());
        assert!(!gates[0].abort(), "abort after open has no effect");
    }

    #[tokio::test]
    async fn aborted_resolves_on_abort_only() {
        let gates = CommitGate::for_participants(2);
        let a = gates[0].clone();
        let watcher = tokio::spawn(async move { a.aborted().await });
        assert!(gates[1].abort());
        watcher.await.unwrap();
        let open = CommitGate::for_participants(1);
        open[0].ready().await.unwrap();
        let never = tokio::time::timeout(std::time::Duration::from_millis(50), open[0].aborted());
        assert!(never.await.is_err(), "an open gate is never aborted");
    }

    #[tokio::test]
    async fn abort_releases_waiters_with_error() {
        let gates = CommitGate::for_participants(2);
        let a = gates[0].clone();
        let waiter = tokio::spawn(async move { a.ready().await.is_err() });
        assert!(gates[1].abort());
        assert!(waiter.await.unwrap());
    }
}
