//! Changes applied to the raw JSON before it is typed: `--set path=value`
//! overrides and `${NAME}` references (environment variables, and Vault
//! secrets through [`Lookup`]s defined elsewhere).

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One segment of a `--set` path: an object key or an array index.
enum Segment {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && segments.is_empty() {
            return None;
        }
        if !key.is_empty() {
            segments.push(Segment::Key(key.to_string()));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']')?;
            segments.push(Segment::Index(stripped[..end].parse().ok()?));
            rest = &stripped[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(segments)
}

/// Applies one `--set PATH=VALUE` override. VALUE is read as JSON when it
/// parses as JSON (`true`, `42`, `["a"]`, `"quoted"`) and as a plain string
/// otherwise; missing object keys are created.
pub fn apply_set(root: &mut Value, assignment: &str) -> Result<()> {
    let bad = |message: String| Error::config(format!("--set {assignment}"), None, message);
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| bad("expected PATH=VALUE, e.g. steps[0].config.path=data.csv".into()))?;
    let segments = parse_path(path.trim()).ok_or_else(|| {
        bad(format!(
            "\"{path}\" is not a path like steps[0].config.path"
        ))
    })?;
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut node = root;
    for segment in segments {
        node = match segment {
            Segment::Key(key) => {
                if node.is_null() {
                    *node = Value::Object(Map::new());
                }
                node.as_object_mut()
                    .ok_or_else(|| {
                        bad(format!(
                            "cannot set key \"{key}\": its parent is not an object"
                        ))
                    })?
                    .entry(key)
                    .or_insert(Value::Null)
            }
            Segment::Index(index) => {
                let array = node.as_array_mut().ok_or_else(|| {
                    bad(format!(
                        "cannot index [{index}]: its parent is not an array"
                    ))
                })?;
                let len = array.len();
                array
                    .get_mut(index)
                    .ok_or_else(|| bad(format!("index [{index}] is out of range (length {len})")))?
            }
        };
    }
    *node = value;
    Ok(())
}

/// One string of the config whose value came, in whole or in part, from
/// the environment or from Vault.
#[derive(Clone)]
pub(super) struct Expanded {
    /// JSON path of the string, e.g. `steps[0].config.password`.
    pub path: String,
    /// The string as written, e.g. `${PGPASSWORD}`.
    pub written: String,
    /// The string after expansion.
    pub value: String,
    /// Each reference resolved in it: `(name, value)`, the name as between
    /// `${` and `}` (`PGPASSWORD`, `vault:secret/data/pg#password`).
    pub vars: Vec<(String, String)>,
}

/// The config strings whose value came from environment variables or from
/// Vault, so that a message about one of them shows what was written
/// (`${PGPASSWORD}`, `${vault:secret/data/pg#password}`), never the value.
#[derive(Clone, Default)]
pub struct EnvValues(Arc<Vec<Expanded>>);

impl fmt::Debug for EnvValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|e| &e.path))
            .finish()
    }
}

/// Values shorter than this are replaced only where a message quotes them
/// (`"1"`, `` `1` ``): replacing every `1` would garble the message, and so
/// short a value is no secret.
const MIN_BARE_LEN: usize = 4;

impl EnvValues {
    /// The set of `expanded` strings.
    pub(super) fn new(expanded: Vec<Expanded>) -> Self {
        EnvValues(Arc::new(expanded))
    }

    /// `message` about the value at `path` (or inside it), with every value
    /// expanded there from the environment replaced by what was written.
    pub fn redact(&self, path: &str, message: &str) -> String {
        let mut text = message.to_string();
        let concerned = self.0.iter().filter(|e| {
            e.path == path
                || e.path
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        for e in concerned {
            if e.value.is_empty() {
                continue;
            }
            for (from, to) in [
                (format!("{:?}", e.value), format!("{:?}", e.written)),
                (format!("\"{}\"", e.value), format!("\"{}\"", e.written)),
                (format!("`{}`", e.value), format!("`{}`", e.written)),
            ] {
                text = text.replace(&from, &to);
            }
            if e.value.chars().count() >= MIN_BARE_LEN {
                text = text.replace(&e.value, &e.written);
            }
            for (name, value) in &e.vars {
                if value.chars().count() >= MIN_BARE_LEN {
                    text = text.replace(value, &format!("${{{name}}}"));
                }
            }
        }
        text
    }

    /// [`EnvValues::redact`] applied to the message of a config error.
    pub fn redact_error(&self, err: Error) -> Error {
        match err {
            Error::Config {
                path,
                step,
                message,
            } => {
                let message = self.redact(&path, &message);
                Error::Config {
                    path,
                    step,
                    message,
                }
            }
            other => other,
        }
    }
}

/// What a `${NAME}` reference stands for.
pub(super) trait Lookup {
    /// The value of `name`: `Ok(None)` when it has none (a `:-default`
    /// applies), `Err(message)` when it cannot be had at all.
    fn get(&mut self, name: &str) -> std::result::Result<Option<String>, String>;

    /// The message for `name` having no value and no default.
    fn unset(&self, name: &str) -> String;
}

/// Environment variables only.
pub(super) struct EnvLookup<'a>(pub &'a dyn Fn(&str) -> Option<String>);

impl Lookup for EnvLookup<'_> {
    fn get(&mut self, name: &str) -> std::result::Result<Option<String>, String> {
        Ok((self.0)(name))
    }

