//! The evidence vault against real parts: Postgres, the local blob store in
//! a temp directory, and S3 on moto's server. An upload stores the bytes,
//! one row and one ledger event, or (checksum mismatch, blob store down,
//! database error mid-way) nothing at all and no seq; concurrent uploads get
//! gapless seqs per organisation; tenants never see each other's evidence;
//! large files go through a presigned PUT that is checked before it counts.

use aws_sdk_s3::config::{Credentials, Region};
use futures_util::StreamExt;
use ledgerline::blob::{s3_client, BlobStore, LocalBlobStore, S3BlobStore};
use ledgerline::clock::Clock;
use ledgerline::config::BlobBackend;
use ledgerline::context::AppContext;
use ledgerline::http::pipeline::{Pipeline, Serve};
use ledgerline::ledger::events::{self, verify_org_chain, ChainStatus};
use ledgerline_tests::{assert_error, aws_endpoint, TestServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Fixtures

fn sha_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Deterministic bytes with every byte value in them.
fn file_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) ^ (i as u8)
        })
        .collect()
}

/// Another server on the test server's database (so the seed's keys work),
/// with its own blob store.
struct Server {
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

async fn server_with(s: &TestServer, backend: BlobBackend, blobs: Arc<dyn BlobStore>) -> Server {
    let mut config = s.ctx.config.clone();
    config.blob = backend;
    let ctx = AppContext::with_blobs(config, s.clock.clone() as Arc<dyn Clock>, blobs).unwrap();
    let pipeline = Arc::new(Pipeline::new(ctx, Serve::All));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ledgerline::server::serve(listener, pipeline, async {
        let _ = rx.await;
    }));
    Server { base, _stop: tx }
}

async fn moto() -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
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
        .await;
    s3_client(&sdk)
}

struct S3Server {
    server: Server,
    client: aws_sdk_s3::Client,
    bucket: String,
}

/// A server whose blobs are in a bucket on moto (created unless told not to).
async fn s3_server(s: &TestServer, create_bucket: bool) -> S3Server {
    let client = moto().await;
    let bucket = format!("ll-evidence-{}", Uuid::new_v4().simple());
    if create_bucket {
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create a bucket on moto");
    }
    let store = Arc::new(S3BlobStore::new(client.clone(), bucket.clone()));
    let server = server_with(
        s,
        BlobBackend::S3 {
            bucket: bucket.clone(),
        },
        store,
    )
    .await;
    S3Server {
        server,
        client,
        bucket,
    }
}

impl S3Server {
    async fn keys(&self) -> Vec<String> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

fn upload_to(
    http: &reqwest::Client,
    url: String,
    key: &str,
    filename: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let mut r = http
        .post(url)
        .bearer_auth(key)
        .header(
            "x-filename",
            reqwest::header::HeaderValue::from_bytes(filename.as_bytes()).unwrap(),
        )
        .body(body);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    r
}

fn upload(s: &TestServer, key: &str, filename: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    upload_to(
        &s.http,
        s.url("/api/evidence"),
        key,
        filename,
        Some("application/pdf"),
        body,
    )
}

async fn created(r: reqwest::RequestBuilder) -> Value {
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

fn seed_org(s: &TestServer) -> Uuid {
    Uuid::parse_str(&s.seed.org_id).unwrap()
}

/// What a failed upload must leave exactly as it was.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    evidence_rows: i64,
    /// Sequenced and pending.
    ledger_events: i64,
    /// The last seq given (the next upload must get this + 1).
    head: i64,
}

async fn snapshot(s: &TestServer, org: Uuid) -> Snapshot {
    let c = s.db.pool.get().await.unwrap();
    let one = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[&org]).await.unwrap().get::<_, i64>(0) }
    };
    Snapshot {
        evidence_rows: one("SELECT count(*) FROM evidence WHERE org_id = $1").await,
        ledger_events: one("SELECT count(*) FROM ledger_events WHERE org_id = $1").await,
        head: one("SELECT coalesce((SELECT last_seq FROM ledger_heads WHERE org_id = $1), 0)")
            .await,
    }
}

