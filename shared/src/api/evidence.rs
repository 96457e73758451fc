//! Evidence endpoints (being built: see issue 3).

use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use http::StatusCode;
use std::sync::Arc;

fn not_yet() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", "not implemented yet", "")
}

pub async fn upload(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn list(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn get(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn content(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn create_upload(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn complete_upload(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
