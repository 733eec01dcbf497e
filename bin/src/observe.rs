//! The process-wide outputs of `run` and `schedule`: the metrics endpoint
//! (`--metrics-addr`), the final metrics file (`--metrics-file`), and the
//! state directory the run history goes to (`--state-dir`); and the
//! observed loop of streaming runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dataflow_engine::ops::history::{History, StreamRun};
use dataflow_engine::ops::metrics::Metrics;
use dataflow_engine::ops::runner::Runner;
use dataflow_engine::ops::shutdown::Shutdown;
use dataflow_engine::spec::PipelineSpec;
use dataflow_engine::stream::{run_stream, BatchReport, StreamSummary};
use dataflow_engine::{Error, Result};
use tokio::task::JoinHandle;

/// The metrics of this process and where they go.
pub struct Observer {
    metrics: Metrics,
    server: Option<JoinHandle<()>>,
    file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl Observer {
    /// Starts serving metrics on `addr`, if given.
    pub async fn start(
        addr: Option<SocketAddr>,
        file: Option<PathBuf>,
        state_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let metrics = Metrics::default();
        let server = match addr {
            Some(addr) => Some(metrics.serve(addr).await?),
            None => None,
        };
        Ok(Observer {
            metrics,
            server,
            file,
            state_dir,
        })
    }

    /// A runner for the pipeline in `config`, recording into its state
    /// directory: `--state-dir`, else `.dataflow/` next to the config.
    pub fn runner(&self, config: &Path) -> Runner {
        Runner::new(
            dataflow_connectors::registry(),
            self.history(config),
            self.metrics.clone(),
        )
    }

    /// The history of the pipeline in `config`: in `--state-dir`, else in
    /// `.dataflow/` next to the config.
    fn history(&self, config: &Path) -> History {
        let dir = self.state_dir.clone().unwrap_or_else(|| {
            config
                .parent()
                .unwrap_or_else(|| Path::new(""))
                .join(".dataflow")
        });
        History::new(&dir)
    }

    /// Runs the streaming pipeline `spec` (from `config`) until its trigger
    /// ends it or `shutdown` fires, recording its start, progress and end in
    /// the history and every committed batch in the metrics; `on_batch` is
    /// told about every committed batch too.
    pub async fn stream(
        &self,
        config: &Path,
        spec: &PipelineSpec,
        shutdown: Shutdown,
        mut on_batch: impl FnMut(&BatchReport),
    ) -> Result<StreamSummary> {
        self.metrics.stream_started(&spec.name);
        let mut run = StreamRun::start(self.history(config), spec);
        let registry = dataflow_connectors::registry();
        let result = run_stream(spec, &registry, shutdown, |batch| {
            self.metrics.stream_batch(&spec.name, batch);
            run.batch(batch);
            on_batch(batch);
        })
        .await;
        let status = run.finish(&result, registry.classifier());
        self.metrics.run_ended(&spec.name, status);
        result
    }

    /// Stops serving and writes the metrics file, if asked for.
    pub fn finish(self) -> Result<()> {
        if let Some(server) = self.server {
            server.abort();
        }
        let Some(file) = self.file else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&self.metrics.to_json())
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&file, text + "\n"));
        text.map_err(|source| Error::Io {
            context: format!("cannot write the metrics file {}", file.display()),
            source,
        })
    }
}