/// The chain verifies; returns its length.
async fn intact(s: &TestServer, org: Uuid) -> u64 {
    let c = s.db.pool.get().await.unwrap();
    match verify_org_chain(&**c, org).await.unwrap() {
        ChainStatus::Intact { events, .. } => events,
        broken => panic!("chain of {org} broken: {broken:?}"),
    }
}

fn local_dir(s: &TestServer) -> PathBuf {
    match &s.ctx.config.blob {
        BlobBackend::Local { dir } => dir.clone(),
        other => panic!("the test server uses the local store, not {other:?}"),
    }
}

/// How many blobs the local store holds (one record file per blob).
fn local_blobs(dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(dir.join("objects")) else {
        return 0;
    };
    shards
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .count()
}

// ---------------------------------------------------------------------------
// Upload through the API (local store)

#[tokio::test]
async fn an_upload_is_stored_recorded_and_comes_back_byte_for_byte() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let key = s.seed.org_key.clone();
    let before = snapshot(&s, org).await;
    let bytes = file_bytes(70_000, 1);
    let name = "Q4 \"access\" review – résumé;100%.pdf";

    let resp = upload(&s, &key, name, bytes.clone())
        .header("x-content-sha256", sha_hex(&bytes).to_uppercase())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["x-ratelimit-limit"], "100");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "99");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let ev: Value = resp.json().await.unwrap();
    let id = ev["evidence_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/evidence/{id}"));
    assert_eq!(ev["sha256"], sha_hex(&bytes));
    assert_eq!(ev["size"], 70_000);
    assert_eq!(ev["filename"], name);
    assert_eq!(ev["content_type"], "application/pdf");
    assert_eq!(ev["source"], "api");
    assert_eq!(ev["ledger_seq"], before.head + 1);
    assert_eq!(ev["created_at"], "2026-11-23T10:30:00Z");

    // The ledger event says what was stored, by whom, in which request.
    let c = s.db.pool.get().await.unwrap();
    let e = events::get_event(&**c, org, (before.head + 1) as u64)
        .await
        .unwrap();
    assert_eq!(e.event_type, "evidence.stored");
    assert_eq!(e.subject, format!("evidence:{id}"));
    assert_eq!(e.actor, format!("key:{}", s.seed.org_key_id));
    assert_eq!(e.request_id, request_id);
    assert_eq!(
        serde_json::from_str::<Value>(&e.payload).unwrap(),
        json!({"evidence_id": id, "filename": name, "content_type": "application/pdf",
               "size": 70_000, "sha256": sha_hex(&bytes), "source": "api"})
    );
    assert_eq!(intact(&s, org).await, (before.head + 1) as u64);

    // Metadata: the local store has no presigned URLs, so the link is the
    // content endpoint and does not expire.
    let meta: Value = s
        .get(&location, Some(&key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["evidence_id"], id.as_str());
    assert_eq!(meta["ledger_seq"], before.head + 1);
    assert_eq!(meta["download_url"], format!("/api/evidence/{id}/content"));
    assert_eq!(meta["expires_at"], Value::Null);

    let resp = s
        .get(&format!("/api/evidence/{id}/content"), Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "application/pdf");
    assert_eq!(h["x-content-sha256"], sha_hex(&bytes).as_str());
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(
        h["content-disposition"].to_str().unwrap(),
        ledgerline::evidence::content_disposition(name)
    );
    assert_eq!(
        h["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"Q4 _access_ review _ r_sum_;100_.pdf\"; \
         filename*=UTF-8''Q4%20%22access%22%20review%20%E2%80%93%20r%C3%A9sum%C3%A9%3B100%25.pdf"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // No Content-Type: stored as application/octet-stream. The RFC 8187
    // form of X-Filename is decoded.
    let ev2 = created(upload_to(
        &s.http,
        s.url("/api/evidence"),
        &key,
        "UTF-8''%E8%A8%BC%E6%8B%A0.bin",
        None,
        b"x".to_vec(),
    ))
    .await;
    assert_eq!(ev2["content_type"], "application/octet-stream");
    assert_eq!(ev2["filename"], "証拠.bin");
    assert_eq!(ev2["ledger_seq"], before.head + 2);
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_same_evidence_and_records_once() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let before = snapshot(&s, org).await;
    let send = || {
        upload(&s, &s.seed.org_key, "policy.pdf", b"same bytes".to_vec())
            .header("idempotency-key", "upload-policy-1")
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    let after = snapshot(&s, org).await;
    assert_eq!(after.evidence_rows, before.evidence_rows + 1);
    assert_eq!(after.head, before.head + 1);
    // The same key with other bytes is refused.
    let other = upload(&s, &s.seed.org_key, "policy.pdf", b"other bytes".to_vec())
        .header("idempotency-key", "upload-policy-1")
        .send()
        .await
        .unwrap();
    assert_error(other, 422, "idempotency_key_reused").await;
}

#[tokio::test]
async fn refused_uploads_store_nothing_and_consume_no_seq() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let key = s.seed.org_key.clone();
    let dir = local_dir(&s);
    let before = snapshot(&s, org).await;
    let blobs_before = local_blobs(&dir);

    // A declared digest that does not match: 422, and nothing anywhere.
    let r = upload(&s, &key, "report.pdf", b"the real bytes".to_vec())
        .header("x-content-sha256", sha_hex(b"other bytes"))
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 422, "checksum_mismatch").await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(&sha_hex(b"the real bytes")));
    assert_eq!(snapshot(&s, org).await, before);
    assert_eq!(local_blobs(&dir), blobs_before);

    let bad: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        // Empty body.
        (
            upload(&s, &key, "empty.pdf", vec![]),
            422,
            "validation_failed",
        ),
        // No X-Filename.
        (
            s.http
                .post(s.url("/api/evidence"))
                .bearer_auth(&key)
                .body("x"),
            422,
            "validation_failed",
        ),
        // Names that are paths, or hold control or bidi characters.
        (
            upload(&s, &key, "../etc/passwd", b"x".to_vec()),
            422,
            "validation_failed",
        ),
        (
            upload(&s, &key, "a\\b.pdf", b"x".to_vec()),
            422,
            "validation_failed",
        ),
        (
            upload(&s, &key, "..", b"x".to_vec()),
            422,
            "validation_failed",
        ),
        (
            upload(&s, &key, "tab\there.pdf", b"x".to_vec()),
            422,
            "validation_failed",
        ),
        (
            upload(&s, &key, "exe\u{202e}fdp.pdf", b"x".to_vec()),
            422,
            "validation_failed",
        ),
        (
            upload(&s, &key, &"n".repeat(256), b"x".to_vec()),
            422,
            "validation_failed",
        ),
        // A malformed digest or content type.
        (
            upload(&s, &key, "a.pdf", b"x".to_vec()).header("x-content-sha256", "abc"),
            422,
            "validation_failed",
        ),
        (
            upload_to(
                &s.http,
                s.url("/api/evidence"),
                &key,
                "a.pdf",
                Some("pdf"),
                b"x".to_vec(),
            ),
            422,
            "validation_failed",
        ),
        // Over 5 MB.
        (
            upload(&s, &key, "big.pdf", vec![7u8; 5 * 1024 * 1024 + 1]),
            413,
            "payload_too_large",
        ),
        // Operator keys have no organisation; no key is a 401.
        (
            upload(&s, &s.seed.operator_key, "a.pdf", b"x".to_vec()),
            403,
            "forbidden_scope",
        ),
        (
            s.http
                .post(s.url("/api/evidence"))
                .header("x-filename", "a.pdf")
                .body("x"),
            401,
            "unauthorized",
        ),
    ];
    for (req, status, code) in bad {
        assert_error(req.send().await.unwrap(), status, code).await;
    }
    assert_eq!(snapshot(&s, org).await, before);
    assert_eq!(local_blobs(&dir), blobs_before);

    // The next good upload gets the very next seq.
    let ev = created(upload(&s, &key, "ok.pdf", b"ok".to_vec())).await;
    assert_eq!(ev["ledger_seq"], before.head + 1);
    assert_eq!(intact(&s, org).await, (before.head + 1) as u64);
}

