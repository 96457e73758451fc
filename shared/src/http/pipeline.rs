//! The one HTTP pipeline (DESIGN.md §4): request id, routing, body limit,
//! auth, rate limit, idempotency, panic containment and the error contract.
//! The local server and every Lambda function call [`Pipeline::handle`].

use super::{valid_request_id, ApiRequest, ApiResponse, Call, REQUEST_ID_HEADER};
use crate::auth::{self, Principal, Scope};
use crate::context::AppContext;
use crate::error::{new_error_id, ApiError, ErrorBody};
use crate::idempotency::{self, Begin};
use crate::ratelimit::{self, Decision};
use crate::routes::{Access, Limit, Match, Route, Router, FALLBACK_FUNCTION, ROUTES};
use http::{HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// Which part of the route table a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Every route (the local server).
    All,
    /// One function's route (a Lambda function).
    Function(&'static str),
}

pub struct Pipeline {
    ctx: Arc<AppContext>,
    router: Router,
    serve: Serve,
}

impl Pipeline {
    pub fn new(ctx: Arc<AppContext>, serve: Serve) -> Pipeline {
        Self::with_routes(ctx, ROUTES, serve)
    }

    /// A pipeline over another table; for tests of the pipeline itself.
    pub fn with_routes(ctx: Arc<AppContext>, routes: &'static [Route], serve: Serve) -> Pipeline {
        Pipeline {
            ctx,
            router: Router::new(routes),
            serve,
        }
    }

    pub fn context(&self) -> &Arc<AppContext> {
        &self.ctx
    }

    /// The body limit for a request, so transports can stop reading early.
    pub fn body_limit(&self, method: &http::Method, path: &str) -> usize {
        match self.router.find(method, path) {
            Match::Found(r, _) => r.max_body,
            _ => super::JSON_BODY_LIMIT,
        }
    }

    pub async fn handle(&self, req: ApiRequest) -> ApiResponse {
        let request_id = req
            .header(REQUEST_ID_HEADER)
            .filter(|v| valid_request_id(v))
            .map(str::to_owned)
            .or_else(|| {
                req.gateway_request_id
                    .clone()
                    .filter(|v| valid_request_id(v))
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method,
            path = %req.path,
            org_id = tracing::field::Empty,
            key_id = tracing::field::Empty,
            project_id = tracing::field::Empty,
        );
        let started = Instant::now();
        let mut response = self
            .handle_inner(req, &request_id)
            .instrument(span.clone())
            .await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers.insert(REQUEST_ID_HEADER, v);
        }
        let _enter = span.enter();
        tracing::info!(
            status = response.status.as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "request completed"
        );
        response
    }

    async fn handle_inner(&self, req: ApiRequest, request_id: &str) -> ApiResponse {
        let (route, params) = match self.router.find(&req.method, &req.path) {
            Match::Found(route, params) if self.serves(route) => (route, params),
            Match::MethodNotAllowed(verbs) if self.serve_fallback() => {
                let allow: Vec<_> = verbs.iter().map(|v| v.as_str()).collect();
                let allow = allow.join(", ");
                let e = ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not allowed on {}", req.method, req.path),
                    format!("Use one of: {allow}."),
                );
                return error_response(e, request_id).with_header("allow", &allow);
            }
            _ => {
                let e = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "route_not_found",
                    format!("no route for {} {}", req.method, req.path),
                    "Check the method and path against /openapi.json.",
                );
                return error_response(e, request_id);
            }
        };

        let mut limit_decision = None;
        let result = self
            .run_route(route, req, params, request_id, &mut limit_decision)
            .await;
        let mut response = match result {
            Ok(r) => r,
            Err(e) => error_response(e, request_id),
        };
        if let Some(d) = limit_decision {
            d.apply_headers(&mut response.headers);
        }
        response
    }

    fn serves(&self, route: &Route) -> bool {
        match self.serve {
            Serve::All => true,
            Serve::Function(f) => f == route.function,
        }
    }

    fn serve_fallback(&self) -> bool {
        matches!(self.serve, Serve::All | Serve::Function(FALLBACK_FUNCTION))
    }

    async fn run_route(
        &self,
        route: &'static Route,
        req: ApiRequest,
        params: Vec<(String, String)>,
        request_id: &str,
        limit_decision: &mut Option<Decision>,
    ) -> Result<ApiResponse, ApiError> {
        if req.body_too_large || req.body.len() > route.max_body {
            return Err(ApiError::payload_too_large(route.max_body));
        }
        let ctx = &self.ctx;
        let principal = match route.access {
            Access::Public => None,
            access => {
                let db = ctx.db().await?;
                let p = auth::authenticate(&db, req.header("authorization")).await?;
                check_access(access, &p)?;
                let span = tracing::Span::current();
                span.record("key_id", tracing::field::display(p.key_id));
                if let Some(org) = p.org_id {
                    span.record("org_id", tracing::field::display(org));
                }
                if let Some(project) = p.project_id {
                    span.record("project_id", tracing::field::display(project));
                }
                Some(p)
            }
        };

        if let (Some(limit), Some(p)) = (route.limit, principal.as_ref()) {
            let db = ctx.db().await?;
            let now = ctx.clock.now();
            let d = match limit {
                Limit::Api => {
                    let bucket = format!("api:{}", p.key_id);
                    let (max, window) = (
                        ctx.config.api_rate_limit_per_minute,
                        ctx.config.api_rate_limit_window_secs,
                    );
                    ratelimit::check(&db, &bucket, max, window, now).await?
                }
                Limit::UploadsPerDay => {
                    let bucket = format!("uploads:{}", p.org()?);
                    ratelimit::check(&db, &bucket, ctx.config.uploads_per_day, 86_400, now).await?
                }
                // Per project, from the project row; a suspended project is
                // refused here, before idempotency, so neither that 403 nor
                // a 429 is stored as the answer to an Idempotency-Key.
                Limit::ProjectMessages => {
                    crate::messages::projects::admit_message(&db, p, now).await?
                }
            };
            let allowed = d.allowed;
            let retry_after = d.retry_after;
            *limit_decision = Some(d);
            if !allowed {
                return Err(ApiError::rate_limited(retry_after));
            }
        }

        let idem = match (route.idempotent, req.header("idempotency-key"), &principal) {
            (true, Some(key), Some(p)) => Some((p.owner(), key.to_owned())),
            _ => None,
        };
        if let Some((owner, key)) = &idem {
            let fp = idempotency::fingerprint(route.function, &req.path, &req.headers, &req.body);
            let db = ctx.db().await?;
            let begun = idempotency::begin(
                &db,
                owner,
                key,
                route.function,
                &fp,
                ctx.clock.now(),
                ctx.config.idempotency_ttl_secs,
            )
            .await?;
            if let Begin::Replay(stored) = begun {
                return Ok(stored);
            }
        }

        let call = Call {
            req,
            params,
            principal,
            request_id: request_id.to_owned(),
        };
        let response = run_contained(route, ctx.clone(), call)
            .in_current_span()
            .await
            .unwrap_or_else(|e| error_response(e, request_id));

        if let Some((owner, key)) = &idem {
            // If this bookkeeping fails the action has still happened; the
            // record stays in progress and expires, which errs on the side of
            // never running the action twice.
            match ctx.db().await {
                Ok(db) => {
                    if let Err(e) = idempotency::finish(&db, owner, key, &response).await {
                        tracing::error!(error = %e, "storing the idempotent response failed");
                    }
                }
                Err(e) => tracing::error!(error = %e, "storing the idempotent response failed"),
            }
        }
        Ok(response)
    }
}

