//! Run history: one JSON object per line in `<state dir>/history.jsonl`,
//! appended for every attempt and every skipped schedule slot, and for
//! streaming runs when they start, every so often while they run, and when
//! they stop; readable by any tool that reads JSON lines. What goes into the
//! records is decided in [`crate::ops::record`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::classify::ErrorClass;
use crate::error::{Error, Result};

/// What started a run (the `trigger` field of a record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunCause {
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
    #[serde(rename = "trigger")]
    pub cause: RunCause,
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

impl RunRecord {
    /// The first attempt of a new run of `pipeline` (a fresh run id),
    /// started now by `cause` for `scheduled_for`; `running` until its
    /// outcome is known.
    pub fn begin(pipeline: &str, cause: RunCause, scheduled_for: Option<DateTime<Utc>>) -> Self {
        let now = Utc::now();
        RunRecord {
            pipeline: pipeline.to_string(),
            run_id: uuid::Uuid::new_v4().to_string(),
            attempt: 1,
            cause,
            scheduled_for,
            start: now,
            end: now,
            status: Status::Running,
            error: None,
            error_class: None,
            steps: Vec::new(),
            stream: None,
        }
    }
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
    /// Rows behind the watermark (set apart; to `lateDataPath` when set).
    #[serde(default)]
    pub late_rows: u64,
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
            cause: RunCause::Manual,
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
