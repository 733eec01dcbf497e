//! saveMode semantics for toDeltaLake and toFiles, schema evolution, and
//! version checks after every run.

mod common;

use common::*;

/// A pipeline writing the orders (optionally with an extra column) to `sink`.
fn orders_to(dir: &std::path::Path, sink: &str, extra_column: bool) -> String {
    let select = if extra_column {
        "SELECT order_id, amount, 'x' AS note FROM orders"
    } else {
        "SELECT order_id, amount FROM orders"
    };
    let config = format!(
        r#"{{"name": "modes", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true, "registerAs": "orders"}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "{select}"}}}},
            {{"type": "load", "method": {sink}}}]}}"#
    );
    let name = format!("{}.json", uuid_like(&config));
    write_config(dir, &name, &config)
}

fn uuid_like(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:x}", h.finish())
}

fn delta(mode: &str, extra: &str) -> String {
    format!(
        r#""toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/t", "saveMode": "{mode}"{extra}}}"#
    )
}

async fn count(path: &std::path::Path) -> String {
    delta_rows(path, "SELECT count(*) AS n FROM t").await[3].clone()
}

#[tokio::test]
async fn delta_save_modes() {
    let out = tempfile::tempdir().unwrap();
    let table = out.path().join("t");
    let cfg = |mode: &str| orders_to(out.path(), &delta(mode, ""), false);

    run(out.path(), &["run", &cfg("errorIfExists")]).assert_ok();
    assert_eq!(delta_version(&table).await, Some(0));
    assert_eq!(count(&table).await, "| 5 |");

    let again = run(out.path(), &["run", &cfg("errorIfExists")]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("steps[2] (toDeltaLake)"),
        "{}",
        again.stderr
    );
    assert_eq!(delta_version(&table).await, Some(0));

    let ignored = run(out.path(), &["run", &cfg("ignore")]);
    ignored.assert_ok();
    assert!(ignored.stderr.contains("skipped"), "{}", ignored.stderr);
    assert_eq!(delta_version(&table).await, Some(0));

    run(out.path(), &["run", &cfg("append")]).assert_ok();
    assert_eq!(delta_version(&table).await, Some(1));
    assert_eq!(count(&table).await, "| 10 |");

    run(out.path(), &["run", &cfg("overwrite")]).assert_ok();
    assert_eq!(delta_version(&table).await, Some(2));
    assert_eq!(count(&table).await, "| 5 |");
}

#[tokio::test]
async fn delta_schema_mismatch_needs_merge_schema() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("t");
    run(
        out.path(),
        &["run", &orders_to(out.path(), &delta("append", ""), false)],
    )
    .assert_ok();

    let mismatch = run(
        out.path(),
        &["run", &orders_to(out.path(), &delta("append", ""), true)],
    );
    assert_eq!(mismatch.code, 1, "{}", mismatch.stderr);
    assert!(
        mismatch.stderr.contains("does not: note") && mismatch.stderr.contains("mergeSchema"),
        "{}",
        mismatch.stderr
    );
    assert_eq!(delta_version(&path).await, Some(0));

    run(
        out.path(),
        &[
            "run",
            &orders_to(
                out.path(),
                &delta("append", r#", "mergeSchema": true"#),
                true,
            ),
        ],
    )
    .assert_ok();
    assert_eq!(delta_version(&path).await, Some(1));
    let rows = delta_rows(
        &path,
        "SELECT note, count(*) AS n FROM t GROUP BY note ORDER BY note",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+------+---+",
            "| note | n |",
            "+------+---+",
            "| x    | 5 |",
            "|      | 5 |",
            "+------+---+"
        ])
    );
}

#[tokio::test]
async fn file_save_modes() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("f");
    let cfg = |mode: &str| {
        orders_to(
            out.path(),
            &format!(
                r#""toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/f", "format": "json", "saveMode": "{mode}"}}"#
            ),
            false,
        )
    };
    let rows = || file_rows(&dir, "json", "SELECT count(*) AS n FROM t");
    run(out.path(), &["run", &cfg("errorIfExists")]).assert_ok();
    assert_eq!(rows().await[3], "| 5 |");
    assert_eq!(run(out.path(), &["run", &cfg("errorIfExists")]).code, 1);
    run(out.path(), &["run", &cfg("ignore")]).assert_ok();
    run(out.path(), &["run", &cfg("append")]).assert_ok();
    assert_eq!(rows().await[3], "| 10 |");
    run(out.path(), &["run", &cfg("overwrite")]).assert_ok();
    assert_eq!(rows().await[3], "| 5 |");
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no staging directories left behind: {leftovers:?}"
    );
}

#[tokio::test]
async fn delta_merge_upserts_and_deletes() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("t");
    let merge = |name: &str, file: &str, op: &str| {
        let config = format!(
            r#"{{"name": "merge", "steps": [
                {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/{file}", "header": true, "registerAs": "changes"}}}},
                {{"type": "transform", "method": "sql", "config": {{"query": "SELECT order_id, amount, {op} AS op FROM changes"}}}},
                {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/t", "saveMode": "merge",
                    "mergeKeys": ["order_id"], "deleteCondition": "source.op = 'D'"}}}}]}}"#
        );
        write_config(out.path(), name, &config)
    };
    // First run: no table yet, so the rows are inserted and the table created.
    run(
        out.path(),
        &[
            "run",
            &merge("first.json", "orders/orders-2026-11-01.csv", "'I'"),
        ],
    )
    .assert_ok();
    assert_eq!(delta_version(&path).await, Some(0));

    // Second run: order 2 updated, 3 deleted, 10 inserted, 11 (a delete of
    // an unknown key) ignored.
    let result = run(
        out.path(),
        &["run", &merge("second.json", "orders-changes.csv", "op")],
    );
    result.assert_ok();
    assert!(
        result.stderr.contains("1 inserted, 1 updated, 1 deleted"),
        "{}",
        result.stderr
    );
    assert_eq!(delta_version(&path).await, Some(1));
    assert_eq!(
        delta_rows(
            &path,
            "SELECT order_id, amount, op FROM t ORDER BY order_id"
        )
        .await,
        table(&[
            "+----------+--------+----+",
            "| order_id | amount | op |",
            "+----------+--------+----+",
            "| 1        | 25.5   | I  |",
            "| 2        | 12.5   | U  |",
            "| 4        | 100.0  | I  |",
            "| 5        | 7.25   | I  |",
            "| 10       | 99.0   | I  |",
            "+----------+--------+----+",
        ])
    );
}
