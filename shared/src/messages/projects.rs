//! Projects: who sends messages, where they are delivered, and within which
//! limits. Operators create, suspend, activate and re-limit them; every
//! change is a ledger event of the project's organisation, in the same
//! transaction (the operator audit row is written by the caller after the
//! commit).

use crate::accounts::Actor;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::ledger::events::{self as ledger, NewEvent, Pending};
use crate::messages::webhook::SigningSecret;
use crate::ratelimit::{self, Decision};
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::GenericClient;
use uuid::Uuid;

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// The tier a project gets when none is named.
pub const DEFAULT_TIER: &str = "free";
/// The largest message payload any tier may allow (the API's JSON limit).
pub const MAX_PAYLOAD_CEILING: i64 = 100 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub messages_per_day: i32,
    pub burst_per_minute: i32,
    pub max_payload_bytes: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    pub tier_id: String,
    pub limits: Limits,
    pub endpoint_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub suspended_at: Option<DateTime<Utc>>,
}

const PROJECT_COLUMNS: &str = "id, org_id, name, status, tier_id, messages_per_day, \
     burst_per_minute, max_payload_bytes, endpoint_url, created_at, updated_at, suspended_at";

fn project_from_row(row: &tokio_postgres::Row) -> Project {
    Project {
        id: row.get(0),
        org_id: row.get(1),
        name: row.get(2),
        status: row.get(3),
        tier_id: row.get(4),
        limits: Limits {
            messages_per_day: row.get(5),
            burst_per_minute: row.get(6),
            max_payload_bytes: row.get(7),
        },
        endpoint_url: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
        suspended_at: row.get(11),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub org_id: Uuid,
    pub name: String,
    pub endpoint_url: String,
    #[serde(default)]
    pub tier_id: Option<String>,
}

/// `PUT /admin/projects/{id}/limits`: only the named limits change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    #[serde(default)]
    pub messages_per_day: Option<i64>,
    #[serde(default)]
    pub burst_per_minute: Option<i64>,
    #[serde(default)]
    pub max_payload_bytes: Option<i64>,
}

/// A newly created project and its signing secret, which is shown this
/// once (it is stored for the worker, and never returned again).
pub struct CreatedProject {
    pub project: Project,
    pub signing_secret: SigningSecret,
}

fn actor_event(
    actor: &Actor,
    event_type: &'static str,
    project: Uuid,
    payload: serde_json::Value,
) -> NewEvent {
    NewEvent {
        event_type,
        subject: format!("project:{project}"),
        actor: actor.label(),
        request_id: actor.request_id.clone(),
        payload,
    }
}

