//! `S3BlobStore`: blobs in an S3 bucket (aws-sdk-s3).
//!
//! Integrity: every upload carries its SHA-256 (`x-amz-checksum-sha256`, and
//! per part for multipart uploads), so S3 refuses bytes damaged in transit.
//! The whole-blob digest is also kept in user metadata (`x-amz-meta-sha256`)
//! because S3's own checksum of a multipart upload is a digest of digests,
//! not the blob's SHA-256.

use super::{
    checked_options, checksum_header_value, parse_hex_digest, sorted_tags, validate_content_type,
    validate_key, validate_tags, BlobError, BlobMeta, BlobReader, BlobStore, PutOptions,
    MAX_PRESIGN_TTL,
};
use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Tag, Tagging};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Multipart part size. S3 needs at least 5 MiB per part (but the last);
/// 8 MiB keeps memory bounded (at most three parts held: one uploading, the
/// next waiting, one filling from the reader; 24 MiB whatever the blob's
/// size) while allowing blobs up to 80 GiB in S3's 10,000 parts.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
const MAX_PARTS: i32 = 10_000;
/// User metadata key holding the hex SHA-256 of the whole blob.
const SHA256_METADATA: &str = "sha256";

#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// An S3 client for `sdk_config`. With a custom endpoint (an emulator such
/// as moto, or any S3-compatible store) it uses path-style addressing,
/// because `bucket.127.0.0.1` does not resolve.
pub fn s3_client(sdk_config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let mut builder = aws_sdk_s3::config::Builder::from(sdk_config);
    if sdk_config.endpoint_url().is_some() {
        builder = builder.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

fn sdk_error<E>(e: SdkError<E>, context: &'static str) -> BlobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    BlobError::Backend(anyhow::anyhow!("{}", DisplayErrorContext(&e)).context(context))
}

/// S3's answer when a body does not match the checksum sent with it.
fn is_checksum_error<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(
        e.code(),
        Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch")
    )
}

fn is_missing_key<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NotFound"))
        || (e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
            && !matches!(e.code(), Some("NoSuchBucket")))
}

/// A key-level error: a missing object is `NotFound`, anything else a
/// backend error saying what was being done.
fn key_error<E>(context: &'static str) -> impl FnOnce(SdkError<E>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    move |e| {
        if is_missing_key(&e) {
            BlobError::NotFound
        } else {
            sdk_error(e, context)
        }
    }
}

