//! API keys: generation, the token format, hashing and verification.
//!
//! A token is `ll_<scope>_<key id, 32 hex>_<secret, 64 hex>`: 256 random bits
//! of secret. Only SHA-256 of the secret is stored. Lookup is by the key id,
//! and the hash comparison is constant-time, so neither the database index
//! nor the comparison leaks how much of a guess was right.

use crate::error::ApiError;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Org,
    Project,
    Operator,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Project => "project",
            Scope::Operator => "operator",
        }
    }

    fn token_tag(self) -> &'static str {
        match self {
            Scope::Org => "org",
            Scope::Project => "prj",
            Scope::Operator => "op",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "org" => Some(Scope::Org),
            "project" => Some(Scope::Project),
            "operator" => Some(Scope::Operator),
            _ => None,
        }
    }
}

/// Who is calling: the verified key and what it is bound to.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    pub key_id: Uuid,
    pub scope: Scope,
    pub org_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

impl Principal {
    /// The organisation of an org or project key; operator keys have none.
    pub fn org(&self) -> Result<Uuid, ApiError> {
        self.org_id.ok_or_else(|| {
            ApiError::forbidden(
                "forbidden_scope",
                "this endpoint needs an organisation key",
                "Use an API key issued to an organisation.",
            )
        })
    }

    /// The owner used to scope idempotency records and rate limits.
    pub fn owner(&self) -> String {
        match (self.scope, self.project_id, self.org_id) {
            (Scope::Project, Some(p), _) => format!("project:{p}"),
            (Scope::Org, _, Some(o)) => format!("org:{o}"),
            _ => format!("key:{}", self.key_id),
        }
    }
}

/// A freshly generated key: the token is shown once, the hash is stored.
pub struct NewKey {
    pub id: Uuid,
    pub token: String,
    pub secret_hash: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    // Never print the token, even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub fn generate_key(scope: Scope) -> anyhow::Result<NewKey> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let secret_hex = hex::encode(secret);
    let id = Uuid::new_v4();
    Ok(NewKey {
        id,
        token: format!("ll_{}_{}_{}", scope.token_tag(), id.simple(), secret_hex),
        secret_hash: hash_secret(&secret_hex),
    })
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The parts of a presented token. Parsing never touches the database.
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: Uuid,
    pub secret: &'a str,
}

pub fn parse_token(token: &str) -> Option<PresentedKey<'_>> {
    let rest = token.strip_prefix("ll_")?;
    let (_tag, rest) = rest.split_once('_')?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    Some(PresentedKey { id, secret })
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn secret_matches(secret: &str, stored_hash: &[u8]) -> bool {
    let presented = hash_secret(secret);
    stored_hash.len() == 32 && bool::from(presented.as_slice().ct_eq(stored_hash))
}

/// Verifies a bearer token against the database. Every failure (malformed,
/// unknown, wrong secret, revoked) is the same 401, so a caller learns nothing
/// about which keys exist.
pub async fn authenticate(
    client: &deadpool_postgres::Client,
    header: Option<&str>,
) -> Result<Principal, ApiError> {
    let Some(token) = bearer(header) else {
        return Err(ApiError::unauthorized(
            "missing API key: send 'Authorization: Bearer <key>'",
        ));
    };
    let invalid = || ApiError::unauthorized("invalid or revoked API key");
    let Some(presented) = parse_token(token) else {
        return Err(invalid());
    };
    let row = crate::db::query_opt(
        client,
        "SELECT scope, org_id, project_id, user_id, secret_hash, revoked_at IS NOT NULL,
                last_used_at IS NULL OR last_used_at < now() - interval '60 seconds'
           FROM api_keys WHERE id = $1",
        &[&presented.id],
    )
    .await?;
    let Some(row) = row else {
        // Hash anyway so an unknown id costs the same as a wrong secret.
        let _ = secret_matches(presented.secret, &[0u8; 32]);
        return Err(invalid());
    };
    let stored: Vec<u8> = row.get(4);
    let revoked: bool = row.get(5);
    if !secret_matches(presented.secret, &stored) || revoked {
        return Err(invalid());
    }
    let scope: String = row.get(0);
    let scope = Scope::parse(&scope)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad scope {scope}")))?;
    // Keep last_used_at roughly fresh without a write (or even a statement)
    // on every request.
    let stale: bool = row.get(6);
    if stale {
        crate::db::execute(
            client,
            "UPDATE api_keys SET last_used_at = now()
              WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')",
            &[&presented.id],
        )
        .await?;
    }
    Ok(Principal {
        key_id: presented.id,
        scope,
        org_id: row.get(1),
        project_id: row.get(2),
        user_id: row.get(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        for scope in [Scope::Org, Scope::Project, Scope::Operator] {
            let k = generate_key(scope).unwrap();
            let p = parse_token(&k.token).expect("parses");
            assert_eq!(p.id, k.id);
            assert!(secret_matches(p.secret, &k.secret_hash));
            assert!(!format!("{k:?}").contains(p.secret));
        }
    }

    #[test]
    fn keys_are_unique_and_long() {
        let a = generate_key(Scope::Org).unwrap();
        let b = generate_key(Scope::Org).unwrap();
        assert_ne!(a.token, b.token);
        assert_eq!(parse_token(&a.token).unwrap().secret.len(), 64);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let k = generate_key(Scope::Org).unwrap();
        let t = k.token.as_str();
        for bad in [
            "",
            "ll_",
            "Bearer",
            &t[..t.len() - 1],
            &format!("{t}0"),
            &t.replacen("ll_", "xx_", 1),
            &format!("{}g", &t[..t.len() - 1]),
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let k = generate_key(Scope::Org).unwrap();
        let other = generate_key(Scope::Org).unwrap();
        let p = parse_token(&other.token).unwrap();
        assert!(!secret_matches(p.secret, &k.secret_hash));
        assert!(!secret_matches(p.secret, &[]));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("abc")), None);
        assert_eq!(bearer(None), None);
    }
}
