//! Paths on object stores through the real `run-pipeline` binary, against
//! throwaway servers on loopback: moto (S3), Azurite (Azure Blob) and
//! fake-gcs-server (GCS, reads only: its upload API does not work with
//! object_store). What a pipeline wrote is read back with the harness's own
//! object_store clients, not with run-pipeline's.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataflow_connectors::testing::{
    AzuriteServer, GcsServer, KafkaBroker, PgServer, S3Server, VaultServer,
};
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTableBuilder;
use futures::TryStreamExt;
use url::Url;

fn s3() -> &'static S3Server {
    S3Server::shared()
}

/// A bucket (or container) name unique to this test process.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A new S3 bucket and its `storage` entry (the harness's endpoint and keys).
fn bucket(name: &str) -> (String, String) {
    let bucket = unique(name);
    s3().create_bucket(&bucket).unwrap();
    let options: BTreeMap<String, String> = s3().options().into_iter().collect();
    let storage = serde_json::json!({ format!("s3://{bucket}"): options });
    (bucket, storage.to_string())
}

/// Puts `text` at `key` of the harness store `store`.
async fn put(store: &Arc<dyn ObjectStore>, key: &str, text: &str) {
    store
        .put(&ObjectPath::from(key), text.as_bytes().to_vec().into())
        .await
        .unwrap();
}

/// The keys under `prefix` in `store`, sorted.
async fn keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    let mut keys: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// A session that reaches `url`'s bucket through the harness `store`.
fn session(store: Arc<dyn ObjectStore>, url: &str) -> SessionContext {
    let url = Url::parse(url).unwrap();
    let root = Url::parse(&url[..url::Position::BeforePath]).unwrap();
    let ctx = SessionContext::new();
    ctx.register_object_store(&root, store);
    ctx
}

/// The rows of the `format` files under `url`, via `sql` over `t`.
async fn remote_file_rows(
    store: Arc<dyn ObjectStore>,
    url: &str,
    format: &str,
    sql: &str,
) -> Vec<String> {
    let ctx = session(store, url);
    let options = if format == "csv" {
        "OPTIONS ('format.has_header' 'true')"
    } else {
        ""
    };
    let ddl = format!("CREATE EXTERNAL TABLE t STORED AS {format} LOCATION '{url}/' {options}");
    ctx.sql(&ddl).await.unwrap();
    query(ctx, sql).await
}

/// The rows of the Delta table at `url` (at `version`, else the latest),
/// via `sql` over `t`.
async fn remote_delta_rows(
    store: Arc<dyn ObjectStore>,
    url: &str,
    version: Option<u64>,
    sql: &str,
) -> Vec<String> {
    let table_url = Url::parse(&format!("{url}/")).unwrap();
    let mut builder = DeltaTableBuilder::from_url(table_url.clone())
        .unwrap()
        .with_storage_backend(store.clone(), table_url);
    if let Some(v) = version {
        builder = builder.with_version(v);
    }
    let table = builder.load().await.unwrap();
    let ctx = session(store, url);
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    query(ctx, sql).await
}

/// `cli(out)` with `env` set.
fn cli_with(out: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = cli(out);
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

fn run_env(out: &Path, env: &[(String, String)], args: &[&str]) -> Run {
    cli_with(out, env)
        .args(args)
        .output()
        .expect("run-pipeline starts")
        .into()
}

const ORDERS_EU: &str = "id,amount\n1,10.5\n2,20\n3,30\n";
const ORDERS_US: &str = "id,amount\n4,40.0\n5,50.0\n";

/// Orders CSV files in hive partitions under `raw/orders/` of `store`.
async fn put_orders(store: &Arc<dyn ObjectStore>) {
    put(store, "raw/orders/region=eu/part-0.csv", ORDERS_EU).await;
    put(store, "raw/orders/region=us/part-0.csv", ORDERS_US).await;
}

#[tokio::test]
async fn s3_files_are_read_as_directory_glob_and_file_and_written_with_success() {
    let (bucket, storage) = bucket("files");
    let store = s3().store(&bucket).unwrap();
    put_orders(&store).await;
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "s3-files", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "s3://{bucket}/raw/orders", "format": "csv", "header": true, "registerAs": "dir"}}}},
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "s3://{bucket}/raw/orders/region=eu/*.csv", "header": true, "registerAs": "glob"}}}},
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "s3a://{bucket}/raw/orders/region=us/part-0.csv", "header": true, "registerAs": "one"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT region, count(*) AS n, sum(amount) AS total, (SELECT count(*) FROM glob) AS glob_rows, (SELECT count(*) FROM one) AS file_rows FROM dir GROUP BY region"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "s3://{bucket}/out/by_region", "format": "csv"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "files.json", &config);
    run(out.path(), &["run", &file]).assert_ok();
    let rows = remote_file_rows(
        store.clone(),
        &format!("s3://{bucket}/out/by_region"),
        "csv",
        "SELECT * FROM t ORDER BY region",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+--------+---+-------+-----------+-----------+",
            "| region | n | total | glob_rows | file_rows |",
            "+--------+---+-------+-----------+-----------+",
            "| eu     | 3 | 60.5  | 3         | 2         |",
            "| us     | 2 | 90.0  | 3         | 2         |",
            "+--------+---+-------+-----------+-----------+",
        ])
    );
    let written = keys(&store, "out").await;
    assert!(
        written.contains(&"out/by_region/_SUCCESS".to_string()),
        "{written:?}"
    );
    assert!(
        written.iter().all(|k| !k.contains("staging")),
        "staged files left behind: {written:?}"
    );
}

