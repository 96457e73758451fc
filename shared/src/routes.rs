//! The one route table. The local server serves it on one port, each Lambda
//! function serves one entry of it, and `template.yaml` and the OpenAPI
//! document are checked against it by tests.

use crate::api;
use crate::context::AppContext;
use crate::error::ApiResult;
use crate::http::{ApiResponse, Call, JSON_BODY_LIMIT};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type HandlerFuture = Pin<Box<dyn Future<Output = ApiResult<ApiResponse>> + Send>>;
pub type Handler = fn(Arc<AppContext>, Call) -> HandlerFuture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
        }
    }

    pub fn from_method(m: &http::Method) -> Option<Verb> {
        Some(match *m {
            http::Method::GET => Verb::Get,
            http::Method::POST => Verb::Post,
            http::Method::PUT => Verb::Put,
            http::Method::DELETE => Verb::Delete,
            _ => return None,
        })
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Any valid key (org, project or operator).
    AnyKey,
    Org,
    Operator,
    /// A project key (scope `project`): the `/v1` message API.
    Project,
}

/// Which rate limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The general per-key API limit (`LEDGERLINE_API_RATE_LIMIT` per window).
    Api,
    /// Evidence uploads per organisation per UTC day
    /// (`LEDGERLINE_UPLOADS_PER_DAY`, default 100).
    UploadsPerDay,
    /// Messages of the key's project: refused while the project is
    /// suspended, then its per-minute burst and per-UTC-day message limits
    /// (from the project row) are counted.
    ProjectMessages,
}

pub struct Route {
    /// The Lambda function (and binary) that serves this route.
    pub function: &'static str,
    pub verb: Verb,
    /// API Gateway path syntax: `/admin/orgs/{id}`.
    pub path: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    pub access: Access,
    pub limit: Option<Limit>,
    /// Accepts `Idempotency-Key` (creating POSTs).
    pub idempotent: bool,
    pub max_body: usize,
    pub handler: Handler,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.verb.as_str(),
            self.path,
            self.function
        )
    }
}

/// The name of the catch-all function behind API Gateway's `$default` route:
/// it answers unknown routes and wrong methods in our error contract.
pub const FALLBACK_FUNCTION: &str = "api_fallback";

macro_rules! route {
    ($function:literal, $verb:ident $path:literal, $tag:literal, $summary:literal,
     access: $access:ident, limit: $limit:expr, idempotent: $idem:literal, handler: $handler:path) => {
        route!($function, $verb $path, $tag, $summary, access: $access, limit: $limit,
               idempotent: $idem, max_body: JSON_BODY_LIMIT, handler: $handler)
    };
    ($function:literal, $verb:ident $path:literal, $tag:literal, $summary:literal,
     access: $access:ident, limit: $limit:expr, idempotent: $idem:literal, max_body: $max:expr,
     handler: $handler:path) => {
        Route {
            function: $function,
            verb: Verb::$verb,
            path: $path,
            summary: $summary,
            tag: $tag,
            access: Access::$access,
            limit: $limit,
            idempotent: $idem,
            max_body: $max,
            handler: |ctx, call| Box::pin($handler(ctx, call)),
        }
    };
}

