//! Where a run's files live: DataFusion's object-store registry, filled on
//! first use with stores the connectors build (delta-rs's factories, so
//! files and Delta tables at one location resolve credentials the same
//! way) from the pipeline's `storage` options; and [`Location`], a path as
//! a store and a key in it, for what the engine writes itself (offset logs).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::ObjectStore;
use url::{Position, Url};

use crate::connector::BoxError;
use crate::error::{Error, Result};
use crate::spec::{parse_location, StorageOptions};

/// Builds the store at the root of `url` (scheme and authority) from the
/// options given for it: provided by the connectors.
pub type StoreBuilder =
    fn(&Url, &BTreeMap<String, String>) -> std::result::Result<Arc<dyn ObjectStore>, BoxError>;

/// The run's object stores by scheme and authority (container and account
/// both, for `abfss://container@account`), built on first use.
pub struct Stores {
    storage: StorageOptions,
    build: Option<StoreBuilder>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Stores").field("stores", &keys).finish()
    }
}

impl Stores {
    /// The registry of a run with `storage` options; `build` makes the
    /// stores of URLs (none: local files only).
    pub fn new(storage: StorageOptions, build: Option<StoreBuilder>) -> Self {
        let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        Stores {
            storage,
            build,
            stores: Mutex::new(HashMap::from([("file://".to_string(), local)])),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn ObjectStore>>> {
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The registry key of `url`: scheme and authority, user part included
/// (an Azure container), path left out.
fn store_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[Position::BeforeUsername..Position::AfterPort]
    )
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.lock().insert(store_key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.lock().remove(&store_key(url)).ok_or_else(|| {
            DataFusionError::Execution(format!("no object store registered for {url}"))
        })
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let key = store_key(url);
        if let Some(store) = self.lock().get(&key) {
            return Ok(store.clone());
        }
        let build = self.build.ok_or_else(|| {
            DataFusionError::Execution(format!("no object store for {url}: local files only"))
        })?;
        let store = build(url, &self.storage.for_url(url)).map_err(DataFusionError::External)?;
        Ok(self.lock().entry(key).or_insert(store).clone())
    }
}

/// A path (local, `file://` or an object-store URL) as the store holding
/// it and the key in that store.
#[derive(Clone)]
pub struct Location {
    /// The path as written, for messages.
    pub shown: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The key in the store.
    pub path: ObjectPath,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PartialEq for Location {
    fn eq(&self, other: &Self) -> bool {
        self.shown == other.shown && self.path == other.path
    }
}

impl Eq for Location {}

impl Location {
    /// Where `path` is, with the stores of `runtime`.
    pub fn resolve(runtime: &RuntimeEnv, path: &str) -> Result<Location> {
        let bad = |message: String| Error::Io {
            context: format!("resolving {path}"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
        };
        let url = if path.contains("://") {
            parse_location(path).map_err(bad)?
        } else {
            let absolute = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
            Url::from_file_path(&absolute).map_err(|_| bad("not an absolute path".into()))?
        };
        let store = runtime
            .object_store_registry
            .get_store(&url)
            .map_err(|e| bad(e.to_string()))?;
        let key = ObjectPath::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        Ok(Location {
            shown: path.to_string(),
            store,
            path: key,
        })
    }

    /// The location of `name` inside this one.
    pub fn child(&self, name: &str) -> Location {
        Location {
            shown: format!("{}/{name}", self.shown.trim_end_matches('/')),
            store: self.store.clone(),
            path: self.path.clone().join(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_of_one_account_are_two_stores() {
        let one = Url::parse("abfss://one@acct.dfs.core.windows.net/t").unwrap();
        let two = Url::parse("abfss://two@acct.dfs.core.windows.net/t").unwrap();
        assert_ne!(store_key(&one), store_key(&two));
        let bucket = Url::parse("s3://bucket/a/b").unwrap();
        assert_eq!(store_key(&bucket), "s3://bucket");
    }

    #[test]
    fn local_paths_need_no_builder() {
        let runtime = RuntimeEnv::default();
        let stores = Stores::new(StorageOptions::default(), None);
        assert!(stores
            .get_store(&Url::parse("file:///tmp").unwrap())
            .is_ok());
        let err = stores
            .get_store(&Url::parse("s3://b").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("local files only"), "{err}");
        let location = Location::resolve(&runtime, "/tmp/x/log.json").unwrap();
        assert_eq!(location.path.as_ref(), "tmp/x/log.json");
    }
}