#[tokio::test]
async fn sixty_four_concurrent_uploads_get_the_next_sixty_four_seqs() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let base = snapshot(&s, org).await.head;
    let started = Instant::now();
    let results = futures_util::future::join_all((0..64u8).map(|n| {
        created(upload(
            &s,
            &s.seed.org_key,
            &format!("evidence-{n}.pdf"),
            file_bytes(4096, n),
        ))
    }))
    .await;
    eprintln!(
        "64 concurrent 4 KiB uploads (local store): {} ms",
        started.elapsed().as_millis()
    );
    let seqs: BTreeSet<i64> = results
        .iter()
        .map(|ev| ev["ledger_seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (base + 1..=base + 64).collect(),
        "gapless and distinct"
    );
    assert_eq!(intact(&s, org).await, (base + 64) as u64);

    // Each row's event is its own: same subject, digest and seq.
    let c = s.db.pool.get().await.unwrap();
    for ev in &results {
        let id = Uuid::parse_str(ev["evidence_id"].as_str().unwrap()).unwrap();
        let row = c
            .query_one(
                "SELECT l.seq, l.subject, l.payload::jsonb->>'sha256', encode(e.sha256, 'hex')
                   FROM evidence e JOIN ledger_events l ON l.id = e.ledger_event_id
                  WHERE e.id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), ev["ledger_seq"].as_i64().unwrap());
        assert_eq!(row.get::<_, String>(1), format!("evidence:{id}"));
        assert_eq!(row.get::<_, String>(2), row.get::<_, String>(3));
    }
}

