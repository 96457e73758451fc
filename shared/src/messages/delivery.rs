//! Delivering one message (`deliver_message`), and putting messages back on
//! the queue (`requeue_project` after an activation, `sweep` for anything a
//! lost queue message or a crashed worker left behind).
//!
//! Exactly one worker sends a message at a time: a worker first *claims*
//! it, an atomic `queued → delivering` change with a lease, and only the
//! claimant sends. A redelivered or duplicated queue message finds the
//! message claimed or finished and sends nothing. If a worker dies while
//! delivering, its lease runs out and the sweeper puts the message back.
//!
//! What the receiver gets (the Standard Webhooks format):
//!
//! ```text
//! POST <endpoint_url>
//! content-type: application/json
//! webhook-id: <message id>            (the same on every retry: dedupe on it)
//! webhook-timestamp: <Unix seconds of this attempt>
//! webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">
//!
//! {"type": "<event_type>", "timestamp": "<created_at, RFC 3339>",
//!  "data": {"id": "<message id>", "recipient": "...", "body": <body>, "metadata": {...}}}
//! ```

use crate::context::AppContext;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::ledger::events::{self as ledger, NewEvent};
use crate::messages::retry::{self, classify, Outcome, MAX_ATTEMPTS};
use crate::messages::store::insert_event;
use crate::messages::webhook::SigningSecret;
use crate::messages::QueueJob;
use crate::queue::Queue;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::{join_all, Either};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a claim lasts beyond the delivery timeout before the sweeper
/// may hand the message to another worker.
const LEASE_MARGIN: Duration = Duration::from_secs(50);
/// A queue message arriving this much before `next_attempt_at` (clock skew
/// between the queue and the database) is still taken.
const EARLY_TOLERANCE_SECS: f64 = 1.0;
/// Most of a receiver's answer that is read (and then dropped), so the
/// connection can be reused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Longest error text kept for an attempt.
const MAX_ERROR_CHARS: usize = 500;

/// One HTTP request to a receiver.
pub struct Delivery<'a> {
    pub url: &'a str,
    pub webhook_id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: &'a [u8],
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    /// None: no HTTP answer (timeout, connection failure).
    pub status: Option<u16>,
    pub duration: Duration,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

/// The `Provider` port: how a message leaves.
#[async_trait]
pub trait Provider: Send + Sync {
    async fn deliver(&self, delivery: &Delivery<'_>) -> AttemptResult;
}

/// HTTPS webhook delivery with reqwest (rustls): one time limit over the
/// whole call (connect, send, answer), no redirects followed (a 3xx is a
/// final answer: following it would let an endpoint point us elsewhere).
pub struct WebhookProvider {
    client: reqwest::Client,
    timeout: Duration,
}

impl WebhookProvider {
    pub fn new(timeout: Duration) -> anyhow::Result<WebhookProvider> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Ledgerline-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(WebhookProvider { client, timeout })
    }
}

fn truncate(mut s: String) -> String {
    if s.chars().count() > MAX_ERROR_CHARS {
        s = s.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…";
    }
    s
}

#[async_trait]
impl Provider for WebhookProvider {
    async fn deliver(&self, d: &Delivery<'_>) -> AttemptResult {
        let started = Instant::now();
        let sent = self
            .client
            .post(d.url)
            .header("content-type", "application/json")
            .header("webhook-id", d.webhook_id)
            .header("webhook-timestamp", d.timestamp.to_string())
            .header("webhook-signature", d.signature)
            .body(d.body.to_vec())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // Errors name the URL, which may hold a token: never keep it.
                let error = if e.is_timeout() {
                    format!(
                        "timeout: no response within {} s",
                        self.timeout.as_secs_f64()
                    )
                } else if e.is_connect() {
                    format!("connection failed: {}", source_chain(&e.without_url()))
                } else {
                    format!("request failed: {}", source_chain(&e.without_url()))
                };
                return AttemptResult {
                    status: None,
                    duration: started.elapsed(),
                    error: Some(truncate(error)),
                    retry_after: None,
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(retry::parse_retry_after);
        // Read (a bounded part of) the answer so the connection is reusable;
        // a receiver that stalls here runs into the same time limit.
        let mut read = 0usize;
        let mut body_error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    read += c.len();
                    if read >= MAX_RESPONSE_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    body_error = Some(format!(
                        "timeout: the response body did not finish within {} s",
                        self.timeout.as_secs_f64()
                    ));
                    break;
                }
                Err(_) => break,
            }
        }
        let error = match (body_error, status) {
            (Some(e), _) => Some(e),
            (None, 200..=299) => None,
            (None, s) => Some(format!("HTTP {s}")),
        };
        AttemptResult {
            status: Some(status),
            duration: started.elapsed(),
            error,
            retry_after,
        }
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// What to do with the queue message that asked for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done with it: delete it.
    Ack,
    /// Keep it, invisible for this long, then look again.
    Later(Duration),
}

