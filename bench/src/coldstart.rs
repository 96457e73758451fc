//! Cold start: spawn a function binary against the in-process Runtime API and
//! time spawn → first completed invocation response, then kill it.

use crate::runtime_api::{Invocation, Outcome, RuntimeApi};
use crate::stats::{ratio, round3, summarize};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A well-formed key that no database holds: the 401 path then looks it up.
pub const UNKNOWN_ORG_KEY: &str =
    "ll_org_00000000000000000000000000000000_0000000000000000000000000000000000000000000000000000000000000000";

/// One binary to measure and the event it is fed.
pub struct Target {
    pub name: String,
    pub path: PathBuf,
    pub event: Bytes,
    pub event_file: String,
    pub event_note: String,
}

pub struct Settings {
    pub runtime_api: String,
    pub database_url: String,
    pub timeout: Duration,
    pub child_logs: bool,
}

/// What one target's runs produced.
#[derive(Default)]
pub struct Runs {
    pub ms: Vec<f64>,
    pub init_ms: Vec<f64>,
    pub statuses: BTreeMap<String, u32>,
    pub failures: u32,
    pub first_failure: Option<String>,
}

impl Runs {
    pub fn record(&mut self, r: Result<Timing, String>) {
        match r {
            Ok(t) => {
                self.ms.push(t.total_ms);
                self.init_ms.extend(t.init_ms);
                let key = t
                    .status
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
                *self.statuses.entry(key).or_default() += 1;
            }
            Err(e) => {
                self.failures += 1;
                self.first_failure.get_or_insert(e);
            }
        }
    }

    pub fn median(&self) -> Option<f64> {
        summarize(self.ms.clone()).map(|s| s.median)
    }

    pub fn init_median(&self) -> Option<f64> {
        summarize(self.init_ms.clone()).map(|s| s.median)
    }

    /// The JSON for this target; `baseline` (hello's median cold start and
    /// median init) adds the ratios and the target verdict.
    pub fn to_json(
        &self,
        t: &Target,
        baseline: Option<(Option<f64>, Option<f64>)>,
        target_ratio: f64,
    ) -> Value {
        let mut o = Map::new();
        o.insert("binary".into(), json!(t.name));
        o.insert("path".into(), json!(t.path.display().to_string()));
        o.insert("size_bytes".into(), json!(file_size(&t.path)));
        o.insert("event".into(), json!(t.event_file));
        o.insert("event_note".into(), json!(t.event_note));
        o.insert("runs_ok".into(), json!(self.ms.len()));
        o.insert("failures".into(), json!(self.failures));
        o.insert("first_failure".into(), json!(self.first_failure));
        o.insert("response_statuses".into(), json!(self.statuses));
        let summary = summarize(self.ms.clone());
        match &summary {
            Some(s) => {
                o.insert("median_ms".into(), json!(round3(s.median)));
                o.insert("p90_ms".into(), json!(round3(s.p90)));
                o.insert("min_ms".into(), json!(round3(s.min)));
                o.insert("max_ms".into(), json!(round3(s.max)));
                o.insert("mean_ms".into(), json!(round3(s.mean)));
            }
            None => {
                for k in ["median_ms", "p90_ms", "min_ms", "max_ms", "mean_ms"] {
                    o.insert(k.into(), Value::Null);
                }
            }
        }
        let init = self.init_median();
        o.insert("init_median_ms".into(), json!(init.map(round3)));
        if let Some((base, base_init)) = baseline {
            let median = summary.as_ref().map(|s| s.median);
            let r = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => Value::Null,
            };
            o.insert("ratio_vs_hello".into(), r(median, base));
            o.insert("init_ratio_vs_hello".into(), r(init, base_init));
            // A target with failed runs (or no baseline) has not met anything.
            let met = match (median, base) {
                (Some(m), Some(b)) => m <= target_ratio * b && self.failures == 0,
                _ => false,
            };
            o.insert("target_met".into(), json!(met));
        }
        Value::Object(o)
    }
}