#[tokio::test]
async fn concurrent_uploads_to_two_organisations_never_interleave() {
    let s = TestServer::start().await;
    let a = seed_org(&s);
    let (b, b_key, _) = s.new_org("Org B").await;
    let b = Uuid::parse_str(&b).unwrap();
    let base_a = snapshot(&s, a).await.head;
    let base_b = snapshot(&s, b).await.head;

    let jobs = (0..32u8).flat_map(|n| [(a, s.seed.org_key.clone(), n), (b, b_key.clone(), n)]);
    let results = futures_util::future::join_all(jobs.map(|(org, key, n)| {
        let req = upload(&s, &key, &format!("{org}-{n}.pdf"), file_bytes(1024, n));
        async move { (org, created(req).await) }
    }))
    .await;
    let c = s.db.pool.get().await.unwrap();
    for (org, base) in [(a, base_a), (b, base_b)] {
        let seqs: BTreeSet<i64> = results
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, ev)| ev["ledger_seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (base + 1..=base + 32).collect(), "gapless for {org}");
        assert_eq!(intact(&s, org).await, (base + 32) as u64);
        let log = events::list_events(&**c, org, 0, 1000).await.unwrap();
        assert!(log.iter().all(|e| e.org_id == org));
        let stored: BTreeSet<String> = log
            .iter()
            .filter(|e| e.event_type == "evidence.stored")
            .map(|e| e.subject.clone())
            .collect();
        let mine: BTreeSet<String> = results
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, ev)| format!("evidence:{}", ev["evidence_id"].as_str().unwrap()))
            .collect();
        assert_eq!(stored, mine, "{org}'s log holds exactly its own uploads");
    }
}

// ---------------------------------------------------------------------------
// Failures mid-way

