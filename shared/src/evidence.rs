//! Evidence: the files an organisation keeps as proof. Each file is stored
//! once in the blob store under `evidence/<org_id>/<evidence_id>` and
//! recorded by one `evidence.stored` event in the organisation's ledger.
//!
//! The order of an upload is what makes a failure leave nothing behind:
//! the digest is checked before anything is written; the blob is written
//! (with the digest, so the store refuses damaged bytes) before the
//! database; the evidence row and its ledger event are one transaction; and
//! if that transaction fails the blob is deleted again. A seq is only given
//! after commit, so a failed upload never consumes one.
//!
//! Files too large for the API go straight to S3 through a presigned PUT
//! ([`create_direct_upload`]) and are recorded by [`complete_direct_upload`]
//! once the stored object has been checked against the declared size and
//! SHA-256.

use crate::accounts::Actor;
use crate::blob::{presigned_put_headers, BlobError, PutOptions, DEFAULT_CONTENT_TYPE};
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use crate::ledger::events::{append, settle_committed, NewEvent, Pending};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// How long a download link works.
pub const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a direct-upload link works.
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);
/// Largest file a direct upload accepts. Completing an upload reads the
/// object back to check its SHA-256 (the blob port does not expose S3's own
/// checksum), and that has to fit in one API Gateway request (30 s).
pub const MAX_DIRECT_UPLOAD_BYTES: u64 = 1024 * 1024 * 1024;
pub const MAX_FILENAME_CHARS: usize = 255;
const MAX_CONTENT_TYPE_BYTES: usize = 256;

pub const EVENT_STORED: &str = "evidence.stored";

/// Where an organisation's evidence blob lives.
pub fn blob_key(org_id: Uuid, evidence_id: Uuid) -> String {
    format!("evidence/{org_id}/{evidence_id}")
}

/// A stored evidence item, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub evidence_id: Uuid,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// `api` or `direct_upload`.
    pub source: String,
    /// The seq of the `evidence.stored` event; null only while the event
    /// waits to be sequenced (after a sequencing failure).
    pub ledger_seq: Option<u64>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub blob_key: String,
}

impl Evidence {
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        parse_sha256_hex(&self.sha256)
    }
}

/// A file sent through `POST /api/evidence`.
#[derive(Debug, Clone)]
pub struct NewEvidence {
    pub filename: String,
    /// None stores `application/octet-stream`.
    pub content_type: Option<String>,
    /// The digest the client says the body has (`X-Content-SHA256`).
    pub declared_sha256: Option<[u8; 32]>,
    pub body: Bytes,
}

// ---------------------------------------------------------------------------
// Validation (pure)

/// Bidirectional-text controls can make `report\u{202e}fdp.exe` display as
/// `reportexe.pdf`; they have no business in a file name.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// 1 to 255 characters, no control or bidi characters, no path separators,
/// not `.` or `..`: a name, never a path.
pub fn validate_filename(name: &str) -> Result<(), String> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_FILENAME_CHARS {
        return Err(format!(
            "the file name must be 1 to {MAX_FILENAME_CHARS} characters"
        ));
    }
    if name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err("the file name must not contain control characters".into());
    }
    if name.contains('/') || name.contains('\\') {
        return Err("the file name must not contain '/' or '\\'".into());
    }
    if name == "." || name == ".." {
        return Err("the file name must not be '.' or '..'".into());
    }
    Ok(())
}

/// The `X-Filename` header: the name as UTF-8, or percent-encoded in the
/// RFC 8187 form `UTF-8''r%C3%A9sum%C3%A9.pdf` for clients that can only
/// send ASCII headers.
pub fn filename_from_header(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "X-Filename must be UTF-8".to_string())?;
    let name = match s.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("UTF-8''") => percent_decode_utf8(&s[7..])
            .ok_or_else(|| {
                "X-Filename in the UTF-8'' form must be percent-encoded UTF-8".to_string()
            })?,
        _ => s.to_string(),
    };
    validate_filename(&name)?;
    Ok(name)
}

