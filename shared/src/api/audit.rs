//! `GET /admin/audit-events`: the operator audit log, newest first.

use crate::audit::{self, AuditFilter};
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use serde_json::json;
use std::sync::Arc;

pub async fn list_audit_events(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let page = call.page(50, 200)?;
    let after = page
        .after
        .as_deref()
        .map(|a| {
            a.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "'after' must be a cursor from a previous page",
                )
            })
        })
        .transpose()?;
    let filter = AuditFilter {
        target_type: call.query("target_type").filter(|s| !s.is_empty()),
        target_id: call.query("target_id").filter(|s| !s.is_empty()),
        action: call.query("action").filter(|s| !s.is_empty()),
        after,
        limit: page.limit,
    };
    let db = ctx.db().await?;
    let (rows, has_more) = audit::list(&**db, &filter).await?;
    let next = if has_more {
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(ApiResponse::ok(&json!({
        "data": rows,
        "has_more": has_more,
        "next_cursor": next,
    })))
}
