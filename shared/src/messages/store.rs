//! Messages as the API sees them: accepting one (`send_message`), reading
//! one, listing them and a message's timeline. Every read is scoped to the
//! calling project: another project's message is "not found".

use crate::accounts::Actor;
use crate::context::AppContext;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::ledger::events::{self as ledger, NewEvent};
use crate::messages::projects::project_suspended;
use crate::messages::QueueJob;
use chrono::{DateTime, Utc};
use futures_util::future::try_join;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// The event type of a message sent without one.
pub const DEFAULT_EVENT_TYPE: &str = "message";
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
pub const MAX_RECIPIENT_CHARS: usize = 512;

pub const STATUSES: [&str; 4] = ["queued", "delivering", "delivered", "failed"];

/// The body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// Who the message is for, as the receiver understands it (an address,
    /// a user id, a phone number...). Delivered as is.
    pub recipient: Option<String>,
    /// Any JSON value except null: the message itself.
    #[serde(default)]
    pub body: Value,
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// What was accepted: the message is stored and queued.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub id: Uuid,
    pub status: &'static str,
    pub project_id: Uuid,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
}

fn check_event_type(v: &str) -> bool {
    (1..=100).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Validates a message; returns (recipient, event type, metadata, body bytes).
fn validate(input: &NewMessage) -> ApiResult<(String, String, Value, usize)> {
    let recipient = input
        .recipient
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::validation("'recipient' is required (a non-empty string)"))?;
    if recipient.chars().count() > MAX_RECIPIENT_CHARS || recipient.chars().any(char::is_control) {
        return Err(ApiError::validation(format!(
            "'recipient' must be at most {MAX_RECIPIENT_CHARS} characters, without control characters"
        )));
    }
    if input.body.is_null() {
        return Err(ApiError::validation(
            "'body' is required: any JSON value except null",
        ));
    }
    let event_type = input.event_type.as_deref().unwrap_or(DEFAULT_EVENT_TYPE);
    if !check_event_type(event_type) {
        return Err(ApiError::validation(
            "'event_type' must be 1 to 100 characters of A-Z a-z 0-9 _ . : -",
        ));
    }
    let mut metadata = Map::new();
    if let Some(m) = &input.metadata {
        if m.len() > MAX_METADATA_KEYS {
            return Err(ApiError::validation(format!(
                "'metadata' may have at most {MAX_METADATA_KEYS} keys"
            )));
        }
        for (k, v) in m {
            if k.is_empty()
                || k.chars().count() > MAX_METADATA_KEY_CHARS
                || v.chars().count() > MAX_METADATA_VALUE_CHARS
            {
                return Err(ApiError::validation(format!(
                    "'metadata' keys are 1 to {MAX_METADATA_KEY_CHARS} characters and values at \
                     most {MAX_METADATA_VALUE_CHARS}"
                )));
            }
            metadata.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let body_bytes = serde_json::to_vec(&input.body)
        .map(|b| b.len())
        .unwrap_or(0);
    Ok((
        recipient.to_string(),
        event_type.to_string(),
        Value::Object(metadata),
        body_bytes,
    ))
}

/// Accepts a message for the project of `project_id`: stores it as
/// `queued` with its `message.queued` event and a ledger event of the
/// organisation, in one transaction; then sends the queue message. If that
/// send fails the message is still safe in the database (`enqueued_at` is
/// cleared) and the sweeper queues it.
pub async fn send_message(
    ctx: &AppContext,
    project_id: Uuid,
    input: &NewMessage,
    idempotency_key: Option<&str>,
    actor: &Actor,
) -> ApiResult<Accepted> {
    let (recipient, event_type, metadata, body_bytes) = validate(input)?;
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    // FOR SHARE: a concurrent suspension (FOR UPDATE) waits for this
    // message, or this waits for it and sees the project suspended.
    let project = db::query_opt(
        &tx,
        "SELECT org_id, status, max_payload_bytes FROM projects WHERE id = $1 FOR SHARE",
        &[&project_id],
    )
    .await?
    .ok_or_else(|| ApiError::not_found("project"))?;
    let org_id: Uuid = project.get(0);
    let status: String = project.get(1);
    let max_payload: i32 = project.get(2);
    if status != "active" {
        return Err(project_suspended());
    }
    if body_bytes > max_payload.max(0) as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "the message body is {body_bytes} bytes of JSON; this project's limit is \
                 {max_payload} bytes"
            ),
            "Send a smaller body, or ask your operator for a higher max_payload_bytes.",
        ));
    }
    let id = Uuid::new_v4();
    let body_sha256 = hex::encode(Sha256::digest(
        serde_json::to_vec(&input.body).unwrap_or_default(),
    ));
    let ledger_event = NewEvent {
        event_type: "message.queued",
        subject: format!("message:{id}"),
        actor: actor.label(),
        request_id: actor.request_id.clone(),
        payload: json!({"project_id": project_id, "event_type": event_type,
                        "body_sha256": body_sha256}),
    };
    let queued = json!({"request_id": actor.request_id});
    // The message with its first timeline event, and its ledger event: two
    // independent statements, sent together (one round trip).
    let insert = async {
        let row = db::query_one(
            &tx,
            "WITH m AS (
                 INSERT INTO messages (id, project_id, org_id, recipient, event_type, body,
                                       metadata, idempotency_key, request_id, enqueued_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
                 RETURNING id, project_id, created_at
             ), e AS (
                 INSERT INTO message_events (message_id, project_id, event_type, details)
                 SELECT id, project_id, 'message.queued', $10 FROM m
             )
             SELECT created_at FROM m",
            &[
                &id,
                &project_id,
                &org_id,
                &recipient,
                &event_type,
                &input.body,
                &metadata,
                &idempotency_key,
                &actor.request_id,
                &queued,
            ],
        )
        .await?;
        Ok::<DateTime<Utc>, ApiError>(row.get(0))
    };
    let append = ledger::append(&tx, org_id, &ledger_event, actor.at);
    let (created_at, pending) = try_join(insert, append).await?;
    tx.commit().await?;
    ledger::settle_committed(&db, org_id, pending).await;
    // Never hold a connection while the (Postgres) queue takes one.
    drop(db);
    let job = QueueJob { message_id: id };
    if let Err(e) = ctx.message_queue.send(&job.body(), Duration::ZERO).await {
        tracing::error!(
            message_id = %id,
            project_id = %project_id,
            error = %e,
            "queueing a stored message failed; the sweeper will queue it"
        );
        if let Ok(db) = ctx.db().await {
            let _ = db
                .execute(
                    "UPDATE messages SET enqueued_at = NULL WHERE id = $1",
                    &[&id],
                )
                .await;
        }
    }
    tracing::info!(message_id = %id, project_id = %project_id, "message queued");
    Ok(Accepted {
        id,
        status: "queued",
        project_id,
        event_type,
        created_at,
    })
}

