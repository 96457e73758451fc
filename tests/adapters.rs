//! The `BlobStore` and `Queue` contracts, written once and run against every
//! adapter: S3 and SQS on moto's server (`LEDGERLINE_TEST_AWS_ENDPOINT`), the
//! local filesystem store in a temp directory, and `PgQueue` in a fresh
//! Postgres database (`LEDGERLINE_TEST_DATABASE_URL`). Run through
//! `scripts/test.sh`, which starts both and sets the variables; without
//! them these tests fail rather than pass vacuously.
//!
//! Where moto is laxer than AWS (it checks no signatures, expiries or
//! checksums, and honours stale SQS receipt handles) the contract asserts
//! only what the emulator can show, and the S3/SQS-specific tests below
//! check the requests we build instead (signed headers, expiry caps).

use aws_sdk_s3::config::{Credentials, Region};
use bytes::Bytes;
use ledgerline::blob::{
    presigned_put_headers, s3_client, BlobError, BlobReader, BlobStore, LocalBlobStore, PutOptions,
    S3BlobStore, DEFAULT_CONTENT_TYPE, MAX_KEY_BYTES,
};
use ledgerline::queue::{PgQueue, Queue, QueueError, ReceivedMessage, SqsQueue};
use ledgerline_tests::{aws_endpoint, test_db, TestDb};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

const MIB: usize = 1024 * 1024;
/// The S3 adapter's part size (8 MiB); sizes around it exercise both paths.
const PART: usize = 8 * MIB;

// ---------------------------------------------------------------------------
// Fixtures

/// An SDK config for moto. Credentials and region are given explicitly (as
/// `scripts/test.sh` also exports them) so the tests need no environment
/// beyond the endpoint, and never touch a real account.
async fn moto_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(aws_endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "ledgerline-tests",
        ))
        .load()
        .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A blob store under test, plus what keeps its backing alive.
struct BlobSubject {
    store: Arc<dyn BlobStore>,
    /// Whether the store hands out presigned URLs (S3) or has none (local).
    presigns: bool,
    _dir: Option<TempDir>,
}

struct S3Subject {
    subject: BlobSubject,
    client: aws_sdk_s3::Client,
    bucket: String,
}

async fn s3_subject() -> S3Subject {
    let client = s3_client(&moto_config().await);
    let bucket = unique("ll-test");
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a test bucket on moto");
    S3Subject {
        subject: BlobSubject {
            store: Arc::new(S3BlobStore::new(client.clone(), bucket.clone())),
            presigns: true,
            _dir: None,
        },
        client,
        bucket,
    }
}

async fn local_subject() -> BlobSubject {
    let dir = std::env::temp_dir().join(unique("ledgerline-blobs"));
    BlobSubject {
        store: Arc::new(LocalBlobStore::new(&dir)),
        presigns: false,
        _dir: Some(TempDir(dir)),
    }
}

/// A queue under test, plus what keeps its backing alive.
struct QueueSubject {
    queue: Arc<dyn Queue>,
    /// SQS documents that a stale receipt handle cannot delete the message
    /// or change its visibility; moto does not implement that (it accepts
    /// any handle the message ever had), so against moto it is not asserted.
    enforces_stale_handles: bool,
    _db: Option<TestDb>,
}

async fn sqs_subject() -> QueueSubject {
    let client = aws_sdk_sqs::Client::new(&moto_config().await);
    let created = client
        .create_queue()
        .queue_name(unique("ll-test"))
        .send()
        .await
        .expect("create a test queue on moto");
    let url = created.queue_url().expect("queue url").to_string();
    QueueSubject {
        queue: Arc::new(SqsQueue::new(client, url)),
        enforces_stale_handles: false,
        _db: None,
    }
}

async fn pg_subject() -> QueueSubject {
    let db = test_db().await;
    QueueSubject {
        queue: Arc::new(PgQueue::new(db.pool.clone(), "contract")),
        enforces_stale_handles: true,
        _db: Some(db),
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Deterministic, non-repeating bytes, so a misplaced or repeated part
/// changes the digest.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Yields `data` in small, uneven reads (as a network body would), then
/// optionally fails instead of ending.
struct ChoppyReader {
    data: Bytes,
    pos: usize,
    fail_at_end: bool,
}

impl ChoppyReader {
    fn boxed(data: Vec<u8>) -> BlobReader {
        Box::new(ChoppyReader {
            data: Bytes::from(data),
            pos: 0,
            fail_at_end: false,
        })
    }

    fn failing_after(data: Vec<u8>) -> BlobReader {
        Box::new(ChoppyReader {
            data: Bytes::from(data),
            pos: 0,
            fail_at_end: true,
        })
    }
}

impl AsyncRead for ChoppyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos == self.data.len() {
            if self.fail_at_end {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "client went away",
                )));
            }
            return Poll::Ready(Ok(()));
        }
        // 61 KiB + a few bytes: never aligned with any buffer or part size.
        let n = (61 * 1024 + 7 * (self.pos % 5))
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

async fn read_all(mut reader: BlobReader) -> Vec<u8> {
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .await
        .expect("read the blob stream");
    out
}

fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn signed_headers(url: &str) -> Vec<String> {
    query_param(url, "X-Amz-SignedHeaders")
        .expect("a SigV4 presigned URL names its signed headers")
        .replace("%3B", ";")
        .replace("%3b", ";")
        .split(';')
        .map(str::to_string)
        .collect()
}

async fn receive_all(q: &dyn Queue, want: usize, visibility: Duration) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < want && Instant::now() < deadline {
        got.extend(
            q.receive(10, visibility, Duration::from_secs(1))
                .await
                .expect("receive"),
        );
    }
    got
}