#[tokio::test]
async fn s3_to_files_overwrite_replaces_append_adds_and_error_if_exists_refuses() {
    let (bucket, storage) = bucket("save-modes");
    let store = s3().store(&bucket).unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = format!("s3://{bucket}/out/numbers");
    let pipeline = |query: &str, mode: &str| {
        let config = format!(
            r#"{{"name": "s3-save", "storage": {storage}, "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "{query}"}}}},
            {{"type": "load", "method": "toFiles", "config": {{"path": "{target}", "saveMode": "{mode}"}}}}
        ]}}"#
        );
        write_config(out.path(), "save.json", &config)
    };
    let count = || {
        remote_file_rows(
            store.clone(),
            &target,
            "parquet",
            "SELECT count(*) AS n, min(v) AS v FROM t",
        )
    };
    run(
        out.path(),
        &[
            "run",
            &pipeline("SELECT 1 AS v FROM generate_series(1, 10)", "errorIfExists"),
        ],
    )
    .assert_ok();
    run(
        out.path(),
        &[
            "run",
            &pipeline("SELECT 2 AS v FROM generate_series(1, 3)", "overwrite"),
        ],
    )
    .assert_ok();
    assert_eq!(count().await[3], "| 3 | 2 |");
    let refused = run(
        out.path(),
        &["run", &pipeline("SELECT 9 AS v", "errorIfExists")],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("already exists"),
        "{}",
        refused.stderr
    );
    run(
        out.path(),
        &[
            "run",
            &pipeline("SELECT 1 AS v FROM generate_series(1, 4)", "append"),
        ],
    )
    .assert_ok();
    assert_eq!(count().await[3], "| 7 | 1 |");
    let ignored = run(out.path(), &["run", &pipeline("SELECT 9 AS v", "ignore")]);
    ignored.assert_ok();
    assert_eq!(count().await[3], "| 7 | 1 |");
    let files = keys(&store, "").await;
    assert!(files.iter().all(|k| !k.contains("staging")), "{files:?}");
    assert!(
        files.contains(&"out/numbers/_SUCCESS".to_string()),
        "{files:?}"
    );
}

#[tokio::test]
async fn s3_delta_tables_take_every_save_mode_merge_and_time_travel() {
    let (bucket, storage) = bucket("delta");
    let store = s3().store(&bucket).unwrap();
    let out = tempfile::tempdir().unwrap();
    let table_url = format!("s3a://{bucket}/tables/users");
    let write = |query: &str, load: &str| {
        let config = format!(
            r#"{{"name": "s3-delta", "storage": {storage}, "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "{query}"}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{table_url}", {load}}}}}
        ]}}"#
        );
        let file = write_config(out.path(), "delta.json", &config);
        run(out.path(), &["run", &file]).assert_ok();
    };
    write(
        "SELECT id, 'v0' AS name, false AS deleted FROM (VALUES (1), (2), (3)) AS v(id)",
        r#""saveMode": "errorIfExists""#,
    );
    write(
        "SELECT 4 AS id, 'v1' AS name, false AS deleted",
        r#""saveMode": "append""#,
    );
    write(
        "SELECT * FROM (VALUES (2, 'v2', false), (3, 'gone', true), (5, 'v2', false)) AS v(id, name, deleted)",
        r#""saveMode": "merge", "mergeKeys": ["id"], "deleteCondition": "source.deleted""#,
    );
    let latest = remote_delta_rows(
        store.clone(),
        &table_url.replace("s3a://", "s3://"),
        None,
        "SELECT id, name FROM t ORDER BY id",
    )
    .await;
    assert_eq!(
        latest,
        table(&[
            "+----+------+",
            "| id | name |",
            "+----+------+",
            "| 1  | v0   |",
            "| 2  | v2   |",
            "| 4  | v1   |",
            "| 5  | v2   |",
            "+----+------+",
        ])
    );

    // Time travel through run-pipeline itself, into a local CSV file.
    let config = format!(
        r#"{{"name": "s3-travel", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromDeltaLake", "config": {{"path": "{table_url}", "versionAsOf": 1, "registerAs": "users"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT count(*) AS n, max(name) AS newest FROM users"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/v1", "format": "csv"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "travel.json", &config);
    let travelled = run(out.path(), &["run", &file]);
    travelled.assert_ok();
    let v1 = file_rows(&out.path().join("v1"), "csv", "SELECT * FROM t").await;
    assert_eq!(v1[3], "| 4 | v1     |", "{v1:?}");

    write(
        "SELECT 7 AS id, 'v3' AS name, false AS deleted",
        r#""saveMode": "overwrite""#,
    );
    let overwritten = remote_delta_rows(
        store.clone(),
        &format!("s3://{bucket}/tables/users"),
        None,
        "SELECT count(*) AS n FROM t",
    )
    .await;
    assert_eq!(overwritten[3], "| 1 |");
    let v0 = remote_delta_rows(
        store,
        &format!("s3://{bucket}/tables/users"),
        Some(0),
        "SELECT count(*) AS n FROM t",
    )
    .await;
    assert_eq!(v0[3], "| 3 |");
}