fn percent_decode_utf8(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c)
}

/// The content type to store: the given one (a `type/subtype` media type,
/// optionally with parameters, printable ASCII, at most 256 bytes) or
/// `application/octet-stream` when none is given.
pub fn normalize_content_type(raw: Option<&str>) -> Result<String, String> {
    let ct = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_CONTENT_TYPE);
    let bad = || {
        Err(format!(
            "the content type must be a media type such as 'application/pdf' \
             (printable ASCII, at most {MAX_CONTENT_TYPE_BYTES} bytes)"
        ))
    };
    if ct.len() > MAX_CONTENT_TYPE_BYTES || !ct.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return bad();
    }
    let essence = ct.split(';').next().unwrap_or_default().trim();
    match essence.split_once('/') {
        Some((t, s))
            if !t.is_empty()
                && !s.is_empty()
                && t.chars().all(is_token_char)
                && s.chars().all(is_token_char) =>
        {
            Ok(ct.to_string())
        }
        _ => bad(),
    }
}

/// Exactly 64 hex digits (either case).
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// `Content-Disposition` for a download (RFC 6266): an ASCII fallback in
/// `filename` (quotes, backslashes, `%` and non-ASCII replaced by `_`) and
/// the exact name, percent-encoded UTF-8, in `filename*` (RFC 8187).
pub fn content_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c == ' ' || (c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%')) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(filename.len() * 3);
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

// ---------------------------------------------------------------------------
// Errors

fn checksum_mismatch(declared: &[u8; 32], actual: &[u8; 32]) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "checksum_mismatch",
        format!(
            "the file's SHA-256 is {}, not the declared {}; nothing was stored",
            hex::encode(actual),
            hex::encode(declared)
        ),
        "Send exactly the bytes whose SHA-256 you declared.",
    )
}

/// A blob-store failure as the client sees it: the store being away is a
/// 503 (retry later); anything else is our bug.
fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::Backend(_) => ApiError::unavailable(e),
        other => ApiError::internal(other),
    }
}

fn validation(e: String) -> ApiError {
    ApiError::validation(e)
}

// ---------------------------------------------------------------------------
// Storing

async fn plan_tier(ctx: &AppContext, org_id: Uuid) -> ApiResult<String> {
    let db = ctx.db().await?;
    let row = db
        .query_opt(
            "SELECT plan_tier::text FROM organizations WHERE id = $1",
            &[&org_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("organisation"))?;
    Ok(row.get(0))
}

/// Tags every evidence blob carries; the bucket's lifecycle rules match on
/// `plan_tier`.
fn blob_tags(org_id: Uuid, plan_tier: &str) -> Vec<(String, String)> {
    vec![
        ("org_id".to_string(), org_id.to_string()),
        ("plan_tier".to_string(), plan_tier.to_string()),
    ]
}

/// What the row and the event record about a new evidence item.
struct Record<'a> {
    org_id: Uuid,
    evidence_id: Uuid,
    filename: &'a str,
    content_type: &'a str,
    size: u64,
    sha256: [u8; 32],
    source: &'static str,
    created_at: DateTime<Utc>,
}

impl Record<'_> {
    fn blob_key(&self) -> String {
        blob_key(self.org_id, self.evidence_id)
    }

    fn event(&self, actor: &Actor) -> NewEvent {
        NewEvent {
            event_type: EVENT_STORED,
            subject: format!("evidence:{}", self.evidence_id),
            actor: actor.label(),
            request_id: actor.request_id.clone(),
            payload: json!({
                "evidence_id": self.evidence_id,
                "filename": self.filename,
                "content_type": self.content_type,
                "size": self.size,
                "sha256": hex::encode(self.sha256),
                "source": self.source,
            }),
        }
    }

    fn evidence(&self, ledger_seq: Option<u64>) -> Evidence {
        Evidence {
            evidence_id: self.evidence_id,
            filename: self.filename.to_string(),
            content_type: self.content_type.to_string(),
            size: self.size,
            sha256: hex::encode(self.sha256),
            source: self.source.to_string(),
            ledger_seq,
            created_at: self.created_at,
            blob_key: self.blob_key(),
        }
    }

    /// Appends the event and inserts the row in the caller's transaction.
    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        actor: &Actor,
    ) -> ApiResult<Pending> {
        let pending = append(tx, self.org_id, &self.event(actor), actor.at).await?;
        tx.execute(
            "INSERT INTO evidence (id, org_id, filename, content_type, size, sha256, blob_key,
                                   source, ledger_event_id, created_by, request_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &self.evidence_id,
                &self.org_id,
                &self.filename,
                &self.content_type,
                &(self.size as i64),
                &self.sha256.as_slice(),
                &self.blob_key(),
                &self.source,
                &pending.0,
                &actor.key_id,
                &actor.request_id,
                &self.created_at,
            ],
        )
        .await?;
        Ok(pending)
    }
}

