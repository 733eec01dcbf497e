//! A throwaway Azure Blob Storage for tests:
//! [Azurite](https://github.com/Azure/Azurite)'s blob service
//! (`azurite-blob --blobHost 127.0.0.1 --blobPort 0 --inMemoryPersistence
//! --disableTelemetry --skipApiVersionCheck`) on a loopback port of its
//! choosing, in memory, its log in a temporary directory.
//!
//! The binary is taken from `$AZURITE_BLOB_BIN`, else `azurite-blob` on
//! `PATH`, else `$HOME/.cache/dataflow-npm/bin/azurite-blob` (where `.ci/run`
//! installs the npm package `azurite@3.35.0`; it needs `node`).
//!
//! Azurite serves the well-known emulator account [`ACCOUNT`] with key
//! [`ACCOUNT_KEY`], path-style: `http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB`.
//! Containers must be created by the harness
//! ([`AzuriteServer::create_container`]); object_store cannot.
//!
//! Two ways for object_store to reach it:
//! - **Emulator mode** ([`AzuriteServer::options`], [`AzuriteServer::env`]):
//!   `azure_storage_use_emulator=true`. object_store then takes the endpoint
//!   **only** from the environment variable `AZURITE_BLOB_STORAGE_URL`
//!   (default `http://127.0.0.1:10000`) and ignores `azure_storage_endpoint`,
//!   so it suits a spawned process given [`AzuriteServer::env`].
//! - **Explicit endpoint** ([`AzuriteServer::endpoint_options`]): account,
//!   key, `azure_storage_endpoint=URL/ACCOUNT` and `azure_allow_http`; works
//!   in the test process without touching its environment. Caveat: Azurite
//!   ignores `startFrom` in List Blobs, and object_store only filters
//!   client-side in emulator mode, so `list_with_offset` through such a
//!   store returns every blob under the prefix. [`AzuriteServer::store`]
//!   uses this mode but filters `list_with_offset` itself.
//!
//! The server is killed when the [`AzuriteServer`] is dropped — and, for
//! the per-binary [`AzuriteServer::shared`] server that is never dropped,
//! by a watchdog process once the test binary exits.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use datafusion::object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use futures::stream::BoxStream;

use super::process::{find_bin, home_path, http, kill, spawn_logged, wait_for_port, watchdog};

/// The emulator's well-known account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known account key (base64).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Managed-identity endpoint where nothing listens, so a client that falls
/// back to it fails at once instead of asking a cloud metadata address.
const NO_MSI: &str = "http://127.0.0.1:9/metadata/identity/oauth2/token";

/// The Blob service version [`AzuriteServer::create_container`] speaks.
const API_VERSION: &str = "2021-08-06";

/// How long [`AzuriteServer::start`] waits for Azurite to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Azurite blob service.
#[derive(Debug)]
pub struct AzuriteServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<AzuriteServer> = OnceLock::new();

