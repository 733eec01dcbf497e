//! Changes applied to the raw JSON before it is typed: `--set path=value`
//! overrides and `${VAR}` environment references.

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

/// Replaces `${VAR}` (and `${VAR:-default}`) in every string of `value` with
/// the variable's value; `$${` stands for a literal `${`. An unset variable
/// without default is a config error naming the JSON path, never the value.
pub fn substitute_env(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    match value {
        Value::String(s) if s.contains("${") => *s = expand(s, path, env)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute_env(item, &format!("{path}[{i}]"), env)?;
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                substitute_env(item, &child, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(text: &str, path: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
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
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(Error::config(
                        path,
                        None,
                        format!("environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"),
                    ))
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "DIR").then(|| "/data".to_string())
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