/// Two processes append to one S3 table at the same time, five runs each:
/// conditional PUT makes every commit its own version, none is lost.
#[tokio::test]
async fn two_concurrent_s3_writers_lose_no_commit() {
    let (bucket, storage) = bucket("writers");
    let store = s3().store(&bucket).unwrap();
    let out = tempfile::tempdir().unwrap();
    let table_url = format!("s3://{bucket}/shared");
    let config = |writer: u32| {
        format!(
            r#"{{"name": "writer-{writer}", "storage": {storage}, "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "SELECT {writer} AS writer, value AS i FROM generate_series(1, 100)"}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{table_url}", "saveMode": "append"}}}}
        ]}}"#
        )
    };
    let files: Vec<String> = (0..3)
        .map(|w| write_config(out.path(), &format!("w{w}.json"), &config(w)))
        .collect();
    run(out.path(), &["run", &files[0]]).assert_ok();
    let writers: Vec<_> = files[1..]
        .iter()
        .cloned()
        .map(|file| {
            let out = out.path().to_path_buf();
            std::thread::spawn(move || {
                for _ in 0..5 {
                    run(&out, &["run", &file]).assert_ok();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let rows = remote_delta_rows(
        store.clone(),
        &table_url,
        None,
        "SELECT writer, count(*) AS n FROM t GROUP BY writer ORDER BY writer",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+--------+-----+",
            "| writer | n   |",
            "+--------+-----+",
            "| 0      | 100 |",
            "| 1      | 500 |",
            "| 2      | 500 |",
            "+--------+-----+",
        ])
    );
    let commits = keys(&store, "shared/_delta_log").await;
    let versions = commits.iter().filter(|k| k.ends_with(".json")).count();
    assert_eq!(versions, 11, "{commits:?}");
}

#[test]
fn storage_options_are_checked_at_validate() {
    let out = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"s3://data/a": {"aws_region": "eu-west-1"}, "s3://data/b": {"aws_region": "us-east-1"}}"#,
            "same bucket",
        ),
        (
            r#"{"abfss://a@acct.dfs.core.windows.net": {"azure_storage_account_key": "k1"}, "abfss://b@acct.dfs.core.windows.net": {"azure_storage_account_key": "k2"}}"#,
            "same Azure account",
        ),
        (
            r#"{"s3://data": {"aws_secret": "x"}}"#,
            "unknown option \"aws_secret\"",
        ),
        (r#"{"hdfs://data": {}}"#, "unsupported scheme"),
    ];
    for (storage, expected) in cases {
        let config = format!(
            r#"{{"name": "bad-storage", "storage": {storage}, "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
            {{"type": "load", "method": "toConsole"}}
        ]}}"#
        );
        let file = write_config(out.path(), "bad.json", &config);
        let checked = run(out.path(), &["validate", &file]);
        assert_eq!(checked.code, 2, "{storage}: {}", checked.stderr);
        assert!(
            checked.stderr.contains(expected),
            "{storage}: {}",
            checked.stderr
        );
        assert!(checked.stderr.contains("storage."), "{}", checked.stderr);
    }
    for (extract, load, at, expected) in [
        (
            "hdfs://nn/x.csv",
            "out/x",
            "steps[0].config.path",
            "unsupported scheme",
        ),
        (
            "testdata/orders/",
            "s3://",
            "steps[1].config.path",
            "names no bucket",
        ),
        (
            "testdata/orders/",
            "s3://bucket",
            "steps[1].config.path",
            "not its root",
        ),
        (
            "testdata/orders/",
            "s3:/bucket/t",
            "steps[1].config.path",
            "two slashes",
        ),
    ] {
        let method = if load == "s3://bucket" {
            "toFiles"
        } else {
            "toDeltaLake"
        };
        let config = format!(
            r#"{{"name": "bad-path", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{extract}", "format": "csv"}}}},
            {{"type": "load", "method": "{method}", "config": {{"path": "{load}"}}}}
        ]}}"#
        );
        let file = write_config(out.path(), "bad-path.json", &config);
        let checked = run(out.path(), &["validate", &file]);
        assert_eq!(checked.code, 2, "{}", checked.stderr);
        assert!(checked.stderr.contains(at), "{}", checked.stderr);
        assert!(checked.stderr.contains(expected), "{}", checked.stderr);
    }
}