/// What happened to the message, for logs and the worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Delivered,
    /// Failed for good (rejected, or out of attempts).
    Failed,
    /// An attempt failed; another is scheduled.
    RetryScheduled,
    /// The project is suspended: left queued, not attempted.
    Skipped,
    /// Already delivered or failed, or gone: nothing to do.
    AlreadyDone,
    /// Claimed by another worker, or not due yet.
    NotNow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub step: Step,
    pub disposition: Disposition,
}

impl Report {
    fn ack(step: Step) -> Report {
        Report {
            step,
            disposition: Disposition::Ack,
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn positive_secs(v: Option<f64>) -> Duration {
    Duration::from_secs_f64(
        v.unwrap_or(0.0)
            .clamp(0.0, crate::queue::MAX_DELAY.as_secs_f64()),
    )
}

/// A claimed message: everything needed to send it.
struct Claimed {
    id: Uuid,
    attempt: i32,
    project_id: Uuid,
    org_id: Uuid,
    recipient: String,
    event_type: String,
    body: Value,
    metadata: Value,
    created_at: DateTime<Utc>,
    endpoint_url: Option<String>,
    signing_secret: Option<String>,
}

/// The JSON a receiver gets (see the module documentation).
pub fn payload(
    id: Uuid,
    event_type: &str,
    created_at: DateTime<Utc>,
    recipient: &str,
    body: &Value,
    metadata: &Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": event_type,
        "timestamp": created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {"id": id, "recipient": recipient, "body": body, "metadata": metadata},
    }))
    .unwrap_or_default()
}

/// Delivers message `id` once, if it is this worker's to deliver (see the
/// module documentation), and records the attempt. Errors are the database
/// being unavailable: the queue message should then come back later.
pub async fn deliver_message(
    ctx: &AppContext,
    provider: &dyn Provider,
    queue: &dyn Queue,
    id: Uuid,
) -> ApiResult<Report> {
    let mut db = ctx.db().await?;
    let mut claimed = None;
    // Twice at most: if the claim fails but the message looks claimable a
    // moment later (an activation in between), try once more.
    for _ in 0..2 {
        if let Some(c) = claim(ctx, &db, &[id]).await?.pop() {
            claimed = Some(c);
            break;
        }
        match why_not_claimed(ctx, &mut db, id).await? {
            Some(report) => return Ok(report),
            None => continue,
        }
    }
    let Some(c) = claimed else {
        return Ok(Report {
            step: Step::NotNow,
            disposition: Disposition::Later(Duration::from_secs(1)),
        });
    };
    drop(db);
    match send(ctx, provider, c).await {
        Sent::Posted(p) => Ok(record(ctx, queue, &[&p]).await?.remove(0)),
        Sent::NoEndpoint(c) => no_endpoint(ctx, c).await,
    }
}

