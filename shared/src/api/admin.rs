//! Operator endpoints. Every write keeps its actor (key and request id) so
//! it can be written to the operator audit log.

use crate::accounts::{self, Actor, NewApiKey, NewOrg, NewUser};
use crate::context::AppContext;
use crate::error::ApiResult;
use crate::http::{ApiResponse, Call};
use std::sync::Arc;

fn actor(call: &Call) -> Actor {
    Actor {
        key_id: call.principal.as_ref().map(|p| p.key_id),
        request_id: call.request_id.clone(),
    }
}

pub async fn create_org(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let input: NewOrg = call.json()?;
    let db = ctx.db().await?;
    let org = accounts::create_org(&**db, &input, &actor(&call)).await?;
    let location = format!("/admin/orgs/{}", org.id);
    Ok(ApiResponse::created(&org).with_header("location", &location))
}

pub async fn get_org(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(&accounts::org_summary(&**db, id).await?))
}

pub async fn create_user(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.param_uuid("id")?;
    let input: NewUser = call.json()?;
    let db = ctx.db().await?;
    Ok(ApiResponse::created(
        &accounts::create_user(&**db, org, &input, &actor(&call)).await?,
    ))
}

pub async fn create_api_key(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.param_uuid("id")?;
    let input: NewApiKey = call.json()?;
    let db = ctx.db().await?;
    let issued = accounts::create_org_key(&**db, org, &input, &actor(&call)).await?;
    Ok(ApiResponse::created(&issued).with_header("cache-control", "no-store"))
}

pub async fn revoke_api_key(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(
        &accounts::revoke_key(&**db, id, &actor(&call)).await?,
    ))
}
