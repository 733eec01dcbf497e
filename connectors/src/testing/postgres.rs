//! A throwaway PostgreSQL 15 server for tests: `initdb` + `pg_ctl` in a
//! temporary directory, on a free local port, with password authentication
//! over TCP, plain or TLS. The server's certificate is issued for
//! `localhost` by a test CA ([`PgServer::tls_file`] `ca.pem`); a role
//! named [`CERT_USER`], once a test creates it, logs in over TLS with the
//! client certificate `client.crt` / `client.key` and nothing else.
//!
//! When the tests run as root (CI), the cluster is owned by and run as the
//! `postgres` user, since `initdb` refuses root. The server is stopped when
//! the [`PgServer`] is dropped — and, for the per-binary [`PgServer::shared`]
//! server that is never dropped, by a watchdog process once the test binary
//! exits.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::process::free_port;
use tokio_postgres::{Client, NoTls};

/// Where Debian's postgresql-15 package puts the server binaries.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The superuser the tests connect as.
pub const USER: &str = "dataflow_test";
/// The role (not created by the harness) that authenticates with the
/// client certificate `client.crt`.
pub const CERT_USER: &str = "dataflow_cert";

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    password: String,
    run_as: Option<&'static str>,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl PgServer {
    /// The server shared by every test of this test binary (started on
    /// first use). Give each test its own database with
    /// [`PgServer::create_database`] so tests can run in parallel.
    pub fn shared() -> &'static PgServer {
        SHARED.get_or_init(|| match PgServer::start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test PostgreSQL server: {e}"),
        })
    }

    /// Initializes and starts a new server.
    pub fn start() -> io::Result<PgServer> {
        if !Path::new(BIN_DIR).join("initdb").exists() {
            return Err(io::Error::other(format!(
                "{BIN_DIR}/initdb not found: install the server (apt-get install -y postgresql)"
            )));
        }
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new().prefix("dataflow-pg-").tempdir()?;
        let password = format!("pw-{}-{}", std::process::id(), nanos());
        std::fs::write(dir.path().join("pwfile"), &password)?;
        if let Some(user) = run_as {
            run(Command::new("chown").args(["-R", user]).arg(dir.path()))?;
        }
        let mut server = PgServer {
            dir,
            port: 0,
            password,
            run_as,
        };
        server.initdb()?;
        server.enable_tls()?;
        server.watchdog()?;
        // Another process may take the free port before the server binds it.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("server did not start")))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running `binary` from [`BIN_DIR`] as the server's owner.
    fn command(&self, binary: &str) -> Command {
        let path = Path::new(BIN_DIR).join(binary);
        match self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    fn initdb(&self) -> io::Result<()> {
        run(self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!(
                "--pwfile={}",
                self.dir.path().join("pwfile").display()
            )))
    }

    /// Issues the certificates (test CA → server for `localhost`, client
    /// for [`CERT_USER`]; plus an unrelated CA) and turns TLS on.
    fn enable_tls(&self) -> io::Result<()> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let tls_err = |e: rcgen::Error| io::Error::other(format!("test certificates: {e}"));
        let ca = |name: &str| -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate()?;
            Ok((params.self_signed(&key)?, key))
        };
        let issue = |names: Vec<String>, cn: &str, ca: &(rcgen::Certificate, KeyPair)| {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca.0, &ca.1)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let test_ca = ca("dataflow test CA").map_err(tls_err)?;
        let other_ca = ca("unrelated CA").map_err(tls_err)?;
        let (server_crt, server_key) =
            issue(vec!["localhost".into()], "localhost", &test_ca).map_err(tls_err)?;
        let (client_crt, client_key) = issue(vec![], CERT_USER, &test_ca).map_err(tls_err)?;

        let data = self.data();
        let owned_by_server = |name: &str, pem: &str| -> io::Result<()> {
            let path = data.join(name);
            std::fs::write(&path, pem)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            match self.run_as {
                Some(user) => run(Command::new("chown").arg(user).arg(&path)),
                None => Ok(()),
            }
        };
        owned_by_server("server.crt", &server_crt)?;
        owned_by_server("server.key", &server_key)?;
        owned_by_server("root.crt", &test_ca.0.pem())?;
        let dir = self.dir.path();
        std::fs::write(dir.join("ca.pem"), test_ca.0.pem())?;
        std::fs::write(dir.join("other-ca.pem"), other_ca.0.pem())?;
        std::fs::write(dir.join("client.crt"), client_crt)?;
        std::fs::write(dir.join("client.key"), client_key)?;

        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(
            conf,
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'"
        )?;
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba)?;
        let cert_rule = format!("hostssl all {CERT_USER} 127.0.0.1/32 cert\n");
        std::fs::write(&hba, cert_rule + &rules)
    }

    /// A file of the server's TLS setup: `ca.pem` (the CA that issued the
    /// server's and the client's certificate), `other-ca.pem` (a CA that
    /// issued neither), `client.crt` and `client.key` (for [`CERT_USER`]).
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pg_ctl_start(&self) -> io::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=200",
            self.port
        );
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"]))
    }

    /// Stops the server as soon as this process exits, however it exits.
    fn watchdog(&self) -> io::Result<()> {
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = self.shell_prefix("pg_ctl"),
            data = self.data().display(),
            dir = self.dir.path().display(),
        );
        Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
    }

    fn shell_prefix(&self, binary: &str) -> String {
        let path = format!("{BIN_DIR}/{binary}");
        match self.run_as {
            Some(user) => format!("runuser -u {user} -- {path}"),
            None => path,
        }
    }

    /// Stops the server (fast shutdown): connections to its port are then
    /// refused until [`PgServer::restart`].
    pub fn stop(&self) -> io::Result<()> {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"]))
    }

    /// Starts a stopped server again, on the same port.
    pub fn restart(&self) -> io::Result<()> {
        self.pg_ctl_start()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgresql://USER@127.0.0.1:PORT/db`, without the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database named after `prefix` and returns its name.
    pub async fn create_database(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.execute(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" TEMPLATE template0"),
        )
        .await;
        name
    }

    /// A client connected to `db`.
    pub async fn client(&self, db: &str) -> Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(&self.password)
            .dbname(db)
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
        tokio::spawn(connection);
        client
    }

    /// Runs `sql` (one or more statements) in `db`, panicking on error.
    pub async fn execute(&self, db: &str, sql: &str) {
        if let Err(e) = self.client(db).await.batch_execute(sql).await {
            let detail = e.as_db_error().map(|d| d.message().to_string());
            panic!("{sql}: {e} {detail:?}");
        }
    }

    /// Waits until a `COPY` runs in `db`, for up to `timeout`, then
    /// terminates its backend (as if the connection dropped); returns
    /// whether one was found.
    pub async fn terminate_copy(&self, db: &str, timeout: Duration) -> bool {
        let client = self.client("postgres").await;
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND query LIKE 'COPY%' AND pid <> pg_backend_pid()",
                    &[&db],
                )
                .await
                .unwrap_or_default();
            if !rows.is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The server log so far, for diagnosing a failed test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}
