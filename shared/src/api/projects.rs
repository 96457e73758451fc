//! Operator endpoints for projects. Each write commits (with its ledger
//! event), then appends one operator audit row, fire-and-forget.

use super::{actor, sequenced, with_seq};
use crate::audit::{self, AuditEvent};
use crate::context::AppContext;
use crate::error::ApiResult;
use crate::http::{ApiResponse, Call};
use crate::messages::delivery;
use crate::messages::projects::{self, LimitsPatch, NewProject};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub async fn create_project(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let input: NewProject = call.json()?;
    let actor = actor(&ctx, &call);
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let (created, pending) = projects::create_project(
        &tx,
        &input,
        ctx.config.messages.allow_insecure_endpoints,
        &actor,
    )
    .await?;
    tx.commit().await?;
    let p = &created.project;
    let seq = sequenced(&db, p.org_id, Some(pending)).await;
    drop(db);
    audit::record(
        &ctx,
        &actor,
        AuditEvent::new(
            "project.created",
            "project",
            p.id,
            json!({"org_id": p.org_id, "name": p.name, "tier_id": p.tier_id,
                   "limits": p.limits, "endpoint_url": p.endpoint_url}),
        ),
    )
    .await;
    let mut body = with_seq(p, seq);
    // Shown this once; only the worker reads it again.
    body["signing_secret"] = json!(created.signing_secret.expose());
    Ok(ApiResponse::created(&body).with_header("cache-control", "no-store"))
}

async fn set_status(ctx: Arc<AppContext>, call: Call, suspend: bool) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let actor = actor(&ctx, &call);
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let change = projects::set_status(&tx, id, suspend, &actor).await?;
    tx.commit().await?;
    let p = &change.project;
    let seq = sequenced(&db, p.org_id, change.pending).await;
    drop(db);
    // Activation: the messages that waited are delivered now, once each.
    let requeued = if !suspend && change.pending.is_some() {
        match delivery::requeue_project(&ctx, id, "project activated").await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::error!(project_id = %id, error = %e, cause = ?e.cause,
                    "queueing the waiting messages failed; the sweeper will");
                None
            }
        }
    } else {
        None
    };
    let action = if suspend {
        "project.suspended"
    } else {
        "project.activated"
    };
    audit::record(
        &ctx,
        &actor,
        AuditEvent::new(
            action,
            "project",
            id,
            json!({"org_id": p.org_id, "previous_status": change.previous_status,
                   "status": p.status, "changed": change.pending.is_some(),
                   "requeued_messages": requeued}),
        ),
    )
    .await;
    let mut body = with_seq(p, seq);
    body["previous_status"] = json!(change.previous_status);
    if !suspend {
        body["requeued_messages"] = json!(requeued.unwrap_or(0));
    }
    Ok(ApiResponse::ok(&body))
}

pub async fn suspend_project(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    set_status(ctx, call, true).await
}

pub async fn activate_project(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    set_status(ctx, call, false).await
}

pub async fn set_limits(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let patch: LimitsPatch = call.json()?;
    let actor = actor(&ctx, &call);
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let change = projects::set_limits(&tx, id, &patch, &actor).await?;
    tx.commit().await?;
    let p = &change.project;
    let seq = sequenced(&db, p.org_id, change.pending).await;
    drop(db);
    audit::record(
        &ctx,
        &actor,
        AuditEvent::new(
            "project.limits.updated",
            "project",
            id,
            json!({"org_id": p.org_id, "old": change.previous_limits, "new": p.limits}),
        ),
    )
    .await;
    let mut body = with_seq(p, seq);
    body["previous_limits"] = json!(change.previous_limits);
    Ok(ApiResponse::ok(&body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyTier {
    tier_id: String,
}

pub async fn apply_tier(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let id = call.param_uuid("id")?;
    let input: ApplyTier = call.json()?;
    let actor = actor(&ctx, &call);
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let change = projects::apply_tier(&tx, id, &input.tier_id, &actor).await?;
    tx.commit().await?;
    let p = &change.project;
    let seq = sequenced(&db, p.org_id, change.pending).await;
    drop(db);
    audit::record(
        &ctx,
        &actor,
        AuditEvent::new(
            "project.tier.applied",
            "project",
            id,
            json!({"org_id": p.org_id, "tier_id": p.tier_id, "limits": p.limits,
                   "previous_tier_id": change.previous_tier_id,
                   "previous_limits": change.previous_limits}),
        ),
    )
    .await;
    let mut body = with_seq(p, seq);
    body["previous_tier_id"] = json!(change.previous_tier_id);
    body["previous_limits"] = json!(change.previous_limits);
    Ok(ApiResponse::ok(&body))
}
