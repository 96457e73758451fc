//! Configuration from environment variables (12-factor). The same binary runs
//! against AWS or local adapters depending on these.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobBackend {
    Local { dir: PathBuf },
    S3 { bucket: String },
}

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
        let blob = match get("LEDGERLINE_BLOB_BACKEND").as_deref() {
            None | Some("local") => BlobBackend::Local {
                dir: PathBuf::from(
                    get("LEDGERLINE_DATA_DIR").unwrap_or_else(|| ".local/data".into()),
                )
                .join("blobs"),
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
        })
    }
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
    fn bad_numbers_are_named() {
        let e = cfg(&[
            ("DATABASE_URL", "postgres://x"),
            ("LEDGERLINE_API_RATE_LIMIT", "lots"),
        ]);
        assert!(e.unwrap_err().0.contains("LEDGERLINE_API_RATE_LIMIT"));
    }
}
