//! Sealed days, RFC 9162 proofs and the public checkpoint key. Hashes are
//! lowercase hex; checkpoints are the signed note text, verifiable with the
//! key from `GET /api/public/checkpoint-key`.

use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiResponse, Call};
use crate::ledger::seal::{self, DayRoot};
use chrono::NaiveDate;
use serde_json::{json, Value};
use std::sync::Arc;

fn hexes(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// The JSON form of a sealed day. `verifier_key` is the current key when it
/// is the one that signed this checkpoint, else null (a rotated-out key).
fn root_json(r: &DayRoot, verifier_key: Option<&str>) -> Value {
    json!({
        "day": r.day,
        "event_count": r.event_count,
        "first_seq": r.first_seq,
        "last_seq": r.last_seq,
        "first_hash": hex::encode(r.first_hash),
        "last_hash": hex::encode(r.last_hash),
        "day_root": hex::encode(r.day_root),
        "tree_size": r.tree_size,
        "tree_root": hex::encode(r.tree_root),
        "edge": hex::encode(&r.edge),
        "checkpoint": r.checkpoint,
        "verifier_key": verifier_key.filter(|k| seal::signed_by(&r.checkpoint, k)),
        "sealed_at": r.sealed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
}

fn parse_day(raw: &str, what: &str) -> ApiResult<NaiveDate> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .filter(|_| raw.len() == 10)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_day", format!("'{what}' must be a date YYYY-MM-DD"))
        })
}

fn parse_size(call: &Call, name: &str) -> ApiResult<u64> {
    let raw = call.query(name).ok_or_else(|| {
        ApiError::bad_request(
            "missing_parameter",
            format!("query parameter '{name}' is required"),
        )
    })?;
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("'{name}' must be a whole number"),
            )
        })
}

/// The verifier key for annotating roots; roots are still served (with a
/// null key) if it cannot be had.
async fn current_verifier_key(ctx: &AppContext) -> Option<String> {
    match seal::checkpoint_verifier_key(ctx).await {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, cause = ?e.cause, "no checkpoint verifier key");
            None
        }
    }
}

pub async fn list_roots(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let page = call.page(100, 1000)?;
    let after = page
        .after
        .as_deref()
        .map(|a| parse_day(a, "after"))
        .transpose()?;
    let db = ctx.db().await?;
    let mut roots = seal::list_roots(&**db, org, after, page.limit + 1).await?;
    let has_more = roots.len() as i64 > page.limit;
    roots.truncate(page.limit as usize);
    let vkey = if roots.is_empty() {
        None
    } else {
        current_verifier_key(&ctx).await
    };
    let next = roots.last().filter(|_| has_more).map(|r| r.day.to_string());
    let data: Vec<_> = roots
        .iter()
        .map(|r| root_json(r, vkey.as_deref()))
        .collect();
    Ok(ApiResponse::page(&data, next))
}

pub async fn get_root(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let day = parse_day(call.param("day").unwrap_or_default(), "day")?;
    let db = ctx.db().await?;
    let root = seal::get_root(&**db, org, day).await?;
    let vkey = current_verifier_key(&ctx).await;
    Ok(ApiResponse::ok(&root_json(&root, vkey.as_deref())))
}

pub async fn inclusion_proof(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let seq = parse_size(&call, "seq")?;
    let tree_size = parse_size(&call, "tree_size")?;
    let mut db = ctx.db().await?;
    let tx = db.build_transaction().read_only(true).start().await?;
    let p = seal::inclusion_proof(&tx, org, seq, tree_size).await?;
    tx.commit().await?;
    let vkey = current_verifier_key(&ctx).await;
    let vkey = vkey.filter(|k| seal::signed_by(&p.checkpoint.checkpoint, k));
    Ok(ApiResponse::ok(&json!({
        "seq": p.seq,
        "leaf_index": p.leaf_index,
        "tree_size": p.checkpoint.tree_size,
        // The leaf is the event hash; its RFC 6962 leaf hash is
        // SHA-256(0x00 || leaf_hash), also given as leaf_hash_rfc6962.
        "leaf_hash": hex::encode(p.event_hash),
        "leaf_hash_rfc6962": hex::encode(crate::ledger::merkle::leaf_hash(&p.event_hash)),
        "audit_path": hexes(&p.audit_path),
        "root": hex::encode(p.checkpoint.tree_root),
        "day": p.checkpoint.day,
        "checkpoint": p.checkpoint.checkpoint,
        "verifier_key": vkey,
    })))
}

pub async fn consistency_proof(ctx: Arc<AppContext>, call: Call) -> ApiResult<ApiResponse> {
    let org = call.principal()?.org()?;
    let from = parse_size(&call, "from")?;
    let to = parse_size(&call, "to")?;
    let mut db = ctx.db().await?;
    let tx = db.build_transaction().read_only(true).start().await?;
    let p = seal::consistency_proof(&tx, org, from, to).await?;
    tx.commit().await?;
    Ok(ApiResponse::ok(&json!({
        "from": p.from.tree_size,
        "to": p.to.tree_size,
        "proof": hexes(&p.proof),
        "from_root": hex::encode(p.from.tree_root),
        "to_root": hex::encode(p.to.tree_root),
        "from_day": p.from.day,
        "to_day": p.to.day,
        "from_checkpoint": p.from.checkpoint,
        "to_checkpoint": p.to.checkpoint,
    })))
}

/// Public: the key that verifies checkpoints, in the C2SP / sumdb note
/// verifier-key form.
pub async fn checkpoint_key(ctx: Arc<AppContext>, _call: Call) -> ApiResult<ApiResponse> {
    let vkey = seal::checkpoint_verifier_key(&ctx).await?;
    Ok(ApiResponse::ok(&json!({
        "verifier_key": vkey,
        "algorithm": "ed25519",
        "format": "c2sp-signed-note",
        "checkpoint_format": "c2sp-tlog-checkpoint",
        "origin_prefix": format!("{}/orgs/", ctx.config.checkpoint.origin),
    })))
}
