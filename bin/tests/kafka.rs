//! `fromKafka` through the real `run-pipeline` binary against a real
//! Kafka-compatible broker (tansu): bounded batch reads, streaming with
//! availableNow and maxOffsetsPerTrigger, resume after a stop, exactly-once
//! into Delta across SIGKILLs, undecodable records.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dataflow_connectors::testing::KafkaBroker;

fn broker() -> &'static KafkaBroker {
    KafkaBroker::shared()
}

/// A fresh topic with `partitions` partitions and `events` JSON events
/// `{"id": i, "kind": purchase|view, "amount": i/2}` spread over them.
fn topic_with_events(name: &str, partitions: i32, events: std::ops::Range<i64>) -> String {
    let topic = format!("{name}-{}", std::process::id());
    broker().create_topic(&topic, partitions).unwrap();
    produce(&topic, partitions, events);
    topic
}

fn produce(topic: &str, partitions: i32, events: std::ops::Range<i64>) {
    let values: Vec<(i32, String)> = events
        .map(|i| {
            let kind = if i % 3 == 0 { "purchase" } else { "view" };
            (
                (i % i64::from(partitions)) as i32,
                format!(
                    r#"{{"id": {i}, "kind": "{kind}", "amount": {}}}"#,
                    i as f64 / 2.0
                ),
            )
        })
        .collect();
    let records: Vec<_> = values
        .iter()
        .map(|(p, v)| (*p, None, v.as_bytes()))
        .collect();
    broker().produce(topic, &records).unwrap();
}

/// Kafka (json) → `SELECT` purchases → Delta, as a config file. Batch runs
/// append; streaming ones rely on saveMode's streaming default (append).
fn events_pipeline(dir: &Path, topic: &str, mode: &str, extra: &str) -> String {
    let save_mode = if mode == "batch" {
        r#", "saveMode": "append""#
    } else {
        ""
    };
    let config = format!(
        r#"{{"name": "events-{topic}", "mode": "{mode}", {extra} "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, kind VARCHAR, amount DOUBLE", "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT id, amount, _partition AS p, _offset AS o FROM events WHERE kind = 'purchase'"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/purchases"{save_mode}}}}}
    ]}}"#,
        broker().bootstrap()
    );
    write_config(dir, "events.json", &config)
}

/// (count, distinct ids, min id, max id) of the purchases table.
async fn purchases(dir: &Path) -> Vec<String> {
    ids(dir, "purchases").await
}

#[tokio::test]
async fn batch_mode_reads_the_bounded_range_once() {
    let topic = topic_with_events("batch", 3, 0..300);
    let out = tempfile::tempdir().unwrap();
    let file = events_pipeline(out.path(), &topic, "batch", "");
    let first = run(out.path(), &["run", &file]);
    first.assert_ok();
    let rows = purchases(out.path()).await;
    assert!(
        rows.iter().any(|r| r.contains("| 100 | 100 | 0  | 297 |")),
        "{rows:?}"
    );

    // The positions are in the Delta commit: a second run reads only what
    // arrived since, and nothing when nothing did.
    produce(&topic, 3, 300..330);
    run(out.path(), &["run", &file]).assert_ok();
    run(out.path(), &["run", &file]).assert_ok();
    let rows = purchases(out.path()).await;
    assert!(
        rows.iter().any(|r| r.contains("| 110 | 110 | 0  | 327 |")),
        "{rows:?}"
    );
}

