//! Runs that fail part-way, or are interrupted, leave every table as it was.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_failing_load_leaves_the_other_tables_unchanged() {
    let out = tempfile::tempdir().unwrap();
    run(out.path(), &["run", "pipelines/orders-daily.json"]).assert_ok();
    let totals = out.path().join("totals");
    assert_eq!(delta_version(&totals).await, Some(0));

    // Same totals table (would become version 1), plus a second load that
    // fails on an unparseable row while the first has staged its files.
    let config = r#"{"name": "partial", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/*.csv", "header": true, "registerAs": "orders"}},
        {"type": "transform", "method": "sql", "config": {"query": "SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id", "registerAs": "totals"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/totals", "saveMode": "overwrite", "partitionBy": ["customer_id"]}},
        {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders-bad-row.csv", "header": true,
            "schema": "order_id BIGINT, customer_id BIGINT, amount DOUBLE, status VARCHAR, order_date DATE", "registerAs": "bad"}},
        {"type": "load", "method": "toDeltaLake", "input": "bad", "config": {"path": "${DATAFLOW_OUT}/bad", "saveMode": "append"}}
    ]}"#;
    let file = write_config(out.path(), "partial.json", config);
    let result = run(out.path(), &["run", &file]);
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("steps[4] (toDeltaLake) failed"),
        "the failing step is named:\n{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("oops"),
        "the cause is shown:\n{}",
        result.stderr
    );
    assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
    assert_eq!(
        delta_version(&totals).await,
        Some(0),
        "totals stays at its previous version"
    );
    assert_eq!(
        delta_version(&out.path().join("bad")).await,
        None,
        "no table was created"
    );
}

#[test]
fn missing_input_is_a_clear_runtime_error() {
    let out = tempfile::tempdir().unwrap();
    let result = run(
        out.path(),
        &[
            "run",
            "pipelines/orders-daily.json",
            "--set",
            "steps[0].config.path=testdata/nope/*.csv",
        ],
    );
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert!(
        result.stderr.contains("steps[0] (fromFiles as \"orders\") failed: no input files: nothing matches \"testdata/nope/*.csv\""),
        "{}",
        result.stderr
    );
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none());
}

/// Delta has no time-of-day type: `validate` says which column, and how to
/// convert it, before anything runs.
#[test]
fn a_column_delta_cannot_hold_is_a_config_error_at_validate() {
    let out = tempfile::tempdir().unwrap();
    let file = write_config(out.path(), "time.json", TIME_INTO_DELTA);
    for command in ["validate", "run"] {
        let result = run(out.path(), &[command, &file]);
        assert_eq!(result.code, 2, "{}", result.stderr);
        assert!(
            result.stderr.contains("steps[1] (toDeltaLake)")
                && result.stderr.contains("column \"x\" has type Time64")
                && result.stderr.contains("Help: convert it in a sql step"),
            "{}",
            result.stderr
        );
    }
    assert!(!out.path().join("time").exists());
}

const TIME_INTO_DELTA: &str = r#"{"name": "time", "steps": [
    {"type": "transform", "method": "sql", "config": {"query": "SELECT CAST('12:00:00' AS TIME) AS x", "registerAs": "rows"}},
    {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/time"}}
]}"#;

/// A Delta log that is not JSON: delta-rs's error captures a backtrace when
/// RUST_BACKTRACE is set, which must not reach the user.
#[test]
fn no_backtrace_in_errors_even_with_rust_backtrace_set() {
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("broken/_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("00000000000000000000.json"), "not json\n").unwrap();
    let config = r#"{"name": "broken", "steps": [
        {"type": "extract", "method": "fromDeltaLake", "config": {"path": "${DATAFLOW_OUT}/broken"}},
        {"type": "load", "method": "toConsole", "config": {}}
    ]}"#;
    let file = write_config(out.path(), "broken.json", config);
    for setting in ["1", "full"] {
        let result: Run = cli(out.path())
            .args(["run", &file])
            .env("RUST_BACKTRACE", setting)
            .output()
            .expect("run-pipeline starts")
            .into();
        assert_ne!(result.code, 0, "{}", result.stderr);
        assert!(
            result.stderr.contains("steps[0] (fromDeltaLake)"),
            "the step is named:\n{}",
            result.stderr
        );
        for trace in [
            "stack backtrace",
            "backtrace:",
            "std::backtrace",
            "   0: ",
            "at /rustc/",
        ] {
            assert!(
                !result.stderr.contains(trace),
                "RUST_BACKTRACE={setting}: no backtrace ({trace:?}) in:\n{}",
                result.stderr
            );
        }
    }
}