    fn unset(&self, name: &str) -> String {
        format!("environment variable {name} is not set (use ${{{name}:-default}} for a fallback)")
    }
}

/// Replaces `${NAME}` (and `${NAME:-default}`) in every string of `value`
/// with what `lookup` gives; `$${` stands for a literal `${`. A reference
/// without value or default is a config error naming the JSON path, never
/// a value. Returns the strings that changed (for [`EnvValues::redact`]).
pub(super) fn substitute(
    value: &mut Value,
    path: &str,
    lookup: &mut dyn Lookup,
) -> Result<Vec<Expanded>> {
    let mut found = Vec::new();
    substitute_into(value, path, lookup, &mut found)?;
    Ok(found)
}

fn substitute_into(
    value: &mut Value,
    path: &str,
    lookup: &mut dyn Lookup,
    found: &mut Vec<Expanded>,
) -> Result<()> {
    match value {
        Value::String(s) if s.contains("${") => {
            let (expanded, vars) = expand(s, path, lookup)?;
            if !vars.is_empty() {
                found.push(Expanded {
                    path: path.to_string(),
                    written: s.clone(),
                    value: expanded.clone(),
                    vars,
                });
            }
            *s = expanded;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_into(item, &format!("{path}[{i}]"), lookup, found)?;
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                substitute_into(item, &child, lookup, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The expanded text and the references resolved in it.
type Expansion = (String, Vec<(String, String)>);

fn expand(text: &str, path: &str, lookup: &mut dyn Lookup) -> Result<Expansion> {
    let mut out = String::with_capacity(text.len());
    let mut vars = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| Error::config(path, None, "unterminated ${...} reference"))?;
            let (name, default) = match tail[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&tail[..end], None),
            };
            let found = lookup
                .get(name)
                .map_err(|message| Error::config(path, None, message))?;
            match (found, default) {
                (Some(v), _) => {
                    out.push_str(&v);
                    vars.push((name.to_string(), v));
                }
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(Error::config(path, None, lookup.unset(name))),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok((out, vars))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "DIR").then(|| "/data".to_string())
    }

    fn substitute_env(
        value: &mut Value,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<EnvValues> {
        substitute(value, path, &mut EnvLookup(env)).map(EnvValues::new)
    }

    #[test]
    fn substitutes_and_reports_unset_by_path() {
        let mut v = json!({"steps": [{"config": {"path": "${DIR}/x-$${lit}-${NOPE:-d}"}}]});
        substitute_env(&mut v, "", &env).unwrap();
        assert_eq!(v["steps"][0]["config"]["path"], "/data/x-${lit}-d");
        let mut v = json!({"steps": [{"config": {"password": "${SECRET_PW}"}}]});
        let err = substitute_env(&mut v, "", &env).unwrap_err().to_string();
        assert!(
            err.contains("steps[0].config.password") && err.contains("SECRET_PW"),
            "{err}"
        );
    }

    #[test]
    fn messages_show_what_was_written_not_the_environment() {
        let env = |name: &str| (name == "PW").then(|| "hunter2XYZ".to_string());
        let mut v =
            json!({"steps": [{"config": {"n": "${PW}", "url": "u:${PW}@h", "x": "${NO:-d}"}}]});
        let found = substitute_env(&mut v, "", &env).unwrap();
        let n = "steps[0].config.n";
        assert_eq!(
            found.redact(n, "invalid type: string \"hunter2XYZ\", expected usize"),
            "invalid type: string \"${PW}\", expected usize"
        );
        assert_eq!(
            found.redact("steps[0].config.url", "bad url u:hunter2XYZ@h"),
            "bad url u:${PW}@h"
        );
        assert_eq!(
            found.redact("steps[0].config", "unknown variant `hunter2XYZ`"),
            "unknown variant `${PW}`"
        );
        // Other paths and values not from the environment are left alone.
        assert_eq!(
            found.redact("steps[0].config.x", "d hunter2XYZ"),
            "d hunter2XYZ"
        );
        assert_eq!(
            format!("{found:?}"),
            r#"["steps[0].config.n", "steps[0].config.url"]"#
        );
    }

    #[test]
    fn set_overrides_typed_values() {
        let mut v = json!({"steps": [{"config": {"path": "a"}}]});
        apply_set(&mut v, "steps[0].config.path=b.csv").unwrap();
        apply_set(&mut v, "steps[0].config.header=false").unwrap();
        apply_set(&mut v, "steps[0].config.opts.n=3").unwrap();
        assert_eq!(
            v,
            json!({"steps": [{"config": {"path": "b.csv", "header": false, "opts": {"n": 3}}}]})
        );
        assert!(apply_set(&mut v, "steps[3].config.path=x").is_err());
        assert!(apply_set(&mut v, "steps[0]config").is_err());
    }
}