#[tokio::test]
async fn available_now_drains_in_batches_of_max_offsets_per_trigger() {
    let topic = topic_with_events("drain", 4, 0..1000);
    let out = tempfile::tempdir().unwrap();
    let file = events_pipeline(
        out.path(),
        &topic,
        "streaming",
        r#""trigger": "availableNow","#,
    );
    let config = std::fs::read_to_string(&file).unwrap().replace(
        r#""registerAs": "events""#,
        r#""registerAs": "events", "maxOffsetsPerTrigger": 300"#,
    );
    std::fs::write(&file, config).unwrap();
    let result = run(out.path(), &["run", &file]);
    result.assert_ok();
    let batches = result
        .stderr
        .lines()
        .filter(|l| l.starts_with("batch "))
        .count();
    assert_eq!(batches, 4, "1000 events, 300 per batch:\n{}", result.stderr);
    assert!(
        result.stderr.contains("batch 1: 300 rows in"),
        "{}",
        result.stderr
    );
    assert!(
        result
            .stderr
            .contains("4 batches, 1000 rows in, 334 rows out"),
        "{}",
        result.stderr
    );
    let rows = purchases(out.path()).await;
    assert!(
        rows.iter().any(|r| r.contains("| 334 | 334 | 0  | 999 |")),
        "{rows:?}"
    );
    assert_eq!(delta_version(&out.path().join("purchases")).await, Some(3));

    // Resume after a clean stop: only the new events, exactly once.
    produce(&topic, 4, 1000..1100);
    let again = run(out.path(), &["run", &file]);
    again.assert_ok();
    assert!(
        again.stderr.contains("1 batches, 100 rows in"),
        "{}",
        again.stderr
    );
    let rows = purchases(out.path()).await;
    assert!(
        rows.iter().any(|r| r.contains("| 367 | 367 | 0  | 1098 |")),
        "{rows:?}"
    );
}

/// 100 k events flow while the pipeline is SIGKILLed at random points over
/// and over; after a last clean drain every event is in the table once.
#[tokio::test]
async fn exactly_once_into_delta_across_sigkills() {
    let topic = format!("kills-{}", std::process::id());
    broker().create_topic(&topic, 4).unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = events_pipeline(
        out.path(),
        &topic,
        "streaming",
        r#""trigger": "processingTime=200ms","#,
    );
    let config = std::fs::read_to_string(&file)
        .unwrap()
        .replace("WHERE kind = 'purchase'", "")
        .replace(
            r#""registerAs": "events""#,
            r#""registerAs": "events", "maxOffsetsPerTrigger": 7000"#,
        );
    std::fs::write(&file, config).unwrap();

    let producer = {
        let topic = topic.clone();
        std::thread::spawn(move || {
            for chunk in 0..20 {
                produce(&topic, 4, chunk * 5000..(chunk + 1) * 5000);
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let mut kills = 0;
    while kills < 12 {
        let mut child = cli(out.path())
            .args(["run", "-q", &file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = 300 + fastrand_ms(kills) % 1500;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    producer.join().unwrap();
    let drain = std::fs::read_to_string(&file)
        .unwrap()
        .replace("processingTime=200ms", "availableNow");
    std::fs::write(&file, drain).unwrap();
    run(out.path(), &["run", &file]).assert_ok();
    let rows = delta_rows(
        &out.path().join("purchases"),
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi FROM t",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+--------+--------+----+-------+",
            "| n      | ids    | lo | hi    |",
            "+--------+--------+----+-------+",
            "| 100000 | 100000 | 0  | 99999 |",
            "+--------+--------+----+-------+",
        ])
    );
}

#[tokio::test]
async fn streaming_from_latest_reads_what_arrives_after_the_start() {
    let topic = topic_with_events("latest", 3, 0..30);
    let out = tempfile::tempdir().unwrap();
    let file = events_pipeline(
        out.path(),
        &topic,
        "streaming",
        r#""trigger": "processingTime=200ms","#,
    );
    let config = std::fs::read_to_string(&file).unwrap().replace(
        r#""registerAs": "events""#,
        r#""registerAs": "events", "startingOffsets": "latest""#,
    );
    std::fs::write(&file, config).unwrap();
    let table = out.path().join("purchases");
    let count = |table: std::path::PathBuf| async move {
        if delta_version(&table).await.is_none() {
            return Vec::new();
        }
        delta_rows(
            &table,
            "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi FROM t",
        )
        .await
    };
    let wait_for = |n: &'static str| {
        let table = table.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let rows = count(table.clone()).await;
                if rows.iter().any(|r| r.contains(n)) || std::time::Instant::now() > deadline {
                    return rows;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };

    let mut child = cli(out.path())
        .args(["run", &file])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the stream start (and run a few empty triggers) first: what was
    // there before is skipped, what arrives after is read.
    std::thread::sleep(Duration::from_secs(4));
    produce(&topic, 3, 100..130);
    let first = wait_for("| 10 | 102 | 129 |").await;
    produce(&topic, 3, 130..160);
    let second = wait_for("| 20 | 102 | 159 |").await;

    kill("-TERM", child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        first.iter().any(|r| r.contains("| 10 | 102 | 129 |")),
        "{first:?}\n{stderr}"
    );
    assert!(
        second.iter().any(|r| r.contains("| 20 | 102 | 159 |")),
        "{second:?}\n{stderr}"
    );
    assert!(status.success(), "{status:?}: {stderr}");
}

/// One Kafka source into Delta tables a and b (the sinks named in `tables`),
/// one pipeline name whatever the tables, so both record the same app ids.
fn two_tables_pipeline(dir: &Path, topic: &str, tables: &[&str], mode: &str) -> String {
    let loads: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                r#"{{"type": "load", "method": "toDeltaLake", "input": "events", "config": {{"path": "${{DATAFLOW_OUT}}/{t}"{}}}}}"#,
                if mode == "batch" { r#", "saveMode": "append""# } else { "" }
            )
        })
        .collect();
    let config = format!(
        r#"{{"name": "two-{topic}", "mode": "{mode}", {} "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, kind VARCHAR, amount DOUBLE", "registerAs": "events"}}}},
        {}
    ]}}"#,
        if mode == "streaming" {
            r#""trigger": "availableNow","#
        } else {
            ""
        },
        broker().bootstrap(),
        loads.join(",\n")
    );
    write_config(dir, "two.json", &config)
}

