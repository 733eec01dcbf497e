//! DuckDB, an engine independent of ours, answering test queries: its
//! Python package, run by `$DUCKDB_PYTHON`, else the Python of the venv
//! `.ci/run` installs it into.

use std::io;
use std::process::Command;

use super::process::{find_bin, home_path};

/// The rows of DuckDB's answer to `sql`, one line each, values joined by
/// `|` (NULL as an empty string).
pub fn duckdb_lines(sql: &str) -> io::Result<Vec<String>> {
    let python = find_bin(
        "DUCKDB_PYTHON",
        "dataflow-duckdb-python",
        &home_path(".cache/dataflow-servers-venv/bin/python")
            .into_iter()
            .collect::<Vec<_>>(),
        "a Python with the duckdb package: pip install duckdb==1.5.5; .ci/run installs it",
    )?;
    const SCRIPT: &str = "import duckdb, sys\n\
        for row in duckdb.sql(sys.argv[1]).fetchall():\n    \
        print('|'.join('' if v is None else str(v) for v in row))\n";
    let out = Command::new(python).args(["-c", SCRIPT, sql]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "duckdb failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}
