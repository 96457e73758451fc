//! Evidence endpoints: upload through the API, list, metadata with a
//! download link, content, and direct (presigned) uploads for large files.
//! The rules live in `crate::evidence`; this module reads headers and shapes
//! responses.

use super::actor;
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::evidence::{self, Completed, Content, NewDirectUpload, NewEvidence};
use crate::http::{ApiResponse, Call};
use http::{HeaderValue, StatusCode};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

fn location(evidence_id: Uuid) -> String {
    format!("/api/evidence/{evidence_id}")
}

/// `POST /api/evidence`: the file is the raw body; `X-Filename` names it,
/// `Content-Type` is stored with it, and an optional `X-Content-SHA256`
/// must match the body or nothing is stored.
pub async fn upload(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let headers = &call.req.headers;
    let filename = match headers.get("x-filename") {
        None => {
            return Err(ApiError::validation(
                "the X-Filename header is required: the file's name, 1 to 255 characters",
            ))
        }
        Some(v) => evidence::filename_from_header(v.as_bytes())
            .map_err(|e| ApiError::validation(format!("X-Filename: {e}")))?,
    };
    let content_type = match headers.get(http::header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::validation("Content-Type must be printable ASCII"))?,
        ),
    };
    let declared_sha256 = match headers.get("x-content-sha256") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| evidence::parse_sha256_hex(s.trim()))
                .ok_or_else(|| {
                    ApiError::validation("X-Content-SHA256 must be 64 hexadecimal digits")
                })?,
        ),
    };
    let stored = evidence::upload_evidence(
        &ctx,
        org,
        &actor(&ctx, &call),
        NewEvidence {
            filename,
            content_type: content_type.map(str::to_owned),
            declared_sha256,
            body: call.req.body.clone(),
        },
    )
    .await?;
    Ok(ApiResponse::created(&stored).with_header("location", &location(stored.evidence_id)))
}

/// `GET /api/evidence`: newest first; `after` is the `evidence_id` of the
/// last item of the previous page (`next_cursor`).
pub async fn list(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let page = call.page(50, 200)?;
    let after: Option<Uuid> = page.after_as()?;
    let db = ctx.db().await?;
    let (items, has_more) = evidence::list_evidence(&**db, org, after, page.limit).await?;
    let next = items.last().filter(|_| has_more).map(|e| e.evidence_id);
    Ok(ApiResponse::page(&items, next))
}

/// `GET /api/evidence/{id}`: metadata and a short-lived download link.
pub async fn get(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let id = call.param_uuid("id")?;
    let ev = {
        let db = ctx.db().await?;
        evidence::get_evidence(&**db, org, id).await?
    };
    let link = evidence::download_link(&ctx, &ev).await?;
    let mut body = serde_json::to_value(&ev).map_err(anyhow::Error::from)?;
    body["download_url"] = json!(link.download_url);
    body["expires_at"] = json!(link.expires_at);
    Ok(ApiResponse::ok(&body).with_header("cache-control", "no-store"))
}

/// `GET /api/evidence/{id}/content`: the bytes (local store) or a 302 to a
/// presigned URL (S3).
pub async fn content(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let id = call.param_uuid("id")?;
    let ev = {
        let db = ctx.db().await?;
        evidence::get_evidence(&**db, org, id).await?
    };
    match evidence::content(&ctx, &ev).await? {
        Content::Redirect(link) => {
            let mut r = ApiResponse::json(StatusCode::FOUND, &link);
            r.headers.insert(
                http::header::LOCATION,
                HeaderValue::from_str(&link.download_url)
                    .map_err(|e| ApiError::internal(anyhow::Error::from(e)))?,
            );
            Ok(r.with_header("cache-control", "no-store"))
        }
        Content::Bytes(bytes) => {
            let mut r = ApiResponse::ok(&());
            r.body = bytes;
            let content_type = HeaderValue::from_str(&ev.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            r.headers.insert(http::header::CONTENT_TYPE, content_type);
            Ok(r.with_header(
                "content-disposition",
                &evidence::content_disposition(&ev.filename),
            )
            .with_header("x-content-sha256", &ev.sha256)
            // Uploaded files are never rendered as part of this origin.
            .with_header("x-content-type-options", "nosniff")
            .with_header("content-security-policy", "sandbox; default-src 'none'")
            .with_header("cache-control", "private, no-store"))
        }
    }
}

/// `POST /api/evidence/uploads`: a presigned PUT for a file too large for
/// the API.
pub async fn create_upload(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let input: NewDirectUpload = call.json()?;
    let up = evidence::create_direct_upload(&ctx, org, &actor(&ctx, &call), input).await?;
    Ok(ApiResponse::created(&up).with_header("cache-control", "no-store"))
}

/// `POST /api/evidence/uploads/{id}/complete`: 201 with the new evidence,
/// or 200 with the same evidence when the upload was already completed.
pub async fn complete_upload(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let id = call.param_uuid("id")?;
    let (status, ev) =
        match evidence::complete_direct_upload(&ctx, org, &actor(&ctx, &call), id).await? {
            Completed::New(ev) => (StatusCode::CREATED, ev),
            Completed::Existing(ev) => (StatusCode::OK, ev),
        };
    Ok(ApiResponse::json(status, &ev).with_header("location", &location(ev.evidence_id)))
}
