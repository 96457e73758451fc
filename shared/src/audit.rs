//! The operator audit log (`admin_events`): one row per operator write,
//! with the actor's key, the request id and what changed.
//!
//! Fire-and-forget: the row is written after the action has committed, in
//! its own statement, with a short time limit. A failing audit write is
//! logged at ERROR (with an `error_id`) and never fails, undoes or holds up
//! the action it records. The ledger, not this log, is the tamper-evident
//! record of what happened to an organisation; this log answers "which
//! operator did that, and when".

use crate::accounts::Actor;
use crate::context::AppContext;
use crate::error::{new_error_id, ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// The longest an audit write may delay the response to the operator.
const WRITE_TIME_LIMIT: Duration = Duration::from_secs(2);

/// One operator action to record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// e.g. `project.suspended`, `project.limits.updated`, `org.plan_changed`.
    pub action: &'static str,
    /// e.g. `project`, `org`, `api_key`, `user`.
    pub target_type: &'static str,
    pub target_id: String,
    pub details: Value,
}

impl AuditEvent {
    pub fn new(
        action: &'static str,
        target_type: &'static str,
        target_id: impl ToString,
        details: Value,
    ) -> Self {
        AuditEvent {
            action,
            target_type,
            target_id: target_id.to_string(),
            details,
        }
    }
}

/// Records `event`; never fails. Call it after the action's commit.
pub async fn record(ctx: &AppContext, actor: &Actor, event: AuditEvent) {
    let write = async {
        let db = ctx.db().await?;
        insert(&**db, actor, &event).await
    };
    let failure = match tokio::time::timeout(WRITE_TIME_LIMIT, write).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => {
            let cause = e.cause.as_ref().map(|c| format!("{c:#}"));
            cause.unwrap_or_else(|| e.to_string())
        }
        Err(_) => format!("no answer within {} s", WRITE_TIME_LIMIT.as_secs()),
    };
    tracing::error!(
        error_id = %new_error_id(),
        action = event.action,
        target_type = event.target_type,
        target_id = %event.target_id,
        request_id = %actor.request_id,
        cause = %failure,
        "audit write failed; the action itself succeeded"
    );
}

async fn insert(db: &impl GenericClient, actor: &Actor, event: &AuditEvent) -> ApiResult<()> {
    db.execute(
        "INSERT INTO admin_events
             (actor_key_id, actor, action, target_type, target_id, request_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &actor.key_id,
            &actor.label(),
            &event.action,
            &event.target_type,
            &event.target_id,
            &actor.request_id,
            &event.details,
        ],
    )
    .await?;
    Ok(())
}

/// A stored audit row.
#[derive(Debug, Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub actor: String,
    pub actor_key_id: Option<Uuid>,
    pub request_id: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

/// Filters of `GET /admin/audit-events`; `after` is the id of the last row
/// of the previous page (rows come newest first).
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub action: Option<String>,
    pub after: Option<i64>,
    pub limit: i64,
}

pub async fn list(db: &impl GenericClient, f: &AuditFilter) -> ApiResult<(Vec<AuditRow>, bool)> {
    if f.limit < 1 {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "'limit' must be at least 1",
        ));
    }
    let rows = db
        .query(
            "SELECT id, action, target_type, target_id, actor, actor_key_id, request_id,
                    details, created_at
               FROM admin_events
              WHERE ($1::text IS NULL OR target_type = $1)
                AND ($2::text IS NULL OR target_id = $2)
                AND ($3::text IS NULL OR action = $3)
                AND ($4::bigint IS NULL OR id < $4)
              ORDER BY id DESC
              LIMIT $5",
            &[
                &f.target_type,
                &f.target_id,
                &f.action,
                &f.after,
                &(f.limit + 1),
            ],
        )
        .await?;
    let has_more = rows.len() as i64 > f.limit;
    let out = rows
        .iter()
        .take(f.limit as usize)
        .map(|r| AuditRow {
            id: r.get(0),
            action: r.get(1),
            target_type: r.get(2),
            target_id: r.get(3),
            actor: r.get(4),
            actor_key_id: r.get(5),
            request_id: r.get(6),
            details: r.get(7),
            created_at: r.get(8),
        })
        .collect();
    Ok((out, has_more))
}
