//! Secrets in a config: `${vault:PATH#KEY}` references in strings and
//! `credentialPath` in step configs and `storage` entries. Loading finds every secret path the
//! config names, reads each once from the [`SecretStore`] (concurrently),
//! then substitutes the references and merges each `credentialPath`
//! secret under its step's explicit keys. Every value taken from a secret
//! joins [`EnvValues`], so messages show what was written, never the value.

use std::collections::{BTreeMap, HashMap};

use futures::future::join_all;
use serde_json::{Map, Value};

use super::overrides::{substitute, EnvLookup, Expanded, Lookup};
use crate::error::{Error, Result};
use crate::secret::{SecretData, SecretError, SecretStore};

/// The step config key naming a secret whose keys are config keys.
pub(super) const CREDENTIAL_PATH: &str = "credentialPath";

/// What follows `${` in a reference to a Vault secret's key.
const VAULT_PREFIX: &str = "vault:";

/// The keys a step took from its `credentialPath` secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The secret's path, as written.
    pub path: String,
    /// The keys merged into the step's config (those it did not set).
    pub keys: Vec<String>,
}

/// The secrets read for one load, by path.
#[derive(Debug, Default)]
pub(super) struct Fetched(HashMap<String, SecretData>);

impl Fetched {
    /// Reads every secret `value` names (after `${ENV}` substitution) from
    /// `store`, each path once. A failure is a config error at the first
    /// JSON path naming that secret.
    pub async fn read(
        value: &Value,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        store: &dyn SecretStore,
    ) -> Result<Fetched> {
        let wanted = wanted(value, env)?;
        let reads = join_all(wanted.iter().map(|(path, _)| store.read(path))).await;
        let mut fetched = HashMap::new();
        for ((path, at), read) in wanted.into_iter().zip(reads) {
            let data = read.map_err(|err| Error::config(at, None, explain(&err)))?;
            tracing::debug!(path, keys = ?data, "read Vault secret");
            fetched.insert(path, data);
        }
        Ok(Fetched(fetched))
    }

    fn get(&self, path: &str) -> std::result::Result<&SecretData, String> {
        self.0
            .get(path)
            .ok_or_else(|| format!("Vault secret {path} was not read (no secret store)"))
    }
}

/// The message of a failed read, with what to do about it.
fn explain(err: &SecretError) -> String {
    let help = match err {
        SecretError::Settings(_) | SecretError::Login { .. } => {
            "set VAULT_ADDR and VAULT_TOKEN (or VAULT_ROLE_ID and VAULT_SECRET_ID)"
        }
        SecretError::Unreachable { .. } => {
            "check VAULT_ADDR and that Vault is up; VAULT_CLIENT_TIMEOUT sets the timeout"
        }
        SecretError::Denied { .. } => "the token's policies must allow \"read\" on this path",
        SecretError::Missing { .. } => {
            "KV v2 paths include \"data/\" after the mount (secret/data/NAME); KV v1 paths do not"
        }
        SecretError::Refused { .. } => "see Vault's message",
    };
    format!("{err}\nHelp: {help}")
}