/// Delivers the messages of one queue batch: what [`deliver_message`] does
/// for each, with the database work shared. One round trip claims them all
/// (a statement per id, pipelined), they are sent concurrently, and one
/// transaction (one WAL flush) records every attempt. A message the batch
/// claim did not get (a duplicate in the batch, suspended, not due, someone
/// else's) goes the single-message way, which says why. Results are in the
/// order of `ids`.
pub async fn deliver_batch(
    ctx: &AppContext,
    provider: &dyn Provider,
    queue: &dyn Queue,
    ids: &[Uuid],
) -> Vec<ApiResult<Report>> {
    let claimed = match ctx.db().await {
        Ok(db) => claim(ctx, &db, ids).await,
        Err(e) => Err(e),
    };
    let mut claimed: HashMap<Uuid, Claimed> = match claimed {
        Ok(list) => list.into_iter().map(|c| (c.id, c)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "claiming a batch failed; trying its messages one by one");
            HashMap::new()
        }
    };
    // Each id's first occurrence takes its claim; the rest go one by one.
    let work = ids.iter().map(|id| match claimed.remove(id) {
        Some(c) => {
            Either::Left(async move { Ok::<Sent, ApiResult<Report>>(send(ctx, provider, c).await) })
        }
        None => Either::Right(async move { Err(deliver_message(ctx, provider, queue, *id).await) }),
    });
    let outcomes = join_all(work).await;
    let posted: Vec<&Posted> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Sent::Posted(p)) => Some(p),
            _ => None,
        })
        .collect();
    let mut recorded = if posted.is_empty() {
        Ok(Vec::new())
    } else {
        record(ctx, queue, &posted).await
    }
    .map(Vec::into_iter);
    let mut results = Vec::with_capacity(ids.len());
    for o in outcomes {
        results.push(match o {
            Err(single) => single,
            Ok(Sent::NoEndpoint(c)) => no_endpoint(ctx, c).await,
            Ok(Sent::Posted(_)) => match &mut recorded {
                Ok(reports) => Ok(reports.next().expect("one report per recorded attempt")),
                Err(e) => Err(ApiError::unavailable(anyhow::anyhow!(
                    "recording the batch's attempts failed: {e}"
                ))),
            },
        });
    }
    results
}

/// Claims those of `ids` that are this worker's to deliver now (their
/// project active, due, not out of attempts, not under someone else's
/// live lease). The claim commits asynchronously (no WAL flush of its
/// own): losing it in a database crash is the same as this worker dying
/// after claiming, and the message is claimed and delivered again, under
/// the same webhook-id. The attempt's record is flushed later, and that
/// flush covers the claim before it.
async fn claim(
    ctx: &AppContext,
    db: &deadpool_postgres::Client,
    ids: &[Uuid],
) -> ApiResult<Vec<Claimed>> {
    let lease = ctx.config.messages.delivery_timeout + LEASE_MARGIN;
    // One statement per id, all sent at once on this connection (pipelined:
    // one round trip). Each finds its row by primary key; an `id = ANY(..)`
    // form lets the planner scan every queued message instead.
    let (lease_s, max_attempts) = (secs(lease), MAX_ATTEMPTS as i32);
    let claims = ids.iter().map(|id| async move {
        db::query_opt(
            db,
            "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE messages m
                SET status = 'delivering', attempts = m.attempts + 1,
                    lease_until = now() + make_interval(secs => $2), updated_at = now()
               FROM projects p, lazy
              WHERE m.id = $1 AND p.id = m.project_id AND p.status = 'active'
                AND m.attempts < $3
                AND ((m.status = 'queued'
                      AND m.next_attempt_at <= now() + make_interval(secs => $4))
                  OR (m.status = 'delivering' AND m.lease_until < now()))
              RETURNING m.id, m.attempts, m.project_id, m.org_id, m.recipient, m.event_type,
                        m.body, m.metadata, m.created_at, p.endpoint_url, p.signing_secret",
            &[id, &lease_s, &max_attempts, &EARLY_TOLERANCE_SECS],
        )
        .await
    });
    let mut rows = Vec::new();
    for r in join_all(claims).await {
        rows.extend(r?);
    }
    Ok(rows
        .iter()
        .map(|r| Claimed {
            id: r.get(0),
            attempt: r.get(1),
            project_id: r.get(2),
            org_id: r.get(3),
            recipient: r.get(4),
            event_type: r.get(5),
            body: r.get(6),
            metadata: r.get(7),
            created_at: r.get(8),
            endpoint_url: r.get(9),
            signing_secret: r.get(10),
        })
        .collect())
}

