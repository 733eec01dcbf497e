//! Every example config in pipelines/ runs here and its output is checked
//! row by row.

mod common;

use common::*;
use dataflow_connectors::testing::PgServer;

#[test]
fn every_example_pipeline_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "click-windows.json",
            "customer-report.json",
            "debezium-to-delta.json",
            "merge-customer-changes.json",
            "orders-cleanup.json",
            "orders-daily.json",
            "postgres-to-delta.json",
            "streaming-kafka-to-delta.json",
            "totals-report.json",
            "users-from-vault.json"
        ],
        "a new example pipeline needs a test in this file (the Spark app's \
         examples, which need Vault, S3 and Kafka or PostgreSQL, are tested in \
         object_store.rs; the merge examples in merge.rs; the stateful stream in \
         stateful.rs)"
    );
}

#[tokio::test]
async fn orders_daily_then_totals_report() {
    let out = tempfile::tempdir().unwrap();
    let first = run(out.path(), &["run", "pipelines/orders-daily.json"]);
    first.assert_ok();
    assert!(
        first.stderr.contains("pipeline \"orders-daily\" succeeded"),
        "{}",
        first.stderr
    );
    let totals = out.path().join("totals");
    assert!(
        totals.join("customer_id=101").is_dir(),
        "partitioned by customer_id"
    );
    let expected = table(&[
        "+-------------+--------+",
        "| customer_id | total  |",
        "+-------------+--------+",
        "| 101         | 42.0   |",
        "| 102         | 27.25  |",
        "| 103         | 100.75 |",
        "| 104         | 60.0   |",
        "| 105         | 33.25  |",
        "+-------------+--------+",
    ]);
    let sql = "SELECT customer_id, total FROM t ORDER BY customer_id";
    assert_eq!(delta_rows(&totals, sql).await, expected);
    assert_eq!(delta_version(&totals).await, Some(0));

    // overwrite: a second run replaces the rows, as version 1
    run(out.path(), &["run", "pipelines/orders-daily.json"]).assert_ok();
    assert_eq!(delta_version(&totals).await, Some(1));
    assert_eq!(delta_rows(&totals, sql).await, expected);

    let report = run(out.path(), &["run", "pipelines/totals-report.json"]);
    report.assert_ok();
    let shown = table(&[
        "+-------------+--------+",
        "| customer_id | total  |",
        "+-------------+--------+",
        "| 103         | 100.75 |",
        "| 104         | 60.0   |",
        "| 101         | 42.0   |",
        "+-------------+--------+",
    ]);
    assert_eq!(
        report
            .stdout
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        shown
    );
}

#[tokio::test]
async fn orders_cleanup_writes_typed_parquet() {
    let out = tempfile::tempdir().unwrap();
    let result = run(out.path(), &["run", "pipelines/orders-cleanup.json"]);
    result.assert_ok();
    let dir = out.path().join("clean_orders");
    assert!(dir.join("day=2026-11-01").is_dir() && dir.join("day=2026-11-02").is_dir());
    let rows = file_rows(
        &dir,
        "parquet",
        "SELECT order_id, customer_id, amount, amount_cents, day FROM t ORDER BY order_id",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+----------+-------------+--------+--------------+------------+",
            "| order_id | customer_id | amount | amount_cents | day        |",
            "+----------+-------------+--------+--------------+------------+",
            "| 1        | 101         | 25.50  | 2550.00      | 2026-11-01 |",
            "| 2        | 102         | 10.00  | 1000.00      | 2026-11-01 |",
            "| 4        | 103         | 100.00 | 10000.00     | 2026-11-01 |",
            "| 5        | 102         | 7.25   | 725.00       | 2026-11-01 |",
            "| 6        | 101         | 12.00  | 1200.00      | 2026-11-02 |",
            "| 7        | 104         | 60.00  | 6000.00      | 2026-11-02 |",
            "| 8        | 103         | 0.75   | 75.00        | 2026-11-02 |",
            "| 9        | 105         | 33.25  | 3325.00      | 2026-11-02 |",
            "+----------+-------------+--------+--------------+------------+",
        ])
    );
    assert!(
        result.stderr.contains("load steps[7] (toFiles)"),
        "{}",
        result.stderr
    );
}

