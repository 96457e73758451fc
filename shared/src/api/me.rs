use crate::accounts;
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// Who the presented key belongs to.
pub async fn me(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let p = call.principal()?;
    let db = ctx.db().await?;
    let org = match p.org_id {
        Some(id) => Some(accounts::get_org(&**db, id).await?),
        None => None,
    };
    Ok(ApiResponse::ok(&json!({
        "key_id": p.key_id,
        "scope": p.scope,
        "org": org,
        "project_id": p.project_id,
        "user_id": p.user_id,
    })))
}

pub async fn list_api_keys(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let page = call.page(50, 200)?;
    let after = page
        .after
        .as_deref()
        .map(|a| {
            Uuid::try_parse(a).map_err(|_| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "'after' must be a cursor from a previous page",
                )
            })
        })
        .transpose()?;
    let db = ctx.db().await?;
    let (keys, has_more) = accounts::list_org_keys(&**db, org, after, page.limit).await?;
    let next = if has_more {
        keys.last().map(|k| k.id)
    } else {
        None
    };
    Ok(ApiResponse::ok(&json!({
        "data": keys,
        "has_more": has_more,
        "next_cursor": next,
    })))
}

pub async fn get_api_key(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let id = call.param_uuid("id")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(
        &accounts::get_org_key(&**db, org, id).await?,
    ))
}
