//! Bounded memory: `--memory-limit` / `"memoryLimit"`, the out-of-memory
//! error, and the spill directory.

mod common;

use common::*;

/// One array of 2 M numbers (16 MB): an aggregate state that cannot spill.
const HUGE: &str = r#"{"name": "huge", "steps": [
    {"type": "transform", "method": "sql", "config": {"query": "SELECT array_length(array_agg(value)) AS n FROM generate_series(1, 2000000)", "registerAs": "n"}},
    {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/table", "saveMode": "overwrite"}},
    {"type": "load", "method": "toFiles", "input": "n", "config": {"path": "${DATAFLOW_OUT}/files", "format": "csv", "saveMode": "overwrite"}}
]}"#;

#[tokio::test]
async fn a_run_over_the_limit_fails_naming_the_limit_and_commits_nothing() {
    let out = tempfile::tempdir().unwrap();
    let config = write_config(out.path(), "huge.json", HUGE);
    run(out.path(), &["run", &config]).assert_ok();
    let delta = out.path().join("table");
    let files = out.path().join("files");
    let before = file_rows(&files, "csv", "SELECT n FROM t").await;
    assert_eq!(
        before,
        table(&[
            "+---------+",
            "| n       |",
            "+---------+",
            "| 2000000 |",
            "+---------+"
        ])
    );

    let result = run(out.path(), &["run", "--memory-limit", "1MB", &config]);
    assert_eq!(result.code, 1, "{}", result.stderr);
    let first = result.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: steps[1] (toDeltaLake) failed: out of memory: the run needs more than the memory limit of 1.0 MiB (--memory-limit / \"memoryLimit\")")
            || first.starts_with("error: steps[2] (toFiles) failed: out of memory: the run needs more than the memory limit of 1.0 MiB (--memory-limit / \"memoryLimit\")"),
        "{}",
        result.stderr
    );
    assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
    assert_eq!(delta_version(&delta).await, Some(0), "no new table version");
    assert_eq!(file_rows(&files, "csv", "SELECT n FROM t").await, before);
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "no staging directory left behind: {names:?}"
    );
}

#[test]
fn the_flag_overrides_the_config_limit() {
    let out = tempfile::tempdir().unwrap();
    let limited = HUGE.replacen(
        r#""name": "huge","#,
        r#""name": "huge", "memoryLimit": "1MB","#,
        1,
    );
    let config = write_config(out.path(), "limited.json", &limited);
    let result = run(out.path(), &["run", &config]);
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("memory limit of 1.0 MiB"),
        "{}",
        result.stderr
    );
    run(out.path(), &["run", "--memory-limit", "1GB", &config]).assert_ok();
}

#[test]
fn a_bad_limit_is_a_usage_or_config_error() {
    let out = tempfile::tempdir().unwrap();
    let config = write_config(out.path(), "huge.json", HUGE);
    let result = run(out.path(), &["validate", "--memory-limit", "lots", &config]);
    assert_eq!(result.code, 2, "{}", result.stderr);
    assert!(
        result.stderr.contains("\"lots\" is not a memory size"),
        "{}",
        result.stderr
    );

    let bad = HUGE.replacen(
        r#""name": "huge","#,
        r#""name": "huge", "memoryLimit": "2 GB please","#,
        1,
    );
    let config = write_config(out.path(), "bad.json", &bad);
    let result = run(out.path(), &["validate", &config]);
    assert_eq!(result.code, 2, "{}", result.stderr);
    assert!(
        result
            .stderr
            .contains("invalid config at memoryLimit: \"2 GB please\" is not a memory size"),
        "{}",
        result.stderr
    );
}

/// A join of two CSV files, each larger than half the limit, runs as a
/// sort-merge join whose sorts spill to `--spill-dir`, and writes every row.
#[tokio::test]
async fn a_join_over_the_limit_spills_to_the_spill_dir() {
    let out = tempfile::tempdir().unwrap();
    for (name, factor) in [("l", 3), ("r", 5)] {
        let rows: String = (1..=600_000)
            .map(|k| format!("{k},{}\n", k * factor))
            .collect();
        std::fs::write(
            out.path().join(format!("{name}.csv")),
            format!("k,x\n{rows}"),
        )
        .unwrap();
    }
    let config = write_config(
        out.path(),
        "join.json",
        r#"{"name": "join", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "${DATAFLOW_OUT}/l.csv", "header": true, "registerAs": "l"}},
        {"type": "extract", "method": "fromFiles", "config": {"path": "${DATAFLOW_OUT}/r.csv", "header": true, "registerAs": "r"}},
        {"type": "transform", "method": "sql", "config": {"query": "SELECT count(*) AS n, sum(l.x + r.x) AS s, sum(CASE WHEN l.x + r.x = 8 * l.k THEN 1 ELSE 0 END) AS right FROM l JOIN r ON l.k = r.k"}},
        {"type": "load", "method": "toFiles", "config": {"path": "${DATAFLOW_OUT}/sums", "format": "csv"}}
    ]}"#,
    );
    let spill = out.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    // DataFusion logs where its disk manager works and each spill (the
    // spill files themselves are gone when the run ends).
    let output = cli(out.path())
        .env(
            "RUST_LOG",
            "warn,datafusion_execution::disk_manager=debug,datafusion_physical_plan::sorts=debug",
        )
        .args(["run", "--memory-limit", "16MB", "--spill-dir"])
        .arg(&spill)
        .arg(&config)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let working = log
        .lines()
        .find(|l| l.contains("as DataFusion working directory"))
        .unwrap_or_else(|| panic!("no disk manager in the log:\n{log}"));
    assert!(working.contains(&spill.display().to_string()), "{working}");
    assert!(
        log.contains("Spilling sort data of ExternalSorter to disk"),
        "{log}"
    );
    let left: Vec<_> = std::fs::read_dir(&spill).unwrap().collect();
    assert!(left.is_empty(), "the spill files were removed: {left:?}");
    let sums = file_rows(
        &out.path().join("sums"),
        "csv",
        "SELECT n, s, \"right\" FROM t",
    )
    .await;
    assert_eq!(
        sums,
        table(&[
            "+--------+---------------+--------+",
            "| n      | s             | right  |",
            "+--------+---------------+--------+",
            "| 600000 | 1440002400000 | 600000 |",
            "+--------+---------------+--------+",
        ])
    );
}
