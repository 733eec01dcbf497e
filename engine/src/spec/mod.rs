//! The pipeline config, parsed once when it is loaded: `--set` and `${ENV}`
//! applied, every key checked (errors name the JSON path), and the values
//! other layers need (trigger, schedule, offset log directory, step infos)
//! turned into the validated [`PipelineSpec`]. A leaf: it imports nothing
//! from the planning, running or operating layers.

mod memory_limit;
mod overrides;
mod raw;
mod schedule;
mod secrets;
mod step;
mod storage;
mod storage_level;
mod trigger;

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::secret::SecretStore;
pub use memory_limit::MemoryLimit;
pub use overrides::{apply_set, EnvValues};
use raw::RawPipeline;
pub use schedule::CronSchedule;
pub use secrets::Credentials;
use secrets::Fetched;
pub use step::StepInfo;
pub use storage::{parse_location, StorageOptions, SCHEMES};
pub use storage_level::StorageLevel;
pub use trigger::parse_duration;
pub use trigger::Trigger;

/// A validated pipeline: what its JSON file says, checked and parsed.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Pipeline name, used in summaries and logs.
    pub name: String,
    /// `batch` (run once) or `streaming`.
    pub mode: Mode,
    /// Free text for humans.
    pub description: Option<String>,
    /// The steps, in order, with their common keys (`registerAs`, `cache`)
    /// split from their method-specific config.
    pub steps: Vec<StepInfo>,
    /// When `run-pipeline schedule` runs this pipeline: `schedule` (a cron
    /// expression with 5 fields, or 6 with a leading seconds field) read in
    /// `timezone` (UTC when absent).
    pub schedule: Option<CronSchedule>,
    /// What a schedule slot does while the previous run is still going.
    pub overlap: Overlap,
    /// What `run-pipeline schedule` does on start for slots missed while it
    /// was not running.
    pub catch_up: CatchUp,
    /// How many times a run that failed for a transient reason (connection
    /// refused, timeout, throttling, commit conflict) is retried; permanent
    /// failures are never retried.
    pub retries: u32,
    /// The delays between retries.
    pub retry_backoff: Backoff,
    /// Streaming: when micro-batches run; written at the top level or in a
    /// load step's config, where the Spark app wrote it.
    pub trigger: Trigger,
    /// `checkpointLocation`: reading a resumable source (fromKafka) into
    /// sinks that cannot record source positions in their own commit (files,
    /// console), in streaming or batch mode: the directory of the offset
    /// log, written after the loads commit. Top level or a load step.
    pub checkpoint_location: Option<String>,
    /// `outputMode` (Spark's): what a streaming aggregation writes each
    /// micro-batch. Top level or a load step.
    pub output_mode: OutputMode,
    /// `memoryLimit`: the most memory a run may use, e.g. `"2GB"`; joins,
    /// sorts and aggregations spill to disk beyond it. `--memory-limit`
    /// overrides it; default: 75% of the machine's memory.
    pub memory_limit: Option<MemoryLimit>,
    /// Where operators spill (`--spill-dir`; not a config key): the system
    /// temp dir when absent.
    pub spill_dir: Option<std::path::PathBuf>,
    /// `storage`: object-store options per bucket, container or account
    /// (object_store's option names); stores not named use the default
    /// credential chains.
    pub storage: StorageOptions,
    /// The strings that came from environment variables or Vault: messages
    /// about them show the `${VAR}` written, never the value.
    pub env_values: EnvValues,
}

/// Spark's `outputMode`: which rows of a streaming aggregation each
/// micro-batch writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputMode {
    /// Each result row once, final: a window's row when the watermark
    /// passes its end. Needs a watermark when the stream is aggregated.
    #[default]
    Append,
    /// The result rows the micro-batch changed (into Delta: a merge on the
    /// group keys).
    Update,
    /// The whole result, every micro-batch (into Delta: an overwrite).
    Complete,
}

