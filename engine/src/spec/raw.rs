//! The pipeline file as written: the serde model that
//! [`PipelineSpec::load`](super::PipelineSpec::load) reads and then turns
//! into the validated model. Nothing outside `spec` sees these types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::secrets::{Credentials, CREDENTIAL_PATH};
use super::step::StepInfo;
use super::storage::{parse_location, StorageOptions};
use super::trigger::Trigger;
use super::{
    Backoff, CatchUp, EnvValues, MemoryLimit, Mode, OutputMode, Overlap, StepKind, StorageLevel,
};
use crate::error::{Error, Result, StepRef};

/// Keys of a load step's config that are the pipeline's streaming settings.
const STREAM_KEYS: [&str; 3] = ["trigger", "checkpointLocation", "outputMode"];

/// A whole pipeline as written in its JSON file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub description: Option<String>,
    pub steps: Vec<RawStep>,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default, rename = "catchUp")]
    pub catch_up: CatchUp,
    #[serde(default)]
    pub retries: u32,
    #[serde(default, rename = "retryBackoff")]
    pub retry_backoff: Backoff,
    #[serde(default)]
    pub trigger: Option<Value>,
    #[serde(default, rename = "checkpointLocation")]
    pub checkpoint_location: Option<String>,
    #[serde(default, rename = "outputMode")]
    pub output_mode: Option<Value>,
    #[serde(default, rename = "memoryLimit")]
    pub memory_limit: Option<MemoryLimit>,
    #[serde(default)]
    pub storage: BTreeMap<String, Map<String, Value>>,
}

/// One step as written: `{"type", "method", "input"?, "config"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    #[serde(rename = "type")]
    pub kind: StepKind,
    pub method: String,
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub config: Map<String, Value>,
}

impl RawPipeline {
    /// `trigger` and `checkpointLocation`, each from the top level or one
    /// load step; an error if they are set in two places, or a trigger in
    /// batch mode. `outputMode` (Spark's key) is checked here too.
    pub fn stream_settings(&self) -> Result<(Trigger, Option<String>, OutputMode)> {
        let [trigger, checkpoint, output_mode] = self.stream_keys()?;
        let output_mode = match output_mode {
            None => OutputMode::default(),
            Some((path, value)) => {
                let mode = OutputMode::parse(&value).map_err(|m| Error::config(&path, None, m))?;
                if mode != OutputMode::Append && self.mode != Mode::Streaming {
                    return Err(Error::config(
                        path,
                        None,
                        "outputMode \"update\" and \"complete\" apply to streaming aggregations; a batch run writes each result once",
                    ));
                }
                mode
            }
        };
        let trigger = match trigger {
            None => Trigger::default(),
            Some((path, _)) if self.mode != Mode::Streaming => {
                return Err(Error::config(
                    path,
                    None,
                    "trigger only applies with \"mode\": \"streaming\"",
                ))
            }
            Some((path, value)) => {
                Trigger::parse(&value).map_err(|m| Error::config(path, None, m))?
            }
        };
        let checkpoint = match checkpoint {
            None => None,
            Some((path, Value::String(dir))) if dir.contains("://") => {
                parse_location(&dir).map_err(|m| Error::config(path, None, m))?;
                Some(dir)
            }
            Some((_, Value::String(dir))) if !dir.trim().is_empty() => Some(dir),
            Some((path, _)) => {
                return Err(Error::config(
                    path,
                    None,
                    "checkpointLocation must be a directory path",
                ))
            }
        };
        Ok((trigger, checkpoint, output_mode))
    }

