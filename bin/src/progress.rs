//! Progress of `run`: on a terminal, a spinner line on stderr with the rows
//! passed to the loads so far, their rate and the elapsed time (from the
//! second second on, so quick runs show nothing); elsewhere an info log line
//! every 10 s, shown with `-v`. Nothing with `-q`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use dataflow_engine::progress::RowCounter;
use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// Runs shorter than this show no bar.
const SHOW_AFTER: Duration = Duration::from_secs(1);
/// How often the count is read.
const TICK: Duration = Duration::from_millis(200);
/// How often a plain progress line is logged when stderr is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A running progress display; cleared when finished or dropped.
pub struct Progress {
    counter: RowCounter,
    bar: Option<ProgressBar>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts a display for `pipeline`, or `None` when nobody would see
    /// it: with `-q`, or when stderr is no terminal and info logs are off.
    pub fn start(pipeline: &str, quiet: bool) -> Option<Progress> {
        if quiet {
            return None;
        }
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template("{spinner} {prefix}: {msg}  [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(pipeline.to_string());
            Some(bar)
        } else if tracing::enabled!(tracing::Level::INFO) {
            None
        } else {
            return None;
        };
        let counter = RowCounter::default();
        let task = tokio::spawn(update(counter.clone(), bar.clone(), pipeline.to_string()));
        Some(Progress { counter, bar, task })
    }

    /// The counter the run adds its rows to.
    pub fn counter(&self) -> RowCounter {
        self.counter.clone()
    }

    /// Stops updating and clears the bar; off a terminal, logs the rows
    /// counted in all.
    pub fn finish(self) {
        if self.bar.is_none() {
            let rows = self.counter.get();
            tracing::info!("counted {rows} rows passed to the loads");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Updates `bar`, or logs a line now and then, until aborted.
async fn update(counter: RowCounter, bar: Option<ProgressBar>, pipeline: String) {
    let started = Instant::now();
    let mut logged = started;
    let mut shown = false;
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        let rows = counter.get();
        let elapsed = started.elapsed();
        let rate = rows as f64 / elapsed.as_secs_f64().max(0.001);
        let text = format!(
            "{} rows, {} rows/s",
            HumanCount(rows),
            HumanCount(rate as u64)
        );
        match &bar {
            Some(bar) => {
                if !shown && elapsed >= SHOW_AFTER {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    shown = true;
                }
                bar.set_message(text);
            }
            None if logged.elapsed() >= LOG_EVERY => {
                logged = Instant::now();
                tracing::info!(
                    pipeline,
                    "progress: {text}, {:.0}s elapsed",
                    elapsed.as_secs_f64()
                );
            }
            None => {}
        }
    }
}