/// How a failed database step left things.
enum TxFailure {
    /// Failed before COMMIT was sent: rolled back for sure.
    RolledBack(ApiError),
    /// COMMIT itself failed: the transaction may or may not have committed.
    Unknown(ApiError),
}

async fn insert_committed(
    ctx: &AppContext,
    rec: &Record<'_>,
    actor: &Actor,
) -> Result<(deadpool_postgres::Client, Pending), TxFailure> {
    let mut db = ctx.db().await.map_err(TxFailure::RolledBack)?;
    let tx = db
        .transaction()
        .await
        .map_err(|e| TxFailure::RolledBack(e.into()))?;
    let pending = rec
        .insert(&tx, actor)
        .await
        .map_err(TxFailure::RolledBack)?;
    tx.commit()
        .await
        .map_err(|e| TxFailure::Unknown(e.into()))?;
    Ok((db, pending))
}

/// Removes a blob whose database record was never written. Best effort: a
/// failure leaves an orphan blob (no row, no event), which is logged.
async fn discard_blob(ctx: &AppContext, key: &str) {
    if let Err(e) = ctx.blobs.delete(key).await {
        tracing::error!(blob_key = key, error = %e, "could not delete the blob of a failed upload");
    }
}

/// Stores one file sent through the API: checks the declared digest, writes
/// the blob, then the row and its ledger event in one transaction.
pub async fn upload_evidence(
    ctx: &AppContext,
    org_id: Uuid,
    actor: &Actor,
    input: NewEvidence,
) -> ApiResult<Evidence> {
    validate_filename(&input.filename).map_err(validation)?;
    let content_type = normalize_content_type(input.content_type.as_deref()).map_err(validation)?;
    if input.body.is_empty() {
        return Err(ApiError::validation(
            "the body is empty: send the file's bytes as the request body",
        ));
    }
    let sha256: [u8; 32] = Sha256::digest(&input.body).into();
    if let Some(declared) = input.declared_sha256 {
        if declared != sha256 {
            return Err(checksum_mismatch(&declared, &sha256));
        }
    }
    // Read before writing anything, so a database that is down fails the
    // upload before a blob exists.
    let tier = plan_tier(ctx, org_id).await?;

    let rec = Record {
        org_id,
        evidence_id: Uuid::new_v4(),
        filename: &input.filename,
        content_type: &content_type,
        size: input.body.len() as u64,
        sha256,
        source: "api",
        created_at: ctx.clock.now(),
    };
    let key = rec.blob_key();
    let opts = PutOptions {
        content_type: Some(content_type.clone()),
        tags: blob_tags(org_id, &tier),
        sha256: Some(sha256),
    };
    ctx.blobs
        .put(&key, input.body, &opts)
        .await
        .map_err(|e| match e {
            // The digest was checked above, so the store saw other bytes:
            // damaged on the way, which a retry may not repeat.
            BlobError::ChecksumMismatch => ApiError::unavailable(e),
            e => blob_error(e),
        })?;

    let (db, pending) = match insert_committed(ctx, &rec, actor).await {
        Ok(done) => done,
        Err(TxFailure::RolledBack(e)) => {
            discard_blob(ctx, &key).await;
            return Err(e);
        }
        Err(TxFailure::Unknown(e)) => {
            // Deleting the blob of a row that did commit would lose
            // evidence; only delete once the row is known to be absent.
            match committed_event(ctx, org_id, rec.evidence_id).await {
                Ok(Some((db, pending))) => (db, pending),
                Ok(None) => {
                    discard_blob(ctx, &key).await;
                    return Err(e);
                }
                Err(check) => {
                    tracing::error!(
                        evidence_id = %rec.evidence_id,
                        blob_key = %key,
                        error = %check,
                        "commit outcome unknown; keeping the blob"
                    );
                    return Err(e);
                }
            }
        }
    };
    let seq = settle_committed(&db, org_id, pending).await;
    tracing::info!(
        org_id = %org_id,
        evidence_id = %rec.evidence_id,
        ledger_seq = seq,
        size = rec.size,
        "evidence stored"
    );
    Ok(rec.evidence(seq))
}

