//! Message delivery figures (issue 4):
//!
//! 1. The worker delivering to a local HTTP receiver (messages/s), against
//!    raw signed POSTs of the same payloads to the same receiver from this
//!    process, at the same concurrency, in the same run. Target ≥ 0.5×.
//! 2. `POST /v1/messages` at concurrency 32 on the local server against
//!    `GET /health`, in the same run: requests/s, p50, p99.

use crate::stats::{ratio, round3, summarize};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ledgerline::accounts::{self, Actor, NewApiKey, NewOrg};
use ledgerline::config::Config;
use ledgerline::context::AppContext;
use ledgerline::error::ApiError;
use ledgerline::http::pipeline::{Pipeline, Serve};
use ledgerline::messages::delivery::{self, Delivery, Provider, WebhookProvider};
use ledgerline::messages::projects::{self, LimitsPatch, NewProject};
use ledgerline::messages::store::{self, NewMessage};
use ledgerline::messages::webhook::SigningSecret;
use ledgerline::messages::worker::MessageWorker;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Settings {
    /// Messages per delivery phase (worker, and raw POSTs).
    pub messages: usize,
    /// The worker's batch size (= its concurrency), and the raw POSTs'
    /// concurrency.
    pub batch_size: usize,
    /// HTTP phases: requests in flight, duration, warm-up.
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// A second delivery comparison against a receiver that takes this long
    /// to answer, as real endpoints do (0: skip it).
    pub receiver_latency: Duration,
}