pub static ROUTES: &[Route] = &[
    route!("api_health", Get "/health", "meta", "Liveness and database check",
        access: Public, limit: None, idempotent: false, handler: api::meta::health),
    route!("api_openapi", Get "/openapi.json", "meta", "This API's OpenAPI 3.1 document",
        access: Public, limit: None, idempotent: false, handler: api::meta::openapi),
    route!("api_me", Get "/api/me", "identity", "Who the presented key belongs to",
        access: AnyKey, limit: Some(Limit::Api), idempotent: false, handler: api::me::me),
    route!("api_list_api_keys", Get "/api/api-keys", "identity", "List the organisation's API keys",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::me::list_api_keys),
    route!("api_get_api_key", Get "/api/api-keys/{id}", "identity", "One of the organisation's API keys",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::me::get_api_key),
    route!("api_admin_create_org", Post "/admin/orgs", "admin", "Create an organisation",
        access: Operator, limit: Some(Limit::Api), idempotent: true, handler: api::admin::create_org),
    route!("api_admin_get_org", Get "/admin/orgs/{id}", "admin", "An organisation with its users and key counts",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::admin::get_org),
    route!("api_admin_create_user", Post "/admin/orgs/{id}/users", "admin", "Add a user to an organisation",
        access: Operator, limit: Some(Limit::Api), idempotent: true, handler: api::admin::create_user),
    route!("api_admin_create_api_key", Post "/admin/orgs/{id}/api-keys", "admin", "Issue an API key for an organisation (shown once)",
        access: Operator, limit: Some(Limit::Api), idempotent: true, handler: api::admin::create_api_key),
    route!("api_admin_revoke_api_key", Delete "/admin/api-keys/{id}", "admin", "Revoke an API key",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::admin::revoke_api_key),
    route!("api_admin_set_plan", Post "/admin/orgs/{id}/plan", "admin", "Change an organisation's plan tier",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::admin::set_plan),
    route!("api_upload_evidence", Post "/api/evidence", "evidence", "Upload one evidence file as the raw body (up to 5 MB)",
        access: Org, limit: Some(Limit::UploadsPerDay), idempotent: true, max_body: EVIDENCE_BODY_LIMIT,
        handler: api::evidence::upload),
    route!("api_list_evidence", Get "/api/evidence", "evidence", "List evidence (cursor)",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::evidence::list),
    route!("api_get_evidence", Get "/api/evidence/{id}", "evidence", "Evidence metadata and a short-lived download URL",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::evidence::get),
    route!("api_get_evidence_content", Get "/api/evidence/{id}/content", "evidence", "The evidence bytes (or a redirect to a presigned URL)",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::evidence::content),
    route!("api_create_evidence_upload", Post "/api/evidence/uploads", "evidence", "Start a direct upload of a large file (presigned PUT)",
        access: Org, limit: Some(Limit::UploadsPerDay), idempotent: true, handler: api::evidence::create_upload),
    route!("api_complete_evidence_upload", Post "/api/evidence/uploads/{id}/complete", "evidence", "Record a direct upload after checking the stored object",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::evidence::complete_upload),
    route!("api_list_ledger_events", Get "/api/ledger/events", "ledger", "The organisation's ledger events (cursor by seq)",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::ledger::list_events),
    route!("api_get_ledger_event", Get "/api/ledger/events/{seq}", "ledger", "One ledger event",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::ledger::get_event),
    route!("api_list_ledger_roots", Get "/api/ledger/roots", "ledger", "Sealed daily roots and checkpoints",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::seals::list_roots),
    route!("api_get_ledger_root", Get "/api/ledger/roots/{day}", "ledger", "One sealed day",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::seals::get_root),
    route!("api_ledger_inclusion_proof", Get "/api/ledger/proof/inclusion", "ledger", "RFC 9162 inclusion proof of an event in a checkpoint",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::seals::inclusion_proof),
    route!("api_ledger_consistency_proof", Get "/api/ledger/proof/consistency", "ledger", "RFC 9162 consistency proof between two checkpoints",
        access: Org, limit: Some(Limit::Api), idempotent: false, handler: api::seals::consistency_proof),
    route!("api_checkpoint_key", Get "/api/public/checkpoint-key", "ledger", "The Ed25519 verifier key of signed checkpoints (C2SP vkey)",
        access: Public, limit: None, idempotent: false, handler: api::seals::checkpoint_key),
    route!("api_admin_create_project", Post "/admin/projects", "admin", "Create a project with its delivery endpoint (the signing secret is shown once)",
        access: Operator, limit: Some(Limit::Api), idempotent: true, handler: api::projects::create_project),
    route!("api_admin_suspend_project", Post "/admin/projects/{id}/suspend", "admin", "Suspend a project: its messages are refused and not delivered",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::projects::suspend_project),
    route!("api_admin_activate_project", Post "/admin/projects/{id}/activate", "admin", "Activate a project; its waiting messages are delivered",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::projects::activate_project),
    route!("api_admin_set_project_limits", Put "/admin/projects/{id}/limits", "admin", "Change a project's limits",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::projects::set_limits),
    route!("api_admin_apply_project_tier", Post "/admin/projects/{id}/tier", "admin", "Apply a tier (and its limits) to a project",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::projects::apply_tier),
    route!("api_admin_list_audit_events", Get "/admin/audit-events", "admin", "The operator audit log (filter by target and action; cursor)",
        access: Operator, limit: Some(Limit::Api), idempotent: false, handler: api::audit::list_audit_events),
    route!("api_send_message", Post "/v1/messages", "messages", "Send a message: stored, queued, answered 202",
        access: Project, limit: Some(Limit::ProjectMessages), idempotent: true, handler: api::messages::send),
    route!("api_list_messages", Get "/v1/messages", "messages", "The project's messages, newest first (cursor; filter by status)",
        access: Project, limit: Some(Limit::Api), idempotent: false, handler: api::messages::list),
    route!("api_get_message", Get "/v1/messages/{id}", "messages", "One of the project's messages",
        access: Project, limit: Some(Limit::Api), idempotent: false, handler: api::messages::get),
    route!("api_list_message_events", Get "/v1/messages/{id}/events", "messages", "A message's timeline: queued, attempts, retries, delivered or failed",
        access: Project, limit: Some(Limit::Api), idempotent: false, handler: api::messages::events),
];

