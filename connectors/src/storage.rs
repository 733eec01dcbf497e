//! Object stores for every connector: built by delta-rs's own factories
//! (features `s3`, `azure`, `gcs`: the AWS SDK credential chain, Azure and
//! Google defaults) from the pipeline's `storage` options, once per store
//! and option set in the process, so a Delta table, the files beside it and
//! DataFusion's scans share one client.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use dataflow_engine::connector::BoxError;
use dataflow_engine::spec::{parse_location, StepInfo, StorageOptions, SCHEMES};
use datafusion::error::DataFusionError;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result as StoreResult,
};
use deltalake::logstore::{object_store_factories, StorageConfig};
use futures::stream::BoxStream;
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
    let built = || BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(store) = built().get(&key) {
        return Ok(store.clone());
    }
    let scheme = Url::parse(&format!("{}://", url.scheme()))?;
    let factory = object_store_factories()
        .get(&scheme)
        .map(|entry| entry.value().clone())
        .ok_or_else(|| format!("no object store for {}:// locations", url.scheme()))?;
    let config = StorageConfig::parse_options(options.clone())?;
    let (store, _) = factory.parse_url_opts(url, &config)?;
    let store: Arc<dyn ObjectStore> = Arc::new(Quiet(store));
    Ok(built().entry(key).or_insert(store).clone())
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
        return Ok(());
    }
    let scheme = path.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if let Some(scheme) = scheme.filter(|s| SCHEMES.contains(&s.as_str())) {
        return Err(info.error(
            key,
            format!("\"{path}\" is not a valid URL: write {scheme}://NAME/path (two slashes)"),
        ));
    }
    Ok(())
}

/// A store whose `Debug` shows only what it is (`Display`): the stores'
/// own `Debug` prints their credentials, and libraries log it.
#[derive(Clone)]
struct Quiet(Arc<dyn ObjectStore>);

impl fmt::Debug for Quiet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Quiet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[async_trait]
impl ObjectStore for Quiet {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> StoreResult<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> StoreResult<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> StoreResult<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> StoreResult<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, StoreResult<ObjectPath>>,
    ) -> BoxStream<'static, StoreResult<ObjectPath>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> StoreResult<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> StoreResult<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> StoreResult<()> {
        self.0.rename_opts(from, to, options).await
    }
}
