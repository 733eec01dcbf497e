//! A small client for the KV secrets engine of HashiCorp Vault and OpenBao
//! (same HTTP API): token or AppRole login, then `GET /v1/<path>` per
//! secret. KV v2 paths are written with their `data/` segment
//! (`secret/data/kafka`) and KV v1 paths as mounted (`kv/kafka`); the
//! answer's shape tells them apart.
//!
//! Nothing here logs or returns a value or a token in a message.

mod settings;

use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::sync::OnceCell;

pub use settings::{Auth, Settings, DEFAULT_TIMEOUT};

use super::{Secret, SecretData, SecretError, SecretStore};

/// A Vault reached with [`Settings`]; logs in (AppRole) at most once.
#[derive(Debug)]
pub struct Vault {
    /// The client, or why it cannot be built (reported on first read, so
    /// that a config without secrets needs no Vault settings).
    client: Result<Connection, String>,
}

#[derive(Debug)]
struct Connection {
    settings: Settings,
    http: Client,
    token: OnceCell<Secret>,
}

impl Vault {
    /// A client configured from `env` as the `vault` CLI is (`VAULT_ADDR`,
    /// `VAULT_TOKEN`, ...; see [`Settings`]). Contacts nothing yet.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let client = Settings::from_env(env)
            .and_then(Connection::new)
            .map_err(|e| e.to_string());
        Vault { client }
    }
}

#[async_trait]
impl SecretStore for Vault {
    async fn read(&self, path: &str) -> Result<SecretData, SecretError> {
        let connection = self
            .client
            .as_ref()
            .map_err(|e| SecretError::Settings(e.clone()))?;
        connection.read(path.trim_matches('/')).await
    }
}

impl Connection {
    fn new(settings: Settings) -> Result<Self, SecretError> {
        let mut builder = Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout);
        if let Some(file) = &settings.ca_cert {
            let bad = |e: &dyn std::fmt::Display| {
                SecretError::Settings(format!("VAULT_CACERT {}: {e}", file.display()))
            };
            let pem = std::fs::read(file).map_err(|e| bad(&e))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(&e))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| SecretError::Settings(format!("cannot build the Vault client: {e}")))?;
        Ok(Connection {
            settings,
            http,
            token: OnceCell::new(),
        })
    }

    async fn read(&self, path: &str) -> Result<SecretData, SecretError> {
        let token = self.token().await?;
        let request = self
            .request(self.http.get(self.url(path)))
            .header("X-Vault-Token", token.expose());
        let (status, body) = self.send(request).await?;
        match status {
            StatusCode::OK => secret_data(path, body),
            StatusCode::FORBIDDEN => Err(SecretError::Denied { path: path.into() }),
            StatusCode::NOT_FOUND => Err(SecretError::Missing {
                path: path.into(),
                hint: messages(&body, "warnings")
                    .map(|w| format!(" (Vault: {w})"))
                    .unwrap_or_default(),
            }),
            _ => Err(SecretError::Refused {
                path: path.into(),
                status: status.as_u16(),
                reason: messages(&body, "errors").unwrap_or_default(),
            }),
        }
    }

    /// The token: the configured one, or one from an AppRole login.
    async fn token(&self) -> Result<&Secret, SecretError> {
        self.token
            .get_or_try_init(|| async {
                match &self.settings.auth {
                    Auth::Token(token) => Ok(token.clone()),
                    Auth::AppRole {
                        mount,
                        role_id,
                        secret_id,
                    } => self.login(mount, role_id, secret_id).await,
                }
            })
            .await
    }

    async fn login(
        &self,
        mount: &str,
        role_id: &Secret,
        secret_id: &Secret,
    ) -> Result<Secret, SecretError> {
        let body =
            serde_json::json!({"role_id": role_id.expose(), "secret_id": secret_id.expose()});
        let request = self
            .request(self.http.post(self.url(&format!("auth/{mount}/login"))))
            .body(body.to_string());
        let (status, body) = self.send(request).await?;
        let token = body
            .pointer("/auth/client_token")
            .and_then(Value::as_str)
            .filter(|_| status.is_success());
        token.map(Secret::new).ok_or_else(|| SecretError::Login {
            addr: self.settings.addr.clone(),
            status: status.as_u16(),
            reason: messages(&body, "errors").unwrap_or_else(|| "no client token".into()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.settings.addr)
    }

    fn request(&self, builder: RequestBuilder) -> RequestBuilder {
        let builder = builder.header("X-Vault-Request", "true");
        match &self.settings.namespace {
            Some(ns) => builder.header("X-Vault-Namespace", ns),
            None => builder,
        }
    }

    /// Sends `request`; the status and the JSON body (`null` if none).
    async fn send(&self, request: RequestBuilder) -> Result<(StatusCode, Value), SecretError> {
        let unreachable = |e: reqwest::Error| SecretError::Unreachable {
            addr: self.settings.addr.clone(),
            reason: if e.is_timeout() {
                format!(
                    "no answer within {:?} (VAULT_CLIENT_TIMEOUT)",
                    self.settings.timeout
                )
            } else {
                root_cause(&e)
            },
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

/// The pairs of a KV read: `data.data` for KV v2, `data` for KV v1.
fn secret_data(path: &str, body: Value) -> Result<SecretData, SecretError> {
    let Value::Object(mut data) = body.get("data").cloned().unwrap_or(Value::Null) else {
        return Err(SecretError::Missing {
            path: path.into(),
            hint: String::new(),
        });
    };
    let is_v2 = data.len() == 2 && data.contains_key("metadata") && data.contains_key("data");
    if is_v2 {
        let Some(Value::Object(inner)) = data.remove("data") else {
            // KV v2 answers `"data": null` for a deleted version.
            return Err(SecretError::Missing {
                path: path.into(),
                hint: " (its latest version is deleted)".into(),
            });
        };
        data = inner;
    }
    Ok(SecretData::new(
        data.into_iter().collect::<BTreeMap<_, _>>(),
    ))
}

/// Vault's `errors` or `warnings` strings, joined.
fn messages(body: &Value, field: &str) -> Option<String> {
    let list: Vec<&str> = body
        .get(field)?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    (!list.is_empty()).then(|| list.join("; "))
}

/// The innermost cause of a transport error ("Connection refused", a TLS
/// verification failure), which says more than reqwest's outer message.
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_kv_v1_and_v2_answers() {
        let v2 = json!({"data": {"data": {"user": "u"}, "metadata": {"version": 1}}});
        let v1 = json!({"data": {"user": "u"}});
        for body in [v2, v1] {
            let data = secret_data("p", body).unwrap();
            assert_eq!(data.get("user"), Some(&json!("u")));
            assert_eq!(format!("{data:?}"), r#"{"user"}"#);
        }
        let deleted = json!({"data": {"data": null, "metadata": {"version": 2}}});
        let err = secret_data("p", deleted).unwrap_err().to_string();
        assert!(err.contains("deleted"), "{err}");
    }
}
