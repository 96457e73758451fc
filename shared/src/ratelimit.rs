//! Fixed-window rate limits kept in Postgres, so every Lambda instance shares
//! one counter. The counter only moves while under the limit, in a single
//! atomic upsert, so N concurrent requests against a limit of L admit exactly
//! min(N, L). The upsert commits asynchronously (migrations/V7): a counter
//! needs no durability, and its hot row's lock is then never held across a
//! WAL flush.

use chrono::{DateTime, TimeZone, Utc};
use http::HeaderMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the current window ends.
    pub reset_at: DateTime<Utc>,
    /// Seconds until the window ends (at least 1), for `Retry-After`.
    pub retry_after: u64,
}

impl Decision {
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        let put = |h: &mut HeaderMap, k: &'static str, v: String| {
            if let Ok(v) = v.parse() {
                h.insert(k, v);
            }
        };
        put(headers, "x-ratelimit-limit", self.limit.to_string());
        put(headers, "x-ratelimit-remaining", self.remaining.to_string());
        put(
            headers,
            "x-ratelimit-reset",
            self.reset_at.timestamp().to_string(),
        );
        if !self.allowed {
            put(headers, "retry-after", self.retry_after.to_string());
        }
    }
}

/// The window containing `now`, aligned to multiples of `window_secs` since
/// the Unix epoch: (start, end).
pub fn window(now: DateTime<Utc>, window_secs: u32) -> (DateTime<Utc>, DateTime<Utc>) {
    let w = i64::from(window_secs.max(1));
    let start = now.timestamp().div_euclid(w) * w;
    let start = Utc.timestamp_opt(start, 0).single().unwrap_or(now);
    (start, start + chrono::Duration::seconds(w))
}

/// Counts one request against `bucket` and decides whether it is admitted.
pub async fn check(
    client: &deadpool_postgres::Client,
    bucket: &str,
    limit: u32,
    window_secs: u32,
    now: DateTime<Utc>,
) -> Result<Decision, tokio_postgres::Error> {
    let (start, end) = window(now, window_secs);
    if limit == 0 {
        return Ok(decide(limit, end, now, None));
    }
    // rate_limit_hit (migrations/V7): the upsert, committed asynchronously.
    let row = crate::db::query_opt(
        client,
        "SELECT hit_count FROM rate_limit_hit($1, $2, $3, $4)",
        &[&bucket, &start, &end, &(limit as i32)],
    )
    .await?;
    Ok(decide(limit, end, now, row.map(|r| r.get(0))))
}

/// The decision for a window ending at `end` whose counter moved to `count`
/// (`None`: it did not move, the window being full). For callers that
/// count in SQL of their own (`rate_limit_hit`, migrations/V7).
pub fn decide(limit: u32, end: DateTime<Utc>, now: DateTime<Utc>, count: Option<i32>) -> Decision {
    let retry_after = ((end - now).num_milliseconds().max(0) as u64)
        .div_ceil(1000)
        .max(1);
    Decision {
        allowed: count.is_some(),
        limit,
        remaining: count.map_or(0, |c| limit.saturating_sub(c.max(0) as u32)),
        reset_at: end,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_the_epoch() {
        let now = Utc.timestamp_opt(1_700_000_123, 0).unwrap();
        let (s, e) = window(now, 60);
        assert_eq!(s.timestamp(), 1_700_000_100);
        assert_eq!(e.timestamp(), 1_700_000_160);
        let (s, e) = window(now, 86_400);
        assert_eq!(s.timestamp() % 86_400, 0);
        assert_eq!((e - s).num_seconds(), 86_400);
    }

    #[test]
    fn headers_carry_the_decision() {
        let now = Utc.timestamp_opt(1_700_000_100, 0).unwrap();
        let d = Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_at: now,
            retry_after: 7,
        };
        let mut h = HeaderMap::new();
        d.apply_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "1700000100");
        assert_eq!(h["retry-after"], "7");
    }
}
