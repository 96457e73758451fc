//! The local HTTP server: every route of the table on one port, through the
//! same pipeline as the Lambda functions.

use crate::http::pipeline::Pipeline;
use crate::http::ApiRequest;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests may take to finish after shutdown is asked.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish for up to [`DRAIN_TIMEOUT`] and returns.
pub async fn serve(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: log, back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let pipeline = pipeline.clone();
        let service = service_fn(move |req| {
            let pipeline = pipeline.clone();
            async move { Ok::<_, Infallible>(handle(&pipeline, req).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Stop accepting for real: close the listening socket, so new
    // connections are refused instead of waiting in the backlog.
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out after {:?}; exiting anyway", DRAIN_TIMEOUT);
    }
    Ok(())
}

async fn handle(
    pipeline: &Pipeline,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let limit = pipeline.body_limit(&parts.method, parts.uri.path());
    let declared_too_large = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64);
    let mut api = ApiRequest::new(parts.method, parts.uri.path());
    api.query = parts.uri.query().map(str::to_owned);
    api.headers = parts.headers;
    if declared_too_large {
        api.body_too_large = true;
    } else {
        match Limited::new(body, limit).collect().await {
            Ok(collected) => api.body = collected.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => api.body_too_large = true,
            Err(e) => {
                tracing::info!(error = %e, "client went away while sending the body");
                api.body_too_large = false;
            }
        }
    }
    let resp = pipeline.handle(api).await;
    let mut out = hyper::Response::new(Full::new(resp.body));
    *out.status_mut() = resp.status;
    *out.headers_mut() = resp.headers;
    out
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
