//! What a delivery attempt's result means, and when to try again:
//! exponential backoff with jitter, honouring the receiver's Retry-After.

use std::time::Duration;

/// Attempts before a message is given up as failed.
pub const MAX_ATTEMPTS: u32 = 8;
/// The first retry waits about this long.
pub const BASE_DELAY: Duration = Duration::from_secs(2);
/// No wait is longer than SQS's maximum message delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The receiver refused the message; retrying cannot help.
    Rejected,
    /// Worth another attempt.
    Retry,
}

/// Classifies an HTTP status; `None` is a timeout or a connection failure.
/// 2xx delivered; 408, 429 and 5xx retried; any other answer is final.
pub fn classify(status: Option<u16>) -> Outcome {
    match status {
        Some(200..=299) => Outcome::Delivered,
        Some(408) | Some(429) | Some(500..=599) | None => Outcome::Retry,
        Some(_) => Outcome::Rejected,
    }
}

/// How long to wait before attempt `next_attempt` (2, 3, …): the larger of
/// the receiver's Retry-After and an exponential delay with "equal jitter"
/// (half fixed, half random, so retries spread out but never collapse to 0).
/// `unit_random` is uniform in [0, 1).
pub fn delay_before(
    next_attempt: u32,
    retry_after: Option<Duration>,
    unit_random: f64,
) -> Duration {
    delay_with_base(BASE_DELAY, next_attempt, retry_after, unit_random)
}

/// [`delay_before`] with another first delay (`LEDGERLINE_RETRY_BASE_MS`;
/// tests use a few milliseconds so retries do not take seconds).
pub fn delay_with_base(
    base: Duration,
    next_attempt: u32,
    retry_after: Option<Duration>,
    unit_random: f64,
) -> Duration {
    let exp = next_attempt.saturating_sub(2).min(20);
    let full = base.saturating_mul(1u32 << exp).min(MAX_DELAY);
    let half = full / 2;
    let jittered = half + half.mul_f64(unit_random.clamp(0.0, 1.0));
    jittered.max(retry_after.unwrap_or_default()).min(MAX_DELAY)
}

/// Parses `Retry-After` as delta-seconds (the HTTP-date form is rare for
/// webhooks and is treated as absent).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A uniform random number in [0, 1) from the OS.
pub fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_contract() {
        assert_eq!(classify(Some(200)), Outcome::Delivered);
        assert_eq!(classify(Some(204)), Outcome::Delivered);
        for s in [400, 401, 403, 404, 410, 422] {
            assert_eq!(classify(Some(s)), Outcome::Rejected, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify(Some(s)), Outcome::Retry, "{s}");
        }
        assert_eq!(classify(None), Outcome::Retry);
        assert_eq!(classify(Some(301)), Outcome::Rejected);
    }

    #[test]
    fn delays_grow_with_jitter_and_are_capped() {
        assert_eq!(delay_before(2, None, 0.0), Duration::from_secs(1));
        assert!(delay_before(2, None, 0.999_999) < Duration::from_secs(2));
        assert_eq!(delay_before(3, None, 0.0), Duration::from_secs(2));
        assert_eq!(delay_before(5, None, 0.0), Duration::from_secs(8));
        assert_eq!(delay_before(30, None, 1.0), MAX_DELAY);
        let mut prev = Duration::ZERO;
        for attempt in 2..=MAX_ATTEMPTS {
            let d = delay_before(attempt, None, 0.5);
            assert!(d >= prev);
            prev = d;
        }
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        assert_eq!(
            delay_before(2, Some(Duration::from_secs(30)), 0.0),
            Duration::from_secs(30)
        );
        assert_eq!(
            delay_before(2, Some(Duration::from_secs(86_400)), 0.0),
            MAX_DELAY
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn the_base_delay_scales_every_step() {
        let base = Duration::from_millis(10);
        assert_eq!(
            delay_with_base(base, 2, None, 0.0),
            Duration::from_millis(5)
        );
        assert_eq!(
            delay_with_base(base, 4, None, 0.0),
            Duration::from_millis(20)
        );
        // Retry-After still wins over a short base.
        assert_eq!(
            delay_with_base(base, 2, Some(Duration::from_secs(1)), 0.0),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn unit_random_is_in_range() {
        for _ in 0..1000 {
            let r = unit_random();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