/// Every secret path `value` names, with the JSON path of its first use,
/// in document order.
fn wanted(value: &Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>> {
    let mut probe = value.clone();
    let mut collect = Resolver { env, fetched: None };
    let expanded = substitute(&mut probe, "", &mut collect)?;
    let references = expanded.iter().flat_map(|e| {
        e.vars.iter().filter_map(|(name, _)| {
            let (path, _) = vault_reference(name)?.ok()?;
            Some((path.to_string(), e.path.clone()))
        })
    });
    let credentials = holders(&probe).into_iter().filter_map(|(holder, config)| {
        let path = config.get(CREDENTIAL_PATH)?.as_str()?;
        Some((path.to_string(), format!("{}.{CREDENTIAL_PATH}", holder.at)))
    });
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (path, at) in references.chain(credentials) {
        if !wanted.iter().any(|(p, _)| *p == path) {
            wanted.push((path, at));
        }
    }
    Ok(wanted)
}

/// An object that may hold a `credentialPath`: a step's config or a
/// `storage` entry.
struct Holder {
    /// Its JSON path, e.g. `steps[0].config` or `storage.s3://bucket`.
    at: String,
    /// The step's index, for a step's config.
    step: Option<usize>,
}

impl Holder {
    fn step(index: usize) -> Self {
        Holder {
            at: format!("steps[{index}].config"),
            step: Some(index),
        }
    }

    fn storage(prefix: &str) -> Self {
        Holder {
            at: format!("storage.{prefix}"),
            step: None,
        }
    }
}

/// Every object of a pipeline's JSON that may hold a `credentialPath`.
fn holders(value: &Value) -> Vec<(Holder, &Map<String, Value>)> {
    let steps = value
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(index, step)| Some((Holder::step(index), step.get("config")?.as_object()?)));
    let storage = value
        .get("storage")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(prefix, entry)| Some((Holder::storage(prefix), entry.as_object()?)));
    steps.chain(storage).collect()
}

