//! Shared test support: a fresh, migrated Postgres database per test and the
//! real local server on a random port. Run through `scripts/test.sh`, which
//! starts Postgres and moto's server and sets the environment.

use ledgerline::clock::{Clock, ManualClock};
use ledgerline::config::Config;
use ledgerline::context::AppContext;
use ledgerline::http::pipeline::{Pipeline, Serve};
use serde_json::{json, Value};
use std::sync::Arc;

/// The admin connection string of the test cluster.
pub fn admin_url() -> String {
    std::env::var("LEDGERLINE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "LEDGERLINE_TEST_DATABASE_URL is not set: run the tests with `scripts/test.sh`, \
             which starts a private Postgres and sets it"
        )
    })
}

/// The S3/SQS emulator endpoint (moto's server).
pub fn aws_endpoint() -> String {
    std::env::var("LEDGERLINE_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "LEDGERLINE_TEST_AWS_ENDPOINT is not set: run the tests with `scripts/test.sh`, \
             which starts moto's server and sets it"
        )
    })
}

/// A test's private database, dropped when this is (set
/// `LEDGERLINE_TEST_KEEP_DB=1` to keep them for a look afterwards).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: deadpool_postgres::Pool,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("LEDGERLINE_TEST_KEEP_DB").is_some() {
            eprintln!("kept test database {}", self.name);
            return;
        }
        self.pool.close();
        // Drop cannot await, and the test's runtime may be the one running
        // this: a thread of its own, with its own runtime, drops the
        // database (FORCE ends whatever connections the test left open).
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await?;
                let conn = tokio::spawn(conn);
                let r = client.batch_execute(&sql).await;
                drop(client);
                let _ = conn.await;
                r
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// Replaces the database name in a `postgres://…/db?…` URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// A new database with every migration applied, private to one test.
pub async fn test_db() -> TestDb {
    test_db_at(None).await
}

/// A new database migrated up to `version` (None: every migration).
pub async fn test_db_at(version: Option<u32>) -> TestDb {
    let admin = admin_url();
    let name = format!("ll_test_{}", uuid::Uuid::new_v4().simple());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    drop(client);
    let _ = conn.await;
    let url = with_database(&admin, &name);
    ledgerline::db::migrate_to(&url, version)
        .await
        .expect("migrations apply");
    let pool = ledgerline::db::pool(&url, 8).expect("pool");
    TestDb { name, url, pool }
}

/// Configuration for a test server; tweak fields before starting.
pub fn test_config(database_url: &str) -> Config {
    let dir =
        std::env::temp_dir().join(format!("ledgerline-test-{}", uuid::Uuid::new_v4().simple()));
    let url = database_url.to_string();
    let dir = dir.to_string_lossy().to_string();
    Config::from_lookup(move |k| match k {
        "DATABASE_URL" => Some(url.clone()),
        "LEDGERLINE_DATA_DIR" => Some(dir.clone()),
        _ => None,
    })
    .expect("valid test config")
}

/// Keys and ids made by [`TestServer::start`]: one organisation with an org
/// key, plus an operator key.
pub struct Seed {
    pub org_id: String,
    pub org_key: String,
    pub org_key_id: String,
    pub operator_key: String,
    evidence: SeedEvidence,
    project: SeedProject,
}

/// A project of the seed organisation with a project key and one queued
/// message, made the first time a sample event needs one of them
/// (`PLACEHOLDER_PROJECT_ID`, `PLACEHOLDER_PROJECT_KEY`,
/// `PLACEHOLDER_MESSAGE_ID`), like [`SeedEvidence`].
struct SeedProject {
    ctx: Arc<AppContext>,
    org_id: uuid::Uuid,
    made: std::sync::OnceLock<SeedProjectIds>,
}

#[derive(Clone)]
pub struct SeedProjectIds {
    pub project_id: String,
    pub project_key: String,
    pub message_id: String,
}

/// One evidence item of the seed organisation, stored the first time a
/// sample event needs it (`PLACEHOLDER_EVIDENCE_ID`), so that tests which
/// never ask for it keep the seed organisation's ledger as it was.
struct SeedEvidence {
    ctx: Arc<AppContext>,
    org_id: uuid::Uuid,
    id: std::sync::OnceLock<String>,
}

impl Seed {
    /// The id of the seed organisation's evidence item (stored on first use:
    /// a small JSON file, so its content is also valid JSON text).
    pub fn evidence_id(&self) -> String {
        let e = &self.evidence;
        e.id.get_or_init(|| {
            let (ctx, org) = (e.ctx.clone(), e.org_id);
            // Callers are sync (sample_event) but run inside a test's
            // runtime: store it from a thread with its own runtime and pool.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let own = AppContext::with_blobs(
                        ctx.config.clone(),
                        ctx.clock.clone(),
                        ctx.blobs.clone(),
                    )
                    .unwrap();
                    let stored = ledgerline::evidence::upload_evidence(
                        &own,
                        org,
                        &ledgerline::accounts::Actor {
                            key_id: None,
                            request_id: "test-seed".into(),
                            at: own.clock.now(),
                        },
                        ledgerline::evidence::NewEvidence {
                            filename: "seed-evidence.json".into(),
                            content_type: Some("application/json".into()),
                            declared_sha256: None,
                            body: bytes::Bytes::from_static(b"{\"evidence\":\"seed\"}"),
                        },
                    )
                    .await
                    .expect("store the seed evidence");
                    stored.evidence_id.to_string()
                })
            })
            .join()
            .expect("seed evidence thread")
        })
        .clone()
    }
}

