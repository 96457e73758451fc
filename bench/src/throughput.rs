//! Local server throughput: the real server in-process on loopback, driven by
//! a keep-alive HTTP/1.1 client at fixed concurrency for a fixed time.

use crate::stats::{ratio, round3, summarize};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ledgerline::config::Config;
use ledgerline::context::AppContext;
use ledgerline::http::pipeline::{Pipeline, Serve};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Settings {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Upper bound on requests per phase, whatever the duration.
    pub max_requests: u64,
    /// Per-request timeout; a request still open after it is an error.
    pub request_timeout: Duration,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Default)]
struct WorkerTally {
    latencies_ms: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

pub struct Phase {
    pub requests_ok: u64,
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
    pub errors: BTreeMap<String, u64>,
}

impl Phase {
    pub fn rps(&self) -> f64 {
        self.requests_ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn to_json(&self, path: &str, auth: &str) -> Value {
        let s = summarize(self.latencies_ms.clone());
        let mut o = Map::new();
        o.insert("request".into(), json!(format!("GET {path}")));
        o.insert("auth".into(), json!(auth));
        o.insert("requests_ok".into(), json!(self.requests_ok));
        o.insert(
            "elapsed_s".into(),
            json!(round3(self.elapsed.as_secs_f64())),
        );
        o.insert("requests_per_s".into(), json!(self.rps().round()));
        o.insert("p50_ms".into(), json!(s.as_ref().map(|s| round3(s.median))));
        o.insert("p99_ms".into(), json!(s.as_ref().map(|s| round3(s.p99))));
        o.insert("max_ms".into(), json!(s.as_ref().map(|s| round3(s.max))));
        o.insert("errors".into(), json!(self.error_count()));
        o.insert("errors_by_kind".into(), json!(self.errors));
        Value::Object(o)
    }
}

/// Runs the server against `database_url` and measures both endpoints.
pub async fn run(database_url: &str, org_key: &str, s: &Settings) -> anyhow::Result<Value> {
    // LEDGERLINE_API_RATE_LIMIT was raised in main() before any thread ran;
    // the bench database replaces DATABASE_URL's.
    let mut config = Config::from_env()?;
    config.database_url = database_url.to_owned();
    let pool_size = config.db_pool_size;
    let rate_limit = config.api_rate_limit_per_minute;
    let window = config.api_rate_limit_window_secs;
    let ctx = AppContext::new(config)?;
    let pipeline = Arc::new(Pipeline::new(ctx, Serve::All));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ledgerline::server::serve(listener, pipeline, async {
        let _ = stop_rx.await;
    }));

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(s.concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);

    let bearer = format!("Bearer {org_key}");
    let base = format!("http://{addr}");
    let mut phases = Vec::new();
    for (label, path, auth) in [
        ("health", "/health", None),
        ("me", "/api/me", Some(bearer.as_str())),
    ] {
        let uri: hyper::Uri = format!("{base}{path}").parse()?;
        if !s.warmup.is_zero() {
            eprintln!("throughput: warming up GET {path} for {:?}", s.warmup);
            drive(&client, &uri, auth, s, s.warmup).await;
        }
        eprintln!(
            "throughput: GET {path} at concurrency {} for {:?}",
            s.concurrency, s.duration
        );
        let phase = drive(&client, &uri, auth, s, s.duration).await;
        eprintln!(
            "throughput: GET {path}: {:.0} req/s, {} errors",
            phase.rps(),
            phase.error_count()
        );
        phases.push((label, path, auth.map_or("none", |_| "org key"), phase));
    }

    drop(client);
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(15), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("warning: server stopped with an error: {e}"),
        Ok(Err(e)) => eprintln!("warning: server task failed: {e}"),
        Err(_) => eprintln!("warning: server did not stop within 15 s"),
    }

    let mut endpoints = Map::new();
    for (label, path, auth, phase) in &phases {
        endpoints.insert((*label).into(), phase.to_json(path, auth));
    }
    let health = &phases[0].3;
    let me = &phases[1].3;
    let p = |ph: &Phase, q: fn(&crate::stats::Summary) -> f64| {
        summarize(ph.latencies_ms.clone()).map_or(f64::NAN, |s| q(&s))
    };
    Ok(json!({
        "server": "ledgerline::server::serve with Pipeline::new(ctx, Serve::All), in this process",
        "client": "hyper-util legacy client, HTTP/1.1 keep-alive, TCP_NODELAY, 127.0.0.1",
        "concurrency": s.concurrency,
        "duration_s": s.duration.as_secs_f64(),
        "warmup_s": s.warmup.as_secs_f64(),
        "max_requests_per_phase": s.max_requests,
        "request_timeout_s": s.request_timeout.as_secs_f64(),
        "db_pool_size": pool_size,
        "api_rate_limit_per_window": rate_limit,
        "api_rate_limit_window_s": window,
        "logging": "no tracing subscriber installed in the bench process, so request logs cost nothing",
        "endpoints": endpoints,
        "me_over_health": {
            "requests_per_s": ratio(me.rps(), health.rps()),
            "p50": ratio(p(me, |s| s.median), p(health, |s| s.median)),
            "p99": ratio(p(me, |s| s.p99), p(health, |s| s.p99)),
        },
    }))
}

/// `concurrency` workers, each sending one request at a time on its own
/// keep-alive connection, until `duration` has passed or the phase has sent
/// `max_requests`.
async fn drive(
    client: &HttpClient,
    uri: &hyper::Uri,
    auth: Option<&str>,
    s: &Settings,
    duration: Duration,
) -> Phase {
    let (concurrency, request_timeout) = (s.concurrency.max(1), s.request_timeout);
    let started = Instant::now();
    let deadline = started + duration;
    let per_worker = s.max_requests.div_ceil(concurrency as u64);
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = client.clone();
        let uri = uri.clone();
        let auth = auth.map(str::to_owned);
        workers.push(tokio::spawn(async move {
            let mut tally = WorkerTally::default();
            let mut sent = 0u64;
            while sent < per_worker && Instant::now() < deadline {
                sent += 1;
                let mut req = hyper::Request::get(uri.clone());
                if let Some(a) = &auth {
                    req = req.header("authorization", a.as_str());
                }
                let req = req.body(Empty::new()).expect("a valid request");
                let t = Instant::now();
                let result = tokio::time::timeout(request_timeout, async {
                    let resp = client.request(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    anyhow::Ok(status)
                })
                .await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let kind = match result {
                    Ok(Ok(status)) if status.is_success() => {
                        tally.latencies_ms.push(ms);
                        continue;
                    }
                    Ok(Ok(status)) => format!("status_{}", status.as_u16()),
                    Ok(Err(_)) => "transport".to_owned(),
                    Err(_) => "timeout".to_owned(),
                };
                *tally.errors.entry(kind).or_default() += 1;
            }
            tally
        }));
    }
    let mut phase = Phase {
        requests_ok: 0,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::new(),
        errors: BTreeMap::new(),
    };
    for w in workers {
        match w.await {
            Ok(t) => {
                phase.latencies_ms.extend(t.latencies_ms);
                for (k, n) in t.errors {
                    *phase.errors.entry(k).or_default() += n;
                }
            }
            Err(e) => {
                *phase
                    .errors
                    .entry(format!("worker_failed: {e}"))
                    .or_default() += 1
            }
        }
    }
    phase.elapsed = started.elapsed();
    phase.requests_ok = phase.latencies_ms.len() as u64;
    phase
}
