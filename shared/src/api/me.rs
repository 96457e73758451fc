use crate::accounts;
use crate::context::AppContext;
use crate::error::ApiResult;
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
    let after: Option<Uuid> = page.after_as()?;
    let db = ctx.db().await?;
    let (keys, has_more) = accounts::list_org_keys(&**db, org, after, page.limit).await?;
    let next = keys.last().filter(|_| has_more).map(|k| k.id);
    Ok(ApiResponse::page(&keys, next))
}

pub async fn get_api_key(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let id = call.param_uuid("id")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(
        &accounts::get_org_key(&**db, org, id).await?,
    ))
}
