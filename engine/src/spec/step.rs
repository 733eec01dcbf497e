//! What every step knows about itself while it is built: its place in the
//! config and its method-specific options, parsed with JSON paths in errors.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::secrets::CREDENTIAL_PATH;
use super::{Credentials, EnvValues, Mode, StepKind};
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
    /// `config.cache`: cache this step's output (`true` = MEMORY).
    pub cache: bool,
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
    /// JSON path of any unknown key, missing field or wrong type.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        let value = Value::Object(self.config.clone());
        serde_path_to_error::deserialize(value).map_err(|err| {
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
        })
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