/// A receiver that answers 204 after `latency` and counts what it got.
struct Receiver {
    url: String,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receiver(latency: Duration) -> anyhow::Result<Receiver> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks", listener.local_addr()?);
    let count = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn({
        let count = count.clone();
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let count = count.clone();
                            async move {
                                let _ = req.into_body().collect().await;
                                if !latency.is_zero() {
                                    tokio::time::sleep(latency).await;
                                }
                                count.fetch_add(1, Ordering::Relaxed);
                                let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    });
    Ok(Receiver { url, count, task })
}

struct Setup {
    ctx: Arc<AppContext>,
    project_id: uuid::Uuid,
    project_key: String,
    secret: SigningSecret,
}

/// An organisation, a project delivering to `endpoint` with limits out of
/// the way, and a project key.
async fn setup(database_url: &str, endpoint: &str, batch_size: usize) -> anyhow::Result<Setup> {
    let mut config = Config::from_env()?;
    config.database_url = database_url.to_owned();
    config.messages.allow_insecure_endpoints = true;
    config.messages.worker_batch_size = batch_size;
    let ctx = AppContext::new(config)?;
    let actor = Actor {
        key_id: None,
        request_id: "bench".into(),
        at: chrono::Utc::now(),
    };
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let (org, _) = accounts::create_org(
        &tx,
        &NewOrg {
            name: "Bench messages".into(),
            plan_tier: None,
        },
        &actor,
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    let (created, _) = projects::create_project(
        &tx,
        &NewProject {
            org_id: org.id,
            name: "bench".into(),
            endpoint_url: endpoint.into(),
            tier_id: Some("scale".into()),
        },
        true,
        &actor,
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    let project_id = created.project.id;
    projects::set_limits(
        &tx,
        project_id,
        &LimitsPatch {
            messages_per_day: Some(i32::MAX as i64),
            burst_per_minute: Some(i32::MAX as i64),
            max_payload_bytes: None,
        },
        &actor,
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    let (key, _) = accounts::create_org_key(
        &tx,
        org.id,
        &NewApiKey {
            name: "bench project key".into(),
            scope: Some("project".into()),
            user_id: None,
            project_id: Some(project_id),
        },
        &actor,
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    tx.commit().await?;
    ledgerline::ledger::events::flush(&**client)
        .await
        .map_err(ApiError::into_anyhow)?;
    Ok(Setup {
        ctx,
        project_id,
        project_key: key.key,
        secret: created.signing_secret,
    })
}

fn sample_message(i: usize) -> NewMessage {
    serde_json::from_value(json!({
        "recipient": format!("user{i}@example.com"),
        "event_type": "bench.message",
        "body": {"n": i, "text": "hello from the bench"},
        "metadata": {"run": "bench"},
    }))
    .expect("a valid message")
}

pub async fn run(database_url: &str, s: &Settings) -> anyhow::Result<Value> {
    let rx = receiver(Duration::ZERO).await?;
    let setup = setup(database_url, &rx.url, s.batch_size).await?;
    let delivery = delivery_phase(&setup, &rx, s, s.messages).await?;
    let slow = if s.receiver_latency.is_zero() {
        json!({"skipped": true})
    } else {
        // The same comparison against a receiver with a realistic answer
        // time (its own project, so the endpoint differs).
        let rx = receiver(s.receiver_latency).await?;
        let setup = setup_project_only(&setup, &rx.url).await?;
        let n = s.messages.min(1000);
        let mut v = delivery_phase(&setup, &rx, s, n).await?;
        v["receiver"] = json!(format!(
            "as above, answering 204 after {} ms",
            s.receiver_latency.as_millis()
        ));
        v
    };
    let http = http_phase(&setup, s).await?;
    Ok(json!({
        "delivery": delivery,
        "delivery_slow_receiver": slow,
        "post_messages_vs_health": http,
    }))
}

/// Another project (same organisation) delivering to `endpoint`.
async fn setup_project_only(base: &Setup, endpoint: &str) -> anyhow::Result<Setup> {
    let actor = Actor {
        key_id: None,
        request_id: "bench".into(),
        at: chrono::Utc::now(),
    };
    let ctx = base.ctx.clone();
    let mut client = ctx.pool.get().await?;
    let org_id = projects::get_project(&**client, base.project_id)
        .await
        .map_err(ApiError::into_anyhow)?
        .org_id;
    let tx = client.transaction().await?;
    let (created, _) = projects::create_project(
        &tx,
        &NewProject {
            org_id,
            name: "bench slow receiver".into(),
            endpoint_url: endpoint.into(),
            tier_id: Some("scale".into()),
        },
        true,
        &actor,
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    tx.commit().await?;
    ledgerline::ledger::events::flush(&**client)
        .await
        .map_err(ApiError::into_anyhow)?;
    Ok(Setup {
        ctx: ctx.clone(),
        project_id: created.project.id,
        project_key: base.project_key.clone(),
        secret: created.signing_secret,
    })
}

/// Raw signed POSTs, then the worker, each over `s.messages` messages.
async fn delivery_phase(
    setup: &Setup,
    rx: &Receiver,
    s: &Settings,
    messages: usize,
) -> anyhow::Result<Value> {
    let ctx = &setup.ctx;
    let n = messages.max(1);
    let concurrency = s.batch_size.max(1);
    let actor = Actor {
        key_id: None,
        request_id: "bench".into(),
        at: chrono::Utc::now(),
    };

    // Raw: what one process can push through the same client settings,
    // signing each request, at the worker's concurrency.
    let provider = Arc::new(WebhookProvider::new(ctx.config.messages.delivery_timeout)?);
    let raw = |count: usize| {
        let clock = ctx.clock.clone();
        let provider = provider.clone();
        let url = rx.url.clone();
        let secret = setup.secret.clone();
        async move {
            let started = Instant::now();
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (provider, url, secret, next, clock) = (
                    provider.clone(),
                    url.clone(),
                    secret.clone(),
                    next.clone(),
                    clock.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut failed = 0u64;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= count {
                            break;
                        }
                        let id = uuid::Uuid::new_v4();
                        let m = sample_message(i);
                        let body = delivery::payload(
                            id,
                            "bench.message",
                            clock.now(),
                            m.recipient.as_deref().unwrap_or(""),
                            &m.body,
                            &json!({"run": "bench"}),
                        );
                        let webhook_id = id.to_string();
                        let ts = clock.now().timestamp();
                        let sig = secret.sign(&webhook_id, ts, &body);
                        let r = provider
                            .deliver(&Delivery {
                                url: &url,
                                webhook_id: &webhook_id,
                                timestamp: ts,
                                signature: &sig,
                                body: &body,
                            })
                            .await;
                        if !r.status.is_some_and(|c| (200..300).contains(&c)) {
                            failed += 1;
                        }
                    }
                    failed
                }));
            }
            let mut failed = 0;
            for t in tasks {
                failed += t.await.unwrap_or(1);
            }
            (started.elapsed(), failed)
        }
    };
    eprintln!("messages: warming up raw signed POSTs");
    raw(200.min(n)).await;
    eprintln!("messages: {n} raw signed POSTs at concurrency {concurrency}");
    let (raw_elapsed, raw_failed) = raw(n).await;
    let raw_rate = n as f64 / raw_elapsed.as_secs_f64().max(1e-9);
    eprintln!("messages: raw {raw_rate:.0}/s");

    // The worker: messages accepted first (not timed here), then drained.
    let worker = Arc::new(MessageWorker::new(
        ctx.clone(),
        ctx.message_queue.clone(),
        Arc::new(WebhookProvider::new(ctx.config.messages.delivery_timeout)?),
        "bench_worker",
    ));
    let drain = |count: usize| {
        let worker = worker.clone();
        let ctx = ctx.clone();
        let actor = actor.clone();
        let project = setup.project_id;
        async move {
            let accept_started = Instant::now();
            for i in 0..count {
                store::send_message(&ctx, project, &sample_message(i), None, &actor)
                    .await
                    .map_err(ApiError::into_anyhow)?;
            }
            let accept_elapsed = accept_started.elapsed();
            let before = delivered(&ctx).await?;
            let started = Instant::now();
            let deadline = started + Duration::from_secs(600);
            loop {
                let t = worker.work_once().await?;
                if t.received == 0 && delivered(&ctx).await? >= before + count as i64 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the worker did not drain in 10 minutes"
                );
            }
            anyhow::Ok((accept_elapsed, started.elapsed()))
        }
    };
    eprintln!("messages: warming up the worker");
    drain(200.min(n)).await?;
    eprintln!("messages: accepting {n} messages, then draining them with the worker (batch {concurrency})");
    let received_before = rx.count.load(Ordering::Relaxed);
    let (accept_elapsed, worker_elapsed) = drain(n).await?;
    let worker_rate = n as f64 / worker_elapsed.as_secs_f64().max(1e-9);
    let receiver_got = rx.count.load(Ordering::Relaxed) - received_before;
    eprintln!("messages: worker {worker_rate:.0}/s");
    let r = worker_rate / raw_rate.max(1e-9);
    Ok(json!({
        "receiver": "hyper HTTP/1.1 server on 127.0.0.1 in this process, answering 204 at once",
        "messages": n,
        "concurrency": concurrency,
        "raw_signed_posts": {
            "method": "WebhookProvider::deliver (the worker's HTTP client) with a fresh payload and Standard Webhooks signature per request, no database",
            "elapsed_s": round3(raw_elapsed.as_secs_f64()),
            "messages_per_s": raw_rate.round(),
            "failed": raw_failed,
        },
        "worker": {
            "method": "MessageWorker::work_once in a loop on the Postgres queue (claim, POST, record the attempt and events, ledger event, delete the queue message), batch size = concurrency",
            "elapsed_s": round3(worker_elapsed.as_secs_f64()),
            "messages_per_s": worker_rate.round(),
            "receiver_requests": receiver_got,
            "accept_note": "the messages were accepted beforehand with store::send_message, one at a time (not in the timing)",
            "accept_per_s_sequential": (n as f64 / accept_elapsed.as_secs_f64().max(1e-9)).round(),
        },
        "worker_over_raw": ratio(worker_rate, raw_rate),
        "target": 0.5,
        "target_met": r >= 0.5,
    }))
}

async fn delivered(ctx: &AppContext) -> anyhow::Result<i64> {
    let c = ctx.pool.get().await?;
    Ok(c.query_one(
        "SELECT count(*) FROM messages WHERE status = 'delivered'",
        &[],
    )
    .await?
    .get(0))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Phase {
    ok: u64,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    errors: u64,
}

impl Phase {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn to_json(&self, request: &str) -> Value {
        let s = summarize(self.latencies_ms.clone());
        json!({
            "request": request,
            "requests_ok": self.ok,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "requests_per_s": self.rps().round(),
            "p50_ms": s.as_ref().map(|s| round3(s.median)),
            "p99_ms": s.as_ref().map(|s| round3(s.p99)),
            "errors": self.errors,
        })
    }
}

/// `POST /v1/messages` and `GET /health` on the real server in-process.
async fn http_phase(setup: &Setup, s: &Settings) -> anyhow::Result<Value> {
    let pipeline = Arc::new(Pipeline::new(setup.ctx.clone(), Serve::All));
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
        .build(connector);
    let base = format!("http://{addr}");
    let bearer = format!("Bearer {}", setup.project_key);
    let body = Bytes::from(serde_json::to_vec(&json!({
        "recipient": "ada@example.com",
        "event_type": "bench.message",
        "body": {"text": "hello from the bench", "n": 1},
        "metadata": {"run": "bench"},
    }))?);
    let mut out = Vec::new();
    for (label, post) in [("health", false), ("send_message", true)] {
        let uri: hyper::Uri = if post {
            format!("{base}/v1/messages").parse()?
        } else {
            format!("{base}/health").parse()?
        };
        let go = |d: Duration| {
            drive(
                &client,
                &uri,
                post.then(|| (bearer.clone(), body.clone())),
                s.concurrency,
                d,
            )
        };
        if !s.warmup.is_zero() {
            go(s.warmup).await;
        }
        eprintln!(
            "messages: {} at concurrency {} for {:?}",
            if post {
                "POST /v1/messages"
            } else {
                "GET /health"
            },
            s.concurrency,
            s.duration
        );
        let phase = go(s.duration).await;
        eprintln!(
            "messages: {label}: {:.0} req/s, {} errors",
            phase.rps(),
            phase.errors
        );
        out.push((label, phase));
    }
    drop(client);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    let (health, send) = (&out[0].1, &out[1].1);
    let pct = |ph: &Phase, q: fn(&crate::stats::Summary) -> f64| {
        summarize(ph.latencies_ms.clone()).map_or(f64::NAN, |s| q(&s))
    };
    Ok(json!({
        "server": "ledgerline::server::serve with every route, in this process (no worker running: accepted messages stay queued)",
        "concurrency": s.concurrency,
        "duration_s": s.duration.as_secs_f64(),
        "health": health.to_json("GET /health"),
        "send_message": send.to_json("POST /v1/messages (project key, ~150-byte JSON, no Idempotency-Key)"),
        "send_over_health": {
            "requests_per_s": ratio(send.rps(), health.rps()),
            "p50": ratio(pct(send, |s| s.median), pct(health, |s| s.median)),
            "p99": ratio(pct(send, |s| s.p99), pct(health, |s| s.p99)),
        },
    }))
}

async fn drive(
    client: &HttpClient,
    uri: &hyper::Uri,
    post: Option<(String, Bytes)>,
    concurrency: usize,
    duration: Duration,
) -> Phase {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, uri, post) = (client.clone(), uri.clone(), post.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let req = match &post {
                    Some((auth, body)) => hyper::Request::post(uri.clone())
                        .header("authorization", auth.as_str())
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone())),
                    None => hyper::Request::get(uri.clone()).body(Full::new(Bytes::new())),
                }
                .expect("a valid request");
                let t = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(10), async {
                    let resp = client.request(req).await?;
                    let status = resp.status();
                    resp.into_body().collect().await?;
                    anyhow::Ok(status.is_success())
                })
                .await;
                match ok {
                    Ok(Ok(true)) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut phase = Phase {
        ok: 0,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::new(),
        errors: 0,
    };
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            phase.latencies_ms.extend(lat);
            phase.errors += e;
        } else {
            phase.errors += 1;
        }
    }
    phase.elapsed = started.elapsed();
    phase.ok = phase.latencies_ms.len() as u64;
    phase
}
