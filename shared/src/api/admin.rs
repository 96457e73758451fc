//! Operator endpoints. Every write keeps its actor (key and request id) so
//! it can be written to the operator audit log, and every change to an
//! organisation is recorded in its ledger in the same transaction.

use super::{actor, sequenced, with_seq};
use crate::accounts::{self, NewApiKey, NewOrg, NewUser};
use crate::audit::{self, AuditEvent};
use crate::context::AppContext;
use crate::error::ApiResult;
use crate::http::{ApiResponse, Call};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub async fn create_org(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let input: NewOrg = call.json()?;
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let (org, pending) = accounts::create_org(&tx, &input, &actor(&ctx, &call)).await?;
    tx.commit().await?;
    let seq = sequenced(&db, org.id, Some(pending)).await;
    drop(db);
    let details = json!({"name": org.name, "plan_tier": org.plan_tier});
    audit::record(
        &ctx,
        &actor(&ctx, &call),
        AuditEvent::new("org.created", "org", org.id, details),
    )
    .await;
    let location = format!("/admin/orgs/{}", org.id);
    Ok(ApiResponse::created(&with_seq(&org, seq)).with_header("location", &location))
}

pub async fn get_org(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(&accounts::org_summary(&**db, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPlan {
    plan_tier: String,
}

pub async fn set_plan(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let input: SetPlan = call.json()?;
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let (org, previous, pending) =
        accounts::set_plan(&tx, id, &input.plan_tier, &actor(&ctx, &call)).await?;
    tx.commit().await?;
    let seq = sequenced(&db, id, pending).await;
    drop(db);
    let details = json!({"from": previous, "to": org.plan_tier, "changed": pending.is_some()});
    audit::record(
        &ctx,
        &actor(&ctx, &call),
        AuditEvent::new("org.plan_changed", "org", id, details),
    )
    .await;
    let mut body = with_seq(&org, seq);
    body["previous_plan_tier"] = json!(previous);
    Ok(ApiResponse::ok(&body))
}

pub async fn create_user(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.param_uuid("id")?;
    let input: NewUser = call.json()?;
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let (user, pending) = accounts::create_user(&tx, org, &input, &actor(&ctx, &call)).await?;
    tx.commit().await?;
    let seq = sequenced(&db, org, Some(pending)).await;
    drop(db);
    let details = json!({"org_id": org, "email": user.email, "role": user.role});
    audit::record(
        &ctx,
        &actor(&ctx, &call),
        AuditEvent::new("user.created", "user", user.id, details),
    )
    .await;
    Ok(ApiResponse::created(&with_seq(&user, seq)))
}

pub async fn create_api_key(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.param_uuid("id")?;
    let input: NewApiKey = call.json()?;
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let (issued, pending) = accounts::create_org_key(&tx, org, &input, &actor(&ctx, &call)).await?;
    tx.commit().await?;
    let seq = sequenced(&db, org, Some(pending)).await;
    drop(db);
    let i = &issued.info;
    let details = json!({"org_id": org, "name": i.name, "scope": i.scope,
                         "project_id": i.project_id, "user_id": i.user_id});
    audit::record(
        &ctx,
        &actor(&ctx, &call),
        AuditEvent::new("api_key.created", "api_key", i.id, details),
    )
    .await;
    Ok(ApiResponse::created(&with_seq(&issued, seq)).with_header("cache-control", "no-store"))
}

pub async fn revoke_api_key(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let (info, pending) = accounts::revoke_key(&tx, id, &actor(&ctx, &call)).await?;
    tx.commit().await?;
    let seq = match info.org_id {
        Some(org) => sequenced(&db, org, pending).await,
        None => None,
    };
    drop(db);
    let details = json!({"org_id": info.org_id, "name": info.name, "scope": info.scope,
                         "already_revoked": pending.is_none()});
    audit::record(
        &ctx,
        &actor(&ctx, &call),
        AuditEvent::new("api_key.revoked", "api_key", id, details),
    )
    .await;
    Ok(ApiResponse::ok(&with_seq(&info, seq)))
}