#[tokio::test]
async fn ctrl_c_cancels_every_load_without_committing() {
    let out = tempfile::tempdir().unwrap();
    // Large enough to still be running when the signal arrives.
    let config = r#"{"name": "slow", "steps": [
        {"type": "transform", "method": "sql", "config": {"query": "SELECT value AS id, value * 2 AS doubled, md5(CAST(value AS VARCHAR)) AS h FROM generate_series(1, 300000000)", "registerAs": "rows"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/slow"}},
        {"type": "load", "method": "toFiles", "input": "rows", "config": {"path": "${DATAFLOW_OUT}/files"}}
    ]}"#;
    let file = write_config(out.path(), "slow.json", config);
    let child = cli(out.path())
        .args(["run", &file])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_eq!(
        delta_version(&out.path().join("slow")).await,
        None,
        "nothing committed"
    );
    assert!(!out.path().join("files").exists(), "nothing written");
}

/// A failing run whose Delta load logs a delta-rs warning (nanosecond
/// timestamps truncated): the error line is what the user gets; -q shows
/// nothing else, and no log line carries colour codes off a terminal.
#[test]
fn quiet_failure_prints_only_the_error_without_colour() {
    let out = tempfile::tempdir().unwrap();
    let config = write_config(
        out.path(),
        "warns.json",
        r#"{"name": "warns", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders", "format": "csv", "header": true, "registerAs": "o"}},
        {"type": "transform", "method": "sql", "config": {"query": "SELECT order_id, CAST(order_date AS TIMESTAMP) AS ts FROM o", "registerAs": "t"}},
        {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders-bad-row.csv", "format": "csv", "header": true,
            "schema": "order_id BIGINT, customer_id BIGINT, amount DECIMAL(10,2), status VARCHAR, order_date DATE", "registerAs": "b"}},
        {"type": "load", "method": "toDeltaLake", "input": "t", "config": {"path": "${DATAFLOW_OUT}/t", "saveMode": "append"}},
        {"type": "load", "method": "toFiles", "input": "b", "config": {"path": "${DATAFLOW_OUT}/f"}}]}"#,
    );
    let state = out.path().join("state").display().to_string();
    for (flag, warns) in [("-q", false), ("-v", true)] {
        let result = run(out.path(), &["run", flag, &config, "--state-dir", &state]);
        assert_eq!(result.code, 1, "{}", result.stderr);
        assert!(!result.stderr.contains('\x1b'), "{}", result.stderr);
        assert_eq!(
            result.stderr.contains("WARN deltalake_core"),
            warns,
            "{flag}: {}",
            result.stderr
        );
        if flag == "-q" {
            assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
            assert!(result
                .stderr
                .starts_with("error: steps[4] (toFiles) failed"));
        }
    }
    // The default level does not show the dependency's notice either.
    let result = run(out.path(), &["run", &config, "--state-dir", &state]);
    assert!(
        !result.stderr.contains("deltalake_core"),
        "{}",
        result.stderr
    );
}

/// `validate` with the brokers down: one error naming them, after
/// `metadataTimeoutMs`, and librdkafka's complaints once each, not hundreds.
#[test]
fn kafka_down_is_one_clear_error_within_the_metadata_timeout() {
    let out = tempfile::tempdir().unwrap();
    let config = r#"{"name": "down", "mode": "streaming", "steps": [
        {"type": "extract", "method": "fromKafka", "config": {"bootstrapServers": "127.0.0.1:1", "topic": "t", "metadataTimeoutMs": "1500", "registerAs": "events"}},
        {"type": "load", "method": "toConsole", "config": {}}
    ]}"#;
    let file = write_config(out.path(), "down.json", config);
    let started = std::time::Instant::now();
    let result = run(out.path(), &["validate", &file]);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(result.code, 1, "{}", result.stderr);
    assert!(took < 6.0, "took {took}s:\n{}", result.stderr);
    assert!(
        result
            .stderr
            .contains("steps[0] (fromKafka as \"events\") failed: Kafka at 127.0.0.1:1"),
        "{}",
        result.stderr
    );
    let warnings = result.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings <= 4, "{warnings} warnings:\n{}", result.stderr);
}
