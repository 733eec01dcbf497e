//! The store `toFiles` writes a run's files through on an object store.
//! A file too large for one PUT goes straight to its final key as a
//! multipart upload whose completion is held back until the commit: an
//! incomplete upload is invisible to readers, and completing it copies
//! nothing (Spark's S3A "magic" committer does the same). A file small
//! enough for one PUT goes to the hidden staging prefix and is moved in at
//! the commit.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{
    CopyOptions, Error as StoreError, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    UploadPart,
};
use futures::stream::BoxStream;
use futures::StreamExt;

/// What a run wrote and has not made visible yet.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Uploads to their final keys, written but not completed.
    pub uploads: Vec<(ObjectPath, Box<dyn MultipartUpload>)>,
    /// Files under the staging prefix, by their key relative to it.
    pub staged: Vec<ObjectPath>,
    /// The bytes of both.
    pub bytes: u64,
}

/// Writes under `target` (large files, held) and `staging` (small files)
/// of `inner`; reads nothing.
#[derive(Debug)]
pub(super) struct DeferredStore {
    inner: Arc<dyn ObjectStore>,
    target: ObjectPath,
    staging: ObjectPath,
    held: Arc<Mutex<Held>>,
}

impl fmt::Display for DeferredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeferredStore({})", self.inner)
    }
}

/// `relative` under `prefix`.
pub(super) fn under(prefix: &ObjectPath, relative: &ObjectPath) -> ObjectPath {
    ObjectPath::from_iter(prefix.parts().chain(relative.parts()))
}

impl DeferredStore {
    pub(super) fn new(
        inner: Arc<dyn ObjectStore>,
        target: ObjectPath,
        staging: ObjectPath,
    ) -> Self {
        DeferredStore {
            inner,
            target,
            staging,
            held: Arc::default(),
        }
    }

    /// The bytes written so far.
    pub(super) fn held_bytes(&self) -> u64 {
        lock(&self.held).bytes
    }

    /// Takes what was written so far.
    pub(super) fn take(&self) -> Held {
        std::mem::take(&mut *lock(&self.held))
    }

    fn unsupported(&self, operation: &str) -> StoreError {
        StoreError::NotImplemented {
            operation: operation.to_string(),
            implementer: self.to_string(),
        }
    }
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl ObjectStore for DeferredStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let bytes = payload.content_length() as u64;
        let result = self
            .inner
            .put_opts(&under(&self.staging, location), payload, opts)
            .await?;
        let mut held = lock(&self.held);
        held.staged.push(location.clone());
        held.bytes += bytes;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let key = under(&self.target, location);
        let upload = self.inner.put_multipart_opts(&key, opts).await?;
        Ok(Box::new(HeldUpload {
            key,
            upload: Some(upload),
            bytes: 0,
            held: self.held.clone(),
        }))
    }

    async fn get_opts(&self, _: &ObjectPath, _: GetOptions) -> Result<GetResult> {
        Err(self.unsupported("get"))
    }

    fn delete_stream(
        &self,
        _: BoxStream<'static, Result<ObjectPath>>,
    ) -> BoxStream<'static, Result<ObjectPath>> {
        futures::stream::once(futures::future::ready(Err(self.unsupported("delete")))).boxed()
    }

    fn list(&self, _: Option<&ObjectPath>) -> BoxStream<'static, Result<ObjectMeta>> {
        futures::stream::once(futures::future::ready(Err(self.unsupported("list")))).boxed()
    }

    async fn list_with_delimiter(&self, _: Option<&ObjectPath>) -> Result<ListResult> {
        Err(self.unsupported("list"))
    }

    async fn copy_opts(&self, _: &ObjectPath, _: &ObjectPath, _: CopyOptions) -> Result<()> {
        Err(self.unsupported("copy"))
    }
}

/// A multipart upload whose completion is handed to the run's commit.
#[derive(Debug)]
struct HeldUpload {
    key: ObjectPath,
    upload: Option<Box<dyn MultipartUpload>>,
    bytes: u64,
    held: Arc<Mutex<Held>>,
}

#[async_trait]
impl MultipartUpload for HeldUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.bytes += data.content_length() as u64;
        match &mut self.upload {
            Some(upload) => upload.put_part(data),
            None => Box::pin(futures::future::ready(Err(StoreError::Generic {
                store: "DeferredStore",
                source: "part after completion".into(),
            }))),
        }
    }

    async fn complete(&mut self) -> Result<PutResult> {
        if let Some(upload) = self.upload.take() {
            let mut held = lock(&self.held);
            held.uploads.push((self.key.clone(), upload));
            held.bytes += self.bytes;
        }
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn abort(&mut self) -> Result<()> {
        match self.upload.take() {
            Some(mut upload) => upload.abort().await,
            None => Ok(()),
        }
    }
}
