//! A throwaway S3 for tests: [moto](https://docs.getmoto.org)'s server
//! (`moto_server -H 127.0.0.1 -p 0`) on a loopback port of its choosing,
//! in memory, its log in a temporary directory.
//!
//! The binary is taken from `$MOTO_SERVER_BIN`, else `moto_server` on
//! `PATH`, else `$HOME/.cache/dataflow-servers-venv/bin/moto_server` (where
//! `.ci/run` installs the PyPI packages `moto[s3]==5.2.5 flask flask-cors`).
//!
//! moto accepts any access key and does not check signatures, but object
//! requests must be signed (unsigned GETs get 403), so clients need
//! credentials: [`S3Server::options`] and [`S3Server::env`] give test
//! values. Bucket creation works unsigned ([`S3Server::create_bucket`]).
//! moto honours `If-None-Match: *` on PUT and on CompleteMultipartUpload
//! (object_store's and delta-rs' conditional writes). A ranged GET costs
//! about 0.5 ms per MB of the *whole* object: keep fixtures small.
//!
//! The server is killed when the [`S3Server`] is dropped — and, for the
//! per-binary [`S3Server::shared`] server that is never dropped, by a
//! watchdog process once the test binary exits.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::ObjectStore;

use super::process::{
    find_bin, home_path, http, kill, spawn_logged, wait_for_port, wait_http, watchdog,
};

/// The access key id every client of the test server uses (moto accepts any).
pub const ACCESS_KEY_ID: &str = "dataflow-test";
/// The secret access key every client of the test server uses.
pub const SECRET_ACCESS_KEY: &str = "dataflow-test-secret";
/// The region of the test server's buckets.
pub const REGION: &str = "us-east-1";

/// How long [`S3Server::start`] waits for moto to listen and answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running moto server.
#[derive(Debug)]
pub struct S3Server {
    dir: tempfile::TempDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<S3Server> = OnceLock::new();

impl S3Server {
    /// The server shared by every test of this test binary (started on
    /// first use). Give each test its own bucket so tests can run in
    /// parallel.
    pub fn shared() -> &'static S3Server {
        SHARED.get_or_init(|| match S3Server::start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test S3 server (moto): {e}"),
        })
    }

    /// Starts a new server of its own.
    pub fn start() -> io::Result<S3Server> {
        let bin = find_moto()?;
        let dir = tempfile::Builder::new().prefix("dataflow-s3-").tempdir()?;
        watchdog(dir.path())?;
        let log = dir.path().join("moto.log");
        let mut child = spawn_logged(
            Command::new(&bin).args(["-H", "127.0.0.1", "-p", "0"]),
            dir.path(),
            &log,
        )?;
        // werkzeug reports the port on stderr: ` * Running on http://127.0.0.1:PORT`.
        let ready = wait_for_port(
            &mut child,
            &log,
            "Running on http://127.0.0.1:",
            READY_TIMEOUT,
        )
        .and_then(|port| {
            // ListBuckets, unsigned.
            wait_http(&mut child, port, "/", 200, &log, READY_TIMEOUT).map(|()| port)
        });
        match ready {
            Ok(port) => Ok(S3Server {
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

    /// `http://127.0.0.1:PORT`, the endpoint (`aws_endpoint`, `AWS_ENDPOINT_URL`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates bucket `name` (at least 3 characters). Creating an existing
    /// bucket succeeds: moto, like S3 in us-east-1, answers 200.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        let response = http(self.port, "PUT", &format!("/{name}"), &[], b"")?;
        if response.status == 200 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "creating bucket {name} on moto: HTTP {}: {}",
                response.status, response.body
            )))
        }
    }

    /// object_store options (`AmazonS3Builder` config keys, as delta-rs and
    /// DataFusion take them) that reach this server: endpoint, plain http,
    /// region and test credentials.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_string()),
            ("aws_region", REGION.to_string()),
            ("aws_access_key_id", ACCESS_KEY_ID.to_string()),
            ("aws_secret_access_key", SECRET_ACCESS_KEY.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Environment for a spawned process (e.g. the CLI) so that the
    /// default credential chain — object_store's and delta-rs' — finds this
    /// server: `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the test keys, and no instance-metadata
    /// fallback (`AWS_EC2_METADATA_DISABLED`, `AWS_METADATA_ENDPOINT` at a
    /// closed port). Other `AWS_*` variables of the parent (a session
    /// token, a profile) are the caller's to remove.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", REGION.to_string()),
            ("AWS_DEFAULT_REGION", REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("AWS_METADATA_ENDPOINT", NO_METADATA.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A store for `bucket` on this server (built from explicit settings,
    /// not from the process environment), for putting fixtures and reading
    /// back what a pipeline wrote.
    pub fn store(&self, bucket: &str) -> io::Result<Arc<dyn ObjectStore>> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY_ID)
            .with_secret_access_key(SECRET_ACCESS_KEY)
            .with_bucket_name(bucket)
            .build()
            .map_err(io::Error::other)?;
        Ok(Arc::new(store))
    }

    /// The server's log (one line per request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill(&mut self.child.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// A metadata endpoint where nothing listens (the discard port), so a
/// client that falls back to instance credentials fails at once.
pub(crate) const NO_METADATA: &str = "http://127.0.0.1:9";

/// `$MOTO_SERVER_BIN`, `moto_server` on `PATH`, or the one `.ci/run` installs.
fn find_moto() -> io::Result<PathBuf> {
    find_bin(
        "MOTO_SERVER_BIN",
        "moto_server",
        &home_path(".cache/dataflow-servers-venv/bin/moto_server")
            .into_iter()
            .collect::<Vec<_>>(),
        "pip install 'moto[s3]==5.2.5' flask flask-cors; .ci/run installs it",
    )
}
