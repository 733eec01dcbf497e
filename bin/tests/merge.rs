//! saveMode merge through the real `run-pipeline` binary: change streams
//! from a real Kafka-compatible broker (tansu) into Delta, checked against
//! DuckDB's answer over the same events; SIGKILLs; history (SCD type 2);
//! Debezium envelopes; config errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dataflow_connectors::testing::{duckdb_lines, KafkaBroker};

fn broker() -> &'static KafkaBroker {
    KafkaBroker::shared()
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One change event as produced: key, event time (ms, unique), upsert or
/// delete, a name unique to the event; and where it went.
#[derive(Debug, Clone)]
struct Change {
    id: u64,
    ts_ms: i64,
    op: &'static str,
    name: String,
    partition: i32,
    offset: i64,
}

const PARTITIONS: i32 = 3;

/// `n` changes over `keys` keys, 15 % deletes, their event times up to 40
/// events out of order (within a micro-batch and across batches); with
/// `ties`, some changes share an event time.
fn changes(seed: u64, n: usize, keys: u64, ties: bool) -> Vec<Change> {
    let mut rng = Rng(seed);
    let mut offsets = [0i64; PARTITIONS as usize];
    (0..n)
        .map(|i| {
            let id = rng.below(keys);
            let jitter = rng.below(41) as i64 - 20;
            let partition = (id % PARTITIONS as u64) as i32;
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            Change {
                id,
                ts_ms: (i as i64 + jitter) * 1000 + if ties { 0 } else { i as i64 % 1000 },
                op: if rng.below(100) < 15 { "d" } else { "u" },
                name: format!("n{i}"),
                partition,
                offset,
            }
        })
        .collect()
}

/// The event time as JSON and DuckDB read it (UTC, no zone).
fn timestamp(ms: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (base + chrono::Duration::milliseconds(ms))
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

fn produce(topic: &str, changes: &[Change]) {
    let values: Vec<(i32, String, String)> = changes
        .iter()
        .map(|c| {
            let value = format!(
                r#"{{"id": {}, "ts": "{}", "op": "{}", "name": "{}"}}"#,
                c.id,
                timestamp(c.ts_ms),
                c.op,
                c.name
            );
            (c.partition, c.id.to_string(), value)
        })
        .collect();
    let records: Vec<_> = values
        .iter()
        .map(|(p, k, v)| (*p, Some(k.as_bytes()), v.as_bytes()))
        .collect();
    broker().produce(topic, &records).unwrap();
}

/// The changes as JSON lines, for DuckDB.
fn write_changes(dir: &Path, changes: &[Change]) -> String {
    let path = dir.join("changes.jsonl");
    let lines: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                r#"{{"id": {}, "ts": "{}", "op": "{}", "name": "{}", "p": {}, "o": {}}}"#,
                c.id,
                timestamp(c.ts_ms),
                c.op,
                c.name,
                c.partition,
                c.offset
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.display().to_string()
}

/// Kafka (json) → toDeltaLake merge on `id`, deletions where `op = 'd'`;
/// `extra` adds load options (e.g. `sequenceBy`).
fn merge_pipeline(dir: &Path, topic: &str, trigger: &str, per_trigger: u32, extra: &str) -> String {
    let config = format!(
        r#"{{"name": "changes-{topic}", "mode": "streaming", "trigger": "{trigger}", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, ts TIMESTAMP, op VARCHAR, name VARCHAR",
          "maxOffsetsPerTrigger": {per_trigger}, "registerAs": "changes"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT id, ts, op, name FROM changes"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/table",
          "saveMode": "merge", "mergeKeys": ["id"], "deleteCondition": "op = 'd'"{extra}}}}}
    ]}}"#,
        broker().bootstrap()
    );
    write_config(dir, "changes.json", &config)
}

/// Orders a key's changes by event time, ties by offset (a key's changes
/// are in one partition).
const BY_TIME: &str = "CAST(ts AS TIMESTAMP) DESC, o DESC";
/// Orders a key's changes by offset.
const BY_OFFSET: &str = "o DESC";
const SEQUENCED: &str = r#", "sequenceBy": "ts""#;