/// The `x-amz-tagging` header: tags as a URL-encoded query string.
fn tagging_header(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn presigning_config(ttl: Duration) -> Result<PresigningConfig, BlobError> {
    let ttl = ttl.clamp(Duration::from_secs(1), MAX_PRESIGN_TTL);
    PresigningConfig::expires_in(ttl).map_err(|e| BlobError::InvalidInput(e.to_string()))
}

/// Reads until `buf` holds `limit` bytes or the reader ends.
async fn fill(reader: &mut BlobReader, buf: &mut BytesMut, limit: usize) -> Result<(), BlobError> {
    while buf.len() < limit {
        let n = (&mut *reader)
            .take((limit - buf.len()) as u64)
            .read_buf(buf)
            .await
            .map_err(|e| BlobError::backend(e, "reading the upload stream"))?;
        if n == 0 {
            break;
        }
    }
    Ok(())
}

async fn read_part(reader: &mut BlobReader) -> Result<Bytes, BlobError> {
    let mut buf = BytesMut::with_capacity(PART_SIZE);
    fill(reader, &mut buf, PART_SIZE).await?;
    Ok(buf.freeze())
}

impl S3BlobStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3BlobStore {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, BlobError> {
        let checksum = checksum_header_value(&Sha256::digest(&body).into());
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| {
                if is_checksum_error(&e) {
                    BlobError::ChecksumMismatch
                } else {
                    sdk_error(e, "uploading a part")
                }
            })?;
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .checksum_sha256(checksum)
            .build())
    }

    /// Uploads the parts after `first` and completes the upload. Each part
    /// uploads while the next one is read, so reading and sending overlap.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Bytes,
        mut next: Bytes,
        reader: &mut BlobReader,
        declared: Option<[u8; 32]>,
    ) -> Result<u64, BlobError> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut parts = Vec::new();
        let mut current = first;
        let mut part_number = 1;
        while !current.is_empty() {
            if part_number > MAX_PARTS {
                return Err(BlobError::InvalidInput(format!(
                    "the stream is longer than {MAX_PARTS} parts of {PART_SIZE} bytes"
                )));
            }
            hasher.update(&current);
            size += current.len() as u64;
            let upload = self.upload_part(key, upload_id, part_number, current);
            let (done, following) = if next.is_empty() {
                (upload.await, Ok(Bytes::new()))
            } else {
                tokio::join!(upload, read_part(reader))
            };
            parts.push(done?);
            current = next;
            next = following?;
            part_number += 1;
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if declared.is_some_and(|want| want != digest) {
            return Err(BlobError::ChecksumMismatch);
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error(e, "completing a multipart upload"))?;
        Ok(size)
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, body: Bytes, opts: &PutOptions) -> Result<(), BlobError> {
        validate_key(key)?;
        let content_type = checked_options(opts)?;
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if opts.sha256.is_some_and(|want| want != digest) {
            return Err(BlobError::ChecksumMismatch);
        }
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .checksum_sha256(checksum_header_value(&digest))
            .metadata(SHA256_METADATA, hex::encode(digest))
            .body(ByteStream::from(body));
        if !opts.tags.is_empty() {
            request = request.tagging(tagging_header(&opts.tags));
        }
        request.send().await.map_err(|e| {
            if is_checksum_error(&e) {
                BlobError::ChecksumMismatch
            } else {
                sdk_error(e, "putting an object")
            }
        })?;
        Ok(())
    }

    async fn put_stream(
        &self,
        key: &str,
        mut reader: BlobReader,
        opts: &PutOptions,
    ) -> Result<u64, BlobError> {
        validate_key(key)?;
        let content_type = checked_options(opts)?;

        // Up to one part (and one byte more, to know whether there is more)
        // goes up as a single PUT: multipart costs three requests.
        let first = read_part(&mut reader).await?;
        let next = if first.len() == PART_SIZE {
            read_part(&mut reader).await?
        } else {
            Bytes::new()
        };
        if next.is_empty() {
            let size = first.len() as u64;
            self.put(key, first, opts).await?;
            return Ok(size);
        }

        let mut create = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        if let Some(digest) = opts.sha256 {
            create = create.metadata(SHA256_METADATA, hex::encode(digest));
        }
        if !opts.tags.is_empty() {
            create = create.tagging(tagging_header(&opts.tags));
        }
        let created = create
            .send()
            .await
            .map_err(|e| sdk_error(e, "starting a multipart upload"))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            BlobError::Backend(anyhow::anyhow!(
                "S3 started a multipart upload without an id"
            ))
        })?;

        let result = self
            .upload_parts(key, upload_id, first, next, &mut reader, opts.sha256)
            .await;
        if result.is_err() {
            // An unfinished upload is invisible but its parts are billed
            // until aborted (the bucket's lifecycle rule is the backstop).
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
            {
                tracing::warn!(
                    upload_id,
                    error = %DisplayErrorContext(&e),
                    "could not abort a failed multipart upload"
                );
            }
        }
        result
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(key_error("getting an object"))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| BlobError::backend(e, "reading an object body"))?;
        Ok(body.into_bytes())
    }

    async fn get_stream(&self, key: &str) -> Result<BlobReader, BlobError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(key_error("getting an object"))?;
        Ok(Box::new(Box::pin(out.body.into_async_read())))
    }

    async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        validate_key(key)?;
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_missing_key(&e) => return Ok(None),
            Err(e) => return Err(sdk_error(e, "reading an object's metadata")),
        };
        Ok(Some(BlobMeta {
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            content_type: out
                .content_type()
                .unwrap_or(super::DEFAULT_CONTENT_TYPE)
                .to_string(),
            sha256: out
                .metadata()
                .and_then(|m| m.get(SHA256_METADATA))
                .and_then(|hex| parse_hex_digest(hex)),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        // S3's DeleteObject already succeeds for a missing key.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(e, "deleting an object"))?;
        Ok(())
    }

    async fn get_tags(&self, key: &str) -> Result<Vec<(String, String)>, BlobError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(key_error("reading an object's tags"))?;
        Ok(sorted_tags(
            out.tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect(),
        ))
    }

    async fn put_tags(&self, key: &str, tags: &[(String, String)]) -> Result<(), BlobError> {
        validate_key(key)?;
        validate_tags(tags)?;
        if tags.is_empty() {
            // S3's own way to clear tags (an empty PutObjectTagging is
            // refused by some S3 implementations). Not every implementation
            // reports a missing key from DeleteObjectTagging, hence the HEAD.
            if self.head(key).await?.is_none() {
                return Err(BlobError::NotFound);
            }
            self.client
                .delete_object_tagging()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(key_error("clearing an object's tags"))?;
            return Ok(());
        }
        let tag_set = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BlobError::InvalidInput(e.to_string()))?;
        let tagging = Tagging::builder()
            .set_tag_set(Some(tag_set))
            .build()
            .map_err(|e| BlobError::InvalidInput(e.to_string()))?;
        self.client
            .put_object_tagging()
            .bucket(&self.bucket)
            .key(key)
            .tagging(tagging)
            .send()
            .await
            .map_err(key_error("setting an object's tags"))?;
        Ok(())
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<String>, BlobError> {
        validate_key(key)?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning_config(ttl)?)
            .await
            .map_err(|e| sdk_error(e, "presigning a GET"))?;
        Ok(Some(presigned.uri().to_string()))
    }

    async fn presign_put(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        sha256: Option<[u8; 32]>,
    ) -> Result<Option<String>, BlobError> {
        validate_key(key)?;
        validate_content_type(content_type)?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type);
        if let Some(digest) = sha256 {
            request = request.checksum_sha256(checksum_header_value(&digest));
        }
        let presigned = request
            .presigned(presigning_config(ttl)?)
            .await
            .map_err(|e| sdk_error(e, "presigning a PUT"))?;
        Ok(Some(presigned.uri().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_header_is_url_encoded() {
        let tags = vec![
            ("org id".to_string(), "a+b=c/d".to_string()),
            ("tier".to_string(), "pro".to_string()),
        ];
        assert_eq!(tagging_header(&tags), "org%20id=a%2Bb%3Dc%2Fd&tier=pro");
        assert_eq!(url_encode("é"), "%C3%A9");
    }
}
