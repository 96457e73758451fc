//! Background jobs and their entry points (DESIGN.md §1, §7): the nightly
//! seal fan-out `cron_ledger_roots` (EventBridge Scheduler, 02:00 UTC) sends
//! one message per organisation with unsealed days to the roots queue, and
//! `worker_ledger_roots` seals each organisation through the day named in
//! its message. Nothing loops over every tenant's work in one invocation.
//!
//! In Lambda these run under `lambda_runtime`; `ledgerline serve` runs the
//! same two steps itself ([`run_local`]): the schedule on a tokio timer and
//! a worker polling the Postgres queue.

use crate::config::{Config, QueueBackend};
use crate::context::AppContext;
use crate::error::{new_error_id, ApiError, ApiResult};
use crate::ledger::seal::{self, KeyUse, SealReport};
use crate::queue::{PgQueue, Queue, QueueError, ReceivedMessage};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How a non-HTTP function is triggered (checked against template.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An EventBridge Scheduler schedule (`AWS::Scheduler::Schedule`).
    Schedule { expression: &'static str },
    /// An SQS event source mapping.
    Sqs,
}

/// A Lambda function that is not an HTTP route.
#[derive(Debug, Clone, Copy)]
pub struct JobFunction {
    pub function: &'static str,
    pub trigger: Trigger,
    pub summary: &'static str,
}

/// The nightly schedule: 02:00 UTC every day.
pub const SEAL_SCHEDULE: &str = "cron(0 2 * * ? *)";

/// Every non-HTTP function. Each has a binary in `functions/src/bin`, a
/// sample event in `events/` and a resource in `template.yaml`.
pub const JOB_FUNCTIONS: &[JobFunction] = &[
    JobFunction {
        function: "cron_ledger_roots",
        trigger: Trigger::Schedule {
            expression: SEAL_SCHEDULE,
        },
        summary: "Nightly: one seal job per organisation with unsealed days",
    },
    JobFunction {
        function: "worker_ledger_roots",
        trigger: Trigger::Sqs,
        summary: "Seals one organisation's ledger through a day",
    },
    JobFunction {
        function: crate::messages::worker::WORKER_FUNCTION,
        trigger: Trigger::Sqs,
        summary: "Delivers messages from the message queue (signed webhooks, retries)",
    },
    JobFunction {
        function: crate::messages::worker::SWEEP_FUNCTION,
        trigger: Trigger::Schedule {
            expression: crate::messages::worker::SWEEP_SCHEDULE,
        },
        summary: "Queues again messages a lost queue message or a crashed worker left behind",
    },
];

/// The local (Postgres) queue of seal jobs and its dead-letter queue.
pub const ROOTS_QUEUE: &str = "ledger_roots";
pub const ROOTS_DEAD_LETTER_QUEUE: &str = "ledger_roots_dlq";
/// Deliveries before a job goes to the dead-letter queue (as the SQS
/// redrive policy in template.yaml).
pub const MAX_RECEIVES: u32 = 5;
/// How long a received job stays invisible locally before it is retried.
pub const LOCAL_VISIBILITY: Duration = Duration::from_secs(300);

/// One queue message: seal `org_id` through `through_day`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealJob {
    pub org_id: Uuid,
    pub through_day: NaiveDate,
}

/// The roots queue for this configuration: Postgres (with a dead-letter
/// queue after [`MAX_RECEIVES`]) or SQS at `LEDGERLINE_ROOTS_QUEUE_URL`.
pub async fn roots_queue(ctx: &AppContext) -> anyhow::Result<Arc<dyn Queue>> {
    Ok(match ctx.config.queue_backend {
        QueueBackend::Postgres => Arc::new(
            PgQueue::new(ctx.pool.clone(), ROOTS_QUEUE)
                .with_dead_letter_queue(ROOTS_DEAD_LETTER_QUEUE, MAX_RECEIVES),
        ),
        QueueBackend::Sqs => {
            let url = require_queue_url(&ctx.config)?;
            crate::queue::sqs_queue(url).await
        }
    })
}

