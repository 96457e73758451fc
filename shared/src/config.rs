//! Configuration from environment variables (12-factor). The same binary runs
//! against AWS or local adapters depending on these.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobBackend {
    Local { dir: PathBuf },
    S3 { bucket: String },
}

/// Which queue adapter carries background jobs (e.g. the nightly seals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueBackend {
    /// The Postgres table queue (`ledgerline serve`, tests).
    Postgres,
    /// Amazon SQS (the default in Lambda).
    Sqs,
}

/// A secret read from the environment: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How checkpoints (the nightly signed tree heads) are signed and named.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// `LEDGERLINE_CHECKPOINT_ORIGIN`: the log identity; each organisation's
    /// checkpoints use `<origin>/orgs/<org id>`, and a generated key is named
    /// after it.
    pub origin: String,
    /// `LEDGERLINE_CHECKPOINT_KEY`: the signer key
    /// (`PRIVATE+KEY+<name>+<key id>+<key>`). Required where checkpoints are
    /// signed in Lambda; locally a key is generated once into the data dir.
    pub signing_key: Option<Secret>,
    /// `LEDGERLINE_CHECKPOINT_VERIFIER_KEY`: the public verifier key
    /// (`<name>+<key id>+<key>`), for functions that publish or check
    /// checkpoints without holding the private key.
    pub verifier_key: Option<String>,
}

/// The default checkpoint origin (and generated key name) for local runs.
pub const DEFAULT_CHECKPOINT_ORIGIN: &str = "ledgerline.local";

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    /// Connections per process. Lambda runs one request at a time per
    /// instance, so a small pool there; the local server wants more.
    pub db_pool_size: usize,
    pub blob: BlobBackend,
    /// Requests per minute per API key on authenticated endpoints.
    pub api_rate_limit_per_minute: u32,
    /// Window of the API rate limit, in seconds.
    pub api_rate_limit_window_secs: u32,
    /// How long an idempotency record is kept, in seconds.
    pub idempotency_ttl_secs: u32,
    /// Evidence uploads per organisation per UTC day.
    pub uploads_per_day: u32,
    /// `LEDGERLINE_DATA_DIR`: local state (blobs, a generated checkpoint key).
    pub data_dir: PathBuf,
    /// Running inside AWS Lambda (`AWS_LAMBDA_FUNCTION_NAME` is set).
    pub in_lambda: bool,
    pub checkpoint: CheckpointConfig,
    /// `LEDGERLINE_QUEUE_BACKEND`: `postgres` (default locally) or `sqs`
    /// (default in Lambda).
    pub queue_backend: QueueBackend,
    /// `LEDGERLINE_ROOTS_QUEUE_URL`: the SQS queue of nightly seal jobs;
    /// needed by the functions that use it when the backend is `sqs`.
    pub roots_queue_url: Option<String>,
    /// Message delivery: queue, worker and endpoint settings
    /// (`LEDGERLINE_MESSAGE_QUEUE_URL`, `LEDGERLINE_WORKER_*`, …).
    pub messages: crate::messages::MessagesConfig,
}