impl Seed {
    /// The seed project, its key and its message (made on first use).
    pub fn project(&self) -> SeedProjectIds {
        let p = &self.project;
        p.made
            .get_or_init(|| {
                let (ctx, org) = (p.ctx.clone(), p.org_id);
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(make_seed_project(ctx, org))
                })
                .join()
                .expect("seed project thread")
            })
            .clone()
    }
}

async fn make_seed_project(ctx: Arc<AppContext>, org: uuid::Uuid) -> SeedProjectIds {
    use ledgerline::accounts::{self, Actor, NewApiKey};
    use ledgerline::messages::{projects, store};
    // Its own context: the test's pool belongs to the test's runtime.
    let own =
        AppContext::with_blobs(ctx.config.clone(), ctx.clock.clone(), ctx.blobs.clone()).unwrap();
    let actor = Actor {
        key_id: None,
        request_id: "test-seed".into(),
        at: own.clock.now(),
    };
    let mut client = own.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let (created, _) = projects::create_project(
        &tx,
        &projects::NewProject {
            org_id: org,
            name: "Seed project".into(),
            endpoint_url: "https://example.com/webhooks".into(),
            tier_id: None,
        },
        false,
        &actor,
    )
    .await
    .expect("create the seed project");
    let project_id = created.project.id;
    let (key, _) = accounts::create_org_key(
        &tx,
        org,
        &NewApiKey {
            name: "seed project key".into(),
            scope: Some("project".into()),
            user_id: None,
            project_id: Some(project_id),
        },
        &actor,
    )
    .await
    .expect("issue the seed project key");
    tx.commit().await.unwrap();
    ledgerline::ledger::events::flush(&**client).await.unwrap();
    drop(client);
    let message: store::NewMessage = serde_json::from_value(json!({
        "recipient": "seed@example.com",
        "event_type": "seed.created",
        "body": {"seed": true},
    }))
    .unwrap();
    let accepted = store::send_message(&own, project_id, &message, None, &actor)
        .await
        .expect("send the seed message");
    SeedProjectIds {
        project_id: project_id.to_string(),
        project_key: key.key,
        message_id: accepted.id.to_string(),
    }
}