fn require_queue_url(config: &Config) -> anyhow::Result<String> {
    config.roots_queue_url.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "LEDGERLINE_ROOTS_QUEUE_URL is required when LEDGERLINE_QUEUE_BACKEND is sqs \
             (the default in Lambda)"
        )
    })
}

fn queue_error(e: QueueError) -> ApiError {
    match e {
        QueueError::Backend(cause) => ApiError::unavailable(cause),
        other => ApiError::internal(anyhow::anyhow!("{other}")),
    }
}

// ---------------------------------------------------------------------------
// The fan-out (cron)
// ---------------------------------------------------------------------------

/// What one fan-out did.
#[derive(Debug, Clone, Serialize)]
pub struct FanOut {
    pub through_day: NaiveDate,
    pub jobs: usize,
}

/// Organisations looked at per query and messages sent per batch call.
const FAN_OUT_PAGE: i64 = 500;

/// Sends one [`SealJob`] per organisation that has unsealed events on any
/// day before today (so nights that failed are caught up), through
/// yesterday. Pages through organisations, so memory does not grow with
/// their number.
pub async fn fan_out_seals(ctx: &AppContext, queue: &dyn Queue) -> ApiResult<FanOut> {
    let today = ctx.clock.now().date_naive();
    let through_day = today
        .pred_opt()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no day before {today}")))?;
    let db = ctx.db().await?;
    let mut after = None;
    let mut jobs = 0;
    loop {
        let orgs = seal::orgs_with_unsealed_days(&**db, today, after, FAN_OUT_PAGE).await?;
        let Some(last) = orgs.last().copied() else {
            break;
        };
        let messages: Vec<(String, Duration)> = orgs
            .iter()
            .map(|org_id| {
                let job = SealJob {
                    org_id: *org_id,
                    through_day,
                };
                (
                    serde_json::to_string(&job).unwrap_or_default(),
                    Duration::ZERO,
                )
            })
            .collect();
        queue.send_batch(&messages).await.map_err(queue_error)?;
        jobs += orgs.len();
        if (orgs.len() as i64) < FAN_OUT_PAGE {
            break;
        }
        after = Some(last);
    }
    tracing::info!(through_day = %through_day, jobs, "queued nightly seal jobs");
    Ok(FanOut { through_day, jobs })
}

// ---------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------

/// Counts a worker's work and logs a heartbeat at most every 30 s.
pub struct Heartbeat {
    function: &'static str,
    every: Duration,
    started: Instant,
    last: Mutex<Instant>,
    processed: AtomicU64,
    failed: AtomicU64,
}

impl Heartbeat {
    pub const EVERY: Duration = Duration::from_secs(30);

    pub fn new(function: &'static str) -> Self {
        Self::with_period(function, Self::EVERY)
    }

