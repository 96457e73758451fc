//! The `BlobStore` port: where evidence files and export bundles live.
//!
//! Two adapters keep the same contract (proved by `tests/adapters.rs`):
//! [`S3BlobStore`] for AWS and [`LocalBlobStore`], a directory on disk, for
//! `ledgerline serve`. Keys look like S3 keys and are validated the same way
//! by both, so a key that works locally also works in AWS and no key can
//! reach outside the local store's directory.

mod local;
mod s3;

pub use local::LocalBlobStore;
pub use s3::{s3_client, S3BlobStore};

use crate::config::BlobBackend;
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncRead;

/// Longest key S3 accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// S3's limits on object tags.
pub const MAX_TAGS: usize = 10;
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;
/// Presigned URLs live at most this long: a leaked link should go stale fast.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(15 * 60);
/// Used when a caller gives no content type.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A stream of bytes to upload or read back.
pub type BlobReader = Box<dyn AsyncRead + Send + Unpin>;

/// How to store a blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// `None` stores [`DEFAULT_CONTENT_TYPE`].
    pub content_type: Option<String>,
    /// Object tags (at most 10; S3's character rules). Lifecycle rules match
    /// on them, so they are set in the same request as the bytes.
    pub tags: Vec<(String, String)>,
    /// The SHA-256 the caller expects the bytes to have. When set, a body
    /// with another digest is refused with [`BlobError::ChecksumMismatch`]
    /// and nothing is stored.
    pub sha256: Option<[u8; 32]>,
}

/// What `head` knows about a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
    pub content_type: String,
    /// Known when the blob was stored with `put`, or with `put_stream` and a
    /// declared digest (S3 cannot attach metadata after a multipart upload
    /// has started, so a digest computed while streaming is not recorded).
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug)]
pub enum BlobError {
    /// No blob under this key.
    NotFound,
    /// The key breaks the key rules (see [`validate_key`]).
    InvalidKey(String),
    /// Tags, content type or TTL break the rules; the message says which.
    InvalidInput(String),
    /// The bytes do not have the SHA-256 the caller declared; nothing was stored.
    ChecksumMismatch,
    /// The backend failed (I/O, network, permissions, ...).
    Backend(anyhow::Error),
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobError::NotFound => f.write_str("blob not found"),
            BlobError::InvalidKey(why) => write!(f, "invalid blob key: {why}"),
            BlobError::InvalidInput(why) => write!(f, "invalid blob request: {why}"),
            BlobError::ChecksumMismatch => {
                f.write_str("blob body does not match its declared SHA-256")
            }
            BlobError::Backend(e) => write!(f, "blob store failed: {e:#}"),
        }
    }
}

impl std::error::Error for BlobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BlobError::Backend(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl BlobError {
    pub(crate) fn backend(e: impl Into<anyhow::Error>, context: &'static str) -> Self {
        BlobError::Backend(e.into().context(context))
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `body` under `key`, replacing any blob there. Readers see the
    /// old blob or the new one, never a mix.
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), BlobError>;

    /// Stores everything `reader` yields under `key` with bounded memory and
    /// returns the number of bytes stored. On any error (including a reader
    /// error or a checksum mismatch) nothing is stored and any previous blob
    /// under `key` is left as it was.
    async fn put_stream(
        &self,
        key: &str,
        reader: BlobReader,
        opts: &PutOptions,
    ) -> Result<u64, BlobError>;

    /// The whole blob; [`BlobError::NotFound`] if there is none.
    async fn get(&self, key: &str) -> Result<Bytes, BlobError>;

    /// The blob as a stream, for blobs too large to hold in memory.
    async fn get_stream(&self, key: &str) -> Result<BlobReader, BlobError>;

    /// Size, content type and digest, or `None` if there is no blob.
    async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError>;

    /// Removes the blob. Deleting a missing blob succeeds.
    async fn delete(&self, key: &str) -> Result<(), BlobError>;

    /// The blob's tags, sorted by tag key.
    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>, BlobError>;

    /// Replaces all of the blob's tags.
    async fn put_tags(&self, key: &str, tags: &[(String, String)]) -> Result<(), BlobError>;

    /// A URL anyone can GET the blob from until `ttl` (capped at
    /// [`MAX_PRESIGN_TTL`]) passes; `None` when the store has no URLs.
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, BlobError>;

    /// A URL a client can PUT the blob to until `ttl` (capped at
    /// [`MAX_PRESIGN_TTL`]) passes; `None` when the store has no URLs. The
    /// upload must carry exactly the headers [`presigned_put_headers`] lists
    /// for the same arguments: they are signed, and with a digest the store
    /// refuses a body that does not match it.
    async fn presign_put(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<Option<String>, BlobError>;
}

/// The headers an upload to a [`BlobStore::presign_put`] URL must send.
pub fn presigned_put_headers(
    content_type: &str,
    sha256: Option<[u8; 32]>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", content_type.to_string())];
    if let Some(digest) = sha256 {
        headers.push(("x-amz-checksum-sha256", checksum_header_value(&digest)));
    }
    headers
}

/// The blob store the configuration asks for. For S3 the client comes from
/// the standard AWS environment, `AWS_ENDPOINT_URL` included.
pub async fn blob_store(cfg: &BlobBackend) -> anyhow::Result<Arc<dyn BlobStore>> {
    match cfg {
        BlobBackend::Local { dir } => {
            // Fail at start-up, not at the first upload, if the directory is unusable.
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                anyhow::Error::new(e).context(format!("creating blob directory {}", dir.display()))
            })?;
            Ok(Arc::new(LocalBlobStore::new(dir)))
        }
        BlobBackend::S3 { bucket } => {
            let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            Ok(Arc::new(S3BlobStore::new(
                s3_client(&sdk_config),
                bucket.clone(),
            )))
        }
    }
}

