//! Run history: one JSON object per line in `<state dir>/history.jsonl`,
//! appended for every attempt and every skipped schedule slot, and for
//! streaming runs when they start, every so often while they run, and when
//! they stop; readable by any tool that reads JSON lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::classify::{Classifier, ErrorClass};
use crate::error::{Error, Result};
use crate::spec::{PipelineSpec, StepKind};
use crate::stream::{BatchReport, StreamSummary};

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// `run-pipeline run`.
    Manual,
    /// A schedule slot.
    Schedule,
    /// A retry after a transient failure.
    Retry,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every load committed.
    Succeeded,
    /// Nothing was committed because of an error.
    Failed,
    /// Stopped by SIGINT/SIGTERM before its commit point.
    Cancelled,
    /// A schedule slot dropped because the previous run was still going.
    Skipped,
    /// A streaming run under way (its start and progress records).
    Running,
    /// A streaming run stopped by SIGINT/SIGTERM (a clean stop).
    Stopped,
}

impl Status {
    /// The lower-case name, as in the JSON and the metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// What one step did in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Position in `steps`.
    pub index: usize,
    /// The step's method.
    pub method: String,
    /// Its `registerAs` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// extract, transform or load.
    pub kind: String,
    /// Rows written (loads) or cached; for streaming runs, positions read
    /// (streaming extracts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes written (loads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Wall time in milliseconds (loads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// One line of the history: one attempt of a run, or one skipped slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Pipeline name.
    pub pipeline: String,
    /// Shared by the attempts of one run.
    pub run_id: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// What started this attempt.
    pub trigger: Trigger,
    /// The schedule slot, for scheduled runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// When the attempt started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
    /// How it ended.
    pub status: Status,
    /// The error, for failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the error was worth retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
    /// Per-step rows, bytes and durations, for successful attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// Streaming runs: batches and rows so far (`batches`, `rowsIn`,
    /// `rowsOut` beside the other fields).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamProgress>,
}

/// How far a streaming run has got: batches committed, positions consumed
/// and rows written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamProgress {
    /// Batches committed.
    pub batches: u64,
    /// Positions consumed (Kafka: records read).
    pub rows_in: i64,
    /// Rows written, summed over the loads.
    pub rows_out: u64,
}

/// A progress record of a running stream is written after this many batches
/// since the last record...
pub const STREAM_RECORD_BATCHES: u64 = 100;
/// ... or at the first batch this long after it, whichever comes first.
pub const STREAM_RECORD_INTERVAL: Duration = Duration::from_secs(60);

/// The history of one streaming run: a `running` record at its start, one
/// with the counts so far every [`STREAM_RECORD_BATCHES`] batches or
/// [`STREAM_RECORD_INTERVAL`] (checked when a batch commits), and one when it
/// ends (`succeeded`: the trigger ended it; `stopped`: a signal; `failed`).
/// All share one run id. Failing to write a record is logged, never fatal.
#[derive(Debug)]
pub struct StreamRun {
    history: History,
    record: RunRecord,
    progress: StreamProgress,
    /// Positions consumed per streaming source step (its display name).
    read: BTreeMap<String, i64>,
    /// Index, method, name and kind of the extract and load steps.
    steps: Vec<StepRecord>,
    last_record: Instant,
    batches_at_last_record: u64,
}

impl StreamRun {
    /// Records the start of a streaming run of `spec` (trigger `manual`).
    pub fn start(history: History, spec: &PipelineSpec) -> Self {
        let steps = spec
            .steps
            .iter()
            .filter(|i| i.kind != StepKind::Transform)
            .map(|i| StepRecord {
                index: i.step.index,
                method: i.step.method.clone(),
                name: i.step.name.clone(),
                kind: i.kind.to_string(),
                rows: None,
                bytes: None,
                duration_ms: None,
            })
            .collect();
        let now = Utc::now();
        let mut run = StreamRun {
            history,
            record: RunRecord {
                pipeline: spec.name.clone(),
                run_id: uuid::Uuid::new_v4().to_string(),
                attempt: 1,
                trigger: Trigger::Manual,
                scheduled_for: None,
                start: now,
                end: now,
                status: Status::Running,
                error: None,
                error_class: None,
                steps: Vec::new(),
                stream: None,
            },
            progress: StreamProgress::default(),
            read: BTreeMap::new(),
            steps,
            last_record: Instant::now(),
            batches_at_last_record: 0,
        };
        run.append();
        run
    }

    /// The run id all records of this run share.
    pub fn run_id(&self) -> &str {
        &self.record.run_id
    }

    /// The counts so far.
    pub fn progress(&self) -> StreamProgress {
        self.progress
    }

    /// Counts a committed batch; writes a progress record when one is due.
    pub fn batch(&mut self, batch: &BatchReport) {
        self.progress.batches += 1;
        self.progress.rows_in += batch.rows_in;
        self.progress.rows_out += batch.rows_out;
        for source in &batch.sources {
            let read: i64 = source.partitions.iter().map(|p| p.end - p.start).sum();
            *self.read.entry(source.step.clone()).or_default() += read;
        }
        if self.progress.batches - self.batches_at_last_record >= STREAM_RECORD_BATCHES
            || self.last_record.elapsed() >= STREAM_RECORD_INTERVAL
        {
            self.append();
        }
    }

