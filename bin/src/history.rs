//! `run-pipeline history`: the recorded runs as a table or JSON lines.

use std::io::Write;

use dataflow_engine::ops::history::RunRecord;
use dataflow_engine::{Error, Result};

use crate::summary;

/// Prints `records`, oldest first: one JSON object per line with `json`,
/// else a table.
pub fn print(records: &[RunRecord], json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let written = if json {
        records.iter().try_for_each(|record| {
            let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        })
    } else {
        write!(out, "{}", table(records))
    };
    written.map_err(|source| Error::Io {
        context: "cannot print the history".into(),
        source,
    })
}

fn table(records: &[RunRecord]) -> String {
    if records.is_empty() {
        return "no runs recorded\n".into();
    }
    let header = [
        "start", "pipeline", "run", "attempt", "trigger", "status", "time", "rows", "error",
    ];
    let mut table = summary::borderless(&header, &[0], &[], &[]);
    for record in records {
        let error = record.error.as_deref().unwrap_or_default();
        let mut cells = row(record).to_vec();
        cells.push(error.lines().next().unwrap_or_default().to_string());
        table.add_row(cells);
    }
    summary::render(&table)
}

fn row(record: &RunRecord) -> [String; 8] {
    let seconds = (record.end - record.start).num_milliseconds() as f64 / 1000.0;
    let loads = record.steps.iter().filter(|s| s.kind == "load");
    let rows: Option<u64> = if record.steps.is_empty() {
        None
    } else {
        loads.map(|s| s.rows).sum()
    };
    [
        record.start.format("%Y-%m-%d %H:%M:%S").to_string(),
        record.pipeline.clone(),
        record.run_id.chars().take(8).collect(),
        record.attempt.to_string(),
        format!("{:?}", record.cause).to_lowercase(),
        record.status.as_str().to_string(),
        format!("{seconds:.2}s"),
        match record.stream {
            Some(stream) => format!("{} ({} batches)", stream.rows_out, stream.batches),
            None => rows.map_or("-".into(), |r| r.to_string()),
        },
    ]
}