/// Explains a failed claim, acting on it where needed. `None`: it looks
/// claimable now (try again).
async fn why_not_claimed(
    ctx: &AppContext,
    db: &mut deadpool_postgres::Client,
    id: Uuid,
) -> ApiResult<Option<Report>> {
    let row = db::query_opt(
        &*db,
        "SELECT m.status, m.attempts, p.status, m.project_id, m.org_id,
                    extract(epoch FROM m.next_attempt_at - now())::float8,
                    extract(epoch FROM m.lease_until - now())::float8
               FROM messages m JOIN projects p ON p.id = m.project_id
              WHERE m.id = $1",
        &[&id],
    )
    .await?;
    let Some(row) = row else {
        tracing::warn!(message_id = %id, "queue message for an unknown message; dropped");
        return Ok(Some(Report::ack(Step::AlreadyDone)));
    };
    let status: String = row.get(0);
    let attempts: i32 = row.get(1);
    let project_status: String = row.get(2);
    let project_id: Uuid = row.get(3);
    let org_id: Uuid = row.get(4);
    let due_in: Option<f64> = row.get(5);
    let lease_left: Option<f64> = row.get(6);
    let lease_live = lease_left.is_some_and(|s| s > 0.0);
    Ok(Some(match status.as_str() {
        "delivered" | "failed" => Report::ack(Step::AlreadyDone),
        "delivering" if lease_live => Report {
            // Someone else is sending it; look again once their lease is
            // over (by then it is normally finished, and this is dropped).
            step: Step::NotNow,
            disposition: Disposition::Later(positive_secs(lease_left) + Duration::from_secs(1)),
        },
        _ if attempts >= MAX_ATTEMPTS as i32 => {
            // Out of attempts (the last claimant died mid-delivery).
            let reason = format!("gave up after {attempts} attempts");
            finish_failed(ctx, db, id, project_id, org_id, &reason, attempts).await?;
            Report::ack(Step::Failed)
        }
        _ if project_status != "active" => {
            // Suspended: leave it queued (not failed), say why, and let the
            // queue message go; activation queues it again.
            if status == "queued" {
                insert_event(
                    &*db,
                    id,
                    project_id,
                    "message.skipped",
                    json!({"reason": "Project suspended"}),
                )
                .await?;
                tracing::info!(message_id = %id, project_id = %project_id,
                    "project suspended: message skipped and left queued");
            }
            Report::ack(Step::Skipped)
        }
        "queued" if due_in.is_some_and(|s| s > EARLY_TOLERANCE_SECS) => Report {
            step: Step::NotNow,
            disposition: Disposition::Later(positive_secs(due_in)),
        },
        _ => return Ok(None),
    }))
}

async fn finish_failed(
    ctx: &AppContext,
    db: &mut deadpool_postgres::Client,
    id: Uuid,
    project_id: Uuid,
    org_id: Uuid,
    reason: &str,
    attempts: i32,
) -> ApiResult<()> {
    let tx = db.transaction().await?;
    let changed = tx
        .execute(
            "UPDATE messages SET status = 'failed', lease_until = NULL, finished_at = now(),
                    updated_at = now(), last_error = $2
              WHERE id = $1 AND status IN ('queued', 'delivering')",
            &[&id, &reason],
        )
        .await?;
    if changed == 0 {
        return Ok(());
    }
    insert_event(
        &tx,
        id,
        project_id,
        "message.failed",
        json!({"reason": reason, "attempts": attempts}),
    )
    .await?;
    let pending = ledger::append(
        &tx,
        org_id,
        &system_event(
            "message.failed",
            id,
            json!({"project_id": project_id, "attempts": attempts, "reason": reason}),
        ),
        ctx.clock.now(),
    )
    .await?;
    tx.commit().await?;
    ledger::settle_committed(db, org_id, pending).await;
    Ok(())
}

fn system_event(event_type: &'static str, id: Uuid, payload: Value) -> NewEvent {
    NewEvent {
        event_type,
        subject: format!("message:{id}"),
        actor: "system:delivery".into(),
        request_id: String::new(),
        payload,
    }
}

