//! How to reach Vault, read from the environment the way the `vault` CLI
//! reads it.

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::{Secret, SecretError};

/// `VAULT_ADDR` when unset, as for the `vault` CLI.
const DEFAULT_ADDR: &str = "https://127.0.0.1:8200";
/// `VAULT_CLIENT_TIMEOUT` when unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// `VAULT_APPROLE_MOUNT` when unset.
const DEFAULT_APPROLE_MOUNT: &str = "approle";

/// How a run authenticates to Vault.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A token: `VAULT_TOKEN`, else the file `~/.vault-token`.
    Token(Secret),
    /// AppRole login: `VAULT_ROLE_ID` with `VAULT_SECRET_ID` or the first
    /// line of the file `VAULT_SECRET_ID_FILE`, at `auth/<mount>/login`.
    AppRole {
        /// `VAULT_APPROLE_MOUNT` (default `approle`).
        mount: String,
        /// The role id.
        role_id: Secret,
        /// The secret id.
        secret_id: Secret,
    },
}

/// Everything needed to talk to one Vault.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `VAULT_ADDR`, without a trailing `/` (default `https://127.0.0.1:8200`).
    pub addr: String,
    /// How to authenticate.
    pub auth: Auth,
    /// `VAULT_NAMESPACE` (Vault Enterprise and OpenBao namespaces).
    pub namespace: Option<String>,
    /// `VAULT_CACERT`: a PEM file of CA certificates to trust for https.
    pub ca_cert: Option<PathBuf>,
    /// `VAULT_CLIENT_TIMEOUT`: bound on connecting and on each request
    /// (seconds, or a number with `ms`, `s` or `m`; default 5 s).
    pub timeout: Duration,
}

impl Settings {
    /// Reads the settings from `env` (the process environment in the CLI).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, SecretError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let addr = var("VAULT_ADDR").unwrap_or_else(|| DEFAULT_ADDR.to_string());
        let timeout = match var("VAULT_CLIENT_TIMEOUT") {
            Some(text) => parse_timeout(&text).ok_or_else(|| {
                settings_error(format!(
                    "VAULT_CLIENT_TIMEOUT={text:?} is not a duration such as 5, 5s or 500ms"
                ))
            })?,
            None => DEFAULT_TIMEOUT,
        };
        Ok(Settings {
            addr: addr.trim().trim_end_matches('/').to_string(),
            auth: auth(&var)?,
            namespace: var("VAULT_NAMESPACE"),
            ca_cert: var("VAULT_CACERT").map(PathBuf::from),
            timeout,
        })
    }
}

fn settings_error(message: String) -> SecretError {
    SecretError::Settings(message)
}

/// `VAULT_TOKEN`, else AppRole when `VAULT_ROLE_ID` is set, else
/// `~/.vault-token`.
fn auth(var: &dyn Fn(&str) -> Option<String>) -> Result<Auth, SecretError> {
    if let Some(token) = var("VAULT_TOKEN") {
        return Ok(Auth::Token(Secret::new(token.trim())));
    }
    if let Some(role_id) = var("VAULT_ROLE_ID") {
        let secret_id = match (var("VAULT_SECRET_ID"), var("VAULT_SECRET_ID_FILE")) {
            (Some(id), _) => id,
            (None, Some(file)) => first_line(&file, "VAULT_SECRET_ID_FILE")?,
            (None, None) => {
                return Err(settings_error(
                    "VAULT_ROLE_ID is set but neither VAULT_SECRET_ID nor VAULT_SECRET_ID_FILE"
                        .into(),
                ))
            }
        };
        return Ok(Auth::AppRole {
            mount: var("VAULT_APPROLE_MOUNT").unwrap_or_else(|| DEFAULT_APPROLE_MOUNT.to_string()),
            role_id: Secret::new(role_id.trim()),
            secret_id: Secret::new(secret_id),
        });
    }
    let home = var("HOME").ok_or_else(no_credentials)?;
    let file = PathBuf::from(home).join(".vault-token");
    if !file.exists() {
        return Err(no_credentials());
    }
    first_line(&file.display().to_string(), "~/.vault-token").map(|t| Auth::Token(Secret::new(t)))
}

fn no_credentials() -> SecretError {
    settings_error(
        "no Vault credentials: set VAULT_TOKEN (or write ~/.vault-token), or VAULT_ROLE_ID \
         with VAULT_SECRET_ID or VAULT_SECRET_ID_FILE for AppRole"
            .into(),
    )
}

/// The first line of `file`, trimmed (the whole file is the credential).
fn first_line(file: &str, what: &str) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| settings_error(format!("cannot read {what} {file}: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(settings_error(format!("{what} {file} is empty")));
    }
    Ok(line)
}

/// `5`, `2.5`, `5s`, `500ms`, `1m`; zero is not a timeout.
fn parse_timeout(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let seconds = number.trim().parse::<f64>().ok()? * scale;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SecretError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_env(&|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn reads_what_the_vault_cli_reads() {
        let s = settings(&[
            ("VAULT_ADDR", "http://127.0.0.1:8200/"),
            ("VAULT_TOKEN", "root"),
            ("VAULT_NAMESPACE", "ns1"),
            ("VAULT_CLIENT_TIMEOUT", "500ms"),
        ])
        .unwrap();
        assert_eq!(s.addr, "http://127.0.0.1:8200");
        assert!(matches!(s.auth, Auth::Token(ref t) if t.expose() == "root"));
        assert_eq!(s.namespace.as_deref(), Some("ns1"));
        assert_eq!(s.timeout, Duration::from_millis(500));
        let s = settings(&[("VAULT_ROLE_ID", "r"), ("VAULT_SECRET_ID", "s")]).unwrap();
        assert_eq!(s.addr, DEFAULT_ADDR);
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert!(matches!(s.auth, Auth::AppRole { ref mount, .. } if mount == "approle"));
    }

    #[test]
    fn token_file_and_errors() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(".vault-token"), "tok\n").unwrap();
        let s = settings(&[("HOME", home.path().to_str().unwrap())]).unwrap();
        assert!(matches!(s.auth, Auth::Token(ref t) if t.expose() == "tok"));
        let err = settings(&[("VAULT_ROLE_ID", "r")]).unwrap_err();
        assert!(err.to_string().contains("VAULT_SECRET_ID_FILE"), "{err}");
        assert!(settings(&[])
            .unwrap_err()
            .to_string()
            .contains("VAULT_TOKEN"));
        let err = settings(&[("VAULT_TOKEN", "t"), ("VAULT_CLIENT_TIMEOUT", "0")]).unwrap_err();
        assert!(err.to_string().contains("VAULT_CLIENT_TIMEOUT"), "{err}");
        assert_eq!(parse_timeout("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("x"), None);
    }
}