fn check_access(access: Access, p: &Principal) -> Result<(), ApiError> {
    let ok = match access {
        Access::Public | Access::AnyKey => true,
        Access::Org => p.scope == Scope::Org,
        Access::Operator => p.scope == Scope::Operator,
        Access::Project => p.scope == Scope::Project && p.project_id.is_some(),
    };
    if ok {
        return Ok(());
    }
    let (needed, hint) = match access {
        Access::Operator => (
            "an operator key",
            "Operator endpoints need an operator API key.",
        ),
        Access::Project => (
            "a project key",
            "Use an API key issued to a project (scope 'project').",
        ),
        _ => (
            "an organisation key",
            "Use an API key issued to your organisation.",
        ),
    };
    Err(ApiError::forbidden(
        "forbidden_scope",
        format!("this endpoint needs {needed}"),
        hint,
    ))
}

/// Runs the handler on its own task so that a panic becomes a 500 in the
/// error contract instead of taking the process (or the Lambda) down.
async fn run_contained(
    route: &'static Route,
    ctx: Arc<AppContext>,
    call: Call,
) -> Result<ApiResponse, ApiError> {
    let fut = (route.handler)(ctx, call).in_current_span();
    match tokio::spawn(fut).await {
        Ok(result) => result,
        Err(join) => {
            let detail = if join.is_panic() {
                let payload = join.into_panic();
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into())
            } else {
                "handler task was cancelled".into()
            };
            Err(ApiError::internal(anyhow::anyhow!(
                "handler {} panicked: {detail}",
                route.function
            )))
        }
    }
}