/// (count, distinct ids, min id, max id) of table `name`.
async fn ids(dir: &Path, name: &str) -> Vec<String> {
    delta_rows(
        &dir.join(name),
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(id) AS lo, max(id) AS hi FROM t",
    )
    .await
}

/// Two Delta sinks commit one after another: a run that stopped between
/// their commits leaves table a holding a batch that b lacks. Simulated by a
/// first run into a alone; the next run (a and b, from b's position) must
/// catch b up while a skips the batch it holds, though more events arrived
/// meanwhile; every table then holds every event exactly once.
#[tokio::test]
async fn two_delta_sinks_each_hold_every_event_once_after_one_committed_alone() {
    let topic = topic_with_events("two", 3, 0..300);
    let out = tempfile::tempdir().unwrap();
    let only_a = two_tables_pipeline(out.path(), &topic, &["a"], "batch");
    run(out.path(), &["run", &only_a]).assert_ok();
    assert_eq!(delta_version(&out.path().join("a")).await, Some(0));
    produce(&topic, 3, 300..330);

    let both = two_tables_pipeline(out.path(), &topic, &["a", "b"], "streaming");
    let result = run(out.path(), &["run", &both]);
    result.assert_ok();
    let all = |n: &str| {
        table(&[
            "+-----+-----+----+-----+",
            "| n   | ids | lo | hi  |",
            "+-----+-----+----+-----+",
            &format!(
                "| {n} | {n} | 0  | {} |",
                n.trim().parse::<i64>().unwrap() - 1
            ),
            "+-----+-----+----+-----+",
        ])
    };
    assert_eq!(ids(out.path(), "a").await, all("330"), "{}", result.stderr);
    assert_eq!(ids(out.path(), "b").await, all("330"), "{}", result.stderr);
    // a skipped the catch-up batch: one commit for the 30 new events.
    assert_eq!(delta_version(&out.path().join("a")).await, Some(1));

    // From here on both move together.
    produce(&topic, 3, 330..360);
    run(out.path(), &["run", &both]).assert_ok();
    assert_eq!(ids(out.path(), "a").await, all("360"));
    assert_eq!(ids(out.path(), "b").await, all("360"));
}

/// Batch runs into files keep their positions in the `checkpointLocation`
/// offset log: the second run reads only what arrived since the first.
#[tokio::test]
async fn batch_runs_into_files_resume_from_the_checkpoint_location() {
    let topic = topic_with_events("ckpt", 2, 0..100);
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "ckpt-{topic}", "checkpointLocation": "${{DATAFLOW_OUT}}/checkpoint", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, kind VARCHAR, amount DOUBLE"}}}},
        {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/events", "saveMode": "append"}}}}
    ]}}"#,
        broker().bootstrap()
    );
    let file = write_config(out.path(), "ckpt.json", &config);
    run(out.path(), &["run", &file]).assert_ok();
    produce(&topic, 2, 100..150);
    run(out.path(), &["run", &file]).assert_ok();
    let rows = file_rows(
        &out.path().join("events"),
        "parquet",
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM t",
    )
    .await;
    assert_eq!(
        rows,
        table(&[
            "+-----+-----+",
            "| n   | ids |",
            "+-----+-----+",
            "| 150 | 150 |",
            "+-----+-----+",
        ])
    );
}

