//! The hash-chained ledger against a real Postgres: changes and their events
//! commit together, seq is gapless under concurrency, the SQL sequencer and
//! the Rust reference encoding agree, and any tampering is found at its seq.

use ledgerline::clock::Clock;
use ledgerline::ledger::events::{
    self, append, settle, verify_org_chain, ChainStatus, NewEvent, GENESIS_PREV_HASH,
};
use ledgerline_tests::{assert_error, TestServer};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

async fn append_one(s: &TestServer, org: Uuid, n: usize) -> u64 {
    let p = commit_event(s, org, n).await;
    let c = s.db.pool.get().await.unwrap();
    settle(&c, p).await.unwrap().0
}

/// Appends an event in a transaction of its own and commits it (which
/// sequences it), without settling.
async fn commit_event(s: &TestServer, org: Uuid, n: usize) -> events::Pending {
    commit_event_on(&s.db.pool, org, n, s.clock.now()).await
}

/// [`commit_event`] on a pool and clock reading of the caller's choosing
/// (for tasks spawned off the test).
async fn commit_event_on(
    pool: &deadpool_postgres::Pool,
    org: Uuid,
    n: usize,
    now: chrono::DateTime<chrono::Utc>,
) -> events::Pending {
    let mut c = pool.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let p = append(
        &tx,
        org,
        &NewEvent {
            event_type: "test.appended",
            subject: format!("n:{n}"),
            actor: "test".into(),
            request_id: format!("req-{n}"),
            payload: json!({"n": n, "text": "ünïcödé ✓"}),
        },
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    p
}

fn org_id(s: &TestServer) -> Uuid {
    Uuid::parse_str(&s.seed.org_id).unwrap()
}

async fn head(s: &TestServer, org: Uuid) -> u64 {
    let c = s.db.pool.get().await.unwrap();
    match verify_org_chain(&**c, org).await.unwrap() {
        ChainStatus::Intact { events, .. } => events,
        broken => panic!("chain broken: {broken:?}"),
    }
}

#[tokio::test]
async fn account_changes_are_recorded_and_the_chain_verifies() {
    let s = TestServer::start().await;
    let op = s.seed.operator_key.clone();
    let org = s.seed.org_id.clone();
    // The seed made org.created and api_key.created.
    assert_eq!(head(&s, org_id(&s)).await, 2);

    let user: Value = s
        .post(
            &format!("/admin/orgs/{org}/users"),
            &op,
            &json!({"email": "a@example.com"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["ledger_seq"], 3);
    let plan: Value = s
        .post(
            &format!("/admin/orgs/{org}/plan"),
            &op,
            &json!({"plan_tier": "business"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["plan_tier"], "business");
    assert_eq!(plan["previous_plan_tier"], "starter");
    assert_eq!(plan["ledger_seq"], 4);
    // Same tier again: nothing changes, nothing is recorded.
    let same: Value = s
        .post(
            &format!("/admin/orgs/{org}/plan"),
            &op,
            &json!({"plan_tier": "business"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(same["ledger_seq"], Value::Null);
    let bad = s
        .post(
            &format!("/admin/orgs/{org}/plan"),
            &op,
            &json!({"plan_tier": "gold"}),
        )
        .send()
        .await
        .unwrap();
    assert_error(bad, 422, "validation_failed").await;
    // Revoking twice records one revocation.
    for _ in 0..2 {
        let r = s
            .http
            .delete(s.url(&format!("/admin/api-keys/{}", s.seed.org_key_id)))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(head(&s, org_id(&s)).await, 5);

    let c = s.db.pool.get().await.unwrap();
    let evs = events::list_events(&**c, org_id(&s), 0, 100).await.unwrap();
    let kinds: Vec<_> = evs.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "org.created",
            "api_key.created",
            "user.created",
            "org.plan_changed",
            "api_key.revoked"
        ]
    );
    assert_eq!(evs[0].prev_hash, GENESIS_PREV_HASH);
    assert_eq!(
        serde_json::from_str::<Value>(&evs[3].payload).unwrap(),
        json!({"from": "starter", "to": "business"})
    );
    assert!(evs[3].actor.starts_with("key:"));
    assert!(!evs[3].request_id.is_empty());
    // The SQL sequencer and the Rust reference encoding agree on every event.
    for e in &evs {
        assert_eq!(e.computed_hash(), e.hash, "seq {}", e.seq);
    }
}

#[tokio::test]
async fn sixty_four_concurrent_appends_get_gapless_seqs_per_organisation() {
    let s = TestServer::start().await;
    let a = org_id(&s);
    let (b, _, _) = s.new_org("Org B").await;
    let b = Uuid::parse_str(&b).unwrap();
    let base_a = head(&s, a).await;
    let base_b = head(&s, b).await;

    let tasks = (0..64).flat_map(|n| [(a, n), (b, n)]).map(|(org, n)| {
        let s = &s;
        async move { (org, append_one(s, org, n).await) }
    });
    let results = futures_util::future::join_all(tasks).await;
    for (org, base) in [(a, base_a), (b, base_b)] {
        let seqs: BTreeSet<u64> = results
            .iter()
            .filter(|(o, _)| *o == org)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (base + 1..=base + 64).collect(),
            "gapless and distinct for {org}"
        );
        assert_eq!(head(&s, org).await, base + 64);
    }
    // Each organisation's log holds only its own events.
    let c = s.db.pool.get().await.unwrap();
    for org in [a, b] {
        let evs = events::list_events(&**c, org, 0, 1000).await.unwrap();
        assert!(evs.iter().all(|e| e.org_id == org));
    }
}

#[tokio::test]
async fn a_rolled_back_change_leaves_no_event_and_consumes_no_seq() {
    let s = TestServer::start().await;
    let org = org_id(&s);
    let before = head(&s, org).await;
    {
        let mut c = s.db.pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        append(
            &tx,
            org,
            &NewEvent {
                event_type: "test.rolled_back",
                subject: String::new(),
                actor: "test".into(),
                request_id: String::new(),
                payload: json!({}),
            },
            s.clock.now(),
        )
        .await
        .unwrap();
        tx.rollback().await.unwrap();
    }
    assert_eq!(append_one(&s, org, 1).await, before + 1);
    // Through the API: a rejected write (duplicate user) records nothing.
    let op = &s.seed.operator_key;
    let users = format!("/admin/orgs/{}/users", s.seed.org_id);
    assert_eq!(
        s.post(&users, op, &json!({"email": "x@example.com"}))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        s.post(&users, op, &json!({"email": "x@example.com"}))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(head(&s, org).await, before + 2);
}

/// A writer that dies right after its COMMIT (before settling) leaves its
/// event sequenced all the same: the commit itself sequences it.
#[tokio::test]
async fn an_event_committed_by_a_writer_that_then_dies_already_has_its_seq() {
    let s = TestServer::start().await;
    let org = org_id(&s);
    let before = head(&s, org).await;
    {
        // Commit, then "die" before settling.
        let mut c = s.db.pool.get().await.unwrap();
        let tx = c.transaction().await.unwrap();
        append(
            &tx,
            org,
            &NewEvent {
                event_type: "test.orphaned",
                subject: String::new(),
                actor: "test".into(),
                request_id: String::new(),
                payload: json!({"orphan": true}),
            },
            s.clock.now(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    let c = s.db.pool.get().await.unwrap();
    let orphan = events::get_event(&**c, org, before + 1).await.unwrap();
    assert_eq!(orphan.event_type, "test.orphaned");
    assert_eq!(head(&s, org).await, before + 1);
    assert_eq!(append_one(&s, org, 2).await, before + 2);
}

#[tokio::test]
async fn changing_any_stored_field_is_detected_at_exactly_that_seq() {
    let s = TestServer::start().await;
    let other = Uuid::parse_str(&s.new_org("Other").await.0).unwrap();
    let tampers = [
        ("event_type", "SET event_type = 'test.forged'"),
        ("subject", "SET subject = subject || 'x'"),
        ("actor", "SET actor = 'someone-else'"),
        ("request_id", "SET request_id = 'forged'"),
        (
            "payload",
            "SET payload = replace(payload, '\"n\":', '\"m\":')",
        ),
        (
            "recorded_at",
            "SET recorded_at = recorded_at + interval '1 microsecond'",
        ),
        (
            "prev_hash",
            "SET prev_hash = set_byte(prev_hash, 0, get_byte(prev_hash, 0) # 1)",
        ),
        (
            "hash",
            "SET hash = set_byte(hash, 31, get_byte(hash, 31) # 128)",
        ),
        ("seq", "SET seq = 1000000"),
        ("org_id", "SET org_id = $2"),
    ];
    for (field, set) in tampers {
        // A fresh organisation with 10 events for each tampering.
        let (org, _, _) = s.new_org(&format!("Victim {field}")).await;
        let org = Uuid::parse_str(&org).unwrap();
        let base = head(&s, org).await;
        for n in 0..10 {
            append_one(&s, org, n).await;
        }
        let target = base + 5;
        let c = s.db.pool.get().await.unwrap();
        let sql = format!("UPDATE ledger_events {set} WHERE org_id = $1 AND seq = {target}");
        let n = if set.contains("$2") {
            c.execute(&sql, &[&org, &other]).await.unwrap()
        } else {
            c.execute(&sql, &[&org]).await.unwrap()
        };
        assert_eq!(n, 1, "{field}");
        match verify_org_chain(&**c, org).await.unwrap() {
            ChainStatus::Broken { seq, .. } => assert_eq!(seq, target, "{field}"),
            ok => panic!("tampering with {field} went unnoticed: {ok:?}"),
        }
    }
    // Removing the newest event is caught by the recorded head.
    let (org, _, _) = s.new_org("Truncated").await;
    let org = Uuid::parse_str(&org).unwrap();
    append_one(&s, org, 1).await;
    let last = append_one(&s, org, 2).await;
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "DELETE FROM ledger_events WHERE org_id = $1 AND seq = $2",
        &[&org, &(last as i64)],
    )
    .await
    .unwrap();
    assert!(
        matches!(verify_org_chain(&**c, org).await.unwrap(), ChainStatus::Broken { seq, .. } if seq == last)
    );
}

#[tokio::test]
async fn events_are_served_per_organisation_with_hex_hashes() {
    let s = TestServer::start().await;
    let key = s.seed.org_key.clone();
    for n in 0..5 {
        append_one(&s, org_id(&s), n).await;
    }
    let first: Value = s
        .get("/api/ledger/events?limit=3", Some(&key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["has_more"], true);
    let data = first["data"].as_array().unwrap();
    assert_eq!(
        data.iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(data[0]["prev_hash"], "0".repeat(64));
    assert_eq!(data[1]["prev_hash"], data[0]["hash"]);
    for e in data {
        let h = e["hash"].as_str().unwrap();
        assert!(
            h.len() == 64
                && h.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }
    let rest: Value = s
        .get(
            &format!(
                "/api/ledger/events?after={}",
                first["next_cursor"].as_str().unwrap()
            ),
            Some(&key),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 4);
    assert_eq!(rest["has_more"], false);

    let one: Value = s
        .get("/api/ledger/events/4", Some(&key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["seq"], 4);
    assert_eq!(one["payload"]["text"], "ünïcödé ✓");
    assert_eq!(one["payload_canonical"], r#"{"n":1,"text":"ünïcödé ✓"}"#);

    // Another organisation sees only its own log; seq 4 of ours is not theirs.
    let (_, other_key, _) = s.new_org("Other").await;
    let theirs: Value = s
        .get("/api/ledger/events", Some(&other_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["data"].as_array().unwrap().len(), 2);
    assert_ne!(theirs["data"][0]["hash"], first["data"][0]["hash"]);
    assert_error(
        s.get("/api/ledger/events/4", Some(&other_key))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    assert_error(
        s.get("/api/ledger/events/x", Some(&key))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_seq",
    )
    .await;
    assert_error(
        s.get("/api/ledger/events?after=-1", Some(&key))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_seq",
    )
    .await;
}

/// Appends, commits and settles event `n` on a connection of its own, in
/// the background.
fn spawn_append(s: &TestServer, org: Uuid, n: usize) -> tokio::task::JoinHandle<u64> {
    let pool = s.db.pool.clone();
    let now = s.clock.now();
    tokio::spawn(async move {
        let p = commit_event_on(&pool, org, n, now).await;
        let c = pool.get().await.unwrap();
        settle(&c, p).await.unwrap().0
    })
}

/// Sequencing at commit: a commit that appended an event waits while the
/// organisation's head row is locked (by another commit sequencing), and
/// then takes the next seq from the head that one left; another
/// organisation's commits never wait for it. The SQL encoding (used by the
/// sequencer) gives the Rust encoding's bytes.
#[tokio::test]
async fn a_commit_waits_for_its_organisations_head_and_no_other() {
    let s = TestServer::start().await;
    let org = org_id(&s);
    let (other, _, _) = s.new_org("Other").await;
    let other = Uuid::parse_str(&other).unwrap();
    let before = head(&s, org).await;
    let other_before = head(&s, other).await;

    // Someone holds the head row, as a commit does while it sequences.
    let mut holder = s.db.pool.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM ledger_heads WHERE org_id = $1 FOR UPDATE",
        &[&org],
    )
    .await
    .unwrap();
    let waiter = spawn_append(&s, org, 1);
    // The other organisation is not held up.
    let elsewhere = spawn_append(&s, other, 1);
    assert_eq!(elsewhere.await.unwrap(), other_before + 1);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "the commit must wait for the organisation's head"
    );
    tx.commit().await.unwrap();
    let seq = waiter.await.unwrap();
    assert_eq!(seq, before + 1);
    assert_eq!(head(&s, org).await, before + 1);

    let c = s.db.pool.get().await.unwrap();
    let ev = events::get_event(&**c, org, seq).await.unwrap();
    let sql_bytes: Vec<u8> = c
        .query_one(
            "SELECT ledger_canonical(seq, prev_hash, org_id, recorded_at, event_type,
                                     subject, actor, request_id, payload)
               FROM ledger_events WHERE org_id = $1 AND seq = $2",
            &[&org, &(seq as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sql_bytes, ev.canonical_bytes());
}

/// Migrating to sequencing at commit (V6) sequences whatever the old
/// after-commit sequencer (V3) had left pending, in arrival order, after
/// the events already in the log.
#[tokio::test]
async fn the_v6_migration_sequences_events_left_pending() {
    let db = ledgerline_tests::test_db_at(Some(5)).await;
    let org = Uuid::new_v4();
    let c = db.pool.get().await.unwrap();
    c.execute(
        "INSERT INTO organizations (id, name) VALUES ($1, 'Old')",
        &[&org],
    )
    .await
    .unwrap();
    for n in 1..=3 {
        c.execute(
            "INSERT INTO ledger_events (org_id, event_type, subject, payload)
             VALUES ($1, 'test.old', $2, '{}')",
            &[&org, &format!("n:{n}")],
        )
        .await
        .unwrap();
        if n == 1 {
            // The old sequencer ran for the first one only.
            c.execute(
                "SELECT count(*) FROM ledger_sequence($1, now(), NULL)",
                &[&org],
            )
            .await
            .unwrap();
        }
    }
    drop(c);
    ledgerline::db::migrate(&db.url).await.unwrap();
    let c = db.pool.get().await.unwrap();
    let pending: i64 = c
        .query_one("SELECT count(*) FROM ledger_events WHERE seq IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
    let evs = events::list_events(&**c, org, 0, 10).await.unwrap();
    let subjects: Vec<&str> = evs.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, ["n:1", "n:2", "n:3"]);
    assert!(matches!(
        verify_org_chain(&**c, org).await.unwrap(),
        ChainStatus::Intact { events: 3, .. }
    ));
}