/// Appends to a message's timeline (`message_events`).
pub async fn insert_event(
    db: &impl deadpool_postgres::GenericClient,
    message_id: Uuid,
    project_id: Uuid,
    event_type: &'static str,
    details: Value,
) -> ApiResult<()> {
    db::execute(
        db,
        "INSERT INTO message_events (message_id, project_id, event_type, details)
         VALUES ($1, $2, $3, $4)",
        &[&message_id, &project_id, &event_type, &details],
    )
    .await?;
    Ok(())
}

/// A message as the API shows it.
#[derive(Debug, Serialize)]
pub struct Message {
    pub id: Uuid,
    pub project_id: Uuid,
    pub status: String,
    pub recipient: String,
    pub event_type: String,
    pub body: Value,
    pub metadata: Value,
    pub attempts: i32,
    /// While queued: not delivered before this.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

const MESSAGE_COLUMNS: &str = "id, project_id, status, recipient, event_type, body, metadata, \
     attempts, next_attempt_at, last_error, created_at, updated_at, finished_at";

fn message_from_row(row: &tokio_postgres::Row) -> Message {
    let status: String = row.get(2);
    let next: DateTime<Utc> = row.get(8);
    Message {
        id: row.get(0),
        project_id: row.get(1),
        next_attempt_at: (status == "queued").then_some(next),
        status,
        recipient: row.get(3),
        event_type: row.get(4),
        body: row.get(5),
        metadata: row.get(6),
        attempts: row.get(7),
        last_error: row.get(9),
        created_at: row.get(10),
        updated_at: row.get(11),
        finished_at: row.get(12),
    }
}

pub async fn get_message(
    db: &impl GenericClient,
    project_id: Uuid,
    id: Uuid,
) -> ApiResult<Message> {
    let row = db
        .query_opt(
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND project_id = $2"),
            &[&id, &project_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(message_from_row(&row))
}

/// The project's messages, newest first, after the cursor (a message id
/// from the previous page), optionally only those in one status.
pub async fn list_messages(
    db: &impl GenericClient,
    project_id: Uuid,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> ApiResult<(Vec<Message>, bool)> {
    if let Some(s) = status {
        if !STATUSES.contains(&s) {
            return Err(ApiError::bad_request(
                "invalid_status",
                format!("'status' must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let rows = db
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                  WHERE project_id = $1
                    AND ($2::text IS NULL OR status = $2)
                    AND ($3::uuid IS NULL OR position < (
                         SELECT position FROM messages WHERE id = $3 AND project_id = $1))
                  ORDER BY position DESC LIMIT $4"
            ),
            &[&project_id, &status, &after, &(limit + 1)],
        )
        .await?;
    let has_more = rows.len() as i64 > limit;
    Ok((
        rows.iter()
            .take(limit as usize)
            .map(message_from_row)
            .collect(),
        has_more,
    ))
}

#[derive(Debug, Serialize)]
pub struct MessageEvent {
    pub id: i64,
    pub event_type: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

/// A message's timeline, oldest first, after the cursor (an event id).
pub async fn list_events(
    db: &impl GenericClient,
    project_id: Uuid,
    message_id: Uuid,
    after: Option<i64>,
    limit: i64,
) -> ApiResult<(Vec<MessageEvent>, bool)> {
    // The message must be this project's; otherwise it does not exist.
    get_message(db, project_id, message_id).await?;
    let rows = db
        .query(
            "SELECT id, event_type, details, created_at FROM message_events
              WHERE message_id = $1 AND project_id = $2 AND ($3::bigint IS NULL OR id > $3)
              ORDER BY id LIMIT $4",
            &[&message_id, &project_id, &after, &(limit + 1)],
        )
        .await?;
    let has_more = rows.len() as i64 > limit;
    Ok((
        rows.iter()
            .take(limit as usize)
            .map(|r| MessageEvent {
                id: r.get(0),
                event_type: r.get(1),
                details: r.get(2),
                created_at: r.get(3),
            })
            .collect(),
        has_more,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(v: Value) -> Result<NewMessage, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn messages_are_validated() {
        let ok = msg(json!({"recipient": "a@b.c", "body": {"x": 1}})).unwrap();
        let (r, t, m, n) = validate(&ok).unwrap();
        assert_eq!((r.as_str(), t.as_str()), ("a@b.c", DEFAULT_EVENT_TYPE));
        assert_eq!(m, json!({}));
        assert_eq!(n, br#"{"x":1}"#.len());
        assert!(msg(json!({"recipient": "a", "body": 1, "extra": true})).is_err());
        assert!(msg(json!({"recipient": "a", "body": 1, "metadata": {"k": 1}})).is_err());
        for bad in [
            json!({"body": 1}),
            json!({"recipient": " ", "body": 1}),
            json!({"recipient": "a"}),
            json!({"recipient": "a", "body": null}),
            json!({"recipient": "a", "body": 1, "event_type": "has space"}),
            json!({"recipient": "a", "body": 1, "event_type": ""}),
            json!({"recipient": "a\u{7}", "body": 1}),
        ] {
            let m = msg(bad.clone()).unwrap();
            assert!(validate(&m).is_err(), "{bad}");
        }
        let many: BTreeMap<String, String> = (0..51)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let m = msg(json!({"recipient": "a", "body": 1, "metadata": many})).unwrap();
        assert!(validate(&m).is_err());
        let m =
            msg(json!({"recipient": "a", "body": "x", "event_type": "user.created:v1"})).unwrap();
        assert!(validate(&m).is_ok());
    }
}
