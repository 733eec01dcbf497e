//! `toFiles` into an object store, which cannot rename a directory. The
//! files are written through a [`DeferredStore`]: large ones as multipart
//! uploads to their final keys, left incomplete (invisible), small ones
//! under a hidden staging prefix beside the target (`.NAME.staging-UUID/`).
//! Once the commit gate opens:
//!
//! 1. the target's `_SUCCESS` is deleted;
//! 2. the uploads are completed, and each small file is moved (copied,
//!    then deleted) to the same relative key under the target;
//! 3. with saveMode overwrite, the target's old files are deleted;
//! 4. an empty `_SUCCESS` is written, last.
//!
//! Every object appears whole, but a reader listing the target during
//! steps 1-4 may see part of the new files, and with overwrite old and new
//! files together: only a listing made while `_SUCCESS` exists is
//! complete. A run that fails before its commit leaves the target as it
//! was and deletes its staged files. `toDeltaLake` is the atomic choice.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{
    Error as StoreError, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
};
use futures::future::try_join_all;
use futures::{StreamExt, TryStreamExt};
use url::Url;

use super::deferred::{under, DeferredStore};
use crate::error::{ConnectorError, Result};
use crate::save_mode::SaveMode;

/// How many files move at once.
const CONCURRENT_MOVES: usize = 16;

/// The marker written last, when the target is complete (as Spark does).
const SUCCESS: &str = "_SUCCESS";

/// A `toFiles` target in an object store.
#[derive(Debug)]
pub(super) struct Remote {
    /// The path as written.
    shown: String,
    store: Arc<dyn ObjectStore>,
    /// The target's key prefix.
    key: ObjectPath,
}

/// One run's staging: the store DataFusion writes through, registered
/// under a URL of its own, and the hidden prefix of its small files.
#[derive(Debug)]
pub(super) struct Staging {
    /// The URL the store is registered under (scheme and host).
    pub store_url: Url,
    /// Where DataFusion writes (a URL ending in `/`).
    pub url: String,
    /// Holds what the run wrote until the commit.
    pub store: Arc<DeferredStore>,
    /// The prefix of the small files.
    key: ObjectPath,
}

impl Staging {
    /// The bytes written so far.
    pub(super) fn bytes(&self) -> u64 {
        self.store.held_bytes()
    }
}

/// The connector error for a failed store operation.
fn failed(doing: String) -> impl FnOnce(StoreError) -> ConnectorError {
    move |e| ConnectorError::Context {
        context: doing,
        source: DataFusionError::ObjectStore(Box::new(e)),
    }
}

/// The target's key in its store: an error for the root of a bucket or
/// container, beside which nothing can be staged.
pub(super) fn target_key(shown: &str, url: &Url) -> std::result::Result<ObjectPath, String> {
    let key = ObjectPath::from_url_path(url.path()).map_err(|e| e.to_string())?;
    if key.as_ref().is_empty() {
        return Err(format!(
            "toFiles writes into a directory inside the bucket or container, e.g. {}/out, not its root",
            shown.trim_end_matches('/')
        ));
    }
    Ok(key)
}

impl Remote {
    /// The target `url` (written `shown`) in `store`.
    pub(super) fn new(shown: &str, url: &Url, store: Arc<dyn ObjectStore>) -> Result<Self> {
        let key = target_key(shown, url).map_err(ConnectorError::Rejected)?;
        Ok(Remote {
            shown: shown.to_string(),
            store,
            key,
        })
    }

    /// Whether any object exists under the target.
    pub(super) async fn has_data(&self) -> Result<bool> {
        match self.store.list(Some(&self.key)).next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(failed(format!("listing {}", self.shown))(e)),
        }
    }

    /// A new staging: large files held back as uploads to their final
    /// keys, small ones under a hidden prefix beside the target.
    pub(super) fn staging(&self) -> Staging {
        let parts: Vec<_> = self.key.parts().collect();
        let (name, parent) = parts.split_last().expect("the key is not empty");
        let id = uuid::Uuid::new_v4();
        let hidden = format!(".{}.staging-{id}", name.as_ref());
        let key = ObjectPath::from_iter(parent.iter().cloned().chain([hidden.into()]));
        let store = DeferredStore::new(self.store.clone(), self.key.clone(), key.clone());
        let store_url = Url::parse(&format!("dataflow-staging://{id}")).expect("a valid URL");
        Staging {
            url: format!("{store_url}/"),
            store_url,
            store: Arc::new(store),
            key,
        }
    }

    async fn list(&self, prefix: &ObjectPath) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(failed(format!("listing {}", self.shown)))
    }

    /// Makes the staged files visible in the target as `mode` says (see
    /// the module's documentation for the order).
    pub(super) async fn commit(&self, staging: &Staging, mode: SaveMode) -> Result<()> {
        let held = staging.store.take();
        let old = match mode {
            SaveMode::Overwrite => self.list(&self.key).await?,
            _ => Vec::new(),
        };
        let success = self.key.clone().join(SUCCESS);
        self.delete(&success).await?;
        let mut done = HashSet::new();
        let mut uploads = held.uploads.into_iter().peekable();
        while uploads.peek().is_some() {
            let batch = uploads.by_ref().take(CONCURRENT_MOVES);
            let keys = try_join_all(batch.map(|(key, upload)| self.complete(key, upload))).await?;
            done.extend(keys);
        }
        for batch in held.staged.chunks(CONCURRENT_MOVES) {
            let moves = batch.iter().map(|relative| self.move_in(staging, relative));
            done.extend(try_join_all(moves).await?);
        }
        let replaced = old
            .into_iter()
            .map(|meta| meta.location)
            .filter(|key| !done.contains(key) && *key != success);
        for key in replaced {
            self.delete(&key).await?;
        }
        self.store
            .put(&success, Vec::new().into())
            .await
            .map_err(failed(format!("writing {}/{SUCCESS}", self.shown)))?;
        Ok(())
    }

    /// Completes a held upload: the file appears at `key`.
    async fn complete(
        &self,
        key: ObjectPath,
        mut upload: Box<dyn MultipartUpload>,
    ) -> Result<ObjectPath> {
        upload
            .complete()
            .await
            .map_err(failed(format!("completing {key} in {}", self.shown)))?;
        Ok(key)
    }

    /// Moves one small staged file to its place under the target.
    async fn move_in(&self, staging: &Staging, relative: &ObjectPath) -> Result<ObjectPath> {
        let from = under(&staging.key, relative);
        let to = under(&self.key, relative);
        self.store
            .rename(&from, &to)
            .await
            .map_err(failed(format!("moving {from} into {}", self.shown)))?;
        Ok(to)
    }

    async fn delete(&self, key: &ObjectPath) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(format!("deleting {key}"))(e)),
        }
    }

    /// Aborts the uploads and deletes the small files a run left (all of
    /// them after a failure). Uploads a killed process left incomplete stay
    /// invisible until the bucket's lifecycle rule removes them.
    pub(super) async fn discard(&self, staging: &Staging) {
        for (_, mut upload) in staging.store.take().uploads {
            let _ = upload.abort().await;
        }
        let Ok(left) = self.list(&staging.key).await else {
            return;
        };
        for meta in left {
            let _ = self.store.delete(&meta.location).await;
        }
    }
}
