//! `saveMode`, shared by every sink that writes to a location.

use serde::Deserialize;

/// What to do when the target already holds data (Spark's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SaveMode {
    /// Add to what is there.
    Append,
    /// Replace what is there, atomically.
    Overwrite,
    /// Fail if the target exists (Spark's default).
    #[default]
    #[serde(alias = "error", alias = "errorifexists")]
    ErrorIfExists,
    /// Do nothing if the target exists.
    Ignore,
    /// Upsert by key (Delta only): update matched rows, insert new ones,
    /// delete matched rows meeting a condition.
    Merge,
}
