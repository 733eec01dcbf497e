//! The pipeline config: its serde model, loading with `${ENV}` and `--set`,
//! and typed parsing of each step's `config` with JSON paths in errors.

mod overrides;

use std::collections::HashSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result, StepRef};
use crate::ops::schedule::CronSchedule;
use crate::stream::Trigger;
pub use overrides::{apply_set, substitute_env, EnvValues};

/// A whole pipeline as written in its JSON file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Pipeline name, used in summaries and logs.
    pub name: String,
    /// `batch` (run once) or `streaming`.
    #[serde(default)]
    pub mode: Mode,
    /// Free text for humans.
    #[serde(default)]
    pub description: Option<String>,
    /// The steps, in order.
    pub steps: Vec<StepSpec>,
    /// When `run-pipeline schedule` runs this pipeline: a cron expression
    /// with 5 fields (minute hour day-of-month month day-of-week) or 6 with
    /// a leading seconds field, e.g. `"0 */15 * * * *"`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone the `schedule` is read in, e.g. `Europe/Paris`; UTC
    /// when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    /// What a schedule slot does while the previous run is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// What `run-pipeline schedule` does on start for slots missed while it
    /// was not running.
    #[serde(default, rename = "catchUp")]
    pub catch_up: CatchUp,
    /// How many times a run that failed for a transient reason (connection
    /// refused, timeout, throttling, commit conflict) is retried; permanent
    /// failures are never retried.
    #[serde(default)]
    pub retries: u32,
    /// The delays between retries.
    #[serde(default, rename = "retryBackoff")]
    pub retry_backoff: Backoff,
    /// Streaming: when micro-batches run (see [`Trigger`]); may also sit in
    /// a load step's config, where the Spark app wrote it.
    #[serde(default)]
    pub trigger: Option<Value>,
    /// Reading a resumable source (fromKafka) into sinks that cannot record
    /// source positions in their own commit (files, console), in streaming
    /// or batch mode: the directory of the offset log, written after the
    /// loads commit. May also sit in a load step's config.
    #[serde(default, rename = "checkpointLocation")]
    pub checkpoint_location: Option<String>,
    /// The strings that came from environment variables: messages about
    /// them show the `${VAR}` written, never the value.
    #[serde(skip)]
    pub env_values: EnvValues,
}

/// The streaming keys of a pipeline, gathered from the top level and the
/// load steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// When micro-batches run.
    pub trigger: Trigger,
    /// The offset log directory, if any.
    pub checkpoint_location: Option<String>,
}

/// `overlap`: a pipeline never runs twice at the same time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Drop the slot (recorded in the history as `skipped`).
    #[default]
    Skip,
    /// Run once the current run ends (at most one slot waits).
    Queue,
}

/// `catchUp`: what to do about slots missed while the scheduler was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Forget them; wait for the next slot.
    #[default]
    Skip,
    /// Run once at start for all of them together.
    Once,
}

/// `retryBackoff`: exponential backoff with jitter; the n-th retry waits
/// between half and all of `min(initialMs * 2^(n-1), maxMs)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    /// Delay before the first retry, in milliseconds (default 1000).
    #[serde(default = "Backoff::default_initial_ms")]
    pub initial_ms: u64,
    /// Upper bound of any delay, in milliseconds (default 60000).
    #[serde(default = "Backoff::default_max_ms")]
    pub max_ms: u64,
}

impl Backoff {
    fn default_initial_ms() -> u64 {
        1000
    }

    fn default_max_ms() -> u64 {
        60_000
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: Self::default_initial_ms(),
            max_ms: Self::default_max_ms(),
        }
    }
}

/// Keys of a load step's config that are the pipeline's streaming settings.
const STREAM_KEYS: [&str; 2] = ["trigger", "checkpointLocation"];

/// How a pipeline runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Run the plan once and commit.
    #[default]
    Batch,
    /// A loop of micro-batches over the new data of streaming sources.
    Streaming,
}

/// The role of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Reads data from a source.
    Extract,
    /// Derives a relation from earlier ones.
    Transform,
    /// Writes a relation to a sink.
    Load,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepKind::Extract => "extract",
            StepKind::Transform => "transform",
            StepKind::Load => "load",
        })
    }
}

