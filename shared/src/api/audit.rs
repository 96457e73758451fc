//! `GET /admin/audit-events`: the operator audit log, newest first.

use crate::audit::{self, AuditFilter};
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use std::sync::Arc;

pub async fn list_audit_events(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let page = call.page(50, 200)?;
    // Audit ids start at 1.
    let after: Option<i64> = page.after_as()?;
    if after.is_some_and(|n| n <= 0) {
        return Err(ApiError::invalid_cursor());
    }
    let filter = AuditFilter {
        target_type: call.query("target_type").filter(|s| !s.is_empty()),
        target_id: call.query("target_id").filter(|s| !s.is_empty()),
        action: call.query("action").filter(|s| !s.is_empty()),
        after,
        limit: page.limit,
    };
    let db = ctx.db().await?;
    let (rows, has_more) = audit::list(&**db, &filter).await?;
    let next = rows.last().filter(|_| has_more).map(|r| r.id.to_string());
    Ok(ApiResponse::page(&rows, next))
}
