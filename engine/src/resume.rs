//! Resuming a source: where a run starts reading it, the positions the run
//! reaches, and where those positions are kept between runs.
//!
//! A source with resume keys (a Kafka partition, a Postgres
//! `incrementalColumn`) resumes from the positions its pipeline's sinks
//! recorded in their own commits ([`resume_point`]; Delta `txn` actions).
//! When no sink can record them, they live in the source's [`OffsetLog`]
//! under `checkpointLocation` (or the source's own directory, such as
//! fromPostgres's `stateDir`), stored after every load committed
//! (at-least-once: a crash between the commits and the store repeats that
//! run's range).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::execution::context::SessionContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::{Error as ObjectStoreError, ObjectStoreExt, PutPayload};

use crate::connector::{Mark, Resume, Sink, Source};
use crate::error::{Error, Result, StepRef};
use crate::storage::Location;

/// An opened source and the positions this run will reach in it.
#[derive(Debug)]
pub struct OpenedSource {
    /// The extract step.
    pub step: StepRef,
    /// The source.
    pub source: Arc<dyn Source>,
    /// Prefix of this source's mark app ids, `dataflow/<pipeline>/<step>`.
    scope: String,
    /// Source key → position reached by this run.
    pub marks: Vec<(String, i64)>,
    /// Source key → position this run started from (absent: the start).
    pub start: HashMap<String, i64>,
    /// The offset log to store [`marks`](Self::marks) in after the loads
    /// commit, when no sink records this source's positions.
    pub(crate) offset_log: Option<OffsetLog>,
}

/// A source's table for one run, and the positions it reads between.
pub(crate) struct OpenedTable {
    /// The table.
    pub table: Arc<dyn TableProvider>,
    /// Key → position reached.
    pub marks: Vec<(String, i64)>,
    /// Key → position started from.
    pub start: HashMap<String, i64>,
    /// Where the positions reached are stored after the commit, if the
    /// sinks do not record them.
    pub offset_log: Option<OffsetLog>,
}

impl OpenedTable {
    /// A table read whole (no positions).
    pub fn whole(table: Arc<dyn TableProvider>) -> Self {
        OpenedTable {
            table,
            marks: Vec::new(),
            start: HashMap::new(),
            offset_log: None,
        }
    }
}

impl OpenedSource {
    /// `source` of extract step `step` in pipeline `pipeline`, not opened yet.
    pub(crate) fn new(step: StepRef, source: Arc<dyn Source>, pipeline: &str) -> Self {
        let label = step
            .name
            .clone()
            .unwrap_or_else(|| format!("steps[{}]", step.index));
        OpenedSource {
            scope: format!("dataflow/{pipeline}/{label}"),
            step,
            source,
            marks: Vec::new(),
            start: HashMap::new(),
            offset_log: None,
        }
    }

    /// The globally unique app id of one of this source's keys.
    pub(crate) fn app_id(&self, key: &str) -> String {
        format!("{}/{key}", self.scope)
    }

    /// Opens the source at `resume`.
    pub(crate) async fn open(&self, ctx: &SessionContext, resume: Resume) -> Result<OpenedTable> {
        let opened = self
            .source
            .open(&ctx.state(), &resume)
            .await
            .map_err(|e| Error::from_connector(&self.step, e))?;
        let mut start = resume.marks;
        start.extend(opened.start);
        Ok(OpenedTable {
            table: opened.provider,
            marks: opened.marks,
            start,
            offset_log: None,
        })
    }

    /// Takes what opening it for this run gave: the positions it reaches.
    pub(crate) fn opened(&mut self, table: OpenedTable) -> Arc<dyn TableProvider> {
        self.marks = table.marks;
        self.start = table.start;
        self.offset_log = table.offset_log;
        table.table
    }

    /// The positions this run reaches, as marks to commit with the data.
    pub(crate) fn reached(&self) -> impl Iterator<Item = Mark> + '_ {
        self.marks.iter().map(|(key, version)| Mark {
            app_id: self.app_id(key),
            version: *version,
        })
    }

    /// Where this run started reading each key of [`reached`](Self::reached)
    /// (keys read from the source's beginning are absent).
    pub(crate) fn started(&self) -> impl Iterator<Item = Mark> + '_ {
        self.marks.iter().filter_map(|(key, _)| {
            Some(Mark {
                app_id: self.app_id(key),
                version: *self.start.get(key)?,
            })
        })
    }

    /// After every load committed: tells the source, and stores the
    /// positions in the offset log when there is one.
    pub(crate) async fn committed(&self) -> Result<()> {
        if self.marks.is_empty() {
            return Ok(());
        }
        self.source
            .committed(&self.marks)
            .await
            .map_err(|e| Error::from_connector(&self.step, e))?;
        if let Some(log) = &self.offset_log {
            log.store(&self.marks).await?;
        }
        Ok(())
    }
}

