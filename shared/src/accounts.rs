//! Use cases for organisations, users and API keys. Called by the operator
//! endpoints and by `ledgerline bootstrap`.

use crate::auth::{generate_key, Scope};
use crate::error::{ApiError, ApiResult};
use crate::ledger::events::{self as ledger, NewEvent, Pending};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use uuid::Uuid;

pub const PLAN_TIERS: [&str; 4] = ["starter", "pro", "business", "enterprise"];

/// Who performed an operator action, kept for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub key_id: Option<Uuid>,
    pub request_id: String,
    /// When the actor acted (the service's clock): the `recorded_at` its
    /// ledger events ask for.
    pub at: chrono::DateTime<chrono::Utc>,
}

impl Actor {
    /// How the actor appears in ledger events.
    pub fn label(&self) -> String {
        match self.key_id {
            Some(k) => format!("key:{k}"),
            None => "system".into(),
        }
    }

    fn event(
        &self,
        event_type: &'static str,
        subject: String,
        payload: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            event_type,
            subject,
            actor: self.label(),
            request_id: self.request_id.clone(),
            payload,
        }
    }
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

#[derive(Debug, Serialize)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub plan_tier: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct User {
    pub id: Uuid,
    pub org_id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

/// Key metadata: everything about a key except its secret.
#[derive(Debug, Serialize)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub scope: String,
    pub org_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A newly issued key; `key` is shown this once and never stored.
#[derive(Serialize)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    pub name: String,
    #[serde(default)]
    pub plan_tier: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    #[serde(default)]
    pub project_id: Option<Uuid>,
}

fn check_name(field: &str, v: &str) -> ApiResult<()> {
    let len = v.trim().chars().count();
    if len == 0 || len > 200 {
        return Err(ApiError::validation(format!(
            "'{field}' must be 1 to 200 characters"
        )));
    }
    Ok(())
}

/// Creates an organisation; its ledger starts with `org.created`.
pub async fn create_org(
    tx: &Tx<'_>,
    input: &NewOrg,
    actor: &Actor,
) -> ApiResult<(Organization, Pending)> {
    check_name("name", &input.name)?;
    let tier = input.plan_tier.as_deref().unwrap_or("starter");
    if !PLAN_TIERS.contains(&tier) {
        return Err(ApiError::validation(format!(
            "'plan_tier' must be one of {}",
            PLAN_TIERS.join(", ")
        )));
    }
    let row = tx
        .query_one(
            "INSERT INTO organizations (id, name, plan_tier) VALUES ($1, $2, $3::text::plan_tier)
             RETURNING id, name, plan_tier::text, created_at",
            &[&Uuid::new_v4(), &input.name.trim(), &tier],
        )
        .await?;
    let org = Organization {
        id: row.get(0),
        name: row.get(1),
        plan_tier: row.get(2),
        created_at: row.get(3),
    };
    let pending = ledger::append(
        tx,
        org.id,
        &actor.event(
            "org.created",
            format!("org:{}", org.id),
            json!({"name": org.name, "plan_tier": org.plan_tier}),
        ),
        actor.at,
    )
    .await?;
    Ok((org, pending))
}

