//! Malformed configs: each must exit 2, name the JSON path (and the step),
//! and write nothing.

mod common;

use common::*;

const EXTRACT: &str = r#"{"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/*.csv", "header": true, "registerAs": "orders"}}"#;
const LOAD: &str =
    r#"{"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/t"}}"#;

fn pipeline(steps: &[&str]) -> String {
    format!(
        r#"{{"name": "bad", "mode": "batch", "steps": [{}]}}"#,
        steps.join(",")
    )
}

/// A streaming pipeline: a Kafka source (never contacted: config errors
/// come first) and `load`.
fn streaming(load: &str) -> String {
    format!(
        r#"{{"name": "bad", "mode": "streaming", "steps": [{{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "127.0.0.1:1", "topic": "t", "registerAs": "events"}}}}, {load}]}}"#
    )
}

/// (case, config, JSON path the error must name, words the message must hold)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let step = |s: &str| pipeline(&[EXTRACT, s, LOAD]);
    vec![
        (
            "not json",
            "{\"name\": \"x\",".into(),
            "line 1 column 13",
            "not valid JSON",
        ),
        (
            "top-level unknown key",
            r#"{"name": "x", "steps": [], "stpes": []}"#.into(),
            "stpes",
            "unknown field `stpes`",
        ),
        (
            "missing name",
            r#"{"steps": []}"#.into(),
            "$",
            "missing field `name`",
        ),
        (
            "name with a slash",
            r#"{"name": "daily/orders", "steps": []}"#.into(),
            "invalid config at name",
            "\"daily/orders\" contains '/': a pipeline name is at most 100 printable characters",
        ),
        (
            "name with a control character",
            r#"{"name": "daily\torders", "steps": []}"#.into(),
            "invalid config at name",
            "\"daily\\torders\" contains '\\t'",
        ),
        (
            "bad mode",
            r#"{"name": "x", "mode": "daily", "steps": []}"#.into(),
            "mode",
            "unknown variant `daily`",
        ),
        (
            "no steps",
            r#"{"name": "x", "steps": []}"#.into(),
            "steps",
            "at least one step",
        ),
        (
            "no load",
            pipeline(&[EXTRACT]),
            "steps",
            "at least one load step",
        ),
        (
            "bad step type",
            pipeline(&[EXTRACT, r#"{"type": "sink", "method": "toConsole"}"#]),
            "steps[1].type",
            "unknown variant `sink`",
        ),
        (
            "step missing method",
            pipeline(&[EXTRACT, r#"{"type": "load", "config": {}}"#]),
            "steps[1]",
            "missing field `method`",
        ),
        (
            "unknown extract method",
            pipeline(&[
                r#"{"type": "extract", "method": "fromExcel", "config": {}}"#,
                LOAD,
            ]),
            "steps[0].method",
            "unknown extract method \"fromExcel\"",
        ),
        (
            "unknown transform method",
            step(r#"{"type": "transform", "method": "pivot", "config": {}}"#),
            "steps[1].method",
            "unknown transform method \"pivot\"",
        ),
        (
            "unknown load method",
            pipeline(&[
                EXTRACT,
                r#"{"type": "load", "method": "toExcel", "config": {}}"#,
            ]),
            "steps[1].method",
            "unknown load method \"toExcel\"",
        ),
        (
            "unknown config key",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "x.csv", "hedaer": true}}"#,
                LOAD,
            ]),
            "steps[0].config.hedaer",
            "unknown field `hedaer`",
        ),
        (
            "missing required path",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"format": "csv"}}"#,
                LOAD,
            ]),
            "steps[0].config",
            "missing field `path`",
        ),
        (
            "wrong type",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "x.csv", "header": "yes"}}"#,
                LOAD,
            ]),
            "steps[0].config.header",
            "expected a boolean",
        ),
        (
            "bad format",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "x", "format": "xlsx"}}"#,
                LOAD,
            ]),
            "steps[0].config.format",
            "unknown variant `xlsx`",
        ),
        (
            "unregistered input",
            pipeline(&[
                EXTRACT,
                r#"{"type": "load", "method": "toConsole", "input": "ordrs", "config": {}}"#,
            ]),
            "steps[1].input",
            "no earlier step is registered as \"ordrs\"",
        ),
        (
            "input registered later",
            pipeline(&[
                EXTRACT,
                r#"{"type": "load", "method": "toConsole", "input": "later", "config": {}}"#,
                r#"{"type": "transform", "method": "sql", "config": {"query": "SELECT 1", "registerAs": "later"}}"#,
            ]),
            "steps[1].input",
            "registered before this step: orders",
        ),
        (
            "sql does not plan",
            step(
                r#"{"type": "transform", "method": "sql", "config": {"query": "SELECT nope FROM orders"}}"#,
            ),
            "steps[1].config.query",
            "nope",
        ),
        (
            "sql unknown table",
            step(
                r#"{"type": "transform", "method": "sql", "config": {"query": "SELECT * FROM ordrs"}}"#,
            ),
            "steps[1].config.query",
            "ordrs",
        ),
        (
            "sql syntax",
            step(r#"{"type": "transform", "method": "sql", "config": {"query": "SELEC 1"}}"#),
            "steps[1].config.query",
            "SELEC",
        ),
        (
            "sql ddl refused",
            step(
                r#"{"type": "transform", "method": "sql", "config": {"query": "CREATE TABLE x AS SELECT 1"}}"#,
            ),
            "steps[1].config.query",
            "DDL not supported",
        ),
        (
            "bad filter",
            step(
                r#"{"type": "transform", "method": "filterRows", "config": {"condition": "amount >>> 3"}}"#,
            ),
            "steps[1].config.condition",
            "",
        ),
        (
            "drop unknown column",
            step(
                r#"{"type": "transform", "method": "dropColumns", "config": {"columns": ["amount", "price"]}}"#,
            ),
            "steps[1].config.columns",
            "no such column: price",
        ),
        (
            "rename unknown column",
            step(
                r#"{"type": "transform", "method": "renameColumns", "config": {"mapping": {"amt": "amount_eur"}}}"#,
            ),
            "steps[1].config.mapping",
            "no such column: amt",
        ),
        (
            "zero partitions",
            step(
                r#"{"type": "transform", "method": "repartition", "config": {"numPartitions": 0}}"#,
            ),
            "steps[1].config.numPartitions",
            "at least 1",
        ),
        (
            "bad storage level",
            step(r#"{"type": "transform", "method": "cache", "config": {"storageLevel": "SSD"}}"#),
            "steps[1].config.storageLevel",
            "unknown storage level \"SSD\"",
        ),
        (
            "bad cacheStorageLevel",
            step(
                r#"{"type": "transform", "method": "filterRows", "config": {"condition": "true", "cache": true, "cacheStorageLevel": "SSD"}}"#,
            ),
            "steps[1].config.cacheStorageLevel",
            "unknown storage level \"SSD\"",
        ),
        (
            "outputMode complete",
            step(
                r#"{"type": "load", "method": "toConsole", "config": {"outputMode": "complete"}}"#,
            ),
            "steps[1].config.outputMode",
            "apply to streaming aggregations",
        ),
        (
            "a number that is no number",
            step(r#"{"type": "load", "method": "toConsole", "config": {"numRows": "many"}}"#),
            "steps[1].config.numRows",
            "invalid type: string \"many\"",
        ),
        (
            "bad save mode",
            pipeline(&[
                EXTRACT,
                r#"{"type": "load", "method": "toDeltaLake", "config": {"path": "x", "saveMode": "upsert"}}"#,
            ]),
            "steps[1].config.saveMode",
            "unknown variant `upsert`",
        ),
        (
            "errorIfExists in a streaming pipeline",
            streaming(
                r#"{"type": "load", "method": "toDeltaLake", "config": {"path": "x", "saveMode": "errorIfExists"}}"#,
            ),
            "steps[1].config.saveMode",
            "every micro-batch after the first",
        ),
        (
            "ignore in a streaming pipeline",
            streaming(
                r#"{"type": "load", "method": "toDeltaLake", "config": {"path": "x", "saveMode": "ignore"}}"#,
            ),
            "steps[1].config.saveMode",
            "silently drop every micro-batch after the first",
        ),
        (
            "duplicate registerAs",
            pipeline(&[
                EXTRACT,
                r#"{"type": "transform", "method": "sql", "config": {"query": "SELECT 1", "registerAs": "orders"}}"#,
                LOAD,
            ]),
            "steps[1].config.registerAs",
            "already registered",
        ),
        (
            "registerAs on load",
            pipeline(&[
                EXTRACT,
                r#"{"type": "load", "method": "toConsole", "config": {"registerAs": "x"}}"#,
            ]),
            "steps[1].config.registerAs",
            "load step",
        ),
        (
            "unset env var",
            pipeline(&[
                EXTRACT,
                r#"{"type": "load", "method": "toDeltaLake", "config": {"path": "${NOT_SET_ANYWHERE_42}/t"}}"#,
            ]),
            "steps[1].config.path",
            "NOT_SET_ANYWHERE_42 is not set",
        ),
        (
            "bad schema",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders", "format": "csv", "schema": "id BIGINTEGER"}}"#,
                LOAD,
            ]),
            "steps[0].config.schema",
            "BIGINTEGER",
        ),
        (
            "delimiter too long",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "x.csv", "delimiter": ";;"}}"#,
                LOAD,
            ]),
            "steps[0].config.delimiter",
            "single ASCII character",
        ),
        (
            "nullValue not a regex",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders", "format": "csv", "nullValue": "("}}"#,
                LOAD,
            ]),
            "steps[0].config.nullValue",
            "not a valid regular expression (unclosed group)",
        ),
        (
            "header on parquet",
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "x.parquet", "header": true}}"#,
                LOAD,
            ]),
            "steps[0].config.header",
            "csv files only",
        ),
        (
            "transform first without input",
            pipeline(&[
                r#"{"type": "transform", "method": "filterRows", "config": {"condition": "true"}}"#,
                LOAD,
            ]),
            "steps[0].input",
            "no step precedes",
        ),
    ]
}