/// No `storage` entry: the default credential chain (environment
/// variables, as on a machine configured for S3) finds the server.
#[tokio::test]
async fn s3_credentials_come_from_the_environment_by_default() {
    let bucket = unique("env");
    s3().create_bucket(&bucket).unwrap();
    let store = s3().store(&bucket).unwrap();
    put_orders(&store).await;
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "s3-env", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "s3://{bucket}/raw/orders/", "format": "csv", "header": true}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "s3://{bucket}/orders"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "env.json", &config);
    run_env(out.path(), &s3().env(), &["run", &file]).assert_ok();
    let rows = remote_delta_rows(
        store,
        &format!("s3://{bucket}/orders"),
        None,
        "SELECT count(*) AS n, sum(amount) AS total FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 5 | 150.5 |");
}

#[tokio::test]
async fn azure_files_and_delta_tables_through_az_and_abfss_urls() {
    let azure = AzuriteServer::shared();
    let container = unique("lake");
    azure.create_container(&container).unwrap();
    let store = azure.store(&container).unwrap();
    put_orders(&store).await;
    let out = tempfile::tempdir().unwrap();
    let options: BTreeMap<String, String> = azure.options().into_iter().collect();
    let storage = serde_json::json!({ format!("az://{container}"): options.clone() });
    let abfss = format!("abfss://{container}@devstoreaccount1.dfs.core.windows.net");
    let config = format!(
        r#"{{"name": "azure", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "az://{container}/raw/orders/", "format": "csv", "header": true, "registerAs": "orders"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "az://{container}/orders", "saveMode": "merge", "mergeKeys": ["id"]}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "azure.json", &config);
    run_env(out.path(), &azure.env(), &["run", &file]).assert_ok();
    run_env(out.path(), &azure.env(), &["run", &file]).assert_ok();
    let storage = serde_json::json!({ abfss.clone(): options });
    let config = format!(
        r#"{{"name": "azure-read", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromDeltaLake", "config": {{"path": "{abfss}/orders", "registerAs": "t"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT count(*) AS n, sum(amount) AS total FROM t"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "{abfss}/summary", "format": "json"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "azure-read.json", &config);
    run_env(out.path(), &azure.env(), &["run", &file]).assert_ok();
    let rows = remote_file_rows(
        store.clone(),
        &format!("az://{container}/summary"),
        "json",
        "SELECT * FROM t",
    )
    .await;
    assert_eq!(
        rows[3], "| 5 | 150.5 |",
        "merged twice, still one row per id: {rows:?}"
    );
    let written = keys(&store, "summary").await;
    assert!(
        written.contains(&"summary/_SUCCESS".to_string()),
        "{written:?}"
    );
    assert_eq!(written.len(), 2, "one data file and _SUCCESS: {written:?}");
}

#[tokio::test]
async fn gcs_files_are_read() {
    let gcs = GcsServer::shared();
    let bucket = unique("gcs");
    gcs.create_bucket(&bucket).unwrap();
    gcs.upload(
        &bucket,
        "raw/orders/region=eu/part-0.csv",
        ORDERS_EU.as_bytes(),
    )
    .unwrap();
    gcs.upload(
        &bucket,
        "raw/orders/region=us/part-0.csv",
        ORDERS_US.as_bytes(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let options: BTreeMap<String, String> = gcs.options().into_iter().collect();
    let storage = serde_json::json!({ format!("gs://{bucket}"): options });
    let config = format!(
        r#"{{"name": "gcs", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "gs://{bucket}/raw/orders", "format": "csv", "header": true, "registerAs": "orders"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT region, count(*) AS n FROM orders GROUP BY region ORDER BY region"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/regions", "format": "csv"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "gcs.json", &config);
    run(out.path(), &["run", &file]).assert_ok();
    let rows = file_rows(
        &out.path().join("regions"),
        "csv",
        "SELECT * FROM t ORDER BY region",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+--------+---+",
            "| region | n |",
            "+--------+---+",
            "| eu     | 3 |",
            "| us     | 2 |",
            "+--------+---+",
        ])
    );
}

// ---- Kafka, Vault and PostgreSQL on S3 ------------------------------------

fn broker() -> &'static KafkaBroker {
    KafkaBroker::shared()
}

/// `count` JSON events `{"id": i, "kind": purchase|view}` (every third a
/// purchase) from `first`, spread over `partitions`.
fn produce(topic: &str, partitions: i32, events: std::ops::Range<i64>) {
    let values: Vec<(i32, String)> = events
        .map(|i| {
            let kind = if i % 3 == 0 { "purchase" } else { "view" };
            let partition = (i % i64::from(partitions)) as i32;
            (partition, format!(r#"{{"id": {i}, "kind": "{kind}"}}"#))
        })
        .collect();
    let records: Vec<_> = values
        .iter()
        .map(|(p, v)| (*p, None, v.as_bytes()))
        .collect();
    broker().produce(topic, &records).unwrap();
}

/// Settings of the test Vault, with its root token.
fn vault_env() -> Vec<(String, String)> {
    vec![
        ("VAULT_ADDR".into(), VaultServer::shared().addr()),
        (
            "VAULT_TOKEN".into(),
            dataflow_connectors::testing::vault::ROOT_TOKEN.into(),
        ),
    ]
}

/// The rows of the Delta table at `url` via `sql`, or nothing while it does
/// not exist.
async fn rows_if_any(store: &Arc<dyn ObjectStore>, url: &str, key: &str, sql: &str) -> Vec<String> {
    if keys(store, &format!("{key}/_delta_log")).await.is_empty() {
        return Vec::new();
    }
    remote_delta_rows(store.clone(), url, None, sql).await
}

/// The Spark app's streaming example from issue 12, verbatim from
/// `pipelines/`: Kafka settings from Vault (`credentialPath`), S3 from the
/// environment, Spark's string options, trigger and outputMode.
#[tokio::test]
async fn the_spark_apps_streaming_example_runs_as_written() {
    s3().create_bucket("pipeline-delta").ok(); // shared by both examples
    let store = s3().store("pipeline-delta").unwrap();
    broker().create_topic("user-events", 2).unwrap();
    let tagged = |tag: &str, ids: std::ops::Range<i64>| {
        let values: Vec<String> = ids
            .map(|i| {
                let kind = if i % 3 == 0 { "purchase" } else { "view" };
                format!(r#"{{"id": {i}, "kind": "{kind}", "tag": "{tag}"}}"#)
            })
            .collect();
        let records: Vec<_> = values.iter().map(|v| (0, None, v.as_bytes())).collect();
        broker().produce("user-events", &records).unwrap();
    };
    tagged("early", 0..30); // before the start: skipped (latest)
    VaultServer::shared()
        .put(
            "secret/kafka",
            &[("bootstrapServers", &broker().bootstrap())],
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let env: Vec<_> = s3().env().into_iter().chain(vault_env()).collect();
    let mut child = cli_with(out.path(), &env)
        .args(["run", "pipelines/streaming-kafka-to-delta.json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = "s3://pipeline-delta/purchases";
    let count = |tag: &str| {
        format!(
            "SELECT count(*) AS n FROM t WHERE CAST(value AS VARCHAR) LIKE '%\"tag\": \"{tag}\"%'"
        )
    };
    // Once the stream runs, a probe purchase reaches the table.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probe = 0;
    while Instant::now() < deadline
        && rows_if_any(&store, url, "purchases", &count("probe"))
            .await
            .get(3)
            .is_none_or(|r| r == "| 0 |")
    {
        tagged("probe", probe * 3..probe * 3 + 1);
        probe += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tagged("late", 100..160);
    let mut rows = Vec::new();
    while Instant::now() < deadline {
        rows = rows_if_any(&store, url, "purchases", &count("late")).await;
        if rows.get(3).is_some_and(|r| r == "| 20 |") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    kill("-TERM", child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        rows.get(3).map(String::as_str),
        Some("| 20 |"),
        "{rows:?}\n{stderr}"
    );
    let early = rows_if_any(&store, url, "purchases", &count("early")).await;
    assert_eq!(
        early[3], "| 0 |",
        "what was there before the start is skipped"
    );
    let views = rows_if_any(
        &store,
        url,
        "purchases",
        "SELECT count(*) AS n FROM t WHERE CAST(value AS VARCHAR) NOT LIKE '%purchase%'",
    )
    .await;
    assert_eq!(views[3], "| 0 |", "only purchases pass the filter");
    assert!(status.success(), "{status:?}: {stderr}");
}

/// The Spark app's batch step, verbatim, in `pipelines/users-from-vault.json`:
/// PostgreSQL settings from Vault, the table into Delta on S3.
#[tokio::test]
async fn the_spark_apps_batch_example_runs_as_written() {
    let pg = PgServer::shared();
    let db = pg.create_database("spark_users").await;
    pg.execute(
        &db,
        "CREATE TABLE large_table (id int, name text); INSERT INTO large_table SELECT i, 'n' || i FROM generate_series(1, 1000) i;",
    )
    .await;
    VaultServer::shared()
        .put(
            "secret/postgres",
            &[("url", &pg.url(&db)), ("password", pg.password())],
        )
        .unwrap();
    s3().create_bucket("pipeline-delta").ok(); // shared by both examples
    let out = tempfile::tempdir().unwrap();
    let env: Vec<_> = s3().env().into_iter().chain(vault_env()).collect();
    let ran = run_env(
        out.path(),
        &env,
        &["run", "pipelines/users-from-vault.json"],
    );
    ran.assert_ok();
    assert!(!ran.stdout.contains(pg.password()) && !ran.stderr.contains(pg.password()));
    let rows = remote_delta_rows(
        s3().store("pipeline-delta").unwrap(),
        "s3://pipeline-delta/users",
        None,
        "SELECT count(*) AS n, sum(id) AS s FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 1000 | 500500 |");
}

/// Kafka → Delta on S3, SIGKILLed at random points while events flow:
/// after a last drain every event is in the table exactly once.
#[tokio::test]
async fn exactly_once_into_an_s3_table_across_sigkills() {
    let (bucket, storage) = bucket("kills");
    let store = s3().store(&bucket).unwrap();
    let topic = unique("kills");
    broker().create_topic(&topic, 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = |trigger: &str| {
        format!(
            r#"{{"name": "s3-kills", "mode": "streaming", "trigger": "{trigger}", "storage": {storage}, "steps": [
            {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
              "format": "json", "schema": "id BIGINT, kind VARCHAR", "maxOffsetsPerTrigger": 2000}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "s3://{bucket}/events"}}}}
        ]}}"#,
            broker().bootstrap()
        )
    };
    let file = write_config(out.path(), "kills.json", &config("processingTime=200ms"));
    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            for chunk in 0..10 {
                produce(&topic, 3, chunk * 2000..(chunk + 1) * 2000);
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    for kill in 0..8u64 {
        let mut child = cli(out.path())
            .args(["run", "-q", &file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500 + (kill * 7919) % 1500));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    producer.join().unwrap();
    let file = write_config(out.path(), "drain.json", &config("availableNow"));
    run(out.path(), &["run", &file]).assert_ok();
    let rows = remote_delta_rows(
        store,
        &format!("s3://{bucket}/events"),
        None,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi FROM t",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+-------+-------+----+-------+",
            "| n     | ids   | lo | hi    |",
            "+-------+-------+----+-------+",
            "| 20000 | 20000 | 0  | 19999 |",
            "+-------+-------+----+-------+",
        ])
    );
}

/// A stateful stream keeps its state under an S3 `checkpointLocation`: a
/// second run completes the window the first left open (each 10 s window
/// counts its 10 events, across the two runs).
#[tokio::test]
async fn stream_state_lives_under_an_s3_checkpoint() {
    let (bucket, storage) = bucket("windows");
    let store = s3().store(&bucket).unwrap();
    let topic = unique("windows");
    broker().create_topic(&topic, 1).unwrap();
    let send = |seconds: std::ops::Range<i64>| {
        let values: Vec<String> = seconds
            .map(|s| format!(r#"{{"id": {s}, "ts": "2026-01-01 00:00:{s:02}"}}"#))
            .collect();
        let records: Vec<_> = values.iter().map(|v| (0, None, v.as_bytes())).collect();
        broker().produce(&topic, &records).unwrap();
    };
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "s3-windows", "mode": "streaming", "trigger": "availableNow", "outputMode": "append",
        "checkpointLocation": "s3://{bucket}/checkpoint", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "startingOffsets": "earliest", "format": "json", "schema": "id BIGINT, ts TIMESTAMP"}}}},
        {{"type": "transform", "method": "withWatermark", "config": {{"column": "ts", "delay": "5 seconds", "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT window.start AS ws, count(*) AS n FROM events GROUP BY window(ts, '10 seconds')"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "s3://{bucket}/windows"}}}}
    ]}}"#,
        broker().bootstrap()
    );
    let file = write_config(out.path(), "windows.json", &config);
    send(0..25);
    run(out.path(), &["run", &file]).assert_ok();
    send(25..60);
    run(out.path(), &["run", &file]).assert_ok();
    let rows = remote_delta_rows(
        store.clone(),
        &format!("s3://{bucket}/windows"),
        None,
        "SELECT count(*) AS windows, sum(n) AS events, min(n) AS least FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 5       | 50     | 10    |", "{rows:?}");
    let state = keys(&store, "checkpoint/state").await;
    assert!(state.iter().any(|k| k.ends_with(".arrow")), "{state:?}");
}