#[tokio::test]
async fn customer_report_caches_once_and_feeds_three_loads() {
    let out = tempfile::tempdir().unwrap();
    let result = run(out.path(), &["run", "pipelines/customer-report.json"]);
    result.assert_ok();
    assert!(
        result
            .stderr
            .contains("cached MEMORY_AND_DISK (computed 1x)"),
        "the cached join is computed once for both consumers:\n{}",
        result.stderr
    );
    let by_country = table(&[
        "+---------+--------+---------+",
        "| country | orders | revenue |",
        "+---------+--------+---------+",
        "| FR      | 1      | 33.25   |",
        "| GB      | 2      | 37.5    |",
        "| US      | 5      | 128.0   |",
        "+---------+--------+---------+",
    ]);
    assert_eq!(
        result
            .stdout
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        by_country
    );
    let csv = file_rows(
        &out.path().join("revenue_by_country"),
        "csv",
        "SELECT country, orders, revenue FROM t ORDER BY country",
    )
    .await;
    assert_eq!(csv, by_country);
    let paid = out.path().join("paid_orders");
    let rows = delta_rows(
        &paid,
        "SELECT order_id, amount, name, country FROM t ORDER BY order_id, amount",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+----------+--------+--------------------+---------+",
            "| order_id | amount | name               | country |",
            "+----------+--------+--------------------+---------+",
            "| 1        | 25.5   | Ada Lovelace       | GB      |",
            "| 2        | 10.0   | Grace Hopper       | US      |",
            "| 2        | 10.0   | Grace Hopper       | US      |",
            "| 4        | 100.0  | Katherine Johnson  | US      |",
            "| 5        | 7.25   | Grace Hopper       | US      |",
            "| 6        | 12.0   | Ada Lovelace       | GB      |",
            "| 8        | 0.75   | Katherine Johnson  | US      |",
            "| 9        | 33.25  | Émilie du Châtelet | FR      |",
            "+----------+--------+--------------------+---------+",
        ])
    );
    // append: a second run adds the same rows again as version 1
    run(out.path(), &["run", "pipelines/customer-report.json"]).assert_ok();
    assert_eq!(delta_version(&paid).await, Some(1));
    assert_eq!(
        delta_rows(&paid, "SELECT count(*) AS n FROM t").await[3],
        "| 16 |"
    );
}

#[test]
fn explain_shows_logical_and_physical_plans() {
    let out = tempfile::tempdir().unwrap();
    let result = run(out.path(), &["explain", "pipelines/customer-report.json"]);
    result.assert_ok();
    for needle in [
        "Logical plan:",
        "Physical plan:",
        "cache MEMORY_AND_DISK",
        "steps[4] (toDeltaLake) <- paid_cached",
        "HashJoinExec",
    ] {
        assert!(
            result.stdout.contains(needle),
            "missing {needle}:\n{}",
            result.stdout
        );
    }
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "explain writes nothing"
    );
}

#[test]
fn to_console_num_rows_up_to_the_largest_count() {
    let out = tempfile::tempdir().unwrap();
    let config = |rows: &str| {
        format!(
            r#"{{"name": "show", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/*.csv", "header": true}}}},
            {{"type": "load", "method": "toConsole", "config": {{"numRows": {rows}}}}}]}}"#
        )
    };
    let state = out.path().join("state").display().to_string();
    let mut shown = Vec::new();
    for rows in ["2", &usize::MAX.to_string()] {
        let file = write_config(out.path(), "show.json", &config(rows));
        let result = run(out.path(), &["run", &file, "--state-dir", &state]);
        result.assert_ok();
        let data_lines = result
            .stdout
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("order_id"))
            .count();
        shown.push((data_lines, result.stdout.contains("only showing")));
    }
    assert_eq!(shown, [(2, true), (10, false)]);
}

#[test]
fn validate_accepts_every_example() {
    let out = tempfile::tempdir().unwrap();
    for name in [
        "orders-daily",
        "orders-cleanup",
        "customer-report",
        "merge-customer-changes",
    ] {
        let result = run(out.path(), &["validate", &format!("pipelines/{name}.json")]);
        result.assert_ok();
        assert!(result.stdout.contains("valid"), "{}", result.stdout);
    }
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "validate writes nothing"
    );
}