/// Changes the plan tier; recorded as `org.plan_changed` with old and new.
pub async fn set_plan(
    tx: &Tx<'_>,
    org_id: Uuid,
    tier: &str,
    actor: &Actor,
) -> ApiResult<(Organization, String, Option<Pending>)> {
    if !PLAN_TIERS.contains(&tier) {
        return Err(ApiError::validation(format!(
            "'plan_tier' must be one of {}",
            PLAN_TIERS.join(", ")
        )));
    }
    let old: String = tx
        .query_opt(
            "SELECT plan_tier::text FROM organizations WHERE id = $1 FOR UPDATE",
            &[&org_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?
        .get(0);
    let row = tx
        .query_one(
            "UPDATE organizations SET plan_tier = $2::text::plan_tier, updated_at = now()
              WHERE id = $1 RETURNING id, name, plan_tier::text, created_at",
            &[&org_id, &tier],
        )
        .await?;
    let org = Organization {
        id: row.get(0),
        name: row.get(1),
        plan_tier: row.get(2),
        created_at: row.get(3),
    };
    // Setting the tier it already has changes nothing and records nothing.
    let pending = if old != tier {
        Some(
            ledger::append(
                tx,
                org_id,
                &actor.event(
                    "org.plan_changed",
                    format!("org:{org_id}"),
                    json!({"from": old, "to": tier}),
                ),
                actor.at,
            )
            .await?,
        )
    } else {
        None
    };
    Ok((org, old, pending))
}

pub async fn get_org(db: &impl GenericClient, id: Uuid) -> ApiResult<Organization> {
    // Typed: one round trip (GET /api/me runs this on every call).
    let row = db
        .query_typed_opt(
            "SELECT id, name, plan_tier::text, created_at FROM organizations WHERE id = $1",
            &[(&id, Type::UUID)],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    Ok(Organization {
        id: row.get(0),
        name: row.get(1),
        plan_tier: row.get(2),
        created_at: row.get(3),
    })
}

pub async fn create_user(
    tx: &Tx<'_>,
    org_id: Uuid,
    input: &NewUser,
    actor: &Actor,
) -> ApiResult<(User, Pending)> {
    let email = input.email.trim();
    let valid_email = email.len() <= 320
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !email.chars().any(char::is_whitespace);
    if !valid_email {
        return Err(ApiError::validation("'email' must be an email address"));
    }
    if let Some(n) = &input.name {
        check_name("name", n)?;
    }
    let role = input.role.as_deref().unwrap_or("member");
    if !["owner", "admin", "member"].contains(&role) {
        return Err(ApiError::validation(
            "'role' must be one of owner, admin, member",
        ));
    }
    get_org(&**tx, org_id).await?;
    let row = tx
        .query_opt(
            "INSERT INTO users (id, org_id, email, name, role) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING
             RETURNING id, org_id, email, name, role, created_at",
            &[&Uuid::new_v4(), &org_id, &email, &input.name, &role],
        )
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "user_exists",
                "a user with this email already exists in the organisation",
            )
        })?;
    let user = User {
        id: row.get(0),
        org_id: row.get(1),
        email: row.get(2),
        name: row.get(3),
        role: row.get(4),
        created_at: row.get(5),
    };
    let pending = ledger::append(
        tx,
        org_id,
        &actor.event(
            "user.created",
            format!("user:{}", user.id),
            json!({"email": user.email, "role": user.role}),
        ),
        actor.at,
    )
    .await?;
    Ok((user, pending))
}

const KEY_COLUMNS: &str =
    "id, scope, org_id, project_id, user_id, name, created_at, revoked_at, last_used_at";

fn key_info(row: &tokio_postgres::Row) -> ApiKeyInfo {
    ApiKeyInfo {
        id: row.get(0),
        scope: row.get(1),
        org_id: row.get(2),
        project_id: row.get(3),
        user_id: row.get(4),
        name: row.get(5),
        created_at: row.get(6),
        revoked_at: row.get(7),
        last_used_at: row.get(8),
    }
}

/// Issues a key for an organisation (org or project scope).
pub async fn create_org_key(
    tx: &Tx<'_>,
    org_id: Uuid,
    input: &NewApiKey,
    actor: &Actor,
) -> ApiResult<(IssuedKey, Pending)> {
    let db = tx;
    check_name("name", &input.name)?;
    let scope = match input.scope.as_deref().unwrap_or("org") {
        "org" => Scope::Org,
        "project" => Scope::Project,
        _ => {
            return Err(ApiError::validation(
                "'scope' must be 'org' or 'project' (operator keys are issued by bootstrap)",
            ))
        }
    };
    get_org(&**db, org_id).await?;
    if let Some(user) = input.user_id {
        let found = db
            .query_opt(
                "SELECT 1 FROM users WHERE id = $1 AND org_id = $2",
                &[&user, &org_id],
            )
            .await?;
        if found.is_none() {
            return Err(ApiError::validation(
                "'user_id' is not a user of this organisation",
            ));
        }
    }
    let project = match (scope, input.project_id) {
        (Scope::Project, Some(p)) => {
            let found = db
                .query_opt(
                    "SELECT 1 FROM projects WHERE id = $1 AND org_id = $2",
                    &[&p, &org_id],
                )
                .await?;
            if found.is_none() {
                return Err(ApiError::validation(
                    "'project_id' is not a project of this organisation",
                ));
            }
            Some(p)
        }
        (Scope::Project, None) => {
            return Err(ApiError::validation("a project key needs 'project_id'"))
        }
        (_, Some(_)) => {
            return Err(ApiError::validation(
                "'project_id' is only allowed with scope 'project'",
            ))
        }
        _ => None,
    };
    let issued = insert_key(
        &**tx,
        scope,
        Some(org_id),
        project,
        input.user_id,
        &input.name,
        actor,
    )
    .await?;
    let pending = ledger::append(
        tx,
        org_id,
        &actor.event(
            "api_key.created",
            format!("api_key:{}", issued.info.id),
            json!({"name": issued.info.name, "scope": issued.info.scope,
                   "project_id": issued.info.project_id, "user_id": issued.info.user_id}),
        ),
        actor.at,
    )
    .await?;
    Ok((issued, pending))
}