/// DuckDB's last change per key (`order`) over the changes read so far
/// (`read`: partition → offsets below it), as `id|name` of the keys not
/// deleted.
fn expected(changes_file: &str, read: &BTreeMap<i32, i64>, order: &str) -> Vec<String> {
    let within = read
        .iter()
        .map(|(p, end)| format!("(p = {p} AND o < {end})"))
        .collect::<Vec<_>>()
        .join(" OR ");
    duckdb_lines(&format!(
        "SELECT id || '|' || name FROM (
           SELECT * FROM read_json('{changes_file}') WHERE {within}
           QUALIFY row_number() OVER (PARTITION BY id ORDER BY {order}) = 1)
         WHERE op <> 'd' ORDER BY id"
    ))
    .unwrap()
}

/// Per table version, the Kafka positions it recorded (partition → next
/// offset), from the `txn` actions of its commits.
fn recorded_positions(table: &Path) -> Vec<BTreeMap<i32, i64>> {
    let mut versions = Vec::new();
    let mut read = BTreeMap::new();
    for version in 0.. {
        let commit = table.join(format!("_delta_log/{version:020}.json"));
        let Ok(text) = std::fs::read_to_string(commit) else {
            break;
        };
        for line in text.lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(txn) = action.get("txn") {
                let app = txn["appId"].as_str().unwrap();
                let partition: i32 = app.rsplit('/').next().unwrap().parse().unwrap();
                read.insert(partition, txn["version"].as_i64().unwrap());
            }
        }
        versions.push(read.clone());
    }
    versions
}

const TABLE_LINES: &str = "SELECT CAST(id AS VARCHAR) || '|' || name FROM t ORDER BY id";

/// Micro-batches of changes (keys changed several times per batch, event
/// times out of order and sometimes equal, deletes): after every batch, the
/// first included, the table equals DuckDB's last change per key over what
/// was read; by event time with `sequenceBy`, else by offset.
#[tokio::test]
async fn a_change_stream_equals_the_last_change_per_key_after_every_batch() {
    for (name, extra, order) in [("seq", SEQUENCED, BY_TIME), ("offset", "", BY_OFFSET)] {
        let topic = format!("changes-{name}-{}", std::process::id());
        broker().create_topic(&topic, PARTITIONS).unwrap();
        let out = tempfile::tempdir().unwrap();
        let changes = changes(7, 1500, 40, true);
        produce(&topic, &changes);
        let file = merge_pipeline(out.path(), &topic, "availableNow", 200, extra);
        run(out.path(), &["run", &file]).assert_ok();

        let table = out.path().join("table");
        let versions = recorded_positions(&table);
        assert!(versions.len() >= 8, "{} batches", versions.len());
        let changes_file = write_changes(out.path(), &changes);
        for (version, read) in versions.iter().enumerate() {
            let got = delta_lines(&table, Some(version as u64), TABLE_LINES).await;
            let want = expected(&changes_file, read, order);
            assert!(!want.is_empty());
            assert_eq!(got, want, "{name}: after batch {version} (read {read:?})");
        }
        let all: i64 = versions.last().unwrap().values().sum();
        assert_eq!(all, 1500, "every change read");
    }
}

