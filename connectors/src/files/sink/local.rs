//! `toFiles` into a local directory: the files are written to a hidden
//! sibling directory and moved in by renames. A new or overwritten
//! directory appears at once (one directory rename); appended files appear
//! one by one.

use std::path::{Path, PathBuf};

use crate::error::{io, Result};
use crate::save_mode::SaveMode;

/// A new hidden directory beside `target`, e.g. `.out.staging-UUID`.
pub(super) fn staging_dir(target: &Path) -> PathBuf {
    sibling(target, "staging")
}

fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!(".{name}.{tag}-{}", uuid::Uuid::new_v4()))
}

/// True when `path` exists and holds at least one entry.
pub(super) fn has_data(path: &Path) -> bool {
    std::fs::read_dir(path)
        .map(|mut d| d.next().is_some())
        .unwrap_or(path.is_file())
}

/// Total size of the files under `dir`.
pub(super) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Moves every file under `from` to the same relative place under `to`.
fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            move_tree(&entry.path(), &dest)?;
        } else {
            std::fs::rename(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Moves the staged files into `target` as `mode` says. `Ok(false)`: the
/// target appeared meanwhile and `mode` is errorIfExists (nothing moved).
pub(super) fn commit(target: &Path, staging: &Path, mode: SaveMode) -> Result<bool> {
    if mode == SaveMode::Append {
        move_tree(staging, target)
            .map_err(io(format!("moving files into {}", target.display())))?;
        return Ok(true);
    }
    if target.exists() {
        if mode != SaveMode::Overwrite {
            return Ok(false);
        }
        let old = sibling(target, "replaced");
        std::fs::rename(target, &old).map_err(io(format!("moving aside {}", target.display())))?;
        std::fs::rename(staging, target)
            .map_err(io(format!("moving output into {}", target.display())))?;
        std::fs::remove_dir_all(&old).map_err(io(format!("removing old {}", old.display())))?;
        return Ok(true);
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::rename(staging, target)
        .map_err(io(format!("moving output into {}", target.display())))?;
    Ok(true)
}
