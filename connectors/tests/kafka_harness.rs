//! The Kafka test harness against a real tansu broker: topics, producing,
//! reading back by partition assignment, restarting.
//!
//! Run with `cargo test --release --workspace --test kafka_harness`.

use std::time::Duration;

use dataflow_connectors::testing::{KafkaBroker, KafkaRecord, ProducerRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `n` records spread round-robin over `partitions`, numbered from `first`.
fn records(first: usize, n: usize, partitions: i32) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    (first..first + n)
        .map(|i| {
            (
                (i % partitions as usize) as i32,
                format!("key-{i}").into_bytes(),
                format!("value-{i}").into_bytes(),
            )
        })
        .collect()
}

fn produce(broker: &KafkaBroker, topic: &str, records: &[(i32, Vec<u8>, Vec<u8>)]) {
    let refs: Vec<ProducerRecord<'_>> = records
        .iter()
        .map(|(p, k, v)| (*p, Some(k.as_slice()), v.as_slice()))
        .collect();
    broker
        .produce(topic, &refs)
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
}

/// What `read_all` should return for `records`, produced in order.
fn expected(records: &[(i32, Vec<u8>, Vec<u8>)], partitions: i32) -> Vec<KafkaRecord> {
    let mut expected = Vec::new();
    for partition in 0..partitions {
        let mine = records.iter().filter(|(p, _, _)| *p == partition);
        for (offset, (_, key, value)) in mine.enumerate() {
            expected.push(KafkaRecord {
                partition,
                offset: offset as i64,
                key: Some(key.clone()),
                value: value.clone(),
            });
        }
    }
    expected
}

#[test]
fn produce_and_read_back_by_assignment() {
    let broker = KafkaBroker::shared();
    broker.create_topic("harness_smoke", 4).unwrap();
    let sent = records(0, 1000, 4);
    produce(broker, "harness_smoke", &sent);

    let got = broker.read_all("harness_smoke", TIMEOUT).unwrap();
    assert_eq!(got.len(), 1000);
    assert_eq!(got, expected(&sent, 4));

    // The same with a plain consumer assigned to all four partitions.
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", "harness-smoke")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..4 {
        assignment
            .add_partition_offset("harness_smoke", partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut values = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while values.len() < 1000 && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            let value = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
            let i: usize = value.strip_prefix("value-").unwrap().parse().unwrap();
            assert_eq!(message.partition(), (i % 4) as i32);
            assert_eq!(message.key(), Some(format!("key-{i}").as_bytes()));
            values.push(i);
        }
    }
    values.sort_unstable();
    assert_eq!(values, (0..1000).collect::<Vec<_>>());
}

#[test]
fn empty_topic_reads_empty_and_cannot_be_created_twice() {
    let broker = KafkaBroker::shared();
    broker.create_topic("harness_empty", 2).unwrap();
    assert!(broker
        .read_all("harness_empty", TIMEOUT)
        .unwrap()
        .is_empty());
    assert!(broker.create_topic("harness_empty", 2).is_err());
}

#[test]
fn restart_keeps_the_port() {
    let broker = KafkaBroker::start().unwrap();
    let port = broker.port();
    broker.create_topic("harness_restart", 2).unwrap();
    let before = records(0, 100, 2);
    produce(&broker, "harness_restart", &before);

    broker.restart().unwrap();
    assert_eq!(broker.port(), port);
    if !broker.persistent() {
        // memory:// storage: the restarted broker starts empty.
        assert!(broker
            .read_all("harness_restart", TIMEOUT)
            .unwrap()
            .is_empty());
        broker.create_topic("harness_restart", 2).unwrap();
    }
    let after = records(100, 100, 2);
    produce(&broker, "harness_restart", &after);

    let all: Vec<_> = if broker.persistent() {
        before.into_iter().chain(after).collect()
    } else {
        after
    };
    let got = broker.read_all("harness_restart", TIMEOUT).unwrap();
    assert_eq!(got, expected(&all, 2), "{}", broker.log());

    // Stopped, the port refuses connections; started again, it serves.
    broker.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    broker.start_again().unwrap();
    assert_eq!(broker.port(), port);
}

#[test]
fn read_counts_records_of_multi_record_batches() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = KafkaBroker::shared();
    broker.create_topic("harness_batches", 2).unwrap();
    let producer: FutureProducer = broker
        .client_config()
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sends: Vec<_> = (0..200)
            .map(|i| {
                let value = format!("value-{i}");
                let producer = producer.clone();
                async move {
                    let record = FutureRecord::<(), _>::to("harness_batches")
                        .partition(i % 2)
                        .payload(&value);
                    producer.send(record, Duration::from_secs(10)).await
                }
            })
            .collect();
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }
    });
    let got = broker.read("harness_batches", 200, TIMEOUT).unwrap();
    assert_eq!(got.len(), 200);
    for partition in 0..2 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, (0..100).collect::<Vec<_>>());
    }
}