/// Dead letters go to a Delta table on S3 and the offset log of a files
/// sink lives under an S3 `checkpointLocation`: a second run reads only
/// what arrived since.
#[tokio::test]
async fn dead_letters_and_the_offset_log_live_on_s3() {
    let (bucket, storage) = bucket("ckpt");
    let store = s3().store(&bucket).unwrap();
    let topic = unique("ckpt");
    broker().create_topic(&topic, 2).unwrap();
    produce(&topic, 2, 0..10);
    broker()
        .produce(&topic, &[(0, None, b"{not json".as_slice())])
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "s3-ckpt", "checkpointLocation": "s3://{bucket}/checkpoints", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, kind VARCHAR",
          "onDecodeError": "deadLetter", "deadLetterPath": "s3://{bucket}/dead"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "s3://{bucket}/events", "saveMode": "append"}}}}
    ]}}"#,
        broker().bootstrap()
    );
    let file = write_config(out.path(), "ckpt.json", &config);
    run(out.path(), &["run", &file]).assert_ok();
    produce(&topic, 2, 10..15);
    run(out.path(), &["run", &file]).assert_ok();
    let events = remote_file_rows(
        store.clone(),
        &format!("s3://{bucket}/events"),
        "parquet",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM t",
    )
    .await;
    assert_eq!(events[3], "| 15 | 15  |", "{events:?}");
    let dead = remote_delta_rows(
        store.clone(),
        &format!("s3://{bucket}/dead"),
        None,
        "SELECT CAST(value AS VARCHAR) AS v FROM t",
    )
    .await;
    assert_eq!(dead[3], "| {not json |");
    let logs = keys(&store, "checkpoints").await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].ends_with(".json"), "{logs:?}");
}