/// After an ambiguous COMMIT: the ledger event of the evidence row, if the
/// row exists.
async fn committed_event(
    ctx: &AppContext,
    org_id: Uuid,
    evidence_id: Uuid,
) -> ApiResult<Option<(deadpool_postgres::Client, Pending)>> {
    let db = ctx.db().await?;
    let row = db
        .query_opt(
            "SELECT ledger_event_id FROM evidence WHERE id = $1 AND org_id = $2",
            &[&evidence_id, &org_id],
        )
        .await?;
    Ok(row.map(|r| Pending(r.get(0))).map(|p| (db, p)))
}

// ---------------------------------------------------------------------------
// Reading

const EVIDENCE_COLUMNS: &str = "e.id, e.filename, e.content_type, e.size, e.sha256, e.source, \
     l.seq, e.created_at, e.blob_key";

fn evidence_from_row(row: &tokio_postgres::Row) -> Evidence {
    let size: i64 = row.get(3);
    let sha256: Vec<u8> = row.get(4);
    let seq: Option<i64> = row.get(6);
    Evidence {
        evidence_id: row.get(0),
        filename: row.get(1),
        content_type: row.get(2),
        size: size as u64,
        sha256: hex::encode(sha256),
        source: row.get(5),
        ledger_seq: seq.map(|s| s as u64),
        created_at: row.get(7),
        blob_key: row.get(8),
    }
}

/// One evidence item of the organisation; another organisation's id is
/// "not found", exactly like an id that never existed.
pub async fn get_evidence(
    db: &impl GenericClient,
    org_id: Uuid,
    evidence_id: Uuid,
) -> ApiResult<Evidence> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence e
                   LEFT JOIN ledger_events l ON l.id = e.ledger_event_id
                  WHERE e.id = $1 AND e.org_id = $2"
            ),
            &[&evidence_id, &org_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("evidence"))?;
    Ok(evidence_from_row(&row))
}

/// The organisation's evidence, newest first, after the cursor (the
/// `evidence_id` of the last item of the previous page). Returns the page
/// and whether more follow.
pub async fn list_evidence(
    db: &impl GenericClient,
    org_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> ApiResult<(Vec<Evidence>, bool)> {
    let before_position: Option<i64> = match after {
        None => None,
        Some(id) => Some(
            db.query_opt(
                "SELECT position FROM evidence WHERE id = $1 AND org_id = $2",
                &[&id, &org_id],
            )
            .await?
            .ok_or_else(ApiError::invalid_cursor)?
            .get(0),
        ),
    };
    let rows = db
        .query(
            &format!(
                "SELECT {EVIDENCE_COLUMNS} FROM evidence e
                   LEFT JOIN ledger_events l ON l.id = e.ledger_event_id
                  WHERE e.org_id = $1 AND ($2::bigint IS NULL OR e.position < $2)
                  ORDER BY e.position DESC LIMIT $3"
            ),
            &[&org_id, &before_position, &(limit + 1)],
        )
        .await?;
    let has_more = rows.len() as i64 > limit;
    Ok((
        rows.iter()
            .take(limit as usize)
            .map(evidence_from_row)
            .collect(),
        has_more,
    ))
}

/// Where a client downloads an item from.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadLink {
    /// A presigned URL (S3), or this API's `/api/evidence/{id}/content`
    /// path (local store; needs the API key).
    pub download_url: String,
    /// When a presigned URL stops working; null for the API path.
    pub expires_at: Option<DateTime<Utc>>,
}