impl OutputMode {
    /// `"append"`, `"update"` or `"complete"`, in any case.
    pub fn parse(value: &serde_json::Value) -> std::result::Result<OutputMode, String> {
        match value.as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("append") => Ok(OutputMode::Append),
            Some("update") => Ok(OutputMode::Update),
            Some("complete") => Ok(OutputMode::Complete),
            _ => Err("outputMode must be \"append\", \"update\" or \"complete\"".into()),
        }
    }
}

impl fmt::Display for OutputMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputMode::Append => "append",
            OutputMode::Update => "update",
            OutputMode::Complete => "complete",
        })
    }
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

impl PipelineSpec {
    /// Parses and validates a pipeline from JSON text, applying `--set`
    /// overrides first and `${VAR}` substitution second. A config naming a
    /// Vault secret needs [`PipelineSpec::load_with_secrets`].
    pub fn load(text: &str, sets: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        Self::from_value(Self::read(text, sets)?, env, &Fetched::default())
    }

    /// [`PipelineSpec::load`], reading every secret the config names
    /// (`${vault:PATH#KEY}`, `credentialPath`) from `store`, each path once.
    /// A secret that cannot be read is a config error at the JSON path of
    /// its first use.
    pub async fn load_with_secrets(
        text: &str,
        sets: &[String],
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        store: &dyn SecretStore,
    ) -> Result<Self> {
        let value = Self::read(text, sets)?;
        let fetched = Fetched::read(&value, env, store).await?;
        Self::from_value(value, env, &fetched)
    }

    /// The JSON text with the `--set` overrides applied.
    fn read(text: &str, sets: &[String]) -> Result<Value> {
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
        Ok(value)
    }

    /// Substitutes references, merges credentials, then types and checks.
    fn from_value(
        mut value: Value,
        env: &dyn Fn(&str) -> Option<String>,
        fetched: &Fetched,
    ) -> Result<Self> {
        let (expanded, credentials) = secrets::resolve(&mut value, env, fetched)?;
        let env_values = EnvValues::new(expanded);
        let raw: RawPipeline = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let path = if path == "." { "$".to_string() } else { path };
            let message = env_values.redact(&path, &err.into_inner().to_string());
            Error::config(path, None, message)
        })?;
        Self::validate(raw, &env_values, &credentials).map_err(|err| env_values.redact_error(err))
    }

    /// Checks what needs no connector (names, steps, scheduling, retry and
    /// streaming keys) and parses it into the validated model.
    fn validate(
        raw: RawPipeline,
        env_values: &EnvValues,
        credentials: &BTreeMap<usize, Credentials>,
    ) -> Result<Self> {
        check_pipeline_name(&raw.name)?;
        check_has_steps(&raw)?;
        let schedule = match &raw.schedule {
            Some(expr) => Some(CronSchedule::parse(expr, raw.timezone.as_deref())?),
            None if raw.timezone.is_some() => {
                return Err(Error::config(
                    "timezone",
                    None,
                    "timezone only applies to a schedule; add \"schedule\"",
                ))
            }
            None => None,
        };
        let (trigger, checkpoint_location, output_mode) = raw.stream_settings()?;
        check_operations(&raw)?;
        let storage = StorageOptions::parse(&raw.storage)?;
        let steps = raw.step_infos(env_values, credentials, &storage)?;
        check_steps(&steps)?;
        Ok(PipelineSpec {
            name: raw.name,
            mode: raw.mode,
            description: raw.description,
            steps,
            schedule,
            overlap: raw.overlap,
            catch_up: raw.catch_up,
            retries: raw.retries,
            retry_backoff: raw.retry_backoff,
            trigger,
            checkpoint_location,
            output_mode,
            memory_limit: raw.memory_limit,
            spill_dir: None,
            storage,
            env_values: env_values.clone(),
        })
    }
}

