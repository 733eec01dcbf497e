//! Source positions kept in a local JSON file, for pipelines whose sinks
//! cannot record them atomically with the data (files, console). The file is
//! replaced atomically (write to a temporary file, fsync, rename), so it
//! always holds the positions of the last run that committed: at-least-once
//! delivery, where a crash between the sinks' commit and the rename repeats
//! that run's range.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One source's positions (source key → version) under a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The file for the source whose marks are scoped `scope`
    /// (`dataflow/<pipeline>/<step>`) under `dir`.
    pub fn new(dir: &Path, scope: &str) -> Self {
        let name: String = scope
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        StateFile {
            path: dir.join(format!("{name}.json")),
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded positions; empty when the file does not exist yet.
    pub fn load(&self) -> Result<BTreeMap<String, i64>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.io_error("reading", e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            self.io_error(
                "reading",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Records `marks` (replacing earlier values of the same keys) atomically.
    pub fn store(&self, marks: &[(String, i64)]) -> Result<()> {
        let mut all = self.load()?;
        all.extend(marks.iter().cloned());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer_pretty(&mut file, &all)?;
            file.write_all(b"\n")?;
            file.as_file().sync_all()?;
            file.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| self.io_error("writing", e))
    }

    fn io_error(&self, doing: &str, source: std::io::Error) -> Error {
        Error::Io {
            context: format!("{doing} the state file {}", self.path.display()),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads_marks_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path(), "dataflow/sync job/customers");
        assert_eq!(
            file.path().file_name().unwrap(),
            "dataflow_sync_job_customers.json"
        );
        assert!(file.load().unwrap().is_empty());
        file.store(&[("id".into(), 7), ("ts".into(), 1)]).unwrap();
        file.store(&[("id".into(), 9)]).unwrap();
        let marks = file.load().unwrap();
        assert_eq!(marks.get("id"), Some(&9));
        assert_eq!(marks.get("ts"), Some(&1));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path(), "s");
        std::fs::write(file.path(), "{not json").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("s.json"), "{err}");
    }
}
