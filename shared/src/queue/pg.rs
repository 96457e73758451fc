//! `PgQueue`: SQS semantics on a Postgres table (`local_queue_messages`,
//! migration V2), for `ledgerline serve` and anything else that runs
//! without AWS.
//!
//! A message row is visible when `visible_at <= now()`. Receiving one moves
//! `visible_at` forward by the visibility timeout, adds one to
//! `receive_count` and draws a fresh `receipt_token`; the receipt handle
//! carries that token, so once the message is delivered again an older
//! handle matches nothing. Receivers take rows with `FOR UPDATE SKIP
//! LOCKED`, so concurrent receivers never get the same message at once.
//! All times come from the database clock, so every process agrees on them.
//!
//! Sending commits synchronously: a sent message is never lost. Receiving,
//! deleting and changing visibility commit asynchronously (`lazy` below, no
//! WAL flush of their own): what a database crash can take back of them
//! only makes a message visible again, which SQS's at-least-once delivery
//! allows and every consumer here handles.

use super::{check_message, check_receive, check_visibility, Queue, QueueError, ReceivedMessage};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// How often an empty long poll looks again. Polling (not LISTEN) because
/// delayed and timed-out messages become visible without any event.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct PgQueue {
    pool: Pool,
    name: String,
    dead_letter: Option<DeadLetter>,
}