/// [`holders`], to change.
fn holders_mut(value: &mut Value) -> Vec<(Holder, &mut Map<String, Value>)> {
    let mut found = Vec::new();
    for (key, item) in value.as_object_mut().into_iter().flatten() {
        match key.as_str() {
            "steps" => {
                for (index, step) in item.as_array_mut().into_iter().flatten().enumerate() {
                    if let Some(config) = step.get_mut("config").and_then(Value::as_object_mut) {
                        found.push((Holder::step(index), config));
                    }
                }
            }
            "storage" => {
                for (prefix, entry) in item.as_object_mut().into_iter().flatten() {
                    if let Some(entry) = entry.as_object_mut() {
                        found.push((Holder::storage(prefix), entry));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// `vault:PATH#KEY` split into path and key; `None` if `name` is not a
/// Vault reference, `Err` if it is a malformed one.
fn vault_reference(name: &str) -> Option<std::result::Result<(&str, &str), String>> {
    let reference = name.strip_prefix(VAULT_PREFIX)?;
    Some(match reference.rsplit_once('#') {
        Some((path, key)) if !path.trim().is_empty() && !key.is_empty() => {
            Ok((path.trim().trim_matches('/'), key))
        }
        _ => Err(format!(
            "${{{name}}} must name a secret and a key: ${{vault:PATH#KEY}}, e.g. ${{vault:secret/data/kafka#password}}"
        )),
    })
}

/// `${NAME}` from the environment, `${vault:PATH#KEY}` from the secrets
/// read; without secrets (`fetched: None`) every Vault reference resolves
/// to an empty string, which is how [`wanted`] finds them.
struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    fetched: Option<&'a Fetched>,
}

impl Lookup for Resolver<'_> {
    fn get(&mut self, name: &str) -> std::result::Result<Option<String>, String> {
        let Some(reference) = vault_reference(name) else {
            return EnvLookup(self.env).get(name);
        };
        let (path, key) = reference?;
        let Some(fetched) = self.fetched else {
            return Ok(Some(String::new()));
        };
        match fetched.get(path)?.get(key) {
            None => Ok(None),
            Some(value) => text(value).map(Some).ok_or_else(|| {
                format!("key {key} of Vault secret {path} is not a string, number or boolean")
            }),
        }
    }

    fn unset(&self, name: &str) -> String {
        match vault_reference(name) {
            Some(Ok((path, key))) => format!("Vault secret {path} has no key {key}"),
            _ => EnvLookup(self.env).unset(name),
        }
    }
}

/// A scalar as the text a `${...}` reference puts in a string.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Substitutes `${ENV}` and `${vault:PATH#KEY}` in `value`, then merges
/// every `credentialPath` secret under its step's config or `storage`
/// entry. Returns what came
/// from the environment or Vault, and each step's merged keys by index.
pub(super) fn resolve(
    value: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    fetched: &Fetched,
) -> Result<(Vec<Expanded>, BTreeMap<usize, Credentials>)> {
    let mut resolver = Resolver {
        env,
        fetched: Some(fetched),
    };
    let mut expanded = substitute(value, "", &mut resolver)?;
    let mut credentials = BTreeMap::new();
    for (holder, config) in holders_mut(value) {
        let Some(path) = config.get(CREDENTIAL_PATH).and_then(Value::as_str) else {
            continue;
        };
        let path = path.to_string();
        let at = holder.at;
        let data = fetched
            .get(&path)
            .map_err(|m| Error::config(format!("{at}.{CREDENTIAL_PATH}"), None, m))?;
        let (keys, merged) = merge_under(config, data, &path, &at);
        expanded.extend(merged);
        if let Some(index) = holder.step {
            credentials.insert(index, Credentials { path, keys });
        }
    }
    Ok((expanded, credentials))
}

/// Adds every key of the secret at `path` that `config` (at JSON path
/// `at`) does not set itself: explicit keys win. Returns the keys added and
/// their values as [`Expanded`] strings (written as
/// `${vault:PATH#KEY}`), for redaction.
pub(super) fn merge_under(
    config: &mut Map<String, Value>,
    data: &SecretData,
    path: &str,
    at: &str,
) -> (Vec<String>, Vec<Expanded>) {
    let mut keys = Vec::new();
    let mut merged = Vec::new();
    for (key, value) in data.iter() {
        if config.contains_key(key) {
            continue;
        }
        config.insert(key.clone(), value.clone());
        keys.push(key.clone());
        let name = format!("{VAULT_PREFIX}{path}#{key}");
        let shown = text(value).unwrap_or_else(|| value.to_string());
        merged.push(Expanded {
            path: format!("{at}.{key}"),
            written: format!("${{{name}}}"),
            value: shown.clone(),
            vars: vec![(name, shown)],
        });
    }
    (keys, merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use serde_json::json;

    struct Store;

    #[async_trait]
    impl SecretStore for Store {
        async fn read(&self, path: &str) -> std::result::Result<SecretData, SecretError> {
            match path {
                "secret/data/pg" => Ok(SecretData::new(
                    [("password", json!("s3cr3t-pw")), ("user", json!("app"))]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                )),
                _ => Err(SecretError::Missing {
                    path: path.into(),
                    hint: String::new(),
                }),
            }
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[tokio::test]
    async fn references_and_credential_paths_resolve() {
        let mut value = json!({"steps": [
            {"config": {"url": "postgres://${vault:secret/data/pg#user}@h/db", "credentialPath": "secret/data/pg", "user": "explicit"}}
        ]});
        let fetched = Fetched::read(&value, &no_env, &Store).await.unwrap();
        let (expanded, credentials) = resolve(&mut value, &no_env, &fetched).unwrap();
        let config = &value["steps"][0]["config"];
        assert_eq!(config["url"], "postgres://app@h/db");
        assert_eq!(config["user"], "explicit");
        assert_eq!(config["password"], "s3cr3t-pw");
        assert_eq!(credentials[&0].keys, ["password"]);
        let values = super::super::EnvValues::new(expanded);
        assert_eq!(
            values.redact("steps[0].config.password", "bad s3cr3t-pw"),
            "bad ${vault:secret/data/pg#password}"
        );
    }

    #[tokio::test]
    async fn failures_name_the_first_json_path() {
        let value = json!({"steps": [{"config": {"a": "${vault:secret/data/nope#k}"}}]});
        let err = Fetched::read(&value, &no_env, &Store).await.unwrap_err();
        assert!(matches!(&err, Error::Config { path, .. } if path == "steps[0].config.a"));
        let mut value = json!({"steps": [{"config": {"a": "${vault:secret/data/pg#nokey}"}}]});
        let fetched = Fetched::read(&value, &no_env, &Store).await.unwrap();
        let err = resolve(&mut value, &no_env, &fetched)
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no key nokey"), "{err}");
        let value = json!({"x": "${vault:secret/data/pg}"});
        let err = Fetched::read(&value, &no_env, &Store).await.unwrap_err();
        assert!(err.to_string().contains("PATH#KEY"), "{err}");
    }
}
