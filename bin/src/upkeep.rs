//! `optimize` and `vacuum`: Delta table upkeep from the command line.

use std::time::Duration;

use clap::Args;
use dataflow_connectors::upkeep;
use dataflow_engine::spec::StorageOptions;
use dataflow_engine::{Error, Result};

#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// The Delta table (a local path or an object-store URL).
    path: String,
    /// Target size of the compacted files, in bytes (default 100 MiB).
    #[arg(long, value_name = "BYTES")]
    target_file_size: Option<u64>,
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// The Delta table (a local path or an object-store URL).
    path: String,
    /// Keep the files versions of the last HOURS need (default and minimum:
    /// the table's delta.deletedFileRetentionDuration, 7 days).
    #[arg(long, value_name = "HOURS")]
    retention: Option<f64>,
    /// List the files that would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Compacts the table's small files.
pub async fn optimize(args: &OptimizeArgs) -> Result<()> {
    let done = upkeep::optimize(
        &StorageOptions::default(),
        &args.path,
        args.target_file_size,
    )
    .await
    .map_err(|e| failed("optimizing", &args.path, e))?;
    println!(
        "{}: {} small files compacted into {} (version {})",
        args.path, done.removed, done.added, done.version
    );
    Ok(())
}

/// Deletes (or lists) the files no recent version needs.
pub async fn vacuum(args: &VacuumArgs) -> Result<()> {
    let retention = match args.retention {
        None => None,
        Some(hours) if hours >= 0.0 && hours.is_finite() => {
            Some(Duration::from_secs_f64(hours * 3600.0))
        }
        Some(hours) => {
            return Err(Error::config(
                "--retention",
                None,
                format!("{hours} is not a number of hours ≥ 0"),
            ))
        }
    };
    let done = upkeep::vacuum(
        &StorageOptions::default(),
        &args.path,
        retention,
        args.dry_run,
    )
    .await
    .map_err(|e| failed("vacuuming", &args.path, e))?;
    let verb = if done.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for file in &done.files {
        println!("{file}");
    }
    println!("{}: {verb} {} files", args.path, done.files.len());
    Ok(())
}

fn failed(doing: &str, path: &str, error: dataflow_connectors::ConnectorError) -> Error {
    Error::Io {
        context: format!("{doing} {path}"),
        source: std::io::Error::other(error),
    }
}