/// One step as written: `{"type", "method", "input"?, "config"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// extract, transform or load.
    #[serde(rename = "type")]
    pub kind: StepKind,
    /// The operation, e.g. `fromFiles`, `sql`, `toDeltaLake`.
    pub method: String,
    /// The relation this step reads; defaults to the previous step's output.
    #[serde(default)]
    pub input: Option<String>,
    /// Method-specific options.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// What every step knows about itself while being built: where it is in the
/// config, and its method-specific options with the common keys taken out.
#[derive(Debug, Clone)]
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

impl PipelineSpec {
    /// Parses a pipeline from JSON text, applying `--set` overrides first and
    /// `${VAR}` substitution second.
    pub fn load(text: &str, sets: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut value: Value = serde_json::from_str(text).map_err(|err| {
            Error::config(
                format!("line {} column {}", err.line(), err.column()),
                None,
                format!("not valid JSON: {err}"),
            )
        })?;
        for set in sets {
            apply_set(&mut value, set)?;
        }
        let env_values = substitute_env(&mut value, "", env)?;
        let mut spec: PipelineSpec = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { "$".to_string() } else { path };
            let message = env_values.redact(&path, &err.into_inner().to_string());
            Error::config(path, None, message)
        })?;
        spec.env_values = env_values;
        spec.check_shape()
            .map_err(|err| spec.env_values.redact_error(err))?;
        Ok(spec)
    }

    /// Splits every step's common keys (`registerAs`, `cache`) from its
    /// method-specific ones.
    pub fn step_infos(&self) -> Result<Vec<StepInfo>> {
        self.steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let mut config = step.config.clone();
                let path = |key: &str| format!("steps[{index}].config.{key}");
                let partial = StepRef {
                    index,
                    method: step.method.clone(),
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
                if step.kind == StepKind::Load {
                    for key in STREAM_KEYS {
                        config.remove(key);
                    }
                }
                let cache = match config.remove("cache") {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => {
                        return Err(Error::config(
                            path("cache"),
                            Some(partial),
                            "cache must be true or false",
                        ))
                    }
                };
                Ok(StepInfo {
                    step: StepRef {
                        index,
                        method: step.method.clone(),
                        name,
                    },
                    kind: step.kind,
                    input: step.input.clone(),
                    cache,
                    mode: self.mode,
                    config,
                    env_values: self.env_values.clone(),
                })
            })
            .collect()
    }

    /// Structural checks that need no connector: non-empty, names valid and
    /// unique, a load step present, `input` only where it means something.
    fn check_shape(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::config("name", None, "name must not be empty"));
        }
        check_pipeline_name(&self.name)?;
        if self.steps.is_empty() {
            return Err(Error::config(
                "steps",
                None,
                "a pipeline needs at least one step",
            ));
        }
        if !self.steps.iter().any(|s| s.kind == StepKind::Load) {
            return Err(Error::config(
                "steps",
                None,
                "a pipeline needs at least one load step (toDeltaLake, toFiles, toConsole, ...)",
            ));
        }
        self.check_operations()?;
        let mut names = HashSet::new();
        for info in self.step_infos()? {
            let step = &self.steps[info.step.index];
            let at = |key: &str| format!("steps[{}].{key}", info.step.index);
            if step.kind == StepKind::Extract && step.input.is_some() {
                return Err(Error::config(
                    at("input"),
                    Some(info.step.clone()),
                    "an extract step reads from its source, it takes no input",
                ));
            }
            if step.kind == StepKind::Load && info.step.name.is_some() {
                return Err(Error::config(
                    at("config.registerAs"),
                    Some(info.step.clone()),
                    "a load step produces no relation to register",
                ));
            }
            if let Some(name) = &info.step.name {
                if !is_identifier(name) {
                    return Err(Error::config(
                        at("config.registerAs"),
                        Some(info.step.clone()),
                        format!("\"{name}\" is not a valid name: use letters, digits and _, not starting with a digit"),
                    ));
                }
                if !names.insert(name.to_ascii_lowercase()) {
                    return Err(Error::config(
                        at("config.registerAs"),
                        Some(info.step.clone()),
                        format!("\"{name}\" is already registered by an earlier step"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl PipelineSpec {
    /// The parsed `schedule` (read in `timezone`), `None` when there is none.
    pub fn cron_schedule(&self) -> Result<Option<CronSchedule>> {
        let Some(expr) = &self.schedule else {
            if self.timezone.is_some() {
                return Err(Error::config(
                    "timezone",
                    None,
                    "timezone only applies to a schedule; add \"schedule\"",
                ));
            }
            return Ok(None);
        };
        CronSchedule::parse(expr, self.timezone.as_deref()).map(Some)
    }

    /// `trigger` and `checkpointLocation`, each from the top level or one
    /// load step; an error if they are set in two places or in batch mode.
    pub fn stream_settings(&self) -> Result<StreamSettings> {
        let mut found: [Option<(String, Value)>; 2] = [
            self.trigger.clone().map(|v| ("trigger".to_string(), v)),
            self.checkpoint_location
                .clone()
                .map(|v| ("checkpointLocation".to_string(), Value::String(v))),
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
        let [trigger, checkpoint] = found;
        let mut settings = StreamSettings::default();
        if let Some((path, value)) = trigger {
            if self.mode != Mode::Streaming {
                return Err(Error::config(
                    path,
                    None,
                    "trigger only applies with \"mode\": \"streaming\"",
                ));
            }
            settings.trigger = Trigger::parse(&value).map_err(|m| Error::config(path, None, m))?;
        }
        if let Some((path, value)) = checkpoint {
            match value {
                Value::String(dir) if !dir.trim().is_empty() => {
                    settings.checkpoint_location = Some(dir)
                }
                _ => {
                    return Err(Error::config(
                        path,
                        None,
                        "checkpointLocation must be a directory path",
                    ))
                }
            }
        }
        Ok(settings)
    }

    /// Checks the scheduling and retry keys.
    fn check_operations(&self) -> Result<()> {
        self.cron_schedule()?;
        self.stream_settings()?;
        if self.schedule.is_some() && self.mode != Mode::Batch {
            return Err(Error::config(
                "schedule",
                None,
                "only batch pipelines can be scheduled",
            ));
        }
        let backoff = &self.retry_backoff;
        if backoff.initial_ms == 0 {
            return Err(Error::config(
                "retryBackoff.initialMs",
                None,
                "must be at least 1",
            ));
        }
        if backoff.max_ms < backoff.initial_ms {
            return Err(Error::config(
                "retryBackoff.maxMs",
                None,
                "must not be less than initialMs",
            ));
        }
        Ok(())
    }
}

/// The longest pipeline name: it becomes part of file names (state files)
/// and Delta transaction ids.
const MAX_NAME_CHARS: usize = 100;

/// A pipeline name goes into the history table, file names and Delta
/// transaction ids (`dataflow/<pipeline>/...`): printable characters only,
/// no path separators, no surrounding spaces.
fn check_pipeline_name(name: &str) -> Result<()> {
    let bad = name
        .chars()
        .find(|&c| c.is_control() || c == '/' || c == '\\');
    let problem = if let Some(c) = bad {
        format!("contains {c:?}")
    } else if name.trim() != name {
        "starts or ends with a space".to_string()
    } else if name.chars().count() > MAX_NAME_CHARS {
        format!("is longer than {MAX_NAME_CHARS} characters")
    } else {
        return Ok(());
    };
    Err(Error::config(
        "name",
        None,
        format!(
            "{name:?} {problem}: a pipeline name is at most {MAX_NAME_CHARS} printable \
             characters (letters, digits, spaces, punctuation such as - _ .), without \
             / or \\ or control characters"
        ),
    ))
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<PipelineSpec> {
        PipelineSpec::load(text, &[], &no_env)
    }

    fn config_path(err: Error) -> String {
        match err {
            Error::Config { path, .. } => path,
            other => panic!("expected a config error, got {other}"),
        }
    }

    const OK: &str = r#"{"name": "p", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "a.csv", "registerAs": "a", "cache": true}},
        {"type": "load", "method": "toConsole", "config": {}}]}"#;

    #[test]
    fn parses_steps_and_common_keys() {
        let spec = load(OK).unwrap();
        assert_eq!(spec.mode, Mode::Batch);
        let infos = spec.step_infos().unwrap();
        assert_eq!(infos[0].step.name.as_deref(), Some("a"));
        assert!(infos[0].cache);
        assert_eq!(infos[0].config.len(), 1);
        assert_eq!(infos[1].kind, StepKind::Load);
    }

    #[test]
    fn reports_json_paths() {
        let cases = [
            (r#"{"name": "p", "steps": [], "extra": 1}"#, "extra"),
            (
                r#"{"name": "p", "steps": [{"type": "bogus", "method": "x"}]}"#,
                "steps[0].type",
            ),
            (
                r#"{"name": "p", "steps": [{"type": "load", "method": "x", "confg": {}}]}"#,
                "steps[0].confg",
            ),
            (r#"{"name": "p", "steps": []}"#, "steps"),
            (r#"{"name": "", "steps": []}"#, "name"),
            (r#"{"name": "a/b", "steps": []}"#, "name"),
            (r#"{"name": "a\nb", "steps": []}"#, "name"),
            (r#"{"name": "a\u001b[31m", "steps": []}"#, "name"),
            (r#"{"name": " a", "steps": []}"#, "name"),
            (r#"{"name": "p", "mode": "bulk", "steps": []}"#, "mode"),
            (
                r#"{"name": "p", "overlap": "wait", "steps": []}"#,
                "overlap",
            ),
            (r#"{"name": "p", "catchUp": "all", "steps": []}"#, "catchUp"),
            (r#"{"name": "p", "retries": -1, "steps": []}"#, "retries"),
            (
                r#"{"name": "p", "retryBackoff": {"initial": 1}, "steps": []}"#,
                "retryBackoff.initial",
            ),
            (
                r#"{"name": "p", "steps": [{"type": "extract", "method": "x", "config": {"registerAs": "1a"}}, {"type": "load", "method": "y"}]}"#,
                "steps[0].config.registerAs",
            ),
            (
                r#"{"name": "p", "steps": [{"type": "load", "method": "y", "config": {"cache": "yes"}}]}"#,
                "steps[0].config.cache",
            ),
        ];
        for (text, path) in cases {
            assert_eq!(config_path(load(text).unwrap_err()), path, "{text}");
        }
    }

    fn with_keys(keys: &str) -> Result<PipelineSpec> {
        load(&OK.replacen(
            "{\"name\": \"p\",",
            &format!("{{\"name\": \"p\", {keys},"),
            1,
        ))
    }

    #[test]
    fn checks_schedule_and_retry_keys() {
        let cases = [
            (r#""schedule": "61 * * * *""#, "schedule"),
            (r#""schedule": "* * *""#, "schedule"),
            (
                r#""schedule": "* * * * *", "timezone": "Mars/Base""#,
                "timezone",
            ),
            (r#""timezone": "UTC""#, "timezone"),
            (
                r#""retryBackoff": {"initialMs": 0}"#,
                "retryBackoff.initialMs",
            ),
            (
                r#""retryBackoff": {"initialMs": 10, "maxMs": 5}"#,
                "retryBackoff.maxMs",
            ),
        ];
        for (keys, path) in cases {
            assert_eq!(config_path(with_keys(keys).unwrap_err()), path, "{keys}");
        }
        let spec = with_keys(
            r#""schedule": "*/5 * * * * *", "timezone": "Europe/Paris", "overlap": "queue", "catchUp": "once", "retries": 3"#,
        )
        .unwrap();
        assert!(spec.cron_schedule().unwrap().is_some());
        assert_eq!(spec.overlap, Overlap::Queue);
        assert_eq!(spec.catch_up, CatchUp::Once);
        assert_eq!(spec.retries, 3);
        assert_eq!(spec.retry_backoff, Backoff::default());
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let path = config_path(load("{\"name\": \n 'x'}").unwrap_err());
        assert_eq!(path, "line 2 column 2");
    }

    #[test]
    fn typed_parse_names_inner_path() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Cfg {
            path: String,
        }
        let spec = load(OK).unwrap();
        let mut info = spec.step_infos().unwrap().remove(0);
        info.config.insert("pth".into(), Value::from(1));
        let err = info.parse::<Cfg>().unwrap_err();
        assert!(err.to_string().contains("unknown field `pth`"), "{err}");
        assert_eq!(config_path(err), "steps[0].config.pth");
    }
}
