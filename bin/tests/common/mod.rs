//! Helpers shared by the CLI tests: run the real binary, read tables back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

/// The repository root: pipelines and testdata paths are relative to it.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The outcome of one `run-pipeline` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A `run-pipeline` command run from the repository root, writing under `out`.
pub fn cli(out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_run-pipeline"));
    // Run history goes to the tests' scratch directory, not next to the
    // example configs in the repository.
    let state = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dataflow-state");
    cmd.current_dir(repo_root())
        .env("DATAFLOW_OUT", out)
        .env("DATAFLOW_STATE_DIR", state)
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `run-pipeline ARGS...` to completion.
pub fn run(out: &Path, args: &[&str]) -> Run {
    cli(out)
        .args(args)
        .output()
        .expect("run-pipeline starts")
        .into()
}

/// Writes `config` to a file in `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, config: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

/// Runs `sql` over a table registered as `t` and returns its pretty-printed rows.
pub async fn query(ctx: SessionContext, sql: &str) -> Vec<String> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches)
        .unwrap()
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The rows of the Delta table at `path` (latest version), via `sql` over `t`.
pub async fn delta_rows(path: &Path, sql: &str) -> Vec<String> {
    let table = delta_table(path).await;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    query(ctx, sql).await
}

/// Opens the Delta table at `path`.
pub async fn delta_table(path: &Path) -> deltalake::DeltaTable {
    let url = url::Url::from_directory_path(path.canonicalize().unwrap()).unwrap();
    deltalake::open_table(url).await.unwrap()
}

/// The latest version of the Delta table at `path`, `None` if there is none.
pub async fn delta_version(path: &Path) -> Option<i64> {
    if !path.join("_delta_log").exists() {
        return None;
    }
    delta_table(path).await.version().map(|v| v as i64)
}

/// The rows of the files at `path` (parquet, csv with header, or json).
pub async fn file_rows(path: &Path, format: &str, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    let options = if format == "csv" {
        "OPTIONS ('format.has_header' 'true')"
    } else {
        ""
    };
    let ddl = format!(
        "CREATE EXTERNAL TABLE t STORED AS {format} LOCATION '{}/' {options}",
        path.display()
    );
    ctx.sql(&ddl).await.unwrap();
    query(ctx, sql).await
}

/// Lines of a pretty-printed table, for comparison with `query` results.
pub fn table(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| l.to_string()).collect()
}

/// The run history in `state_dir`, one JSON object per record.
pub fn history(state_dir: &Path) -> Vec<serde_json::Value> {
    let result = run(
        state_dir,
        &[
            "history",
            "--json",
            "--state-dir",
            &state_dir.display().to_string(),
        ],
    );
    result.assert_ok();
    result
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Sends `signal` (e.g. `-TERM`) to the process `pid`.
pub fn kill(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A `run-pipeline` process serving metrics on a port it chose itself.
pub struct Serving {
    child: std::process::Child,
    /// Where it serves, e.g. `127.0.0.1:41234`.
    pub addr: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Serving {
    /// Starts `cmd` with `-v --metrics-addr 127.0.0.1:0` and waits for the
    /// address it reports (its stderr is collected meanwhile).
    pub fn start(mut cmd: Command) -> Serving {
        use std::io::BufRead;
        let mut child = cmd
            .args(["-v", "--metrics-addr", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run-pipeline starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let mut seen = String::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("no metrics address reported:\n{seen}");
            };
            seen += &line;
            seen.push('\n');
            if let Some((_, url)) = line.split_once("serving metrics at http://") {
                break url.trim_end_matches("/metrics").to_string();
            }
        };
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "{addr}"
        );
        let stderr = std::thread::spawn(move || {
            lines
                .map_while(Result::ok)
                .fold(seen, |text, line| text + &line + "\n")
        });
        Serving {
            child,
            addr,
            stderr,
        }
    }

    /// GET /metrics, parsed.
    pub fn scrape(&self) -> Samples {
        parse(&scrape(&self.addr).expect("the endpoint answers"))
    }

    /// Sends SIGTERM and waits; the exit code and all of stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        kill("-TERM", self.child.id());
        let status = self.child.wait().unwrap();
        (status.code(), self.stderr.join().unwrap())
    }
}

/// GET /metrics, or `None` while nothing listens.
pub fn scrape(addr: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let request = b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    std::io::Write::write_all(&mut stream, request).ok()?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    Some(body.to_string())
}

/// Samples by series, labels in name order (`name{a="1",b="2"}`): look
/// series up in any label order.
#[derive(Debug)]
pub struct Samples(std::collections::HashMap<String, f64>);

impl Samples {
    /// The value of `series`, if present.
    pub fn get(&self, series: impl AsRef<str>) -> Option<&f64> {
        self.0.get(&canonical(series.as_ref()))
    }
}

impl std::ops::Index<&String> for Samples {
    type Output = f64;

    fn index(&self, series: &String) -> &f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in {self:?}"))
    }
}

/// `series` with its labels sorted.
fn canonical(series: &str) -> String {
    let Some((name, labels)) = series.strip_suffix('}').and_then(|s| s.split_once('{')) else {
        return series.to_string();
    };
    let mut labels_sorted = Vec::new();
    let (mut label, mut quoted, mut escaped) = (String::new(), false, false);
    for c in labels.chars() {
        if c == ',' && !quoted {
            labels_sorted.push(std::mem::take(&mut label));
            continue;
        }
        if c == '"' && !escaped {
            quoted = !quoted;
        }
        escaped = c == '\\' && !escaped;
        label.push(c);
    }
    labels_sorted.push(label);
    labels_sorted.sort();
    format!("{name}{{{}}}", labels_sorted.join(","))
}

/// Parses the OpenMetrics text into samples, checking every line: HELP and
/// TYPE comments, `dataflow_` series, numbers, and `# EOF` last.
pub fn parse(text: &str) -> Samples {
    let mut samples = std::collections::HashMap::new();
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    for line in text.lines().filter(|l| !l.is_empty() && *l != "# EOF") {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split(' ');
            assert!(matches!(words.next(), Some("HELP" | "TYPE")), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(series.starts_with("dataflow_"), "{line}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(canonical(series), value);
    }
    Samples(samples)
}

/// One string column of `sql` over the Delta table at `path` (as `t`), at
/// `version` or the latest.
pub async fn delta_lines(path: &Path, version: Option<u64>, sql: &str) -> Vec<String> {
    let mut table = delta_table(path).await;
    if let Some(version) = version {
        table.load_version(version).await.unwrap();
    }
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut lines = Vec::new();
    for batch in batches {
        let column = datafusion::arrow::compute::cast(
            batch.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
        lines.extend((0..strings.len()).map(|i| strings.value(i).to_string()));
    }
    lines
}
