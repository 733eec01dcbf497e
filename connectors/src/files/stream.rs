//! `fromFiles` as a stream (`"streaming": true`, Spark's file source):
//! each micro-batch reads the files that no committed batch read, oldest
//! first (`latestFirst`: newest first), at most `maxFilesPerTrigger`.
//!
//! Every file is a position key (its path) at [`READ`] once a batch read
//! it; the sinks record the keys with the rows (Delta: in the same
//! commit), so a restarted stream reads each file exactly once.
//!
//! A file is read whole when a batch picks it up: write it under a name the
//! listing skips (another extension, or starting with `.` or `_`) and
//! rename it when complete, as Spark requires.

use std::collections::HashMap;
use std::sync::Arc;

use dataflow_engine::connector::{BoxError, Opened, Resume};
use dataflow_engine::spec::StepInfo;
use datafusion::catalog::TableProvider;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SessionState;
use futures::TryStreamExt;

use super::{listing_url, FileSource, FromFilesConfig};
use crate::error::ConnectorError;
use crate::storage::store_for;

/// The position of a file a batch read.
pub(super) const READ: i64 = 1;

/// A file of the stream.
pub(super) struct StreamFile {
    /// Its position key: the path in its store.
    pub key: String,
    url: ListingTableUrl,
    modified: i64,
}

/// Checks the streaming keys of a `fromFiles` config.
pub(super) fn check(info: &StepInfo, config: &FromFilesConfig) -> dataflow_engine::Result<()> {
    if !config.streaming {
        let set = [
            ("maxFilesPerTrigger", config.max_files_per_trigger.is_some()),
            ("latestFirst", config.latest_first),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(info.error(
                key,
                "applies to a file stream only; set \"streaming\": true",
            ));
        }
        return Ok(());
    }
    if info.mode != dataflow_engine::spec::Mode::Streaming {
        return Err(info.error("streaming", "a file stream needs \"mode\": \"streaming\""));
    }
    if config.schema.is_none() {
        return Err(info.error(
            "schema",
            "a file stream needs its columns up front (as Spark's file source does): every micro-batch reads other files. Help: set schema, e.g. \"id BIGINT, ts TIMESTAMP\"",
        ));
    }
    if config.max_files_per_trigger == Some(0) {
        return Err(info.error("maxFilesPerTrigger", "must be at least 1"));
    }
    Ok(())
}

impl FileSource {
    /// The stream's files now, in the order batches take them.
    pub(super) async fn files(&self) -> Result<Vec<StreamFile>, BoxError> {
        let url = listing_url(&self.config.path)?;
        let store = store_for(&self.info.storage, url.as_ref())?;
        let extension = self.extension(&url, store.as_ref()).await;
        let state = datafusion::execution::context::SessionContext::new().state();
        let listed: Vec<_> = url
            .list_all_files(&state, store.as_ref(), &extension)
            .await?
            .try_collect()
            .await
            .map_err(|source| ConnectorError::Context {
                context: format!("cannot list \"{}\"", self.config.path),
                source,
            })?;
        let base = url.object_store();
        let mut files = Vec::with_capacity(listed.len());
        for meta in listed {
            let hidden = meta
                .location
                .filename()
                .is_some_and(|name| name.starts_with('.') || name.starts_with('_'));
            if hidden {
                continue;
            }
            let key = meta.location.to_string();
            let url = ListingTableUrl::parse(format!("{}{key}", base.as_str()))?;
            files.push(StreamFile {
                key,
                url,
                modified: meta.last_modified.timestamp_micros(),
            });
        }
        files.sort_by(|a, b| (a.modified, &a.key).cmp(&(b.modified, &b.key)));
        if self.config.latest_first {
            files.reverse();
        }
        Ok(files)
    }

    /// The next micro-batch: the files not read yet (within `resume.until`
    /// under availableNow), at most `maxFilesPerTrigger` of them.
    pub(super) async fn open_stream(
        &self,
        state: &SessionState,
        resume: &Resume,
    ) -> Result<Opened, BoxError> {
        let files = self.files().await?;
        let mut pending: Vec<StreamFile> = files
            .into_iter()
            .filter(|f| resume.marks.get(&f.key).is_none_or(|v| *v < READ))
            .filter(|f| resume.until.is_empty() || resume.until.contains_key(&f.key))
            .collect();
        if let (true, Some(limit)) = (resume.micro_batch, self.config.max_files_per_trigger) {
            pending.truncate(limit);
        }
        let schema = self
            .given_schema(state)
            .await?
            .expect("checked: a stream has a schema");
        let provider: Arc<dyn TableProvider> = if pending.is_empty() {
            Arc::new(MemTable::try_new(schema, vec![vec![]])?)
        } else {
            let urls = pending.iter().map(|f| f.url.clone()).collect();
            let options = ListingOptions::new(self.file_format());
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema);
            Arc::new(ListingTable::try_new(config)?)
        };
        Ok(Opened {
            provider,
            marks: pending.iter().map(|f| (f.key.clone(), READ)).collect(),
            start: pending
                .iter()
                .map(|f| (f.key.clone(), 0))
                .collect::<HashMap<_, _>>(),
        })
    }
}