#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let database_url = get("DATABASE_URL")
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ConfigError("DATABASE_URL is not set".into()))?;
        let in_lambda = get("AWS_LAMBDA_FUNCTION_NAME").is_some();
        let data_dir =
            PathBuf::from(get("LEDGERLINE_DATA_DIR").unwrap_or_else(|| ".local/data".into()));
        let blob = match get("LEDGERLINE_BLOB_BACKEND").as_deref() {
            None | Some("local") => BlobBackend::Local {
                dir: data_dir.join("blobs"),
            },
            Some("s3") => BlobBackend::S3 {
                bucket: get("LEDGERLINE_S3_BUCKET").ok_or_else(|| {
                    ConfigError("LEDGERLINE_BLOB_BACKEND=s3 needs LEDGERLINE_S3_BUCKET".into())
                })?,
            },
            Some(other) => {
                return Err(ConfigError(format!(
                    "LEDGERLINE_BLOB_BACKEND must be 'local' or 's3', not '{other}'"
                )))
            }
        };
        Ok(Config {
            database_url,
            db_pool_size: parse_num(
                &get,
                "LEDGERLINE_DB_POOL_SIZE",
                if in_lambda { 2 } else { 16 },
            )?,
            blob,
            api_rate_limit_per_minute: parse_num(&get, "LEDGERLINE_API_RATE_LIMIT", 600)?,
            api_rate_limit_window_secs: parse_num(
                &get,
                "LEDGERLINE_API_RATE_LIMIT_WINDOW_SECS",
                60,
            )?
            .max(1),
            idempotency_ttl_secs: parse_num(&get, "LEDGERLINE_IDEMPOTENCY_TTL_SECS", 86_400)?,
            uploads_per_day: parse_num(&get, "LEDGERLINE_UPLOADS_PER_DAY", 100)?,
            data_dir,
            in_lambda,
            checkpoint: checkpoint_config(&get)?,
            queue_backend: match get("LEDGERLINE_QUEUE_BACKEND").as_deref() {
                None if in_lambda => QueueBackend::Sqs,
                None | Some("postgres") => QueueBackend::Postgres,
                Some("sqs") => QueueBackend::Sqs,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "LEDGERLINE_QUEUE_BACKEND must be 'postgres' or 'sqs', not '{other}'"
                    )))
                }
            },
            roots_queue_url: get("LEDGERLINE_ROOTS_QUEUE_URL").filter(|v| !v.trim().is_empty()),
            messages: crate::messages::MessagesConfig::from_lookup(&get)?,
        })
    }
}

/// Reads and checks the checkpoint settings. Key strings are parsed here so
/// a malformed key fails at start-up; error messages never echo a key.
fn checkpoint_config(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<CheckpointConfig, ConfigError> {
    use crate::ledger::checkpoint::{CheckpointSigner, NoteVerifier};
    let origin = get("LEDGERLINE_CHECKPOINT_ORIGIN")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CHECKPOINT_ORIGIN.into());
    // The origin names generated keys too, so it must be a valid key name:
    // no spaces, no '+', no control characters.
    if origin
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err(ConfigError(format!(
            "LEDGERLINE_CHECKPOINT_ORIGIN must have no spaces, '+' or control characters, not '{origin}'"
        )));
    }
    let signing_key = get("LEDGERLINE_CHECKPOINT_KEY").filter(|v| !v.trim().is_empty());
    let signer = match &signing_key {
        None => None,
        Some(k) => Some(CheckpointSigner::from_private_key(k.trim()).map_err(|e| {
            ConfigError(format!(
                "LEDGERLINE_CHECKPOINT_KEY is not a signer key \
                 (PRIVATE+KEY+<name>+<hex key id>+<base64 key>): {e}"
            ))
        })?),
    };
    let verifier_key = get("LEDGERLINE_CHECKPOINT_VERIFIER_KEY").filter(|v| !v.trim().is_empty());
    if let Some(v) = &verifier_key {
        let verifier = NoteVerifier::from_verifier_key(v.trim()).map_err(|e| {
            ConfigError(format!(
                "LEDGERLINE_CHECKPOINT_VERIFIER_KEY is not a verifier key \
                 (<name>+<hex key id>+<base64 key>): {e}"
            ))
        })?;
        if let Some(signer) = &signer {
            if signer.verifier_key() != verifier.verifier_key() {
                return Err(ConfigError(
                    "LEDGERLINE_CHECKPOINT_VERIFIER_KEY is not the public key of \
                     LEDGERLINE_CHECKPOINT_KEY"
                        .into(),
                ));
            }
        }
    }
    Ok(CheckpointConfig {
        origin,
        signing_key: signing_key.map(|k| Secret::new(k.trim())),
        verifier_key: verifier_key.map(|v| v.trim().to_string()),
    })
}