/// A `storage` entry's credentials from Vault (`credentialPath`): the
/// pipeline runs, and the key appears in no output.
#[tokio::test]
async fn storage_credentials_from_vault_never_show() {
    let bucket = unique("vault");
    s3().create_bucket(&bucket).unwrap();
    let secret = "s3-secret-from-vault-0123";
    VaultServer::shared()
        .put(
            "secret/s3",
            &[
                ("aws_access_key_id", "vault-key"),
                ("aws_secret_access_key", secret),
            ],
        )
        .unwrap();
    let options: BTreeMap<String, String> = s3()
        .options()
        .into_iter()
        .filter(|(k, _)| !k.contains("access_key"))
        .collect();
    let mut entry = serde_json::to_value(options).unwrap();
    entry["credentialPath"] = "secret/data/s3".into();
    // A value from the environment, beside the Vault ones.
    entry["aws_region"] = "${S3_TEST_REGION}".into();
    let storage = serde_json::json!({ format!("s3://{bucket}"): entry });
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "s3-vault", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "s3://{bucket}/orders", "saveMode": "append"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "vault.json", &config);
    let mut env = vault_env();
    env.push(("S3_TEST_REGION".into(), "us-east-1".into()));
    let outputs: Vec<Run> = [
        vec!["validate", &file],
        vec!["explain", &file],
        vec!["run", "-v", &file],
        vec!["--log-format", "json", "-vv", "run", &file],
    ]
    .iter()
    .map(|args| run_env(out.path(), &env, args))
    .collect();
    for output in &outputs {
        output.assert_ok();
        assert!(!output.stdout.contains(secret), "{}", output.stdout);
        assert!(!output.stderr.contains(secret), "{}", output.stderr);
    }
    let rows = remote_delta_rows(
        s3().store(&bucket).unwrap(),
        &format!("s3://{bucket}/orders"),
        None,
        "SELECT count(*) AS n FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 10 |", "two runs of 5 rows");
    let config = config.replace("secret/data/s3", "secret/data/nowhere");
    let file = write_config(out.path(), "missing.json", &config);
    let missing = run_env(out.path(), &env, &["validate", &file]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains(&format!("storage.s3://{bucket}.credentialPath")),
        "{}",
        missing.stderr
    );
}