pub fn content_path(evidence_id: Uuid) -> String {
    format!("/api/evidence/{evidence_id}/content")
}

pub async fn download_link(ctx: &AppContext, ev: &Evidence) -> ApiResult<DownloadLink> {
    // The signature's expiry is computed from the real time by the SDK, not
    // from the context's clock, so the answer uses the real time too.
    let signed_at = Utc::now();
    match ctx
        .blobs
        .presign_get(&ev.blob_key, DOWNLOAD_URL_TTL)
        .await
        .map_err(blob_error)?
    {
        Some(url) => Ok(DownloadLink {
            download_url: url,
            expires_at: Some(signed_at + DOWNLOAD_URL_TTL),
        }),
        None => Ok(DownloadLink {
            download_url: content_path(ev.evidence_id),
            expires_at: None,
        }),
    }
}

/// The bytes of an item, or where to get them.
pub enum Content {
    /// A presigned URL to redirect to (S3).
    Redirect(DownloadLink),
    /// The bytes themselves (local store), checked against the recorded digest.
    Bytes(Bytes),
}

pub async fn content(ctx: &AppContext, ev: &Evidence) -> ApiResult<Content> {
    let link = download_link(ctx, ev).await?;
    if link.expires_at.is_some() {
        return Ok(Content::Redirect(link));
    }
    let bytes =
        match ctx.blobs.get(&ev.blob_key).await {
            Ok(b) => b,
            Err(BlobError::NotFound) => return Err(ApiError::new(
                StatusCode::GONE,
                "evidence_content_gone",
                "the file of this evidence item is no longer stored",
                "Its plan's retention period may have ended; the metadata and ledger event remain.",
            )),
            Err(e) => return Err(blob_error(e)),
        };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if Some(digest) != ev.sha256_bytes() {
        return Err(ApiError::internal(anyhow::anyhow!(
            "stored blob {} has SHA-256 {}, but evidence {} recorded {}",
            ev.blob_key,
            hex::encode(digest),
            ev.evidence_id,
            ev.sha256
        )));
    }
    Ok(Content::Bytes(bytes))
}

// ---------------------------------------------------------------------------
// Direct uploads

/// `POST /api/evidence/uploads`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDirectUpload {
    pub filename: String,
    #[serde(default)]
    pub content_type: Option<String>,
    pub size: u64,
    /// 64 hex digits.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectUpload {
    pub upload_id: Uuid,
    /// The id the evidence will have once the upload is completed.
    pub evidence_id: Uuid,
    pub url: String,
    pub method: &'static str,
    /// Send exactly these headers with the PUT: they are signed, and S3
    /// refuses a body whose SHA-256 is not the declared one.
    pub headers: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
    /// POST here once the PUT has succeeded.
    pub complete_url: String,
}

fn direct_upload_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "direct_upload_unavailable",
        "this server stores evidence on local disk and has no presigned uploads",
        "Upload the file (up to 5 MB) as the body of POST /api/evidence instead.",
    )
}