/// Renders an error in the contract and logs it with its error id: server
/// errors with their cause at ERROR, client errors at INFO.
pub fn error_response(e: ApiError, request_id: &str) -> ApiResponse {
    let error_id = new_error_id();
    let cause = e.cause.as_ref().map(|c| format!("{c:#}"));
    if e.status.is_server_error() {
        tracing::error!(
            error_id = %error_id,
            error_code = e.code,
            status = e.status.as_u16(),
            cause = cause.as_deref().unwrap_or(""),
            "request failed"
        );
    } else {
        tracing::info!(
            error_id = %error_id,
            error_code = e.code,
            status = e.status.as_u16(),
            "request rejected"
        );
    }
    let body = ErrorBody {
        error_code: e.code,
        message: &e.message,
        error_hint: &e.hint,
        retryable: e.retryable(),
        retry_strategy: e.retry_strategy,
        error_id: &error_id,
        request_id,
    };
    let mut r = ApiResponse::json(e.status, &body);
    if let Some(secs) = e.retry_after {
        r = r.with_header("retry-after", &secs.to_string());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::JSON_BODY_LIMIT;
    use crate::routes::Verb;

    fn panicking_route() -> &'static [Route] {
        Box::leak(Box::new([Route {
            function: "test_panics",
            verb: Verb::Get,
            path: "/panic",
            summary: "always panics",
            tag: "test",
            access: Access::Public,
            limit: None,
            idempotent: false,
            max_body: JSON_BODY_LIMIT,
            handler: |_ctx, _call| Box::pin(async { panic!("boom in a handler") }),
        }]))
    }

    fn pipeline(routes: &'static [Route]) -> Pipeline {
        // The pool connects lazily, so public routes need no database.
        let config = crate::config::Config::from_lookup(|k| {
            (k == "DATABASE_URL").then(|| "postgres://nobody@127.0.0.1:1/none".to_string())
        })
        .unwrap();
        Pipeline::with_routes(AppContext::new(config).unwrap(), routes, Serve::All)
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_in_the_contract() {
        let p = pipeline(panicking_route());
        let resp = p.handle(ApiRequest::new(http::Method::GET, "/panic")).await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["error_code"], "internal_error");
        assert_eq!(body["retry_strategy"], "exponential_backoff");
        assert!(body["error_id"].as_str().unwrap().starts_with("err_"));
        assert!(
            !body.to_string().contains("boom"),
            "panic text stays internal"
        );
        assert_eq!(
            resp.headers[REQUEST_ID_HEADER].to_str().unwrap(),
            body["request_id"].as_str().unwrap()
        );
        // The pipeline (and the process) carry on.
        let again = p.handle(ApiRequest::new(http::Method::GET, "/panic")).await;
        assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn oversize_flag_from_the_transport_is_a_413() {
        let p = pipeline(panicking_route());
        let mut req = ApiRequest::new(http::Method::GET, "/panic");
        req.body_too_large = true;
        let resp = p.handle(req).await;
        assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
