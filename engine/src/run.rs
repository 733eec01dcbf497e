//! Batch execution: every load runs concurrently over the compiled plan,
//! stages its output, and all commit together through one [`CommitGate`].

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::commit::CommitGate;
use crate::connector::{SinkReport, WriteContext};
use crate::error::{Error, Result, StepRef};
use crate::ops::progress::{counted, RowCounter};
use crate::plan::Pipeline;
use crate::spec::StepKind;

/// One line of the run summary.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step.
    pub step: StepRef,
    /// extract, transform or load.
    pub kind: StepKind,
    /// Rows written (loads) or cached (cached steps); `None` for steps that
    /// are fused into the plan of the loads that read them.
    pub rows: Option<u64>,
    /// Bytes written (loads).
    pub bytes: Option<u64>,
    /// Wall time of the step (loads).
    pub duration: Option<Duration>,
    /// A short note: table version, cache level, ...
    pub detail: String,
}

/// What a successful run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Pipeline name.
    pub pipeline: String,
    /// One report per step, in config order.
    pub steps: Vec<StepReport>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Time from the commit point (every load staged) to the end of the
    /// run: the commits themselves. `None` when nothing reached it.
    pub commit: Option<Duration>,
}

impl Pipeline {
    /// Runs every load concurrently and commits all of them, or none if any
    /// fails or `cancel` resolves before the commit point.
    pub async fn run(&self, cancel: impl Future<Output = ()>) -> Result<RunSummary> {
        self.run_counted(cancel, None).await
    }

    /// [`run`](Self::run), counting the rows passed to the loads in
    /// `progress` as they go.
    pub async fn run_counted(
        &self,
        cancel: impl Future<Output = ()>,
        progress: Option<&RowCounter>,
    ) -> Result<RunSummary> {
        let started = Instant::now();
        let gates = CommitGate::for_participants(self.loads.len());
        let marks = self.marks();
        let starts = self.starts();
        let loads = self
            .loads
            .iter()
            .zip(gates.iter())
            .map(|(load, gate)| {
                let ctx = WriteContext {
                    gate: gate.clone(),
                    marks: marks.clone(),
                    starts: starts.clone(),
                };
                (load, gate, ctx)
            })
            .map(|(load, gate, ctx)| async move {
                let t = Instant::now();
                let input = match progress {
                    Some(counter) => counted(load.input.clone(), counter)
                        .map_err(|e| (gate.abort(), Error::step(&load.step, e)))?,
                    None => load.input.clone(),
                };
                match load.sink.write(input, ctx).await {
                    Ok(report) => {
                        // A sink with nothing to stage (console) may never call
                        // ready(); count it as ready so the others can commit.
                        let _ = gate.ready().await;
                        Ok((report, t.elapsed()))
                    }
                    Err(err) => {
                        let first = gate.abort();
                        Err((first, Error::from_connector(&load.step, err)))
                    }
                }
            });
        let all = futures::future::join_all(loads);
        tokio::pin!(all);
        tokio::pin!(cancel);
        let results = tokio::select! {
            results = &mut all => results,
            () = &mut cancel => {
                // The handles share one gate: aborting one aborts the run's
                // commits, unless they already began.
                gates.first().map(CommitGate::abort);
                if !gates.iter().any(CommitGate::is_open) {
                    return Err(Error::Cancelled);
                }
                tracing::warn!("interrupted during commit; letting the commits finish");
                all.await
            }
        };

        let mut reports = Vec::with_capacity(results.len());
        let mut failures = Vec::new();
        for result in results {
            match result {
                Ok(done) => reports.push(Some(done)),
                Err(failure) => {
                    reports.push(None);
                    failures.push(failure);
                }
            }
        }
        if !failures.is_empty() {
            // The first failure is the cause; the others were abandoned
            // because of it (or, past the commit point, failed on their own).
            let cause = failures.iter().position(|(first, _)| *first).unwrap_or(0);
            for (i, (_, err)) in failures.iter().enumerate() {
                if i != cause {
                    tracing::debug!("also failed: {err}");
                }
            }
            return Err(failures.swap_remove(cause).1);
        }
        for source in self.sources.iter().filter(|s| !s.marks.is_empty()) {
            source
                .source
                .committed(&source.marks)
                .await
                .map_err(|e| Error::from_connector(&source.step, e))?;
            if let Some(log) = &source.offset_log {
                log.store(&source.marks)?;
            }
        }
        let mut summary =
            self.summarize(reports.into_iter().flatten().collect(), started.elapsed());
        summary.commit = gates
            .first()
            .and_then(CommitGate::opened_at)
            .map(|t| t.elapsed());
        Ok(summary)
    }

    fn summarize(&self, loads: Vec<(SinkReport, Duration)>, elapsed: Duration) -> RunSummary {
        let mut loads = self.loads.iter().zip(loads);
        let steps = self
            .steps
            .iter()
            .map(|(step, kind)| {
                let mut report = StepReport {
                    step: step.clone(),
                    kind: *kind,
                    rows: None,
                    bytes: None,
                    duration: None,
                    detail: String::new(),
                };
                if *kind == StepKind::Load {
                    if let Some((load, (sink, took))) = loads.next() {
                        report.rows = Some(sink.rows);
                        report.bytes = Some(sink.bytes);
                        report.duration = Some(took);
                        report.detail = format!("from {}; {}", load.input_name, sink.detail);
                    }
                } else if let Some(cached) = self.caches.iter().find(|c| c.step == *step) {
                    report.rows = Some(cached.state.rows());
                    report.detail = format!(
                        "cached {} (computed {}x)",
                        cached.state.level(),
                        cached.state.computations()
                    );
                }
                report
            })
            .collect();
        RunSummary {
            pipeline: self.name.clone(),
            steps,
            elapsed,
            commit: None,
        }
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline \"{}\" succeeded in {:.2}s",
            self.pipeline,
            self.elapsed.as_secs_f64()
        )?;
        let labels: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{} {}", s.kind, s.step))
            .collect();
        let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(4);
        writeln!(
            f,
            "{:<width$} {:>12} {:>11} {:>8}  detail",
            "step", "rows", "bytes", "time"
        )?;
        for (s, label) in self.steps.iter().zip(labels) {
            let rows = s.rows.map_or("-".to_string(), |r| r.to_string());
            let bytes = s.bytes.map_or("-".to_string(), human_bytes);
            let time = s
                .duration
                .map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
            let detail = if s.detail.is_empty() && s.kind != StepKind::Load {
                "fused into the loads' plans"
            } else {
                &s.detail
            };
            writeln!(
                f,
                "{label:<width$} {rows:>12} {bytes:>11} {time:>8}  {detail}"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn formats_bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