#[tokio::test]
async fn a_blob_store_that_is_down_is_a_503_and_stores_nothing() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let before = snapshot(&s, org).await;

    // A local store whose directory cannot be created (its parent is a
    // file): every write fails, whoever the tests run as.
    let blocker = std::env::temp_dir().join(format!("ll-not-a-dir-{}", Uuid::new_v4().simple()));
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let dir = blocker.join("blobs");
    let broken = server_with(
        &s,
        BlobBackend::Local { dir: dir.clone() },
        Arc::new(LocalBlobStore::new(&dir)),
    )
    .await;
    let r = upload_to(
        &s.http,
        broken.url("/api/evidence"),
        &s.seed.org_key,
        "a.pdf",
        Some("application/pdf"),
        b"bytes".to_vec(),
    )
    .send()
    .await
    .unwrap();
    let body = assert_error(r, 503, "service_unavailable").await;
    assert_eq!(body["retry_strategy"], "exponential_backoff");
    assert_eq!(snapshot(&s, org).await, before);

    // S3 with a bucket that does not exist.
    let s3 = s3_server(&s, false).await;
    let r = upload_to(
        &s.http,
        s3.server.url("/api/evidence"),
        &s.seed.org_key,
        "a.pdf",
        Some("application/pdf"),
        b"bytes".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_error(r, 503, "service_unavailable").await;
    assert_eq!(snapshot(&s, org).await, before);

    let ev = created(upload(&s, &s.seed.org_key, "ok.pdf", b"ok".to_vec())).await;
    assert_eq!(ev["ledger_seq"], before.head + 1, "no seq was consumed");
    let _ = std::fs::remove_file(&blocker);
}

#[tokio::test]
async fn a_database_error_mid_way_is_a_500_and_the_blob_is_removed() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let dir = local_dir(&s);
    let before = snapshot(&s, org).await;
    let blobs_before = local_blobs(&dir);
    let s3 = s3_server(&s, true).await;
    let c = s.db.pool.get().await.unwrap();

    // The blob is written, then inserting the row fails.
    c.batch_execute("ALTER TABLE evidence RENAME TO evidence_moved")
        .await
        .unwrap();
    let r = upload(&s, &s.seed.org_key, "a.pdf", b"local bytes".to_vec())
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 500, "internal_error").await;
    assert!(!body["message"].as_str().unwrap().contains("evidence"));
    let r = upload_to(
        &s.http,
        s3.server.url("/api/evidence"),
        &s.seed.org_key,
        "a.pdf",
        Some("application/pdf"),
        b"s3 bytes".to_vec(),
    )
    .send()
    .await
    .unwrap();
    assert_error(r, 500, "internal_error").await;
    c.batch_execute("ALTER TABLE evidence_moved RENAME TO evidence")
        .await
        .unwrap();

    assert_eq!(
        local_blobs(&dir),
        blobs_before,
        "the local blob was removed"
    );
    assert_eq!(
        s3.keys().await,
        Vec::<String>::new(),
        "the S3 object was removed"
    );
    assert_eq!(snapshot(&s, org).await, before, "no row, no event, no seq");
    let ev = created(upload(&s, &s.seed.org_key, "ok.pdf", b"ok".to_vec())).await;
    assert_eq!(ev["ledger_seq"], before.head + 1);
    assert_eq!(intact(&s, org).await, (before.head + 1) as u64);
}

// ---------------------------------------------------------------------------
// Limits, isolation, listing

#[tokio::test]
async fn the_101st_upload_of_a_day_is_refused_until_the_next_day() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let key = s.seed.org_key.clone();
    let oks = futures_util::stream::iter(0..100u32)
        .map(|n| upload(&s, &key, &format!("f{n}.pdf"), n.to_be_bytes().to_vec()).send())
        .buffer_unordered(8)
        .filter(|r| futures_util::future::ready(r.as_ref().unwrap().status() == 201))
        .count()
        .await;
    assert_eq!(oks, 100);
    let before = snapshot(&s, org).await;

    let r = upload(&s, &key, "f100.pdf", b"one too many".to_vec())
        .send()
        .await
        .unwrap();
    // 10:30 UTC: the day's window ends in 13.5 hours.
    assert_eq!(r.headers()["retry-after"], "48600");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["x-ratelimit-limit"], "100");
    let body = assert_error(r, 429, "rate_limited").await;
    assert_eq!(body["retry_strategy"], "after_retry_after");
    // Direct uploads count against the same daily allowance.
    let r = s
        .post(
            "/api/evidence/uploads",
            &key,
            &json!({"filename": "big.mp4", "size": 10, "sha256": sha_hex(b"0123456789")}),
        )
        .send()
        .await
        .unwrap();
    assert_error(r, 429, "rate_limited").await;
    assert_eq!(snapshot(&s, org).await, before);

    // Another organisation has its own allowance.
    let (_, b_key, _) = s.new_org("Org B").await;
    created(upload(&s, &b_key, "b.pdf", b"b".to_vec())).await;

    s.clock.advance(chrono::Duration::hours(14));
    let ev = created(upload(&s, &key, "f100.pdf", b"next day".to_vec())).await;
    assert_eq!(ev["ledger_seq"], before.head + 1);
}

