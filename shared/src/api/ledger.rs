//! Reading the organisation's ledger.

use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use crate::ledger::events::{self, LedgerEvent};
use serde_json::{json, Value};
use std::sync::Arc;

/// The JSON form of an event: hashes in lowercase hex, the payload as JSON
/// and also as the exact canonical text that was hashed.
pub fn event_json(ev: &LedgerEvent) -> Value {
    json!({
        "seq": ev.seq,
        "event_type": ev.event_type,
        "subject": ev.subject,
        "actor": ev.actor,
        "request_id": ev.request_id,
        "recorded_at": ev.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "payload": serde_json::from_str::<Value>(&ev.payload).unwrap_or(Value::Null),
        "payload_canonical": ev.payload,
        "prev_hash": hex::encode(ev.prev_hash),
        "hash": hex::encode(ev.hash),
    })
}

fn parse_seq(raw: &str, what: &str) -> ApiResult<u64> {
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_seq", format!("'{what}' must be a whole number"))
        })
}

pub async fn list_events(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let page = call.page(100, 1000)?;
    let after = match page.after.as_deref() {
        Some(a) => parse_seq(a, "after")?,
        None => 0,
    };
    let db = ctx.db().await?;
    let mut evs = events::list_events(&**db, org, after, page.limit + 1).await?;
    let has_more = evs.len() as i64 > page.limit;
    evs.truncate(page.limit as usize);
    let next = evs.last().filter(|_| has_more).map(|e| e.seq.to_string());
    let data: Vec<_> = evs.iter().map(event_json).collect();
    Ok(ApiResponse::page(&data, next))
}

pub async fn get_event(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let seq = parse_seq(call.param("seq").unwrap_or_default(), "seq")?;
    let db = ctx.db().await?;
    Ok(ApiResponse::ok(&event_json(
        &events::get_event(&**db, org, seq).await?,
    )))
}
