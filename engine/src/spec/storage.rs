//! `storage`: object-store options per location, as written at the top of a
//! pipeline: `{"s3://bucket": {"aws_endpoint": ..., "credentialPath": ...}}`.
//! Keys are URL prefixes, values object_store's option names (and the few
//! delta-rs adds for AWS). DataFusion keys object stores by scheme and host,
//! so one bucket (or one Azure account) has one option set.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::object_store::aws::AmazonS3ConfigKey;
use datafusion::object_store::azure::AzureConfigKey;
use datafusion::object_store::gcp::GoogleConfigKey;
use serde_json::{Map, Value};
use url::Url;

use super::secrets::CREDENTIAL_PATH;
use crate::error::{Error, Result};

/// The URL schemes a path may have, besides plain local paths.
pub const SCHEMES: [&str; 8] = ["file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// Options delta-rs reads for every store: retries of failed requests.
const DELTA_RS_KEYS: [&str; 2] = ["max_retries", "retry_timeout"];

/// Options delta-rs's AWS support reads besides object_store's own (the
/// AWS SDK's credential chain: profiles, roles, web identity; and the
/// rename fallback for S3-compatible servers without conditional PUT).
const DELTA_RS_AWS_KEYS: [&str; 12] = [
    "aws_ec2_metadata_timeout",
    "aws_s3_allow_unsafe_rename",
    "aws_profile",
    "aws_iam_role_arn",
    "aws_iam_role_session_name",
    "aws_s3_assume_role_arn",
    "aws_s3_role_session_name",
    "aws_web_identity_token_file",
    "aws_role_arn",
    "aws_role_session_name",
    "aws_ec2_metadata_disabled",
    "aws_force_credential_load",
];

/// The validated `storage` map: one option set per store (scheme and
/// host), cheap to clone. Its `Debug` shows prefixes and option names,
/// never values (which may be credentials).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorageOptions(Arc<BTreeMap<String, Location>>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .values()
                    .map(|l| (&l.prefix, l.options.keys().collect::<Vec<_>>())),
            )
            .finish()
    }
}

/// One store's options and where they were written.
#[derive(Clone, PartialEq, Eq)]
struct Location {
    /// The prefix as written (the key of the `storage` map).
    prefix: String,
    options: BTreeMap<String, String>,
}

impl StorageOptions {
    /// Parses the `storage` map (after `${...}` substitution and
    /// `credentialPath` merging): every prefix a URL with a known scheme,
    /// every option a name its store knows, one option set per store.
    pub(super) fn parse(raw: &BTreeMap<String, Map<String, Value>>) -> Result<Self> {
        let mut stores: BTreeMap<String, Location> = BTreeMap::new();
        for (prefix, entry) in raw {
            let at = format!("storage.{prefix}");
            let url = parse_location(prefix).map_err(|m| Error::config(&at, None, m))?;
            if url.scheme() == "file" {
                return Err(Error::config(
                    at,
                    None,
                    "local paths need no storage options; remove this entry",
                ));
            }
            let options = parse_options(&url, entry, &at)?;
            let key = store_key(&url);
            if let Some(other) = stores.get(&key) {
                if other.options != options {
                    return Err(Error::config(
                        at,
                        None,
                        format!(
                            "\"{prefix}\" and \"{}\" are in the same {} but have different options: \
                             one store (scheme and host) has one option set. Help: merge the two entries{}",
                            other.prefix,
                            store_noun(&url),
                            if url.username().is_empty() {
                                ""
                            } else {
                                ", or address each container as az://CONTAINER/path with its own account options"
                            }
                        ),
                    ));
                }
                continue;
            }
            let location = Location {
                prefix: prefix.clone(),
                options,
            };
            stores.insert(key, location);
        }
        Ok(StorageOptions(Arc::new(stores)))
    }

    /// The options for the store holding `url` (empty: the default
    /// credential chains).
    pub fn for_url(&self, url: &Url) -> BTreeMap<String, String> {
        self.0
            .get(&store_key(url))
            .map(|l| l.options.clone())
            .unwrap_or_default()
    }
}

/// What one store is in words, for messages.
fn store_noun(url: &Url) -> &'static str {
    match url.scheme() {
        "s3" | "s3a" => "bucket",
        "gs" => "bucket",
        _ if !url.username().is_empty() => "Azure account",
        _ => "container",
    }
}

/// `path` as a URL: a known scheme, a host (bucket, container or account).
pub fn parse_location(path: &str) -> std::result::Result<Url, String> {
    let url = Url::parse(path).map_err(|e| format!("\"{path}\" is not a valid URL: {e}"))?;
    if !SCHEMES.contains(&url.scheme()) {
        return Err(format!(
            "unsupported scheme \"{}://\": use a local path or one of {}",
            url.scheme(),
            SCHEMES.map(|s| format!("{s}://")).join(", ")
        ));
    }
    if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "\"{path}\" names no {}: write {}://NAME/path",
            store_noun(&url),
            url.scheme()
        ));
    }
    Ok(url)
}