pub fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Reads `events/<name>.json`; when `unknown_key` is set, a present
/// `authorization` header is replaced by a well-formed unknown key.
pub fn load_event(
    events_dir: &Path,
    name: &str,
    unknown_key: bool,
) -> anyhow::Result<(Bytes, String)> {
    let path = events_dir.join(format!("{name}.json"));
    let raw =
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    if !unknown_key {
        return Ok((Bytes::from(raw), "as-is".into()));
    }
    let mut v: Value = serde_json::from_slice(&raw)
        .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?;
    let replaced = match v.get_mut("headers").and_then(Value::as_object_mut) {
        Some(h) if h.contains_key("authorization") => {
            h.insert(
                "authorization".into(),
                json!(format!("Bearer {UNKNOWN_ORG_KEY}")),
            );
            true
        }
        _ => false,
    };
    let note = if replaced {
        "authorization replaced by a well-formed unknown org key (expects 401 after a database lookup)"
    } else {
        "as-is"
    };
    Ok((Bytes::from(serde_json::to_vec(&v)?), note.into()))
}

/// One cold start as measured.
pub struct Timing {
    /// Spawn → first invocation response fully received.
    pub total_ms: f64,
    /// Spawn → the function's first `next` (Lambda's "Init Duration").
    pub init_ms: Option<f64>,
    /// The HTTP status in the function's response.
    pub status: Option<u16>,
}

fn ms_since(start: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(start).as_secs_f64() * 1000.0
}

/// One cold start: spawn, wait for the first completed response, kill.
pub async fn measure_once(
    api: &RuntimeApi,
    target: &Target,
    settings: &Settings,
    seq: u64,
) -> Result<Timing, String> {
    let request_id = format!("00000000-0000-4000-8000-{seq:012x}");
    let done = api.arm(Invocation {
        request_id,
        function_arn: format!(
            "arn:aws:lambda:us-east-1:123456789012:function:{}",
            target.name
        ),
        event: target.event.clone(),
    });

    let mut cmd = Command::new(&target.path);
    // A clean environment: only what Lambda would set, plus DATABASE_URL.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &settings.runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", &target.name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{}", target.name),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("TZ", ":UTC")
        .env("DATABASE_URL", &settings.database_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if settings.child_logs {
        if let Some(v) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", v);
        }
        cmd.stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::null());
    }

    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            api.disarm();
            return Err(format!("cannot start {}: {e}", target.path.display()));
        }
    };
    let deadline = started + settings.timeout;
    tokio::pin!(done);
    let result = loop {
        tokio::select! {
            biased;
            outcome = &mut done => break match outcome {
                Ok(Outcome::Response { handed_out, at, body }) => Ok(Timing {
                    total_ms: ms_since(started, at),
                    init_ms: handed_out.map(|h| ms_since(started, h)),
                    status: status_of(&body),
                }),
                Ok(Outcome::InvocationError { body, .. }) => {
                    Err(format!("invocation error: {}", String::from_utf8_lossy(&body)))
                }
                Ok(Outcome::InitError { body, .. }) => {
                    Err(format!("init error: {}", String::from_utf8_lossy(&body)))
                }
                Err(_) => Err("the runtime API dropped the run".to_owned()),
            },
            _ = tokio::time::sleep(Duration::from_millis(2)) => {
                if let Ok(Some(status)) = child.try_wait() {
                    break Err(format!("exited ({status}) before answering"));
                }
                if Instant::now() >= deadline {
                    break Err(format!("no response within {:?}", settings.timeout));
                }
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    api.disarm();
    result
}

/// The `statusCode` of an API Gateway response document.
fn status_of(body: &[u8]) -> Option<u16> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("statusCode")?
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_code_is_read_from_the_response_document() {
        assert_eq!(status_of(br#"{"statusCode":401,"headers":{}}"#), Some(401));
        assert_eq!(status_of(b"hello"), None);
    }

    #[test]
    fn unknown_key_parses_as_a_token() {
        let p = ledgerline::auth::parse_token(UNKNOWN_ORG_KEY).expect("well formed");
        assert!(p.id.is_nil());
    }
}
