//! Progress counting: with `-v` (info logs on, stderr no terminal) the rows
//! passed to the loads are counted on their way in, and the total is logged
//! at the end; the output and the summary must be exactly those of a run
//! without it.

mod common;

use common::*;

const CONFIG: &str = r#"{"name": "counted", "steps": [
    {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/*.csv", "header": true, "registerAs": "orders"}},
    {"type": "transform", "method": "sql", "config": {"query": "SELECT order_id, customer_id, amount, status FROM orders WHERE amount > 5", "registerAs": "big"}},
    {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/delta", "saveMode": "overwrite", "partitionBy": ["status"]}},
    {"type": "load", "method": "toFiles", "input": "big", "config": {"path": "${DATAFLOW_OUT}/files", "format": "parquet", "saveMode": "overwrite", "partitionBy": ["status"]}},
    {"type": "transform", "method": "sql", "config": {"query": "SELECT * FROM orders ORDER BY order_id", "registerAs": "sorted"}},
    {"type": "load", "method": "toConsole", "config": {"numRows": 3}}
]}"#;

/// The summary's step lines, without timings.
fn summary_rows(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.starts_with("load ") || l.starts_with("extract ") || l.starts_with("transform ")
        })
        .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect()
}

/// The total of the "counted N rows passed to the loads" log line.
fn counted_rows(stderr: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.ends_with(" rows passed to the loads"))?;
    let (_, count) = line.rsplit_once("counted ")?;
    count.split(' ').next()?.parse().ok()
}

#[tokio::test]
async fn counting_rows_changes_nothing_written() {
    let sql = "SELECT * FROM t ORDER BY order_id";
    let mut outputs = Vec::new();
    for verbose in [false, true] {
        let out = tempfile::tempdir().unwrap();
        let config = write_config(out.path(), "counted.json", CONFIG);
        let state = out.path().join("state").display().to_string();
        let mut args = vec!["run", config.as_str(), "--state-dir", state.as_str()];
        if verbose {
            args.insert(0, "-v");
        }
        let result = run(out.path(), &args);
        result.assert_ok();
        // No bar off a terminal; a quick run logs no progress line either.
        assert!(!result.stderr.contains("rows/s"), "{}", result.stderr);
        // Counted only with -v: every row the loads read. The Delta and the
        // files loads read the 8 "big" orders; the console load reads
        // numRows + 1 = 4 sorted rows (one more, to tell whether more exist).
        let expected = verbose.then_some(8 + 8 + 4);
        assert_eq!(counted_rows(&result.stderr), expected, "{}", result.stderr);
        outputs.push((
            result.stdout.clone(),
            summary_rows(&result.stderr),
            delta_rows(&out.path().join("delta"), sql).await,
            file_rows(&out.path().join("files"), "parquet", sql).await,
        ));
    }
    let (plain, counted) = (&outputs[0], &outputs[1]);
    assert_eq!(plain.0, counted.0, "console output");
    assert_eq!(plain.1, counted.1, "summary");
    assert_eq!(plain.2, counted.2, "Delta rows");
    assert_eq!(plain.3, counted.3, "parquet rows");
    assert!(plain.1.len() == 6 && plain.2.len() > 4, "{plain:?}");
}
