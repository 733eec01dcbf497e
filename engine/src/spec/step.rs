//! What every step knows about itself while it is built: its place in the
//! config and its method-specific options, parsed with JSON paths in errors.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::secrets::CREDENTIAL_PATH;
use super::{Credentials, EnvValues, Mode, StepKind, StorageLevel, StorageOptions};
use crate::error::{Error, Result, StepRef};

/// What every step knows about itself while being built: where it is in the
/// config, and its method-specific options with the common keys taken out.
/// Its `Debug` shows the config's keys, never their values (which may hold
/// secrets from the environment).
#[derive(Clone)]
pub struct StepInfo {
    /// Index, method and registered name, for messages.
    pub step: StepRef,
    /// extract, transform or load.
    pub kind: StepKind,
    /// `input` as written, if any.
    pub input: Option<String>,
    /// `config.cache` (with `cacheStorageLevel`): cache this step's output
    /// at this level.
    pub cache: Option<StorageLevel>,
    /// The pipeline's mode: a sink's defaults and valid options may differ
    /// in streaming pipelines (e.g. `toDeltaLake`'s saveMode).
    pub mode: Mode,
    /// The remaining method-specific config keys.
    pub config: Map<String, Value>,
    /// The pipeline's values from environment variables and Vault, kept
    /// out of messages.
    pub env_values: EnvValues,
    /// `credentialPath`: the secret whose keys were merged into `config`
    /// (under the keys the config sets itself), and which keys those are.
    pub credentials: Option<Credentials>,
    /// The pipeline's `storage` options: how to reach each object store.
    pub storage: StorageOptions,
}

impl fmt::Debug for StepInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepInfo")
            .field("step", &self.step)
            .field("kind", &self.kind)
            .field("input", &self.input)
            .field("cache", &self.cache)
            .field("mode", &self.mode)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl StepInfo {
    /// JSON path of this step's config, e.g. `steps[2].config`.
    pub fn config_path(&self) -> String {
        format!("steps[{}].config", self.step.index)
    }

    /// JSON path of one key in this step's config.
    pub fn key_path(&self, key: &str) -> String {
        format!("{}.{key}", self.config_path())
    }

    /// A config error about `key` in this step. A key taken from the
    /// `credentialPath` secret is reported at `credentialPath`, since it is
    /// not written in the config.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        let message: String = message.into();
        let message = self.env_values.redact(&self.key_path(key), &message);
        let (path, message) = self.locate(key, message);
        Error::config(path, Some(self.step.clone()), message)
    }

    /// Deserializes the method-specific config into `T`, reporting the exact
    /// JSON path of any unknown key, missing field or wrong type. A number
    /// or boolean written as a string (`"100000"`, `"true"`), as Spark takes
    /// its options, is read as the number or boolean where `T` expects one.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        let mut value = Value::Object(self.config.clone());
        // Each retry has turned one more string into a number or boolean, so
        // this ends: there are only so many strings.
        loop {
            let err = match serde_path_to_error::deserialize(value.clone()) {
                Ok(parsed) => return Ok(parsed),
                Err(err) => err,
            };
            if !coerce_string_at(&mut value, err.path(), &err.inner().to_string()) {
                return Err(self.parse_error(err));
            }
        }
    }

    fn parse_error(&self, err: serde_path_to_error::Error<serde_json::Error>) -> Error {
        let inner = err.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            self.config_path()
        } else {
            format!("{}.{inner}", self.config_path())
        };
        let message = self.env_values.redact(&path, &err.into_inner().to_string());
        let first = inner.split(['.', '[']).next().unwrap_or_default();
        let key = if self.config.contains_key(&inner) {
            inner.as_str()
        } else {
            first
        };
        let (located, message) = self.locate(key, message);
        let path = if located == self.key_path(key) {
            path
        } else {
            located
        };
        Error::config(path, Some(self.step.clone()), message)
    }

    /// Where a message about `key` points: the key itself, or
    /// `credentialPath` (saying which secret key it is about) when the
    /// value came from that secret.
    fn locate(&self, key: &str, message: String) -> (String, String) {
        match &self.credentials {
            Some(c) if c.keys.iter().any(|k| k == key) => {
                let help = if message.starts_with("unknown field") {
                    format!(
                        "\nHelp: the secret's keys are merged into this step's config, so \
                         each must be a key {} takes; remove the others from the secret \
                         or give this step a secret of its own",
                        self.step.method
                    )
                } else {
                    String::new()
                };
                (
                    self.key_path(CREDENTIAL_PATH),
                    format!("key {key} of Vault secret {}: {message}{help}", c.path),
                )
            }
            _ => (self.key_path(key), message),
        }
    }
}

/// When `message` says a string stands where a number or boolean is
/// expected, replaces the string at `path` in `value` by the number or
/// boolean it spells; false when it does not spell one.
fn coerce_string_at(value: &mut Value, path: &serde_path_to_error::Path, message: &str) -> bool {
    if !message.starts_with("invalid type: string") {
        return false;
    }
    let Some(Value::String(text)) = value_at(value, path) else {
        return false;
    };
    let parsed = match text.trim() {
        t if t.eq_ignore_ascii_case("true") => Value::Bool(true),
        t if t.eq_ignore_ascii_case("false") => Value::Bool(false),
        t => match serde_json::from_str::<serde_json::Number>(t) {
            Ok(number) => Value::Number(number),
            Err(_) => return false,
        },
    };
    if let Some(slot) = value_at(value, path) {
        *slot = parsed;
    }
    true
}

/// The value at `path` (map keys and sequence indexes) inside `value`.
fn value_at<'a>(value: &'a mut Value, path: &serde_path_to_error::Path) -> Option<&'a mut Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |value, segment| match segment {
        Segment::Map { key } => value.get_mut(key.as_str()),
        Segment::Seq { index } => value.get_mut(*index),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::error::StepRef;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Options {
        max_offsets_per_trigger: u64,
        fail_on_data_loss: bool,
        topic: String,
        ratio: Option<f64>,
    }

    fn info(config: Value) -> StepInfo {
        StepInfo {
            step: StepRef {
                index: 0,
                method: "fromKafka".into(),
                name: None,
            },
            kind: StepKind::Extract,
            input: None,
            cache: None,
            mode: Mode::Batch,
            config: config.as_object().unwrap().clone(),
            env_values: EnvValues::default(),
            credentials: None,
            storage: StorageOptions::default(),
        }
    }

    #[test]
    fn numbers_and_booleans_may_be_written_as_strings() {
        let config = json!({"maxOffsetsPerTrigger": "100000", "failOnDataLoss": "false",
                            "topic": "123", "ratio": "0.5"});
        let parsed: Options = info(config).parse().unwrap();
        let expected = Options {
            max_offsets_per_trigger: 100_000,
            fail_on_data_loss: false,
            topic: "123".into(),
            ratio: Some(0.5),
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn a_string_that_is_no_number_is_still_an_error_at_its_path() {
        let config = json!({"maxOffsetsPerTrigger": "lots", "failOnDataLoss": true, "topic": "t"});
        let err = info(config).parse::<Options>().unwrap_err();
        match err {
            Error::Config { path, message, .. } => {
                assert_eq!(path, "steps[0].config.maxOffsetsPerTrigger");
                assert!(
                    message.contains("invalid type: string \"lots\""),
                    "{message}"
                );
            }
            other => panic!("expected a config error, got {other}"),
        }
    }
}