/// The key DataFusion's registry files a store under, with the schemes
/// that name one store kind folded together (`s3a` is `s3`).
fn store_key(url: &Url) -> String {
    let scheme = match url.scheme() {
        "s3a" => "s3",
        "abfs" => "abfss",
        "azure" => "az",
        other => other,
    };
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// The option values as strings (numbers and booleans as Spark takes them),
/// each key one its store knows.
fn parse_options(
    url: &Url,
    entry: &Map<String, Value>,
    at: &str,
) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for (key, value) in entry {
        if key == CREDENTIAL_PATH {
            continue;
        }
        let path = format!("{at}.{key}");
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(Error::config(path, None, "must be a string")),
        };
        let name = canonical_key(url, key).map_err(|m| Error::config(&path, None, m))?;
        if options.insert(name.clone(), text).is_some() {
            return Err(Error::config(
                path,
                None,
                format!("sets {name} a second time (option names are case-insensitive and aliases name the same option)"),
            ));
        }
    }
    Ok(options)
}

/// The name the store of `url` knows option `key` by (aliases and case
/// folded to object_store's canonical name).
fn canonical_key(url: &Url, key: &str) -> std::result::Result<String, String> {
    let lower = key.to_ascii_lowercase();
    if DELTA_RS_KEYS.contains(&lower.as_str()) {
        return Ok(lower);
    }
    let (known, examples) = match url.scheme() {
        "s3" | "s3a" if DELTA_RS_AWS_KEYS.contains(&lower.as_str()) => (Some(lower.clone()), ""),
        "s3" | "s3a" => (
            AmazonS3ConfigKey::from_str(&lower).ok().map(|k| k.as_ref().to_string()),
            "aws_endpoint, aws_region, aws_access_key_id, aws_secret_access_key, aws_profile",
        ),
        "gs" => (
            GoogleConfigKey::from_str(&lower).ok().map(|k| k.as_ref().to_string()),
            "google_service_account, google_service_account_key, google_application_credentials",
        ),
        _ => (
            AzureConfigKey::from_str(&lower).ok().map(|k| k.as_ref().to_string()),
            "azure_storage_account_name, azure_storage_account_key, azure_storage_sas_key, azure_storage_use_emulator",
        ),
    };
    if let Some(name) = known {
        Ok(name)
    } else {
        Err(format!(
            "unknown option \"{key}\" for {}:// locations; options use object_store's names, e.g. {examples}",
            url.scheme()
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: Value) -> Result<StorageOptions> {
        let raw: BTreeMap<String, Map<String, Value>> = serde_json::from_value(value).unwrap();
        StorageOptions::parse(&raw)
    }

    fn message(err: Error) -> String {
        err.to_string()
    }

    #[test]
    fn options_apply_per_bucket_and_s3a_is_s3() {
        let storage = parse(json!({
            "s3a://data/raw": {"aws_endpoint": "http://127.0.0.1:9000", "aws_allow_http": true},
            "s3://data": {"aws_endpoint": "http://127.0.0.1:9000", "aws_allow_http": "true"},
        }))
        .unwrap();
        let options = storage.for_url(&Url::parse("s3://data/other/x.parquet").unwrap());
        // Aliases fold into object_store's canonical names.
        assert_eq!(options["allow_http"], "true");
        assert!(storage
            .for_url(&Url::parse("s3://elsewhere/x").unwrap())
            .is_empty());
    }

    #[test]
    fn two_option_sets_for_one_bucket_are_an_error() {
        let err = parse(json!({
            "s3://data/a": {"aws_region": "eu-west-1"},
            "s3://data/b": {"aws_region": "us-east-1"},
        }))
        .unwrap_err();
        assert!(message(err).contains("same bucket"));
        let err = parse(json!({
            "abfss://one@acct.dfs.core.windows.net": {"azure_storage_account_key": "k1"},
            "abfss://two@acct.dfs.core.windows.net": {"azure_storage_account_key": "k2"},
        }))
        .unwrap_err();
        let text = message(err);
        assert!(text.contains("same Azure account"), "{text}");
        assert!(text.contains("az://CONTAINER"), "{text}");
    }

    #[test]
    fn unknown_options_and_schemes_are_errors() {
        let text = message(parse(json!({"s3://b": {"aws_endpoit": "x"}})).unwrap_err());
        assert!(text.contains("storage.s3://b.aws_endpoit"), "{text}");
        assert!(text.contains("unknown option"), "{text}");
        let text = message(parse(json!({"hdfs://b": {}})).unwrap_err());
        assert!(text.contains("unsupported scheme"), "{text}");
        assert!(parse(json!({"gs://b": {"google_service_account_key": "{}"}})).is_ok());
        assert!(parse(json!({"az://c": {"azure_storage_use_emulator": true}})).is_ok());
        assert!(parse(json!({"s3://b": {"AWS_PROFILE": "dev", "max_retries": 3}})).is_ok());
        let text =
            message(parse(json!({"s3://b": {"aws_region": "a", "REGION": "b"}})).unwrap_err());
        assert!(text.contains("second time"), "{text}");
    }

    #[test]
    fn aliases_are_one_option_and_debug_shows_no_value() {
        let storage = parse(json!({
            "s3://data/a": {"region": "eu-west-1", "aws_secret_access_key": "s3cr3t"},
            "s3://data/b": {"aws_region": "eu-west-1", "secret_access_key": "s3cr3t"},
        }))
        .unwrap();
        let debug = format!("{storage:?}");
        assert!(debug.contains("aws_secret_access_key"), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }
}