#[tokio::test]
async fn other_organisations_cannot_see_or_fetch_evidence() {
    let s = TestServer::start().await;
    let key = s.seed.org_key.clone();
    let ev = created(upload(&s, &key, "secret.pdf", b"secret".to_vec())).await;
    let id = ev["evidence_id"].as_str().unwrap().to_string();
    let (_, b_key, _) = s.new_org("Org B").await;

    let unknown = Uuid::new_v4();
    for path in ["/api/evidence/{}", "/api/evidence/{}/content"] {
        let theirs = s
            .get(&path.replace("{}", &id), Some(&b_key))
            .send()
            .await
            .unwrap();
        let theirs = assert_error(theirs, 404, "not_found").await;
        let missing = s
            .get(&path.replace("{}", &unknown.to_string()), Some(&b_key))
            .send()
            .await
            .unwrap();
        let missing = assert_error(missing, 404, "not_found").await;
        for f in ["message", "error_hint", "retry_strategy"] {
            assert_eq!(theirs[f], missing[f], "{path}: indistinguishable {f}");
        }
        // The owner still gets it.
        let mine = s
            .get(&path.replace("{}", &id), Some(&key))
            .send()
            .await
            .unwrap();
        assert_eq!(mine.status(), 200);
    }
    let list: Value = s
        .get("/api/evidence", Some(&b_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], json!([]));
    // Another organisation's id is not a cursor either.
    let r = s
        .get(&format!("/api/evidence?after={id}"), Some(&b_key))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_cursor").await;

    let r = s
        .get("/api/evidence/not-a-uuid", Some(&key))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_id").await;
    let r = s
        .get(&format!("/api/evidence/{id}"), Some(&s.seed.operator_key))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden_scope").await;
    let r = s
        .get(&format!("/api/evidence/{id}"), None)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;
}

#[tokio::test]
async fn the_list_is_newest_first_with_a_cursor() {
    let s = TestServer::start().await;
    let key = s.seed.org_key.clone();
    let mut ids = Vec::new();
    for n in 0..5 {
        let ev = created(upload(&s, &key, &format!("f{n}.pdf"), vec![n; 3])).await;
        ids.push(ev["evidence_id"].as_str().unwrap().to_string());
    }
    let page = |q: String| {
        let s = &s;
        let key = key.clone();
        async move {
            let r = s
                .get(&format!("/api/evidence{q}"), Some(&key))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["filename"].as_str().unwrap().to_string())
            .collect()
    };
    let p1 = page("?limit=2".into()).await;
    assert_eq!(names(&p1), ["f4.pdf", "f3.pdf"]);
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["next_cursor"], ids[3].as_str());
    assert!(p1["data"][0]["ledger_seq"].is_u64());
    assert!(p1["data"][0].get("download_url").is_none());
    let p2 = page(format!("?limit=2&after={}", ids[3])).await;
    assert_eq!(names(&p2), ["f2.pdf", "f1.pdf"]);
    let p3 = page(format!("?limit=2&after={}", ids[1])).await;
    assert_eq!(names(&p3), ["f0.pdf"]);
    assert_eq!(p3["has_more"], false);
    assert_eq!(p3["next_cursor"], Value::Null);
    assert_eq!(names(&page(String::new()).await).len(), 5);

    for (q, code) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=201", "invalid_limit"),
        ("?after=nope", "invalid_cursor"),
    ] {
        let r = s
            .get(&format!("/api/evidence{q}"), Some(&key))
            .send()
            .await
            .unwrap();
        assert_error(r, 400, code).await;
    }
}

// ---------------------------------------------------------------------------
// S3 (moto)