/// A claimed message after its HTTP attempt: what to record.
struct Posted {
    id: Uuid,
    project_id: Uuid,
    org_id: Uuid,
    attempt: i32,
    started_at: DateTime<Utc>,
    duration_ms: i32,
    status_code: Option<i32>,
    error: Option<String>,
    outcome: &'static str,
    step: Step,
    delay: Option<Duration>,
    /// `message.attempted`'s details.
    attempted: Value,
    /// The outcome's timeline event and its details.
    outcome_event: &'static str,
    details: Value,
    /// The status the message moves to, and the error kept on it.
    next_status: &'static str,
    last_error: Option<String>,
    /// The ledger event (delivered and failed are lifecycle changes).
    ledger_event: Option<(&'static str, Value)>,
}

enum Sent {
    Posted(Posted),
    /// A project made before endpoints existed: nothing to send to.
    NoEndpoint(Claimed),
}

/// Sends a claimed message once and decides what comes of it.
async fn send(ctx: &AppContext, provider: &dyn Provider, c: Claimed) -> Sent {
    let cfg = &ctx.config.messages;
    let secret = c.signing_secret.as_deref().map(SigningSecret::parse);
    let (url, secret) = match (c.endpoint_url.as_deref(), secret) {
        (Some(url), Some(Ok(secret))) => (url.to_string(), secret),
        _ => return Sent::NoEndpoint(c),
    };
    let id = c.id;
    let body = payload(
        id,
        &c.event_type,
        c.created_at,
        &c.recipient,
        &c.body,
        &c.metadata,
    );
    let webhook_id = id.to_string();
    let timestamp = ctx.clock.now().timestamp();
    let signature = secret.sign(&webhook_id, timestamp, &body);
    let started_at = ctx.clock.now();
    let result = provider
        .deliver(&Delivery {
            url: &url,
            webhook_id: &webhook_id,
            timestamp,
            signature: &signature,
            body: &body,
        })
        .await;
    let outcome = classify(result.status);
    let duration_ms = i32::try_from(result.duration.as_millis()).unwrap_or(i32::MAX);
    tracing::info!(
        message_id = %id,
        project_id = %c.project_id,
        attempt = c.attempt,
        status_code = result.status,
        duration_ms,
        outcome = ?outcome,
        error = result.error.as_deref().unwrap_or(""),
        "delivery attempt"
    );

    let out_of_attempts = c.attempt >= MAX_ATTEMPTS as i32;
    let (step, delay) = match outcome {
        Outcome::Delivered => (Step::Delivered, None),
        Outcome::Rejected => (Step::Failed, None),
        Outcome::Retry if out_of_attempts => (Step::Failed, None),
        Outcome::Retry => {
            let next = c.attempt as u32 + 1;
            let d = retry::delay_with_base(
                cfg.retry_base,
                next,
                result.retry_after,
                retry::unit_random(),
            );
            (Step::RetryScheduled, Some(d))
        }
    };
    let outcome_name = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Rejected => "rejected",
        Outcome::Retry => "retry",
    };
    let attempted = json!({"attempt": c.attempt, "status_code": result.status,
        "duration_ms": duration_ms, "error": result.error, "outcome": outcome_name});
    let ledger_payload = json!({"project_id": c.project_id, "attempts": c.attempt,
                                "status_code": result.status});
    let (next_status, outcome_event, details, ledger_event, last_error) = match step {
        Step::Delivered => (
            "delivered",
            "message.delivered",
            json!({"attempt": c.attempt, "status_code": result.status}),
            Some(("message.delivered", ledger_payload)),
            None,
        ),
        Step::Failed => {
            let last = result.error.as_deref().unwrap_or("error");
            let reason = if outcome == Outcome::Rejected {
                format!("rejected by the receiver: {last}")
            } else {
                format!("gave up after {} attempts; last: {last}", c.attempt)
            };
            (
                "failed",
                "message.failed",
                json!({"attempt": c.attempt, "status_code": result.status, "reason": reason}),
                Some(("message.failed", ledger_payload)),
                Some(truncate(reason)),
            )
        }
        _ => (
            "queued",
            "message.retry_scheduled",
            json!({"next_attempt": c.attempt + 1,
                   "delay_ms": delay.unwrap_or_default().as_millis() as u64,
                   "retry_after_s": result.retry_after.map(|r| r.as_secs())}),
            None,
            result.error.clone(),
        ),
    };
    Sent::Posted(Posted {
        id,
        project_id: c.project_id,
        org_id: c.org_id,
        attempt: c.attempt,
        started_at,
        duration_ms,
        status_code: result.status.map(i32::from),
        error: result.error,
        outcome: outcome_name,
        step,
        delay,
        attempted,
        outcome_event,
        details,
        next_status,
        last_error,
        ledger_event,
    })
}