#[test]
fn malformed_configs_exit_2_with_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cases = cases();
    assert!(cases.len() >= 20);
    for (i, (case, config, path, words)) in cases.iter().enumerate() {
        let file = write_config(dir.path(), &format!("case{i}.json"), config);
        for command in ["validate", "run"] {
            let result = run(out.path(), &[command, &file]);
            assert_eq!(
                result.code, 2,
                "{case} ({command}): expected exit 2\n{}",
                result.stderr
            );
            assert!(
                result.stderr.contains(path),
                "{case}: error should name {path}:\n{}",
                result.stderr
            );
            assert!(
                result.stderr.contains(words),
                "{case}: error should say {words:?}:\n{}",
                result.stderr
            );
            assert!(
                !result.stderr.contains("panicked"),
                "{case}: panic:\n{}",
                result.stderr
            );
        }
    }
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "invalid configs write nothing"
    );
}

#[test]
fn step_errors_name_index_and_method() {
    let dir = tempfile::tempdir().unwrap();
    let config = pipeline(&[
        EXTRACT,
        r#"{"type": "transform", "method": "sql", "config": {"query": "SELECT nope FROM orders", "registerAs": "q"}}"#,
        LOAD,
    ]);
    let result = run(
        dir.path(),
        &["validate", &write_config(dir.path(), "c.json", &config)],
    );
    assert!(
        result.stderr.contains("steps[1] (sql as \"q\")"),
        "{}",
        result.stderr
    );
}

