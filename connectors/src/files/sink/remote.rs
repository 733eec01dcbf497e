//! `toFiles` into an object store, which cannot rename a directory. The
//! files are written under a hidden staging prefix beside the target
//! (`.NAME.staging-UUID/`); once the commit gate opens:
//!
//! 1. the target's `_SUCCESS` is deleted;
//! 2. each staged file is moved (copied, then deleted) to the same relative
//!    key under the target;
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
use datafusion::object_store::{Error as StoreError, ObjectMeta, ObjectStore, ObjectStoreExt};
use futures::{StreamExt, TryStreamExt};
use url::Url;

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
    url: Url,
    store: Arc<dyn ObjectStore>,
    /// The target's key prefix.
    key: ObjectPath,
}

/// One run's staging prefix.
#[derive(Debug)]
pub(super) struct Staging {
    /// Where DataFusion writes (a URL ending in `/`).
    pub url: String,
    key: ObjectPath,
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
            url: url.clone(),
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

    /// A new hidden staging prefix beside the target.
    pub(super) fn staging(&self) -> Staging {
        let parts: Vec<_> = self.key.parts().collect();
        let (name, parent) = parts.split_last().expect("the key is not empty");
        let hidden = format!(".{}.staging-{}", name.as_ref(), uuid::Uuid::new_v4());
        let key = ObjectPath::from_iter(parent.iter().cloned().chain([hidden.into()]));
        let mut url = self.url.clone();
        url.set_path(&format!("/{key}/"));
        Staging {
            url: url.to_string(),
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

    /// The size of the staged files.
    pub(super) async fn staged_bytes(&self, staging: &Staging) -> Result<u64> {
        Ok(self.list(&staging.key).await?.iter().map(|m| m.size).sum())
    }

    /// Moves the staged files into the target as `mode` says (see the
    /// module's documentation for the order).
    pub(super) async fn commit(&self, staging: &Staging, mode: SaveMode) -> Result<()> {
        let staged = self.list(&staging.key).await?;
        let old = match mode {
            SaveMode::Overwrite => self.list(&self.key).await?,
            _ => Vec::new(),
        };
        let success = self.key.clone().join(SUCCESS);
        self.delete(&success).await?;
        let moved: HashSet<ObjectPath> = futures::stream::iter(staged)
            .map(|meta| self.move_in(staging, meta.location))
            .buffer_unordered(CONCURRENT_MOVES)
            .try_collect()
            .await?;
        let replaced = old
            .into_iter()
            .map(|meta| meta.location)
            .filter(|key| !moved.contains(key) && *key != success);
        for key in replaced {
            self.delete(&key).await?;
        }
        self.store
            .put(&success, Vec::new().into())
            .await
            .map_err(failed(format!("writing {}/{SUCCESS}", self.shown)))?;
        Ok(())
    }

    /// Moves one staged file to its place under the target.
    async fn move_in(&self, staging: &Staging, from: ObjectPath) -> Result<ObjectPath> {
        let relative: Vec<_> = from
            .prefix_match(&staging.key)
            .map(|parts| parts.collect())
            .unwrap_or_default();
        let to = ObjectPath::from_iter(self.key.parts().chain(relative));
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

    /// Deletes what is left of `staging` (all of it after a failure).
    pub(super) async fn discard(&self, staging: &Staging) {
        let Ok(left) = self.list(&staging.key).await else {
            return;
        };
        for meta in left {
            let _ = self.store.delete(&meta.location).await;
        }
    }
}