    /// Records how the run ended and returns that status: `succeeded` when
    /// its trigger ended it, `stopped` on a signal, `failed` on an error
    /// (classified by `classifier`).
    pub fn finish(mut self, result: &Result<StreamSummary>, classifier: &Classifier) -> Status {
        match result {
            Ok(summary) if summary.interrupted => self.record.status = Status::Stopped,
            Ok(_) => self.record.status = Status::Succeeded,
            Err(Error::Cancelled) => self.record.status = Status::Stopped,
            Err(err) => {
                self.record.status = Status::Failed;
                self.record.error = Some(err.to_string());
                self.record.error_class = Some(classifier.classify(err));
            }
        }
        self.append();
        self.record.status
    }

    /// Appends a record with the counts so far, ending now.
    fn append(&mut self) {
        self.record.end = Utc::now();
        let loads = self.steps.iter().filter(|s| s.kind == "load").count();
        // Per-step rows: each streaming source's positions read; the rows
        // written when there is one load (several loads: only their sum,
        // `rowsOut`, is known).
        self.record.steps = self
            .steps
            .iter()
            .filter_map(|step| {
                let mut step = step.clone();
                if step.kind == "load" {
                    step.rows = (loads == 1).then_some(self.progress.rows_out);
                } else {
                    let name = crate::error::StepRef {
                        index: step.index,
                        method: step.method.clone(),
                        name: step.name.clone(),
                    }
                    .to_string();
                    step.rows = Some(u64::try_from(*self.read.get(&name)?).unwrap_or(0));
                }
                Some(step)
            })
            .collect();
        let record = RunRecord {
            stream: Some(self.progress),
            ..self.record.clone()
        };
        if let Err(err) = self.history.append(&record) {
            tracing::warn!("run history not recorded: {err}");
        }
        self.last_record = Instant::now();
        self.batches_at_last_record = self.progress.batches;
    }
}

/// The history file of one state directory.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl History {
    /// The history kept in `state_dir` (created on the first append).
    pub fn new(state_dir: &Path) -> Self {
        History {
            path: state_dir.join("history.jsonl"),
            lock: Arc::default(),
        }
    }

    /// The file the records go to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line.
    pub fn append(&self, record: &RunRecord) -> Result<()> {
        self.append_line(record)
    }

    fn append_line(&self, record: &impl Serialize) -> Result<()> {
        let io = |context: &str| {
            let context = format!("{context} {}", self.path.display());
            move |source| Error::Io { context, source }
        };
        let mut line = serde_json::to_string(record)
            .map_err(std::io::Error::other)
            .map_err(io("cannot encode a record for"))?;
        line.push('\n');
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io("cannot create the directory of"))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .map_err(io("cannot append to"))
    }

    /// The records of `pipeline` (all pipelines when `None`), oldest first,
    /// only the last `last` when given. A missing file is an empty history;
    /// lines that do not parse are skipped with a warning.
    pub fn read(&self, pipeline: Option<&str>, last: Option<usize>) -> Result<Vec<RunRecord>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    context: format!("cannot read {}", self.path.display()),
                    source,
                })
            }
        };
        let mut records: Vec<RunRecord> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .filter_map(|(n, line)| match serde_json::from_str::<RunRecord>(line) {
                Ok(record) => Some(record),
                Err(err) => {
                    tracing::warn!(
                        "{}:{}: skipping a bad record: {err}",
                        self.path.display(),
                        n + 1
                    );
                    None
                }
            })
            .filter(|r| pipeline.is_none_or(|p| r.pipeline == p))
            .collect();
        // Records are appended when an attempt ends, so a long run started
        // first lands after a short one started later: order by start (a
        // stable sort keeps the append order of equal starts, e.g. the
        // records of one streaming run).
        records.sort_by_key(|r| r.start);
        if let Some(last) = last {
            records.drain(..records.len().saturating_sub(last));
        }
        Ok(records)
    }

    /// The latest schedule slot recorded for `pipeline`, run or skipped.
    pub fn last_scheduled(&self, pipeline: &str) -> Option<DateTime<Utc>> {
        match self.read(Some(pipeline), None) {
            Ok(records) => records.iter().filter_map(|r| r.scheduled_for).max(),
            Err(err) => {
                tracing::warn!("{err}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pipeline: &str, attempt: u32, status: Status) -> RunRecord {
        let now = Utc::now();
        RunRecord {
            pipeline: pipeline.into(),
            run_id: "r1".into(),
            attempt,
            trigger: Trigger::Manual,
            scheduled_for: None,
            start: now,
            end: now,
            status,
            error: None,
            error_class: None,
            steps: Vec::new(),
            stream: None,
        }
    }

    #[test]
    fn appends_reads_filters_and_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::new(&dir.path().join("state"));
        assert!(history.read(None, None).unwrap().is_empty());
        let mut first = record("a", 1, Status::Failed);
        first.error = Some("connection refused".into());
        first.error_class = Some(ErrorClass::Transient);
        history.append(&first).unwrap();
        history.append(&record("b", 1, Status::Succeeded)).unwrap();
        history.append(&record("a", 2, Status::Succeeded)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(history.path())
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();

        assert_eq!(history.read(None, None).unwrap().len(), 3);
        let a = history.read(Some("a"), None).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], first);
        let last = history.read(Some("a"), Some(1)).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].attempt, 2);
    }

    #[test]
    fn last_scheduled_slot() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::new(dir.path());
        assert_eq!(history.last_scheduled("a"), None);
        let slot = Utc::now();
        let mut skipped = record("a", 1, Status::Skipped);
        skipped.scheduled_for = Some(slot);
        history.append(&skipped).unwrap();
        history.append(&record("a", 1, Status::Succeeded)).unwrap();
        assert_eq!(history.last_scheduled("a"), Some(slot));
    }
}