/// Issues an operator key; only `ledgerline bootstrap` does this.
pub async fn create_operator_key(
    db: &impl GenericClient,
    name: &str,
    actor: &Actor,
) -> ApiResult<IssuedKey> {
    check_name("name", name)?;
    insert_key(db, Scope::Operator, None, None, None, name, actor).await
}

async fn insert_key(
    db: &impl GenericClient,
    scope: Scope,
    org_id: Option<Uuid>,
    project_id: Option<Uuid>,
    user_id: Option<Uuid>,
    name: &str,
    actor: &Actor,
) -> ApiResult<IssuedKey> {
    let key = generate_key(scope)?;
    let row = db
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, scope, org_id, project_id, user_id, name, secret_hash, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {KEY_COLUMNS}"
            ),
            &[
                &key.id,
                &scope.as_str(),
                &org_id,
                &project_id,
                &user_id,
                &name.trim(),
                &key.secret_hash.as_slice(),
                &actor.key_id,
            ],
        )
        .await?;
    Ok(IssuedKey {
        info: key_info(&row),
        key: key.token,
    })
}

/// Revokes a key. Revoking an already revoked key is not an error: the
/// original revocation time is returned, and nothing new is recorded.
pub async fn revoke_key(
    tx: &Tx<'_>,
    id: Uuid,
    actor: &Actor,
) -> ApiResult<(ApiKeyInfo, Option<Pending>)> {
    let was_active: bool = tx
        .query_opt(
            "SELECT revoked_at IS NULL FROM api_keys WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?
        .get(0);
    let row = tx
        .query_one(
            &format!(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
                  WHERE id = $1 RETURNING {KEY_COLUMNS}"
            ),
            &[&id],
        )
        .await?;
    let info = key_info(&row);
    let pending = match (was_active, info.org_id) {
        (true, Some(org)) => Some(
            ledger::append(
                tx,
                org,
                &actor.event(
                    "api_key.revoked",
                    format!("api_key:{id}"),
                    json!({"name": info.name, "scope": info.scope}),
                ),
                actor.at,
            )
            .await?,
        ),
        _ => None,
    };
    Ok((info, pending))
}

/// One key of an organisation; another organisation's key is "not found".
pub async fn get_org_key(db: &impl GenericClient, org_id: Uuid, id: Uuid) -> ApiResult<ApiKeyInfo> {
    let row = db
        .query_opt(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND org_id = $2"),
            &[&id, &org_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    Ok(key_info(&row))
}

/// The organisation's keys, oldest first, after the cursor (a key id).
pub async fn list_org_keys(
    db: &impl GenericClient,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> ApiResult<(Vec<ApiKeyInfo>, bool)> {
    let rows = db
        .query(
            &format!(
                "SELECT {KEY_COLUMNS} FROM api_keys
                  WHERE org_id = $1
                    AND ($2::uuid IS NULL OR (created_at, id) > (
                         SELECT created_at, id FROM api_keys WHERE id = $2 AND org_id = $1))
                  ORDER BY created_at, id LIMIT $3"
            ),
            &[&org_id, &after, &(limit + 1)],
        )
        .await?;
    let has_more = rows.len() as i64 > limit;
    Ok((
        rows.iter().take(limit as usize).map(key_info).collect(),
        has_more,
    ))
}

#[derive(Debug, Serialize)]
pub struct OrgSummary {
    #[serde(flatten)]
    pub org: Organization,
    pub users: Vec<User>,
    pub active_api_keys: i64,
}

pub async fn org_summary(db: &impl GenericClient, id: Uuid) -> ApiResult<OrgSummary> {
    let org = get_org(db, id).await?;
    let users = db
        .query(
            "SELECT id, org_id, email, name, role, created_at FROM users
              WHERE org_id = $1 ORDER BY created_at, id LIMIT 1000",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| User {
            id: row.get(0),
            org_id: row.get(1),
            email: row.get(2),
            name: row.get(3),
            role: row.get(4),
            created_at: row.get(5),
        })
        .collect();
    let active: i64 = db
        .query_one(
            "SELECT count(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?
        .get(0);
    Ok(OrgSummary {
        org,
        users,
        active_api_keys: active,
    })
}
