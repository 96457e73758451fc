//! An [`SqsQueue`] whose client is made from the standard AWS environment
//! (`AWS_ENDPOINT_URL` included) the first time it is used, so building an
//! `AppContext` does no I/O and a Lambda cold start stays cheap.

use super::{Queue, QueueError, ReceivedMessage, SqsQueue};
use async_trait::async_trait;
use std::time::Duration;

pub struct LazySqsQueue {
    queue_url: String,
    queue: tokio::sync::OnceCell<SqsQueue>,
}

impl std::fmt::Debug for LazySqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySqsQueue")
            .field("queue_url", &self.queue_url)
            .finish_non_exhaustive()
    }
}

impl LazySqsQueue {
    pub fn new(queue_url: impl Into<String>) -> Self {
        LazySqsQueue {
            queue_url: queue_url.into(),
            queue: tokio::sync::OnceCell::new(),
        }
    }

    async fn queue(&self) -> &SqsQueue {
        self.queue
            .get_or_init(|| async {
                let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), self.queue_url.clone())
            })
            .await
    }
}

#[async_trait]
impl Queue for LazySqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        self.queue().await.send(body, delay).await
    }

    async fn send_batch(&self, messages: &[(String, Duration)]) -> Result<Vec<String>, QueueError> {
        self.queue().await.send_batch(messages).await
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.queue().await.receive(max, visibility, wait).await
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        self.queue().await.delete(receipt_handle).await
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        self.queue()
            .await
            .change_visibility(receipt_handle, timeout)
            .await
    }
}
