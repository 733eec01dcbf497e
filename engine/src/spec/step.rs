//! What every step knows about itself while it is built: its place in the
//! config and its method-specific options, parsed with JSON paths in errors.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{EnvValues, Mode, StepKind};
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
    /// The pipeline's values from environment variables, kept out of messages.
    pub env_values: EnvValues,
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

    /// A config error about `key` in this step.
    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        let path = self.key_path(key);
        let message: String = message.into();
        let message = self.env_values.redact(&path, &message);
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
            Error::config(path, Some(self.step.clone()), message)
        })
    }
}