/// Checks a delivery endpoint: `https://` with a host and no credentials;
/// `http://` only to a loopback host and only when `allow_insecure` (local
/// receivers, `LEDGERLINE_ALLOW_INSECURE_ENDPOINTS`).
pub fn validate_endpoint(raw: &str, allow_insecure: bool) -> ApiResult<String> {
    let raw = raw.trim();
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            format!("'endpoint_url' {why}"),
            "Give an https:// URL that accepts POST requests, e.g. https://example.com/webhooks.",
        )
    };
    if raw.len() > 2048 {
        return Err(bad("is longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(raw).map_err(|_| bad("is not a URL"))?;
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("may not carry a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(bad("may not have a #fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]");
            if !(allow_insecure && loopback) {
                return Err(bad(
                    "must use https:// (plain http:// is allowed only for 127.0.0.1 or \
                     localhost, and only where LEDGERLINE_ALLOW_INSECURE_ENDPOINTS is on)",
                ));
            }
        }
        _ => return Err(bad("must use https://")),
    }
    Ok(url.to_string())
}

fn check_name(v: &str) -> ApiResult<()> {
    let len = v.trim().chars().count();
    if len == 0 || len > 200 {
        return Err(ApiError::validation("'name' must be 1 to 200 characters"));
    }
    Ok(())
}

async fn tier_limits(db: &impl GenericClient, tier_id: &str) -> ApiResult<Limits> {
    let row = db
        .query_opt(
            "SELECT messages_per_day, burst_per_minute, max_payload_bytes FROM tiers WHERE id = $1",
            &[&tier_id],
        )
        .await?;
    match row {
        Some(r) => Ok(Limits {
            messages_per_day: r.get(0),
            burst_per_minute: r.get(1),
            max_payload_bytes: r.get(2),
        }),
        None => {
            let known: Vec<String> = db
                .query("SELECT id FROM tiers ORDER BY messages_per_day, id", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Err(ApiError::validation(format!(
                "'tier_id' must be one of {}",
                known.join(", ")
            )))
        }
    }
}

/// Creates a project with a fresh signing secret; recorded as
/// `project.created` in the organisation's ledger.
pub async fn create_project(
    tx: &Tx<'_>,
    input: &NewProject,
    allow_insecure: bool,
    actor: &Actor,
) -> ApiResult<(CreatedProject, Pending)> {
    check_name(&input.name)?;
    let endpoint = validate_endpoint(&input.endpoint_url, allow_insecure)?;
    let tier = input.tier_id.as_deref().unwrap_or(DEFAULT_TIER);
    let limits = tier_limits(&**tx, tier).await?;
    let org_exists = tx
        .query_opt(
            "SELECT 1 FROM organizations WHERE id = $1",
            &[&input.org_id],
        )
        .await?
        .is_some();
    if !org_exists {
        return Err(ApiError::validation("'org_id' is not an organisation"));
    }
    let secret = SigningSecret::generate()?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO projects (id, org_id, name, tier_id, messages_per_day,
                     burst_per_minute, max_payload_bytes, endpoint_url, signing_secret)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {PROJECT_COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &input.org_id,
                &input.name.trim(),
                &tier,
                &limits.messages_per_day,
                &limits.burst_per_minute,
                &limits.max_payload_bytes,
                &endpoint,
                &secret.expose(),
            ],
        )
        .await?;
    let project = project_from_row(&row);
    let pending = ledger::append(
        tx,
        project.org_id,
        &actor_event(
            actor,
            "project.created",
            project.id,
            json!({"name": project.name, "tier_id": project.tier_id,
                   "endpoint_url": project.endpoint_url, "limits": project.limits}),
        ),
        actor.at,
    )
    .await?;
    Ok((
        CreatedProject {
            project,
            signing_secret: secret,
        },
        pending,
    ))
}

pub async fn get_project(db: &impl GenericClient, id: Uuid) -> ApiResult<Project> {
    let row = db
        .query_opt(
            &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(project_from_row(&row))
}

async fn lock_project(tx: &Tx<'_>, id: Uuid) -> ApiResult<Project> {
    let row = tx
        .query_opt(
            &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(project_from_row(&row))
}

/// The outcome of suspending or activating: the project now, its status
/// before, and the ledger event if the status changed.
pub struct StatusChange {
    pub project: Project,
    pub previous_status: String,
    pub pending: Option<Pending>,
}

/// Suspends (`suspend = true`) or activates a project. Setting the status it
/// already has changes nothing and records nothing in the ledger.
///
/// Taking the row lock orders this against `POST /v1/messages`, which reads
/// the project `FOR SHARE`: a message is either accepted before the
/// suspension commits, or refused after it.
pub async fn set_status(
    tx: &Tx<'_>,
    id: Uuid,
    suspend: bool,
    actor: &Actor,
) -> ApiResult<StatusChange> {
    let before = lock_project(tx, id).await?;
    let status = if suspend { "suspended" } else { "active" };
    if before.status == status {
        return Ok(StatusChange {
            previous_status: before.status.clone(),
            project: before,
            pending: None,
        });
    }
    let row = tx
        .query_one(
            &format!(
                "UPDATE projects SET status = $2, updated_at = now(),
                        suspended_at = CASE WHEN $2 = 'suspended' THEN now() END
                  WHERE id = $1 RETURNING {PROJECT_COLUMNS}"
            ),
            &[&id, &status],
        )
        .await?;
    let project = project_from_row(&row);
    let event = if suspend {
        "project.suspended"
    } else {
        "project.activated"
    };
    let pending = ledger::append(
        tx,
        project.org_id,
        &actor_event(
            actor,
            event,
            id,
            json!({"from": before.status, "to": status}),
        ),
        actor.at,
    )
    .await?;
    Ok(StatusChange {
        project,
        previous_status: before.status,
        pending: Some(pending),
    })
}

/// The outcome of a limits or tier change.
pub struct LimitsChange {
    pub project: Project,
    pub previous_limits: Limits,
    pub previous_tier_id: String,
    pub pending: Option<Pending>,
}

fn bounded(field: &str, v: Option<i64>, min: i64, max: i64) -> ApiResult<Option<i32>> {
    match v {
        None => Ok(None),
        Some(n) if (min..=max).contains(&n) => Ok(Some(n as i32)),
        Some(_) => Err(ApiError::validation(format!(
            "'{field}' must be a whole number from {min} to {max}"
        ))),
    }
}

/// Changes some of a project's limits (the tier stays as it was).
pub async fn set_limits(
    tx: &Tx<'_>,
    id: Uuid,
    patch: &LimitsPatch,
    actor: &Actor,
) -> ApiResult<LimitsChange> {
    let per_day = bounded(
        "messages_per_day",
        patch.messages_per_day,
        0,
        i32::MAX as i64,
    )?;
    let burst = bounded(
        "burst_per_minute",
        patch.burst_per_minute,
        0,
        i32::MAX as i64,
    )?;
    let payload = bounded(
        "max_payload_bytes",
        patch.max_payload_bytes,
        1,
        MAX_PAYLOAD_CEILING,
    )?;
    if per_day.is_none() && burst.is_none() && payload.is_none() {
        return Err(ApiError::validation(
            "name at least one of 'messages_per_day', 'burst_per_minute', 'max_payload_bytes'",
        ));
    }
    let before = lock_project(tx, id).await?;
    let new = Limits {
        messages_per_day: per_day.unwrap_or(before.limits.messages_per_day),
        burst_per_minute: burst.unwrap_or(before.limits.burst_per_minute),
        max_payload_bytes: payload.unwrap_or(before.limits.max_payload_bytes),
    };
    write_limits(tx, before, None, new, actor, "project.limits.updated").await
}

/// Applies a tier: the project takes the tier's id and all of its limits.
pub async fn apply_tier(
    tx: &Tx<'_>,
    id: Uuid,
    tier_id: &str,
    actor: &Actor,
) -> ApiResult<LimitsChange> {
    let limits = tier_limits(&**tx, tier_id).await?;
    let before = lock_project(tx, id).await?;
    write_limits(
        tx,
        before,
        Some(tier_id),
        limits,
        actor,
        "project.tier.applied",
    )
    .await
}

async fn write_limits(
    tx: &Tx<'_>,
    before: Project,
    tier: Option<&str>,
    new: Limits,
    actor: &Actor,
    event: &'static str,
) -> ApiResult<LimitsChange> {
    // A limits change keeps the tier; applying a tier names it.
    let tier_id = tier.unwrap_or(&before.tier_id).to_string();
    let row = tx
        .query_one(
            &format!(
                "UPDATE projects SET tier_id = $2, messages_per_day = $3, burst_per_minute = $4,
                        max_payload_bytes = $5, updated_at = now()
                  WHERE id = $1 RETURNING {PROJECT_COLUMNS}"
            ),
            &[
                &before.id,
                &tier_id,
                &new.messages_per_day,
                &new.burst_per_minute,
                &new.max_payload_bytes,
            ],
        )
        .await?;
    let project = project_from_row(&row);
    let changed = before.limits != new || before.tier_id != tier_id;
    let pending = if changed {
        Some(
            ledger::append(
                tx,
                project.org_id,
                &actor_event(
                    actor,
                    event,
                    project.id,
                    json!({"from": {"tier_id": before.tier_id, "limits": before.limits},
                           "to": {"tier_id": tier_id, "limits": new}}),
                ),
                actor.at,
            )
            .await?,
        )
    } else {
        None
    };
    Ok(LimitsChange {
        project,
        previous_limits: before.limits,
        previous_tier_id: before.tier_id,
        pending,
    })
}

/// The project of a project key, as `POST /v1/messages` needs it before
/// anything else runs: a suspended project is refused here (403
/// `project_suspended`), then the per-minute burst and the per-day message
/// limit are counted (the pipeline answers 429 with the decision's headers).
/// One statement does it all (`project_admit`, migrations/V8). Returns the
/// decision with the fewest requests remaining.
pub async fn admit_message(
    db: &deadpool_postgres::Client,
    principal: &Principal,
    now: DateTime<Utc>,
) -> ApiResult<Decision> {
    let project = principal.project_id.ok_or_else(project_key_needed)?;
    let (minute_start, minute_end) = ratelimit::window(now, 60);
    let (day_start, day_end) = ratelimit::window(now, 86_400);
    let row = crate::db::query_opt(
        db,
        "SELECT out_status, out_burst, out_per_day, out_burst_count, out_day_count
           FROM project_admit($1, $2, $3, $4, $5)",
        &[&project, &minute_start, &minute_end, &day_start, &day_end],
    )
    .await?
    .ok_or_else(|| ApiError::not_found("project"))?;
    let status: String = row.get(0);
    if status != "active" {
        return Err(project_suspended());
    }
    let limit = |i: usize| row.get::<_, i32>(i).max(0) as u32;
    let minute = ratelimit::decide(limit(1), minute_end, now, row.get(3));
    if !minute.allowed {
        return Ok(minute);
    }
    let day = ratelimit::decide(limit(2), day_end, now, row.get(4));
    if !day.allowed || day.remaining < minute.remaining {
        return Ok(day);
    }
    Ok(minute)
}

pub fn project_suspended() -> ApiError {
    ApiError::forbidden(
        "project_suspended",
        "this project is suspended; messages are not accepted",
        "Ask your operator to reactivate the project. Nothing was stored.",
    )
}

pub fn project_key_needed() -> ApiError {
    ApiError::forbidden(
        "forbidden_scope",
        "this endpoint needs a project key",
        "Use an API key issued to a project (scope 'project').",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_unless_local_and_allowed() {
        assert_eq!(
            validate_endpoint("https://example.com/hook", false).unwrap(),
            "https://example.com/hook"
        );
        assert!(validate_endpoint("http://example.com/hook", true).is_err());
        assert!(validate_endpoint("http://127.0.0.1:9000/hook", false).is_err());
        assert!(validate_endpoint("http://127.0.0.1:9000/hook", true).is_ok());
        assert!(validate_endpoint("http://localhost/hook", true).is_ok());
        assert!(validate_endpoint("http://[::1]:8000/", true).is_ok());
        assert!(validate_endpoint("ftp://example.com/", true).is_err());
        assert!(validate_endpoint("https://user:pw@example.com/", false).is_err());
        assert!(validate_endpoint("https://example.com/#x", false).is_err());
        assert!(validate_endpoint("not a url", false).is_err());
        assert!(validate_endpoint(&format!("https://e.com/{}", "a".repeat(2100)), false).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(bounded("x", None, 0, 5).unwrap(), None);
        assert_eq!(bounded("x", Some(5), 0, 5).unwrap(), Some(5));
        assert!(bounded("x", Some(6), 0, 5).is_err());
        assert!(bounded("x", Some(-1), 0, 5).is_err());
    }
}