pub struct TestServer {
    pub base: String,
    pub db: TestDb,
    pub ctx: Arc<AppContext>,
    pub clock: Arc<ManualClock>,
    pub seed: Seed,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts the real local server (same pipeline as Lambda) on a random
    /// port, with a manual clock so time-based rules are deterministic.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let db = test_db().await;
        let mut config = test_config(&db.url);
        tweak(&mut config);
        // Mid-way through an hour, so hour-aligned windows never straddle.
        let clock = Arc::new(ManualClock::new(
            chrono::DateTime::parse_from_rfc3339("2026-11-23T10:30:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
        ));
        let ctx = AppContext::with_clock(config, clock.clone() as Arc<dyn Clock>).unwrap();
        let pipeline = Arc::new(Pipeline::new(ctx.clone(), Serve::All));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ledgerline::server::serve(listener, pipeline, async {
            let _ = rx.await;
        }));
        let seed = seed(&ctx).await;
        TestServer {
            base,
            db,
            ctx,
            clock,
            seed,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.http.get(self.url(path));
        match key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Creates another organisation with its own org key through the
    /// operator API; returns (org id, org key, key id).
    pub async fn new_org(&self, name: &str) -> (String, String, String) {
        let org: Value = self
            .post(
                "/admin/orgs",
                &self.seed.operator_key,
                &json!({"name": name}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let org_id = org["id"].as_str().unwrap().to_string();
        let key: Value = self
            .post(
                &format!("/admin/orgs/{org_id}/api-keys"),
                &self.seed.operator_key,
                &json!({"name": "test key"}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            org_id,
            key["key"].as_str().unwrap().to_string(),
            key["id"].as_str().unwrap().to_string(),
        )
    }

    pub async fn count(&self, table: &str) -> i64 {
        let c = self.db.pool.get().await.unwrap();
        c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn seed(ctx: &Arc<AppContext>) -> Seed {
    use ledgerline::accounts::{self, Actor, NewApiKey, NewOrg};
    let mut client = ctx.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let actor = Actor {
        key_id: None,
        request_id: "test-seed".into(),
        at: ctx.clock.now(),
    };
    let (org, _) = accounts::create_org(
        &tx,
        &NewOrg {
            name: "Seed Org".into(),
            plan_tier: None,
        },
        &actor,
    )
    .await
    .unwrap();
    let (key, _) = accounts::create_org_key(
        &tx,
        org.id,
        &NewApiKey {
            name: "seed key".into(),
            scope: None,
            user_id: None,
            project_id: None,
        },
        &actor,
    )
    .await
    .unwrap();
    let op = accounts::create_operator_key(&*tx, "seed operator", &actor)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    ledgerline::ledger::events::flush(&**client).await.unwrap();
    Seed {
        org_id: org.id.to_string(),
        org_key: key.key,
        org_key_id: key.info.id.to_string(),
        operator_key: op.key,
        evidence: SeedEvidence {
            ctx: ctx.clone(),
            org_id: org.id,
            id: std::sync::OnceLock::new(),
        },
        project: SeedProject {
            ctx: ctx.clone(),
            org_id: org.id,
            made: std::sync::OnceLock::new(),
        },
    }
}

/// Asserts the full error contract and returns the body.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status for {code}");
    let header_rid = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id on every response")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_contract(&body, code);
    assert_eq!(body["request_id"], header_rid.as_str());
    body
}

pub fn assert_contract(body: &Value, code: &str) {
    assert_eq!(body["error_code"], code, "{body}");
    for f in ["message", "error_hint", "error_id", "request_id"] {
        assert!(
            body[f].as_str().is_some_and(|s| !s.is_empty()),
            "field {f} in {body}"
        );
    }
    assert!(body["retryable"].is_boolean(), "{body}");
    let strategy = body["retry_strategy"].as_str().unwrap();
    assert!(
        [
            "none",
            "immediate",
            "exponential_backoff",
            "after_retry_after"
        ]
        .contains(&strategy),
        "{body}"
    );
    assert_eq!(body["retryable"].as_bool().unwrap(), strategy != "none");
    assert!(body["error_id"].as_str().unwrap().starts_with("err_"));
}

/// The function names with a sample event, in an order where each event's
/// precondition holds (revocation last), and the status each must produce.
pub const EVENT_EXPECTATIONS: &[(&str, u16)] = &[
    ("api_health", 200),
    ("api_openapi", 200),
    ("api_me", 200),
    ("api_list_api_keys", 200),
    ("api_get_api_key", 200),
    ("api_admin_create_org", 201),
    ("api_admin_get_org", 200),
    ("api_admin_create_user", 201),
    ("api_admin_create_api_key", 201),
    ("api_admin_set_plan", 200),
    ("api_list_ledger_events", 200),
    ("api_get_ledger_event", 200),
    // Evidence content, direct uploads and their completion are left out:
    // the content is on the local disk of the process that stored it (not
    // the function binaries' under `cargo lambda watch`), and the local
    // store has no presigned uploads (a 409 here would fail the
    // `route_not_found` check); tests/evidence.rs covers them.
    ("api_upload_evidence", 201),
    ("api_list_evidence", 200),
    ("api_get_evidence", 200),
    ("api_admin_create_project", 201),
    ("api_send_message", 202),
    ("api_list_messages", 200),
    ("api_get_message", 200),
    ("api_list_message_events", 200),
    ("api_admin_set_project_limits", 200),
    ("api_admin_apply_project_tier", 200),
    ("api_admin_suspend_project", 200),
    ("api_admin_activate_project", 200),
    ("api_admin_list_audit_events", 200),
    // Sealed days: the seed has none yet, so the list is empty (200). The
    // day, proof and public-key events need a sealed day or a configured
    // key (the function binaries run as in Lambda, where the key is
    // required at start-up); tests/seal.rs feeds them in-process.
    ("api_list_ledger_roots", 200),
    ("api_admin_revoke_api_key", 200),
    ("api_fallback", 404),
];

/// `events/<function>.json` with its placeholders replaced by real keys and
/// ids from the seed.
pub fn sample_event(function: &str, seed: &Seed) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(format!("{function}.json"));
    let event = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .replace("PLACEHOLDER_ORG_KEY", &seed.org_key)
        .replace("PLACEHOLDER_OPERATOR_KEY", &seed.operator_key)
        .replace("PLACEHOLDER_ORG_ID", &seed.org_id)
        .replace("PLACEHOLDER_KEY_ID", &seed.org_key_id);
    let event =
        if event.contains("PLACEHOLDER_PROJECT_") || event.contains("PLACEHOLDER_MESSAGE_ID") {
            let p = seed.project();
            event
                .replace("PLACEHOLDER_PROJECT_KEY", &p.project_key)
                .replace("PLACEHOLDER_PROJECT_ID", &p.project_id)
                .replace("PLACEHOLDER_MESSAGE_ID", &p.message_id)
        } else {
            event
        };
    if event.contains("PLACEHOLDER_EVIDENCE_ID") {
        event.replace("PLACEHOLDER_EVIDENCE_ID", &seed.evidence_id())
    } else {
        event
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
    }
}

/// Everything the process logs, as JSON lines, from the first call on. The
/// subscriber is process-global, so there is one capture per test binary.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Installs the JSON log subscriber writing here (once per process).
    pub fn get() -> &'static LogCapture {
        static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        CAPTURE.get_or_init(|| {
            let c = LogCapture::default();
            let writer = c.clone();
            ledgerline::logging::init_with_writer(ledgerline::logging::Format::Json, move || {
                writer.clone()
            });
            c
        })
    }

    /// What was logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}
