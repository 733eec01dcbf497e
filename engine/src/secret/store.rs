//! Where secrets are read from: the [`SecretStore`] the config loader asks
//! for `${vault:PATH#KEY}` and `credentialPath`, the key/value data it
//! returns, and its errors (which never hold a value).

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde_json::Value;

/// The key/value pairs of one secret. `Debug` shows the keys, never the
/// values.
#[derive(Clone, Default, PartialEq)]
pub struct SecretData(BTreeMap<String, Value>);

impl SecretData {
    /// Wraps the pairs read from a store.
    pub fn new(pairs: BTreeMap<String, Value>) -> Self {
        SecretData(pairs)
    }

    /// The value of `key`, if the secret has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// Every pair, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter()
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Why a secret could not be read. The messages name the store's address,
/// the secret's path and keys, never a value or a token.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The store's settings (environment variables, files) are unusable.
    #[error("{0}")]
    Settings(String),
    /// No answer within the timeout, or no connection at all.
    #[error("Vault at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The store's address.
        addr: String,
        /// What went wrong (refused, timed out, TLS).
        reason: String,
    },
    /// Logging in (AppRole) failed.
    #[error("Vault login at {addr} failed ({status}): {reason}")]
    Login {
        /// The store's address.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The store's own explanation.
        reason: String,
    },
    /// The token may not read this path.
    #[error("permission denied reading Vault secret {path}")]
    Denied {
        /// The secret's path.
        path: String,
    },
    /// There is no secret at this path.
    #[error("no Vault secret at {path}{hint}")]
    Missing {
        /// The secret's path.
        path: String,
        /// What the store said about the path (e.g. a KV v2 hint).
        hint: String,
    },
    /// Any other refusal.
    #[error("Vault refused to read {path} ({status}): {reason}")]
    Refused {
        /// The secret's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The store's own explanation.
        reason: String,
    },
}

/// A store of secrets, read once per path while a config is loaded.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The key/value pairs of the secret at `path` (as written in the
    /// config, e.g. `secret/data/kafka`).
    async fn read(&self, path: &str) -> Result<SecretData, SecretError>;
}
