//! Run history: every run is recorded with its status; `history` shows it.

mod common;

use common::{history, run, write_config};

const OK: &str = r#"{"name": "orders-copy", "steps": [
    {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/*.csv", "header": true}},
    {"type": "load", "method": "toFiles", "config": {"path": "${DATAFLOW_OUT}/copy", "format": "parquet", "saveMode": "overwrite"}}
]}"#;

#[test]
fn every_run_is_recorded_and_shown() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let state_arg = state.display().to_string();
    let file = write_config(out.path(), "copy.json", OK);
    for _ in 0..2 {
        run(out.path(), &["run", &file, "--state-dir", &state_arg]).assert_ok();
    }
    let records = history(&state);
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert_eq!(record["pipeline"], "orders-copy");
        assert_eq!(record["status"], "succeeded");
        assert_eq!(record["trigger"], "manual");
        assert_eq!(record["attempt"], 1);
        let load = &record["steps"][1];
        assert_eq!(load["kind"], "load");
        assert!(load["rows"].as_u64().unwrap() > 0, "{load}");
        assert!(load["durationMs"].is_u64(), "{load}");
    }
    assert_ne!(records[0]["runId"], records[1]["runId"]);

    let table = run(
        out.path(),
        &[
            "history",
            "orders-copy",
            "--last",
            "1",
            "--state-dir",
            &state_arg,
        ],
    );
    table.assert_ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "header and one run:\n{}", table.stdout);
    assert!(lines[0].starts_with("start"), "{}", table.stdout);
    assert!(lines[1].contains("orders-copy") && lines[1].contains("succeeded"));

    let other = run(out.path(), &["history", "nope", "--state-dir", &state_arg]);
    assert_eq!(other.assert_ok().stdout, "no runs recorded\n");
}

#[test]
fn history_defaults_to_dot_dataflow_next_to_the_config() {
    let out = tempfile::tempdir().unwrap();
    let file = write_config(out.path(), "copy.json", OK);
    let result = common::cli(out.path())
        .env_remove("DATAFLOW_STATE_DIR")
        .args(["run", &file])
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(0));
    assert!(out.path().join(".dataflow/history.jsonl").is_file());
    assert_eq!(history(&out.path().join(".dataflow")).len(), 1);
}

#[test]
fn permanent_failures_are_not_retried() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let state_arg = state.display().to_string();
    let file = write_config(
        out.path(),
        "copy.json",
        &OK.replacen("\"steps\"", "\"retries\": 3, \"steps\"", 1),
    );
    // A missing input at run time (exit 1), then an unknown column (exit 2).
    let missing = run(
        out.path(),
        &[
            "run",
            &file,
            "--state-dir",
            &state_arg,
            "--set",
            "steps[0].config.path=testdata/nope/*.csv",
        ],
    );
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    let bad_sql = write_config(
        out.path(),
        "bad.json",
        r#"{"name": "bad-sql", "retries": 3, "steps": [
            {"type": "transform", "method": "sql", "config": {"query": "SELECT no_such_column FROM (SELECT 1 AS one)"}},
            {"type": "load", "method": "toConsole", "config": {}}
        ]}"#,
    );
    let planned = run(out.path(), &["run", &bad_sql, "--state-dir", &state_arg]);
    assert_eq!(planned.code, 2, "{}", planned.stderr);
    assert!(!missing.stderr.contains("retrying") && !planned.stderr.contains("retrying"));

    let records = history(&state);
    assert_eq!(records.len(), 2, "one attempt each: {records:?}");
    for (record, pipeline, words) in [
        (&records[0], "orders-copy", "no input files"),
        (&records[1], "bad-sql", "no_such_column"),
    ] {
        assert_eq!(record["pipeline"], pipeline);
        assert_eq!(record["status"], "failed");
        assert_eq!(record["attempt"], 1);
        assert_eq!(record["errorClass"], "permanent");
        assert!(
            record["error"].as_str().unwrap().contains(words),
            "{record}"
        );
    }
}
