//! Kafka features tansu 0.6 lacks, on librdkafka's mock cluster (a real
//! Kafka protocol server inside the test process): Kafka → Kafka
//! exactly-once through transactions (tansu's read_committed consumers
//! still see aborted records), and a broker going down and coming back
//! mid-stream without losing its log (tansu's memory storage would).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

type Cluster = MockCluster<'static, DefaultProducerContext>;

fn cluster(topics: &[(&str, i32)]) -> Cluster {
    let cluster = MockCluster::new(1).unwrap();
    for (topic, partitions) in topics {
        cluster.create_topic(topic, *partitions, 1).unwrap();
    }
    cluster
}

/// Produces `{"id": i}` for every i in `ids`, spread over `partitions`.
fn produce(cluster: &Cluster, topic: &str, partitions: i32, ids: std::ops::Range<i64>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    for id in ids {
        let value = format!(r#"{{"id": {id}}}"#);
        let record = BaseRecord::<(), str>::to(topic)
            .partition((id % i64::from(partitions)) as i32)
            .payload(&value);
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Every committed record of `topic` (read_committed), as JSON.
fn read_committed(cluster: &Cluster, topic: &str, partitions: i32) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "test-reader")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut values = Vec::new();
    let mut ended = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended.len() < partitions as usize && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => values.push(serde_json::from_slice(m.payload().unwrap()).unwrap()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p);
            }
            _ => {}
        }
    }
    values
}

fn ids(values: &[serde_json::Value]) -> (usize, HashSet<i64>) {
    let ids: HashSet<i64> = values.iter().map(|v| v["id"].as_i64().unwrap()).collect();
    (values.len(), ids)
}

/// fromKafka `in` → SQL → toKafka `out` with exactlyOnce, availableNow in
/// batches of 300.
fn kafka_to_kafka(dir: &Path, servers: &str) -> String {
    let config = format!(
        r#"{{"name": "k2k", "mode": "streaming", "trigger": "availableNow", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{servers}", "topic": "in",
          "format": "json", "schema": "id BIGINT", "maxOffsetsPerTrigger": 300, "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "SELECT id, id * 10 AS tenfold FROM events", "registerAs": "out"}}}},
        {{"type": "load", "method": "toKafka", "input": "out", "config": {{"bootstrapServers": "{servers}", "topic": "out",
          "keyColumn": "id", "exactlyOnce": true}}}}
    ]}}"#
    );
    write_config(dir, "k2k.json", &config)
}

#[test]
fn kafka_to_kafka_writes_each_event_once_over_several_transactions() {
    let cluster = cluster(&[("in", 2), ("out", 2)]);
    let servers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    produce(&cluster, "in", 2, 0..1000);

    let good = kafka_to_kafka(out.path(), &servers);
    let ran = run(out.path(), &["run", &good]);
    ran.assert_ok();
    assert!(ran.stderr.contains("4 batches"), "{}", ran.stderr);
    let values = read_committed(&cluster, "out", 2);
    let (count, distinct) = ids(&values);
    assert_eq!((count, distinct.len()), (1000, 1000));
    assert!(values
        .iter()
        .all(|v| v["tenfold"].as_i64() == Some(v["id"].as_i64().unwrap() * 10)));

    // (The mock cluster neither stores offsets committed in transactions
    // nor tells read_committed consumers which transactions aborted:
    // resuming across runs and aborts are tested on tansu, in kafka.rs.)
}

#[tokio::test]
async fn a_stream_survives_a_broker_outage() {
    let cluster = cluster(&[("events", 2)]);
    let servers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "outage", "mode": "streaming", "trigger": "processingTime=500ms", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{servers}", "topic": "events",
          "format": "json", "schema": "id BIGINT"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/events", "saveMode": "append"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "outage.json", &config);
    let table = out.path().join("events");
    let count = |table: std::path::PathBuf| async move {
        if delta_version(&table).await.is_none() {
            return (0, 0);
        }
        let rows = delta_rows(
            &table,
            "SELECT count(*) AS n, count(DISTINCT id) AS d FROM t",
        )
        .await;
        let cells: Vec<i64> = rows[3]
            .split('|')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        (cells[0], cells[1])
    };
    let wait_for = |n: i64| {
        let table = table.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while count(table.clone()).await.0 < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            count(table).await
        }
    };

    let mut child = cli(out.path())
        .args(["run", &file])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    produce(&cluster, "events", 2, 0..200);
    assert_eq!(wait_for(200).await, (200, 200));

    // The broker goes away for a while; the stream keeps retrying.
    cluster.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.broker_up(1).unwrap();
    produce(&cluster, "events", 2, 200..500);
    let seen = wait_for(500).await;

    if let Ok(Some(status)) = child.try_wait() {
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        panic!("the stream ended ({status:?}): {stderr}");
    }
    kill("-TERM", child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(seen, (500, 500), "{stderr}");
    assert!(status.success(), "{status:?}: {stderr}");
}
