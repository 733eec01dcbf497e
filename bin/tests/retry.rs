//! Retries through the real binary: a PostgreSQL server that refuses
//! connections, then accepts them, is retried until the run succeeds; a
//! permanent failure (bad password, missing table) is tried once.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dataflow_connectors::testing::PgServer;

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer text);
                      INSERT INTO orders VALUES (1, 'ana'), (2, 'ben'), (3, 'cyd');";

/// fromPostgres (`${PG_URL}`, `${PGPASSWORD}`) → parquet files, retried up
/// to ten times after 0.1–1 s.
fn pipeline(table: &str) -> String {
    format!(
        r#"{{"name": "pg-retry", "retries": 10, "retryBackoff": {{"initialMs": 200, "maxMs": 1000}}, "steps": [
        {{"type": "extract", "method": "fromPostgres", "config": {{"url": "${{PG_URL}}", "password": "${{PGPASSWORD}}", "table": "{table}", "registerAs": "src"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/target", "format": "parquet", "saveMode": "overwrite"}}}}
    ]}}"#
    )
}

fn pg_command(out: &Path, server: &PgServer, db: &str, password: &str) -> std::process::Command {
    let mut cmd = cli(out);
    cmd.env("PG_URL", server.url(db))
        .env("PGPASSWORD", password);
    cmd
}

fn metrics_retries(file: &Path) -> u64 {
    let text = std::fs::read_to_string(file).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["retries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn a_refused_connection_is_retried_until_the_server_accepts() {
    let server = PgServer::start().unwrap();
    let db = server.create_database("retry").await;
    server.execute(&db, ORDERS).await;
    server.stop().unwrap();

    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let metrics = out.path().join("metrics.json");
    let file = write_config(out.path(), "retry.json", &pipeline("orders"));
    let child = pg_command(out.path(), &server, &db, server.password())
        .args(["run", &file, "--state-dir"])
        .arg(&state)
        .arg("--metrics-file")
        .arg(&metrics)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Refused for about two seconds, then accepted.
    std::thread::sleep(Duration::from_secs(2));
    server.restart().unwrap();
    let result: Run = child.wait_with_output().unwrap().into();
    result.assert_ok();
    assert!(result.stderr.contains("retrying"), "{}", result.stderr);
    assert!(
        !result.stderr.contains(server.password()),
        "{}",
        result.stderr
    );
    assert_eq!(
        file_rows(
            &out.path().join("target"),
            "parquet",
            "SELECT * FROM t ORDER BY id"
        )
        .await,
        table(&[
            "+----+----------+",
            "| id | customer |",
            "+----+----------+",
            "| 1  | ana      |",
            "| 2  | ben      |",
            "| 3  | cyd      |",
            "+----+----------+",
        ])
    );

    // One record per attempt: refused ones failed as transient, the last
    // (a retry) succeeded; all share the run id.
    let records = history(&state);
    assert!(records.len() >= 2, "retried at least once: {records:?}");
    let (last, failed) = records.split_last().unwrap();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["pipeline"], "pg-retry");
        assert_eq!(record["attempt"], i as u64 + 1, "{record}");
        assert_eq!(record["runId"], records[0]["runId"], "{record}");
        let trigger = if i == 0 { "manual" } else { "retry" };
        assert_eq!(record["trigger"], trigger, "{record}");
    }
    for record in failed {
        assert_eq!(record["status"], "failed", "{record}");
        assert_eq!(record["errorClass"], "transient", "{record}");
        let error = record["error"].as_str().unwrap().to_lowercase();
        assert!(
            error.contains("connection refused") || error.contains("starting up"),
            "{record}"
        );
    }
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["steps"][1]["rows"], 3, "{last}");
    assert_eq!(metrics_retries(&metrics), failed.len() as u64);

    // Permanent failures with the same retries: one attempt each, exit 1.
    for (what, table, password, words) in [
        (
            "wrong password",
            "orders",
            "not-the-password",
            "password authentication failed",
        ),
        (
            "missing table",
            "nope",
            server.password(),
            "relation \"nope\" does not exist",
        ),
    ] {
        let state = out.path().join(format!("state-{}", table));
        let file = write_config(out.path(), "permanent.json", &pipeline(table));
        let result: Run = pg_command(out.path(), &server, &db, password)
            .args(["run", &file, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
            .into();
        assert_eq!(result.code, 1, "{what}: {}", result.stderr);
        assert!(result.stderr.contains(words), "{what}: {}", result.stderr);
        assert!(
            !result.stderr.contains("retrying"),
            "{what}: {}",
            result.stderr
        );
        let records = history(&state);
        assert_eq!(records.len(), 1, "{what}: one attempt: {records:?}");
        assert_eq!(records[0]["status"], "failed");
        assert_eq!(records[0]["errorClass"], "permanent", "{what}");
    }
}
