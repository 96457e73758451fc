//! The Lambda adapter: a function binary is `run_http("api_me")`. Clients
//! and pools are built once per instance, lazily, before the first event.

use crate::config::Config;
use crate::context::AppContext;
use crate::http::pipeline::{Pipeline, Serve};
use crate::http::{ApiRequest, ApiResponse};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use std::sync::Arc;

pub use lambda_http::Error;

/// Converts a Lambda HTTP event into the pipeline's request type.
pub fn to_api_request(req: Request) -> ApiRequest {
    let gateway_request_id = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c.request_id.clone(),
        _ => None,
    };
    let query = req.uri().query().map(str::to_owned);
    let (parts, body) = req.into_parts();
    let mut api = ApiRequest::new(parts.method, parts.uri.path());
    api.query = query;
    api.headers = parts.headers;
    api.gateway_request_id = gateway_request_id;
    api.body = match body {
        Body::Empty => bytes::Bytes::new(),
        Body::Text(t) => bytes::Bytes::from(t),
        Body::Binary(b) => bytes::Bytes::from(b),
        _ => bytes::Bytes::new(),
    };
    api
}

pub fn to_lambda_response(resp: ApiResponse) -> Response<Body> {
    let mut out = Response::new(Body::Binary(resp.body.to_vec()));
    // JSON is text: send it as text so API Gateway does not base64 it.
    if let Ok(text) = String::from_utf8(resp.body.to_vec()) {
        *out.body_mut() = Body::Text(text);
    }
    *out.status_mut() = resp.status;
    *out.headers_mut() = resp.headers;
    out
}

/// Handles one event; exposed so tests can feed `events/*.json` in-process.
pub async fn handle_event(pipeline: &Pipeline, req: Request) -> Response<Body> {
    to_lambda_response(pipeline.handle(to_api_request(req)).await)
}

/// The whole main() of an HTTP function binary.
pub async fn run_http(function: &'static str) -> Result<(), Error> {
    crate::logging::init();
    let config = Config::from_env().map_err(|e| {
        tracing::error!(error = %e, function, "invalid configuration");
        e
    })?;
    let ctx = AppContext::new(config)?;
    let pipeline = Arc::new(Pipeline::new(ctx, Serve::Function(function)));
    lambda_http::run(lambda_http::service_fn(move |req: Request| {
        let pipeline = pipeline.clone();
        async move { Ok::<_, std::convert::Infallible>(handle_event(&pipeline, req).await) }
    }))
    .await
}