    /// A heartbeat logged at most once per `every` (tests use a short one).
    pub fn with_period(function: &'static str, every: Duration) -> Self {
        let now = Instant::now();
        Heartbeat {
            function,
            every,
            started: now,
            last: Mutex::new(now),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn record(&self, ok: bool) {
        if ok {
            self.processed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.maybe_beat();
    }

    /// Logs the heartbeat (uptime, processed, failed) if the last one is at
    /// least a period old; true if it did.
    pub fn maybe_beat(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < self.every {
            return false;
        }
        *last = Instant::now();
        tracing::info!(
            function = self.function,
            uptime_s = self.started.elapsed().as_secs(),
            processed = self.processed.load(Ordering::Relaxed),
            failed = self.failed.load(Ordering::Relaxed),
            "heartbeat"
        );
        true
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.processed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Seals organisations as the roots queue asks.
pub struct RootsWorker {
    ctx: Arc<AppContext>,
    pub heartbeat: Heartbeat,
}

impl RootsWorker {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        RootsWorker {
            ctx,
            heartbeat: Heartbeat::new("worker_ledger_roots"),
        }
    }

    /// Handles one message body. A redelivered or repeated job is harmless:
    /// days already sealed are left alone. A day not yet over is never
    /// sealed, whatever the message says.
    pub async fn handle(&self, body: &str) -> ApiResult<SealReport> {
        let report = self.seal(body).await;
        self.heartbeat.record(report.is_ok());
        report
    }

    async fn seal(&self, body: &str) -> ApiResult<SealReport> {
        let job: SealJob = serde_json::from_str(body).map_err(|e| {
            ApiError::validation(format!(
                "a seal job is {{\"org_id\": <uuid>, \"through_day\": \"YYYY-MM-DD\"}}: {e}"
            ))
        })?;
        let yesterday = self
            .ctx
            .clock
            .now()
            .date_naive()
            .pred_opt()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("clock out of range")))?;
        seal::seal_day(&self.ctx, job.org_id, job.through_day.min(yesterday)).await
    }

    /// Logs a failed job with an error id (its cause never leaves the logs).
    fn log_failure(&self, message_id: &str, e: &ApiError) {
        tracing::error!(
            error_id = %new_error_id(),
            message_id,
            error = %e,
            cause = ?e.cause,
            "seal job failed; it will be retried"
        );
    }

    /// The Lambda handler: each failed message is reported as a batch item
    /// failure, so SQS retries only those (and after [`MAX_RECEIVES`]
    /// deliveries moves them to the dead-letter queue).
    pub async fn handle_sqs_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let id = record.message_id.unwrap_or_default();
            let result = match record.body.as_deref() {
                Some(body) => self.handle(body).await,
                None => Err(ApiError::validation("the message has no body")),
            };
            match result {
                Ok(report) => log_report(&id, &report),
                Err(e) => {
                    self.log_failure(&id, &e);
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
            }
        }
        response
    }

    /// One receive from `queue` and the work it brings (the local worker
    /// loop; tests call it directly). Returns (succeeded, failed).
    pub async fn work_once(
        &self,
        queue: &dyn Queue,
        wait: Duration,
    ) -> Result<(usize, usize), QueueError> {
        let messages = queue
            .receive(crate::queue::MAX_RECEIVE, LOCAL_VISIBILITY, wait)
            .await?;
        let (mut ok, mut failed) = (0, 0);
        for m in messages {
            if self.handle_delivery(queue, &m).await? {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        Ok((ok, failed))
    }

    async fn handle_delivery(
        &self,
        queue: &dyn Queue,
        m: &ReceivedMessage,
    ) -> Result<bool, QueueError> {
        match self.handle(&m.body).await {
            Ok(report) => {
                log_report(&m.id, &report);
                queue.delete(&m.receipt_handle).await?;
                Ok(true)
            }
            Err(e) => {
                self.log_failure(&m.id, &e);
                // Back off before the next attempt: 1, 2, 4, 8 minutes.
                let backoff = Duration::from_secs(60 << m.receive_count.min(4).saturating_sub(1));
                let _ = queue.change_visibility(&m.receipt_handle, backoff).await;
                Ok(false)
            }
        }
    }
}

fn log_report(message_id: &str, r: &SealReport) {
    tracing::info!(
        message_id,
        org_id = %r.org_id,
        through_day = %r.through_day,
        days_sealed = r.sealed.len(),
        rows_read = r.rows_read,
        elapsed_ms = r.elapsed_ms,
        "seal job done"
    );
}

// ---------------------------------------------------------------------------
// Manual runs (`ledgerline seal --day YYYY-MM-DD [--org ID]`)
// ---------------------------------------------------------------------------

/// Seals through `day` (YYYY-MM-DD) for one organisation, or for every
/// organisation with events that day. Refuses today and future days.
pub async fn manual_seal(
    ctx: &AppContext,
    day: &str,
    org: Option<&str>,
) -> anyhow::Result<Vec<SealReport>> {
    let parsed = NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .filter(|_| day.len() == 10)
        .ok_or_else(|| anyhow::anyhow!("--day must be a date YYYY-MM-DD, not '{day}'"))?;
    let org = org
        .map(|o| {
            Uuid::try_parse(o).map_err(|_| {
                anyhow::anyhow!("--org must be an organisation id (a UUID), not '{o}'")
            })
        })
        .transpose()?;
    let today = ctx.clock.now().date_naive();
    if parsed >= today {
        anyhow::bail!(
            "{parsed} is not over yet: only days before today ({today}, UTC) can be sealed"
        );
    }
    let orgs = match org {
        Some(o) => vec![o],
        None => {
            let db = ctx.db().await.map_err(ApiError::into_anyhow)?;
            seal::orgs_with_events_on(&**db, parsed)
                .await
                .map_err(ApiError::into_anyhow)?
        }
    };
    let mut reports = Vec::with_capacity(orgs.len());
    for org in orgs {
        reports.push(
            seal::seal_day(ctx, org, parsed)
                .await
                .map_err(|e| e.into_anyhow().context(format!("sealing org {org}")))?,
        );
    }
    Ok(reports)
}

// ---------------------------------------------------------------------------
// Lambda entry points
// ---------------------------------------------------------------------------

fn startup(function: &'static str) -> Result<Config, lambda_runtime::Error> {
    crate::logging::init();
    let config = Config::from_env().map_err(|e| {
        tracing::error!(error = %e, function, "invalid configuration");
        e
    })?;
    if config.checkpoint.origin == crate::config::DEFAULT_CHECKPOINT_ORIGIN && config.in_lambda {
        tracing::warn!(
            function,
            "LEDGERLINE_CHECKPOINT_ORIGIN is the local default; set it to this deployment's name"
        );
    }
    Ok(config)
}

/// Rows deleted per statement by [`purge_expired`], so a large backlog never
/// holds locks or builds one huge transaction.
const PURGE_BATCH: i64 = 10_000;

/// What [`purge_expired`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub rate_limit_windows: u64,
    pub idempotency_records: u64,
}

/// Housekeeping: deletes rate-limit windows and Idempotency-Key records
/// that expired before `now` (both are only ever read unexpired), in
/// batches. Run with the nightly seal (the cron function and `ledgerline
/// serve`); safe to run at any time and concurrently.
pub async fn purge_expired(ctx: &AppContext, now: DateTime<Utc>) -> ApiResult<Purged> {
    let client = ctx.db().await?;
    let mut purged = Purged::default();
    for (table, count) in [
        ("rate_limit_windows", &mut purged.rate_limit_windows),
        ("idempotency_records", &mut purged.idempotency_records),
    ] {
        let sql = format!(
            "DELETE FROM {table} WHERE ctid IN
               (SELECT ctid FROM {table} WHERE expires_at < $1 LIMIT $2)"
        );
        loop {
            let n = client.execute(&sql, &[&now, &PURGE_BATCH]).await?;
            *count += n;
            if n < PURGE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(purged)
}

/// Runs [`purge_expired`] and logs the outcome; a failure never fails the
/// caller (the seal fan-out is what the schedule is for).
pub async fn housekeeping(ctx: &AppContext) -> Option<Purged> {
    match purge_expired(ctx, ctx.clock.now()).await {
        Ok(p) => {
            tracing::info!(
                rate_limit_windows = p.rate_limit_windows,
                idempotency_records = p.idempotency_records,
                "purged expired records"
            );
            Some(p)
        }
        Err(e) => {
            tracing::error!(error_id = %new_error_id(), error = %e, cause = ?e.cause,
                "purging expired records failed; next try at the next run");
            None
        }
    }
}

/// The `cron_ledger_roots` handler: any scheduler event triggers one
/// fan-out (the event is only logged), then the housekeeping purge.
pub async fn handle_cron_event(
    ctx: &AppContext,
    queue: &dyn Queue,
    event: serde_json::Value,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    tracing::info!(
        scheduled_time = event["scheduled_time"].as_str().unwrap_or(""),
        execution_id = event["execution_id"].as_str().unwrap_or(""),
        "nightly seal fan-out"
    );
    let fanned = fan_out_seals(ctx, queue).await;
    let purged = housekeeping(ctx).await;
    match fanned {
        Ok(f) => {
            Ok(serde_json::json!({"through_day": f.through_day, "jobs": f.jobs, "purged": purged}))
        }
        Err(e) => {
            let error_id = new_error_id();
            tracing::error!(error_id = %error_id, error = %e, cause = ?e.cause, "fan-out failed");
            Err(lambda_runtime::Error::from(format!(
                "nightly seal fan-out failed ({error_id})"
            )))
        }
    }
}

/// main() of `cron_ledger_roots`.
pub async fn run_cron_ledger_roots() -> Result<(), lambda_runtime::Error> {
    const FUNCTION: &str = "cron_ledger_roots";
    let config = startup(FUNCTION)?;
    if config.queue_backend == QueueBackend::Sqs {
        require_queue_url(&config).map_err(|e| {
            tracing::error!(error = %e, function = FUNCTION, "invalid configuration");
            lambda_runtime::Error::from(e.to_string())
        })?;
    }
    let ctx = AppContext::new(config)?;
    let queue = roots_queue(&ctx).await?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let (ctx, queue) = (ctx.clone(), queue.clone());
            async move { handle_cron_event(&ctx, &*queue, event.payload).await }
        },
    ))
    .await
}

/// main() of `worker_ledger_roots`: SQS batches with partial failures.
pub async fn run_worker_ledger_roots() -> Result<(), lambda_runtime::Error> {
    const FUNCTION: &str = "worker_ledger_roots";
    let config = startup(FUNCTION)?;
    seal::check_key_config(&config, KeyUse::Sign).map_err(|e| {
        tracing::error!(error = %e, function = FUNCTION, "invalid configuration");
        e
    })?;
    let ctx = AppContext::new(config)?;
    // Fail at start-up, not on the first message, if the key is unusable.
    if let Err(e) = seal::checkpoint_signer(&ctx).await {
        tracing::error!(error = %e, cause = ?e.cause, function = FUNCTION, "checkpoint key unusable");
        return Err(lambda_runtime::Error::from("checkpoint key unusable"));
    }
    let worker = Arc::new(RootsWorker::new(ctx));
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<SqsEvent>| {
            let worker = worker.clone();
            async move { Ok::<_, lambda_runtime::Error>(worker.handle_sqs_batch(event.payload).await) }
        },
    ))
    .await
}

