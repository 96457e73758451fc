//! The HTTP contract of DESIGN.md §4, proven with real requests against the
//! real local server and a real Postgres.

use ledgerline_tests::{assert_contract, assert_error, TestServer};
use serde_json::{json, Value};
use std::collections::HashSet;

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let s = TestServer::start().await;
    let r = s
        .get("/health", None)
        .header("x-request-id", "client-abc_123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-abc_123");

    let r = s.get("/health", None).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::try_parse(&generated).is_ok(), "{generated}");

    // Too long or not printable: replaced, not echoed.
    for bad in ["x".repeat(200), "has space".to_string()] {
        let r = s
            .get("/health", None)
            .header("x-request-id", &bad)
            .send()
            .await
            .unwrap();
        let rid = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(rid, bad);
        assert!(uuid::Uuid::try_parse(rid).is_ok());
    }

    // Errors carry it in the body too.
    let r = s
        .get("/nope", None)
        .header("x-request-id", "trace-me")
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 404, "route_not_found").await;
    assert_eq!(body["request_id"], "trace-me");
}

#[tokio::test]
async fn health_reports_the_database() {
    let s = TestServer::start().await;
    let body: Value = s
        .get("/health", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
}

#[tokio::test]
async fn every_error_path_speaks_the_contract() {
    let s = TestServer::start().await;
    let op = s.seed.operator_key.clone();
    let org = s.seed.org_key.clone();
    let mut ids = HashSet::new();

    let mut check = |body: Value| {
        assert!(
            ids.insert(body["error_id"].as_str().unwrap().to_string()),
            "error ids are unique"
        );
    };

    check(
        assert_error(
            s.get("/nope", None).send().await.unwrap(),
            404,
            "route_not_found",
        )
        .await,
    );
    let r = s.http.patch(s.url("/admin/orgs")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    check(assert_error(r, 405, "method_not_allowed").await);
    check(
        assert_error(
            s.http.delete(s.url("/health")).send().await.unwrap(),
            405,
            "method_not_allowed",
        )
        .await,
    );
    check(
        assert_error(
            s.get("/api/me", None).send().await.unwrap(),
            401,
            "unauthorized",
        )
        .await,
    );
    check(
        assert_error(
            s.get("/api/me", Some("ll_org_nonsense"))
                .send()
                .await
                .unwrap(),
            401,
            "unauthorized",
        )
        .await,
    );
    check(
        assert_error(
            s.http
                .get(s.url("/api/me"))
                .header("authorization", "Basic Zm9vOmJhcg==")
                .send()
                .await
                .unwrap(),
            401,
            "unauthorized",
        )
        .await,
    );
    check(
        assert_error(
            s.post("/admin/orgs", &org, &json!({"name": "x"}))
                .send()
                .await
                .unwrap(),
            403,
            "forbidden_scope",
        )
        .await,
    );
    check(
        assert_error(
            s.get("/api/api-keys", Some(&op)).send().await.unwrap(),
            403,
            "forbidden_scope",
        )
        .await,
    );
    check(
        assert_error(
            s.get("/admin/orgs/not-a-uuid", Some(&op))
                .send()
                .await
                .unwrap(),
            400,
            "invalid_id",
        )
        .await,
    );
    check(
        assert_error(
            s.get(&format!("/admin/orgs/{}", uuid::Uuid::new_v4()), Some(&op))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await,
    );
    let malformed = s
        .http
        .post(s.url("/admin/orgs"))
        .bearer_auth(&op)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    check(assert_error(malformed, 400, "invalid_json").await);
    check(
        assert_error(
            s.post("/admin/orgs", &op, &json!({"name": 42}))
                .send()
                .await
                .unwrap(),
            422,
            "validation_failed",
        )
        .await,
    );
    check(
        assert_error(
            s.post("/admin/orgs", &op, &json!({"name": "a", "surprise": true}))
                .send()
                .await
                .unwrap(),
            422,
            "validation_failed",
        )
        .await,
    );
    check(
        assert_error(
            s.post("/admin/orgs", &op, &json!({"name": ""}))
                .send()
                .await
                .unwrap(),
            422,
            "validation_failed",
        )
        .await,
    );
    check(
        assert_error(
            s.post(
                "/admin/orgs",
                &op,
                &json!({"name": "a", "plan_tier": "platinum"}),
            )
            .send()
            .await
            .unwrap(),
            422,
            "validation_failed",
        )
        .await,
    );
    let wrong_type = s
        .http
        .post(s.url("/admin/orgs"))
        .bearer_auth(&op)
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    check(assert_error(wrong_type, 415, "unsupported_media_type").await);
    let users = format!("/admin/orgs/{}/users", s.seed.org_id);
    let created = s
        .post(&users, &op, &json!({"email": "a@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    check(
        assert_error(
            s.post(&users, &op, &json!({"email": "A@example.com"}))
                .send()
                .await
                .unwrap(),
            409,
            "user_exists",
        )
        .await,
    );
    check(
        assert_error(
            s.post(&users, &op, &json!({"email": "nope"}))
                .send()
                .await
                .unwrap(),
            422,
            "validation_failed",
        )
        .await,
    );
    // The only org created was the seed: none of the rejected writes stored anything.
    assert_eq!(s.count("organizations").await, 1);
}

#[tokio::test]
async fn oversize_bodies_are_refused_and_store_nothing() {
    let s = TestServer::start().await;
    let big = json!({"name": "x".repeat(101 * 1024)});
    let r = s
        .post("/admin/orgs", &s.seed.operator_key, &big)
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 413, "payload_too_large").await;
    assert!(body["message"].as_str().unwrap().contains("102400"));

    // Same body without a Content-Length (chunked): cut off while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .to_string()
        .into_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let r = s
        .http
        .post(s.url("/admin/orgs"))
        .bearer_auth(&s.seed.operator_key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "payload_too_large").await;
    assert_eq!(s.count("organizations").await, 1);

    // Exactly at the limit is accepted as a body (and then validated).
    let pad = 100 * 1024 - r#"{"name":""}"#.len();
    let at_limit = format!(r#"{{"name":"{}"}}"#, "x".repeat(pad));
    assert_eq!(at_limit.len(), 100 * 1024);
    let r = s
        .http
        .post(s.url("/admin/orgs"))
        .bearer_auth(&s.seed.operator_key)
        .header("content-type", "application/json")
        .body(at_limit)
        .send()
        .await
        .unwrap();
    assert_error(r, 422, "validation_failed").await;
}

#[tokio::test]
async fn keys_missing_invalid_revoked_and_wrong_scope() {
    let s = TestServer::start().await;
    let op = s.seed.operator_key.clone();
    let r = s
        .get("/api/me", Some(&s.seed.org_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = r.json().await.unwrap();
    assert_eq!(me["scope"], "org");
    assert_eq!(me["org"]["id"], s.seed.org_id.as_str());

    // A well-formed token whose secret is wrong is the same 401 as garbage.
    let mut tampered = s.seed.org_key.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    assert_error(
        s.get("/api/me", Some(&tampered)).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;

    // Revoke, then the key stops working everywhere.
    let r = s
        .http
        .delete(s.url(&format!("/admin/api-keys/{}", s.seed.org_key_id)))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked: Value = r.json().await.unwrap();
    assert!(revoked["revoked_at"].is_string());
    assert!(revoked.get("key").is_none() && revoked.get("secret_hash").is_none());
    assert_error(
        s.get("/api/me", Some(&s.seed.org_key))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    // Revoking twice keeps the first revocation time.
    let again: Value = s
        .http
        .delete(s.url(&format!("/admin/api-keys/{}", s.seed.org_key_id)))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);

    // Operator key on an org-only route, org key on an operator route.
    let (_, org_key, _) = s.new_org("Other").await;
    assert_error(
        s.get(&format!("/admin/orgs/{}", s.seed.org_id), Some(&org_key))
            .send()
            .await
            .unwrap(),
        403,
        "forbidden_scope",
    )
    .await;
    let r = s
        .http
        .delete(s.url(&format!("/admin/api-keys/{}", s.seed.org_key_id)))
        .bearer_auth(&org_key)
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "forbidden_scope").await;
}

#[tokio::test]
async fn keys_are_stored_hashed_and_shown_once() {
    let s = TestServer::start().await;
    let (org_id, key, key_id) = s.new_org("Hashed").await;
    let c = s.db.pool.get().await.unwrap();
    let row = c
        .query_one(
            "SELECT secret_hash, to_jsonb(k)::text FROM api_keys k WHERE id = $1::text::uuid",
            &[&key_id],
        )
        .await
        .unwrap();
    let stored: Vec<u8> = row.get(0);
    let whole_row: String = row.get(1);
    let secret = key.rsplit('_').next().unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!whole_row.contains(secret), "the secret is not stored");
    // Reading the key back never shows the secret.
    let shown: Value = s
        .get(&format!("/api/api-keys/{key_id}"), Some(&key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["org_id"], org_id.as_str());
    assert!(!shown.to_string().contains(secret));
}

#[tokio::test]
async fn another_organisations_ids_are_not_found() {
    let s = TestServer::start().await;
    let (_, b_key, b_key_id) = s.new_org("Org B").await;
    let a_key = s.seed.org_key.clone();

    // A's key cannot see B's key: the same 404 as an id that never existed.
    let theirs = assert_error(
        s.get(&format!("/api/api-keys/{b_key_id}"), Some(&a_key))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    let nobody = assert_error(
        s.get(
            &format!("/api/api-keys/{}", uuid::Uuid::new_v4()),
            Some(&a_key),
        )
        .send()
        .await
        .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_eq!(theirs["message"], nobody["message"]);
    assert_eq!(theirs["error_hint"], nobody["error_hint"]);

    // Each lists only its own keys, and B's cursor does not page into A.
    let a_list: Value = s
        .get("/api/api-keys", Some(&a_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b_list: Value = s
        .get("/api/api-keys", Some(&b_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&a_list), vec![s.seed.org_key_id.clone()]);
    assert_eq!(ids(&b_list), vec![b_key_id.clone()]);
    let crossed: Value = s
        .get(
            &format!("/api/api-keys?after={}", s.seed.org_key_id),
            Some(&b_key),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(crossed["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn cursor_pagination_walks_every_key_once() {
    let s = TestServer::start().await;
    let op = s.seed.operator_key.clone();
    for i in 0..6 {
        let r = s
            .post(
                &format!("/admin/orgs/{}/api-keys", s.seed.org_id),
                &op,
                &json!({"name": format!("k{i}")}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/api-keys?limit=3&after={a}"),
            None => "/api/api-keys?limit=3".to_string(),
        };
        let page: Value = s
            .get(&path, Some(&s.seed.org_key))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for k in page["data"].as_array().unwrap() {
            seen.push(k["id"].as_str().unwrap().to_string());
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = Some(page["next_cursor"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7);
    assert_error(
        s.get("/api/api-keys?limit=0", Some(&s.seed.org_key))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_limit",
    )
    .await;
    assert_error(
        s.get("/api/api-keys?after=zzz", Some(&s.seed.org_key))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_cursor",
    )
    .await;
}

#[tokio::test]
async fn a_limit_of_n_admits_exactly_n_of_n_plus_20_concurrent_requests() {
    const N: u32 = 10;
    let s = TestServer::start_with(|c| {
        c.api_rate_limit_per_minute = N;
        c.api_rate_limit_window_secs = 3600;
    })
    .await;
    let futures = (0..N + 20).map(|_| s.get("/api/me", Some(&s.seed.org_key)).send());
    let responses = futures_util::future::join_all(futures).await;
    // The test clock is pinned at 10:30:00, so the hour window ends at 11:00.
    let reset = chrono::DateTime::parse_from_rfc3339("2026-11-23T11:00:00Z")
        .unwrap()
        .timestamp()
        .to_string();
    let mut remaining = Vec::new();
    let mut limited = 0;
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.headers()["x-ratelimit-limit"], N.to_string().as_str());
        assert_eq!(r.headers()["x-ratelimit-reset"], reset.as_str());
        let rem: u32 = r.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        match r.status().as_u16() {
            200 => {
                assert!(r.headers().get("retry-after").is_none());
                remaining.push(rem);
            }
            429 => {
                limited += 1;
                assert_eq!(rem, 0);
                assert_eq!(r.headers()["retry-after"], "1800");
                let body: Value = r.json().await.unwrap();
                assert_contract(&body, "rate_limited");
                assert_eq!(body["retry_strategy"], "after_retry_after");
                assert_eq!(body["retryable"], true);
            }
            other => panic!("unexpected status {other}"),
        }
    }
    remaining.sort();
    assert_eq!(
        remaining,
        (0..N).collect::<Vec<_>>(),
        "each admitted request saw its own count"
    );
    assert_eq!(limited, 20);

    // Another key has its own budget; the next window starts afresh.
    let (_, other_key, _) = s.new_org("Other").await;
    assert_eq!(
        s.get("/api/me", Some(&other_key))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.clock.advance(chrono::Duration::minutes(30));
    let r = s
        .get("/api/me", Some(&s.seed.org_key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-ratelimit-remaining"],
        (N - 1).to_string().as_str()
    );
}

#[tokio::test]
async fn idempotent_retries_return_the_first_response() {
    let s = TestServer::start().await;
    let op = s.seed.operator_key.clone();
    let send = |body: Value, key: &'static str| {
        s.post("/admin/orgs", &op, &body)
            .header("idempotency-key", key)
            .send()
    };
    let first = send(json!({"name": "Acme"}), "create-acme-1")
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let first_body: Value = first.json().await.unwrap();

    let retry = send(json!({"name": "Acme"}), "create-acme-1")
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["location"], location.as_str());
    let retry_body: Value = retry.json().await.unwrap();
    assert_eq!(retry_body, first_body);
    assert_eq!(s.count("organizations").await, 2);

    let changed = send(json!({"name": "Acme 2"}), "create-acme-1")
        .await
        .unwrap();
    assert_error(changed, 422, "idempotency_key_reused").await;
    assert_eq!(s.count("organizations").await, 2);

    // Concurrent retries of one key: exactly one organisation is created.
    let racers = (0..8).map(|_| send(json!({"name": "Racer"}), "race-1"));
    let results = futures_util::future::join_all(racers).await;
    let mut ids = HashSet::new();
    for r in results {
        let r = r.unwrap();
        match r.status().as_u16() {
            201 => {
                let v: Value = r.json().await.unwrap();
                ids.insert(v["id"].as_str().unwrap().to_string());
            }
            409 => {
                assert_error(r, 409, "idempotency_key_in_progress").await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(s.count("organizations").await, 3);

    // Without the header every POST creates.
    assert_eq!(
        s.post("/admin/orgs", &op, &json!({"name": "Acme"}))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(s.count("organizations").await, 4);
    // Keys are scoped to their owner: another caller's same key is independent.
    let bad_key = s
        .post("/admin/orgs", &op, &json!({"name": "x"}))
        .header("idempotency-key", "has space")
        .send()
        .await
        .unwrap();
    assert_error(bad_key, 400, "invalid_idempotency_key").await;
}

#[tokio::test]
async fn an_unexpected_failure_is_a_500_in_the_contract() {
    let s = TestServer::start().await;
    {
        let c = s.db.pool.get().await.unwrap();
        c.batch_execute("ALTER TABLE users RENAME TO users_gone")
            .await
            .unwrap();
    }
    let r = s
        .get(
            &format!("/admin/orgs/{}", s.seed.org_id),
            Some(&s.seed.operator_key),
        )
        .send()
        .await
        .unwrap();
    let body = assert_error(r, 500, "internal_error").await;
    assert_eq!(body["retry_strategy"], "exponential_backoff");
    assert!(
        !body["message"].as_str().unwrap().contains("users"),
        "no internals leak: {body}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_not_a_crash() {
    let db_url = "postgres://nobody@127.0.0.1:1/none";
    let config = ledgerline_tests::test_config(db_url);
    let ctx = ledgerline::context::AppContext::new(config).unwrap();
    let pipeline = std::sync::Arc::new(ledgerline::http::pipeline::Pipeline::new(
        ctx,
        ledgerline::http::pipeline::Serve::All,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ledgerline::server::serve(
        listener,
        pipeline,
        std::future::pending(),
    ));
    let r = reqwest::get(format!("{base}/health")).await.unwrap();
    let body = assert_error(r, 503, "service_unavailable").await;
    assert_eq!(body["retry_strategy"], "exponential_backoff");
    // Public routes that need no database still work.
    let r = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A table with one slow public route, for the shutdown test.
fn slow_routes() -> &'static [ledgerline::routes::Route] {
    use ledgerline::routes::{Access, Route, Verb};
    Box::leak(Box::new([Route {
        function: "test_slow",
        verb: Verb::Get,
        path: "/slow/{secs}",
        summary: "sleeps, then answers",
        tag: "test",
        access: Access::Public,
        limit: None,
        idempotent: false,
        max_body: ledgerline::http::JSON_BODY_LIMIT,
        handler: |_ctx, call| {
            Box::pin(async move {
                let secs: u64 = call.param("secs").unwrap_or("0").parse().unwrap_or(0);
                tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
                Ok(ledgerline::http::ApiResponse::ok(&json!({"slept": secs})))
            })
        },
    }]))
}

#[tokio::test]
async fn shutdown_stops_accepting_drains_and_gives_up_after_10_s() {
    use std::time::{Duration, Instant};
    let config = ledgerline_tests::test_config("postgres://nobody@127.0.0.1:1/none");
    let ctx = ledgerline::context::AppContext::new(config).unwrap();
    let pipeline = std::sync::Arc::new(ledgerline::http::pipeline::Pipeline::with_routes(
        ctx,
        slow_routes(),
        ledgerline::http::pipeline::Serve::All,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ledgerline::server::serve(listener, pipeline, async {
        let _ = stopped.await;
    }));
    // One request that finishes inside the drain window, one that never would.
    let quick = tokio::spawn(reqwest::get(format!("http://{addr}/slow/2")));
    let stuck = tokio::spawn(reqwest::get(format!("http://{addr}/slow/60")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    let asked = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once shutdown is asked.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The in-flight request is drained: it completes normally.
    let r = quick.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["slept"], 2);
    // The hanging one does not hold the server beyond 10 s.
    tokio::time::timeout(Duration::from_secs(13), server)
        .await
        .expect("serve returns after the drain timeout")
        .unwrap()
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(9500) && took < Duration::from_millis(11500),
        "{took:?}"
    );
    stuck.abort();
}