/// Where `source` resumes: from its sinks ([`resume_point`]), else from its
/// offset log under the source's own directory or `checkpoint`, if either
/// is set (returned, to be stored after the commit), on `runtime`'s stores.
pub(crate) async fn resume_with_log(
    source: &OpenedSource,
    sinks: &[Arc<dyn Sink>],
    checkpoint: Option<&str>,
    runtime: &RuntimeEnv,
) -> Result<(Resume, Option<OffsetLog>)> {
    let mut resume = resume_point(source, sinks).await?;
    if resume.recorded_by_sinks {
        return Ok((resume, None));
    }
    let dir = source.source.offset_log_dir();
    let Some(dir) = dir.as_deref().or(checkpoint) else {
        return Ok((resume, None));
    };
    let log = OffsetLog::new(&Location::resolve(runtime, dir)?, &source.scope);
    resume.marks = log.load().await?.into_iter().collect();
    resume.offset_log = true;
    Ok((resume, Some(log)))
}

/// Asks every sink where `source` left off: per key, the lowest version any
/// mark-recording sink holds (so no sink misses data); a key some such sink
/// lacks is absent (start from the beginning). When the sinks disagree,
/// `until` bounds the run to the next recorded position (see below).
pub(crate) async fn resume_point(source: &OpenedSource, sinks: &[Arc<dyn Sink>]) -> Result<Resume> {
    let keys = source
        .source
        .resume_keys()
        .await
        .map_err(|e| Error::from_connector(&source.step, e))?;
    let mut resume = Resume::default();
    if keys.is_empty() {
        return Ok(resume);
    }
    let app_ids: Vec<String> = keys.iter().map(|k| source.app_id(k)).collect();
    // Per key, what each mark-recording sink holds (None: nothing).
    let mut recorded_by: HashMap<String, Vec<Option<i64>>> = HashMap::new();
    for sink in sinks {
        let recorded = sink
            .recorded_marks(&app_ids)
            .await
            .map_err(|e| Error::from_connector(&source.step, e))?;
        let Some(recorded) = recorded else { continue };
        resume.recorded_by_sinks = true;
        for (key, app_id) in keys.iter().zip(&app_ids) {
            recorded_by
                .entry(key.clone())
                .or_default()
                .push(recorded.get(app_id).copied());
        }
    }
    resume.marks = recorded_by
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), lowest(v)?)))
        .collect();
    resume.until = catch_up_bounds(&recorded_by);
    if !resume.until.is_empty() {
        tracing::info!(
            "{}: its sinks recorded different positions (a run stopped between their commits); this run catches up the sinks behind, reading up to {:?}",
            source.step,
            resume.until
        );
    }
    Ok(resume)
}

/// The lowest of the versions the sinks recorded; `None` if one lacks it.
fn lowest(versions: &[Option<i64>]) -> Option<i64> {
    versions
        .iter()
        .copied()
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()
}

/// Sinks commit one after another: a run that died between two commits
/// leaves some sinks a batch ahead. Then this run reads exactly up to the
/// next position some sink recorded (the batch the sinks ahead hold, which
/// they skip) and no further, so each sink either holds all of it or none.
/// Empty when all sinks agree.
fn catch_up_bounds(recorded_by: &HashMap<String, Vec<Option<i64>>>) -> HashMap<String, i64> {
    let diverged = recorded_by
        .values()
        .any(|v| v.iter().any(|version| *version != v[0]));
    if !diverged {
        return HashMap::new();
    }
    recorded_by
        .iter()
        .filter_map(|(key, versions)| {
            let low = lowest(versions);
            let next = versions
                .iter()
                .flatten()
                .copied()
                .filter(|v| low.is_none_or(|low| *v > low))
                .min();
            Some((key.clone(), next.or(low)?))
        })
        .collect()
}

/// One source's offset log: its positions (source key → version) in a JSON
/// file under a directory (`checkpointLocation`, or the source's own, such
/// as fromPostgres's `stateDir`; local or on an object store), replaced
/// whole after every commit (a rename locally, a single PUT on an object
/// store: readers see the old file or the new one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetLog {
    location: Location,
}

impl OffsetLog {
    /// The log of the source whose marks are scoped `scope`
    /// (`dataflow/<pipeline>/<step>`) under `dir`.
    pub fn new(dir: &Location, scope: &str) -> Self {
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
        OffsetLog {
            location: dir.child(&format!("{name}.json")),
        }
    }