fn parse_num<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
) -> Result<T, ConfigError> {
    match get(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| {
            ConfigError(format!(
                "{key} must be a non-negative whole number, not '{v}'"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn database_url_is_required() {
        assert!(cfg(&[]).unwrap_err().0.contains("DATABASE_URL"));
        assert!(cfg(&[("DATABASE_URL", " ")]).is_err());
    }

    #[test]
    fn defaults_are_local() {
        let c = cfg(&[("DATABASE_URL", "postgres://x")]).unwrap();
        assert_eq!(
            c.blob,
            BlobBackend::Local {
                dir: PathBuf::from(".local/data/blobs")
            }
        );
        assert_eq!(c.api_rate_limit_per_minute, 600);
        assert_eq!(c.db_pool_size, 16);
    }

    #[test]
    fn lambda_gets_a_small_pool_and_s3_needs_a_bucket() {
        let c = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("AWS_LAMBDA_FUNCTION_NAME", "f"),
        ])
        .unwrap();
        assert_eq!(c.db_pool_size, 2);
        let e = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_BLOB_BACKEND", "s3"),
        ]);
        assert!(e.unwrap_err().0.contains("LEDGERLINE_S3_BUCKET"));
        let e = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_BLOB_BACKEND", "ftp"),
        ]);
        assert!(e.unwrap_err().0.contains("'ftp'"));
    }

    #[test]
    fn checkpoint_and_queue_settings() {
        let c = cfg(&[("DATABASE_URL", "postgres://x")]).unwrap();
        assert_eq!(c.checkpoint.origin, DEFAULT_CHECKPOINT_ORIGIN);
        assert!(c.checkpoint.signing_key.is_none());
        assert_eq!(c.queue_backend, QueueBackend::Postgres);
        assert_eq!(c.data_dir, PathBuf::from(".local/data"));
        let lambda = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("AWS_LAMBDA_FUNCTION_NAME", "f"),
        ])
        .unwrap();
        assert_eq!(lambda.queue_backend, QueueBackend::Sqs);

        let signer = crate::ledger::checkpoint::CheckpointSigner::generate("log.example").unwrap();
        let skey = signer.private_key();
        let c = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_CHECKPOINT_KEY", &skey),
            ("LEDGERLINE_CHECKPOINT_VERIFIER_KEY", &signer.verifier_key()),
            ("LEDGERLINE_CHECKPOINT_ORIGIN", "log.example"),
        ])
        .unwrap();
        assert_eq!(c.checkpoint.signing_key.as_ref().unwrap().expose(), skey);
        // The secret never shows in Debug output.
        assert!(!format!("{c:?}").contains(&skey[12..]));

        // A malformed key is refused without echoing it.
        let e = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_CHECKPOINT_KEY", "PRIVATE+KEY+oops+secretstuff"),
        ])
        .unwrap_err();
        assert!(e.0.contains("LEDGERLINE_CHECKPOINT_KEY"), "{e}");
        assert!(!e.0.contains("secretstuff"), "{e}");
        // A verifier key of another key pair is refused.
        let other = crate::ledger::checkpoint::CheckpointSigner::generate("log.example").unwrap();
        let e = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_CHECKPOINT_KEY", &skey),
            ("LEDGERLINE_CHECKPOINT_VERIFIER_KEY", &other.verifier_key()),
        ])
        .unwrap_err();
        assert!(e.0.contains("not the public key"), "{e}");
        assert!(cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_CHECKPOINT_ORIGIN", "has space"),
        ])
        .is_err());
        assert!(cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_QUEUE_BACKEND", "kafka"),
        ])
        .unwrap_err()
        .0
        .contains("'kafka'"));
    }

    #[test]
    fn bad_numbers_are_named() {
        let e = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_API_RATE_LIMIT", "lots"),
        ]);
        assert!(e.unwrap_err().0.contains("LEDGERLINE_API_RATE_LIMIT"));
    }
}
