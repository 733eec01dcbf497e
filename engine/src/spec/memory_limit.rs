//! `memoryLimit` / `--memory-limit`: a size in bytes written like `2GB`,
//! `512MB` or `1.5GiB`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// The most memory a run may use, in bytes. Written as a number and a unit:
/// `B`, `KB`/`KiB`/`K`, `MB`/`MiB`/`M`, `GB`/`GiB`/`G`, `TB`/`TiB`/`T`
/// (case-insensitive; every unit is a power of 1024, as in Spark and
/// datafusion-cli), e.g. `2GB`, `512MB`, `1.5GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemoryLimit(u64);

/// The units, largest first, with their size in bytes.
const UNITS: [(&[&str], u64); 5] = [
    (&["t", "tb", "tib"], 1 << 40),
    (&["g", "gb", "gib"], 1 << 30),
    (&["m", "mb", "mib"], 1 << 20),
    (&["k", "kb", "kib"], 1 << 10),
    (&["b"], 1),
];

impl MemoryLimit {
    /// A limit of `bytes` bytes.
    pub fn from_bytes(bytes: u64) -> Self {
        MemoryLimit(bytes)
    }

    /// The limit in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for MemoryLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "\"{text}\" is not a memory size: write a number and a unit, e.g. 2GB, 512MB or 1.5GiB"
            )
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, unit) = trimmed.split_at(split);
        let unit = unit.trim_start().to_ascii_lowercase();
        let scale = UNITS
            .iter()
            .find(|(names, _)| names.contains(&unit.as_str()))
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(bad());
        }
        if bytes < 1.0 {
            return Err(format!(
                "\"{text}\" is no memory: the limit must be above 0"
            ));
        }
        Ok(MemoryLimit(bytes as u64))
    }
}

impl fmt::Display for MemoryLimit {
    /// In the largest unit the size reaches, one decimal: `1.0 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ["TiB", "GiB", "MiB", "KiB"];
        match UNITS.iter().zip(names).find(|((_, s), _)| self.0 >= *s) {
            Some(((_, scale), name)) => write!(f, "{:.1} {name}", self.0 as f64 / *scale as f64),
            None => write!(f, "{} B", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        let cases = [
            ("2GB", 2 << 30),
            ("512MB", 512 << 20),
            ("1.5GiB", 3 << 29),
            ("1 g", 1 << 30),
            ("64kb", 64 << 10),
            ("100B", 100),
            ("1TB", 1 << 40),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                text.parse::<MemoryLimit>().unwrap().bytes(),
                bytes,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_bad_text() {
        for text in [
            "",
            "2",
            "GB",
            "2XB",
            "-1GB",
            "1.2.3GB",
            "0MB",
            "2 GB extra",
            "1e3GB",
        ] {
            let err = text.parse::<MemoryLimit>().unwrap_err();
            assert!(err.contains(&format!("\"{text}\"")), "{text}: {err}");
        }
    }

    #[test]
    fn displays_in_largest_unit() {
        assert_eq!(MemoryLimit::from_bytes(1 << 30).to_string(), "1.0 GiB");
        assert_eq!(MemoryLimit::from_bytes(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(MemoryLimit::from_bytes(1 << 20).to_string(), "1.0 MiB");
        assert_eq!(MemoryLimit::from_bytes(512).to_string(), "512 B");
    }
}
