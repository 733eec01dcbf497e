//! The loop that runs pipelines on their cron schedules.
//!
//! Each pipeline gets a ticker (sleeps until the next slot) and a worker
//! (runs one slot at a time), joined by a channel of capacity one: a slot
//! that finds the pipeline busy is skipped (`overlap: skip`) or waits for
//! the current run (`overlap: queue`, at most one waiting slot).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::ops::history::RunCause;
use crate::ops::runner::Runner;
use crate::spec::{CatchUp, CronSchedule, Overlap, PipelineSpec};

/// Loads a pipeline's config again, reading its Vault secrets anew.
pub type Reload = Arc<dyn Fn() -> BoxFuture<'static, Result<PipelineSpec>> + Send + Sync>;

/// One pipeline to run on its schedule.
#[derive(Clone)]
pub struct Job {
    /// The pipeline.
    pub spec: PipelineSpec,
    /// Its parsed `schedule`.
    pub schedule: CronSchedule,
    /// Runs it, with its history and metrics.
    pub runner: Runner,
    /// Called before every run, so that each run uses the secrets of its
    /// own time (a password rotated in Vault); `None`: `spec` as it is.
    pub reload: Option<Reload>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("spec", &self.spec)
            .field("schedule", &self.schedule)
            .field("reload", &self.reload.is_some())
            .finish_non_exhaustive()
    }
}

/// Runs every job on its schedule until `shutdown` fires, then lets running
/// pipelines stop cleanly (cancelled before their commit point, or finishing
/// a commit already under way) and returns.
pub async fn run_schedules(jobs: Vec<Job>, shutdown: CancellationToken) {
    let tasks = jobs
        .into_iter()
        .map(|job| tokio::spawn(run_job(job, shutdown.clone())));
    for task in futures::future::join_all(tasks).await {
        if let Err(err) = task {
            tracing::error!("a scheduler task failed: {err}");
        }
    }
}

async fn run_job(job: Job, shutdown: CancellationToken) {
    let Job {
        spec,
        schedule,
        runner,
        reload,
    } = job;
    let spec = Arc::new(spec);
    let busy = Arc::new(AtomicBool::new(false));
    let (slots, mut pending) = mpsc::channel::<DateTime<Utc>>(1);
    let worker = {
        let (spec, runner, busy, shutdown) =
            (spec.clone(), runner.clone(), busy.clone(), shutdown.clone());
        tokio::spawn(async move {
            while let Some(slot) = pending.recv().await {
                if shutdown.is_cancelled() {
                    break;
                }
                busy.store(true, Ordering::SeqCst);
                // The outcome is in the history, the metrics and the log.
                let fresh = match &reload {
                    None => Ok(spec.clone()),
                    Some(reload) => reload().await.map(Arc::new),
                };
                match fresh {
                    Ok(fresh) => {
                        let _ = runner
                            .run(&fresh, RunCause::Schedule, Some(slot), &shutdown)
                            .await;
                    }
                    Err(err) => runner.not_started(&spec.name, slot, err),
                }
                busy.store(false, Ordering::SeqCst);
            }
        })
    };

    let now = Utc::now();
    if spec.catch_up == CatchUp::Once {
        if let Some(last) = runner.history().last_scheduled(&spec.name) {
            if schedule.missed(last, now) {
                tracing::info!(pipeline = %spec.name, "catching up on slots missed since {last}");
                let _ = slots.try_send(now);
            }
        }
    }
    let mut after = now;
    while let Some(slot) = schedule.next_after(after) {
        tracing::info!(pipeline = %spec.name, "next run at {}", schedule.local(slot));
        let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => break,
        }
        after = slot;
        let skip = spec.overlap == Overlap::Skip && busy.load(Ordering::SeqCst);
        if skip || slots.try_send(slot).is_err() {
            runner.skipped(&spec.name, slot);
        }
    }
    drop(slots);
    if let Err(err) = worker.await {
        tracing::error!(pipeline = %spec.name, "the run worker failed: {err}");
    }
}
