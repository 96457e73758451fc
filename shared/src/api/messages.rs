//! `/v1/messages`: a project key sends messages and reads its own. Another
//! project's message is "not found", like one that never existed.

use crate::context::AppContext;
use crate::error::ApiResult;
use crate::http::{ApiResponse, Call};
use crate::messages::projects::project_key_needed;
use crate::messages::store::{self, NewMessage};
use http::StatusCode;
use std::sync::Arc;
use uuid::Uuid;

fn project(call: &Call) -> ApiResult<Uuid> {
    call.principal()?.project_id.ok_or_else(project_key_needed)
}

/// `POST /v1/messages` → 202 `{"id", "status": "queued", …}`.
pub async fn send(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let project_id = project(&call)?;
    let input: NewMessage = call.json()?;
    let actor = super::actor(&ctx, &call);
    let idem = call.req.header("idempotency-key");
    let accepted = store::send_message(&ctx, project_id, &input, idem, &actor).await?;
    let location = format!("/v1/messages/{}", accepted.id);
    Ok(ApiResponse::json(StatusCode::ACCEPTED, &accepted).with_header("location", &location))
}

pub async fn get(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let project_id = project(&call)?;
    let id = call.param_uuid("id")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(
        &store::get_message(&**db, project_id, id).await?,
    ))
}

pub async fn list(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let project_id = project(&call)?;
    let page = call.page(50, 200)?;
    let after: Option<Uuid> = page.after_as()?;
    let status = call.query("status").filter(|s| !s.is_empty());
    let db = ctx.db().await?;
    let (messages, has_more) =
        store::list_messages(&**db, project_id, status.as_deref(), after, page.limit).await?;
    let next = messages.last().filter(|_| has_more).map(|m| m.id);
    Ok(ApiResponse::page(&messages, next))
}

pub async fn events(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let project_id = project(&call)?;
    let id = call.param_uuid("id")?;
    let page = call.page(100, 500)?;
    let after: Option<i64> = page.after_as()?;
    let db = ctx.db().await?;
    let (events, has_more) = store::list_events(&**db, project_id, id, after, page.limit).await?;
    let next = events.last().filter(|_| has_more).map(|e| e.id.to_string());
    Ok(ApiResponse::page(&events, next))
}
