//! The message worker: takes queue messages, delivers (see `delivery`) and
//! settles each queue message (delete, or keep it for later).
//!
//! Two ways to run it, one code path:
//! - `worker_message` in Lambda: SQS batches through an event source
//!   mapping, with partial batch responses (only the messages to look at
//!   again are reported as failures);
//! - `ledgerline serve`: a loop polling the Postgres queue
//!   ([`run_local`]), which also sweeps every 30 s (in AWS the
//!   `cron_message_sweep` schedule does that).
//!
//! Safety: start-up warns about unsafe settings; a heartbeat (uptime,
//! processed, failed) is logged at most every 30 s per instance; on
//! shutdown the current batch gets up to 5 s to finish, and whatever is not
//! finished comes back from the queue later (the claim's lease runs out).

use crate::config::{Config, QueueBackend};
use crate::context::AppContext;
use crate::error::{new_error_id, ApiError, ApiResult};
use crate::jobs::Heartbeat;
use crate::messages::delivery::{self, Disposition, Provider, Report, Step, WebhookProvider};
use crate::messages::{MessagesConfig, QueueJob};
use crate::queue::{Queue, QueueError, ReceivedMessage, MAX_RECEIVE};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures_util::future::join_all;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// How long the current batch may run on after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the local worker sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How overdue a queued message must be before a sweep queues it again.
pub const SWEEP_GRACE: Duration = Duration::from_secs(300);

pub const WORKER_FUNCTION: &str = "worker_message";
pub const SWEEP_FUNCTION: &str = "cron_message_sweep";
/// The sweep schedule in AWS (template.yaml).
pub const SWEEP_SCHEDULE: &str = "rate(5 minutes)";

/// Logs each unsafe setting at WARN; returns how many there were.
pub fn warn_unsafe_settings(function: &str, cfg: &MessagesConfig) -> usize {
    let warnings = cfg.warnings();
    for w in &warnings {
        tracing::warn!(function, "unsafe worker setting: {w}");
    }
    warnings.len()
}

pub struct MessageWorker {
    ctx: Arc<AppContext>,
    queue: Arc<dyn Queue>,
    provider: Arc<dyn Provider>,
    pub heartbeat: Heartbeat,
    in_flight: AtomicUsize,
}

/// What one batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchTally {
    pub received: usize,
    pub delivered: usize,
    pub failed: usize,
    pub retried: usize,
    pub skipped: usize,
    /// Duplicates and not-yet-due messages: nothing sent.
    pub idle: usize,
    /// Processing errors (database away...): the queue brings them back.
    pub errors: usize,
}

impl BatchTally {
    fn add(&mut self, r: &ApiResult<Report>) {
        match r {
            Ok(r) => match r.step {
                Step::Delivered => self.delivered += 1,
                Step::Failed => self.failed += 1,
                Step::RetryScheduled => self.retried += 1,
                Step::Skipped => self.skipped += 1,
                Step::AlreadyDone | Step::NotNow => self.idle += 1,
            },
            Err(_) => self.errors += 1,
        }
    }
}

impl MessageWorker {
    /// A worker on the context's message queue delivering over HTTPS.
    pub fn from_context(
        ctx: Arc<AppContext>,
        function: &'static str,
    ) -> anyhow::Result<MessageWorker> {
        let provider = Arc::new(WebhookProvider::new(ctx.config.messages.delivery_timeout)?);
        let queue = ctx.message_queue.clone();
        Ok(Self::new(ctx, queue, provider, function))
    }