/// Starts a direct upload: a presigned PUT to the evidence's blob key that
/// S3 checks against the declared SHA-256, and a pending upload record.
pub async fn create_direct_upload(
    ctx: &AppContext,
    org_id: Uuid,
    actor: &Actor,
    input: NewDirectUpload,
) -> ApiResult<DirectUpload> {
    validate_filename(&input.filename).map_err(|e| validation(format!("'filename': {e}")))?;
    let content_type = normalize_content_type(input.content_type.as_deref())
        .map_err(|e| validation(format!("'content_type': {e}")))?;
    if input.size == 0 || input.size > MAX_DIRECT_UPLOAD_BYTES {
        return Err(validation(format!(
            "'size' must be 1 to {MAX_DIRECT_UPLOAD_BYTES} bytes"
        )));
    }
    let sha256 = parse_sha256_hex(&input.sha256)
        .ok_or_else(|| validation("'sha256' must be 64 hexadecimal digits".into()))?;

    let upload_id = Uuid::new_v4();
    let evidence_id = Uuid::new_v4();
    let key = blob_key(org_id, evidence_id);
    let signed_at = Utc::now();
    let url = ctx
        .blobs
        .presign_put(&key, UPLOAD_URL_TTL, &content_type, Some(sha256))
        .await
        .map_err(blob_error)?
        .ok_or_else(direct_upload_unavailable)?;
    let expires_at = signed_at + UPLOAD_URL_TTL;

    let db = ctx.db().await?;
    db.execute(
        "INSERT INTO evidence_uploads (id, org_id, evidence_id, blob_key, filename, content_type,
                                       size, sha256, created_by, request_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &upload_id,
            &org_id,
            &evidence_id,
            &key,
            &input.filename,
            &content_type,
            &(input.size as i64),
            &sha256.as_slice(),
            &actor.key_id,
            &actor.request_id,
            &ctx.clock.now(),
            &expires_at,
        ],
    )
    .await?;
    tracing::info!(org_id = %org_id, upload_id = %upload_id, evidence_id = %evidence_id, "direct upload started");
    Ok(DirectUpload {
        upload_id,
        evidence_id,
        url,
        method: "PUT",
        headers: presigned_put_headers(&content_type, Some(sha256))
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        expires_at,
        complete_url: format!("/api/evidence/uploads/{upload_id}/complete"),
    })
}

struct UploadRow {
    evidence_id: Uuid,
    blob_key: String,
    filename: String,
    content_type: String,
    size: u64,
    sha256: [u8; 32],
    state: String,
    failure_reason: Option<String>,
}

async fn load_upload(
    db: &impl GenericClient,
    org_id: Uuid,
    upload_id: Uuid,
    for_update: bool,
) -> ApiResult<UploadRow> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let row = db
        .query_opt(
            &format!(
                "SELECT evidence_id, blob_key, filename, content_type, size, sha256, state,
                        failure_reason
                   FROM evidence_uploads WHERE id = $1 AND org_id = $2{lock}"
            ),
            &[&upload_id, &org_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("upload"))?;
    let size: i64 = row.get(4);
    let sha: Vec<u8> = row.get(5);
    Ok(UploadRow {
        evidence_id: row.get(0),
        blob_key: row.get(1),
        filename: row.get(2),
        content_type: row.get(3),
        size: size as u64,
        sha256: sha
            .try_into()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("stored sha256 is not 32 bytes")))?,
        state: row.get(6),
        failure_reason: row.get(7),
    })
}

fn upload_failed(reason: Option<&str>) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "upload_failed",
        format!(
            "this upload failed ({}) and cannot be completed",
            reason.unwrap_or("unknown reason")
        ),
        "Start a new upload with POST /api/evidence/uploads.",
    )
}

/// What completing gave: a new item, or the one an earlier completion made.
pub enum Completed {
    New(Evidence),
    Existing(Evidence),
}

