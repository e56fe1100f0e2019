//! The `--metrics-addr` endpoint: `GET /metrics` answered with the
//! Prometheus text of a fresh [`Snapshot`](crate::metrics::Snapshot).
//!
//! The counters live on the pipeline's thread, which owns every stage; the
//! server runs on the same runtime and asks the pipeline for a snapshot
//! over a channel (the pipeline answers between two batches of records),
//! so nothing is locked or shared.
use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};

/// A scrape waiting for the pipeline's answer (the exposition text).
pub type Scrape = oneshot::Sender<String>;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("listening for --metrics-addr on {addr}")]
pub struct MetricsError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` and serves scrapes in the background; the returned channel
/// delivers each scrape to the pipeline. Must run inside a tokio runtime.
pub async fn start(addr: SocketAddr) -> Result<mpsc::Receiver<Scrape>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "serving metrics on http://{local}/metrics");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, tx.clone()));
                // A client that goes away mid-answer is not an error of ours.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(rx)
}

async fn answer(
    req: Request<Incoming>,
    tx: mpsc::Sender<Scrape>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return Ok(reply(
            404,
            "text/plain; charset=utf-8",
            "GET /metrics\n".into(),
        ));
    }
    let (done, wait) = oneshot::channel();
    if tx.send(done).await.is_err() {
        return Ok(reply(503, "text/plain; charset=utf-8", "stopping\n".into()));
    }
    match wait.await {
        Ok(text) => Ok(reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        )),
        Err(_) => Ok(reply(503, "text/plain; charset=utf-8", "stopping\n".into())),
    }
}