async fn no_endpoint(ctx: &AppContext, c: Claimed) -> ApiResult<Report> {
    let mut db = ctx.db().await?;
    let reason = "the project has no delivery endpoint or signing secret";
    finish_failed(
        ctx,
        &mut db,
        c.id,
        c.project_id,
        c.org_id,
        reason,
        c.attempt,
    )
    .await?;
    Ok(Report::ack(Step::Failed))
}

/// Records attempts in one transaction, with one statement: each attempt
/// row, each message moved on (guarded by its claim's status and attempt,
/// so a worker that lost its lease changes nothing) and each timeline
/// (`message.attempted`, then the outcome's event if the message moved).
/// The ledger events of the moved messages go in, sorted by organisation
/// so concurrent batches take the organisations' heads in one order, and
/// one flush makes the whole batch durable. Then retries are queued.
/// Reports are in the order of `posted`.
async fn record(ctx: &AppContext, queue: &dyn Queue, posted: &[&Posted]) -> ApiResult<Vec<Report>> {
    let ids: Vec<Uuid> = posted.iter().map(|p| p.id).collect();
    let attempts: Vec<i32> = posted.iter().map(|p| p.attempt).collect();
    let status_codes: Vec<Option<i32>> = posted.iter().map(|p| p.status_code).collect();
    let durations: Vec<i32> = posted.iter().map(|p| p.duration_ms).collect();
    let errors: Vec<Option<&str>> = posted.iter().map(|p| p.error.as_deref()).collect();
    let outcomes: Vec<&str> = posted.iter().map(|p| p.outcome).collect();
    let started: Vec<DateTime<Utc>> = posted.iter().map(|p| p.started_at).collect();
    let projects: Vec<Uuid> = posted.iter().map(|p| p.project_id).collect();
    let attempted: Vec<&Value> = posted.iter().map(|p| &p.attempted).collect();
    let next_status: Vec<&str> = posted.iter().map(|p| p.next_status).collect();
    let outcome_events: Vec<&str> = posted.iter().map(|p| p.outcome_event).collect();
    let details: Vec<&Value> = posted.iter().map(|p| &p.details).collect();
    let last_errors: Vec<Option<&str>> = posted.iter().map(|p| p.last_error.as_deref()).collect();
    let delays: Vec<f64> = posted
        .iter()
        .map(|p| secs(p.delay.unwrap_or_default()))
        .collect();

    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let moved: std::collections::HashSet<Uuid> = db::query(
        &tx,
        "WITH r AS (
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::int4[], $4::int4[], $5::text[],
                                  $6::text[], $7::timestamptz[], $8::uuid[], $9::jsonb[],
                                  $10::text[], $11::text[], $12::jsonb[], $13::text[],
                                  $14::float8[])
                 WITH ORDINALITY AS r (id, attempt, status_code, duration_ms, error, outcome,
                                       started_at, project_id, attempted, next_status,
                                       outcome_event, details, last_error, delay_s, ord)
         ), attempt AS (
             INSERT INTO delivery_attempts
                 (message_id, attempt, status_code, duration_ms, error, outcome, started_at)
             SELECT id, attempt, status_code, duration_ms, error, outcome, started_at FROM r
             ON CONFLICT (message_id, attempt) DO NOTHING
         ), moved AS (
             UPDATE messages m
                SET status = r.next_status, lease_until = NULL, last_error = r.last_error,
                    finished_at = CASE WHEN r.next_status = 'queued' THEN NULL ELSE now() END,
                    enqueued_at = CASE WHEN r.next_status = 'queued' THEN now()
                                       ELSE m.enqueued_at END,
                    next_attempt_at = CASE WHEN r.next_status = 'queued'
                                           THEN now() + make_interval(secs => r.delay_s)
                                           ELSE m.next_attempt_at END,
                    updated_at = now()
               FROM r
              WHERE m.id = r.id AND m.status = 'delivering' AND m.attempts = r.attempt
             RETURNING m.id
         ), timeline AS (
             INSERT INTO message_events (message_id, project_id, event_type, details)
             SELECT e.id, e.project_id, e.event_type, e.details
               FROM (SELECT r.ord, 1 AS n, r.id, r.project_id,
                            'message.attempted'::text AS event_type, r.attempted AS details
                       FROM r
                     UNION ALL
                     SELECT r.ord, 2, r.id, r.project_id, r.outcome_event, r.details
                       FROM r JOIN moved ON moved.id = r.id) AS e
              ORDER BY e.ord, e.n
         )
         SELECT id FROM moved",
        &[
            &ids,
            &attempts,
            &status_codes,
            &durations,
            &errors,
            &outcomes,
            &started,
            &projects,
            &attempted,
            &next_status,
            &outcome_events,
            &details,
            &last_errors,
            &delays,
        ],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut events: Vec<(Uuid, NewEvent)> = posted
        .iter()
        .filter(|p| moved.contains(&p.id))
        .filter_map(|p| {
            let (event_type, payload) = p.ledger_event.clone()?;
            Some((p.org_id, system_event(event_type, p.id, payload)))
        })
        .collect();
    events.sort_by_key(|(org, _)| *org);
    ledger::append_all(&tx, &events, ctx.clock.now()).await?;
    tx.commit().await?;
    if !events.is_empty() {
        if let Err(e) = ledger::flush(&**db).await {
            // The changes stand and are durable with the next WAL flush.
            tracing::error!(error = %e, cause = ?e.cause, "flushing recorded deliveries failed");
        }
    }
    // Never hold a connection while the (Postgres) queue takes one.
    drop(db);

    // Retries are sent concurrently: each is its own queue message.
    let moved = &moved;
    let reports = posted.iter().map(|p| async move {
        if !moved.contains(&p.id) {
            tracing::warn!(message_id = %p.id, attempt = p.attempt,
                "the claim ran out during the attempt; another worker owns the message now");
            return Report::ack(Step::NotNow);
        }
        if p.step != Step::RetryScheduled {
            return Report::ack(p.step);
        }
        // The retry: a new, delayed queue message. If it cannot be sent,
        // keep the current one instead, invisible until the retry is due.
        let d = p.delay.unwrap_or_default().min(crate::queue::MAX_DELAY);
        match queue.send(&QueueJob { message_id: p.id }.body(), d).await {
            Ok(_) => Report::ack(Step::RetryScheduled),
            Err(e) => {
                tracing::warn!(message_id = %p.id, error = %e,
                    "queueing the retry failed; keeping the current queue message for it");
                Report {
                    step: Step::RetryScheduled,
                    disposition: Disposition::Later(d),
                }
            }
        }
    });
    Ok(join_all(reports).await)
}