impl AzuriteServer {
    /// The server shared by every test of this test binary (started on
    /// first use). Give each test its own container so tests can run in
    /// parallel.
    pub fn shared() -> &'static AzuriteServer {
        SHARED.get_or_init(|| match AzuriteServer::start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test Azure Blob server (Azurite): {e}"),
        })
    }

    /// Starts a new server of its own.
    pub fn start() -> io::Result<AzuriteServer> {
        let bin = find_azurite()?;
        let dir = tempfile::Builder::new()
            .prefix("dataflow-azurite-")
            .tempdir()?;
        watchdog(dir.path())?;
        let log = dir.path().join("azurite.log");
        let mut child = spawn_logged(
            Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", "0"])
                .args([
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                ])
                // Without --location and in memory it writes nothing, but
                // keep any stray file out of the caller's directory.
                .current_dir(dir.path()),
            dir.path(),
            &log,
        )?;
        // Printed once it listens.
        let marker = "Azurite Blob service successfully listens on http://127.0.0.1:";
        match wait_for_port(&mut child, &log, marker, READY_TIMEOUT) {
            Ok(port) => Ok(AzuriteServer {
                dir,
                port,
                child: Mutex::new(Some(child)),
            }),
            Err(e) => {
                kill(&mut Some(child));
                Err(e)
            }
        }
    }

    /// `http://127.0.0.1:PORT`, the blob service (`AZURITE_BLOB_STORAGE_URL`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates container `name` in [`ACCOUNT`] (an error if it exists),
    /// with a SharedKey-signed `PUT /ACCOUNT/NAME?restype=container`.
    pub fn create_container(&self, name: &str) -> io::Result<()> {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        // Verb, then 11 empty standard headers (Content-Length is empty for
        // 0), then Range, the x-ms-* headers and the resource.
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
             /{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = BASE64.decode(ACCOUNT_KEY).map_err(io::Error::other)?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let signature = BASE64.encode(ring::hmac::sign(&key, string_to_sign.as_bytes()));
        let authorization = format!("SharedKey {ACCOUNT}:{signature}");
        let response = http(
            self.port,
            "PUT",
            &format!("/{ACCOUNT}/{name}?restype=container"),
            &[
                ("x-ms-date", &date),
                ("x-ms-version", API_VERSION),
                ("Authorization", &authorization),
            ],
            b"",
        )?;
        if response.status == 201 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "creating container {name} on Azurite: HTTP {}: {}",
                response.status, response.body
            )))
        }
    }

    /// object_store options for **emulator mode**: `azure_storage_use_emulator`,
    /// account and key. The endpoint is not among them — object_store reads
    /// it only from the environment variable `AZURITE_BLOB_STORAGE_URL`
    /// (see [`AzuriteServer::env`]); without it, it tries
    /// `http://127.0.0.1:10000`. For use in the test process itself, see
    /// [`AzuriteServer::endpoint_options`].
    pub fn options(&self) -> Vec<(String, String)> {
        pairs(&[
            ("azure_storage_use_emulator", "true"),
            ("azure_storage_account_name", ACCOUNT),
            ("azure_storage_account_key", ACCOUNT_KEY),
        ])
    }

    /// object_store options reaching this server **without emulator mode**
    /// and without any environment: account, key,
    /// `azure_storage_endpoint=URL/ACCOUNT`, `azure_allow_http`. Caveat:
    /// `list_with_offset` through a store built from these returns every
    /// blob under the prefix (Azurite ignores `startFrom`).
    pub fn endpoint_options(&self) -> Vec<(String, String)> {
        let endpoint = format!("{}/{ACCOUNT}", self.url());
        pairs(&[
            ("azure_storage_account_name", ACCOUNT),
            ("azure_storage_account_key", ACCOUNT_KEY),
            ("azure_storage_endpoint", &endpoint),
            ("azure_allow_http", "true"),
        ])
    }

    /// Environment for a spawned process (e.g. the CLI) so that an
    /// `az://CONTAINER/...` URL without options reaches this server:
    /// `AZURITE_BLOB_STORAGE_URL`, `AZURE_STORAGE_USE_EMULATOR`, the
    /// account and key, and `AZURE_MSI_ENDPOINT` at a closed port (no
    /// managed-identity fallback to a metadata address).
    pub fn env(&self) -> Vec<(String, String)> {
        let url = self.url();
        pairs(&[
            ("AZURITE_BLOB_STORAGE_URL", &url),
            ("AZURE_STORAGE_USE_EMULATOR", "true"),
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT),
            ("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY),
            ("AZURE_MSI_ENDPOINT", NO_MSI),
        ])
    }

    /// A store for `container` on this server, built from explicit
    /// settings (the [`AzuriteServer::endpoint_options`] way, so it does
    /// not need `AZURITE_BLOB_STORAGE_URL` in the test process), with
    /// `list_with_offset` filtered client-side as Azurite needs.
    pub fn store(&self, container: &str) -> io::Result<Arc<dyn ObjectStore>> {
        let inner = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_endpoint(format!("{}/{ACCOUNT}", self.url()))
            .with_allow_http(true)
            .with_container_name(container)
            .build()
            .map_err(io::Error::other)?;
        Ok(Arc::new(AzuriteStore { inner }))
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        kill(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `$AZURITE_BLOB_BIN`, `azurite-blob` on `PATH`, or the one `.ci/run` installs.
fn find_azurite() -> io::Result<PathBuf> {
    find_bin(
        "AZURITE_BLOB_BIN",
        "azurite-blob",
        &home_path(".cache/dataflow-npm/bin/azurite-blob")
            .into_iter()
            .collect::<Vec<_>>(),
        "npm install -g azurite@3.35.0; .ci/run installs it",
    )
}

/// A [`MicrosoftAzure`] store on Azurite with an explicit endpoint, whose
/// `list_with_offset` filters client-side (object_store's default), as
/// Azurite ignores `startFrom`.
#[derive(Debug)]
struct AzuriteStore {
    inner: MicrosoftAzure,
}

impl fmt::Display for AzuriteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Azurite({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for AzuriteStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
