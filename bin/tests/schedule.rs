//! `run-pipeline schedule`: cron slots, no overlap, clean stop on SIGTERM.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{cli, history, kill, run, write_config};
use serde_json::Value;

/// Starts `schedule CONFIG` recording into `state`.
fn start(out: &std::path::Path, config: &str, state: &std::path::Path) -> Child {
    cli(out)
        .args([
            "schedule",
            config,
            "--state-dir",
            &state.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and expects a clean exit 0.
fn stop(child: Child) {
    kill("-TERM", child.id());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn with_status<'a>(records: &'a [Value], status: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["status"] == status).collect()
}

/// Runs that were not skipped never overlap.
fn assert_no_overlap(records: &[Value]) {
    let time =
        |value: &Value| chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    let mut runs: Vec<_> = records
        .iter()
        .filter(|r| r["status"] != "skipped")
        .map(|r| (time(&r["start"]), time(&r["end"])))
        .collect();
    runs.sort();
    for pair in runs.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping runs: {pair:?}");
    }
}

#[test]
fn a_schedule_every_second_runs_repeatedly() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let config = write_config(
        out.path(),
        "tick.json",
        r#"{"name": "tick", "schedule": "* * * * * *", "steps": [
            {"type": "transform", "method": "sql", "config": {"query": "SELECT 1 AS one"}},
            {"type": "load", "method": "toConsole", "config": {}}
        ]}"#,
    );
    let child = start(out.path(), &config, &state);
    std::thread::sleep(Duration::from_secs(5));
    stop(child);

    let records = history(&state);
    let succeeded = with_status(&records, "succeeded");
    // Five seconds hold five slots; allow for a slow start and a slow machine.
    assert!(
        (2..=6).contains(&succeeded.len()),
        "{} runs: {records:?}",
        succeeded.len()
    );
    for record in &records {
        assert_eq!(record["trigger"], "schedule", "{record}");
        assert!(record["scheduledFor"].is_string(), "{record}");
    }
    assert_no_overlap(&records);
}

#[test]
fn a_slow_pipeline_skips_slots_instead_of_overlapping() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    // Several seconds of hashing: longer than the one-second period.
    let config = write_config(
        out.path(),
        "slow.json",
        r#"{"name": "slow", "schedule": "* * * * * *", "overlap": "skip", "steps": [
            {"type": "transform", "method": "sql", "config": {"query": "SELECT count(*) AS n FROM (SELECT md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 40000000)) WHERE h LIKE 'a%'"}},
            {"type": "load", "method": "toConsole", "config": {}}
        ]}"#,
    );
    let child = start(out.path(), &config, &state);
    std::thread::sleep(Duration::from_secs(6));
    stop(child);

    let records = history(&state);
    assert!(
        !with_status(&records, "skipped").is_empty(),
        "a slot found the pipeline busy: {records:?}"
    );
    assert!(
        records.iter().any(|r| r["status"] != "skipped"),
        "the pipeline ran: {records:?}"
    );
    assert_no_overlap(&records);
}

#[test]
fn a_slow_pipeline_with_overlap_queue_runs_back_to_back() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    // Seconds of hashing: longer than the one-second period.
    let config = write_config(
        out.path(),
        "queued.json",
        r#"{"name": "queued", "schedule": "* * * * * *", "overlap": "queue", "steps": [
            {"type": "transform", "method": "sql", "config": {"query": "SELECT count(*) AS n FROM (SELECT md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 20000000)) WHERE h LIKE 'a%'"}},
            {"type": "load", "method": "toConsole", "config": {}}
        ]}"#,
    );
    let child = start(out.path(), &config, &state);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while with_status(&history(&state), "succeeded").len() < 3
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    stop(child);

    let records = history(&state);
    let time =
        |value: &Value| chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap();
    let mut runs: Vec<&Value> = with_status(&records, "succeeded");
    assert!(runs.len() >= 3, "three runs in two minutes: {records:?}");
    runs.sort_by_key(|r| time(&r["start"]));
    assert_no_overlap(&records);
    // Each slot after the first came while the previous run was still busy:
    // it waited in the queue instead of being skipped, and started as soon
    // as that run ended.
    for pair in runs.windows(2) {
        let (previous, next) = (pair[0], pair[1]);
        let (slot, start) = (time(&next["scheduledFor"]), time(&next["start"]));
        let previous_end = time(&previous["end"]);
        assert!(
            slot < previous_end,
            "queued while the previous run was busy: {pair:?}"
        );
        let gap = (start - previous_end).num_milliseconds();
        assert!(
            (0..5000).contains(&gap),
            "started {gap} ms after the previous run ended: {pair:?}"
        );
    }
}

#[test]
fn bad_or_missing_schedules_are_config_errors() {
    let out = tempfile::tempdir().unwrap();
    let steps = r#""steps": [{"type": "load", "method": "toConsole", "input": "x", "config": {}}]"#;
    for (name, keys, words) in [
        ("bad", r#""schedule": "61 * * * *","#, "schedule"),
        (
            "tz",
            r#""schedule": "* * * * *", "timezone": "Mars/Base","#,
            "timezone",
        ),
        ("none", "", "has no schedule"),
        (
            "never",
            r#""schedule": "0 0 30 2 *","#,
            "invalid config at schedule: \"0 0 30 2 *\" never fires",
        ),
    ] {
        let text = format!(r#"{{"name": "{name}", {keys} {steps}}}"#);
        let config = write_config(out.path(), &format!("{name}.json"), &text);
        let result = run(out.path(), &["schedule", &config]);
        assert_eq!(result.code, 2, "{name}: {}", result.stderr);
        assert!(result.stderr.contains(words), "{name}: {}", result.stderr);
    }
}

#[test]
fn catch_up_once_runs_for_slots_missed_while_down() {
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = |name: &str, catch_up: &str| {
        let text = format!(
            r#"{{"name": "{name}", "schedule": "0 0 1 1 *", "catchUp": "{catch_up}", "steps": [
                {{"type": "transform", "method": "sql", "config": {{"query": "SELECT 1 AS one"}}}},
                {{"type": "load", "method": "toConsole", "config": {{}}}}
            ]}}"#
        );
        write_config(out.path(), &format!("{name}.json"), &text)
    };
    // Both last ran for the slot of 1 January 2020: later slots were missed.
    let last_run = |name: &str| {
        format!(
            r#"{{"pipeline": "{name}", "runId": "old", "attempt": 1, "trigger": "schedule", "scheduledFor": "2020-01-01T00:00:00Z", "start": "2020-01-01T00:00:00Z", "end": "2020-01-01T00:00:01Z", "status": "succeeded"}}"#
        )
    };
    let lines = format!("{}\n{}\n", last_run("once"), last_run("skip"));
    std::fs::write(state.join("history.jsonl"), lines).unwrap();

    let (once, skip) = (config("once", "once"), config("skip", "skip"));
    let child = cli(out.path())
        .args([
            "schedule",
            &once,
            &skip,
            "--state-dir",
            &state.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while history(&state).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop(child);

    let records = history(&state);
    let runs = |name: &str| records.iter().filter(|r| r["pipeline"] == name).count();
    assert_eq!(runs("once"), 2, "one catch-up run: {records:?}");
    assert_eq!(runs("skip"), 1, "no catch-up run: {records:?}");
    assert_eq!(records[2]["status"], "succeeded");
}
