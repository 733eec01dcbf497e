//! librdkafka client settings shared by `fromKafka` and `toKafka`: the
//! bootstrap servers plus every `kafka.*` key of the step, passed through
//! (values are secrets: SASL passwords travel here).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use dataflow_engine::secret::Secret;
use dataflow_engine::spec::StepInfo;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use serde_json::Value;

use crate::error::{ConnectorError, Result};

/// Connection settings of one Kafka step.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// `host:port,...`.
    pub bootstrap_servers: String,
    /// `kafka.<name>` keys, without the prefix.
    pub passthrough: BTreeMap<String, Secret>,
}

impl ClientSettings {
    /// Parses a Kafka step's config: the `kafka.*` keys become the
    /// passthrough settings, the others the typed config `C`, whose
    /// `servers` (`bootstrapServers`) must not be empty.
    /// `reserved`: librdkafka settings the step sets itself, with what to
    /// use instead; a `kafka.*` key naming one is a config error.
    /// librdkafka checks every passthrough name and value here, so a typo
    /// is a config error naming its key (never its value).
    pub(crate) fn parse_step<C: serde::de::DeserializeOwned>(
        info: &StepInfo,
        servers: fn(&C) -> &str,
        reserved: &[(&str, &str)],
    ) -> dataflow_engine::Result<(C, ClientSettings)> {
        let mut info = info.clone();
        let passthrough = Self::take_passthrough(&mut info)?;
        for (name, instead) in reserved {
            if passthrough.contains_key(*name) {
                return Err(info.error(
                    &format!("kafka.{name}"),
                    format!(
                        "is set by fromKafka/toKafka itself and cannot be overridden; {instead}"
                    ),
                ));
            }
        }
        let config: C = info.parse()?;
        let bootstrap_servers = servers(&config).to_string();
        if bootstrap_servers.trim().is_empty() {
            return Err(info.error("bootstrapServers", "must not be empty"));
        }
        let settings = ClientSettings {
            bootstrap_servers,
            passthrough,
        };
        if let Err(e) = settings.config().create_native_config() {
            let key = match &e {
                KafkaError::ClientConfig(_, _, key, _) => format!("kafka.{key}"),
                _ => "kafka".to_string(),
            };
            return Err(info.error(&key, settings.describe(&e)));
        }
        Ok((config, settings))
    }

    /// `e` as text without any `kafka.*` value: librdkafka's config errors
    /// echo the value (a password, say), so the value field is dropped and
    /// every passthrough value left in the text is replaced by `***`.
    pub(crate) fn describe(&self, e: &KafkaError) -> String {
        let mut text = match e {
            KafkaError::ClientConfig(_, description, key, _) => {
                format!("invalid librdkafka setting {key}: {description}")
            }
            other => other.to_string(),
        };
        let mut values: Vec<&str> = self
            .passthrough
            .values()
            .map(Secret::expose)
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first, so a value containing another goes whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for value in values {
            text = text.replace(value, "***");
        }
        text
    }

    /// Creates a client from `config` (made by these settings); a failure
    /// names the brokers and `doing`, with every `kafka.*` value redacted.
    pub(crate) fn create<T: FromClientConfigAndContext<Context>>(
        &self,
        config: &ClientConfig,
        doing: &str,
    ) -> Result<T> {
        config.create_with_context(Context::default()).map_err(|e| {
            let code = e.rdkafka_error_code();
            kafka_failure(doing, &self.bootstrap_servers, self.describe(&e), code)
        })
    }