/// A large CSV output goes up in parts, invisible until the commit: a run
/// whose other load fails leaves nothing behind; the next run's files
/// appear whole.
#[tokio::test]
async fn large_files_appear_at_the_commit_and_a_failed_run_leaves_nothing() {
    let (bucket, storage) = bucket("large");
    let store = s3().store(&bucket).unwrap();
    let out = tempfile::tempdir().unwrap();
    let seed = r#"{"name": "seed", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/orders-2026-11-01.csv", "header": true}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/existing"}}
    ]}"#;
    run(
        out.path(),
        &["run", &write_config(out.path(), "seed.json", seed)],
    )
    .assert_ok();
    let config = |failing: bool| {
        let second = if failing {
            r#", {"type": "load", "method": "toDeltaLake", "input": "numbers", "config": {"path": "${DATAFLOW_OUT}/existing"}}"#
        } else {
            ""
        };
        format!(
            r#"{{"name": "large", "storage": {storage}, "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "SELECT value AS v, value * 7 AS w FROM generate_series(1, 2000000)", "registerAs": "numbers"}}}},
            {{"type": "load", "method": "toFiles", "input": "numbers", "config": {{"path": "s3://{bucket}/numbers", "format": "csv"}}}}{second}
        ]}}"#
        )
    };
    let failing = write_config(out.path(), "failing.json", &config(true));
    let failed = run(out.path(), &["run", &failing]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("already exists"),
        "{}",
        failed.stderr
    );
    assert_eq!(
        keys(&store, "").await,
        Vec::<String>::new(),
        "nothing left behind"
    );

    let working = write_config(out.path(), "working.json", &config(false));
    run(out.path(), &["run", &working]).assert_ok();
    let rows = remote_file_rows(
        store.clone(),
        &format!("s3://{bucket}/numbers"),
        "csv",
        "SELECT count(*) AS n, sum(w) AS w FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 2000000 | 14000007000000 |", "{rows:?}");
    let written = keys(&store, "").await;
    assert!(
        written.iter().all(|k| k.starts_with("numbers/")),
        "{written:?}"
    );
}