/// How many messages one activation or one sweep queues at most; the rest
/// are found by the next sweep.
pub const REQUEUE_BATCH: i64 = 1000;

/// Queues a project's waiting (queued) messages again, e.g. after an
/// activation: those skipped while it was suspended are delivered without
/// anyone sending them again, each once (the claim sees to that).
pub async fn requeue_project(ctx: &AppContext, project_id: Uuid, reason: &str) -> ApiResult<usize> {
    let db = ctx.db().await?;
    let rows = db
        .query(
            "WITH waiting AS (
                 SELECT id FROM messages
                  WHERE project_id = $1 AND status = 'queued'
                  ORDER BY position LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE messages m SET enqueued_at = now(), updated_at = now()
               FROM waiting WHERE m.id = waiting.id
             RETURNING m.id, m.project_id,
                       greatest(extract(epoch FROM m.next_attempt_at - now()), 0)::float8",
            &[&project_id, &REQUEUE_BATCH],
        )
        .await?;
    drop(db);
    send_again(ctx, &rows, reason).await
}

/// Puts back what nothing else will: messages whose worker died (lease
/// over), and queued messages of active projects whose queue message was
/// lost (sent more than `grace` ago, or never: `enqueued_at` NULL) and
/// that are overdue by `grace`. Duplicates this may create are harmless.
pub async fn sweep(ctx: &AppContext, grace: Duration) -> ApiResult<usize> {
    let db = ctx.db().await?;
    let expired = db
        .query(
            "WITH expired AS (
                 SELECT id FROM messages
                  WHERE status = 'delivering' AND lease_until < now()
                  ORDER BY lease_until LIMIT $1 FOR UPDATE SKIP LOCKED)
             UPDATE messages m SET status = 'queued', lease_until = NULL,
                    next_attempt_at = now(), enqueued_at = now(), updated_at = now()
               FROM expired WHERE m.id = expired.id
             RETURNING m.id, m.project_id, 0::float8",
            &[&REQUEUE_BATCH],
        )
        .await?;
    drop(db);
    let mut n = send_again(ctx, &expired, "lease expired").await?;
    let db = ctx.db().await?;
    let overdue = db
        .query(
            "WITH overdue AS (
                 SELECT m.id FROM messages m JOIN projects p ON p.id = m.project_id
                  WHERE m.status = 'queued' AND p.status = 'active'
                    AND (m.enqueued_at IS NULL AND m.next_attempt_at <= now()
                         OR m.enqueued_at <= now() - make_interval(secs => $2)
                            AND m.next_attempt_at <= now() - make_interval(secs => $2))
                  ORDER BY m.next_attempt_at LIMIT $1 FOR UPDATE OF m SKIP LOCKED)
             UPDATE messages m SET enqueued_at = now(), updated_at = now()
               FROM overdue WHERE m.id = overdue.id
             RETURNING m.id, m.project_id, 0::float8",
            &[&REQUEUE_BATCH, &secs(grace)],
        )
        .await?;
    drop(db);
    n += send_again(ctx, &overdue, "overdue").await?;
    if n > 0 {
        tracing::info!(requeued = n, "sweep queued messages again");
    }
    Ok(n)
}

