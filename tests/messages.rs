//! Message delivery end to end: the real server and a real Postgres, the
//! real worker, and real HTTP receivers on 127.0.0.1 that record what they
//! get and check every signature with an independent implementation of the
//! Standard Webhooks algorithm (itself checked on the published vector).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ledgerline::clock::Clock;
use ledgerline::messages::delivery::{self, Disposition, Step, WebhookProvider};
use ledgerline::messages::webhook::SigningSecret;
use ledgerline::messages::worker::MessageWorker;
use ledgerline::messages::QueueJob;
use ledgerline_tests::{assert_error, LogCapture, TestServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Logs (one capture per test binary: the subscriber is process-global)
// ---------------------------------------------------------------------------

fn logs() -> &'static LogCapture {
    LogCapture::get()
}

fn log_lines() -> Vec<String> {
    logs().lines()
}

// ---------------------------------------------------------------------------
// The Standard Webhooks reference verification, written out independently
// of ledgerline's implementation (HMAC-SHA256 from SHA-256 itself).
// ---------------------------------------------------------------------------

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// As a receiver verifies: `v1,` + base64(HMAC(key, "{id}.{ts}.{body}"))
/// among the space-separated signatures, timestamp within 5 minutes.
fn reference_verify(secret: &str, id: &str, ts: &str, sigs: &str, body: &[u8], now: i64) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| B64.decode(k).ok())
    else {
        return false;
    };
    let Ok(t) = ts.parse::<i64>() else {
        return false;
    };
    if (now - t).abs() > 300 {
        return false;
    }
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = format!("v1,{}", B64.encode(hmac_sha256(&key, &signed)));
    sigs.split(' ').any(|s| s == expected)
}

#[test]
fn the_reference_verifier_accepts_the_published_vector() {
    let (secret, id, ts) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
    );
    let body = br#"{"test": 2432232314}"#;
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert!(reference_verify(secret, id, ts, sig, body, 1614265330));
    assert!(!reference_verify(secret, id, ts, sig, b"{}", 1614265330));
    assert!(!reference_verify(
        secret,
        id,
        ts,
        sig,
        body,
        1614265330 + 301
    ));
    // And ledgerline's signer agrees with it on the vector.
    assert_eq!(
        SigningSecret::parse(secret)
            .unwrap()
            .sign(id, 1614265330, body),
        sig
    );
}

// ---------------------------------------------------------------------------
// A real HTTP receiver
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// Sleep, then 200.
    Sleep(Duration),
}

#[derive(Clone, Debug)]
struct Received {
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// `plan(n)` answers the n-th request (0-based).
    async fn start(plan: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/ledgerline", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let plan = Arc::new(plan);
        let task = tokio::spawn({
            let got = got.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (got, plan) = (got.clone(), plan.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<Incoming>| {
                            let (got, plan) = (got.clone(), plan.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let n = {
                                    let mut g = got.lock().unwrap();
                                    g.push(Received {
                                        headers: parts.headers,
                                        body,
                                    });
                                    g.len() - 1
                                };
                                let status = match plan(n) {
                                    Answer::Status(s) => s,
                                    Answer::Sleep(d) => {
                                        tokio::time::sleep(d).await;
                                        200
                                    }
                                };
                                let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                                    b"{\"ok\":true}",
                                )));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        });
        Receiver { url, got, task }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut ledgerline::config::Config)) -> TestServer {
    logs();
    TestServer::start_with(|c| {
        c.messages.allow_insecure_endpoints = true;
        c.messages.retry_base = Duration::from_millis(20);
        c.messages.worker_poll = Duration::from_millis(100);
        tweak(c);
    })
    .await
}

struct Project {
    id: String,
    key: String,
    secret: String,
}

async fn create_project(s: &TestServer, endpoint: &str) -> Project {
    create_project_in(s, &s.seed.org_id, endpoint).await
}

