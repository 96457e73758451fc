//! The `Queue` port: at-least-once work queues between the API and workers.
//!
//! Two adapters keep SQS's semantics (proved by `tests/adapters.rs`):
//! [`SqsQueue`] in AWS and [`PgQueue`], a table in Postgres, for `ledgerline
//! serve`. Both enforce SQS's limits, so code that works locally works in
//! AWS:
//!
//! - a message may be delivered more than once; consumers delete it when done;
//! - a delayed message is invisible until its delay passes (at most 15 min);
//! - a received message is invisible for its visibility timeout (at most
//!   12 h), then delivered again with `receive_count` one higher;
//! - each delivery has its own receipt handle, and only the latest one can
//!   delete the message or change its visibility;
//! - bodies are at most 256 KiB of text; at most 10 messages per receive;
//!   long polling waits at most 20 s.

mod lazy;
mod pg;
mod sqs;

pub use lazy::LazySqsQueue;
pub use pg::PgQueue;
pub use sqs::SqsQueue;

use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// SQS's limit on a message body (bytes).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// SQS's limit on a message delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// SQS's limit on a visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// SQS's limit on a long-poll wait.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's limit on messages per receive.
pub const MAX_RECEIVE: usize = 10;

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The same for every delivery of the message.
    pub id: String,
    pub body: String,
    /// Names this delivery: pass it to `delete` or `change_visibility`.
    pub receipt_handle: String,
    /// 1 on the first delivery, 2 on the second, ...
    pub receive_count: u32,
}

#[derive(Debug)]
pub enum QueueError {
    /// An argument breaks the queue's limits; the message says which.
    InvalidArgument(String),
    /// The receipt handle is malformed, or (for `change_visibility`) no
    /// longer names the latest delivery of a message that still exists.
    InvalidReceiptHandle,
    /// The backend failed (network, database, permissions, ...).
    Backend(anyhow::Error),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::InvalidArgument(why) => write!(f, "invalid queue request: {why}"),
            QueueError::InvalidReceiptHandle => {
                f.write_str("the receipt handle is invalid or no longer current")
            }
            QueueError::Backend(e) => write!(f, "queue failed: {e:#}"),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Backend(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl QueueError {
    pub(crate) fn backend(e: impl Into<anyhow::Error>, context: &'static str) -> Self {
        QueueError::Backend(e.into().context(context))
    }
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Enqueues `body`, invisible for `delay`. Returns the message id.
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError>;

    /// Enqueues many messages (body, delay); returns their ids in order. All
    /// are checked before any is sent, but a backend failure part-way can
    /// leave the earlier ones sent (SQS batches hold 10 messages).
    async fn send_batch(&self, messages: &[(String, Duration)]) -> Result<Vec<String>, QueueError>;

    /// Up to `max` (1..=10) visible messages, each then invisible for
    /// `visibility`. Waits up to `wait` (at most 20 s) for one to arrive;
    /// returns an empty list if none does.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Deletes the message this delivery names. Succeeds, deleting nothing,
    /// if the message is already gone or was delivered again since (SQS's
    /// documented behaviour for a stale handle).
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;

    /// Makes the delivered message invisible for `timeout` from now (0 makes
    /// it visible at once): extend it while work runs long, or give a
    /// message back early.
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;
}

/// An SQS queue client for `queue_url` from the standard AWS environment
/// (`AWS_ENDPOINT_URL` included).
pub async fn sqs_queue(queue_url: impl Into<String>) -> Arc<dyn Queue> {
    let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Arc::new(SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk_config),
        queue_url,
    ))
}

pub(crate) fn check_message(body: &str, delay: Duration) -> Result<(), QueueError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(QueueError::InvalidArgument(format!(
            "a message body is at most {MAX_BODY_BYTES} bytes, not {}",
            body.len()
        )));
    }
    if body.is_empty() {
        return Err(QueueError::InvalidArgument(
            "a message body may not be empty".into(),
        ));
    }
    // SQS accepts only XML-safe characters in bodies.
    if body
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(QueueError::InvalidArgument(
            "a message body may not contain control characters other than tab, CR and LF".into(),
        ));
    }
    if delay > MAX_DELAY {
        return Err(QueueError::InvalidArgument(format!(
            "a delay is at most {} s",
            MAX_DELAY.as_secs()
        )));
    }
    Ok(())
}

pub(crate) fn check_receive(
    max: usize,
    visibility: Duration,
    wait: Duration,
) -> Result<(), QueueError> {
    if !(1..=MAX_RECEIVE).contains(&max) {
        return Err(QueueError::InvalidArgument(format!(
            "receive takes 1 to {MAX_RECEIVE} messages, not {max}"
        )));
    }
    check_visibility(visibility)?;
    if wait > MAX_WAIT {
        return Err(QueueError::InvalidArgument(format!(
            "a receive waits at most {} s",
            MAX_WAIT.as_secs()
        )));
    }
    Ok(())
}

pub(crate) fn check_visibility(visibility: Duration) -> Result<(), QueueError> {
    if visibility > MAX_VISIBILITY {
        return Err(QueueError::InvalidArgument(format!(
            "a visibility timeout is at most {} s",
            MAX_VISIBILITY.as_secs()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_limits_are_enforced_up_front() {
        assert!(check_message("x", Duration::ZERO).is_ok());
        assert!(check_message("x", MAX_DELAY).is_ok());
        assert!(check_message("x", MAX_DELAY + Duration::from_secs(1)).is_err());
        assert!(check_message(&"x".repeat(MAX_BODY_BYTES), Duration::ZERO).is_ok());
        assert!(check_message(&"x".repeat(MAX_BODY_BYTES + 1), Duration::ZERO).is_err());
        assert!(check_message("", Duration::ZERO).is_err());
        assert!(check_message("nul\0", Duration::ZERO).is_err());
        assert!(check_message("{\"a\":\n\t1}", Duration::ZERO).is_ok());

        let s = Duration::from_secs;
        assert!(check_receive(1, s(30), s(20)).is_ok());
        assert!(check_receive(0, s(30), s(0)).is_err());
        assert!(check_receive(11, s(30), s(0)).is_err());
        assert!(check_receive(10, s(30), s(21)).is_err());
        assert!(check_receive(10, MAX_VISIBILITY + s(1), s(0)).is_err());
    }
}
