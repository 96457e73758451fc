//! Message delivery settings, read with the rest of the configuration
//! (`Config::messages`). The worker checks them again at start-up and warns
//! about unsafe values (see [`MessagesConfig::warnings`]).

use crate::config::ConfigError;
use std::time::Duration;

/// The default name of the message queue in the Postgres queue table.
pub const LOCAL_MESSAGE_QUEUE: &str = "messages";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesConfig {
    /// `LEDGERLINE_MESSAGE_QUEUE_URL`: the SQS queue of message deliveries,
    /// needed where the queue backend is `sqs` (the API function that sends
    /// messages and the worker).
    pub queue_url: Option<String>,
    /// `LEDGERLINE_ALLOW_INSECURE_ENDPOINTS`: accept `http://` endpoints on
    /// 127.0.0.1 / localhost / [::1] (local receivers). Off by default;
    /// `ledgerline serve` turns it on unless the variable says otherwise.
    pub allow_insecure_endpoints: bool,
    /// `LEDGERLINE_RETRY_BASE_MS` (default 2000): the first retry waits
    /// between half and all of this; each further retry doubles it.
    pub retry_base: Duration,
    /// `LEDGERLINE_WORKER_BATCH_SIZE` (default 10): messages the local
    /// worker takes per poll and delivers concurrently.
    pub worker_batch_size: usize,
    /// `LEDGERLINE_WORKER_POLL_MS` (default 1000): how long the local worker
    /// waits before polling an empty queue again.
    pub worker_poll: Duration,
    /// `LEDGERLINE_DELIVERY_TIMEOUT_MS` (default 10000): the limit on one
    /// HTTP delivery attempt, connection included.
    pub delivery_timeout: Duration,
}

/// Batches above this are unsafe: that many concurrent deliveries, each
/// holding a connection for up to the delivery timeout.
pub const SAFE_MAX_BATCH: usize = 100;
/// Polling an empty queue faster than this mostly loads the database.
pub const SAFE_MIN_POLL: Duration = Duration::from_millis(100);

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            queue_url: None,
            allow_insecure_endpoints: false,
            retry_base: crate::messages::retry::BASE_DELAY,
            worker_batch_size: 10,
            worker_poll: Duration::from_millis(1000),
            delivery_timeout: Duration::from_secs(10),
        }
    }
}

impl MessagesConfig {
    pub fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<MessagesConfig, ConfigError> {
        let d = MessagesConfig::default();
        let ms = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
            Ok(match get(key) {
                None => default,
                Some(v) => Duration::from_millis(v.trim().parse().map_err(|_| {
                    ConfigError(format!(
                        "{key} must be a whole number of milliseconds, not '{v}'"
                    ))
                })?),
            })
        };
        let batch = match get("LEDGERLINE_WORKER_BATCH_SIZE") {
            None => d.worker_batch_size,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "LEDGERLINE_WORKER_BATCH_SIZE must be a whole number from 1 up, not '{v}'"
                    ))
                })?,
        };
        let delivery_timeout = ms("LEDGERLINE_DELIVERY_TIMEOUT_MS", d.delivery_timeout)?;
        if delivery_timeout.is_zero() {
            return Err(ConfigError(
                "LEDGERLINE_DELIVERY_TIMEOUT_MS must be above 0".into(),
            ));
        }
        Ok(MessagesConfig {
            queue_url: get("LEDGERLINE_MESSAGE_QUEUE_URL").filter(|v| !v.trim().is_empty()),
            allow_insecure_endpoints: match get("LEDGERLINE_ALLOW_INSECURE_ENDPOINTS") {
                None => d.allow_insecure_endpoints,
                Some(v) => parse_bool(&v).ok_or_else(|| {
                    ConfigError(format!(
                        "LEDGERLINE_ALLOW_INSECURE_ENDPOINTS must be true or false, not '{v}'"
                    ))
                })?,
            },
            retry_base: ms("LEDGERLINE_RETRY_BASE_MS", d.retry_base)?,
            worker_batch_size: batch,
            worker_poll: ms("LEDGERLINE_WORKER_POLL_MS", d.worker_poll)?,
            delivery_timeout,
        })
    }

    /// Settings that work but are unsafe; the worker logs each at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.worker_batch_size > SAFE_MAX_BATCH {
            w.push(format!(
                "LEDGERLINE_WORKER_BATCH_SIZE={} is above {SAFE_MAX_BATCH}: that many deliveries \
                 run at once, each holding a connection for up to {} s",
                self.worker_batch_size,
                self.delivery_timeout.as_secs()
            ));
        }
        if self.worker_poll < SAFE_MIN_POLL {
            w.push(format!(
                "LEDGERLINE_WORKER_POLL_MS={} is below {}: an idle worker will hammer the database",
                self.worker_poll.as_millis(),
                SAFE_MIN_POLL.as_millis()
            ));
        }
        if self.delivery_timeout > Duration::from_secs(30) {
            w.push(format!(
                "LEDGERLINE_DELIVERY_TIMEOUT_MS={} is above 30000: a slow receiver holds a worker \
                 (and in Lambda, the whole batch) that long",
                self.delivery_timeout.as_millis()
            ));
        }
        w
    }
}

/// The environment variable that says whether `ledgerline serve` should
/// keep its default of accepting loopback `http://` endpoints.
pub const ALLOW_INSECURE_ENV: &str = "LEDGERLINE_ALLOW_INSECURE_ENDPOINTS";

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<MessagesConfig, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        MessagesConfig::from_lookup(&|k: &str| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_safe() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c, MessagesConfig::default());
        assert!(!c.allow_insecure_endpoints);
        assert_eq!(c.delivery_timeout, Duration::from_secs(10));
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn unsafe_values_warn_and_bad_values_fail() {
        let c = cfg(&[
            ("LEDGERLINE_WORKER_BATCH_SIZE", "101"),
            ("LEDGERLINE_WORKER_POLL_MS", "99"),
        ])
        .unwrap();
        let w = c.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("BATCH_SIZE=101"));
        assert!(w[1].contains("POLL_MS=99"));
        let ok = cfg(&[
            ("LEDGERLINE_WORKER_BATCH_SIZE", "100"),
            ("LEDGERLINE_WORKER_POLL_MS", "100"),
        ])
        .unwrap();
        assert!(ok.warnings().is_empty());
        assert!(cfg(&[("LEDGERLINE_WORKER_BATCH_SIZE", "0")]).is_err());
        assert!(cfg(&[("LEDGERLINE_WORKER_POLL_MS", "soon")]).is_err());
        assert!(cfg(&[("LEDGERLINE_ALLOW_INSECURE_ENDPOINTS", "maybe")]).is_err());
        assert!(cfg(&[("LEDGERLINE_DELIVERY_TIMEOUT_MS", "0")]).is_err());
        assert!(
            cfg(&[("LEDGERLINE_ALLOW_INSECURE_ENDPOINTS", "true")])
                .unwrap()
                .allow_insecure_endpoints
        );
        assert_eq!(
            cfg(&[("LEDGERLINE_RETRY_BASE_MS", "10")])
                .unwrap()
                .retry_base,
            Duration::from_millis(10)
        );
    }
}