/// Reads the object back and hashes it, with bounded memory.
async fn stored_digest(ctx: &AppContext, key: &str) -> Result<([u8; 32], u64), BlobError> {
    let mut reader = ctx.blobs.get_stream(key).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| BlobError::Backend(anyhow::Error::new(e).context("reading an object")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// Marks an upload failed and removes its object, so a wrong file is never
/// kept or recorded.
async fn fail_upload(
    ctx: &AppContext,
    org_id: Uuid,
    upload_id: Uuid,
    key: &str,
    reason: &str,
) -> ApiResult<()> {
    let db = ctx.db().await?;
    db.execute(
        "UPDATE evidence_uploads SET state = 'failed', failure_reason = $3, finished_at = $4
          WHERE id = $1 AND org_id = $2 AND state = 'pending'",
        &[&upload_id, &org_id, &reason, &ctx.clock.now()],
    )
    .await?;
    discard_blob(ctx, key).await;
    tracing::info!(org_id = %org_id, upload_id = %upload_id, reason, "direct upload refused");
    Ok(())
}

/// Records a direct upload once its object is there with the declared size
/// and SHA-256. Completing again returns the same evidence (no new event).
pub async fn complete_direct_upload(
    ctx: &AppContext,
    org_id: Uuid,
    actor: &Actor,
    upload_id: Uuid,
) -> ApiResult<Completed> {
    let up = {
        let db = ctx.db().await?;
        let up = load_upload(&**db, org_id, upload_id, false).await?;
        match up.state.as_str() {
            "completed" => {
                return Ok(Completed::Existing(
                    get_evidence(&**db, org_id, up.evidence_id).await?,
                ))
            }
            "failed" => return Err(upload_failed(up.failure_reason.as_deref())),
            _ => up,
        }
    };

    let meta = ctx
        .blobs
        .head(&up.blob_key)
        .await
        .map_err(blob_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "upload_not_received",
                "the file has not been uploaded yet",
                "PUT the file to the upload's url with its headers, then complete the upload again.",
            )
        })?;
    let mismatch = |what: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "checksum_mismatch",
            format!("the uploaded file does not match the declared {what}; it was discarded"),
            "Start a new upload and PUT exactly the declared file.",
        )
    };
    if meta.size != up.size {
        let reason = format!("size {} instead of the declared {}", meta.size, up.size);
        fail_upload(ctx, org_id, upload_id, &up.blob_key, &reason).await?;
        return Err(mismatch("size"));
    }
    // S3 verified the signed checksum when the object was PUT, but not every
    // S3-compatible store does, and the port does not expose S3's checksum:
    // read the object back unless its digest is already known.
    let (digest, read) = match meta.sha256 {
        Some(d) => (d, meta.size),
        None => stored_digest(ctx, &up.blob_key).await.map_err(blob_error)?,
    };
    if digest != up.sha256 || read != up.size {
        let reason = format!(
            "SHA-256 {} instead of the declared one",
            hex::encode(digest)
        );
        fail_upload(ctx, org_id, upload_id, &up.blob_key, &reason).await?;
        return Err(mismatch("SHA-256"));
    }
    // A presigned PUT carries no tags; the lifecycle rules need them.
    let tier = plan_tier(ctx, org_id).await?;
    ctx.blobs
        .put_tags(&up.blob_key, &blob_tags(org_id, &tier))
        .await
        .map_err(blob_error)?;

    let rec = Record {
        org_id,
        evidence_id: up.evidence_id,
        filename: &up.filename,
        content_type: &up.content_type,
        size: up.size,
        sha256: up.sha256,
        source: "direct_upload",
        created_at: ctx.clock.now(),
    };
    // The object stays if this fails: it is the client's valid upload, and
    // completing again retries.
    let mut db = ctx.db().await?;
    let tx = db.transaction().await?;
    let locked = load_upload(&*tx, org_id, upload_id, true).await?;
    match locked.state.as_str() {
        "pending" => {}
        "completed" => {
            // A concurrent completion won.
            drop(tx);
            return Ok(Completed::Existing(
                get_evidence(&**db, org_id, up.evidence_id).await?,
            ));
        }
        _ => return Err(upload_failed(locked.failure_reason.as_deref())),
    }
    let pending = rec.insert(&tx, actor).await?;
    tx.execute(
        "UPDATE evidence_uploads SET state = 'completed', finished_at = $2 WHERE id = $1",
        &[&upload_id, &rec.created_at],
    )
    .await?;
    tx.commit().await?;
    let seq = settle_committed(&db, org_id, pending).await;
    tracing::info!(
        org_id = %org_id,
        evidence_id = %rec.evidence_id,
        upload_id = %upload_id,
        ledger_seq = seq,
        size = rec.size,
        "evidence stored from a direct upload"
    );
    Ok(Completed::New(rec.evidence(seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_names_not_paths() {
        for good in [
            "report.pdf",
            "a",
            "résumé 2026 (final).docx",
            "證據.txt",
            ".hidden",
            "...",
        ] {
            assert!(validate_filename(good).is_ok(), "{good:?}");
        }
        assert!(validate_filename(&"x".repeat(255)).is_ok());
        assert!(
            validate_filename(&"é".repeat(255)).is_ok(),
            "counted in characters"
        );
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../etc/passwd",
            "a\\b",
            "line\nbreak",
            "tab\there",
            "nul\0",
            "del\u{7f}",
            "evil\u{202e}fdp.exe",
        ] {
            assert!(validate_filename(bad).is_err(), "{bad:?}");
        }
        assert!(validate_filename(&"x".repeat(256)).is_err());
    }

    #[test]
    fn filename_header_accepts_utf8_and_the_rfc8187_form() {
        assert_eq!(filename_from_header(b"plain.txt").unwrap(), "plain.txt");
        assert_eq!(
            filename_from_header("résumé.pdf".as_bytes()).unwrap(),
            "résumé.pdf"
        );
        assert_eq!(
            filename_from_header(b"UTF-8''r%C3%A9sum%C3%A9%20v2.pdf").unwrap(),
            "résumé v2.pdf"
        );
        assert_eq!(
            filename_from_header(b"utf-8''a%2Fb").unwrap_err(),
            "the file name must not contain '/' or '\\'"
        );
        assert!(filename_from_header(b"UTF-8''bad%zz").is_err());
        assert!(filename_from_header(b"UTF-8''%FF").is_err());
        assert!(filename_from_header(b"\xff\xfe").is_err());
        assert!(filename_from_header(b"").is_err());
    }

    #[test]
    fn content_types_are_media_types() {
        assert_eq!(
            normalize_content_type(None).unwrap(),
            "application/octet-stream"
        );
        assert_eq!(
            normalize_content_type(Some("  ")).unwrap(),
            "application/octet-stream"
        );
        assert_eq!(
            normalize_content_type(Some("text/plain; charset=utf-8")).unwrap(),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            normalize_content_type(Some(
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            ))
            .unwrap(),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        );
        for bad in [
            "pdf",
            "/pdf",
            "text/",
            "text/plain\r\nX-Evil: 1",
            "té/xt",
            "a b/c",
        ] {
            assert!(normalize_content_type(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(normalize_content_type(Some(&format!("a/{}", "b".repeat(300)))).is_err());
    }

    #[test]
    fn sha256_hex_is_exactly_64_digits() {
        let h = "ab".repeat(32);
        assert_eq!(parse_sha256_hex(&h), Some([0xab; 32]));
        assert_eq!(parse_sha256_hex(&h.to_uppercase()), Some([0xab; 32]));
        assert!(parse_sha256_hex(&h[..62]).is_none());
        assert!(parse_sha256_hex(&format!("{h}00")).is_none());
        assert!(parse_sha256_hex(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn content_disposition_escapes_the_name() {
        assert_eq!(
            content_disposition("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            content_disposition("a \"quoted\" \\ 100%;.txt"),
            "attachment; filename=\"a _quoted_ _ 100_;.txt\"; \
             filename*=UTF-8''a%20%22quoted%22%20%5C%20100%25%3B.txt"
        );
        assert_eq!(
            content_disposition("résumé.pdf"),
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
        );
        // Always a valid header value.
        for name in ["證據.txt", "x\"y", "semi;colon", "e\u{301}"] {
            assert!(http::HeaderValue::from_str(&content_disposition(name)).is_ok());
        }
    }

    #[test]
    fn blob_keys_are_per_org_and_valid() {
        let org = Uuid::from_u128(1);
        let id = Uuid::from_u128(2);
        let key = blob_key(org, id);
        assert_eq!(key, format!("evidence/{org}/{id}"));
        assert!(crate::blob::validate_key(&key).is_ok());
    }
}
