//! Where a cached relation lives: Spark's storage level names, mapped onto
//! the two levels dataflow has.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// Where cached data lives, named as in Spark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageLevel {
    /// Record batches held in memory.
    #[default]
    Memory,
    /// Record batches written to local Arrow IPC files and read back as
    /// needed, for data larger than memory.
    MemoryAndDisk,
}

/// Spark's level names and the level each maps to. Serialization (`_SER`)
/// and replication (`_2`, `_3`) do not apply to one process; `OFF_HEAP` is
/// memory; anything that may use disk writes to disk.
const NAMES: [(&str, StorageLevel); 13] = [
    ("MEMORY", StorageLevel::Memory),
    ("MEMORY_ONLY", StorageLevel::Memory),
    ("MEMORY_ONLY_SER", StorageLevel::Memory),
    ("MEMORY_ONLY_2", StorageLevel::Memory),
    ("MEMORY_ONLY_SER_2", StorageLevel::Memory),
    ("OFF_HEAP", StorageLevel::Memory),
    ("MEMORY_AND_DISK", StorageLevel::MemoryAndDisk),
    ("MEMORY_AND_DISK_SER", StorageLevel::MemoryAndDisk),
    ("MEMORY_AND_DISK_2", StorageLevel::MemoryAndDisk),
    ("MEMORY_AND_DISK_SER_2", StorageLevel::MemoryAndDisk),
    ("DISK_ONLY", StorageLevel::MemoryAndDisk),
    ("DISK_ONLY_2", StorageLevel::MemoryAndDisk),
    ("DISK_ONLY_3", StorageLevel::MemoryAndDisk),
];

impl FromStr for StorageLevel {
    type Err = String;

    /// A Spark level name, in any case.
    fn from_str(text: &str) -> Result<Self, String> {
        let upper = text.trim().to_ascii_uppercase();
        NAMES
            .iter()
            .find(|(name, _)| *name == upper)
            .map(|(_, level)| *level)
            .ok_or_else(|| {
                format!(
                    "unknown storage level \"{text}\": use MEMORY_ONLY or MEMORY_AND_DISK \
                     (Spark's other names, e.g. MEMORY_AND_DISK_SER or DISK_ONLY, are accepted)"
                )
            })
    }
}

impl fmt::Display for StorageLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageLevel::Memory => "MEMORY",
            StorageLevel::MemoryAndDisk => "MEMORY_AND_DISK",
        })
    }
}

impl<'de> Deserialize<'de> for StorageLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spark_names_map_onto_the_two_levels() {
        for (name, level) in [
            ("MEMORY_ONLY", StorageLevel::Memory),
            ("memory_only_ser_2", StorageLevel::Memory),
            ("MEMORY", StorageLevel::Memory),
            ("MEMORY_AND_DISK", StorageLevel::MemoryAndDisk),
            ("MEMORY_AND_DISK_SER", StorageLevel::MemoryAndDisk),
            ("DISK_ONLY", StorageLevel::MemoryAndDisk),
        ] {
            assert_eq!(name.parse::<StorageLevel>(), Ok(level), "{name}");
        }
        let err = "SSD".parse::<StorageLevel>().unwrap_err();
        assert!(err.contains("unknown storage level \"SSD\""), "{err}");
    }
}