    pub fn new(
        ctx: Arc<AppContext>,
        queue: Arc<dyn Queue>,
        provider: Arc<dyn Provider>,
        function: &'static str,
    ) -> MessageWorker {
        warn_unsafe_settings(function, &ctx.config.messages);
        MessageWorker {
            ctx,
            queue,
            provider,
            heartbeat: Heartbeat::new(function),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn context(&self) -> &Arc<AppContext> {
        &self.ctx
    }

    /// Handles one batch of queue message bodies (`{"message_id": "<uuid>"}`;
    /// None: a record without a body) with `delivery::deliver_batch`.
    /// Results are in the order of `bodies`; an error means the queue
    /// message should come back later.
    pub async fn handle_batch(self: &Arc<Self>, bodies: &[Option<&str>]) -> Vec<ApiResult<Report>> {
        let jobs: Vec<ApiResult<Uuid>> = bodies
            .iter()
            .map(|body| {
                let body =
                    body.ok_or_else(|| ApiError::validation("the queue message has no body"))?;
                let job: QueueJob = serde_json::from_str(body).map_err(|e| {
                    ApiError::validation(format!(
                        "a message job is {{\"message_id\": <uuid>}}: {e}"
                    ))
                })?;
                Ok(job.message_id)
            })
            .collect();
        let ids: Vec<Uuid> = jobs
            .iter()
            .filter_map(|j| j.as_ref().ok().copied())
            .collect();
        // Its own task, so a panic fails this batch and not the worker.
        let worker = self.clone();
        let batch = ids.clone();
        let delivered = tokio::spawn(async move {
            delivery::deliver_batch(&worker.ctx, &*worker.provider, &*worker.queue, &batch).await
        })
        .await;
        let delivered: Vec<ApiResult<Report>> = match delivered {
            Ok(results) => results,
            Err(e) => {
                tracing::error!(error_id = %new_error_id(), error = %e, "a delivery batch died");
                ids.iter()
                    .map(|_| {
                        Err(ApiError::internal(anyhow::anyhow!(
                            "the delivery batch died"
                        )))
                    })
                    .collect()
            }
        };
        let mut delivered = delivered.into_iter().zip(ids);
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            let (r, id) = match job {
                Ok(_) => match delivered.next() {
                    Some((r, id)) => (r, Some(id)),
                    None => (
                        Err(ApiError::internal(anyhow::anyhow!(
                            "no result for a message"
                        ))),
                        None,
                    ),
                },
                Err(e) => (Err(e), None),
            };
            self.heartbeat
                .record(matches!(&r, Ok(rep) if rep.step != Step::Failed));
            if let Err(e) = &r {
                tracing::error!(
                    error_id = %new_error_id(),
                    message_id = ?id,
                    error = %e,
                    cause = ?e.cause,
                    "delivery could not be processed; the queue will bring it back"
                );
            }
            results.push(r);
        }
        results
    }

    /// Handles `messages` as one batch, then settles each on the queue:
    /// deleted when done, or made visible again after its delay.
    pub async fn process(self: &Arc<Self>, messages: Vec<ReceivedMessage>) -> BatchTally {
        let mut tally = BatchTally {
            received: messages.len(),
            ..Default::default()
        };
        let bodies: Vec<Option<&str>> = messages.iter().map(|m| Some(m.body.as_str())).collect();
        let results = self.handle_batch(&bodies).await;
        join_all(
            messages
                .iter()
                .zip(&results)
                .map(|(m, r)| self.settle(m, r)),
        )
        .await;
        for r in &results {
            tally.add(r);
        }
        tally
    }

    /// Deletes a finished queue message; one to come back is kept.
    async fn settle(&self, m: &ReceivedMessage, r: &ApiResult<Report>) {
        if self.keep(&m.id, Some(&m.receipt_handle), r).await {
            return;
        }
        if let Err(e) = self.queue.delete(&m.receipt_handle).await {
            tracing::warn!(queue_message_id = %m.id, error = %e,
                "deleting a finished queue message failed; it will be delivered again (harmlessly)");
        }
    }

    /// What both ways of running do with a queue message after `r`: false
    /// when it is finished; true when the queue should keep it, after
    /// setting when it comes back if the report says (otherwise, as after
    /// an error, it comes back when its visibility timeout ends).
    async fn keep(&self, queue_id: &str, receipt: Option<&str>, r: &ApiResult<Report>) -> bool {
        match r {
            Ok(Report {
                disposition: Disposition::Ack,
                ..
            }) => false,
            Ok(Report {
                disposition: Disposition::Later(d),
                ..
            }) => {
                if let Some(handle) = receipt {
                    let d = (*d).min(crate::queue::MAX_VISIBILITY);
                    if let Err(e) = self.queue.change_visibility(handle, d).await {
                        tracing::warn!(queue_message_id = %queue_id, error = %e,
                            "could not delay the queue message; it returns after its visibility timeout");
                    }
                }
                true
            }
            Err(_) => true,
        }
    }

    /// Receives up to the batch size (`LEDGERLINE_WORKER_BATCH_SIZE`) and
    /// processes it. The local loop and tests call this.
    pub async fn work_once(self: &Arc<Self>) -> Result<BatchTally, QueueError> {
        let want = self.ctx.config.messages.worker_batch_size.max(1);
        let visibility = self.ctx.config.messages.delivery_timeout + Duration::from_secs(50);
        let mut batch = Vec::new();
        while batch.len() < want {
            let n = (want - batch.len()).min(MAX_RECEIVE);
            let got = self.queue.receive(n, visibility, Duration::ZERO).await?;
            let short = got.len() < n;
            batch.extend(got);
            if short {
                break;
            }
        }
        if batch.is_empty() {
            return Ok(BatchTally::default());
        }
        Ok(self.process(batch).await)
    }

    /// The Lambda handler: messages to look at again are reported as batch
    /// item failures (after their visibility is set to when that should
    /// be); the rest are deleted by the event source mapping.
    pub async fn handle_sqs_batch(self: &Arc<Self>, event: SqsEvent) -> SqsBatchResponse {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let bodies: Vec<Option<&str>> = event.records.iter().map(|r| r.body.as_deref()).collect();
        let results = self.handle_batch(&bodies).await;
        let keep = join_all(event.records.iter().zip(&results).map(|(record, r)| {
            let id = record.message_id.as_deref().unwrap_or_default();
            self.keep(id, record.receipt_handle.as_deref(), r)
        }))
        .await;
        let mut response = SqsBatchResponse::default();
        for (record, keep) in event.records.iter().zip(keep) {
            if keep {
                let mut f = BatchItemFailure::default();
                f.item_identifier = record.message_id.clone().unwrap_or_default();
                response.batch_item_failures.push(f);
            }
        }
        self.heartbeat.maybe_beat();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        response
    }

    /// The local loop until `shutdown` turns true (or its sender goes).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let poll = self.ctx.config.messages.worker_poll;
        let mut last_sweep: Option<Instant> = None;
        tracing::info!(
            batch_size = self.ctx.config.messages.worker_batch_size,
            poll_ms = poll.as_millis() as u64,
            "message worker polling the queue"
        );
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                if let Err(e) = delivery::sweep(&self.ctx, SWEEP_GRACE).await {
                    tracing::warn!(error = %e, cause = ?e.cause, "sweep failed; next try in 30 s");
                }
            }
            let work = self.work_once();
            tokio::pin!(work);
            let idle = tokio::select! {
                r = &mut work => match r {
                    Ok(t) => t.received == 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "message queue unavailable; retrying");
                        true
                    }
                },
                _ = stopped(&mut shutdown) => {
                    tracing::info!("shutdown asked: finishing the current batch (up to 5 s)");
                    if tokio::time::timeout(SHUTDOWN_GRACE, work).await.is_err() {
                        tracing::warn!("the batch did not finish within 5 s; its messages will be \
                                        delivered again after their lease");
                    }
                    break;
                }
            };
            self.heartbeat.maybe_beat();
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = stopped(&mut shutdown) => break,
                }
            }
        }
        let (processed, failed) = self.heartbeat.counts();
        tracing::info!(processed, failed, "message worker stopped");
    }

    /// Deliveries running in this instance right now (Lambda shutdown waits
    /// for them).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// `ledgerline serve`'s message worker on the Postgres queue.
