//! Connecting to PostgreSQL without ever printing the password.
//!
//! The `tokio_postgres::Config` is built from the url and the password
//! programmatically (never by formatting a URL with the password in it), and
//! every message from the client library is redacted before it is shown.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use dataflow_engine::secret::Secret;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, TlsParams};
use crate::classify::sqlstate;
use crate::error::ConnectorError;
use dataflow_engine::classify::ErrorClass;

/// Used when the url sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the server, and every form of the password to redact.
pub(crate) struct Connector {
    config: Config,
    tls: MakeRustlsConnect,
    secrets: Vec<Secret>,
    target: String,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.target)
    }
}

impl Connector {
    /// Parses `url` (a `postgresql://` URL or `key=value` string; its
    /// parameters such as `sslmode`, `sslrootcert` or `connect_timeout` are
    /// honoured, see [`tls`]); `password`, when given, replaces a password
    /// in the url. Reads the certificate files the url names.
    pub(crate) fn new(url: &Secret, password: Option<Secret>) -> Result<Self, String> {
        let mut secrets = Vec::new();
        if let Some(raw) = url::Url::parse(url.expose())
            .ok()
            .and_then(|u| u.password().map(Secret::new))
        {
            secrets.push(raw);
        }
        let redact = |text: String| secrets.iter().fold(text, |t, s| s.redact(&t));
        let (rest, tls_params) = TlsParams::split(url.expose());
        let mut config = Config::from_str(&rest)
            .map_err(|e| redact(format!("invalid url: {}", describe(&e))))?;
        config.ssl_mode(tls_params.ssl_mode(config.get_ssl_mode())?);
        let tls = tls_params.connector()?;
        if let Some(decoded) = config.get_password() {
            secrets.push(Secret::new(String::from_utf8_lossy(decoded)));
        }
        if let Some(password) = password {
            config.password(password.expose());
            secrets.push(password);
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("dataflow");
        }
        let target = target(&config);
        Ok(Connector {
            config,
            tls,
            secrets,
            target,
        })
    }

    /// `user@host:port/dbname`, for messages and `explain`.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Removes every form of the password from `text`.
    pub(crate) fn redact(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |t, s| s.redact(&t))
    }

    /// Opens a connection; its I/O runs on a spawned task until the client
    /// is dropped.
    pub(crate) async fn connect(&self) -> Result<Client, ConnectorError> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| self.error(&format!("connecting to {}", self.target), &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("PostgreSQL connection ended: {}", describe(&e));
            }
        });
        Ok(client)
    }

    /// A redacted error for a failure while doing `context`.
    pub(crate) fn error(&self, context: &str, err: &tokio_postgres::Error) -> ConnectorError {
        ConnectorError::Postgres {
            context: context.to_string(),
            message: self.redact(&describe(err)),
            code: err.code().cloned(),
            retryable: retryable(err),
        }
    }
}

/// `user@host:port/dbname` from a config.
fn target(config: &Config) -> String {
    let user = config.get_user().unwrap_or("");
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

/// The server's message (with detail, hint and SQLSTATE) or the client
/// library's error with its causes.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(&format!(". {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!(". Hint: {hint}"));
        }
        text.push_str(&format!(" (SQLSTATE {})", db.code().code()));
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Whether the error is a lost or refused connection rather than a
/// statement the server rejected.
fn retryable(err: &tokio_postgres::Error) -> bool {
    if tls::rejected(err) {
        return false;
    }
    if err.is_closed() {
        return true;
    }
    match err.code() {
        Some(code) => sqlstate(code) == ErrorClass::Transient,
        // No SQLSTATE: an I/O, connect or timeout failure.
        None => {
            (err.as_db_error().is_none() && std::error::Error::source(err).is_some())
                || err.to_string().contains("timeout")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_in_debug_or_target() {
        let url = Secret::new("postgresql://app:p%40ss@db.example:6543/sales?sslmode=disable");
        let c = Connector::new(&url, None).unwrap();
        assert_eq!(c.target(), "app@db.example:6543/sales");
        assert_eq!(format!("{c:?}"), "Connector(app@db.example:6543/sales)");
        assert_eq!(c.redact("a p@ss b p%40ss"), "a *** b ***");
        let c = Connector::new(&url, Some(Secret::new("other"))).unwrap();
        assert_eq!(c.config.get_password(), Some(&b"other"[..]));
    }

    #[test]
    fn bad_url_is_redacted() {
        let url = Secret::new("postgresql://app:hunter2@db:notaport/x");
        let err = Connector::new(&url, None).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.starts_with("invalid url"), "{err}");
        let tls = Secret::new("postgresql://app:hunter2@db/x?sslmode=require&sslrootcert=/none");
        let err = Connector::new(&tls, None).unwrap_err();
        assert!(err.starts_with("sslrootcert /none"), "{err}");
    }
}