#[test]
fn set_overrides_and_missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "c.json", &pipeline(&[EXTRACT, LOAD]));
    let result = run(
        dir.path(),
        &[
            "validate",
            &file,
            "--set",
            "steps[0].config.header=\"maybe\"",
        ],
    );
    assert_eq!(result.code, 2);
    assert!(
        result.stderr.contains("steps[0].config.header"),
        "{}",
        result.stderr
    );
    let result = run(dir.path(), &["validate", "does/not/exist.json"]);
    assert_eq!(result.code, 2);
    assert!(
        result.stderr.contains("cannot read the config file"),
        "{}",
        result.stderr
    );
}

#[test]
fn values_from_the_environment_never_appear_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hunter2XYZ";
    let cases = [
        (
            pipeline(&[
                EXTRACT,
                r#"{"type": "transform", "method": "repartition", "config": {"numPartitions": "${SECRETPW}"}}"#,
                LOAD,
            ]),
            "steps[1].config.numPartitions",
        ),
        (
            pipeline(&[
                r#"{"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders", "format": "${SECRETPW}"}}"#,
                LOAD,
            ]),
            "steps[0].config.format",
        ),
        (
            r#"{"name": "bad", "retries": "${SECRETPW}", "steps": []}"#.to_string(),
            "retries",
        ),
        (
            r#"{"name": "bad", "mode": "x${SECRETPW}", "steps": []}"#.to_string(),
            "mode",
        ),
    ];
    for (i, (config, path)) in cases.iter().enumerate() {
        let file = write_config(dir.path(), &format!("env{i}.json"), config);
        let result: Run = cli(dir.path())
            .env("SECRETPW", secret)
            .args(["validate", &file])
            .output()
            .unwrap()
            .into();
        assert_eq!(result.code, 2, "{path}: {}", result.stderr);
        assert!(result.stderr.contains(path), "{path}: {}", result.stderr);
        assert!(
            !result.stderr.contains(secret) && result.stderr.contains("${SECRETPW}"),
            "{path}: {}",
            result.stderr
        );
    }
}
