//! `fromPostgres` through the real `run-pipeline` binary, against a
//! throwaway PostgreSQL server: end to end into Delta, validate/explain,
//! failures (exit 1, nothing written, no password anywhere), lost connections.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dataflow_connectors::testing::PgServer;

fn server() -> &'static PgServer {
    PgServer::shared()
}

/// A fresh database with `setup` run in it.
async fn database(prefix: &str, setup: &str) -> String {
    let db = server().create_database(prefix).await;
    server().execute(&db, setup).await;
    db
}

/// Runs `run-pipeline ARGS...` with `PG_URL` (no password) and
/// `PGPASSWORD` set for `db`.
fn pg_run(out: &Path, db: &str, args: &[&str]) -> Run {
    pg_command(out, db)
        .args(args)
        .output()
        .expect("run-pipeline starts")
        .into()
}

fn pg_command(out: &Path, db: &str) -> std::process::Command {
    let mut cmd = cli(out);
    cmd.env("PG_URL", server().url(db))
        .env("PGPASSWORD", server().password());
    cmd
}

/// fromPostgres → sql → toDeltaLake (`saveMode` overwrite).
fn pipeline(source: &str, query: &str) -> String {
    format!(
        r#"{{"name": "pg-to-delta", "steps": [
        {{"type": "extract", "method": "fromPostgres", "config": {{"url": "${{PG_URL}}", "password": "${{PGPASSWORD}}", {source}, "registerAs": "src"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "{query}", "registerAs": "out"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/target", "saveMode": "overwrite"}}}}
    ]}}"#
    )
}

fn assert_no_password(run: &Run) {
    let password = server().password();
    assert!(
        !run.stdout.contains(password) && !run.stderr.contains(password),
        "the password leaked:\n{}\n{}",
        run.stdout,
        run.stderr
    );
}

const ORDERS: &str = r#"
    CREATE TABLE orders (id bigint PRIMARY KEY, customer text, amount numeric(10, 2),
                         status text, placed timestamptz);
    INSERT INTO orders VALUES
      (1, 'ana', 10.50, 'paid', '2024-03-01 10:00:00+00'),
      (2, 'ben', 20.00, 'paid', '2024-03-01 11:00:00+00'),
      (3, 'ana', 5.25, 'refunded', '2024-03-02 09:30:00+00'),
      (4, 'cyd', NULL, 'paid', NULL),
      (5, 'ana', 4.25, 'paid', '2024-03-03 08:00:00+00');
"#;

#[tokio::test]
async fn postgres_to_delta_end_to_end() {
    let db = database("e2e", ORDERS).await;
    let out = tempfile::tempdir().unwrap();
    let config = pipeline(
        r#""table": "public.orders", "partitionColumn": "id", "numPartitions": 2"#,
        "SELECT customer, sum(amount) AS total, count(*) AS n, max(placed) AS last FROM src WHERE status = 'paid' GROUP BY customer",
    );
    let file = write_config(out.path(), "e2e.json", &config);

    let validate = pg_run(out.path(), &db, &["validate", &file]);
    validate.assert_ok();
    let explain = pg_run(out.path(), &db, &["explain", &file]);
    explain.assert_ok();
    assert!(
        explain.stdout.contains(&format!(
            "PostgresScanExec: source=dataflow_test@127.0.0.1:{}/{db}, partitions=2",
            server().port()
        )),
        "{}",
        explain.stdout
    );
    assert!(
        explain.stdout.contains(
            "sql[0]=SELECT \"customer\", \"amount\", \"placed\" FROM \"public\".\"orders\" \
             WHERE \"status\" COLLATE \"C\" = E'paid' AND (\"id\" < 3 OR \"id\" IS NULL)"
        ),
        "columns and filters are pushed down:\n{}",
        explain.stdout
    );
    assert_no_password(&explain);
    assert!(
        !out.path().join("target").exists(),
        "validate and explain write nothing"
    );

    let result = pg_run(out.path(), &db, &["run", &file]);
    result.assert_ok();
    assert_no_password(&result);
    let target = out.path().join("target");
    assert_eq!(
        delta_rows(&target, "SELECT * FROM t ORDER BY customer").await,
        table(&[
            "+----------+-------+---+----------------------+",
            "| customer | total | n | last                 |",
            "+----------+-------+---+----------------------+",
            "| ana      | 14.75 | 2 | 2024-03-03T08:00:00Z |",
            "| ben      | 20.00 | 1 | 2024-03-01T11:00:00Z |",
            "| cyd      |       | 1 |                      |",
            "+----------+-------+---+----------------------+",
        ])
    );
}

#[tokio::test]
async fn failures_exit_1_write_nothing_and_never_show_the_password() {
    let db = database("cli_failures", ORDERS).await;
    let out = tempfile::tempdir().unwrap();
    let ok = pipeline(r#""table": "orders""#, "SELECT * FROM src");
    let cases = [
        (
            "wrong password",
            ok.replace("${PGPASSWORD}", "not-the-password"),
            "password authentication failed",
        ),
        (
            "missing table",
            pipeline(r#""table": "nope""#, "SELECT * FROM src"),
            "relation \\\"nope\\\" does not exist",
        ),
        (
            "wrong host",
            ok.replace(
                "${PG_URL}",
                "postgresql://dataflow_test@127.0.0.1:1/x?connect_timeout=5",
            ),
            "connecting to dataflow_test@127.0.0.1:1/x",
        ),
        (
            "password in the url",
            ok.replace(
                "${PG_URL}",
                &format!(
                    "postgresql://dataflow_test:${{PGPASSWORD}}@127.0.0.1:{}/{db}",
                    server().port()
                ),
            )
            .replace(r#""password": "${PGPASSWORD}","#, "")
            .replace(r#""table": "orders""#, r#""table": "nope""#),
            "relation \\\"nope\\\" does not exist",
        ),
    ];
    for (what, config, expected) in cases {
        let file = write_config(out.path(), "fail.json", &config);
        let result = pg_run(out.path(), &db, &["run", &file]);
        assert_eq!(result.code, 1, "{what}: {}", result.stderr);
        assert!(
            result
                .stderr
                .contains("steps[0] (fromPostgres as \"src\") failed"),
            "{what}: {}",
            result.stderr
        );
        assert!(
            result.stderr.contains(&expected.replace("\\\"", "\"")),
            "{what}: {}",
            result.stderr
        );
        assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
        assert_no_password(&result);
        assert!(
            !out.path().join("target").exists(),
            "{what}: nothing written"
        );
    }
}

/// A table big enough to still be streaming when its backend is killed.
const BIG: &str = "CREATE TABLE big AS SELECT i AS id, md5(i::text) AS payload \
                   FROM generate_series(1, 3000000) i;";

/// Runs the pipeline in `file` while another connection terminates the
/// backend running its COPY.
async fn run_and_kill(out: &Path, db: &str, file: &str) -> Run {
    let child = pg_command(out, db)
        .args(["run", file])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        server().terminate_copy(db, Duration::from_secs(60)).await,
        "no COPY to terminate"
    );
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
        .into()
}

#[tokio::test]
async fn a_dropped_connection_fails_cleanly_or_is_retried() {
    let db = database("cli_killed", BIG).await;
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("target");
    let small = pipeline(
        r#""table": "big""#,
        "SELECT id, payload FROM src WHERE id <= 10",
    );
    let file = write_config(out.path(), "small.json", &small);
    pg_run(out.path(), &db, &["run", &file]).assert_ok();
    assert_eq!(delta_version(&target).await, Some(0));

    let all = pipeline(r#""table": "big""#, "SELECT id, payload FROM src");
    let file = write_config(out.path(), "all.json", &all);
    let killed = run_and_kill(out.path(), &db, &file).await;
    assert_eq!(killed.code, 1, "{}", killed.stderr);
    // The server's FATAL notice and the socket close race: under load the
    // client may see the close before it reads the notice.
    assert!(
        killed
            .stderr
            .contains("terminating connection due to administrator command")
            || killed.stderr.contains("connection closed"),
        "{}",
        killed.stderr
    );
    assert!(
        killed.stderr.contains("PostgreSQL COPY"),
        "{}",
        killed.stderr
    );
    assert_no_password(&killed);
    assert_eq!(delta_version(&target).await, Some(0), "no partial commit");
    assert_eq!(
        delta_rows(&target, "SELECT count(*) AS n FROM t").await,
        table(&["+----+", "| n  |", "+----+", "| 10 |", "+----+"])
    );

    // Killed before it passed on any row (the server sleeps first): retried.
    let sleepy = pipeline(
        r#""query": "SELECT * FROM big WHERE (SELECT count(*) FROM pg_sleep(1)) = 1", "retries": 3"#,
        "SELECT id, payload FROM src",
    );
    let file = write_config(out.path(), "sleepy.json", &sleepy);
    let retried = run_and_kill(out.path(), &db, &file).await;
    retried.assert_ok();
    assert_eq!(delta_version(&target).await, Some(1));
    assert_eq!(
        delta_rows(&target, "SELECT count(*) AS n, sum(id) AS s FROM t").await,
        table(&[
            "+---------+---------------+",
            "| n       | s             |",
            "+---------+---------------+",
            "| 3000000 | 4500001500000 |",
            "+---------+---------------+",
        ])
    );
}

/// Without a mark-recording sink the high-water mark lives in an offset log
/// under the source's `stateDir`, written only after the load committed: a
/// failed run does not advance it, so the next run reads the same rows again.
#[tokio::test]
async fn incremental_reads_keep_the_mark_in_state_dir_for_file_sinks() {
    incremental_into_files("incremental_state_dir", |state| {
        (String::new(), format!(r#", "stateDir": "{state}""#))
    })
    .await;
}

/// The same with the pipeline's `checkpointLocation` as the offset log.
#[tokio::test]
async fn incremental_reads_keep_the_mark_in_the_checkpoint_location() {
    incremental_into_files("incremental_checkpoint", |state| {
        (
            format!(r#""checkpointLocation": "{state}", "#),
            String::new(),
        )
    })
    .await;
}

/// Runs an incremental fromPostgres → toFiles pipeline whose offset log
/// directory `place(dir)` sets, as (top-level keys, source keys).
async fn incremental_into_files(name: &str, place: impl Fn(&str) -> (String, String)) {
    let db = database(
        name,
        "CREATE TABLE events (id integer PRIMARY KEY, kind text);
         INSERT INTO events VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let (top, source) = place(&state.display().to_string());
    let config = format!(
        r#"{{"name": "pg-incremental", {top}"steps": [
        {{"type": "extract", "method": "fromPostgres", "config": {{"url": "${{PG_URL}}", "password": "${{PGPASSWORD}}", "table": "events", "incrementalColumn": "id"{source}, "registerAs": "events"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/${{BATCH}}", "format": "csv"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "incremental.json", &config);
    let run_batch = |batch: &str| -> Run {
        pg_command(out.path(), &db)
            .env("BATCH", batch)
            .args(["run", &file])
            .output()
            .expect("run-pipeline starts")
            .into()
    };
    let ids = |batch: &str| {
        let path = out.path().join(batch);
        async move { file_rows(&path, "csv", "SELECT id FROM t ORDER BY id").await }
    };

    run_batch("b1").assert_ok();
    assert_eq!(
        ids("b1").await,
        table(&["+----+", "| id |", "+----+", "| 1  |", "| 2  |", "| 3  |", "+----+"])
    );
    let offset_log = state.join("dataflow_pg-incremental_events.json");
    assert_eq!(
        std::fs::read_to_string(&offset_log).unwrap().trim(),
        "{\n  \"id\": 3\n}"
    );

    server()
        .execute(&db, "INSERT INTO events VALUES (4, 'd'), (5, 'e')")
        .await;
    // b1 exists (toFiles errorIfExists): the run fails, the mark stays at 3.
    let failed = run_batch("b1");
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(std::fs::read_to_string(&offset_log)
        .unwrap()
        .contains("\"id\": 3"));

    run_batch("b2").assert_ok();
    assert_eq!(
        ids("b2").await,
        table(&["+----+", "| id |", "+----+", "| 4  |", "| 5  |", "+----+"])
    );
    // Nothing new: an empty batch, mark unchanged.
    run_batch("b3").assert_ok();
    assert!(std::fs::read_to_string(&offset_log)
        .unwrap()
        .contains("\"id\": 5"));
}

/// An incremental read must have somewhere to keep its mark, on a column
/// whose values can be compared.
#[tokio::test]
async fn incremental_config_errors() {
    let db = database(
        "incremental_errors",
        "CREATE TABLE events (id integer PRIMARY KEY, kind text);",
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    for (source, expected) in [
        (
            r#""table": "events", "incrementalColumn": "id""#,
            "incrementalColumn needs a place to record the high-water mark",
        ),
        (
            r#""table": "events", "incrementalColumn": "kind", "stateDir": "s""#,
            "incrementalColumn \"kind\" must be an integer, date or timestamp column",
        ),
        (
            r#""table": "events", "incrementalColumn": "nope", "stateDir": "s""#,
            "incrementalColumn \"nope\" is not a column of the relation",
        ),
    ] {
        let config = format!(
            r#"{{"name": "bad", "steps": [
            {{"type": "extract", "method": "fromPostgres", "config": {{"url": "${{PG_URL}}", "password": "${{PGPASSWORD}}", {source}}}}},
            {{"type": "load", "method": "toConsole"}}]}}"#
        );
        let file = write_config(out.path(), "bad.json", &config);
        let run = pg_run(out.path(), &db, &["run", &file]);
        assert_ne!(run.code, 0, "{source}");
        assert!(run.stderr.contains(expected), "{source}: {}", run.stderr);
        assert!(
            run.stderr.contains("steps[0] (fromPostgres)"),
            "{}",
            run.stderr
        );
    }
}

/// An `infinity` timestamp never becomes the mark (nothing is above it):
/// later rows keep arriving.
#[tokio::test]
async fn an_infinite_timestamp_does_not_stall_incremental_reads() {
    let db = database(
        "incremental_infinity",
        "CREATE TABLE events (id integer, at timestamp);
         INSERT INTO events VALUES (1, '2026-01-01'), (2, 'infinity'), (3, NULL);",
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "pg-infinity", "steps": [
        {{"type": "extract", "method": "fromPostgres", "config": {{"url": "${{PG_URL}}", "password": "${{PGPASSWORD}}", "table": "events", "incrementalColumn": "at", "stateDir": "{}"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/${{BATCH}}", "format": "csv"}}}}
    ]}}"#,
        out.path().join("state").display()
    );
    let file = write_config(out.path(), "infinity.json", &config);
    for (batch, insert, expected) in [
        ("b1", None, "| 1  |"),
        (
            "b2",
            Some("INSERT INTO events VALUES (4, '2026-02-01')"),
            "| 4  |",
        ),
    ] {
        if let Some(sql) = insert {
            server().execute(&db, sql).await;
        }
        pg_command(out.path(), &db)
            .env("BATCH", batch)
            .args(["run", &file])
            .output()
            .map(Run::from)
            .expect("run-pipeline starts")
            .assert_ok();
        let path = out.path().join(batch);
        let ids = file_rows(&path, "csv", "SELECT id FROM t ORDER BY id").await;
        assert_eq!(
            ids,
            table(&["+----+", "| id |", "+----+", expected, "+----+"])
        );
    }
}