#[derive(Debug, Clone)]
struct DeadLetter {
    queue_name: String,
    max_receive_count: u32,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue")
            .field("name", &self.name)
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

/// A receipt handle: which message, and which delivery of it.
fn receipt_handle(id: Uuid, token: Uuid) -> String {
    format!("{id}:{token}")
}

fn parse_receipt_handle(handle: &str) -> Result<(Uuid, Uuid), QueueError> {
    let (id, token) = handle
        .split_once(':')
        .ok_or(QueueError::InvalidReceiptHandle)?;
    let id = Uuid::parse_str(id).map_err(|_| QueueError::InvalidReceiptHandle)?;
    let token = Uuid::parse_str(token).map_err(|_| QueueError::InvalidReceiptHandle)?;
    Ok((id, token))
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgQueue {
    /// The queue called `queue_name` in the database behind `pool`. Queues
    /// share the table and are told apart by name.
    pub fn new(pool: Pool, queue_name: impl Into<String>) -> Self {
        PgQueue {
            pool,
            name: queue_name.into(),
            dead_letter: None,
        }
    }

    /// Like an SQS redrive policy: a message received `max_receive_count`
    /// times and still not deleted moves to the queue `dead_letter_queue`
    /// when a receive next picks it, instead of being delivered again.
    pub fn with_dead_letter_queue(
        mut self,
        dead_letter_queue: impl Into<String>,
        max_receive_count: u32,
    ) -> Self {
        self.dead_letter = Some(DeadLetter {
            queue_name: dead_letter_queue.into(),
            max_receive_count: max_receive_count.max(1),
        });
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, QueueError> {
        self.pool
            .get()
            .await
            .map_err(|e| QueueError::backend(e, "getting a database connection for the queue"))
    }

    /// One receive: the oldest visible messages, up to `max`. With a
    /// dead-letter queue, a picked message already received
    /// `max_receive_count` times moves there instead of being returned (as
    /// SQS does on a receive), in the same statement. Returns the messages
    /// and how many were moved.
    async fn receive_once(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<(Vec<ReceivedMessage>, usize), QueueError> {
        let client = self.client().await?;
        let max_receives = self
            .dead_letter
            .as_ref()
            .map(|d| i32::try_from(d.max_receive_count).unwrap_or(i32::MAX));
        let dead_letter = self.dead_letter.as_ref().map(|d| d.queue_name.as_str());
        let rows = crate::db::query(
            &client,
            "WITH picked AS (
                     SELECT id, coalesce(receive_count >= $4::int, false) AS exhausted
                     FROM local_queue_messages
                     WHERE queue_name = $1 AND visible_at <= now()
                     ORDER BY visible_at, sent_at
                     LIMIT $2
                     FOR UPDATE SKIP LOCKED
                 ), lazy AS (SELECT set_config('synchronous_commit', 'off', true))
                 UPDATE local_queue_messages AS m
                 SET queue_name = CASE WHEN picked.exhausted THEN $5::text ELSE m.queue_name END,
                     visible_at = CASE WHEN picked.exhausted THEN now()
                                       ELSE now() + make_interval(secs => $3) END,
                     receive_count = m.receive_count + CASE WHEN picked.exhausted THEN 0 ELSE 1 END,
                     receipt_token = CASE WHEN picked.exhausted THEN NULL ELSE gen_random_uuid() END
                 FROM picked, lazy WHERE m.id = picked.id
                 RETURNING m.id, m.body, m.receipt_token, m.receive_count, m.sent_at, picked.exhausted",
            &[
                &self.name,
                &(max as i64),
                &seconds(visibility),
                &max_receives,
                &dead_letter,
            ],
        )
        .await
        .map_err(|e| QueueError::backend(e, "receiving messages"))?;
        let moved = rows.iter().filter(|r| r.get::<_, bool>(5)).count();
        let rows: Vec<_> = rows.into_iter().filter(|r| !r.get::<_, bool>(5)).collect();
        let mut messages: Vec<(chrono::DateTime<chrono::Utc>, ReceivedMessage)> = rows
            .iter()
            .map(|row| {
                let id: Uuid = row.get(0);
                let token: Uuid = row.get(2);
                let count: i32 = row.get(3);
                (
                    row.get(4),
                    ReceivedMessage {
                        id: id.to_string(),
                        body: row.get(1),
                        receipt_handle: receipt_handle(id, token),
                        receive_count: u32::try_from(count).unwrap_or(0),
                    },
                )
            })
            .collect();
        // RETURNING has no order; hand messages out oldest first.
        messages.sort_by_key(|(sent_at, _)| *sent_at);
        Ok((messages.into_iter().map(|(_, m)| m).collect(), moved))
    }
}

#[async_trait]
impl Queue for PgQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        check_message(body, delay)?;
        let id = Uuid::new_v4();
        crate::db::execute(
            &self.client().await?,
            "INSERT INTO local_queue_messages (id, queue_name, body, visible_at)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            &[&id, &self.name, &body, &seconds(delay)],
        )
        .await
        .map_err(|e| QueueError::backend(e, "sending a message"))?;
        Ok(id.to_string())
    }

    async fn send_batch(&self, messages: &[(String, Duration)]) -> Result<Vec<String>, QueueError> {
        for (body, delay) in messages {
            check_message(body, *delay)?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = messages.iter().map(|_| Uuid::new_v4()).collect();
        let bodies: Vec<&str> = messages.iter().map(|(b, _)| b.as_str()).collect();
        let delays: Vec<f64> = messages.iter().map(|(_, d)| seconds(*d)).collect();
        // One statement: the whole batch is sent or none of it is.
        self.client()
            .await?
            .execute(
                "INSERT INTO local_queue_messages (id, queue_name, body, visible_at)
                 SELECT id, $2, body, now() + make_interval(secs => delay)
                 FROM unnest($1::uuid[], $3::text[], $4::float8[]) AS batch (id, body, delay)",
                &[&ids, &self.name, &bodies, &delays],
            )
            .await
            .map_err(|e| QueueError::backend(e, "sending a batch of messages"))?;
        Ok(ids.iter().map(Uuid::to_string).collect())
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        check_receive(max, visibility, wait)?;
        let deadline = Instant::now() + wait;
        loop {
            let (messages, moved) = self.receive_once(max, visibility).await?;
            let now = Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            if moved > 0 {
                // All picked were dead-lettered: others may be waiting.
                continue;
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let (id, token) = parse_receipt_handle(receipt_handle)?;
        // Zero rows is fine: already deleted, or delivered again since.
        crate::db::execute(
            &self.client().await?,
            "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
             DELETE FROM local_queue_messages USING lazy
                 WHERE id = $1 AND receipt_token = $2 AND queue_name = $3",
            &[&id, &token, &self.name],
        )
        .await
        .map_err(|e| QueueError::backend(e, "deleting a message"))?;
        Ok(())
    }

    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        check_visibility(timeout)?;
        let (id, token) = parse_receipt_handle(receipt_handle)?;
        let changed = crate::db::execute(
            &self.client().await?,
            "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE local_queue_messages
                 SET visible_at = now() + make_interval(secs => $4)
                 FROM lazy WHERE id = $1 AND receipt_token = $2 AND queue_name = $3",
            &[&id, &token, &self.name, &seconds(timeout)],
        )
        .await
        .map_err(|e| QueueError::backend(e, "changing a message's visibility"))?;
        if changed == 0 {
            return Err(QueueError::InvalidReceiptHandle);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_handles_round_trip_and_reject_garbage() {
        let (id, token) = (Uuid::new_v4(), Uuid::new_v4());
        let handle = receipt_handle(id, token);
        assert_eq!(parse_receipt_handle(&handle).ok(), Some((id, token)));
        for bad in ["", "nonsense", "x:y", &id.to_string()] {
            assert!(matches!(
                parse_receipt_handle(bad),
                Err(QueueError::InvalidReceiptHandle)
            ));
        }
    }
}
