//! Keeping a Delta table healthy: compaction of small files (delta-rs's
//! optimize) and removal of files no version needs any more (vacuum), as
//! commands and, for long-running writers, every N commits or T time.
//!
//! A stream runs its upkeep in its own process, between its own commits,
//! so compaction never races the stream's writes: nothing to conflict.

use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dataflow_engine::spec::{StepInfo, StorageOptions};
use serde::Deserialize;

use super::open_existing;
use crate::error::{ConnectorError, Result};

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Small files rewritten.
    pub removed: u64,
    /// Files written in their place.
    pub added: u64,
    /// The table's version after.
    pub version: u64,
}

/// What a vacuum did (or would do, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    /// The files deleted (or that would be).
    pub files: Vec<String>,
    /// A dry run deleted nothing.
    pub dry_run: bool,
}

/// Compacts the small files of the table at `path` into files of about
/// `target_size` bytes (delta-rs's default: 100 MiB).
pub async fn optimize(
    storage: &StorageOptions,
    path: &str,
    target_size: Option<u64>,
) -> Result<Compacted> {
    let table = existing(storage, path).await?;
    let mut builder = table.optimize();
    if let Some(size) = target_size.and_then(NonZeroU64::new) {
        builder = builder.with_target_size(size);
    }
    let (table, metrics) = builder.await?;
    Ok(Compacted {
        removed: metrics.num_files_removed,
        added: metrics.num_files_added,
        version: table.version().unwrap_or_default(),
    })
}

/// Deletes the files of the table at `path` that no version of the last
/// `retention` (default: the table's `delta.deletedFileRetentionDuration`,
/// 7 days) needs. A retention shorter than the table's is refused.
pub async fn vacuum(
    storage: &StorageOptions,
    path: &str,
    retention: Option<Duration>,
    dry_run: bool,
) -> Result<Vacuumed> {
    let table = existing(storage, path).await?;
    let mut builder = table
        .vacuum()
        .with_dry_run(dry_run)
        .with_enforce_retention_duration(true);
    if let Some(retention) = retention {
        let retention = chrono::Duration::from_std(retention)
            .map_err(|_| ConnectorError::Rejected("the retention is too long".into()))?;
        builder = builder.with_retention_period(retention);
    }
    let (_, metrics) = builder.await?;
    Ok(Vacuumed {
        files: metrics.files_deleted,
        dry_run: metrics.dry_run,
    })
}

async fn existing(storage: &StorageOptions, path: &str) -> Result<deltalake::DeltaTable> {
    open_existing(storage, path, None)
        .await?
        .ok_or_else(|| ConnectorError::Rejected(format!("there is no Delta table at \"{path}\"")))
}

/// `toDeltaLake`'s `optimize` / `vacuum`: when a long-running writer runs
/// them after its commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct EveryConfig {
    /// After every this many commits of the table.
    every_commits: Option<u64>,
    /// Or once this much time passed, e.g. `"1 hour"`.
    interval: Option<String>,
    /// vacuum: keep files versions of the last this many hours need
    /// (default and minimum: the table's retention, 7 days).
    retention_hours: Option<f64>,
}

/// When to run one upkeep operation.
#[derive(Debug)]
pub(crate) struct Every {
    commits: Option<u64>,
    interval: Option<Duration>,
    retention: Option<Duration>,
    last: Mutex<Instant>,
}

impl Every {
    /// From the config at `key` of `info`.
    pub(crate) fn parse(
        info: &StepInfo,
        key: &str,
        config: &EveryConfig,
    ) -> dataflow_engine::Result<Every> {
        let interval = match &config.interval {
            None => None,
            Some(text) => Some(dataflow_engine::spec::parse_duration(text).ok_or_else(|| {
                info.error(
                    key,
                    format!("interval \"{text}\" is not a duration such as \"1 hour\""),
                )
            })?),
        };
        if config.every_commits == Some(0) {
            return Err(info.error(key, "everyCommits must be at least 1"));
        }
        if config.every_commits.is_none() && interval.is_none() {
            return Err(info.error(
                key,
                "say when: everyCommits (e.g. 100) and/or interval (e.g. \"1 hour\")",
            ));
        }
        let retention = match config.retention_hours {
            Some(hours) if key != "vacuum" => {
                let _ = hours;
                return Err(info.error(key, "retentionHours applies to vacuum only"));
            }
            Some(hours) if !(hours >= 0.0 && hours.is_finite()) => {
                return Err(info.error(key, "retentionHours must be a number of hours ≥ 0"))
            }
            Some(hours) => Some(Duration::from_secs_f64(hours * 3600.0)),
            None => None,
        };
        Ok(Every {
            commits: config.every_commits,
            interval,
            retention,
            last: Mutex::new(Instant::now()),
        })
    }

    /// Whether it is due after the commit of `version`; if so, it counts as
    /// run from now.
    fn due(&self, version: u64) -> bool {
        let by_commits = self
            .commits
            .is_some_and(|n| version > 0 && version.is_multiple_of(n));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let by_time = self.interval.is_some_and(|i| last.elapsed() >= i);
        if by_commits || by_time {
            *last = Instant::now();
        }
        by_commits || by_time
    }
}

/// A writer's upkeep schedule.
#[derive(Debug, Default)]
pub(crate) struct Upkeep {
    pub optimize: Option<Every>,
    pub vacuum: Option<Every>,
}

impl Upkeep {
    /// Runs what is due after the writer committed `version` of the table
    /// at `path`. A failure is logged, never the writer's: its batch is
    /// committed, and the next due time tries again.
    pub(crate) async fn after_commit(
        &self,
        storage: &StorageOptions,
        path: &str,
        version: u64,
        target_size: Option<u64>,
    ) {
        if self.optimize.as_ref().is_some_and(|e| e.due(version)) {
            match optimize(storage, path, target_size).await {
                Ok(done) => tracing::info!(
                    "compacted the Delta table at \"{path}\": {} small files into {} (version {})",
                    done.removed,
                    done.added,
                    done.version
                ),
                Err(e) => tracing::warn!("compacting the Delta table at \"{path}\" failed: {e}"),
            }
        }
        if let Some(vacuum_every) = self.vacuum.as_ref().filter(|e| e.due(version)) {
            match vacuum(storage, path, vacuum_every.retention, false).await {
                Ok(done) => tracing::info!(
                    "vacuumed the Delta table at \"{path}\": {} files deleted",
                    done.files.len()
                ),
                Err(e) => tracing::warn!("vacuuming the Delta table at \"{path}\" failed: {e}"),
            }
        }
    }
}