/// Checks a key against the rules both adapters share: 1 to 1024 bytes, no
/// control characters or backslashes, no leading `/`, and no empty, `.` or
/// `..` path segments (so `a/../b`, `a//b` and `a/` are refused).
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let invalid = |why: &str| Err(BlobError::InvalidKey(why.to_string()));
    if key.is_empty() {
        return invalid("the key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid("the key is longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return invalid("the key contains a control character");
    }
    if key.contains('\\') {
        return invalid("the key contains a backslash");
    }
    if key.starts_with('/') {
        return invalid("the key starts with '/'");
    }
    if key
        .split('/')
        .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return invalid("the key has an empty, '.' or '..' segment");
    }
    Ok(())
}

/// S3's tag rules, checked up front so both adapters refuse the same tags.
pub(crate) fn validate_tags(tags: &[(String, String)]) -> Result<(), BlobError> {
    let invalid = |why: String| Err(BlobError::InvalidInput(why));
    if tags.len() > MAX_TAGS {
        return invalid(format!("at most {MAX_TAGS} tags, not {}", tags.len()));
    }
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || " +-=._:/@".contains(c))
    };
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > MAX_TAG_KEY_CHARS {
            return invalid(format!(
                "tag key '{k}' must be 1 to {MAX_TAG_KEY_CHARS} characters"
            ));
        }
        if v.chars().count() > MAX_TAG_VALUE_CHARS {
            return invalid(format!(
                "tag '{k}' has a value over {MAX_TAG_VALUE_CHARS} characters"
            ));
        }
        if !allowed(k) || !allowed(v) {
            return invalid(format!(
                "tag '{k}' may hold only letters, digits, spaces and + - = . _ : / @"
            ));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return invalid(format!("tag key '{k}' uses the reserved 'aws:' prefix"));
        }
        if tags[..i].iter().any(|(other, _)| other == k) {
            return invalid(format!("tag key '{k}' appears twice"));
        }
    }
    Ok(())
}

/// A content type is sent as an HTTP header, so it must be one.
pub(crate) fn validate_content_type(content_type: &str) -> Result<(), BlobError> {
    let ok = !content_type.is_empty()
        && content_type.len() <= 256
        && content_type
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidInput(
            "the content type must be 1 to 256 printable ASCII characters".into(),
        ))
    }
}

/// Validates everything in `opts` and returns the content type to store.
pub(crate) fn checked_options(opts: &PutOptions) -> Result<&str, BlobError> {
    validate_tags(&opts.tags)?;
    let content_type = opts.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE);
    validate_content_type(content_type)?;
    Ok(content_type)
}

pub(crate) fn sorted_tags(mut tags: Vec<(String, String)>) -> Vec<(String, String)> {
    tags.sort();
    tags
}

/// The value of an `x-amz-checksum-sha256` header: base64 of the digest.
pub(crate) fn checksum_header_value(digest: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

pub(crate) fn parse_hex_digest(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_or_confuse_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "line\nbreak",
            "nul\0",
            "del\u{7f}",
        ] {
            assert!(
                matches!(validate_key(bad), Err(BlobError::InvalidKey(_))),
                "{bad:?} should be refused"
            );
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        // Multi-byte characters count in bytes, as S3 counts them.
        assert!(validate_key(&"é".repeat(513)).is_err());
    }

    #[test]
    fn ordinary_keys_pass() {
        for good in [
            "a",
            "org/0b6f/evidence/report.pdf",
            "with space/and+plus=equals",
            "dots..in.names",
            ".hidden",
            "ünïcödé/証拠.txt",
        ] {
            assert!(validate_key(good).is_ok(), "{good:?} should pass");
        }
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn tags_follow_s3_rules() {
        let t = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(validate_tags(&[t("tier", "pro"), t("org id", "a+b=c.d_e:f/g@h")]).is_ok());
        assert!(validate_tags(&[t("", "x")]).is_err());
        assert!(validate_tags(&[t("k", "semi;colon")]).is_err());
        assert!(validate_tags(&[t("aws:thing", "x")]).is_err());
        assert!(validate_tags(&[t("k", "1"), t("k", "2")]).is_err());
        assert!(validate_tags(&[t(&"k".repeat(129), "x")]).is_err());
        assert!(validate_tags(&[t("k", &"v".repeat(257))]).is_err());
        let eleven: Vec<_> = (0..11).map(|i| t(&format!("k{i}"), "v")).collect();
        assert!(validate_tags(&eleven).is_err());
        assert!(validate_tags(&eleven[..10]).is_ok());
    }

    #[test]
    fn content_types_must_be_header_safe() {
        assert!(validate_content_type("application/pdf; charset=binary").is_ok());
        assert!(validate_content_type("").is_err());
        assert!(validate_content_type("text/plain\r\nX-Evil: 1").is_err());
    }

    #[test]
    fn presigned_put_headers_carry_the_digest_in_base64() {
        let h = presigned_put_headers("text/plain", Some([0u8; 32]));
        assert_eq!(h[0], ("content-type", "text/plain".to_string()));
        assert_eq!(h[1].0, "x-amz-checksum-sha256");
        assert_eq!(h[1].1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(presigned_put_headers("text/plain", None).len(), 1);
    }
}