    /// Where each of [`STREAM_KEYS`] is set (JSON path and value), if it is.
    fn stream_keys(&self) -> Result<[Option<(String, Value)>; 3]> {
        let mut found: [Option<(String, Value)>; 3] = [
            self.trigger.clone().map(|v| ("trigger".to_string(), v)),
            self.checkpoint_location
                .clone()
                .map(|v| ("checkpointLocation".to_string(), Value::String(v))),
            self.output_mode
                .clone()
                .map(|v| ("outputMode".to_string(), v)),
        ];
        for (index, step) in self.steps.iter().enumerate() {
            for (slot, key) in found.iter_mut().zip(STREAM_KEYS) {
                let Some(value) = step.config.get(key) else {
                    continue;
                };
                let path = format!("steps[{index}].config.{key}");
                if step.kind != StepKind::Load {
                    return Err(Error::config(
                        path,
                        None,
                        format!("{key} belongs in a load step or at the top level"),
                    ));
                }
                if let Some((first, _)) = slot {
                    return Err(Error::config(
                        path,
                        None,
                        format!("{key} is already set at {first}"),
                    ));
                }
                *slot = Some((path, value.clone()));
            }
        }
        Ok(found)
    }

    /// Splits every step's common keys (`registerAs`, `cache`,
    /// `credentialPath`) from its method-specific ones; `credentials`: the
    /// keys each step took from its `credentialPath` secret, by index.
    pub fn step_infos(
        &self,
        env_values: &EnvValues,
        credentials: &BTreeMap<usize, Credentials>,
        storage: &StorageOptions,
    ) -> Result<Vec<StepInfo>> {
        self.steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let mut info = step.info(index, self.mode, env_values)?;
                info.credentials = credentials.get(&index).cloned();
                info.storage = storage.clone();
                Ok(info)
            })
            .collect()
    }
}

impl RawStep {
    fn info(&self, index: usize, mode: Mode, env_values: &EnvValues) -> Result<StepInfo> {
        let mut config = self.config.clone();
        let path = |key: &str| format!("steps[{index}].config.{key}");
        let partial = StepRef {
            index,
            method: self.method.clone(),
            name: None,
        };
        let name = match config.remove("registerAs") {
            None => None,
            Some(Value::String(name)) => Some(name),
            Some(_) => {
                return Err(Error::config(
                    path("registerAs"),
                    Some(partial),
                    "registerAs must be a string",
                ))
            }
        };
        if self.kind == StepKind::Load {
            for key in STREAM_KEYS {
                config.remove(key);
            }
        }
        match config.remove(CREDENTIAL_PATH) {
            None => {}
            Some(_) if self.kind == StepKind::Transform => {
                return Err(Error::config(
                    path(CREDENTIAL_PATH),
                    Some(partial),
                    "a transform step reads no credentials; credentialPath belongs in an extract or load step",
                ))
            }
            Some(Value::String(_)) => {}
            Some(_) => {
                return Err(Error::config(
                    path(CREDENTIAL_PATH),
                    Some(partial),
                    "credentialPath must be the path of a Vault secret, e.g. \"secret/data/kafka\"",
                ))
            }
        }
        let cache = cache_level(&mut config, &partial)?;
        Ok(StepInfo {
            step: StepRef { name, ..partial },
            kind: self.kind,
            input: self.input.clone(),
            cache,
            mode,
            config,
            env_values: env_values.clone(),
            credentials: None,
            storage: StorageOptions::default(),
        })
    }
}

/// The step's cache level from `cache` (true: cached, in memory unless
/// `cacheStorageLevel`, Spark's key, names another level), taken out of
/// `config`.
fn cache_level(config: &mut Map<String, Value>, step: &StepRef) -> Result<Option<StorageLevel>> {
    let path = |key: &str| format!("steps[{}].config.{key}", step.index);
    let error = |key: &str, message: String| Error::config(path(key), Some(step.clone()), message);
    let cache = match config.remove("cache") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(error("cache", "cache must be true or false".into())),
    };
    let level = match config.remove("cacheStorageLevel") {
        None => StorageLevel::default(),
        Some(Value::String(name)) => name.parse().map_err(|m| error("cacheStorageLevel", m))?,
        Some(_) => {
            let message =
                "cacheStorageLevel must be a storage level name, e.g. \"MEMORY_AND_DISK\"";
            return Err(error("cacheStorageLevel", message.into()));
        }
    };
    if !cache && level != StorageLevel::default() {
        tracing::warn!(
            "{}: cacheStorageLevel without \"cache\": true caches nothing",
            path("cacheStorageLevel")
        );
    }
    Ok(cache.then_some(level))
}
