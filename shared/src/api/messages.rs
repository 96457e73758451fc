//! `/v1/messages`: a project key sends messages and reads its own. Another
//! project's message is "not found", like one that never existed.

use crate::accounts::Actor;
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use crate::messages::projects::project_key_needed;
use crate::messages::store::{self, NewMessage};
use http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

fn project(call: &Call) -> ApiResult<Uuid> {
    call.principal()?.project_id.ok_or_else(project_key_needed)
}

fn cursor<T: std::str::FromStr>(raw: Option<&str>) -> ApiResult<Option<T>> {
    raw.map(|a| {
        a.parse::<T>().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "'after' must be a cursor from a previous page",
            )
        })
    })
    .transpose()
}

/// `POST /v1/messages` → 202 `{"id", "status": "queued", …}`.
pub async fn send(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let project_id = project(&call)?;
    let input: NewMessage = call.json()?;
    let actor = Actor {
        key_id: call.principal.as_ref().map(|p| p.key_id),
        request_id: call.request_id.clone(),
    };
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
    let after: Option<Uuid> = cursor(page.after.as_deref())?;
    let status = call.query("status").filter(|s| !s.is_empty());
    let db = ctx.db().await?;
    let (messages, has_more) =
        store::list_messages(&**db, project_id, status.as_deref(), after, page.limit).await?;
    let next = if has_more {
        messages.last().map(|m| m.id)
    } else {
        None
    };
    Ok(ApiResponse::ok(&json!({
        "data": messages,
        "has_more": has_more,
        "next_cursor": next,
    })))
}

pub async fn events(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let project_id = project(&call)?;
    let id = call.param_uuid("id")?;
    let page = call.page(100, 500)?;
    let after: Option<i64> = cursor(page.after.as_deref())?;
    let db = ctx.db().await?;
    let (events, has_more) = store::list_events(&**db, project_id, id, after, page.limit).await?;
    let next = if has_more {
        events.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(ApiResponse::ok(&json!({
        "data": events,
        "has_more": has_more,
        "next_cursor": next,
    })))
}
