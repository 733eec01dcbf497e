//! Object stores for every connector: built by delta-rs's own factories
//! (features `s3`, `azure`, `gcs`: the AWS SDK credential chain, Azure and
//! Google defaults) from the pipeline's `storage` options, once per store
//! and option set in the process, so a Delta table, the files beside it and
//! DataFusion's scans share one client.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use dataflow_engine::connector::BoxError;
use dataflow_engine::spec::{parse_location, StepInfo, StorageOptions};
use datafusion::error::DataFusionError;
use datafusion::object_store::ObjectStore;
use deltalake::logstore::{object_store_factories, StorageConfig};
use url::{Position, Url};

use crate::error::{ConnectorError, Result};

/// Stores built so far, by store root and options.
type Built = HashMap<(String, BTreeMap<String, String>), Arc<dyn ObjectStore>>;

static BUILT: LazyLock<Mutex<Built>> = LazyLock::new(|| {
    // The factories register themselves at load; registering again makes
    // sure they are there however the binary was linked.
    deltalake::aws::register_handlers(None);
    deltalake::azure::register_handlers(None);
    deltalake::gcp::register_handlers(None);
    Mutex::new(HashMap::new())
});

/// The store at the root of `url` (scheme and authority) with `options`:
/// the [`StoreBuilder`](dataflow_engine::storage::StoreBuilder) the engine
/// fills DataFusion's registry with.
pub fn root_store(
    url: &Url,
    options: &BTreeMap<String, String>,
) -> std::result::Result<Arc<dyn ObjectStore>, BoxError> {
    let root = url[..Position::AfterPort].to_string();
    let key = (root, options.clone());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(store) = built.get(&key) {
        return Ok(store.clone());
    }
    let scheme = Url::parse(&format!("{}://", url.scheme()))?;
    let factory = object_store_factories()
        .get(&scheme)
        .map(|entry| entry.value().clone())
        .ok_or_else(|| format!("no object store for {}:// locations", url.scheme()))?;
    let config = StorageConfig::parse_options(options.clone())?;
    let (store, _) = factory.parse_url_opts(url, &config)?;
    built.insert(key, store.clone());
    Ok(store)
}

/// The URL of a config path: a local path (made absolute) or a URL with a
/// supported scheme.
pub(crate) fn url_of(path: &str) -> Result<Url> {
    if path.contains("://") {
        return parse_location(path).map_err(ConnectorError::Rejected);
    }
    let absolute =
        std::path::absolute(path).map_err(crate::error::io(format!("resolving {path}")))?;
    Url::from_directory_path(&absolute)
        .map_err(|_| ConnectorError::Rejected(format!("\"{path}\" is not a valid path")))
}

/// Whether `url` is on the local file system.
pub(crate) fn is_local(url: &Url) -> bool {
    url.scheme() == "file"
}

/// The store holding `url`, with the pipeline's options for it.
pub(crate) fn store_for(storage: &StorageOptions, url: &Url) -> Result<Arc<dyn ObjectStore>> {
    if is_local(url) {
        let local = datafusion::object_store::local::LocalFileSystem::new();
        return Ok(Arc::new(local));
    }
    root_store(url, &storage.for_url(url)).map_err(|source| ConnectorError::Context {
        context: format!("cannot reach {}", &url[..Position::AfterPort]),
        source: DataFusionError::External(source),
    })
}

/// Checks a path in a step's config at `key`: a local path, or a URL with
/// a supported scheme naming a bucket or container.
pub(crate) fn check_path(info: &StepInfo, key: &str, path: &str) -> dataflow_engine::Result<()> {
    if path.contains("://") {
        parse_location(path).map_err(|m| info.error(key, m))?;
    }
    Ok(())
}