    /// Where the file lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The recorded positions; empty when the file does not exist yet.
    pub async fn load(&self) -> Result<BTreeMap<String, i64>> {
        let Location { store, path, .. } = &self.location;
        let bytes = match store.get(path).await {
            Ok(got) => got.bytes().await,
            Err(ObjectStoreError::NotFound { .. }) => return Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
        .map_err(|e| self.io_error("reading", std::io::Error::other(e)))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.io_error(
                "reading",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Records `marks` (replacing earlier values of the same keys) atomically.
    pub async fn store(&self, marks: &[(String, i64)]) -> Result<()> {
        let mut all = self.load().await?;
        all.extend(marks.iter().cloned());
        let mut text = serde_json::to_vec_pretty(&all)
            .map_err(|e| self.io_error("writing", std::io::Error::other(e)))?;
        text.push(b'\n');
        let Location { store, path, .. } = &self.location;
        store
            .put(path, PutPayload::from(text))
            .await
            .map_err(|e| self.io_error("writing", std::io::Error::other(e)))?;
        Ok(())
    }

    fn io_error(&self, doing: &str, source: std::io::Error) -> Error {
        Error::Io {
            context: format!("{doing} the offset log {}", self.location.shown),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use datafusion::dataframe::DataFrame;
    use datafusion::execution::context::SessionState;

    use super::*;
    use crate::connector::{BoxError, Opened, SinkReport, WriteContext};

    /// A source with resume keys and, maybe, its own offset log directory.
    #[derive(Debug)]
    struct FakeSource {
        keys: Vec<&'static str>,
        own_dir: Option<String>,
    }

    #[async_trait]
    impl Source for FakeSource {
        async fn resume_keys(&self) -> Result<Vec<String>, BoxError> {
            Ok(self.keys.iter().map(|k| k.to_string()).collect())
        }

        fn offset_log_dir(&self) -> Option<String> {
            self.own_dir.clone()
        }

        async fn open(&self, _: &SessionState, _: &Resume) -> Result<Opened, BoxError> {
            Err("not opened in these tests".into())
        }
    }

    /// A sink that records marks (key → version) or, with `None`, cannot.
    #[derive(Debug)]
    struct FakeSink(Option<Vec<(&'static str, i64)>>);

    #[async_trait]
    impl Sink for FakeSink {
        async fn write(&self, _: DataFrame, _: WriteContext) -> Result<SinkReport, BoxError> {
            Err("not written in these tests".into())
        }

        async fn recorded_marks(
            &self,
            app_ids: &[String],
        ) -> Result<Option<HashMap<String, i64>>, BoxError> {
            let Some(recorded) = &self.0 else {
                return Ok(None);
            };
            let app_id = |key: &str| format!("dataflow/p/events/{key}");
            Ok(Some(
                recorded
                    .iter()
                    .map(|(key, version)| (app_id(key), *version))
                    .filter(|(app_id, _)| app_ids.contains(app_id))
                    .collect(),
            ))
        }
    }

    fn source(keys: &[&'static str]) -> OpenedSource {
        let step = StepRef {
            index: 0,
            method: "fake".into(),
            name: Some("events".into()),
        };
        let source = FakeSource {
            keys: keys.to_vec(),
            own_dir: None,
        };
        OpenedSource::new(step, Arc::new(source), "p")
    }

    fn sink(recorded: &[(&'static str, i64)]) -> Arc<dyn Sink> {
        Arc::new(FakeSink(Some(recorded.to_vec())))
    }

    fn no_marks_sink() -> Arc<dyn Sink> {
        Arc::new(FakeSink(None))
    }

    fn map(entries: &[(&str, i64)]) -> HashMap<String, i64> {
        entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[tokio::test]
    async fn sinks_that_agree_resume_where_they_recorded() {
        let sinks = [sink(&[("a", 5), ("b", 7)]), sink(&[("a", 5), ("b", 7)])];
        let resume = resume_point(&source(&["a", "b"]), &sinks).await.unwrap();
        assert!(resume.recorded_by_sinks);
        assert_eq!(resume.marks, map(&[("a", 5), ("b", 7)]));
        assert!(resume.until.is_empty(), "{:?}", resume.until);
    }

    #[tokio::test]
    async fn sinks_that_disagree_resume_from_the_lowest_up_to_the_next() {
        let sinks = [sink(&[("a", 30)]), sink(&[("a", 10)]), sink(&[("a", 20)])];
        let resume = resume_point(&source(&["a"]), &sinks).await.unwrap();
        assert_eq!(resume.marks, map(&[("a", 10)]));
        assert_eq!(resume.until, map(&[("a", 20)]));
    }

    #[tokio::test]
    async fn a_key_some_sink_lacks_starts_from_the_beginning() {
        let sinks = [sink(&[("a", 5), ("b", 9)]), sink(&[("b", 9)])];
        let resume = resume_point(&source(&["a", "b"]), &sinks).await.unwrap();
        assert_eq!(resume.marks, map(&[("b", 9)]));
        // Up to what the sink ahead holds, no further.
        assert_eq!(resume.until, map(&[("a", 5), ("b", 9)]));
    }

    #[tokio::test]
    async fn without_a_mark_recording_sink_nothing_is_recorded_by_sinks() {
        let resume = resume_point(&source(&["a"]), &[no_marks_sink()])
            .await
            .unwrap();
        assert!(!resume.recorded_by_sinks);
        assert!(resume.marks.is_empty());
        let sinks = [no_marks_sink(), sink(&[("a", 4)])];
        let resume = resume_point(&source(&["a"]), &sinks).await.unwrap();
        assert!(resume.recorded_by_sinks);
        assert_eq!(resume.marks, map(&[("a", 4)]));
        assert!(
            resume.until.is_empty(),
            "a sink without marks disagrees with none"
        );
    }

    #[tokio::test]
    async fn a_source_without_resume_keys_asks_no_sink() {
        let resume = resume_point(&source(&[]), &[sink(&[("a", 4)])])
            .await
            .unwrap();
        assert!(!resume.recorded_by_sinks);
        assert!(resume.marks.is_empty());
    }

    /// `dir` as a location on the local file system.
    fn local(dir: &std::path::Path) -> Location {
        Location::resolve(&RuntimeEnv::default(), dir.to_str().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_offset_log_is_read_only_when_no_sink_records() {
        let dir = tempfile::tempdir().unwrap();
        let events = source(&["a"]);
        OffsetLog::new(&local(dir.path()), &events.scope)
            .store(&[("a".into(), 3)])
            .await
            .unwrap();
        let runtime = RuntimeEnv::default();
        let checkpoint = dir.path().to_str();
        let (resume, log) = resume_with_log(&events, &[no_marks_sink()], checkpoint, &runtime)
            .await
            .unwrap();
        assert_eq!(resume.marks, map(&[("a", 3)]));
        assert!(log.is_some());
        let (resume, log) = resume_with_log(&events, &[sink(&[("a", 8)])], checkpoint, &runtime)
            .await
            .unwrap();
        assert_eq!(resume.marks, map(&[("a", 8)]));
        assert_eq!(log, None);
    }

    #[tokio::test]
    async fn a_source_with_its_own_offset_log_directory_uses_it() {
        let (own, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut events = source(&["a"]);
        events.source = Arc::new(FakeSource {
            keys: vec!["a"],
            own_dir: Some(own.path().to_str().unwrap().to_string()),
        });
        OffsetLog::new(&local(own.path()), &events.scope)
            .store(&[("a".into(), 12)])
            .await
            .unwrap();
        let runtime = RuntimeEnv::default();
        let (resume, log) = resume_with_log(&events, &[], checkpoint.path().to_str(), &runtime)
            .await
            .unwrap();
        assert_eq!(resume.marks, map(&[("a", 12)]));
        let shown = log.unwrap().location().shown.clone();
        assert!(shown.starts_with(own.path().to_str().unwrap()), "{shown}");
    }

    #[tokio::test]
    async fn stores_and_loads_marks_by_scope() {
        let dir = tempfile::tempdir().unwrap();
        let file = OffsetLog::new(&local(dir.path()), "dataflow/sync job/customers");
        assert!(!dir.path().join("dataflow_sync_job_customers.json").exists());
        assert!(file.load().await.unwrap().is_empty());
        file.store(&[("id".into(), 7), ("ts".into(), 1)])
            .await
            .unwrap();
        file.store(&[("id".into(), 9)]).await.unwrap();
        assert!(dir.path().join("dataflow_sync_job_customers.json").exists());
        let marks = file.load().await.unwrap();
        assert_eq!(marks.get("id"), Some(&9));
        assert_eq!(marks.get("ts"), Some(&1));
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = OffsetLog::new(&local(dir.path()), "s");
        std::fs::write(dir.path().join("s.json"), "{not json").unwrap();
        let err = file.load().await.unwrap_err().to_string();
        assert!(err.contains("s.json"), "{err}");
    }
}