/// Evidence uploads through the API are limited to 5 MB; larger files go
/// through a presigned upload.
pub const EVIDENCE_BODY_LIMIT: usize = 5 * 1024 * 1024;

pub fn routes() -> &'static [Route] {
    ROUTES
}

/// The outcome of matching a method and path against the table.
pub enum Match {
    Found(&'static Route, Vec<(String, String)>),
    MethodNotAllowed(Vec<Verb>),
    NotFound,
}

/// Path matching with the same `{param}` syntax as API Gateway.
pub struct Router {
    inner: matchit::Router<Vec<&'static Route>>,
}

impl Router {
    pub fn new(routes: &'static [Route]) -> Router {
        let mut by_path: Vec<(&str, Vec<&'static Route>)> = Vec::new();
        for r in routes {
            match by_path.iter_mut().find(|(p, _)| *p == r.path) {
                Some((_, v)) => v.push(r),
                None => by_path.push((r.path, vec![r])),
            }
        }
        let mut inner = matchit::Router::new();
        for (path, rs) in by_path {
            // The table is static and checked by tests; a bad pattern is a
            // programming error caught on the first test run.
            inner
                .insert(path, rs)
                .expect("valid, non-conflicting route path");
        }
        Router { inner }
    }

    pub fn find(&self, method: &http::Method, path: &str) -> Match {
        let Ok(m) = self.inner.at(path) else {
            return Match::NotFound;
        };
        let verb = Verb::from_method(method);
        match m.value.iter().find(|r| Some(r.verb) == verb) {
            Some(r) => Match::Found(
                r,
                m.params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            None => Match::MethodNotAllowed(m.value.iter().map(|r| r.verb).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn function_names_and_routes_are_unique() {
        let mut names: Vec<_> = ROUTES.iter().map(|r| r.function).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ROUTES.len());
        assert!(!names.contains(&FALLBACK_FUNCTION));
        let mut keys: Vec<_> = ROUTES.iter().map(|r| (r.verb.as_str(), r.path)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), ROUTES.len());
    }

    #[test]
    fn only_creating_posts_are_idempotent() {
        for r in ROUTES {
            if r.idempotent {
                assert_eq!(r.verb, Verb::Post, "{r:?}");
            }
        }
    }

    #[test]
    fn matching() {
        let router = Router::new(ROUTES);
        match router.find(&Method::GET, "/admin/orgs/abc") {
            Match::Found(r, params) => {
                assert_eq!(r.function, "api_admin_get_org");
                assert_eq!(params, vec![("id".to_string(), "abc".to_string())]);
            }
            _ => panic!("should match"),
        }
        match router.find(&Method::PATCH, "/admin/orgs") {
            Match::MethodNotAllowed(v) => assert_eq!(v, vec![Verb::Post]),
            _ => panic!("should be 405"),
        }
        assert!(matches!(
            router.find(&Method::GET, "/nope"),
            Match::NotFound
        ));
        assert!(matches!(
            router.find(&Method::GET, "/health/"),
            Match::NotFound
        ));
    }
}
