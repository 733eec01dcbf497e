//! What `run` prints on stderr: the summary table of a batch run, one line
//! per committed micro-batch of a streaming run, and the line that ends it;
//! and the borderless table the `history` command shares.

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, ColumnConstraint, Table, Width};
use dataflow_engine::run::RunSummary;
use dataflow_engine::spec::StepKind;
use dataflow_engine::stream::{BatchReport, StreamSummary};

/// A table without borders or lines: columns apart by `gaps` (spaces before
/// each column; the first is 0), each at least as wide as in `widths`,
/// aligned as in `right` (true: right-aligned); trailing blanks trimmed.
pub fn borderless(header: &[&str], gaps: &[u16], widths: &[u16], right: &[bool]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        let gap = gaps.get(i).copied().unwrap_or(2);
        column.set_padding((gap, 0));
        if let Some(width) = widths.get(i) {
            column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width + gap)));
        }
        if right.get(i) == Some(&true) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The text of a table, each line without trailing blanks, ending in a
/// newline.
pub fn render(table: &Table) -> String {
    table.trim_fmt() + "\n"
}

/// The summary of a successful batch run: a title line, then a line per
/// step with its rows, bytes, time and a note.
pub fn run_summary(summary: &RunSummary) -> String {
    let mut table = borderless(
        &["step", "rows", "bytes", "time", "detail"],
        &[0, 1, 1, 1, 2],
        &[0, 12, 11, 8],
        &[false, true, true, true],
    );
    for s in &summary.steps {
        let detail = if s.detail.is_empty() && s.kind != StepKind::Load {
            "fused into the loads' plans"
        } else {
            &s.detail
        };
        table.add_row(vec![
            format!("{} {}", s.kind, s.step),
            s.rows.map_or("-".into(), |r| r.to_string()),
            s.bytes.map_or("-".into(), human_bytes),
            s.duration
                .map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64())),
            detail.to_string(),
        ]);
    }
    format!(
        "pipeline \"{}\" succeeded in {:.2}s\n{}",
        summary.pipeline,
        summary.elapsed.as_secs_f64(),
        render(&table)
    )
}

/// One committed micro-batch: rows in and out, time, commit time, and per
/// source the offset ranges read and the lag left.
pub fn batch_line(batch: &BatchReport) -> String {
    let mut line = format!(
        "batch {}: {} rows in, {} rows out, {:.2}s",
        batch.id,
        batch.rows_in,
        batch.rows_out,
        batch.duration.as_secs_f64()
    );
    if let Some(commit) = batch.commit {
        line += &format!(" (commit {}ms)", commit.as_millis());
    }
    if batch.late_rows > 0 {
        line += &format!(", {} late rows", batch.late_rows);
    }
    for source in &batch.sources {
        let ranges: Vec<String> = source
            .partitions
            .iter()
            .filter(|p| p.start != p.end)
            .map(|p| format!("{}:{}-{}", p.key, p.start, p.end))
            .collect();
        line += &format!("; offsets {} lag {}", ranges.join(" "), source.lag);
    }
    line
}

/// How a streaming run ended.
pub fn stream_line(summary: &StreamSummary) -> String {
    format!(
        "pipeline \"{}\" {} after {:.2}s: {} batches, {} rows in, {} rows out",
        summary.pipeline,
        if summary.interrupted {
            "stopped"
        } else {
            "finished"
        },
        summary.elapsed.as_secs_f64(),
        summary.batches,
        summary.rows_in,
        summary.rows_out
    )
}

/// `bytes` in B, KiB, MiB, GiB or TiB, one decimal above bytes.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dataflow_engine::error::StepRef;
    use dataflow_engine::run::StepReport;

    use super::*;

    #[test]
    fn formats_bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn summary_table_keeps_its_columns() {
        let step = |index, method: &str, name: Option<&str>| StepRef {
            index,
            method: method.into(),
            name: name.map(String::from),
        };
        let summary = RunSummary {
            pipeline: "orders-daily".into(),
            steps: vec![
                StepReport {
                    step: step(0, "fromFiles", Some("orders")),
                    kind: StepKind::Extract,
                    rows: None,
                    bytes: None,
                    duration: None,
                    detail: String::new(),
                },
                StepReport {
                    step: step(2, "toDeltaLake", None),
                    kind: StepKind::Load,
                    rows: Some(5),
                    bytes: Some(3891),
                    duration: Some(Duration::from_millis(190)),
                    detail: "from totals; delta version 0".into(),
                },
            ],
            elapsed: Duration::from_millis(210),
            commit: None,
        };
        let expected = [
            r#"pipeline "orders-daily" succeeded in 0.21s"#,
            r#"step                                             rows       bytes     time  detail"#,
            r#"extract steps[0] (fromFiles as "orders")            -           -        -  fused into the loads' plans"#,
            r#"load steps[2] (toDeltaLake)                         5     3.8 KiB    0.19s  from totals; delta version 0"#,
        ];
        assert_eq!(run_summary(&summary), expected.join("\n") + "\n");
    }
}
