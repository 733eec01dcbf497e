//! The metrics endpoint (`--metrics-addr`): `GET /metrics` (or `/`) answers
//! the OpenMetrics text of the process's metrics, over axum.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use dataflow_engine::ops::metrics::{Metrics, CONTENT_TYPE};
use dataflow_engine::{Error, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serves `metrics` on `addr` (port 0: any free port) until the returned
/// task is aborted; logs and returns the address it got.
pub async fn serve(metrics: Metrics, addr: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>)> {
    let io = |source| Error::Io {
        context: format!("cannot serve metrics on {addr}"),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(io)?;
    let bound = listener.local_addr().map_err(io)?;
    let scrape = move || {
        let text = metrics.render_prometheus();
        async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text) }
    };
    let app = Router::new()
        .route("/metrics", get(scrape.clone()))
        .route("/", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found; try /metrics\n") });
    tracing::info!("serving metrics at http://{bound}/metrics");
    let server = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!("metrics endpoint stopped: {err}");
        }
    });
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use dataflow_engine::ops::history::Status;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_on_the_port_it_got() {
        let metrics = Metrics::default();
        metrics.run_ended("p", Status::Succeeded);
        let (addr, server) = serve(metrics, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.contains(&format!("content-type: {CONTENT_TYPE}")),
            "{ok}"
        );
        assert!(ok.contains(r#"dataflow_runs_total{pipeline="p",status="succeeded"} 1"#));
        let other = get(addr, "/other").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        server.abort();
    }
}