/// Start-up check for HTTP functions that publish the checkpoint key.
pub fn check_publishing_function(function: &'static str) -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    seal::check_key_config(&config, KeyUse::Publish).map_err(|e| {
        eprintln!("{function}: invalid configuration: {e}");
        lambda_runtime::Error::from(e.to_string())
    })
}

// ---------------------------------------------------------------------------
// The local schedule (`ledgerline serve`)
// ---------------------------------------------------------------------------

/// The first 02:00 UTC strictly after `now`.
pub fn next_nightly_run(now: DateTime<Utc>) -> DateTime<Utc> {
    let today_at_two = now
        .date_naive()
        .and_hms_opt(2, 0, 0)
        .expect("02:00 exists")
        .and_utc();
    if today_at_two > now {
        today_at_two
    } else {
        today_at_two + chrono::Duration::days(1)
    }
}

/// Runs the nightly schedule and the roots worker in-process until
/// `shutdown` turns true: a fan-out at start (catching up nights the server
/// was down) and at every 02:00 UTC, and a worker long-polling the Postgres
/// queue. On shutdown the current batch gets up to 5 s to finish.
pub async fn run_local(ctx: Arc<AppContext>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let queue: Arc<dyn Queue> = Arc::new(
        PgQueue::new(ctx.pool.clone(), ROOTS_QUEUE)
            .with_dead_letter_queue(ROOTS_DEAD_LETTER_QUEUE, MAX_RECEIVES),
    );
    let schedule = {
        let (ctx, queue, mut shutdown) = (ctx.clone(), queue.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                if let Err(e) = fan_out_seals(&ctx, &*queue).await {
                    tracing::error!(error_id = %new_error_id(), error = %e, cause = ?e.cause,
                        "nightly seal fan-out failed; next try at the next run");
                }
                housekeeping(&ctx).await;
                let now = ctx.clock.now();
                let wait = (next_nightly_run(now) - now)
                    .to_std()
                    .unwrap_or(Duration::from_secs(60));
                tracing::debug!(next_run_in_s = wait.as_secs(), "nightly seal scheduled");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    let worker = RootsWorker::new(ctx);
    tracing::info!("ledger roots worker polling the local queue");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let batch = worker.work_once(&*queue, Duration::from_secs(1));
        tokio::pin!(batch);
        tokio::select! {
            r = &mut batch => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "roots queue unavailable; retrying in 5 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                worker.heartbeat.maybe_beat();
            }
            _ = shutdown.changed() => {
                // Finish the batch in hand, for up to 5 s. A seal cut short
                // rolls back whole and its message is delivered again.
                if tokio::time::timeout(Duration::from_secs(5), &mut batch).await.is_err() {
                    tracing::warn!("shutting down mid-batch; its jobs will be redelivered");
                }
                break;
            }
        }
    }
    schedule.abort();
    let (processed, failed) = worker.heartbeat.counts();
    tracing::info!(processed, failed, "ledger roots worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_heartbeat_beats_at_most_once_per_period_however_busy() {
        let hb = Heartbeat::with_period("test", Duration::from_millis(40));
        // Busy: thousands of records inside one period give no beat.
        assert!(!hb.maybe_beat());
        for i in 0..5_000 {
            hb.record(i % 10 != 0);
        }
        assert_eq!(hb.counts(), (4_500, 500));
        // Idle for over a period: the next call beats, the one after does not.
        std::thread::sleep(Duration::from_millis(60));
        assert!(hb.maybe_beat());
        assert!(!hb.maybe_beat());
        // Over ~200 ms of calls, never more than one beat per period.
        let start = Instant::now();
        let mut beats = 0;
        while start.elapsed() < Duration::from_millis(200) {
            beats += u32::from(hb.maybe_beat());
        }
        let periods = start.elapsed().as_millis() / 40 + 1;
        assert!(
            beats >= 1 && u128::from(beats) <= periods,
            "{beats} beats in {periods} periods"
        );
        assert_eq!(Heartbeat::new("x").every, Duration::from_secs(30));
    }

    #[test]
    fn the_nightly_run_is_the_next_two_oclock_utc() {
        assert_eq!(
            next_nightly_run(t("2026-11-23T01:59:59Z")),
            t("2026-11-23T02:00:00Z")
        );
        assert_eq!(
            next_nightly_run(t("2026-11-23T02:00:00Z")),
            t("2026-11-24T02:00:00Z")
        );
        assert_eq!(
            next_nightly_run(t("2026-12-31T23:00:00Z")),
            t("2027-01-01T02:00:00Z")
        );
    }

    #[test]
    fn seal_jobs_are_strict_json() {
        let job: SealJob = serde_json::from_str(
            r#"{"org_id":"6f1c1f0e-8a6b-4a43-9e53-2d3c1c8e4b7a","through_day":"2026-11-22"}"#,
        )
        .unwrap();
        assert_eq!(
            job.through_day,
            NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
        );
        assert!(
            serde_json::from_str::<SealJob>(r#"{"org_id":"x","through_day":"2026-11-22"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<SealJob>(
            r#"{"org_id":"6f1c1f0e-8a6b-4a43-9e53-2d3c1c8e4b7a","through_day":"2026-11-22","x":1}"#
        )
        .is_err());
    }
}