async fn create_project_in(s: &TestServer, org_id: &str, endpoint: &str) -> Project {
    let r = s
        .post(
            "/admin/projects",
            &s.seed.operator_key,
            &json!({"org_id": org_id, "name": "Receiver test", "endpoint_url": endpoint}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let p: Value = r.json().await.unwrap();
    let id = p["id"].as_str().unwrap().to_string();
    let key: Value = s
        .post(
            &format!("/admin/orgs/{org_id}/api-keys"),
            &s.seed.operator_key,
            &json!({"name": "project key", "scope": "project", "project_id": id}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Project {
        id,
        key: key["key"].as_str().unwrap().to_string(),
        secret: p["signing_secret"].as_str().unwrap().to_string(),
    }
}

async fn send(s: &TestServer, key: &str, body: Value) -> reqwest::Response {
    s.post("/v1/messages", key, &body).send().await.unwrap()
}

async fn send_ok(s: &TestServer, p: &Project) -> Uuid {
    let r = send(
        s,
        &p.key,
        json!({"recipient": "ada@example.com", "event_type": "user.welcome",
                "body": {"name": "Ada", "n": 1}, "metadata": {"campaign": "c1"}}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "queued");
    Uuid::parse_str(v["id"].as_str().unwrap()).unwrap()
}

fn worker(s: &TestServer) -> Arc<MessageWorker> {
    let provider = Arc::new(WebhookProvider::new(s.ctx.config.messages.delivery_timeout).unwrap());
    Arc::new(MessageWorker::new(
        s.ctx.clone(),
        s.ctx.message_queue.clone(),
        provider,
        "worker_message",
    ))
}

async fn status(s: &TestServer, id: Uuid) -> String {
    let c = s.db.pool.get().await.unwrap();
    c.query_one("SELECT status FROM messages WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Runs the worker until the message is delivered or failed.
async fn run_until_final(s: &TestServer, w: &Arc<MessageWorker>, id: Uuid) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        w.work_once().await.unwrap();
        let st = status(s, id).await;
        if st == "delivered" || st == "failed" {
            return st;
        }
        assert!(Instant::now() < deadline, "message {id} still {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn events_of(s: &TestServer, key: &str, id: Uuid) -> Vec<Value> {
    let v: Value = s
        .get(&format!("/v1/messages/{id}/events"), Some(key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().unwrap().clone()
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

/// (attempt, status code, duration ms, error) of each recorded attempt.
async fn attempts(s: &TestServer, id: Uuid) -> Vec<(i32, Option<i32>, i32, Option<String>)> {
    let c = s.db.pool.get().await.unwrap();
    c.query(
        "SELECT attempt, status_code, duration_ms, error FROM delivery_attempts
          WHERE message_id = $1 ORDER BY attempt",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn queue_depth(s: &TestServer) -> i64 {
    let c = s.db.pool.get().await.unwrap();
    c.query_one(
        "SELECT count(*) FROM local_queue_messages WHERE queue_name = 'messages'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

fn check_signatures(s: &TestServer, p: &Project, got: &[Received]) {
    let now = s.clock.now().timestamp();
    let ours = SigningSecret::parse(&p.secret).unwrap();
    for r in got {
        let (id, ts, sig) = (
            r.header("webhook-id"),
            r.header("webhook-timestamp"),
            r.header("webhook-signature"),
        );
        assert!(
            reference_verify(&p.secret, id, ts, sig, &r.body, now),
            "signature of {id} verifies with the reference algorithm"
        );
        assert_eq!(ours.verify(id, ts, sig, &r.body, now), Ok(()));
        assert_eq!(r.header("content-type"), "application/json");
    }
}

fn operator_key_id(s: &TestServer) -> Uuid {
    let parts: Vec<&str> = s.seed.operator_key.split('_').collect();
    Uuid::try_parse(parts[2]).unwrap()
}

// ---------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_signed_delivery_reaches_a_real_receiver() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Status(204)).await;
    let p = create_project(&s, &rx.url).await;
    let id = send_ok(&s, &p).await;
    let shown: Value = s
        .get(&format!("/v1/messages/{id}"), Some(&p.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["body"], json!({"name": "Ada", "n": 1}));

    let w = worker(&s);
    assert_eq!(run_until_final(&s, &w, id).await, "delivered");
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    check_signatures(&s, &p, &got);
    assert_eq!(got[0].header("webhook-id"), id.to_string());
    let payload: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(payload["type"], "user.welcome");
    assert_eq!(payload["data"]["id"], id.to_string());
    assert_eq!(payload["data"]["recipient"], "ada@example.com");
    assert_eq!(payload["data"]["body"], json!({"name": "Ada", "n": 1}));
    assert_eq!(payload["data"]["metadata"], json!({"campaign": "c1"}));
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));

    assert_eq!(
        types(&events_of(&s, &p.key, id).await),
        ["message.queued", "message.attempted", "message.delivered"]
    );
    let a = attempts(&s, id).await;
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].0, a[0].1, &a[0].3), (1, Some(204), &None));
    // The lifecycle is in the organisation's ledger too.
    let c = s.db.pool.get().await.unwrap();
    let ledger: Vec<String> = c
        .query(
            "SELECT event_type FROM ledger_events WHERE subject = $1 ORDER BY id",
            &[&format!("message:{id}")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ledger, ["message.queued", "message.delivered"]);
    // Nothing left on the queue, and the secret never reaches the API.
    assert_eq!(queue_depth(&s).await, 0);
    assert!(!shown.to_string().contains(&p.secret[6..]));
}

#[tokio::test]
async fn one_batch_across_two_organisations_records_every_outcome_in_its_own_ledger() {
    use ledgerline::ledger::events::{list_events, verify_chain, ChainStatus};
    let s = server().await;
    let ok = Receiver::start(|_| Answer::Status(204)).await;
    let retry = Receiver::start(|n| Answer::Status(if n == 0 { 503 } else { 204 })).await;
    let bad = Receiver::start(|_| Answer::Status(400)).await;
    let first = create_project(&s, &ok.url).await;
    let (other_org, _, _) = s.new_org("Second org").await;
    let rejecting = create_project_in(&s, &other_org, &bad.url).await;
    let flaky = create_project(&s, &retry.url).await;
    // Interleaved, so the batch mixes organisations and outcomes.
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push((send_ok(&s, &first).await, "delivered"));
        sent.push((send_ok(&s, &rejecting).await, "failed"));
    }
    let retried = send_ok(&s, &flaky).await;

    let w = worker(&s);
    let tally = w.work_once().await.unwrap();
    assert_eq!(tally.received, 7, "{tally:?}");
    assert_eq!(
        (tally.delivered, tally.failed, tally.retried),
        (3, 3, 1),
        "{tally:?}"
    );
    for (id, want) in &sent {
        assert_eq!(status(&s, *id).await, *want);
        let key = if *want == "delivered" {
            &first.key
        } else {
            &rejecting.key
        };
        let outcome = format!("message.{want}");
        assert_eq!(
            types(&events_of(&s, key, *id).await),
            ["message.queued", "message.attempted", outcome.as_str()]
        );
    }
    assert_eq!(status(&s, retried).await, "queued");
    assert_eq!(
        types(&events_of(&s, &flaky.key, retried).await),
        [
            "message.queued",
            "message.attempted",
            "message.retry_scheduled"
        ]
    );
    assert_eq!(run_until_final(&s, &w, retried).await, "delivered");

    // Each organisation's chain is whole and holds its own messages' events.
    let c = s.db.pool.get().await.unwrap();
    let seed_org = Uuid::parse_str(&s.seed.org_id).unwrap();
    let other_org = Uuid::parse_str(&other_org).unwrap();
    for (org, want) in [(seed_org, "delivered"), (other_org, "failed")] {
        let chain = list_events(&**c, org, 0, 1000).await.unwrap();
        assert!(
            matches!(verify_chain(chain.iter()), ChainStatus::Intact { events, .. }
                if events == chain.len() as u64),
            "{org}"
        );
        let outcome = format!("message.{want}");
        for (id, _) in sent.iter().filter(|(_, o)| *o == want) {
            let subject = format!("message:{id}");
            let kinds: Vec<&str> = chain
                .iter()
                .filter(|e| e.subject == subject)
                .map(|e| e.event_type.as_str())
                .collect();
            assert_eq!(kinds, ["message.queued", outcome.as_str()]);
        }
    }
}

#[tokio::test]
async fn a_receiver_that_sleeps_15_s_is_recorded_as_a_timeout_after_about_10_s() {
    let s = server().await;
    let rx = Receiver::start(|n| {
        if n == 0 {
            Answer::Sleep(Duration::from_secs(15))
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let p = create_project(&s, &rx.url).await;
    let id = send_ok(&s, &p).await;
    let w = worker(&s);
    let started = Instant::now();
    let tally = w.work_once().await.unwrap();
    let took = started.elapsed();
    assert_eq!(tally.retried, 1, "{tally:?}");
    assert!(
        took >= Duration::from_millis(9500) && took < Duration::from_secs(12),
        "{took:?}"
    );
    let a = attempts(&s, id).await;
    assert_eq!(a.len(), 1);
    let (attempt, code, ms, error) = &a[0];
    assert_eq!((*attempt, *code), (1, None));
    assert!((9500..12000).contains(ms), "recorded duration {ms} ms");
    assert!(error.as_deref().unwrap().contains("timeout"), "{error:?}");
    // A timeout is retried: the next attempt delivers, with the same id.
    assert_eq!(run_until_final(&s, &w, id).await, "delivered");
    let got = rx.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    check_signatures(&s, &p, &got);
}

#[tokio::test]
async fn a_503_then_200_is_delivered_after_one_retry() {
    let s = server().await;
    let rx = Receiver::start(|n| Answer::Status(if n == 0 { 503 } else { 200 })).await;
    let p = create_project(&s, &rx.url).await;
    let id = send_ok(&s, &p).await;
    let w = worker(&s);
    assert_eq!(run_until_final(&s, &w, id).await, "delivered");
    let got = rx.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), id.to_string());
    assert_eq!(got[1].header("webhook-id"), id.to_string());
    check_signatures(&s, &p, &got);
    let a = attempts(&s, id).await;
    assert_eq!(
        a.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
        [(1, Some(503)), (2, Some(200))]
    );
    assert_eq!(
        types(&events_of(&s, &p.key, id).await),
        [
            "message.queued",
            "message.attempted",
            "message.retry_scheduled",
            "message.attempted",
            "message.delivered"
        ]
    );
    let m: Value = s
        .get(&format!("/v1/messages/{id}"), Some(&p.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["attempts"], 2);
    assert!(m["finished_at"].is_string());
}

#[tokio::test]
async fn a_400_fails_without_a_retry() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Status(400)).await;
    let p = create_project(&s, &rx.url).await;
    let id = send_ok(&s, &p).await;
    let w = worker(&s);
    assert_eq!(run_until_final(&s, &w, id).await, "failed");
    // Nothing more happens, however long the worker runs.
    for _ in 0..5 {
        w.work_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(rx.count(), 1);
    check_signatures(&s, &p, &rx.requests());
    let a = attempts(&s, id).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1, Some(400));
    let m: Value = s
        .get(&format!("/v1/messages/{id}"), Some(&p.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["status"], "failed");
    assert!(m["last_error"].as_str().unwrap().contains("400"));
    assert_eq!(
        types(&events_of(&s, &p.key, id).await),
        ["message.queued", "message.attempted", "message.failed"]
    );
    // A 429 or 408, unlike other 4xx, is worth another try.
    assert_eq!(
        ledgerline::messages::retry::classify(Some(429)),
        ledgerline::messages::retry::Outcome::Retry
    );
}

// ---------------------------------------------------------------------------
// Suspension
// ---------------------------------------------------------------------------

#[tokio::test]
async fn suspension_is_enforced_in_the_api_and_the_worker_and_activation_delivers_once() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Status(200)).await;
    let p = create_project(&s, &rx.url).await;
    let op = s.seed.operator_key.clone();
    // Queued before the suspension, not delivered yet.
    let waiting = send_ok(&s, &p).await;

    let r = s
        .post(
            &format!("/admin/projects/{}/suspend", p.id),
            &op,
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "suspended");
    assert_eq!(body["previous_status"], "active");

    // The API refuses and stores nothing, with or without an idempotency key.
    for idem in [None, Some("while-suspended")] {
        let mut req = s.post(
            "/v1/messages",
            &p.key,
            &json!({"recipient": "x", "body": {"a": 1}}),
        );
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        assert_error(req.send().await.unwrap(), 403, "project_suspended").await;
    }
    assert_eq!(s.count("messages").await, 1);
    assert_eq!(s.count("idempotency_records").await, 0);

    // The worker skips the waiting message: still queued, not failed, no
    // request, a message.skipped event, and the queue message is gone.
    let w = worker(&s);
    let tally = w.work_once().await.unwrap();
    assert_eq!((tally.received, tally.skipped), (1, 1), "{tally:?}");
    assert_eq!(status(&s, waiting).await, "queued");
    assert_eq!(rx.count(), 0);
    let ev = events_of(&s, &p.key, waiting).await;
    assert_eq!(types(&ev), ["message.queued", "message.skipped"]);
    assert_eq!(ev[1]["details"]["reason"], "Project suspended");
    assert_eq!(queue_depth(&s).await, 0);
    // The sweep leaves a suspended project's messages alone.
    assert_eq!(delivery::sweep(&s.ctx, Duration::ZERO).await.unwrap(), 0);

    // Activation queues it again; it is delivered exactly once.
    let r = s
        .post(
            &format!("/admin/projects/{}/activate", p.id),
            &op,
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "active");
    assert_eq!(body["requeued_messages"], 1);
    assert_eq!(run_until_final(&s, &w, waiting).await, "delivered");
    for _ in 0..3 {
        w.work_once().await.unwrap();
    }
    assert_eq!(delivery::sweep(&s.ctx, Duration::ZERO).await.unwrap(), 0);
    assert_eq!(rx.count(), 1);
    check_signatures(&s, &p, &rx.requests());
    assert_eq!(
        types(&events_of(&s, &p.key, waiting).await),
        [
            "message.queued",
            "message.skipped",
            "message.requeued",
            "message.attempted",
            "message.delivered"
        ]
    );
    // And new messages are accepted again.
    send_ok(&s, &p).await;
}

// ---------------------------------------------------------------------------
// At most one send per message
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_same_queue_message_twice_or_two_racing_workers_reach_the_receiver_once() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Sleep(Duration::from_millis(300))).await;
    let p = create_project(&s, &rx.url).await;

    // The same queue message delivered twice (as SQS may), in one batch.
    let id = send_ok(&s, &p).await;
    s.ctx
        .message_queue
        .send(&QueueJob { message_id: id }.body(), Duration::ZERO)
        .await
        .unwrap();
    let w = worker(&s);
    let tally = w.work_once().await.unwrap();
    assert_eq!(tally.received, 2);
    assert_eq!(tally.delivered, 1, "{tally:?}");
    assert_eq!(rx.count(), 1);
    // ...and again after it was delivered: acknowledged, nothing sent.
    s.ctx
        .message_queue
        .send(&QueueJob { message_id: id }.body(), Duration::ZERO)
        .await
        .unwrap();
    let tally = w.work_once().await.unwrap();
    assert_eq!((tally.received, tally.idle), (1, 1), "{tally:?}");
    assert_eq!(rx.count(), 1);

    // Two workers racing on one message: one claims and sends; the other
    // sends nothing and looks again after the claim's lease.
    let id2 = send_ok(&s, &p).await;
    let provider = WebhookProvider::new(Duration::from_secs(10)).unwrap();
    let q = s.ctx.message_queue.clone();
    let (ra, rb) = tokio::join!(
        delivery::deliver_message(&s.ctx, &provider, &*q, id2),
        delivery::deliver_message(&s.ctx, &provider, &*q, id2),
    );
    let steps = [ra.unwrap(), rb.unwrap()];
    assert_eq!(
        steps.iter().filter(|r| r.step == Step::Delivered).count(),
        1,
        "{steps:?}"
    );
    let other = steps.iter().find(|r| r.step != Step::Delivered).unwrap();
    assert_eq!(other.step, Step::NotNow);
    assert!(matches!(other.disposition, Disposition::Later(_)));
    assert_eq!(rx.count(), 2);
    let got = rx.requests();
    assert_eq!(got[0].header("webhook-id"), id.to_string());
    assert_eq!(got[1].header("webhook-id"), id2.to_string());
    check_signatures(&s, &p, &got);

    // The Lambda handler with the sample SQS event: the same message twice
    // plus a body that is not a job.
    let id3 = send_ok(&s, &p).await;
    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/worker_message.json"),
    )
    .unwrap()
    .replace("PLACEHOLDER_MESSAGE_ID", &id3.to_string());
    let mut event: Value = serde_json::from_str(&sample).unwrap();
    let first = event["Records"][0].clone();
    let mut dup = first.clone();
    dup["messageId"] = json!("a-redelivery-of-the-first");
    event["Records"].as_array_mut().unwrap().push(dup);
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(event).unwrap();
    let resp = w.handle_sqs_batch(event).await;
    let failed: Vec<String> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert!(failed.contains(&"9b6e0d3a-2c7f-4e15-8d4a-6f1e2a9c5b70".to_string()));
    assert_eq!(status(&s, id3).await, "delivered");
    assert_eq!(
        rx.count(),
        3,
        "one request for the message, whatever the copies"
    );
}

#[tokio::test]
async fn an_idempotent_retry_creates_one_message() {
    let s = server().await;
    let p = create_project(&s, "https://example.com/hooks").await;
    let body = json!({"recipient": "ada@example.com", "body": {"order": 42}});
    let first = s
        .post("/v1/messages", &p.key, &body)
        .header("idempotency-key", "order-42")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = s
        .post("/v1/messages", &p.key, &body)
        .header("idempotency-key", "order-42")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(s.count("messages").await, 1);
    assert_eq!(queue_depth(&s).await, 1);
    let other = s
        .post(
            "/v1/messages",
            &p.key,
            &json!({"recipient": "b", "body": 1}),
        )
        .header("idempotency-key", "order-42")
        .send()
        .await
        .unwrap();
    assert_error(other, 422, "idempotency_key_reused").await;
    assert_eq!(s.count("messages").await, 1);
}

// ---------------------------------------------------------------------------
// The API: validation, limits, isolation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_messages_are_refused_and_store_nothing() {
    let s = server().await;
    let p = create_project(&s, "https://example.com/hooks").await;
    for bad in [
        json!({"body": {"a": 1}}),
        json!({"recipient": "a"}),
        json!({"recipient": "a", "body": null}),
        json!({"recipient": 7, "body": 1}),
        json!({"recipient": "a", "body": 1, "surprise": true}),
        json!({"recipient": "a", "body": 1, "metadata": {"k": 1}}),
        json!({"recipient": "a", "body": 1, "metadata": ["k"]}),
        json!({"recipient": "a", "body": 1, "event_type": "no spaces please"}),
    ] {
        assert_error(send(&s, &p.key, bad).await, 422, "validation_failed").await;
    }
    // Over 100 KB: the pipeline's 413; over the project's (tier's) payload
    // limit (free: 16 KB): 413 message_too_large.
    let huge = json!({"recipient": "a", "body": "x".repeat(101 * 1024)});
    assert_error(send(&s, &p.key, huge).await, 413, "payload_too_large").await;
    let big = json!({"recipient": "a", "body": "x".repeat(20 * 1024)});
    let e = assert_error(send(&s, &p.key, big).await, 413, "message_too_large").await;
    assert!(e["message"].as_str().unwrap().contains("16384"));
    assert_eq!(s.count("messages").await, 0);
    // Keys of the wrong scope.
    assert_error(
        send(&s, &s.seed.org_key, json!({"recipient": "a", "body": 1})).await,
        403,
        "forbidden_scope",
    )
    .await;
    assert_error(
        s.get("/v1/messages", Some(&s.seed.operator_key))
            .send()
            .await
            .unwrap(),
        403,
        "forbidden_scope",
    )
    .await;
    // Bad endpoints for a project: plain http elsewhere than loopback.
    for endpoint in [
        "http://example.com/hook",
        "ftp://example.com/",
        "https://u:p@example.com/",
    ] {
        let r = s
            .post(
                "/admin/projects",
                &s.seed.operator_key,
                &json!({"org_id": s.seed.org_id, "name": "x", "endpoint_url": endpoint}),
            )
            .send()
            .await
            .unwrap();
        assert_error(r, 422, "validation_failed").await;
    }
}

#[tokio::test]
async fn project_limits_give_429_with_rate_limit_headers() {
    let s = server().await;
    let p = create_project(&s, "https://example.com/hooks").await;
    let op = s.seed.operator_key.clone();
    let r = s
        .http
        .put(s.url(&format!("/admin/projects/{}/limits", p.id)))
        .bearer_auth(&op)
        .json(&json!({"burst_per_minute": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let msg = json!({"recipient": "a", "body": 1});
    for remaining in ["1", "0"] {
        let r = send(&s, &p.key, msg.clone()).await;
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
        assert_eq!(r.headers()["x-ratelimit-remaining"], remaining);
    }
    let r = send(&s, &p.key, msg.clone()).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert!(r.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse::<i64>()
        .is_ok());
    // The test clock is at 10:30:00, so the minute has 60 s left.
    assert_eq!(r.headers()["retry-after"], "60");
    let e = assert_error(r, 429, "rate_limited").await;
    assert_eq!(e["retry_strategy"], "after_retry_after");
    assert_eq!(s.count("messages").await, 2);

    // The per-day limit: one more message today, then 429 until midnight.
    let r = s
        .http
        .put(s.url(&format!("/admin/projects/{}/limits", p.id)))
        .bearer_auth(&op)
        .json(&json!({"burst_per_minute": 100, "messages_per_day": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.clock.advance(chrono::Duration::minutes(1));
    let r = send(&s, &p.key, msg.clone()).await;
    assert_eq!(r.status(), 202);
    let r = send(&s, &p.key, msg.clone()).await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    assert_eq!(
        r.headers()["retry-after"],
        (13 * 3600 + 29 * 60).to_string()
    );
    assert_error(r, 429, "rate_limited").await;
    assert_eq!(s.count("messages").await, 3);

    // Applying a tier replaces every limit with the tier's.
    let r: Value = s
        .post(
            &format!("/admin/projects/{}/tier", p.id),
            &op,
            &json!({"tier_id": "growth"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["tier_id"], "growth");
    assert_eq!(
        r["limits"],
        json!({"messages_per_day": 50000, "burst_per_minute": 600, "max_payload_bytes": 65536})
    );
    assert_eq!(r["previous_tier_id"], "free");
    assert_eq!(send(&s, &p.key, msg).await.status(), 202);
    let r = s
        .post(
            &format!("/admin/projects/{}/tier", p.id),
            &op,
            &json!({"tier_id": "gold"}),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "validation_failed").await;
}

#[tokio::test]
async fn a_project_never_sees_another_projects_messages() {
    let s = server().await;
    let a = create_project(&s, "https://a.example.com/hooks").await;
    let b = create_project(&s, "https://b.example.com/hooks").await;
    let mine = send_ok(&s, &a).await;
    let theirs = assert_error(
        s.get(&format!("/v1/messages/{mine}"), Some(&b.key))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let nobody = assert_error(
        s.get(&format!("/v1/messages/{}", Uuid::new_v4()), Some(&b.key))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(theirs["message"], nobody["message"]);
    assert_error(
        s.get(&format!("/v1/messages/{mine}/events"), Some(&b.key))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let list = |key: String| {
        let s = &s;
        async move {
            let v: Value = s
                .get("/v1/messages", Some(&key))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    };
    assert_eq!(list(b.key.clone()).await["data"], json!([]));
    assert_eq!(list(a.key.clone()).await["data"][0]["id"], mine.to_string());
    // B's cursor cannot page into A.
    let v: Value = s
        .get(&format!("/v1/messages?after={mine}"), Some(&b.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"], json!([]));
}

#[tokio::test]
async fn listing_walks_every_message_once_and_filters_by_status() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Status(200)).await;
    let p = create_project(&s, &rx.url).await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(send_ok(&s, &p).await);
    }
    // Deliver just the oldest one.
    let provider = WebhookProvider::new(Duration::from_secs(10)).unwrap();
    delivery::deliver_message(&s.ctx, &provider, &*s.ctx.message_queue, sent[0])
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/messages?limit=2&after={a}"),
            None => "/v1/messages?limit=2".into(),
        };
        let page: Value = s
            .get(&path, Some(&p.key))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for m in page["data"].as_array().unwrap() {
            seen.push(Uuid::parse_str(m["id"].as_str().unwrap()).unwrap());
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = Some(page["next_cursor"].as_str().unwrap().to_string());
    }
    let mut newest_first = sent.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let delivered: Value = s
        .get("/v1/messages?status=delivered", Some(&p.key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(delivered["data"].as_array().unwrap().len(), 1);
    assert_eq!(delivered["data"][0]["id"], sent[0].to_string());
    assert_error(
        s.get("/v1/messages?status=lost", Some(&p.key))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_status",
    )
    .await;
    assert_error(
        s.get("/v1/messages?after=nope", Some(&p.key))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_cursor",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Nothing is lost
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_sweep_finds_lost_queue_messages_and_dead_workers() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Status(200)).await;
    let p = create_project(&s, &rx.url).await;
    let lost = send_ok(&s, &p).await;
    let stuck = send_ok(&s, &p).await;
    let c = s.db.pool.get().await.unwrap();
    // The queue message of `lost` never made it (the send failed after the
    // commit), and `stuck`'s worker died holding the claim.
    c.batch_execute("DELETE FROM local_queue_messages")
        .await
        .unwrap();
    c.execute(
        "UPDATE messages SET enqueued_at = NULL WHERE id = $1",
        &[&lost],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE messages SET status = 'delivering', attempts = 1,
                lease_until = now() - interval '1 second' WHERE id = $1",
        &[&stuck],
    )
    .await
    .unwrap();
    let w = worker(&s);
    assert_eq!(w.work_once().await.unwrap().received, 0);
    assert_eq!(
        delivery::sweep(&s.ctx, Duration::from_secs(300))
            .await
            .unwrap(),
        2
    );
    assert_eq!(run_until_final(&s, &w, lost).await, "delivered");
    assert_eq!(run_until_final(&s, &w, stuck).await, "delivered");
    assert_eq!(rx.count(), 2);
    // Recently queued messages are left to their queue message.
    let fresh = send_ok(&s, &p).await;
    assert_eq!(
        delivery::sweep(&s.ctx, Duration::from_secs(300))
            .await
            .unwrap(),
        0
    );
    assert_eq!(run_until_final(&s, &w, fresh).await, "delivered");
}

// ---------------------------------------------------------------------------
// The operator audit log
// ---------------------------------------------------------------------------

async fn audit_rows(
    s: &TestServer,
    request_id: &str,
) -> Vec<(String, Option<Uuid>, String, Value)> {
    let c = s.db.pool.get().await.unwrap();
    c.query(
        "SELECT action, actor_key_id, target_id, details FROM admin_events WHERE request_id = $1",
        &[&request_id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn every_operator_write_is_audited_exactly_once() {
    let s = server().await;
    let op = s.seed.operator_key.clone();
    let op_id = operator_key_id(&s);
    let mut n = 0;
    let mut call = |method: reqwest::Method, path: String, body: Option<Value>| {
        n += 1;
        let rid = format!("audit-{n}");
        let mut r = s
            .http
            .request(method, s.url(&path))
            .bearer_auth(&op)
            .header("x-request-id", &rid);
        if let Some(b) = body {
            r = r.json(&b);
        }
        (r.send(), rid)
    };
    let mut expect = Vec::new();

    let (f, rid) = call(
        reqwest::Method::POST,
        "/admin/orgs".into(),
        Some(json!({"name": "Audited"})),
    );
    let org: Value = f.await.unwrap().json().await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_string();
    expect.push((rid, "org.created", org_id.clone()));
    let (f, rid) = call(
        reqwest::Method::POST,
        format!("/admin/orgs/{org_id}/plan"),
        Some(json!({"plan_tier": "pro"})),
    );
    assert_eq!(f.await.unwrap().status(), 200);
    expect.push((rid, "org.plan_changed", org_id.clone()));
    let (f, rid) = call(
        reqwest::Method::POST,
        format!("/admin/orgs/{org_id}/users"),
        Some(json!({"email": "a@example.com"})),
    );
    let user: Value = f.await.unwrap().json().await.unwrap();
    expect.push((
        rid,
        "user.created",
        user["id"].as_str().unwrap().to_string(),
    ));
    let (f, rid) = call(
        reqwest::Method::POST,
        "/admin/projects".into(),
        Some(json!({"org_id": org_id, "name": "P", "endpoint_url": "https://example.com/h"})),
    );
    let project: Value = f.await.unwrap().json().await.unwrap();
    let pid = project["id"].as_str().unwrap().to_string();
    expect.push((rid, "project.created", pid.clone()));
    let (f, rid) = call(
        reqwest::Method::POST,
        format!("/admin/orgs/{org_id}/api-keys"),
        Some(json!({"name": "k"})),
    );
    let key: Value = f.await.unwrap().json().await.unwrap();
    let key_id = key["id"].as_str().unwrap().to_string();
    expect.push((rid, "api_key.created", key_id.clone()));
    let (f, rid) = call(
        reqwest::Method::DELETE,
        format!("/admin/api-keys/{key_id}"),
        None,
    );
    assert_eq!(f.await.unwrap().status(), 200);
    expect.push((rid, "api_key.revoked", key_id.clone()));
    let (f, rid) = call(
        reqwest::Method::POST,
        format!("/admin/projects/{pid}/suspend"),
        None,
    );
    assert_eq!(f.await.unwrap().status(), 200);
    expect.push((rid, "project.suspended", pid.clone()));
    let (f, rid) = call(
        reqwest::Method::POST,
        format!("/admin/projects/{pid}/activate"),
        None,
    );
    assert_eq!(f.await.unwrap().status(), 200);
    expect.push((rid, "project.activated", pid.clone()));
    let (f, limits_rid) = call(
        reqwest::Method::PUT,
        format!("/admin/projects/{pid}/limits"),
        Some(json!({"messages_per_day": 10, "max_payload_bytes": 2048})),
    );
    assert_eq!(f.await.unwrap().status(), 200);
    expect.push((limits_rid.clone(), "project.limits.updated", pid.clone()));
    let (f, tier_rid) = call(
        reqwest::Method::POST,
        format!("/admin/projects/{pid}/tier"),
        Some(json!({"tier_id": "scale"})),
    );
    assert_eq!(f.await.unwrap().status(), 200);
    expect.push((tier_rid.clone(), "project.tier.applied", pid.clone()));
    // A rejected write changes nothing and is not audited.
    let (f, bad_rid) = call(
        reqwest::Method::PUT,
        format!("/admin/projects/{pid}/limits"),
        Some(json!({})),
    );
    assert_eq!(f.await.unwrap().status(), 422);

    for (rid, action, target) in &expect {
        let rows = audit_rows(&s, rid).await;
        assert_eq!(rows.len(), 1, "{action}: exactly one audit row");
        let (a, actor, t, _) = &rows[0];
        assert_eq!(
            (a.as_str(), actor, t),
            (*action, &Some(op_id), target),
            "{action}"
        );
    }
    assert!(audit_rows(&s, &bad_rid).await.is_empty());
    assert_eq!(s.count("admin_events").await, expect.len() as i64);

    let limits = &audit_rows(&s, &limits_rid).await[0].3;
    assert_eq!(
        limits["old"],
        json!({"messages_per_day": 1000, "burst_per_minute": 60, "max_payload_bytes": 16384})
    );
    assert_eq!(
        limits["new"],
        json!({"messages_per_day": 10, "burst_per_minute": 60, "max_payload_bytes": 2048})
    );
    let tier = &audit_rows(&s, &tier_rid).await[0].3;
    assert_eq!(tier["tier_id"], "scale");
    assert_eq!(
        tier["limits"],
        json!({"messages_per_day": 1000000, "burst_per_minute": 6000, "max_payload_bytes": 102400})
    );
    assert_eq!(tier["previous_limits"], limits["new"]);
    // Secrets never reach the audit log.
    let all: String = {
        let c = s.db.pool.get().await.unwrap();
        c.query_one(
            "SELECT coalesce(string_agg(details::text, ' '), '') FROM admin_events",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert!(!all.contains("whsec_") && !all.contains(key["key"].as_str().unwrap()));

    // Reading it back: filters and a cursor, newest first.
    let page: Value = s
        .get(
            &format!("/admin/audit-events?target_type=project&target_id={pid}&limit=3"),
            Some(&op),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "project.tier.applied",
            "project.limits.updated",
            "project.activated"
        ]
    );
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["request_id"], tier_rid.as_str());
    assert_eq!(page["data"][0]["actor_key_id"], op_id.to_string());
    let rest: Value = s
        .get(
            &format!(
                "/admin/audit-events?target_type=project&target_id={pid}&after={}",
                page["next_cursor"].as_str().unwrap()
            ),
            Some(&op),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = rest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["project.suspended", "project.created"]);
    assert_eq!(rest["has_more"], false);
    let by_action: Value = s
        .get("/admin/audit-events?action=api_key.revoked", Some(&op))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_action["data"].as_array().unwrap().len(), 1);
    assert_error(
        s.get("/admin/audit-events", Some(&s.seed.org_key))
            .send()
            .await
            .unwrap(),
        403,
        "forbidden_scope",
    )
    .await;
}

#[tokio::test]
async fn a_failing_audit_write_never_fails_the_action_and_is_logged() {
    let s = server().await;
    let p = create_project(&s, "https://example.com/hooks").await;
    {
        let c = s.db.pool.get().await.unwrap();
        c.batch_execute(
            "ALTER TABLE admin_events ADD CONSTRAINT audit_down CHECK (false) NOT VALID",
        )
        .await
        .unwrap();
    }
    let before = s.count("admin_events").await;
    let r = s
        .post(
            &format!("/admin/projects/{}/suspend", p.id),
            &s.seed.operator_key,
            &json!({}),
        )
        .header("x-request-id", "audit-down-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = s.db.pool.get().await.unwrap();
    let st: String = c
        .query_one(
            "SELECT status FROM projects WHERE id = $1::text::uuid",
            &[&p.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "suspended");
    assert_eq!(s.count("admin_events").await, before);
    let line = log_lines()
        .into_iter()
        .find(|l| l.contains("audit write failed") && l.contains("audit-down-1"))
        .expect("the audit failure is logged");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["action"], "project.suspended");
    assert!(v["error_id"].as_str().unwrap().starts_with("err_"));
    assert!(
        v["cause"].as_str().unwrap().contains("audit_down"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// Worker safety
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsafe_worker_settings_are_warned_about_at_start_up() {
    let s = server_with(|c| {
        c.messages.worker_batch_size = 101;
        c.messages.worker_poll = Duration::from_millis(50);
    })
    .await;
    assert_eq!(
        ledgerline::messages::worker::warn_unsafe_settings("unsafe_check", &s.ctx.config.messages),
        2
    );
    let warned: Vec<String> = log_lines()
        .into_iter()
        .filter(|l| l.contains("unsafe worker setting") && l.contains("unsafe_check"))
        .collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned.iter().any(|l| l.contains("BATCH_SIZE=101")));
    assert!(warned.iter().any(|l| l.contains("POLL_MS=50")));
    assert!(warned.iter().all(|l| l.contains("\"WARN\"")));
}

#[tokio::test]
async fn on_shutdown_the_worker_finishes_its_batch_within_5_s() {
    let s = server().await;
    let rx = Receiver::start(|_| Answer::Sleep(Duration::from_secs(2))).await;
    let p = create_project(&s, &rx.url).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker(&s).run(stopped));
    let id = send_ok(&s, &p).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    stop.send(true).unwrap();
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), running)
        .await
        .expect("the worker stops within 5 s")
        .unwrap();
    assert!(asked.elapsed() < Duration::from_millis(5500));
    // The batch in hand was finished, not dropped.
    assert_eq!(status(&s, id).await, "delivered");
    assert_eq!(rx.count(), 1);
}

#[tokio::test]
async fn a_batch_that_runs_over_5_s_is_left_for_redelivery() {
    let s = server_with(|c| c.messages.delivery_timeout = Duration::from_secs(20)).await;
    let rx = Receiver::start(|_| Answer::Sleep(Duration::from_secs(30))).await;
    let p = create_project(&s, &rx.url).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker(&s).run(stopped));
    let id = send_ok(&s, &p).await;
    rx.wait_for(1, Duration::from_secs(10)).await;
    stop.send(true).unwrap();
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(7), running)
        .await
        .expect("the worker gives up on the batch after 5 s")
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_millis(6500),
        "{took:?}"
    );
    // Claimed but unfinished: the lease brings it back (see the sweep test).
    assert_eq!(status(&s, id).await, "delivering");
}
