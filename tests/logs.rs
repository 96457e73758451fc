//! Logs: JSON lines with the standard fields, error ids that support can
//! find, and never a secret. One test per binary because the log subscriber
//! is process-global.

use ledgerline_tests::{assert_error, LogCapture, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn logs_carry_ids_and_never_secrets() {
    let cap = LogCapture::get();
    let s = TestServer::start().await;
    let op = s.seed.operator_key.clone();

    // Issue a key (its token is in a response body), use keys in every way:
    // valid, tampered, revoked, and as an idempotency-tracked write.
    let issued: Value = s
        .post(
            &format!("/admin/orgs/{}/api-keys", s.seed.org_id),
            &op,
            &json!({"name": "ci"}),
        )
        .header("idempotency-key", "issue-ci-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = issued["key"].as_str().unwrap().to_string();
    assert_eq!(
        s.get("/api/me", Some(&new_key))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut tampered = new_key.clone();
    tampered.replace_range(tampered.len() - 4.., "0000");
    assert_eq!(
        s.get("/api/me", Some(&tampered))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    s.http
        .delete(s.url(&format!(
            "/admin/api-keys/{}",
            issued["id"].as_str().unwrap()
        )))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.get("/api/me", Some(&new_key))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = s
        .get("/api/me", Some(&s.seed.org_key))
        .header("x-request-id", "req-for-logs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A server error: its error_id must be in the log with the cause.
    {
        let c = s.db.pool.get().await.unwrap();
        c.batch_execute("ALTER TABLE users RENAME TO users_gone")
            .await
            .unwrap();
    }
    let r = s
        .get(&format!("/admin/orgs/{}", s.seed.org_id), Some(&op))
        .send()
        .await
        .unwrap();
    let err = assert_error(r, 500, "internal_error").await;
    let error_id = err["error_id"].as_str().unwrap().to_string();

    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let text = cap.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 8, "requests were logged: {text}");

    for secret in [&new_key, &tampered, &s.seed.org_key, &op] {
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(!text.contains(secret_part), "a key secret reached the log");
    }
    assert!(
        !text.to_ascii_lowercase().contains("bearer "),
        "an Authorization header reached the log"
    );

    let failure = lines
        .iter()
        .find(|l| l["error_id"] == error_id.as_str())
        .expect("the 500's error_id is in the log");
    assert_eq!(failure["level"], "ERROR");
    assert!(
        failure["cause"].as_str().unwrap().contains("users"),
        "{failure}"
    );

    let completed = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "req-for-logs" && l["message"] == "request completed")
        .expect("access line with the request id");
    assert_eq!(completed["status"], 200);
    assert_eq!(completed["span"]["org_id"], s.seed.org_id.as_str());
    assert!(completed["latency_ms"].is_u64());
}