/// A cheap deterministic spread of kill times.
fn fastrand_ms(i: u64) -> u64 {
    (i.wrapping_mul(2654435761) >> 7) % 1000
}

#[tokio::test]
async fn undecodable_records_fail_or_go_to_the_dead_letter_table() {
    let topic = topic_with_events("bad", 2, 0..10);
    broker()
        .produce(
            &topic,
            &[(0, Some(b"k".as_slice()), b"{not json".as_slice())],
        )
        .unwrap();
    produce(&topic, 2, 10..20);
    let out = tempfile::tempdir().unwrap();
    let file = events_pipeline(out.path(), &topic, "batch", "");
    let failed = run(out.path(), &["run", &file]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .contains(&format!("reading Kafka {topic}/0 at offset 5")),
        "{}",
        failed.stderr
    );
    assert_eq!(
        delta_version(&out.path().join("purchases")).await,
        None,
        "nothing committed"
    );

    let config = std::fs::read_to_string(&file).unwrap().replace(
        r#""registerAs": "events""#,
        r#""registerAs": "events", "onDecodeError": "deadLetter", "deadLetterPath": "${DATAFLOW_OUT}/dead""#,
    );
    std::fs::write(&file, config).unwrap();
    run(out.path(), &["run", &file]).assert_ok();
    let rows = purchases(out.path()).await;
    assert!(rows.iter().any(|r| r.contains("| 7 ")), "{rows:?}");
    let dead = delta_rows(
        &out.path().join("dead"),
        "SELECT CAST(key AS VARCHAR) AS k, CAST(value AS VARCHAR) AS v, \"partition\", \"offset\", error LIKE '%' AS has_error FROM t",
    )
    .await;
    assert_eq!(
        dead,
        table(&[
            "+---+-----------+-----------+--------+-----------+",
            "| k | v         | partition | offset | has_error |",
            "+---+-----------+-----------+--------+-----------+",
            "| k | {not json | 0         | 5      | true      |",
            "+---+-----------+-----------+--------+-----------+",
        ])
    );
}

#[tokio::test]
async fn to_kafka_writes_rows_as_keyed_json_records() {
    let topic = topic_with_events("tokafka-in", 2, 0..90);
    let out_topic = format!("tokafka-out-{}", std::process::id());
    broker().create_topic(&out_topic, 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "to-kafka", "mode": "batch", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{servers}", "topic": "{topic}",
          "format": "json", "schema": "id BIGINT, kind VARCHAR, amount DOUBLE", "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT id, amount * 2 AS doubled, 'x' || CAST(id AS VARCHAR) AS tag FROM events WHERE kind = 'purchase'"}}}},
        {{"type": "load", "method": "toKafka", "config": {{"bootstrapServers": "{servers}", "topic": "{out_topic}", "keyColumn": "tag"}}}}
    ]}}"#,
        servers = broker().bootstrap()
    );
    let file = write_config(out.path(), "to-kafka.json", &config);
    let ran = run(out.path(), &["run", &file]);
    ran.assert_ok();
    assert!(ran.stderr.contains("30 records to topic"), "{}", ran.stderr);

    let records = broker()
        .read(&out_topic, 30, Duration::from_secs(30))
        .unwrap();
    let mut rows: Vec<(String, serde_json::Value)> = records
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                serde_json::from_slice(&r.value).unwrap(),
            )
        })
        .collect();
    rows.sort_by_key(|(_, v)| v["id"].as_i64());
    assert_eq!(rows.len(), 30);
    for (i, (key, value)) in rows.iter().enumerate() {
        let id = i as i64 * 3;
        assert_eq!(key, &format!("x{id}"));
        assert_eq!(
            value,
            &serde_json::json!({"id": id, "doubled": id as f64, "tag": format!("x{id}")})
        );
    }
    // Same key, same partition.
    let spread: std::collections::HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert!(spread.len() > 1, "keys spread over the partitions");
}