/// Sends a queue message for each (id, project id, delay s) row and records
/// `message.requeued`; if the queue fails, marks them unqueued for the sweeper.
/// Takes its own connection only after the send (the Postgres queue needs
/// one too, and nesting them could exhaust a small pool).
async fn send_again(
    ctx: &AppContext,
    rows: &[tokio_postgres::Row],
    reason: &str,
) -> ApiResult<usize> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let jobs: Vec<(String, Duration)> = rows
        .iter()
        .map(|r| {
            let delay: f64 = r.get(2);
            (
                QueueJob {
                    message_id: r.get(0),
                }
                .body(),
                positive_secs(Some(delay)),
            )
        })
        .collect();
    let sent = ctx.message_queue.send_batch(&jobs).await;
    let db = ctx.db().await?;
    if let Err(e) = sent {
        tracing::error!(error = %e, messages = ids.len(), reason,
            "queueing messages again failed; the sweeper will retry");
        db.execute(
            "UPDATE messages SET enqueued_at = NULL WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
        return Err(ApiError::unavailable(anyhow::anyhow!("message queue: {e}")));
    }
    db.execute(
        "INSERT INTO message_events (message_id, project_id, event_type, details)
         SELECT id, project_id, 'message.requeued', jsonb_build_object('reason', $2::text)
           FROM unnest($1::uuid[], $3::uuid[]) AS r (id, project_id)",
        &[
            &ids,
            &reason,
            &rows.iter().map(|r| r.get::<_, Uuid>(1)).collect::<Vec<_>>(),
        ],
    )
    .await?;
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_documented_shape() {
        let id = Uuid::nil();
        let at = DateTime::parse_from_rfc3339("2026-11-23T10:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let p: Value = serde_json::from_slice(&payload(
            id,
            "user.created",
            at,
            "a@example.com",
            &json!({"x": 1}),
            &json!({"k": "v"}),
        ))
        .unwrap();
        assert_eq!(
            p,
            json!({"type": "user.created", "timestamp": "2026-11-23T10:30:00.000Z",
                   "data": {"id": id, "recipient": "a@example.com", "body": {"x": 1},
                            "metadata": {"k": "v"}}})
        );
    }

    #[test]
    fn long_errors_are_cut() {
        assert_eq!(truncate("x".repeat(10)), "x".repeat(10));
        assert_eq!(
            truncate("x".repeat(600)).chars().count(),
            MAX_ERROR_CHARS + 1
        );
    }
}
