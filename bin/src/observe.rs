//! The process-wide outputs of `run` and `schedule`: the metrics endpoint
//! (`--metrics-addr`), the final metrics file (`--metrics-file`), and the
//! state directory the run history goes to (`--state-dir`).

use std::net::SocketAddr;
use std::path::PathBuf;

use dataflow_engine::ops::history::History;
use dataflow_engine::ops::metrics::Metrics;
use dataflow_engine::ops::runner::Runner;
use dataflow_engine::{Error, Result};
use tokio::task::JoinHandle;

use crate::endpoint;

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
            Some(addr) => Some(endpoint::serve(metrics.clone(), addr).await?.1),
            None => None,
        };
        Ok(Observer {
            metrics,
            server,
            file,
            state_dir,
        })
    }

    /// A runner recording into the state directory: `--state-dir`, else
    /// `.dataflow/` in the working directory (where `history` looks too).
    pub fn runner(&self) -> Runner {
        let dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(".dataflow"));
        Runner::new(
            dataflow_connectors::registry(),
            History::new(&dir),
            self.metrics.clone(),
        )
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
