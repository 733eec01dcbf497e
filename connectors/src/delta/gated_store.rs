//! A [`LogStore`] that holds every commit until the run's [`CommitGate`]
//! opens, so a Delta write becomes visible only when all sinks succeeded.

use std::sync::Arc;

use bytes::Bytes;
use dataflow_engine::commit::CommitGate;
use deltalake::kernel::transaction::TransactionError;
use deltalake::kernel::Version;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef};
use deltalake::{DeltaResult, ObjectStore, Path};
use uuid::Uuid;

/// Delegates to the table's own log store, waiting at the gate before the
/// atomic commit step.
pub(crate) struct GatedLogStore {
    inner: LogStoreRef,
    gate: CommitGate,
}

impl GatedLogStore {
    pub(crate) fn wrap(inner: LogStoreRef, gate: CommitGate) -> LogStoreRef {
        Arc::new(GatedLogStore { inner, gate })
    }
}

#[async_trait::async_trait]
impl LogStore for GatedLogStore {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        if let Err(abandoned) = self.gate.ready().await {
            self.inner
                .abort_commit_entry(version, commit_or_bytes, operation_id)
                .await?;
            return Err(TransactionError::LogStoreError {
                msg: abandoned.to_string(),
                source: Box::new(abandoned),
            });
        }
        self.inner
            .write_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> Result<(), TransactionError> {
        self.inner
            .abort_commit_entry(version, commit_or_bytes, operation_id)
            .await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn to_uri(&self, location: &Path) -> String {
        self.inner.to_uri(location)
    }

    fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }
}