    /// Takes the `kafka.*` keys out of `info`'s config (so the typed config
    /// can reject unknown keys).
    fn take_passthrough(info: &mut StepInfo) -> dataflow_engine::Result<BTreeMap<String, Secret>> {
        let keys: Vec<String> = info
            .config
            .keys()
            .filter(|k| k.starts_with("kafka."))
            .cloned()
            .collect();
        let mut passthrough = BTreeMap::new();
        for key in keys {
            let value = info.config.remove(&key).expect("listed key");
            let text = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(info.error(&key, "must be a string, number or boolean")),
            };
            passthrough.insert(key["kafka.".len()..].to_string(), Secret::new(text));
        }
        Ok(passthrough)
    }

    /// A librdkafka config with these settings.
    pub(crate) fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        set_defaults(&mut config);
        self.apply_passthrough(&mut config);
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config
    }

    /// A config for a consumer that reads offset ranges known to exist.
    /// `quick`: it hardly waits at the end of a partition for more data
    /// (10 ms instead of librdkafka's 500 ms fetch wait, which some brokers
    /// — tansu — wait out on every fetch). It buffers at most 16 MiB per
    /// partition ahead. `kafka.*` keys override both, but not what reading
    /// depends on ([`READER_RESERVED`], rejected at validation and set last).
    pub(crate) fn range_reader_config(&self, group_id: &str, quick: bool) -> ClientConfig {
        let mut config = ClientConfig::new();
        if quick {
            config.set("fetch.wait.max.ms", "10");
        }
        config.set("queued.max.messages.kbytes", "16384");
        set_defaults(&mut config);
        self.apply_passthrough(&mut config);
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        config
    }

    fn apply_passthrough(&self, config: &mut ClientConfig) {
        for (key, value) in &self.passthrough {
            config.set(key, value.expose());
        }
    }
}

/// librdkafka settings `fromKafka` sets itself, with what to use instead.
pub(crate) const READER_RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use bootstrapServers"),
    (
        "group.id",
        "use groupId (positions are committed to it; reading never joins a group)",
    ),
    (
        "enable.auto.commit",
        "positions are committed only with the data",
    ),
    (
        "enable.partition.eof",
        "reading a range depends on end-of-partition notices",
    ),
    (
        "auto.offset.reset",
        "use startingOffsets and failOnDataLoss",
    ),
];

/// librdkafka settings `toKafka` sets itself, with what to use instead.
pub(crate) const WRITER_RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "use bootstrapServers"),
    (
        "enable.idempotence",
        "the producer is always idempotent (no duplicates on retries)",
    ),
];

/// The client context of every dataflow client: librdkafka's errors and
/// warnings go to the log (they are mostly transient: the client
/// reconnects), each kind once per client as a warning and its repeats at
/// debug level, so a broker that is down gives one line, not hundreds;
/// end-of-partition notices, which are expected, are not logged.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    /// The kinds of message already logged as warnings.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl Context {
    /// Logs `message` as a warning the first time `kind` comes up, at debug
    /// level after that.
    fn warn_once(&self, kind: String, message: std::fmt::Arguments<'_>) {
        let first = self.seen.lock().map_or(true, |mut seen| seen.insert(kind));
        if first {
            tracing::warn!("Kafka client: {message}");
        } else {
            tracing::debug!("Kafka client: {message}");
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.warn_once(
                format!("log {facility}"),
                format_args!("{facility}: {message}"),
            );
        } else {
            tracing::debug!("Kafka client: {facility}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        let kind = format!("error {:?}", error.rdkafka_error_code());
        self.warn_once(kind, format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for Context {}

/// A consumer with [`Context`].
pub(crate) type Consumer = BaseConsumer<Context>;

/// A Kafka failure as a connector error naming the brokers and the action,
/// keeping librdkafka's code (it decides whether a retry may help).
pub(crate) fn kafka_error(doing: &str, servers: &str, e: KafkaError) -> ConnectorError {
    let code = e.rdkafka_error_code();
    kafka_failure(doing, servers, e, code)
}

/// A Kafka failure explained by `message`, with librdkafka's `code` when
/// there is one.
pub(crate) fn kafka_failure(
    doing: &str,
    servers: &str,
    message: impl std::fmt::Display,
    code: Option<RDKafkaErrorCode>,
) -> ConnectorError {
    ConnectorError::Kafka {
        context: format!("Kafka at {servers}: {doing}"),
        message: message.to_string(),
        code,
    }
}

/// Runs a blocking client call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ConnectorError::Rejected(format!("Kafka client task failed: {e}")))?
}

/// Our defaults for every client, before the `kafka.*` keys: reconnect to a
/// broker that came back within a second (the Java client's default;
/// librdkafka's 10 s would outlast `metadataTimeoutMs` after an outage).
fn set_defaults(config: &mut ClientConfig) {
    config.set("reconnect.backoff.max.ms", "1000");
}
