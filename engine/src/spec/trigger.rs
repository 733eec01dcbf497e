//! `trigger`: when a streaming pipeline runs its next micro-batch, written
//! as the Spark app did: `"processingTime=5 seconds"` (also `"5s"`,
//! `{"processingTime": "5 seconds"}`), `"once"` or `"availableNow"`.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// When micro-batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval (the next one right away when a batch takes
    /// longer); zero: as soon as the previous one finished.
    ProcessingTime(Duration),
    /// One batch with everything available, then stop.
    Once,
    /// Everything available at start, in batches of `maxOffsetsPerTrigger`,
    /// then stop.
    AvailableNow,
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::ProcessingTime(Duration::ZERO)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::ProcessingTime(d) => write!(f, "processingTime={}ms", d.as_millis()),
            Trigger::Once => f.write_str("once"),
            Trigger::AvailableNow => f.write_str("availableNow"),
        }
    }
}

impl Trigger {
    /// Reads a `trigger` value; the error says what is accepted.
    pub fn parse(value: &Value) -> Result<Trigger, String> {
        let help =
            "expected \"processingTime=5 seconds\" (or \"5s\"), \"once\" or \"availableNow\"";
        match value {
            Value::String(text) => {
                Self::parse_text(text).ok_or_else(|| format!("\"{text}\": {help}"))
            }
            Value::Object(map) if map.len() == 1 => {
                let (key, value) = map.iter().next().expect("one entry");
                match (key.as_str(), value) {
                    ("processingTime", Value::String(text)) => parse_duration(text)
                        .map(Trigger::ProcessingTime)
                        .ok_or_else(|| {
                            format!("\"{text}\" is not a duration such as \"5 seconds\"")
                        }),
                    ("once", Value::Bool(true)) => Ok(Trigger::Once),
                    ("availableNow", Value::Bool(true)) => Ok(Trigger::AvailableNow),
                    _ => Err(help.to_string()),
                }
            }
            _ => Err(help.to_string()),
        }
    }

    fn parse_text(text: &str) -> Option<Trigger> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "once" => return Some(Trigger::Once),
            "availablenow" | "available_now" => return Some(Trigger::AvailableNow),
            _ => {}
        }
        let interval = text
            .strip_prefix("processingTime")
            .map(|rest| rest.trim_start().strip_prefix('='))
            .unwrap_or(Some(text))?;
        parse_duration(interval).map(Trigger::ProcessingTime)
    }
}

/// `"5 seconds"`, `"5s"`, `"500ms"`, `"1 minute"`, `"2h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => number / 1000.0,
        "s" | "sec" | "secs" | "second" | "seconds" => number,
        "m" | "min" | "mins" | "minute" | "minutes" => number * 60.0,
        "h" | "hour" | "hours" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_spark_spellings() {
        let five = Trigger::ProcessingTime(Duration::from_secs(5));
        for text in [
            "processingTime=5 seconds",
            "processingTime = 5s",
            "5s",
            "5 seconds",
        ] {
            assert_eq!(Trigger::parse(&json!(text)), Ok(five), "{text}");
        }
        assert_eq!(
            Trigger::parse(&json!({"processingTime": "5 seconds"})),
            Ok(five)
        );
        assert_eq!(Trigger::parse(&json!("once")), Ok(Trigger::Once));
        assert_eq!(
            Trigger::parse(&json!("availableNow")),
            Ok(Trigger::AvailableNow)
        );
        assert_eq!(
            Trigger::parse(&json!({"availableNow": true})),
            Ok(Trigger::AvailableNow)
        );
        assert_eq!(
            Trigger::parse(&json!("250ms")),
            Ok(Trigger::ProcessingTime(Duration::from_millis(250)))
        );
        for bad in [
            json!("soon"),
            json!("5 parsecs"),
            json!(5),
            json!({"once": false}),
        ] {
            assert!(Trigger::parse(&bad).is_err(), "{bad}");
        }
    }
}