/// fromPostgres's `stateDir` (its offset log) on S3: the second run reads
/// only the rows added since the first.
#[tokio::test]
async fn postgres_state_dir_on_s3() {
    let (bucket, storage) = bucket("state");
    let store = s3().store(&bucket).unwrap();
    let pg = PgServer::shared();
    let db = pg.create_database("state_dir").await;
    pg.execute(
        &db,
        "CREATE TABLE events (id int); INSERT INTO events SELECT generate_series(1, 10);",
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "pg-state", "storage": {storage}, "steps": [
        {{"type": "extract", "method": "fromPostgres", "config": {{"url": "{}", "password": "${{PGPASSWORD}}", "table": "events",
          "incrementalColumn": "id", "stateDir": "s3://{bucket}/state"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/events", "saveMode": "append"}}}}
    ]}}"#,
        pg.url(&db)
    );
    let file = write_config(out.path(), "state.json", &config);
    let env = [("PGPASSWORD".to_string(), pg.password().to_string())];
    run_env(out.path(), &env, &["run", &file]).assert_ok();
    pg.execute(&db, "INSERT INTO events SELECT generate_series(11, 15);")
        .await;
    run_env(out.path(), &env, &["run", &file]).assert_ok();
    let rows = file_rows(
        &out.path().join("events"),
        "parquet",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 15 | 15  |", "{rows:?}");
    let logs = keys(&store, "state").await;
    assert_eq!(logs.len(), 1, "{logs:?}");
}

#[tokio::test]
async fn file_urls_are_local_paths() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("with space");
    let url = Url::from_directory_path(&target).unwrap();
    let config = format!(
        r#"{{"name": "file-url", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/orders-2026-11-01.csv", "header": true}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "{}", "format": "csv"}}}}
    ]}}"#,
        url.as_str().trim_end_matches('/')
    );
    let file = write_config(out.path(), "file-url.json", &config);
    run(out.path(), &["run", &file]).assert_ok();
    let rows = file_rows(&target, "csv", "SELECT count(*) AS n FROM t").await;
    assert_eq!(rows[3], "| 5 |");
}
