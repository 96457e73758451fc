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
use serde_json::{json, Value};
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
    let cfg = &ctx.config.messages;
    let lease = cfg.delivery_timeout + LEASE_MARGIN;
    let mut db = ctx.db().await?;
    let mut claimed = None;
    // The claim commits asynchronously (no WAL flush of its own): losing it
    // in a database crash is the same as this worker dying after claiming,
    // and the message is claimed and delivered again, under the same
    // webhook-id. The attempt's record is settled (flushed) later, and that
    // flush covers the claim before it.
    // Twice at most: if the claim fails but the message looks claimable a
    // moment later (an activation in between), try once more.
    for _ in 0..2 {
        let row = db::query_opt(
            &db,
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
                  RETURNING m.attempts, m.project_id, m.org_id, m.recipient, m.event_type,
                            m.body, m.metadata, m.created_at, p.endpoint_url, p.signing_secret",
            &[
                &id,
                &secs(lease),
                &(MAX_ATTEMPTS as i32),
                &EARLY_TOLERANCE_SECS,
            ],
        )
        .await?;
        if let Some(r) = row {
            claimed = Some(Claimed {
                attempt: r.get(0),
                project_id: r.get(1),
                org_id: r.get(2),
                recipient: r.get(3),
                event_type: r.get(4),
                body: r.get(5),
                metadata: r.get(6),
                created_at: r.get(7),
                endpoint_url: r.get(8),
                signing_secret: r.get(9),
            });
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
    attempt(ctx, provider, queue, id, c).await
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
    ledger::settle_committed(&***db, org_id, pending).await;
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

async fn attempt(
    ctx: &AppContext,
    provider: &dyn Provider,
    queue: &dyn Queue,
    id: Uuid,
    c: Claimed,
) -> ApiResult<Report> {
    let cfg = &ctx.config.messages;
    let secret = c.signing_secret.as_deref().map(SigningSecret::parse);
    let (url, secret) = match (c.endpoint_url.as_deref(), secret) {
        (Some(url), Some(Ok(secret))) => (url.to_string(), secret),
        _ => {
            // A project made before endpoints existed: nothing to send to.
            let mut db = ctx.db().await?;
            let reason = "the project has no delivery endpoint or signing secret";
            finish_failed(ctx, &mut db, id, c.project_id, c.org_id, reason, c.attempt).await?;
            return Ok(Report::ack(Step::Failed));
        }
    };
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
    let status_code = result.status.map(i32::from);
    let attempted = json!({"attempt": c.attempt, "status_code": result.status,
        "duration_ms": duration_ms, "error": result.error, "outcome": outcome_name});
    let last_error = result.error.clone();
    let delay_s = secs(delay.unwrap_or_default());
    // What the attempt moves the message to, the timeline event saying so,
    // the ledger event (delivered and failed are lifecycle changes) and the
    // error kept on the message.
    let (set, outcome_event, details, ledger_event, stored_error) = match step {
        Step::Delivered => (
            "status = 'delivered', lease_until = NULL, finished_at = now(), last_error = NULL",
            "message.delivered",
            json!({"attempt": c.attempt, "status_code": result.status}),
            Some("message.delivered"),
            None,
        ),
        Step::Failed => {
            let reason = if outcome == Outcome::Rejected {
                format!(
                    "rejected by the receiver: {}",
                    last_error.as_deref().unwrap_or("error")
                )
            } else {
                format!(
                    "gave up after {} attempts; last: {}",
                    c.attempt,
                    last_error.as_deref().unwrap_or("error")
                )
            };
            (
                "status = 'failed', lease_until = NULL, finished_at = now(), last_error = $11",
                "message.failed",
                json!({"attempt": c.attempt, "status_code": result.status, "reason": reason}),
                Some("message.failed"),
                Some(truncate(reason)),
            )
        }
        _ => (
            "status = 'queued', lease_until = NULL, enqueued_at = now(), last_error = $11,
             next_attempt_at = now() + make_interval(secs => $12)",
            "message.retry_scheduled",
            json!({"next_attempt": c.attempt + 1,
                   "delay_ms": delay.unwrap_or_default().as_millis() as u64,
                   "retry_after_s": result.retry_after.map(|r| r.as_secs())}),
            None,
            last_error.clone(),
        ),
    };
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &id,
        &c.attempt,
        &status_code,
        &duration_ms,
        &result.error,
        &outcome_name,
        &started_at,
        &c.project_id,
        &attempted,
        &details,
    ];
    match step {
        Step::Delivered => {}
        Step::Failed => params.push(&stored_error),
        _ => {
            params.push(&stored_error);
            params.push(&delay_s);
        }
    }

    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    // One statement records the attempt, moves the message (guarded by this
    // claim's status and attempt, so a worker that lost its lease changes
    // nothing) and writes the timeline: `message.attempted`, then the
    // outcome's event if the message moved.
    let moved: i64 = db::query_one(
        &tx,
        &format!(
            "WITH attempt AS (
                 INSERT INTO delivery_attempts
                     (message_id, attempt, status_code, duration_ms, error, outcome, started_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (message_id, attempt) DO NOTHING
             ), moved AS (
                 UPDATE messages SET {set}, updated_at = now()
                  WHERE id = $1 AND status = 'delivering' AND attempts = $2
                 RETURNING id
             ), timeline AS (
                 INSERT INTO message_events (message_id, project_id, event_type, details)
                 SELECT $1, $8::uuid, e.event_type, e.details
                   FROM (VALUES (1, 'message.attempted', $9::jsonb),
                                (2, '{outcome_event}', $10::jsonb)) AS e (n, event_type, details)
                  WHERE e.n = 1 OR EXISTS (SELECT 1 FROM moved)
                  ORDER BY e.n
             )
             SELECT count(*) FROM moved"
        ),
        &params,
    )
    .await?
    .get(0);
    let changed = moved > 0;
    let mut pending = None;
    if let (true, Some(event_type)) = (changed, ledger_event) {
        let payload = json!({"project_id": c.project_id, "attempts": c.attempt,
                             "status_code": result.status});
        pending = Some(
            ledger::append(
                &tx,
                c.org_id,
                &system_event(event_type, id, payload),
                ctx.clock.now(),
            )
            .await?,
        );
    }
    tx.commit().await?;
    if let Some(p) = pending {
        ledger::settle_committed(&**db, c.org_id, p).await;
    }
    if !changed {
        tracing::warn!(message_id = %id, attempt = c.attempt,
            "the claim ran out during the attempt; another worker owns the message now");
        return Ok(Report::ack(Step::NotNow));
    }
    // Never hold a connection while the (Postgres) queue takes one.
    drop(db);
    if step != Step::RetryScheduled {
        return Ok(Report::ack(step));
    }
    // The retry: a new, delayed queue message. If it cannot be sent, keep
    // the current one instead, invisible until the retry is due.
    let d = delay.unwrap_or_default().min(crate::queue::MAX_DELAY);
    match queue.send(&QueueJob { message_id: id }.body(), d).await {
        Ok(_) => Ok(Report::ack(Step::RetryScheduled)),
        Err(e) => {
            tracing::warn!(message_id = %id, error = %e,
                "queueing the retry failed; keeping the current queue message for it");
            Ok(Report {
                step: Step::RetryScheduled,
                disposition: Disposition::Later(d),
            })
        }
    }
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