pub async fn run_local(ctx: Arc<AppContext>, shutdown: watch::Receiver<bool>) {
    match MessageWorker::from_context(ctx, WORKER_FUNCTION) {
        Ok(w) => Arc::new(w).run(shutdown).await,
        Err(e) => tracing::error!(error = %e, "the message worker could not start"),
    }
}

fn lambda_config(function: &'static str) -> Result<Config, lambda_runtime::Error> {
    crate::logging::init();
    let config = Config::from_env().map_err(|e| {
        tracing::error!(error = %e, function, "invalid configuration");
        e
    })?;
    if config.queue_backend == QueueBackend::Sqs && config.messages.queue_url.is_none() {
        let e = "LEDGERLINE_MESSAGE_QUEUE_URL is required when LEDGERLINE_QUEUE_BACKEND is sqs \
                 (the default in Lambda)";
        tracing::error!(error = e, function, "invalid configuration");
        return Err(e.into());
    }
    Ok(config)
}

/// main() of `worker_message`.
pub async fn run_worker_message() -> Result<(), lambda_runtime::Error> {
    let config = lambda_config(WORKER_FUNCTION)?;
    let ctx = AppContext::new(config)?;
    let worker = Arc::new(MessageWorker::from_context(ctx, WORKER_FUNCTION)?);
    spawn_shutdown_hook(worker.clone());
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<SqsEvent>| {
            let worker = worker.clone();
            async move { Ok::<_, lambda_runtime::Error>(worker.handle_sqs_batch(event.payload).await) }
        },
    ))
    .await
}

/// main() of `cron_message_sweep`: any scheduler event runs one sweep.
pub async fn run_cron_message_sweep() -> Result<(), lambda_runtime::Error> {
    let config = lambda_config(SWEEP_FUNCTION)?;
    let ctx = AppContext::new(config)?;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |_event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let ctx = ctx.clone();
            async move {
                match delivery::sweep(&ctx, SWEEP_GRACE).await {
                    Ok(n) => Ok(serde_json::json!({"requeued": n})),
                    Err(e) => {
                        let error_id = new_error_id();
                        tracing::error!(error_id = %error_id, error = %e, cause = ?e.cause, "sweep failed");
                        Err(lambda_runtime::Error::from(format!("sweep failed ({error_id})")))
                    }
                }
            }
        },
    ))
    .await
}

/// Lambda stops an environment only between invocations, so a batch is
/// never cut short by a shutdown; Lambda sends SIGTERM (and allows a short
/// shutdown phase) only when an extension is registered. When it does, wait
/// up to 5 s for anything in flight, log a last heartbeat and exit.
fn spawn_shutdown_hook(worker: Arc<MessageWorker>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        term.recv().await;
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while worker.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (processed, failed) = worker.heartbeat.counts();
        tracing::info!(
            processed,
            failed,
            in_flight = worker.in_flight(),
            "message worker shutting down"
        );
        std::process::exit(0);
    });
    #[cfg(not(unix))]
    let _ = worker;
}
