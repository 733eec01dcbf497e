//! `run-pipeline history`: the recorded runs as a table or JSON lines.

use std::io::Write;

use dataflow_engine::ops::history::RunRecord;
use dataflow_engine::{Error, Result};

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
    let rows: Vec<[String; 8]> = records.iter().map(row).collect();
    let header = [
        "start", "pipeline", "run", "attempt", "trigger", "status", "time", "rows",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let errors = records.iter().map(|r| r.error.as_deref());
    for (row, error) in std::iter::once((header, Some("error"))).chain(rows.into_iter().zip(errors))
    {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        if let Some(error) = error {
            text.push_str("  ");
            text.push_str(error.lines().next().unwrap_or_default());
        }
        text.push('\n');
    }
    text
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
        format!("{:?}", record.trigger).to_lowercase(),
        record.status.as_str().to_string(),
        format!("{seconds:.2}s"),
        match record.stream {
            Some(stream) => format!("{} ({} batches)", stream.rows_out, stream.batches),
            None => rows.map_or("-".into(), |r| r.to_string()),
        },
    ]
}
