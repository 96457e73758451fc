//! `SqsQueue`: the queue port on Amazon SQS (aws-sdk-sqs).
//!
//! SQS counts delays and timeouts in whole seconds; shorter durations are
//! rounded up, so a message is never visible earlier than asked.

use super::{
    check_message, check_receive, check_visibility, Queue, QueueError, ReceivedMessage,
    MAX_BODY_BYTES, MAX_WAIT,
};
use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageSystemAttributeName, SendMessageBatchRequestEntry};
use std::time::Duration;

/// SQS's limit on messages per SendMessageBatch.
const BATCH_LEN: usize = 10;
/// SQS's limit on the summed bodies of one SendMessageBatch.
const BATCH_BYTES: usize = MAX_BODY_BYTES;

#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn sdk_error<E>(e: SdkError<E>, context: &'static str) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    QueueError::Backend(anyhow::anyhow!("{}", DisplayErrorContext(&e)).context(context))
}

/// SQS's ways of saying a receipt handle is malformed or no longer in flight.
fn is_receipt_error<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(
        e.code(),
        Some(
            "ReceiptHandleIsInvalid"
                | "AWS.SimpleQueueService.ReceiptHandleIsInvalid"
                | "MessageNotInflight"
                | "AWS.SimpleQueueService.MessageNotInflight"
        )
    )
}

/// Splits messages into SendMessageBatch calls: at most 10 messages and
/// 256 KiB of bodies each. Returns index ranges into `messages`.
fn batches(messages: &[(String, Duration)]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (body, _)) in messages.iter().enumerate() {
        if i > start && (i - start == BATCH_LEN || bytes + body.len() > BATCH_BYTES) {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += body.len();
    }
    if start < messages.len() {
        ranges.push(start..messages.len());
    }
    ranges
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        check_message(body, delay)?;
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(whole_seconds(delay))
            .send()
            .await
            .map_err(|e| sdk_error(e, "sending a message"))?;
        out.message_id()
            .map(str::to_string)
            .ok_or_else(|| QueueError::Backend(anyhow::anyhow!("SQS returned no message id")))
    }

    async fn send_batch(&self, messages: &[(String, Duration)]) -> Result<Vec<String>, QueueError> {
        for (body, delay) in messages {
            check_message(body, *delay)?;
        }
        let mut ids = Vec::with_capacity(messages.len());
        for range in batches(messages) {
            let offset = range.start;
            let entries = messages[range.clone()]
                .iter()
                .enumerate()
                .map(|(i, (body, delay))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .delay_seconds(whole_seconds(*delay))
                        .build()
                        .map_err(|e| QueueError::InvalidArgument(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_error(e, "sending a batch of messages"))?;
            if let Some(failed) = out.failed().first() {
                return Err(QueueError::Backend(anyhow::anyhow!(
                    "SQS refused {} of a batch of {} (message {}: {} {}); {} earlier messages were sent",
                    out.failed().len(),
                    range.len(),
                    failed.id(),
                    failed.code(),
                    failed.message().unwrap_or(""),
                    offset + out.successful().len(),
                )));
            }
            let mut batch_ids = vec![None; range.len()];
            for ok in out.successful() {
                if let Some(slot) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| batch_ids.get_mut(i))
                {
                    *slot = Some(ok.message_id().to_string());
                }
            }
            for id in batch_ids {
                ids.push(id.ok_or_else(|| {
                    QueueError::Backend(anyhow::anyhow!(
                        "SQS did not report every message of a batch"
                    ))
                })?);
            }
        }
        Ok(ids)
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        check_receive(max, visibility, wait)?;
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(i32::try_from(max).unwrap_or(1))
            .visibility_timeout(whole_seconds(visibility))
            .wait_time_seconds(whole_seconds(wait).min(whole_seconds(MAX_WAIT)))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| sdk_error(e, "receiving messages"))?;
        out.messages()
            .iter()
            .map(|m| {
                let missing = |what| {
                    QueueError::Backend(anyhow::anyhow!("SQS sent a message without {what}"))
                };
                Ok(ReceivedMessage {
                    id: m.message_id().ok_or_else(|| missing("an id"))?.to_string(),
                    body: m.body().unwrap_or_default().to_string(),
                    receipt_handle: m
                        .receipt_handle()
                        .ok_or_else(|| missing("a receipt handle"))?
                        .to_string(),
                    receive_count: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(1),
                })
            })
            .collect()
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| {
                if is_receipt_error(&e) {
                    QueueError::InvalidReceiptHandle
                } else {
                    sdk_error(e, "deleting a message")
                }
            })?;
        Ok(())
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        check_visibility(timeout)?;
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(whole_seconds(timeout))
            .send()
            .await
            .map_err(|e| {
                if is_receipt_error(&e) {
                    QueueError::InvalidReceiptHandle
                } else {
                    sdk_error(e, "changing a message's visibility")
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn batches_respect_count_and_size() {
        let small = |n: usize| -> Vec<(String, Duration)> {
            (0..n).map(|i| (format!("m{i}"), Duration::ZERO)).collect()
        };
        assert_eq!(batches(&small(0)), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(batches(&small(25)), vec![0..10, 10..20, 20..25]);
        let big = "x".repeat(100 * 1024);
        let msgs: Vec<_> = (0..5).map(|_| (big.clone(), Duration::ZERO)).collect();
        assert_eq!(batches(&msgs), vec![0..2, 2..4, 4..5]);
    }
}