/// A pipeline has steps, and at least one of them loads.
fn check_has_steps(raw: &RawPipeline) -> Result<()> {
    if raw.steps.is_empty() {
        return Err(Error::config(
            "steps",
            None,
            "a pipeline needs at least one step",
        ));
    }
    if !raw.steps.iter().any(|s| s.kind == StepKind::Load) {
        return Err(Error::config(
            "steps",
            None,
            "a pipeline needs at least one load step (toDeltaLake, toFiles, toConsole, ...)",
        ));
    }
    Ok(())
}

/// Only batch pipelines are scheduled; retry delays are sane.
fn check_operations(raw: &RawPipeline) -> Result<()> {
    if raw.schedule.is_some() && raw.mode != Mode::Batch {
        return Err(Error::config(
            "schedule",
            None,
            "only batch pipelines can be scheduled",
        ));
    }
    let backoff = &raw.retry_backoff;
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

/// `input` only where it means something; `registerAs` names valid,
/// unique, and only on steps that produce a relation.
fn check_steps(steps: &[StepInfo]) -> Result<()> {
    let mut names = HashSet::new();
    for info in steps {
        let at = |key: &str| format!("steps[{}].{key}", info.step.index);
        let fail = |key: &str, message: String| {
            Err(Error::config(at(key), Some(info.step.clone()), message))
        };
        if info.kind == StepKind::Extract && info.input.is_some() {
            return fail(
                "input",
                "an extract step reads from its source, it takes no input".into(),
            );
        }
        let Some(name) = &info.step.name else {
            continue;
        };
        if info.kind == StepKind::Load {
            return fail(
                "config.registerAs",
                "a load step produces no relation to register".into(),
            );
        }
        if !is_identifier(name) {
            return fail(
                "config.registerAs",
                format!("\"{name}\" is not a valid name: use letters, digits and _, not starting with a digit"),
            );
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return fail(
                "config.registerAs",
                format!("\"{name}\" is already registered by an earlier step"),
            );
        }
    }
    Ok(())
}

/// The longest pipeline name: it becomes part of file names (offset logs)
/// and Delta transaction ids.
const MAX_NAME_CHARS: usize = 100;

/// A pipeline name goes into the history table, file names and Delta
/// transaction ids (`dataflow/<pipeline>/...`): printable characters only,
/// no path separators, no surrounding spaces.
fn check_pipeline_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(Error::config("name", None, "name must not be empty"));
    }
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
    use std::time::Duration;

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
        let infos = &spec.steps;
        assert_eq!(infos[0].step.name.as_deref(), Some("a"));
        assert_eq!(infos[0].cache, Some(StorageLevel::Memory));
        assert_eq!(infos[1].cache, None);
        assert_eq!(infos[0].config.len(), 1);
        assert_eq!(infos[1].kind, StepKind::Load);
    }

    #[test]
    fn output_modes_are_read_and_stateful_ones_need_streaming() {
        let with = |pipeline_mode: &str, mode: &str| {
            load(&format!(
                r#"{{"name": "p", "mode": "{pipeline_mode}", "steps": [
                {{"type": "extract", "method": "fromKafka", "config": {{}}}},
                {{"type": "load", "method": "toDeltaLake", "config": {{"outputMode": "{mode}", "path": "t"}}}}]}}"#
            ))
        };
        let spec = with("streaming", "Update").unwrap();
        assert!(!spec.steps[1].config.contains_key("outputMode"));
        assert_eq!(spec.output_mode, OutputMode::Update);
        assert_eq!(
            with("streaming", "complete").unwrap().output_mode,
            OutputMode::Complete
        );
        assert_eq!(
            with("batch", "append").unwrap().output_mode,
            OutputMode::Append
        );
        for (pipeline_mode, mode, says) in [
            ("streaming", "sideways", "must be"),
            ("batch", "update", "streaming aggregations"),
        ] {
            match with(pipeline_mode, mode).unwrap_err() {
                Error::Config { path, message, .. } => {
                    assert_eq!(path, "steps[1].config.outputMode");
                    assert!(message.contains(says), "{message}");
                }
                other => panic!("expected a config error, got {other}"),
            }
        }
    }

    #[test]
    fn cache_storage_level_takes_spark_names_and_strings() {
        let step = |config: &str| {
            let text = format!(
                r#"{{"name": "p", "steps": [{{"type": "extract", "method": "fromFiles", "config": {config}}},
                {{"type": "load", "method": "toConsole", "config": {{}}}}]}}"#
            );
            load(&text).map(|spec| spec.steps[0].cache)
        };
        let cached = r#"{"cache": true, "cacheStorageLevel": "MEMORY_AND_DISK_SER"}"#;
        assert_eq!(step(cached).unwrap(), Some(StorageLevel::MemoryAndDisk));
        let as_string = r#"{"cache": "true", "cacheStorageLevel": "MEMORY_ONLY"}"#;
        assert_eq!(step(as_string).unwrap(), Some(StorageLevel::Memory));
        let not_cached = r#"{"cache": false, "cacheStorageLevel": "DISK_ONLY"}"#;
        assert_eq!(step(not_cached).unwrap(), None);
        match step(r#"{"cache": true, "cacheStorageLevel": "SSD"}"#).unwrap_err() {
            Error::Config { path, message, .. } => {
                assert_eq!(path, "steps[0].config.cacheStorageLevel");
                assert!(message.contains("unknown storage level"), "{message}");
            }
            other => panic!("expected a config error, got {other}"),
        }
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
                r#"{"name": "p", "memoryLimit": "lots", "steps": []}"#,
                "memoryLimit",
            ),
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
            r#""schedule": "*/5 * * * * *", "timezone": "Europe/Paris", "overlap": "queue", "catchUp": "once", "retries": 3, "memoryLimit": "2GB""#,
        )
        .unwrap();
        assert!(spec.schedule.is_some());
        assert_eq!(spec.overlap, Overlap::Queue);
        assert_eq!(spec.catch_up, CatchUp::Once);
        assert_eq!(spec.retries, 3);
        assert_eq!(spec.memory_limit.map(MemoryLimit::bytes), Some(2 << 30));
        assert_eq!(spec.retry_backoff, Backoff::default());
    }

    #[test]
    fn parses_streaming_keys_once_at_load() {
        let text = r#"{"name": "p", "mode": "streaming", "steps": [
            {"type": "extract", "method": "fromKafka", "config": {}},
            {"type": "load", "method": "toFiles", "config": {"trigger": "5 seconds", "checkpointLocation": "ckpt", "path": "out"}}]}"#;
        let spec = load(text).unwrap();
        assert_eq!(
            spec.trigger,
            Trigger::ProcessingTime(Duration::from_secs(5))
        );
        assert_eq!(spec.checkpoint_location.as_deref(), Some("ckpt"));
        let keys: Vec<&String> = spec.steps[1].config.keys().collect();
        assert_eq!(keys, ["path"]);
        let batch = text.replace("\"streaming\"", "\"batch\"");
        assert_eq!(
            config_path(load(&batch).unwrap_err()),
            "steps[1].config.trigger"
        );
        let twice = text.replace("\"steps\"", "\"trigger\": \"once\", \"steps\"");
        let err = load(&twice).unwrap_err();
        assert!(err.to_string().contains("already set at trigger"), "{err}");
        assert_eq!(config_path(err), "steps[1].config.trigger");
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
        let mut info = spec.steps[0].clone();
        info.config.insert("pth".into(), Value::from(1));
        let err = info.parse::<Cfg>().unwrap_err();
        assert!(err.to_string().contains("unknown field `pth`"), "{err}");
        assert_eq!(config_path(err), "steps[0].config.pth");
    }
}