/// SIGKILLs at random points while changes flow; after a last drain the
/// table equals DuckDB's answer over every change.
#[tokio::test]
async fn a_change_stream_killed_over_and_over_ends_exact() {
    let topic = format!("changes-killed-{}", std::process::id());
    broker().create_topic(&topic, PARTITIONS).unwrap();
    let out = tempfile::tempdir().unwrap();
    let changes = changes(11, 6000, 60, true);
    let file = merge_pipeline(out.path(), &topic, "processingTime=200ms", 300, SEQUENCED);
    let producer = {
        let (topic, changes) = (topic.clone(), changes.clone());
        std::thread::spawn(move || {
            for chunk in changes.chunks(500) {
                produce(&topic, chunk);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut rng = Rng(99);
    for _ in 0..12 {
        let mut child = cli(out.path())
            .args(["run", "-q", &file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + rng.below(1400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    producer.join().unwrap();
    let drain = std::fs::read_to_string(&file)
        .unwrap()
        .replace("processingTime=200ms", "availableNow");
    std::fs::write(&file, drain).unwrap();
    run(out.path(), &["run", &file]).assert_ok();

    let read: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            (
                p,
                changes.iter().filter(|c| c.partition == p).count() as i64,
            )
        })
        .collect();
    assert_eq!(
        recorded_positions(&out.path().join("table")).last(),
        Some(&read)
    );
    let want = expected(&write_changes(out.path(), &changes), &read, BY_TIME);
    let got = delta_lines(&out.path().join("table"), None, TABLE_LINES).await;
    assert_eq!(got, want);
}

/// keepHistory: a key's versions are its upserts in event-time order, each
/// ending where the key's next change (an upsert or a delete) starts.
#[tokio::test]
async fn keep_history_holds_every_version_of_a_key() {
    let topic = format!("history-{}", std::process::id());
    broker().create_topic(&topic, PARTITIONS).unwrap();
    let out = tempfile::tempdir().unwrap();
    let changes = changes(23, 900, 15, false);
    produce(&topic, &changes);
    let file = merge_pipeline(
        out.path(),
        &topic,
        "availableNow",
        150,
        r#", "sequenceBy": "ts", "keepHistory": true"#,
    );
    run(out.path(), &["run", &file]).assert_ok();

    let changes_file = write_changes(out.path(), &changes);
    let want = duckdb_lines(&format!(
        "SELECT id || '|' || name || '|' || epoch_ms(ts) || '|' || coalesce(CAST(epoch_ms(end_at) AS VARCHAR), '-') || '|' || (end_at IS NULL)
         FROM (SELECT *, lead(ts) OVER (PARTITION BY id ORDER BY ts) AS end_at
               FROM (SELECT id, CAST(ts AS TIMESTAMP) AS ts, op, name FROM read_json('{changes_file}')))
         WHERE op <> 'd' ORDER BY id, ts"
    ))
    .unwrap();
    let ms = |c: &str| {
        format!("CAST(CAST(arrow_cast({c}, 'Timestamp(Millisecond, None)') AS BIGINT) AS VARCHAR)")
    };
    let got = delta_lines(
        &out.path().join("table"),
        None,
        &format!(
            "SELECT CAST(id AS VARCHAR) || '|' || name || '|' || {} || '|' || coalesce({}, '-') || '|' || CAST(__is_current AS VARCHAR)
             FROM t ORDER BY id, __start_at",
            ms("__start_at"),
            ms("__end_at")
        ),
    )
    .await;
    assert!(want.len() > 600, "{} versions", want.len());
    assert_eq!(got, want);
}

/// A PostgreSQL table's changes as Debezium writes them.
struct Database {
    rows: BTreeMap<u64, (String, i64)>,
    lsn: i64,
    events: Vec<(u64, Option<String>)>,
}

impl Database {
    fn new() -> Self {
        Database {
            rows: BTreeMap::new(),
            lsn: 1000,
            events: Vec::new(),
        }
    }

    fn image(id: u64, row: &(String, i64)) -> serde_json::Value {
        serde_json::json!({"id": id, "name": row.0, "balance": row.1})
    }

    /// Appends an envelope (every third inside schema + payload, as the
    /// JsonConverter writes with schemas enabled).
    fn emit(
        &mut self,
        id: u64,
        op: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) {
        self.lsn += 8;
        let envelope = serde_json::json!({
            "before": before, "after": after, "op": op, "ts_ms": 1_767_225_600_000i64 + self.lsn,
            "source": {"connector": "postgresql", "db": "shop", "table": "accounts", "lsn": self.lsn, "ts_ms": 1_767_225_600_000i64 + self.lsn},
        });
        let envelope = if self.events.len().is_multiple_of(3) {
            serde_json::json!({"schema": {"type": "struct", "optional": false}, "payload": envelope})
        } else {
            envelope
        };
        self.events.push((id, Some(envelope.to_string())));
    }

    fn snapshot_row(&mut self, id: u64, name: &str, balance: i64) {
        let row = (name.to_string(), balance);
        self.emit(id, "r", None, Some(Self::image(id, &row)));
        self.rows.insert(id, row);
    }

    fn upsert(&mut self, id: u64, name: &str, balance: i64) {
        let row = (name.to_string(), balance);
        match self.rows.insert(id, row.clone()) {
            Some(old) => self.emit(
                id,
                "u",
                Some(Self::image(id, &old)),
                Some(Self::image(id, &row)),
            ),
            None => self.emit(id, "c", None, Some(Self::image(id, &row))),
        }
    }

    fn delete(&mut self, id: u64) {
        if self.rows.remove(&id).is_some() {
            // Replica identity default: the before image holds the key only.
            let before = serde_json::json!({"id": id, "name": null, "balance": null});
            self.emit(id, "d", Some(before), None);
            self.events.push((id, None)); // the tombstone that follows
        }
    }
}

/// Debezium envelopes (snapshot reads, creates, updates, deletes with their
/// tombstones) → the shipped example pipeline → the table equals the
/// source table's final state.
#[tokio::test]
async fn debezium_changes_sync_a_table_into_delta() {
    let topic = format!("shop.public.accounts-{}", std::process::id());
    broker().create_topic(&topic, 2).unwrap();
    let mut db = Database::new();
    for id in 0..30 {
        db.snapshot_row(id, &format!("a{id}"), 100 * id as i64);
    }
    let mut rng = Rng(5);
    for i in 0..600 {
        let id = rng.below(50);
        match rng.below(10) {
            0 | 1 => db.delete(id),
            _ => db.upsert(id, &format!("n{i}"), i as i64),
        }
    }
    // Debezium delivers at least once: a restarted connector sends older
    // events again, after newer ones.
    let replayed: Vec<_> = db.events[100..300].to_vec();
    let records: Vec<(i32, Vec<u8>, Option<Vec<u8>>)> = db
        .events
        .iter()
        .chain(&replayed)
        .map(|(id, value)| {
            let key = format!(r#"{{"id": {id}}}"#).into_bytes();
            ((id % 2) as i32, key, value.clone().map(String::into_bytes))
        })
        .collect();
    let records: Vec<_> = records
        .iter()
        .map(|(p, k, v)| (*p, Some(k.as_slice()), v.as_deref()))
        .collect();
    broker().produce_or_tombstones(&topic, &records).unwrap();

    // The shipped example, in micro-batches of 50 changes.
    let out = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo_root().join("pipelines/debezium-to-delta.json"))
        .unwrap()
        .replace(
            r#""maxOffsetsPerTrigger": 10000"#,
            r#""maxOffsetsPerTrigger": 50"#,
        );
    let file = write_config(out.path(), "debezium.json", &example);
    let run = cli(out.path())
        .env("KAFKA_BOOTSTRAP", broker().bootstrap())
        .env("DEBEZIUM_TOPIC", &topic)
        .args(["run", &file])
        .output()
        .unwrap();
    let run = Run::from(run);
    run.assert_ok();
    let got = delta_lines(
        &out.path().join("accounts"),
        None,
        "SELECT CAST(id AS VARCHAR) || '|' || name || '|' || CAST(balance AS VARCHAR) FROM t ORDER BY id",
    )
    .await;
    let want: Vec<String> = db
        .rows
        .iter()
        .map(|(id, (name, balance))| format!("{id}|{name}|{balance}"))
        .collect();
    assert!(want.len() > 20);
    assert_eq!(got, want);
    assert!(recorded_positions(&out.path().join("accounts")).len() > 10);
}

/// A batch merge from a CSV whose keys repeat: the last row per key by
/// `updated_at`, deletions applied; merging the same file again changes
/// nothing; DuckDB computes the same from the file.
#[tokio::test]
async fn a_batch_merge_from_a_csv_with_repeated_keys() {
    let out = tempfile::tempdir().unwrap();
    let file = "pipelines/merge-customer-changes.json";
    run(out.path(), &["run", file]).assert_ok();
    let csv = repo_root().join("testdata/customer_changes.csv");
    let want = duckdb_lines(&format!(
        "SELECT customer_id || '|' || email FROM read_csv('{}')
         QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY updated_at DESC) = 1
         AND NOT deleted ORDER BY customer_id",
        csv.display()
    ))
    .unwrap();
    let sql = "SELECT CAST(customer_id AS VARCHAR) || '|' || email FROM t ORDER BY customer_id";
    let table = out.path().join("customers");
    assert_eq!(delta_lines(&table, None, sql).await, want);
    run(out.path(), &["run", file]).assert_ok();
    assert_eq!(delta_lines(&table, None, sql).await, want);
    assert!(want.len() >= 3);
}

/// Config errors name the step and the key, at `validate`, exit 2.
#[test]
fn merge_config_errors_are_reported_at_validate() {
    let out = tempfile::tempdir().unwrap();
    let merge = r#""saveMode": "merge", "mergeKeys": ["customer_id"]"#;
    let cases = [
        (
            format!(r#"{merge}, "keepHistory": true"#),
            "keepHistory",
            "keepHistory needs sequenceBy",
        ),
        (
            r#""saveMode": "append", "sequenceBy": "updated_at""#.into(),
            "sequenceBy",
            "only applies with saveMode merge",
        ),
        (
            r#""saveMode": "merge", "mergeKeys": ["nope"]"#.into(),
            "mergeKeys",
            "the input has no column \"nope\"",
        ),
        (
            format!(r#"{merge}, "sequenceBy": "updated_att""#),
            "sequenceBy",
            "updated_att",
        ),
        (
            format!(r#"{merge}, "deleteCondition": "deleted =""#),
            "deleteCondition",
            "SQL",
        ),
        (
            format!(r#"{merge}, "deleteCondition": "email""#),
            "deleteCondition",
            "not a condition",
        ),
        (
            format!(r#"{merge}, "sequenceBy": "max(updated_at)""#),
            "sequenceBy",
            "aggregates rows",
        ),
        (
            format!(r#"{merge}, "sequenceBy": "source.updated_at""#),
            "sequenceBy",
            "unqualified",
        ),
        (
            format!(
                r#"{merge}, "sequenceBy": "updated_at", "keepHistory": true, "mergeSchema": true"#
            ),
            "mergeSchema",
            "does not apply with keepHistory",
        ),
        (
            format!(
                r#"{merge}, "sequenceBy": "updated_at", "keepHistory": true, "updateCondition": "true""#
            ),
            "updateCondition",
            "does not apply with keepHistory",
        ),
    ];
    for (options, key, message) in cases {
        let config = format!(
            r#"{{"name": "bad", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/customer_changes.csv", "format": "csv", "header": true}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/t", {options}}}}}]}}"#
        );
        let file = write_config(out.path(), "bad.json", &config);
        let result = run(out.path(), &["validate", &file]);
        assert_eq!(result.code, 2, "{options}: {}", result.stderr);
        let path = format!("at steps[1].config.{key} in steps[1] (toDeltaLake)");
        assert!(
            result.stderr.contains(&path),
            "{options}: {}",
            result.stderr
        );
        assert!(
            result.stderr.contains(message),
            "{options}: {}",
            result.stderr
        );
        assert!(!result.stderr.contains("backtrace"), "{}", result.stderr);
    }
}

/// Late changes and replays never move a key back: a change older than the
/// table's row is ignored, and so is one older than the key's deletion.
#[tokio::test]
async fn late_changes_never_move_a_key_back() {
    let out = tempfile::tempdir().unwrap();
    let csv = |rows: &[&str]| {
        let path = out.path().join("in.csv");
        let mut text = "customer_id,email,deleted,updated_at\n".to_string();
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
    };
    let config = std::fs::read_to_string(repo_root().join("pipelines/merge-customer-changes.json"))
        .unwrap()
        .replace(
            "testdata/customer_changes.csv",
            &out.path().join("in.csv").display().to_string(),
        );
    let file = write_config(out.path(), "late.json", &config);
    csv(&[
        "1,new@a,false,2026-01-05T00:00:00",
        "2,two@a,false,2026-01-05T00:00:00",
        "2,,true,2026-01-06T00:00:00",
    ]);
    run(out.path(), &["run", &file]).assert_ok();
    csv(&[
        "1,old@a,false,2026-01-01T00:00:00",
        "2,older@a,false,2026-01-02T00:00:00",
        "3,three@a,false,2026-01-01T00:00:00",
    ]);
    run(out.path(), &["run", &file]).assert_ok();
    let sql = "SELECT CAST(customer_id AS VARCHAR) || '|' || email FROM t ORDER BY customer_id";
    let table = out.path().join("customers");
    assert_eq!(
        delta_lines(&table, None, sql).await,
        ["1|new@a", "3|three@a"]
    );
    csv(&["2,back@a,false,2026-01-07T00:00:00"]);
    run(out.path(), &["run", &file]).assert_ok();
    assert_eq!(
        delta_lines(&table, None, sql).await,
        ["1|new@a", "2|back@a", "3|three@a"]
    );
}

/// Key columns are taken as written (case, spaces; in SQL options they are
/// quoted, as SQL needs), composite keys work,
/// and so do tombstones and history over them, run after run.
#[tokio::test]
async fn composite_keys_with_case_and_spaces() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in.csv");
    let config = |table: &str, extra: &str| {
        let config = format!(
            r#"{{"name": "keys", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{}", "format": "csv", "header": true}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/{table}",
              "saveMode": "merge", "mergeKeys": ["Order Id", "Region"], "sequenceBy": "\"Seq\"",
              "deleteCondition": "\"Gone\""{extra}}}}}]}}"#,
            input.display()
        );
        write_config(out.path(), &format!("{table}.json"), &config)
    };
    let plain = config("t", "");
    let history = config("h", r#", "keepHistory": true"#);
    let runs = [
        "Order Id,Region,Seq,Gone,Note\n1,EU,1,false,a\n1,US,1,false,b\n1,EU,3,false,c\n2,EU,5,true,\n",
        "Order Id,Region,Seq,Gone,Note\n1,EU,2,false,late\n2,EU,4,false,older\n1,US,6,true,\n",
    ];
    for csv in runs {
        std::fs::write(&input, csv).unwrap();
        run(out.path(), &["run", &plain]).assert_ok();
        run(out.path(), &["run", &history]).assert_ok();
    }
    let rows = "SELECT \"Order Id\" || '|' || \"Region\" || '|' || \"Note\" FROM t ORDER BY 1";
    assert_eq!(
        delta_lines(&out.path().join("t"), None, rows).await,
        ["1|EU|c"]
    );
    let versions = "SELECT \"Order Id\" || '|' || \"Region\" || '|' || \"Note\" || '|' || CAST(__start_at AS VARCHAR) || '|' || coalesce(CAST(__end_at AS VARCHAR), '-') FROM t ORDER BY 1";
    assert_eq!(
        delta_lines(&out.path().join("h"), None, versions).await,
        [
            "1|EU|a|1|2",
            "1|EU|c|3|-",
            "1|EU|late|2|3",
            "1|US|b|1|6",
            "2|EU|older|4|5"
        ]
    );
}

/// Without sequenceBy, a key's last change is the last in file order (paths
/// sorted), then row order, however many partitions read the files.
#[tokio::test]
async fn without_sequence_by_files_then_rows_decide() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("changes");
    std::fs::create_dir(&dir).unwrap();
    let (files, rows, keys) = (4u64, 60_000u64, 1000u64);
    for f in 0..files {
        let mut text = String::from("k,v\n");
        for i in 0..rows {
            text.push_str(&format!("{},{}\n", (i * 7 + f) % keys, f * rows + i));
        }
        std::fs::write(dir.join(format!("part-{f}.csv")), text).unwrap();
    }
    let config = format!(
        r#"{{"name": "order", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "{}", "format": "csv", "header": true}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/t", "saveMode": "merge", "mergeKeys": ["k"]}}}}]}}"#,
        dir.display()
    );
    let file = write_config(out.path(), "order.json", &config);
    // The last file holds every key; its last row of each key wins.
    let last = files - 1;
    let want: Vec<String> = (0..keys)
        .map(|k| {
            let i = (0..rows)
                .rev()
                .find(|i| (i * 7 + last) % keys == k)
                .unwrap();
            format!("{k}|{}", last * rows + i)
        })
        .collect();
    for partitions in ["1", "8"] {
        let table = out.path().join("t");
        let _ = std::fs::remove_dir_all(&table);
        let result: Run = cli(out.path())
            .env("DATAFUSION_EXECUTION_TARGET_PARTITIONS", partitions)
            .args(["run", &file])
            .output()
            .unwrap()
            .into();
        result.assert_ok();
        let got = delta_lines(
            &table,
            None,
            "SELECT CAST(k AS VARCHAR) || '|' || CAST(v AS VARCHAR) FROM t ORDER BY k",
        )
        .await;
        assert_eq!(got, want, "{partitions} partitions");
    }
}
