//! Run history: every run is recorded with its status; `history` shows it.

mod common;

use common::{history, repo_root, run, write_config, Run};

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

/// A newcomer's sequence: `run` a config in another directory, then
/// `history` from the same place, both without `--state-dir`.
#[test]
fn run_then_history_in_one_directory_shows_the_run() {
    let out = tempfile::tempdir().unwrap();
    let configs = out.path().join("pipelines");
    std::fs::create_dir(&configs).unwrap();
    let testdata = format!("{}/testdata/", repo_root().display());
    let file = write_config(&configs, "copy.json", &OK.replace("testdata/", &testdata));
    let in_out = |args: &[&str]| {
        let mut cmd = common::cli(out.path());
        cmd.env_remove("DATAFLOW_STATE_DIR")
            .current_dir(out.path())
            .args(args);
        Run::from(cmd.output().unwrap())
    };
    in_out(&["run", &file]).assert_ok();
    assert!(out.path().join(".dataflow/history.jsonl").is_file());
    assert!(!configs.join(".dataflow").exists());
    let shown = in_out(&["history"]);
    let stdout = &shown.assert_ok().stdout;
    assert!(
        stdout.contains("orders-copy") && stdout.contains("succeeded"),
        "{stdout}"
    );
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

    // The invalid config ran nothing and is not recorded.
    let records = history(&state);
    assert_eq!(records.len(), 1, "one attempt: {records:?}");
    let record = &records[0];
    assert_eq!(record["pipeline"], "orders-copy");
    assert_eq!(record["status"], "failed");
    assert_eq!(record["attempt"], 1);
    assert_eq!(record["errorClass"], "permanent");
    assert!(
        record["error"].as_str().unwrap().contains("no input files"),
        "{record}"
    );
}

#[test]
fn invalid_configs_leave_no_history() {
    let out = tempfile::tempdir().unwrap();
    let bad = [
        r#"{"name": "bad-sql", "steps": [
            {"type": "transform", "method": "sql", "config": {"query": "SELECT no_such_column FROM (SELECT 1 AS one)"}},
            {"type": "load", "method": "toConsole", "config": {}}]}"#,
        r#"{"name": "bad-regex", "steps": [
            {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders", "format": "csv", "nullValue": "("}},
            {"type": "load", "method": "toConsole", "config": {}}]}"#,
        r#"{"name": "bad-key", "steps": [{"type": "load", "method": "toConsole", "config": {"rows": 1}}]}"#,
    ];
    let testdata = format!("{}/testdata/", repo_root().display());
    for (i, config) in bad.iter().enumerate() {
        let config = config.replace("testdata/", &testdata);
        let file = write_config(out.path(), &format!("bad{i}.json"), &config);
        let result = common::cli(out.path())
            .env_remove("DATAFLOW_STATE_DIR")
            .current_dir(out.path())
            .args(["run", &file])
            .output()
            .unwrap();
        assert_eq!(result.status.code(), Some(2), "{config}");
    }
    assert!(
        !out.path().join(".dataflow").exists(),
        "an invalid config records nothing"
    );
}

#[test]
fn history_is_ordered_by_start_time() {
    // Records are appended when attempts end: a long run started first is
    // written after a short one started later. `history` shows start order.
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let record = |run: &str, start: &str, end: &str| {
        format!(
            r#"{{"pipeline": "p", "runId": "{run}", "attempt": 1, "trigger": "manual", "start": "{start}", "end": "{end}", "status": "succeeded"}}"#
        )
    };
    let lines = [
        record("short000", "2026-11-22T06:00:10Z", "2026-11-22T06:00:11Z"),
        record("long0000", "2026-11-22T06:00:00Z", "2026-11-22T06:05:00Z"),
    ];
    std::fs::write(state.join("history.jsonl"), lines.join("\n") + "\n").unwrap();
    let state_arg = state.display().to_string();
    let json = run(
        out.path(),
        &["history", "--json", "--state-dir", &state_arg],
    );
    let runs: Vec<String> = json
        .assert_ok()
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["runId"].to_string())
        .collect();
    assert_eq!(runs, ["\"long0000\"", "\"short000\""], "{}", json.stdout);
    let last = run(
        out.path(),
        &["history", "--last", "1", "--state-dir", &state_arg],
    );
    assert!(
        last.assert_ok().stdout.contains("short000"),
        "{}",
        last.stdout
    );
}