#[tokio::test]
async fn on_s3_downloads_are_presigned_urls_and_content_redirects() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let s3 = s3_server(&s, true).await;
    let key = s.seed.org_key.clone();
    let bytes = file_bytes(300_000, 9);
    let ev = created(
        upload_to(
            &s.http,
            s3.server.url("/api/evidence"),
            &key,
            "scan.png",
            Some("image/png"),
            bytes.clone(),
        )
        .header("x-content-sha256", sha_hex(&bytes)),
    )
    .await;
    let id = ev["evidence_id"].as_str().unwrap();
    let blob_key = format!("evidence/{org}/{id}");
    assert_eq!(s3.keys().await, vec![blob_key.clone()]);

    // Stored with its content type and the tags the lifecycle rules use.
    let head = s3
        .client
        .head_object()
        .bucket(&s3.bucket)
        .key(&blob_key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("image/png"));
    let tags = s3
        .client
        .get_object_tagging()
        .bucket(&s3.bucket)
        .key(&blob_key)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<_> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            ("org_id".to_string(), org.to_string()),
            ("plan_tier".to_string(), "starter".to_string())
        ]
    );

    let meta: Value = s
        .http
        .get(s3.server.url(&format!("/api/evidence/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = meta["download_url"].as_str().unwrap();
    assert!(url.starts_with(&aws_endpoint()), "{url}");
    assert!(url.contains("X-Amz-Expires=300"), "five minutes: {url}");
    let expires: chrono::DateTime<chrono::Utc> =
        meta["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires - chrono::Utc::now();
    assert!(left <= chrono::Duration::seconds(300) && left > chrono::Duration::seconds(240));
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(s3.server.url(&format!("/api/evidence/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&aws_endpoint()));
    let fetched = reqwest::get(&location).await.unwrap();
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn direct_uploads_are_checked_before_they_are_recorded() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let s3 = s3_server(&s, true).await;
    let key = s.seed.org_key.clone();
    let bytes = file_bytes(200_000, 3);
    let create = |body: Value| {
        s.http
            .post(s3.server.url("/api/evidence/uploads"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let complete = |upload_id: &str, key: &str| {
        s.http
            .post(
                s3.server
                    .url(&format!("/api/evidence/uploads/{upload_id}/complete")),
            )
            .bearer_auth(key)
            .send()
    };
    let put = |up: &Value, body: Vec<u8>| {
        let mut req = s.http.put(up["url"].as_str().unwrap()).body(body);
        for (name, value) in up["headers"].as_object().unwrap() {
            req = req.header(name.as_str(), value.as_str().unwrap());
        }
        req.send()
    };
    let before = snapshot(&s, org).await;

    // Start: a presigned PUT that signs the declared digest.
    let r = create(
        json!({"filename": "walkthrough.mp4", "content_type": "video/mp4",
                          "size": bytes.len(), "sha256": sha_hex(&bytes)}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let up: Value = r.json().await.unwrap();
    let upload_id = up["upload_id"].as_str().unwrap().to_string();
    let evidence_id = up["evidence_id"].as_str().unwrap().to_string();
    assert_eq!(up["method"], "PUT");
    assert_eq!(up["headers"]["content-type"], "video/mp4");
    {
        use base64::Engine;
        assert_eq!(
            up["headers"]["x-amz-checksum-sha256"],
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&bytes))
        );
    }
    let url = up["url"].as_str().unwrap();
    assert!(
        url.contains(&format!("evidence/{org}/{evidence_id}")),
        "{url}"
    );
    assert!(url.contains("X-Amz-Expires=900"), "fifteen minutes: {url}");
    assert!(
        url.contains("x-amz-checksum-sha256"),
        "the digest is signed: {url}"
    );
    assert_eq!(
        up["complete_url"],
        format!("/api/evidence/uploads/{upload_id}/complete")
    );

    // Completing before the PUT: not yet, and nothing changes.
    let r = complete(&upload_id, &key).await.unwrap();
    assert_error(r, 409, "upload_not_received").await;
    // Another organisation cannot complete (or see) it.
    let (_, b_key, _) = s.new_org("Org B").await;
    assert_error(
        complete(&upload_id, &b_key).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(snapshot(&s, org).await, before);

    assert_eq!(put(&up, bytes.clone()).await.unwrap().status(), 200);
    let r = complete(&upload_id, &key).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["location"],
        format!("/api/evidence/{evidence_id}").as_str()
    );
    let ev: Value = r.json().await.unwrap();
    assert_eq!(ev["evidence_id"], evidence_id.as_str());
    assert_eq!(ev["source"], "direct_upload");
    assert_eq!(ev["size"], bytes.len());
    assert_eq!(ev["sha256"], sha_hex(&bytes));
    assert_eq!(ev["filename"], "walkthrough.mp4");
    assert_eq!(ev["content_type"], "video/mp4");
    assert_eq!(ev["ledger_seq"], before.head + 1);
    assert_eq!(intact(&s, org).await, (before.head + 1) as u64);
    // Tagged for the lifecycle rules once accepted.
    let tags = s3
        .client
        .get_object_tagging()
        .bucket(&s3.bucket)
        .key(format!("evidence/{org}/{evidence_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tag_set().len(), 2);

    // Completing again: the same evidence, no second event.
    let r = complete(&upload_id, &key).await.unwrap();
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again, ev);
    assert_eq!(snapshot(&s, org).await.head, before.head + 1);
    // And it is ordinary evidence from now on.
    let meta: Value = s
        .http
        .get(s3.server.url(&format!("/api/evidence/{evidence_id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fetched = reqwest::get(meta["download_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Wrong bytes of the right size (moto, unlike S3, does not check the
    // signed digest): completing reads the object back, refuses it, removes
    // it and fails the upload for good.
    let mid = snapshot(&s, org).await;
    for (body, what) in [
        (file_bytes(bytes.len(), 4), "SHA-256"),
        (bytes[..1000].to_vec(), "size"),
    ] {
        let r =
            create(json!({"filename": "w.mp4", "size": bytes.len(), "sha256": sha_hex(&bytes)}))
                .await
                .unwrap();
        let bad: Value = r.json().await.unwrap();
        assert_eq!(put(&bad, body).await.unwrap().status(), 200);
        let id = bad["upload_id"].as_str().unwrap();
        let r = complete(id, &key).await.unwrap();
        let err = assert_error(r, 422, "checksum_mismatch").await;
        assert!(err["message"].as_str().unwrap().contains(what), "{err}");
        let object = format!("evidence/{org}/{}", bad["evidence_id"].as_str().unwrap());
        assert!(
            !s3.keys().await.contains(&object),
            "the refused object is deleted"
        );
        assert_error(complete(id, &key).await.unwrap(), 409, "upload_failed").await;
    }
    assert_eq!(snapshot(&s, org).await, mid);

    // Bad requests.
    for body in [
        json!({"filename": "a/b", "size": 1, "sha256": sha_hex(b"x")}),
        json!({"filename": "a", "size": 0, "sha256": sha_hex(b"")}),
        json!({"filename": "a", "size": 2_000_000_000u64, "sha256": sha_hex(b"x")}),
        json!({"filename": "a", "size": 1, "sha256": "xyz"}),
        json!({"filename": "a", "size": 1, "sha256": sha_hex(b"x"), "bucket": "mine"}),
        json!({"filename": "a", "size": 1, "sha256": sha_hex(b"x"), "content_type": "nope"}),
    ] {
        assert_error(create(body).await.unwrap(), 422, "validation_failed").await;
    }
    let r = complete(&Uuid::new_v4().to_string(), &key).await.unwrap();
    assert_error(r, 404, "not_found").await;
}

#[tokio::test]
async fn the_local_store_has_no_direct_uploads() {
    let s = TestServer::start().await;
    let r = s
        .post(
            "/api/evidence/uploads",
            &s.seed.org_key,
            &json!({"filename": "big.mp4", "size": 10, "sha256": sha_hex(b"0123456789")}),
        )
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 409, "direct_upload_unavailable").await;
    assert!(body["error_hint"]
        .as_str()
        .unwrap()
        .contains("POST /api/evidence"));
    assert_eq!(s.count("evidence_uploads").await, 0);
}