#[test]
fn to_kafka_rejects_an_unknown_key_column_before_producing() {
    let out_topic = format!("tokafka-bad-{}", std::process::id());
    broker().create_topic(&out_topic, 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "to-kafka-bad", "mode": "batch", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders/*.csv", "format": "csv", "header": true}}}},
        {{"type": "load", "method": "toKafka", "config": {{"bootstrapServers": "{}", "topic": "{out_topic}", "keyColumn": "nope"}}}}
    ]}}"#,
        broker().bootstrap()
    );
    let file = write_config(out.path(), "bad.json", &config);
    let ran = run(out.path(), &["run", &file]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("steps[1] (toKafka)") && ran.stderr.contains("keyColumn \"nope\""),
        "{}",
        ran.stderr
    );
    assert!(broker()
        .read_all(&out_topic, Duration::from_secs(10))
        .unwrap()
        .is_empty());
}

/// The offsets consumer group `group` committed for `topic`'s partitions
/// (0 where none).
fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = broker()
        .client_config()
        .set("group.id", group)
        .create()
        .unwrap();
    let mut wanted = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(topic, p);
    }
    let offsets = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .unwrap();
    offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .collect()
}

#[test]
fn kafka_to_kafka_exactly_once_resumes_from_its_transactions_and_aborts_failed_runs() {
    let input = topic_with_events("k2k-in", 2, 0..400);
    let output = format!("k2k-out-{}", std::process::id());
    broker().create_topic(&output, 2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let pipeline = |extra_load: &str| {
        let config = format!(
            r#"{{"name": "k2k", "mode": "streaming", "trigger": "availableNow", "steps": [
            {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{servers}", "topic": "{input}",
              "format": "json", "schema": "id BIGINT, kind VARCHAR, amount DOUBLE", "maxOffsetsPerTrigger": 150, "registerAs": "events"}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "SELECT id, kind FROM events", "registerAs": "out"}}}},
            {{"type": "load", "method": "toKafka", "input": "out", "config": {{"bootstrapServers": "{servers}", "topic": "{output}",
              "keyColumn": "id", "exactlyOnce": true}}}}{extra_load}
        ]}}"#,
            servers = broker().bootstrap()
        );
        write_config(out.path(), "k2k.json", &config)
    };
    let group = "dataflow/k2k/events";
    let ids = |records: &[dataflow_connectors::testing::KafkaRecord]| {
        let ids: std::collections::HashSet<i64> = records
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        ids
    };

    run(out.path(), &["run", &pipeline("")]).assert_ok();
    assert_eq!(committed(group, &input, 2).iter().sum::<i64>(), 400);
    let records = broker()
        .read(&output, 400, Duration::from_secs(30))
        .unwrap();
    assert_eq!((records.len(), ids(&records).len()), (400, 400));

    // A run whose other sink fails aborts its transaction: the committed
    // offsets stay. (tansu 0.6 still hands the aborted records to
    // read_committed consumers; a Kafka broker does not.)
    produce(&input, 2, 400..500);
    std::fs::create_dir_all(out.path().join("taken")).unwrap();
    std::fs::write(out.path().join("taken/file"), "x").unwrap();
    let failed = run(
        out.path(),
        &[
            "run",
            &pipeline(
                r#", {"type": "load", "method": "toFiles", "input": "out", "config": {"path": "${DATAFLOW_OUT}/taken", "format": "csv"}}"#,
            ),
        ],
    );
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("steps[3] (toFiles)"),
        "{}",
        failed.stderr
    );
    assert_eq!(committed(group, &input, 2).iter().sum::<i64>(), 400);

    // The next run resumes from the offsets of the last committed
    // transaction: the 100 new events, once more, and nothing else.
    run(out.path(), &["run", &pipeline("")]).assert_ok();
    assert_eq!(committed(group, &input, 2).iter().sum::<i64>(), 500);
    // Everything in the topic: at least the 500 committed records, plus
    // what the aborted transaction had sent before it aborted.
    let mut records = broker()
        .read(&output, 500, Duration::from_secs(30))
        .unwrap();
    while let Ok(more) = broker().read(&output, records.len() + 1, Duration::from_secs(3)) {
        records = more;
    }
    let id_of = |r: &dataflow_connectors::testing::KafkaRecord| {
        serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(ids(&records).len(), 500);
    // Records of the first run: once each. Later ids: once committed, plus
    // whatever the aborted transaction had sent (visible on tansu only).
    assert_eq!(records.iter().filter(|r| id_of(r) < 400).count(), 400);
    let later = records.iter().filter(|r| id_of(r) >= 400).count();
    assert!((100..=200).contains(&later), "{later}");
}
