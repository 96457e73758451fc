//! Sealed roots, proofs and the checkpoint key (being built: see issue 3).

use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use http::StatusCode;
use std::sync::Arc;

fn not_yet() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", "not implemented yet", "")
}

pub async fn list_roots(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn get_root(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn inclusion_proof(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn consistency_proof(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
pub async fn checkpoint_key(_ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    Err(not_yet())
}