// ---------------------------------------------------------------------------
// The BlobStore contract

mod blob_contract {
    use super::*;

    pub async fn put_get_head_delete(s: &BlobSubject) {
        let store = &*s.store;
        let key = format!("{}/evidence/report.pdf", unique("org"));
        let v1 = Bytes::from_static(b"%PDF-1.7 evidence, version one");
        store
            .put(
                &key,
                v1.clone(),
                &PutOptions {
                    content_type: Some("application/pdf".into()),
                    ..Default::default()
                },
            )
            .await
            .expect("put");
        assert_eq!(store.get(&key).await.expect("get"), v1);
        let meta = store.head(&key).await.expect("head").expect("blob exists");
        assert_eq!(meta.size, v1.len() as u64);
        assert_eq!(meta.content_type, "application/pdf");
        assert_eq!(meta.sha256, Some(sha256(&v1)));

        // Overwriting replaces bytes and metadata alike.
        let v2 = Bytes::from_static(b"two");
        store
            .put(&key, v2.clone(), &PutOptions::default())
            .await
            .expect("overwrite");
        assert_eq!(store.get(&key).await.expect("get v2"), v2);
        assert_eq!(
            read_all(store.get_stream(&key).await.expect("get_stream")).await,
            v2
        );
        let meta = store.head(&key).await.expect("head").expect("blob exists");
        assert_eq!(meta.size, 3);
        assert_eq!(meta.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(meta.sha256, Some(sha256(&v2)));

        store.delete(&key).await.expect("delete");
        assert!(matches!(store.get(&key).await, Err(BlobError::NotFound)));
        assert_eq!(store.head(&key).await.expect("head after delete"), None);
        store.delete(&key).await.expect("deleting twice succeeds");

        // An empty blob is a blob.
        let empty = format!("{}/empty", unique("org"));
        store
            .put(&empty, Bytes::new(), &PutOptions::default())
            .await
            .expect("put empty");
        assert_eq!(store.get(&empty).await.expect("get empty"), Bytes::new());
        assert_eq!(
            store.head(&empty).await.expect("head").map(|m| m.size),
            Some(0)
        );
    }

    pub async fn missing_blobs_are_not_found(s: &BlobSubject) {
        let store = &*s.store;
        let key = unique("never-written");
        assert!(matches!(store.get(&key).await, Err(BlobError::NotFound)));
        assert!(matches!(
            store.get_stream(&key).await,
            Err(BlobError::NotFound)
        ));
        assert_eq!(store.head(&key).await.expect("head"), None);
        assert!(matches!(
            store.get_tags(&key).await,
            Err(BlobError::NotFound)
        ));
        assert!(matches!(
            store.put_tags(&key, &tags(&[("a", "b")])).await,
            Err(BlobError::NotFound)
        ));
        assert!(matches!(
            store.put_tags(&key, &[]).await,
            Err(BlobError::NotFound)
        ));
        store
            .delete(&key)
            .await
            .expect("deleting a missing blob succeeds");
        // Not-found is its own error, told apart from failures.
        let e = store.get(&key).await.expect_err("missing");
        assert_eq!(e.to_string(), "blob not found");
    }

    pub async fn tags_round_trip(s: &BlobSubject) {
        let store = &*s.store;
        let key = format!("{}/tagged.bin", unique("org"));
        let body = Bytes::from_static(b"tagged bytes");
        store
            .put(
                &key,
                body.clone(),
                &PutOptions {
                    tags: tags(&[
                        ("tier", "pro"),
                        ("org id", "a+b=c.d_e:f/g@h"),
                        ("class", "evidence"),
                    ]),
                    ..Default::default()
                },
            )
            .await
            .expect("put with tags");
        assert_eq!(
            store.get_tags(&key).await.expect("get_tags"),
            tags(&[
                ("class", "evidence"),
                ("org id", "a+b=c.d_e:f/g@h"),
                ("tier", "pro")
            ]),
            "tags come back sorted by key"
        );

        store
            .put_tags(&key, &tags(&[("retention", "expired")]))
            .await
            .expect("put_tags");
        assert_eq!(
            store.get_tags(&key).await.expect("get_tags"),
            tags(&[("retention", "expired")]),
            "put_tags replaces the whole set"
        );
        assert_eq!(store.get(&key).await.expect("get"), body, "bytes untouched");
        assert_eq!(
            store.head(&key).await.expect("head").and_then(|m| m.sha256),
            Some(sha256(&body))
        );

        store.put_tags(&key, &[]).await.expect("clear tags");
        assert!(store.get_tags(&key).await.expect("get_tags").is_empty());

        // S3's tag rules, enforced by both adapters before any I/O.
        let eleven: Vec<_> = (0..11)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        for bad in [
            eleven,
            tags(&[("aws:reserved", "x")]),
            tags(&[("k", "semi;colon")]),
        ] {
            assert!(matches!(
                store.put_tags(&key, &bad).await,
                Err(BlobError::InvalidInput(_))
            ));
            let other = unique("bad-tags");
            assert!(matches!(
                store
                    .put(
                        &other,
                        body.clone(),
                        &PutOptions {
                            tags: bad,
                            ..Default::default()
                        }
                    )
                    .await,
                Err(BlobError::InvalidInput(_))
            ));
            assert_eq!(store.head(&other).await.expect("head"), None);
        }
    }

    pub async fn put_stream_20_mib(s: &BlobSubject) {
        let store = &*s.store;
        let key = format!("{}/exports/bundle.tar", unique("org"));
        // Not a multiple of the part size: three parts, the last a short one.
        let data = pseudo_random(20 * MIB + 12_345, 20);
        let digest = sha256(&data);
        let opts = PutOptions {
            content_type: Some("application/x-tar".into()),
            tags: tags(&[("kind", "export")]),
            sha256: Some(digest),
        };
        let size = store
            .put_stream(&key, ChoppyReader::boxed(data.clone()), &opts)
            .await
            .expect("put_stream");
        assert_eq!(size, data.len() as u64);

        let back = store.get(&key).await.expect("get");
        assert_eq!(back.len(), data.len());
        assert_eq!(sha256(&back), digest, "bytes come back intact");
        let streamed = read_all(store.get_stream(&key).await.expect("get_stream")).await;
        assert_eq!(sha256(&streamed), digest);

        let meta = store.head(&key).await.expect("head").expect("exists");
        assert_eq!(meta.size, data.len() as u64);
        assert_eq!(meta.content_type, "application/x-tar");
        assert_eq!(meta.sha256, Some(digest), "a declared digest is recorded");
        assert_eq!(
            store.get_tags(&key).await.expect("tags"),
            tags(&[("kind", "export")])
        );
    }

    pub async fn put_stream_sizes_around_a_part(s: &BlobSubject) {
        let store = &*s.store;
        for (i, len) in [0, 1_000, PART - 1, PART, PART + 1].into_iter().enumerate() {
            let key = format!("{}/stream-{len}", unique("org"));
            let data = pseudo_random(len, i as u64 + 1);
            // No declared digest this time: the store works one out itself.
            let size = store
                .put_stream(
                    &key,
                    ChoppyReader::boxed(data.clone()),
                    &PutOptions::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("put_stream of {len} bytes: {e}"));
            assert_eq!(size, len as u64);
            let back = store.get(&key).await.expect("get");
            assert_eq!(back.len(), len, "length of a {len}-byte stream");
            assert_eq!(sha256(&back), sha256(&data), "bytes of a {len}-byte stream");
            assert_eq!(
                store.head(&key).await.expect("head").map(|m| m.size),
                Some(len as u64)
            );
        }
    }

    pub async fn failed_uploads_store_nothing(s: &BlobSubject) {
        let store = &*s.store;
        let wrong = Some([7u8; 32]);

        // A declared digest that does not match: refused, nothing stored.
        let key = unique("mismatch");
        let e = store
            .put(
                &key,
                Bytes::from_static(b"abc"),
                &PutOptions {
                    sha256: wrong,
                    ..Default::default()
                },
            )
            .await
            .expect_err("wrong digest");
        assert!(matches!(e, BlobError::ChecksumMismatch), "{e}");
        assert_eq!(store.head(&key).await.expect("head"), None);

        // The same for a multipart-sized stream, which fails only at the end.
        let data = pseudo_random(PART + 1_000, 3);
        let e = store
            .put_stream(
                &key,
                ChoppyReader::boxed(data),
                &PutOptions {
                    sha256: wrong,
                    ..Default::default()
                },
            )
            .await
            .expect_err("wrong digest on a stream");
        assert!(matches!(e, BlobError::ChecksumMismatch), "{e}");
        assert_eq!(store.head(&key).await.expect("head"), None);

        // A reader that fails part-way leaves an existing blob as it was.
        let old = Bytes::from_static(b"the previous version");
        store
            .put(&key, old.clone(), &PutOptions::default())
            .await
            .expect("put");
        for len in [1_000, PART + 1_000] {
            let e = store
                .put_stream(
                    &key,
                    ChoppyReader::failing_after(pseudo_random(len, 4)),
                    &PutOptions::default(),
                )
                .await
                .expect_err("the reader fails");
            assert!(matches!(e, BlobError::Backend(_)), "{e}");
            assert!(
                format!("{e}").contains("client went away"),
                "cause is kept: {e}"
            );
            assert_eq!(store.get(&key).await.expect("old version still there"), old);
        }

        // A correct declared digest is accepted.
        let data = pseudo_random(PART + 1_000, 5);
        let digest = sha256(&data);
        store
            .put_stream(
                &key,
                ChoppyReader::boxed(data),
                &PutOptions {
                    sha256: Some(digest),
                    ..Default::default()
                },
            )
            .await
            .expect("right digest");
        assert_eq!(sha256(&store.get(&key).await.expect("get")), digest);
    }

    pub async fn uploads_in_progress_are_invisible(s: &BlobSubject) {
        let key = format!("{}/replaced.bin", unique("org"));
        let old = Bytes::from_static(b"the old version");
        s.store
            .put(&key, old.clone(), &PutOptions::default())
            .await
            .expect("put");

        // Feed an upload through a pipe and stop part-way: past two parts,
        // so S3 has a multipart upload with parts in it by then.
        let data = pseudo_random(2 * PART + 50_000, 31);
        let split = 2 * PART + 100;
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let store = s.store.clone();
        let upload_key = key.clone();
        let upload = tokio::spawn(async move {
            store
                .put_stream(&upload_key, Box::new(reader), &PutOptions::default())
                .await
        });
        writer
            .write_all(&data[..split])
            .await
            .expect("feed the upload");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(s.store.get(&key).await.expect("get mid-upload"), old);
        assert_eq!(
            s.store.head(&key).await.expect("head").map(|m| m.size),
            Some(old.len() as u64)
        );

        writer
            .write_all(&data[split..])
            .await
            .expect("feed the rest");
        drop(writer);
        let size = upload.await.expect("upload task").expect("put_stream");
        assert_eq!(size, data.len() as u64);
        assert_eq!(
            sha256(&s.store.get(&key).await.expect("get")),
            sha256(&data)
        );
    }

    pub async fn keys_are_validated(s: &BlobSubject) {
        let store = &*s.store;
        let too_long = "k".repeat(MAX_KEY_BYTES + 1);
        let bad_keys = [
            "",
            "/absolute",
            "..",
            "../escape",
            "a/../../escape",
            "a/./b",
            "a//b",
            "trailing/",
            "back\\slash",
            "new\nline",
            "nul\0",
            too_long.as_str(),
        ];
        let body = Bytes::from_static(b"x");
        for key in bad_keys {
            let invalid = |r: Result<(), BlobError>| matches!(r, Err(BlobError::InvalidKey(_)));
            assert!(
                invalid(store.put(key, body.clone(), &PutOptions::default()).await),
                "put {key:?}"
            );
            assert!(
                invalid(
                    store
                        .put_stream(key, ChoppyReader::boxed(vec![1]), &PutOptions::default())
                        .await
                        .map(|_| ())
                ),
                "put_stream {key:?}"
            );
            assert!(invalid(store.get(key).await.map(|_| ())), "get {key:?}");
            assert!(invalid(store.head(key).await.map(|_| ())), "head {key:?}");
            assert!(invalid(store.delete(key).await), "delete {key:?}");
            assert!(
                invalid(store.get_tags(key).await.map(|_| ())),
                "get_tags {key:?}"
            );
            assert!(
                invalid(
                    store
                        .presign_get(key, Duration::from_secs(60))
                        .await
                        .map(|_| ())
                ),
                "presign_get {key:?}"
            );
            assert!(
                invalid(
                    store
                        .presign_put(key, Duration::from_secs(60), "text/plain", None)
                        .await
                        .map(|_| ())
                ),
                "presign_put {key:?}"
            );
        }

        // What S3 allows, including the longest key, round-trips.
        let prefix = unique("org");
        let longest = format!("{prefix}/{}", "k".repeat(MAX_KEY_BYTES - prefix.len() - 1));
        for key in [
            format!("{prefix}/with space/and+plus=equals&amp"),
            format!("{prefix}/ünïcödé/証拠.txt"),
            format!("{prefix}/dots..inside/.hidden"),
            longest,
        ] {
            store
                .put(&key, Bytes::from(key.clone()), &PutOptions::default())
                .await
                .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
            assert_eq!(
                store.get(&key).await.expect("get"),
                Bytes::from(key.clone())
            );
        }
    }

    pub async fn presigned_get(s: &BlobSubject) {
        let store = &*s.store;
        let key = format!("{}/ünï côdé/report (final).pdf", unique("org"));
        let body = Bytes::from(pseudo_random(100_000, 9));
        store
            .put(&key, body.clone(), &PutOptions::default())
            .await
            .expect("put");
        let url = store
            .presign_get(&key, Duration::from_secs(60))
            .await
            .expect("presign_get");
        if !s.presigns {
            assert_eq!(url, None, "a store without URLs says so");
            return;
        }
        let url = url.expect("a presigned URL");
        let resp = reqwest::get(&url).await.expect("GET the presigned URL");
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(resp.bytes().await.expect("body"), body);
        assert_eq!(query_param(&url, "X-Amz-Expires"), Some("60"));

        // However long a caller asks for, a link lives at most 15 minutes.
        let url = store
            .presign_get(&key, Duration::from_secs(24 * 3600))
            .await
            .expect("presign_get")
            .expect("url");
        assert_eq!(query_param(&url, "X-Amz-Expires"), Some("900"));
    }

    pub async fn presigned_put(s: &BlobSubject) {
        let store = &*s.store;
        let key = format!("{}/uploads/scan.png", unique("org"));
        let body = Bytes::from(pseudo_random(50_000, 11));
        let digest = sha256(&body);
        let url = store
            .presign_put(&key, Duration::from_secs(300), "image/png", Some(digest))
            .await
            .expect("presign_put");
        if !s.presigns {
            assert_eq!(url, None, "a store without URLs says so");
            return;
        }
        let url = url.expect("a presigned URL");
        // The digest is signed, so S3 requires the header on the upload and
        // checks the body against it; the content type is signed too.
        let signed = signed_headers(&url);
        assert!(
            signed.contains(&"x-amz-checksum-sha256".to_string()),
            "{signed:?}"
        );
        assert!(signed.contains(&"content-type".to_string()), "{signed:?}");

        let http = reqwest::Client::new();
        let mut upload = http.put(&url).body(body.clone());
        for (name, value) in presigned_put_headers("image/png", Some(digest)) {
            upload = upload.header(name, value);
        }
        let resp = upload.send().await.expect("PUT to the presigned URL");
        assert!(
            resp.status().is_success(),
            "{}: {:?}",
            resp.status(),
            resp.text().await
        );
        assert_eq!(store.get(&key).await.expect("get"), body);
        let meta = store.head(&key).await.expect("head").expect("exists");
        assert_eq!(meta.content_type, "image/png");
        assert_eq!(meta.size, body.len() as u64);

        // Without a digest, only the content type is signed.
        let key = format!("{}/uploads/notes.txt", unique("org"));
        let url = store
            .presign_put(&key, Duration::from_secs(3600), "text/plain", None)
            .await
            .expect("presign_put")
            .expect("url");
        assert!(!signed_headers(&url).contains(&"x-amz-checksum-sha256".to_string()));
        assert_eq!(
            query_param(&url, "X-Amz-Expires"),
            Some("900"),
            "TTL is capped"
        );
        let mut upload = http.put(&url).body("plain notes");
        for (name, value) in presigned_put_headers("text/plain", None) {
            upload = upload.header(name, value);
        }
        let resp = upload.send().await.expect("PUT to the presigned URL");
        assert!(resp.status().is_success(), "{}", resp.status());
        assert_eq!(
            store.get(&key).await.expect("get"),
            Bytes::from_static(b"plain notes")
        );
    }
}

macro_rules! blob_contract_tests {
    ($module:ident, $subject:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_get_head_delete() {
                blob_contract::put_get_head_delete(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn missing_blobs_are_not_found() {
                blob_contract::missing_blobs_are_not_found(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tags_round_trip() {
                blob_contract::tags_round_trip(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_stream_20_mib() {
                blob_contract::put_stream_20_mib(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_stream_sizes_around_a_part() {
                blob_contract::put_stream_sizes_around_a_part(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failed_uploads_store_nothing() {
                blob_contract::failed_uploads_store_nothing(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn uploads_in_progress_are_invisible() {
                blob_contract::uploads_in_progress_are_invisible(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keys_are_validated() {
                blob_contract::keys_are_validated(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn presigned_get() {
                blob_contract::presigned_get(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn presigned_put() {
                blob_contract::presigned_put(&$subject).await;
            }
        }
    };
}

blob_contract_tests!(s3_blob, s3_subject().await.subject);
blob_contract_tests!(local_blob, local_subject().await);

mod constructor {
    use super::*;
    use ledgerline::config::BlobBackend;

    #[tokio::test]
    async fn the_configured_local_store_creates_its_directory_and_works() {
        let dir = TempDir(
            std::env::temp_dir()
                .join(unique("ledgerline-blobs"))
                .join("nested"),
        );
        let store = ledgerline::blob::blob_store(&BlobBackend::Local { dir: dir.0.clone() })
            .await
            .expect("blob_store");
        assert!(dir.0.is_dir(), "created at start-up");
        store
            .put("k", Bytes::from_static(b"v"), &PutOptions::default())
            .await
            .expect("put");
        assert_eq!(store.get("k").await.expect("get"), Bytes::from_static(b"v"));
        let _ = std::fs::remove_dir_all(dir.0.parent().expect("parent"));
    }
}

// ---------------------------------------------------------------------------
// S3 specifics the contract cannot see

mod s3_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_streams_go_up_in_parts_and_failures_abort_them() {
        let s3 = s3_subject().await;
        let key = unique("multipart");
        let data = pseudo_random(2 * PART + 5, 21);
        s3.subject
            .store
            .put_stream(&key, ChoppyReader::boxed(data), &PutOptions::default())
            .await
            .expect("put_stream");
        let head = s3
            .client
            .head_object()
            .bucket(&s3.bucket)
            .key(&key)
            .send()
            .await
            .expect("head_object");
        // A multipart object's ETag ends in -<number of parts>.
        let etag = head
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        assert!(etag.ends_with("-3"), "etag {etag}");

        // A failing reader and a wrong digest both abort the upload.
        let failing = s3
            .subject
            .store
            .put_stream(
                &unique("aborted"),
                ChoppyReader::failing_after(pseudo_random(PART + 10, 22)),
                &PutOptions::default(),
            )
            .await;
        assert!(failing.is_err());
        let mismatched = s3
            .subject
            .store
            .put_stream(
                &unique("aborted"),
                ChoppyReader::boxed(pseudo_random(PART + 10, 23)),
                &PutOptions {
                    sha256: Some([0u8; 32]),
                    ..Default::default()
                },
            )
            .await;
        assert!(matches!(mismatched, Err(BlobError::ChecksumMismatch)));
        let uploads = s3
            .client
            .list_multipart_uploads()
            .bucket(&s3.bucket)
            .send()
            .await
            .expect("list_multipart_uploads");
        assert!(
            uploads.uploads().is_empty(),
            "no multipart upload is left behind: {:?}",
            uploads.uploads()
        );
    }
}

// ---------------------------------------------------------------------------
// The Queue contract

mod queue_contract {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);
    const NO_WAIT: Duration = Duration::ZERO;

    pub async fn send_receive_delete(s: &QueueSubject) {
        let q = &*s.queue;
        let id = q
            .send(r#"{"job":"export","n":1}"#, Duration::ZERO)
            .await
            .expect("send");
        assert!(!id.is_empty());

        let got = q
            .receive(10, LONG, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1, "{got:?}");
        let m = &got[0];
        assert_eq!(m.id, id);
        assert_eq!(m.body, r#"{"job":"export","n":1}"#);
        assert_eq!(m.receive_count, 1);
        assert!(!m.receipt_handle.is_empty());

        // In flight: nobody else gets it.
        assert!(q
            .receive(10, LONG, NO_WAIT)
            .await
            .expect("receive")
            .is_empty());

        q.delete(&m.receipt_handle).await.expect("delete");
        q.delete(&m.receipt_handle)
            .await
            .expect("deleting again succeeds");
        assert!(matches!(
            q.change_visibility(&m.receipt_handle, Duration::ZERO).await,
            Err(QueueError::InvalidReceiptHandle)
        ));
        assert!(q
            .receive(10, LONG, NO_WAIT)
            .await
            .expect("receive")
            .is_empty());
    }

    pub async fn an_empty_queue_waits_then_returns_nothing(s: &QueueSubject) {
        let q = &*s.queue;
        let started = Instant::now();
        let got = q
            .receive(1, LONG, Duration::from_secs(1))
            .await
            .expect("receive");
        assert!(got.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "long poll waited"
        );
    }

    pub async fn delay_is_respected(s: &QueueSubject) {
        let q = &*s.queue;
        let sent = Instant::now();
        let id = q.send("later", Duration::from_secs(2)).await.expect("send");
        assert!(
            q.receive(10, LONG, NO_WAIT)
                .await
                .expect("receive")
                .is_empty(),
            "a delayed message is invisible"
        );
        // A long poll picks it up once the delay has passed.
        let got = q
            .receive(10, LONG, Duration::from_secs(10))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, id);
        assert!(
            sent.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            sent.elapsed()
        );
    }

    pub async fn visibility_timeout_expiry_redelivers(s: &QueueSubject) {
        let q = &*s.queue;
        let id = q.send("flaky job", Duration::ZERO).await.expect("send");
        let first = q
            .receive(1, Duration::from_secs(2), Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count, 1);
        assert!(
            q.receive(1, LONG, NO_WAIT)
                .await
                .expect("receive")
                .is_empty(),
            "invisible"
        );

        // The consumer "crashed": after the timeout the message comes back.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let second = q
            .receive(1, LONG, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, id);
        assert_eq!(second[0].body, "flaky job");
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(
            second[0].receipt_handle, first[0].receipt_handle,
            "a new handle per delivery"
        );

        // The first consumer finishing late must not delete the redelivered
        // message out from under the second one.
        q.delete(&first[0].receipt_handle)
            .await
            .expect("a stale delete succeeds (and deletes nothing)");
        if s.enforces_stale_handles {
            assert!(matches!(
                q.change_visibility(&first[0].receipt_handle, Duration::ZERO)
                    .await,
                Err(QueueError::InvalidReceiptHandle)
            ));
            // Still there: give it back and see it a third time.
            q.change_visibility(&second[0].receipt_handle, Duration::ZERO)
                .await
                .expect("change_visibility with the current handle");
            let third = q
                .receive(1, LONG, Duration::from_secs(5))
                .await
                .expect("receive");
            assert_eq!(third.len(), 1, "the stale handle deleted the message");
            assert_eq!(third[0].receive_count, 3);
            q.delete(&second[0].receipt_handle)
                .await
                .expect("stale delete");
            q.change_visibility(&third[0].receipt_handle, Duration::from_secs(30))
                .await
                .expect("the message survived the stale delete");
            q.delete(&third[0].receipt_handle).await.expect("delete");
            assert!(matches!(
                q.change_visibility(&third[0].receipt_handle, Duration::ZERO)
                    .await,
                Err(QueueError::InvalidReceiptHandle)
            ));
        } else {
            q.delete(&second[0].receipt_handle).await.expect("delete");
        }
    }

    pub async fn change_visibility_extends_and_releases(s: &QueueSubject) {
        let q = &*s.queue;
        let id = q.send("long job", Duration::ZERO).await.expect("send");
        let got = q
            .receive(1, Duration::from_secs(1), Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);

        // Extended before it ran out: stays invisible past the first timeout.
        q.change_visibility(&got[0].receipt_handle, Duration::from_secs(30))
            .await
            .expect("extend");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            q.receive(1, LONG, NO_WAIT)
                .await
                .expect("receive")
                .is_empty(),
            "the extension holds"
        );

        // Released early: visible again at once.
        q.change_visibility(&got[0].receipt_handle, Duration::ZERO)
            .await
            .expect("release");
        let again = q
            .receive(1, LONG, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, id);
        assert_eq!(again[0].receive_count, 2);
        q.delete(&again[0].receipt_handle).await.expect("delete");
    }

    pub async fn send_batch_of_25(s: &QueueSubject) {
        let q = &*s.queue;
        let batch: Vec<(String, Duration)> = (0..25)
            .map(|i| (format!(r#"{{"n":{i}}}"#), Duration::ZERO))
            .collect();
        let ids = q.send_batch(&batch).await.expect("send_batch");
        assert_eq!(ids.len(), 25);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 25, "distinct ids");

        let got = receive_all(q, 25, LONG).await;
        assert_eq!(got.len(), 25);
        let bodies: HashSet<_> = got.iter().map(|m| m.body.clone()).collect();
        let sent: HashSet<_> = batch.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(bodies, sent);
        // Ids are reported in the order the messages were given.
        for m in &got {
            let n: usize = m.body[5..m.body.len() - 1].parse().expect("n");
            assert_eq!(m.id, ids[n], "id of message {n}");
        }
        for m in &got {
            q.delete(&m.receipt_handle).await.expect("delete");
        }
        assert!(q
            .receive(10, LONG, NO_WAIT)
            .await
            .expect("receive")
            .is_empty());
        assert!(q.send_batch(&[]).await.expect("empty batch").is_empty());
    }

    pub async fn concurrent_receivers_never_share_a_message(s: &QueueSubject) {
        let q = &*s.queue;
        const MESSAGES: usize = 60;
        let batch: Vec<(String, Duration)> = (0..MESSAGES)
            .map(|i| (format!("task {i}"), Duration::ZERO))
            .collect();
        q.send_batch(&batch).await.expect("send_batch");

        // Six receivers at once, each taking small batches until the queue
        // looks empty to it. Small batches mean many overlapping receives.
        let receiver = || async {
            let mut mine = Vec::new();
            let mut empty_polls = 0;
            while empty_polls < 2 {
                let got = q
                    .receive(2, LONG, Duration::from_millis(500))
                    .await
                    .expect("receive");
                if got.is_empty() {
                    empty_polls += 1;
                }
                mine.extend(got.into_iter().map(|m| m.id));
            }
            mine
        };
        let (a, b, c, d, e, f) = tokio::join!(
            receiver(),
            receiver(),
            receiver(),
            receiver(),
            receiver(),
            receiver()
        );
        let all: Vec<String> = [a, b, c, d, e, f].concat();
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), MESSAGES, "every message was received");
        assert_eq!(all.len(), MESSAGES, "no message went to two receivers");
    }

    pub async fn limits_are_enforced(s: &QueueSubject) {
        let q = &*s.queue;
        let invalid = |r: Result<(), QueueError>| matches!(r, Err(QueueError::InvalidArgument(_)));
        assert!(invalid(
            q.send("x", Duration::from_secs(16 * 60)).await.map(|_| ())
        ));
        assert!(invalid(
            q.send(&"x".repeat(256 * 1024 + 1), Duration::ZERO)
                .await
                .map(|_| ())
        ));
        assert!(invalid(q.send("", Duration::ZERO).await.map(|_| ())));
        assert!(invalid(q.receive(0, LONG, NO_WAIT).await.map(|_| ())));
        assert!(invalid(q.receive(11, LONG, NO_WAIT).await.map(|_| ())));
        assert!(invalid(
            q.receive(1, LONG, Duration::from_secs(21))
                .await
                .map(|_| ())
        ));
        // One bad message fails the whole batch before anything is sent.
        let batch = vec![
            ("fine".to_string(), Duration::ZERO),
            ("x".repeat(256 * 1024 + 1), Duration::ZERO),
        ];
        assert!(invalid(q.send_batch(&batch).await.map(|_| ())));
        assert!(q
            .receive(10, LONG, NO_WAIT)
            .await
            .expect("receive")
            .is_empty());
        // The largest allowed body goes through intact.
        let biggest = "y".repeat(256 * 1024);
        q.send(&biggest, Duration::ZERO)
            .await
            .expect("a 256 KiB body");
        let got = q
            .receive(1, LONG, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, biggest);

        assert!(matches!(
            q.delete("not-a-receipt-handle").await,
            Err(QueueError::InvalidReceiptHandle)
        ));
    }
}

macro_rules! queue_contract_tests {
    ($module:ident, $subject:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn send_receive_delete() {
                queue_contract::send_receive_delete(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_empty_queue_waits_then_returns_nothing() {
                queue_contract::an_empty_queue_waits_then_returns_nothing(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delay_is_respected() {
                queue_contract::delay_is_respected(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn visibility_timeout_expiry_redelivers() {
                queue_contract::visibility_timeout_expiry_redelivers(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn change_visibility_extends_and_releases() {
                queue_contract::change_visibility_extends_and_releases(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn send_batch_of_25() {
                queue_contract::send_batch_of_25(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_receivers_never_share_a_message() {
                queue_contract::concurrent_receivers_never_share_a_message(&$subject).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn limits_are_enforced() {
                queue_contract::limits_are_enforced(&$subject).await;
            }
        }
    };
}

queue_contract_tests!(sqs_queue, sqs_subject().await);
queue_contract_tests!(pg_queue, pg_subject().await);

// ---------------------------------------------------------------------------
// PgQueue specifics

mod pg_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queues_sharing_a_table_are_separate() {
        let db = test_db().await;
        let exports = PgQueue::new(db.pool.clone(), "exports");
        let messages = PgQueue::new(db.pool.clone(), "messages");
        exports
            .send("for exports", Duration::ZERO)
            .await
            .expect("send");
        assert!(messages
            .receive(10, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("receive")
            .is_empty());
        let got = exports
            .receive(10, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        // A handle from one queue does nothing on another.
        messages
            .delete(&got[0].receipt_handle)
            .await
            .expect("no-op delete");
        assert!(matches!(
            messages
                .change_visibility(&got[0].receipt_handle, Duration::ZERO)
                .await,
            Err(QueueError::InvalidReceiptHandle)
        ));
        exports
            .change_visibility(&got[0].receipt_handle, Duration::ZERO)
            .await
            .expect("still in flight on its own queue");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exhausted_messages_move_to_the_dead_letter_queue() {
        let db = test_db().await;
        let work = PgQueue::new(db.pool.clone(), "work").with_dead_letter_queue("work-dlq", 2);
        let dlq = PgQueue::new(db.pool.clone(), "work-dlq");
        let id = work.send("poison", Duration::ZERO).await.expect("send");
        for attempt in 1..=2 {
            let got = work
                .receive(1, Duration::ZERO, Duration::from_secs(2))
                .await
                .expect("receive");
            assert_eq!(got.len(), 1, "attempt {attempt}");
            assert_eq!(got[0].receive_count, attempt);
        }
        assert!(work
            .receive(1, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("receive")
            .is_empty());
        let dead = dlq
            .receive(1, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("receive from the dead-letter queue");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, id);
        assert_eq!(dead[0].body, "poison");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receive_dead_letters_what_it_picks_and_hands_out_the_rest() {
        let db = test_db().await;
        let work = PgQueue::new(db.pool.clone(), "work").with_dead_letter_queue("work-dlq", 1);
        let dlq = PgQueue::new(db.pool.clone(), "work-dlq");
        let poison = work.send("poison", Duration::ZERO).await.expect("send");
        let got = work
            .receive(1, Duration::ZERO, Duration::ZERO)
            .await
            .expect("first receive");
        assert_eq!(got[0].id, poison);
        let fresh = work.send("fresh", Duration::ZERO).await.expect("send");
        // The poison message is picked first (oldest) and moved; the same
        // receive goes on and hands out the fresh one.
        let got = work
            .receive(1, Duration::from_secs(60), Duration::from_secs(5))
            .await
            .expect("second receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, fresh);
        assert_eq!(got[0].receive_count, 1);
        let dead = dlq
            .receive(10, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("receive from the dead-letter queue");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, poison);
        // A batch receive does both at once.
        let a = work.send("a", Duration::ZERO).await.expect("send");
        let b = work.send("b", Duration::ZERO).await.expect("send");
        work.change_visibility(&got[0].receipt_handle, Duration::ZERO)
            .await
            .expect("make the fresh one visible again");
        let got = work
            .receive(10, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("batch receive");
        let ids: Vec<_> = got.iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, [a, b], "the exhausted one is not handed out");
        let dead = dlq
            .receive(10, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("receive from the dead-letter queue");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, fresh);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visibility_uses_the_database_clock() {
        // Receivers in different processes must agree on when a message is
        // visible, so the row's times come from now() in Postgres.
        let db = test_db().await;
        let q = PgQueue::new(db.pool.clone(), "clock");
        q.send("x", Duration::from_secs(30)).await.expect("send");
        let client = db.pool.get().await.expect("connection");
        let row = client
            .query_one(
                "SELECT extract(epoch FROM visible_at - now())::float8 FROM local_queue_messages",
                &[],
            )
            .await
            .expect("query");
        let secs: f64 = row.get(0);
        assert!((29.0..=30.5).contains(&secs), "visible in {secs} s");
    }
}

// ------------------------------------------------------------ Postgres TLS --

/// The CA of the test cluster's server certificate (`scripts/test.sh` starts
/// Postgres with TLS on and sets it).
fn pg_ca() -> String {
    std::env::var("LEDGERLINE_TEST_PG_CA").unwrap_or_else(|_| {
        panic!(
            "LEDGERLINE_TEST_PG_CA is not set: run the tests with `scripts/test.sh`, \
             which starts Postgres with TLS and sets it"
        )
    })
}

/// Whether a connection made with `url` (through `db::pool`, as the
/// service connects) is encrypted, as the server sees it.
async fn connects_with_tls(url: &str) -> Result<bool, String> {
    let pool = ledgerline::db::pool(url, 1).map_err(|e| format!("{e:#}"))?;
    let client = pool.get().await.map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// `sslmode` and `sslrootcert` mean what they mean to libpq: `verify-full`
/// connects only to a server whose certificate chains to the given CA (or
/// the system's, which do not know the test CA) and names the host;
/// `prefer` (the default) and `require` encrypt; `disable` does not.
/// Migrations run over the same connection.
#[tokio::test]
async fn postgres_connections_use_tls_as_the_connection_string_asks() {
    let db = test_db().await;
    let ca = pg_ca();
    let with = |query: &str| format!("{}?{query}", db.url);
    let ca_param = ca.replace('/', "%2F");

    let verified = with(&format!("sslmode=verify-full&sslrootcert={ca_param}"));
    assert_eq!(connects_with_tls(&verified).await, Ok(true));
    ledgerline::db::migrate(&verified)
        .await
        .expect("migrations run over a verified TLS connection");
    // The certificate names localhost as well as 127.0.0.1.
    let by_name = verified.replace("@127.0.0.1:", "@localhost:");
    assert_ne!(by_name, verified);
    assert_eq!(connects_with_tls(&by_name).await, Ok(true));

    assert_eq!(connects_with_tls(&db.url).await, Ok(true), "prefer");
    assert_eq!(connects_with_tls(&with("sslmode=require")).await, Ok(true));
    assert_eq!(connects_with_tls(&with("sslmode=disable")).await, Ok(false));

    // The system's roots do not include the test CA: no connection.
    let refused = connects_with_tls(&with("sslmode=verify-full"))
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    // Nor with a CA file that did not sign it.
    let other_ca = std::env::temp_dir().join(format!("ll-other-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&other_ca, OTHER_CA_PEM).unwrap();
    let refused = connects_with_tls(&with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    )))
    .await
    .expect_err("a certificate from another CA is refused");
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    std::fs::remove_file(&other_ca).unwrap();
}

/// A self-signed CA certificate that signed nothing the tests use.
const OTHER_CA_PEM: &str = r"-----BEGIN CERTIFICATE-----
MIIBsDCCAVegAwIBAgIUGS8Gu1L5LMikNLtJGjkV2prJQHgwCgYIKoZIzj0EAwIw
JTEjMCEGA1UEAwwaTm90IHRoZSBMZWRnZXJsaW5lIHRlc3QgQ0EwIBcNMjYxMTIz
MjE1MDMwWhgPMjEyNjEwMzAyMTUwMzBaMCUxIzAhBgNVBAMMGk5vdCB0aGUgTGVk
Z2VybGluZSB0ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaziNVIOQ
xiqKUiSPMhdWVd2KhugH7NMGoddWnkbpmA0jkbzVft1Zy12Pt53sVoxvwYMhL+vv
MJqn36jzrGdRFKNjMGEwHQYDVR0OBBYEFO++Z72qQrjJ3+c4j/eexEyMnT0DMB8G
A1UdIwQYMBaAFO++Z72qQrjJ3+c4j/eexEyMnT0DMA8GA1UdEwEB/wQFMAMBAf8w
DgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49BAMCA0cAMEQCIG5X5N2epzDYTmA0H/AH
dmNYlVEHHUGMuHKtdK6y3TpWAiAr8vxuRe7Q/6tSsuKhkWrX5G05YL3PQnA1plXY
fEsNrg==
-----END CERTIFICATE-----
";
