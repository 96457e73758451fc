//! `Idempotency-Key` for creating POSTs: the first response is stored and
//! replayed for a retry with the same key and body; the same key with another
//! body is refused.

use crate::error::{ApiError, RetryStrategy};
use crate::http::ApiResponse;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

/// An in-progress record older than this is taken to belong to a request
/// that died (a killed Lambda), and may be taken over.
const STALE_IN_PROGRESS_SECS: f64 = 60.0;

pub enum Begin {
    /// First time this key is seen: run the handler, then [`finish`].
    Proceed,
    /// The stored response of the first request.
    Replay(ApiResponse),
}

pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Request headers that change what a request means (raw-body uploads carry
/// their metadata in headers), so they are part of the fingerprint.
pub const FINGERPRINTED_HEADERS: [&str; 3] = ["content-type", "x-filename", "x-content-sha256"];

/// What makes two requests "the same": route, path, the meaningful headers
/// and the body. Each part is length-prefixed so parts cannot run together.
pub fn fingerprint(route: &str, path: &str, headers: &http::HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(route.as_bytes());
    part(path.as_bytes());
    for name in FINGERPRINTED_HEADERS {
        part(
            headers
                .get(name)
                .map(|v| v.as_bytes())
                .unwrap_or(b"\0absent"),
        );
    }
    part(body);
    h.finalize().to_vec()
}

pub async fn begin(
    client: &deadpool_postgres::Client,
    owner: &str,
    key: &str,
    route: &str,
    fingerprint: &[u8],
    now: DateTime<Utc>,
    ttl_secs: u32,
) -> Result<Begin, ApiError> {
    if !valid_key(key) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    let expires = now + chrono::Duration::seconds(i64::from(ttl_secs));
    // Claim the key, or take over one that expired or whose request died.
    let claimed = client
        .query_opt(
            "INSERT INTO idempotency_records AS r
                 (owner, idempotency_key, route, fingerprint, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (owner, idempotency_key) DO UPDATE
                SET route = EXCLUDED.route, fingerprint = EXCLUDED.fingerprint,
                    created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
                    status_code = NULL, response_headers = NULL, response_body = NULL,
                    completed_at = NULL
              WHERE r.expires_at < $5
                 OR (r.completed_at IS NULL AND r.fingerprint = EXCLUDED.fingerprint
                     AND r.created_at < $5 - make_interval(secs => $7))
             RETURNING 1",
            &[
                &owner,
                &key,
                &route,
                &fingerprint,
                &now,
                &expires,
                &STALE_IN_PROGRESS_SECS,
            ],
        )
        .await?;
    if claimed.is_some() {
        return Ok(Begin::Proceed);
    }
    let row = client
        .query_one(
            "SELECT fingerprint, status_code, response_headers, response_body
               FROM idempotency_records WHERE owner = $1 AND idempotency_key = $2",
            &[&owner, &key],
        )
        .await?;
    let stored_fp: Vec<u8> = row.get(0);
    if stored_fp != fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request",
            "Use a new Idempotency-Key for a different request.",
        ));
    }
    let Some(status) = row.get::<_, Option<i32>>(1) else {
        return Err(ApiError::conflict(
            "idempotency_key_in_progress",
            "a request with this Idempotency-Key is still being processed",
        )
        .retry(RetryStrategy::ExponentialBackoff));
    };
    let stored_headers: Option<serde_json::Value> = row.get(2);
    let body: Option<Vec<u8>> = row.get(3);
    let mut headers = HeaderMap::new();
    if let Some(serde_json::Value::Object(map)) = stored_headers {
        for (k, v) in map {
            if let (Ok(name), Some(Ok(value))) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                v.as_str().map(http::HeaderValue::from_str),
            ) {
                headers.insert(name, value);
            }
        }
    }
    headers.insert(
        "idempotent-replayed",
        http::HeaderValue::from_static("true"),
    );
    Ok(Begin::Replay(ApiResponse {
        status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
        headers,
        body: Bytes::from(body.unwrap_or_default()),
    }))
}

/// Stores the response for replay. Server errors are not stored: the record
/// is released so that a retry runs the request again.
pub async fn finish(
    client: &deadpool_postgres::Client,
    owner: &str,
    key: &str,
    response: &ApiResponse,
) -> Result<(), tokio_postgres::Error> {
    if response.status.is_server_error() {
        client
            .execute(
                "DELETE FROM idempotency_records
                  WHERE owner = $1 AND idempotency_key = $2 AND completed_at IS NULL",
                &[&owner, &key],
            )
            .await?;
        return Ok(());
    }
    let mut headers = serde_json::Map::new();
    for name in ["content-type", "location"] {
        if let Some(v) = response.headers.get(name).and_then(|v| v.to_str().ok()) {
            headers.insert(name.into(), v.into());
        }
    }
    client
        .execute(
            "UPDATE idempotency_records
                SET status_code = $3, response_headers = $4, response_body = $5, completed_at = now()
              WHERE owner = $1 AND idempotency_key = $2",
            &[
                &owner,
                &key,
                &(response.status.as_u16() as i32),
                &serde_json::Value::Object(headers),
                &response.body.as_ref(),
            ],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_printable() {
        assert!(valid_key("abc-123"));
        assert!(!valid_key(""));
        assert!(!valid_key("a b"));
        assert!(!valid_key(&"k".repeat(256)));
    }

    #[test]
    fn fingerprints_separate_fields() {
        let none = HeaderMap::new();
        assert_ne!(
            fingerprint("a", "bc", &none, b""),
            fingerprint("ab", "c", &none, b"")
        );
        assert_ne!(
            fingerprint("r", "/p", &none, b"{}"),
            fingerprint("r", "/p", &none, b"{} ")
        );
        assert_eq!(
            fingerprint("r", "/p", &none, b"x"),
            fingerprint("r", "/p", &none, b"x")
        );
        let mut named = HeaderMap::new();
        named.insert("x-filename", "a.pdf".parse().unwrap());
        let mut renamed = HeaderMap::new();
        renamed.insert("x-filename", "b.pdf".parse().unwrap());
        assert_ne!(
            fingerprint("r", "/p", &named, b"x"),
            fingerprint("r", "/p", &renamed, b"x")
        );
        assert_ne!(
            fingerprint("r", "/p", &named, b"x"),
            fingerprint("r", "/p", &none, b"x")
        );
        // Headers that do not change the meaning do not matter.
        let mut traced = named.clone();
        traced.insert("x-request-id", "abc".parse().unwrap());
        assert_eq!(
            fingerprint("r", "/p", &named, b"x"),
            fingerprint("r", "/p", &traced, b"x")
        );
    }
}