/// Three scheduled runs of the table sync, with inserts, updates and a soft
/// delete in between: each run reads only the changed rows, and the target
/// holds every live key exactly once with its latest values.
#[tokio::test]
async fn postgres_to_delta_syncs_changes_run_after_run() {
    let server = PgServer::shared();
    let db = server.create_database("sync").await;
    server
        .execute(
            &db,
            "CREATE TABLE customers (id bigint PRIMARY KEY, name text, tier text,
                                     deleted boolean NOT NULL DEFAULT false,
                                     updated_at timestamptz NOT NULL);
             INSERT INTO customers VALUES
               (1, 'ana', 'gold', false, '2024-05-01 10:00:00+00'),
               (2, 'ben', 'silver', false, '2024-05-01 10:00:01+00'),
               (3, 'cyd', 'bronze', false, '2024-05-01 10:00:02+00');",
        )
        .await;
    let out = tempfile::tempdir().unwrap();
    let sync = || -> Run {
        cli(out.path())
            .env("PG_URL", server.url(&db))
            .env("PGPASSWORD", server.password())
            .args(["run", "-v", "pipelines/postgres-to-delta.json"])
            .output()
            .expect("run-pipeline starts")
            .into()
    };
    let target = out.path().join("customers");
    let sql = "SELECT id, name, tier, deleted FROM t ORDER BY id";

    // PostgreSQL rows have no order: without sequenceBy, which of two rows
    // of one key is the last is undefined, and validate says so.
    let unsequenced = std::fs::read_to_string(repo_root().join("pipelines/postgres-to-delta.json"))
        .unwrap()
        .replace(r#""sequenceBy": "updated_at", "#, "");
    let unsequenced = write_config(out.path(), "unsequenced.json", &unsequenced);
    let invalid: Run = cli(out.path())
        .env("PG_URL", server.url(&db))
        .env("PGPASSWORD", server.password())
        .args(["validate", &unsequenced])
        .output()
        .expect("run-pipeline starts")
        .into();
    assert_eq!(invalid.code, 2, "{}", invalid.stderr);
    assert!(
        invalid.stderr.contains(
            "at steps[1].config.sequenceBy in steps[1] (toDeltaLake): the rows from steps[0] (fromPostgres as \"changes\") come in no defined order"
        ),
        "{}",
        invalid.stderr
    );

    let first = sync();
    first.assert_ok();
    assert!(
        first
            .stderr
            .contains("reading rows from the start up to '2024-05-01 10:00:02+00'::timestamptz"),
        "{}",
        first.stderr
    );
    assert_eq!(
        delta_rows(&target, sql).await,
        table(&[
            "+----+------+--------+---------+",
            "| id | name | tier   | deleted |",
            "+----+------+--------+---------+",
            "| 1  | ana  | gold   | false   |",
            "| 2  | ben  | silver | false   |",
            "| 3  | cyd  | bronze | false   |",
            "+----+------+--------+---------+",
        ])
    );

    // An update, an insert, and a row changed *before* the mark (not read).
    server
        .execute(
            &db,
            "UPDATE customers SET tier = 'gold', updated_at = '2024-05-02 09:00:00+00' WHERE id = 2;
             INSERT INTO customers VALUES (4, 'dee', 'silver', false, '2024-05-02 09:00:01+00');
             UPDATE customers SET name = 'ANA' WHERE id = 1;",
        )
        .await;
    let second = sync();
    second.assert_ok();
    assert!(
        second.stderr.contains(
            "reading rows above '2024-05-01 10:00:02+00'::timestamptz \
             up to '2024-05-02 09:00:01+00'::timestamptz"
        ),
        "{}",
        second.stderr
    );
    assert_eq!(
        delta_rows(&target, sql).await,
        table(&[
            "+----+------+--------+---------+",
            "| id | name | tier   | deleted |",
            "+----+------+--------+---------+",
            "| 1  | ana  | gold   | false   |",
            "| 2  | ben  | gold   | false   |",
            "| 3  | cyd  | bronze | false   |",
            "| 4  | dee  | silver | false   |",
            "+----+------+--------+---------+",
        ])
    );

    // A soft delete and another update of an updated row.
    server
        .execute(
            &db,
            "UPDATE customers SET deleted = true, updated_at = '2024-05-03 08:00:00+00' WHERE id = 3;
             UPDATE customers SET tier = 'platinum', updated_at = '2024-05-03 08:00:01+00' WHERE id = 2;",
        )
        .await;
    sync().assert_ok();
    let expected = table(&[
        "+----+------+----------+---------+",
        "| id | name | tier     | deleted |",
        "+----+------+----------+---------+",
        "| 1  | ana  | gold     | false   |",
        "| 2  | ben  | platinum | false   |",
        "| 4  | dee  | silver   | false   |",
        "+----+------+----------+---------+",
    ]);
    assert_eq!(delta_rows(&target, sql).await, expected);
    // One commit per run: created at 0, merged at 1 and 2.
    assert_eq!(delta_version(&target).await, Some(2));

    // Nothing changed: the run reads no row and the table keeps its rows.
    let idle = sync();
    idle.assert_ok();
    assert!(
        idle.stderr
            .contains("no rows above '2024-05-03 08:00:01+00'::timestamptz"),
        "{}",
        idle.stderr
    );
    assert_eq!(delta_rows(&target, sql).await, expected);
    // Its mark is the one the table already holds: nothing is committed.
    assert_eq!(delta_version(&target).await, Some(2));
}
