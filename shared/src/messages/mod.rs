//! Message delivery: projects and their limits, `POST /v1/messages`, the
//! delivery worker (Standard Webhooks over HTTPS, retries with backoff),
//! suspension, and the queue that connects the API to the worker.
//!
//! A message's life: `queued` (stored with a `message.queued` event and a
//! ledger event, then a queue message `{"message_id"}` is sent) →
//! `delivering` (claimed by exactly one worker, with a lease) → `delivered`
//! or `failed`, or back to `queued` with a later `next_attempt_at` for a
//! retry. The database row, not the queue message, is the truth: a queue
//! message is only a nudge, so duplicates are harmless and a lost one is
//! found again by the sweeper.

pub mod config;
pub mod delivery;
pub mod projects;
pub mod retry;
pub mod store;
pub mod webhook;
pub mod worker;

pub use config::MessagesConfig;

use crate::config::{Config, QueueBackend};
use crate::queue::{LazySqsQueue, PgQueue, Queue, QueueError, ReceivedMessage};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Duration;

/// The Postgres queue's dead-letter queue for messages, and after how many
/// receives a queue message goes there (the same as the SQS redrive policy
/// in template.yaml).
pub const LOCAL_DEAD_LETTER_QUEUE: &str = "messages-dlq";
pub const MAX_RECEIVES: u32 = 5;

/// The message queue for this process, built without I/O: the Postgres
/// queue, or SQS at `LEDGERLINE_MESSAGE_QUEUE_URL` (client made on first use).
pub fn message_queue(config: &Config, pool: &Pool) -> Arc<dyn Queue> {
    match (config.queue_backend, &config.messages.queue_url) {
        (QueueBackend::Postgres, _) => Arc::new(
            PgQueue::new(pool.clone(), config::LOCAL_MESSAGE_QUEUE)
                .with_dead_letter_queue(LOCAL_DEAD_LETTER_QUEUE, MAX_RECEIVES),
        ),
        (QueueBackend::Sqs, Some(url)) => Arc::new(LazySqsQueue::new(url.clone())),
        (QueueBackend::Sqs, None) => Arc::new(UnconfiguredQueue),
    }
}

/// Stands in where the SQS backend is selected but no queue URL is set (a
/// function that never sends messages): every call fails with the reason.
struct UnconfiguredQueue;

impl UnconfiguredQueue {
    fn err() -> QueueError {
        QueueError::Backend(anyhow::anyhow!(
            "LEDGERLINE_MESSAGE_QUEUE_URL is not set for this function"
        ))
    }
}

#[async_trait]
impl Queue for UnconfiguredQueue {
    async fn send(&self, _: &str, _: Duration) -> Result<String, QueueError> {
        Err(Self::err())
    }
    async fn send_batch(&self, _: &[(String, Duration)]) -> Result<Vec<String>, QueueError> {
        Err(Self::err())
    }
    async fn receive(
        &self,
        _: usize,
        _: Duration,
        _: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        Err(Self::err())
    }
    async fn delete(&self, _: &str) -> Result<(), QueueError> {
        Err(Self::err())
    }
    async fn change_visibility(&self, _: &str, _: Duration) -> Result<(), QueueError> {
        Err(Self::err())
    }
}

/// The body of a queue message: which message to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueJob {
    pub message_id: uuid::Uuid,
}

impl QueueJob {
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
