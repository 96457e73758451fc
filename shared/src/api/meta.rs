use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use serde_json::json;
use std::sync::Arc;

/// Healthy only when the database answers.
pub async fn health(ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    let db = ctx.db().await?;
    db.query_one("SELECT 1", &[])
        .await
        .map_err(ApiError::unavailable)?;
    Ok(ApiResponse::ok(&json!({
        "status": "ok",
        "database": "ok",
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

pub async fn openapi(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Ok(ApiResponse::ok(&crate::openapi::document()))
}
