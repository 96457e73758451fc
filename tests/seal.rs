//! Nightly seals and proofs against a real Postgres: day roots and
//! checkpoints equal from-scratch computations over the stored hashes, the
//! signed checkpoints verify with a standard Ed25519 verifier, sealing is
//! idempotent and catches up missed nights, days split at UTC midnight,
//! proofs verify, other organisations see nothing, and the cron → queue →
//! worker path (locally and through the Lambda handlers) seals each
//! organisation once.

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use ledgerline::clock::Clock;
use ledgerline::http::pipeline::{Pipeline, Serve};
use ledgerline::jobs::{self, RootsWorker, SealJob};
use ledgerline::ledger::checkpoint::verify_signed_note;
use ledgerline::ledger::events::flush;
use ledgerline::ledger::merkle::{self, Hash};
use ledgerline::ledger::seal::{self, DayRoot};
use ledgerline::queue::{PgQueue, Queue};
use ledgerline_tests::{assert_error, sample_event, TestServer};
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn seed_org(s: &TestServer) -> Uuid {
    Uuid::parse_str(&s.seed.org_id).unwrap()
}

/// Appends `n` events to `org` at the clock's current time, in one
/// statement (as `events::append` does, row by row); its commit sequences
/// them (the real sequencer, migrations/V6), and they are settled.
async fn add_events(s: &TestServer, org: Uuid, n: i64) {
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "INSERT INTO ledger_events (org_id, event_type, subject, payload, recorded_at)
         SELECT $1, 'test.bulk', 'n:' || g, '{\"n\":' || g || '}', $3
           FROM generate_series(1, $2::bigint) g",
        &[&org, &n, &s.clock.now()],
    )
    .await
    .unwrap();
    flush(&**c).await.unwrap();
}

/// The stored event hashes with seq in [from, to], in seq order.
async fn hashes(s: &TestServer, org: Uuid, from: u64, to: u64) -> Vec<Hash> {
    let c = s.db.pool.get().await.unwrap();
    c.query(
        "SELECT hash FROM ledger_events WHERE org_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
        &[&org, &(from as i64), &(to as i64)],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, Vec<u8>>(0).try_into().unwrap())
    .collect()
}

async fn head_seq(s: &TestServer, org: Uuid) -> u64 {
    let c = s.db.pool.get().await.unwrap();
    c.query_one(
        "SELECT coalesce(max(seq), 0) FROM ledger_events WHERE org_id = $1",
        &[&org],
    )
    .await
    .unwrap()
    .get::<_, i64>(0) as u64
}

async fn stored_roots(s: &TestServer, org: Uuid) -> Vec<DayRoot> {
    let c = s.db.pool.get().await.unwrap();
    seal::list_roots(&**c, org, None, 1000).await.unwrap()
}

/// Every column of every seal of `org`, as text, for exact comparisons.
async fn raw_rows(s: &TestServer, org: Uuid) -> Vec<String> {
    let c = s.db.pool.get().await.unwrap();
    c.query(
        "SELECT r::text FROM ledger_roots r WHERE org_id = $1 ORDER BY day",
        &[&org],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn verifier_key(s: &TestServer) -> String {
    let body: Value = s
        .get("/api/public/checkpoint-key", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["algorithm"], "ed25519");
    assert_eq!(body["format"], "c2sp-signed-note");
    body["verifier_key"].as_str().unwrap().to_string()
}

/// Checks the signed note with plain ed25519-dalek, independently of our
/// note code: the signature is over the exact note text (everything up to
/// and including the newline before the blank line).
fn verify_with_dalek(note: &str, vkey: &str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    // <name>+<hex key id>+<base64(0x01 || key)>; base64 may itself hold '+'.
    let key_bytes = b64.decode(vkey.splitn(3, '+').nth(2).unwrap()).unwrap();
    assert_eq!(key_bytes[0], 0x01, "Ed25519 key type");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes[1..].try_into().unwrap()).unwrap();
    let split = note.find("\n\n").unwrap() + 1;
    let (text, sigs) = note.split_at(split);
    let line = sigs[1..].lines().next().unwrap();
    let sig_b64 = line
        .strip_prefix("\u{2014} ")
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap();
    let sig = b64.decode(sig_b64).unwrap();
    assert_eq!(sig.len(), 4 + 64);
    let signature = ed25519_dalek::Signature::from_slice(&sig[4..]).unwrap();
    key.verify_strict(text.as_bytes(), &signature)
        .expect("the checkpoint signature verifies over the note text");
    // Any change to the text breaks it.
    let tampered = text.replacen('\n', "\n ", 1);
    assert!(key.verify_strict(tampered.as_bytes(), &signature).is_err());
}

#[tokio::test]
async fn ten_thousand_events_seal_to_the_roots_computed_from_scratch() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    // Day 1 (2026-11-23): the seed's 2 events and 10,000 more.
    add_events(&s, org, 10_000).await;
    let day1_last = head_seq(&s, org).await;
    assert_eq!(day1_last, 10_002);
    // Day 2: 10,000 more.
    s.clock.set(at("2026-11-24T09:00:00Z"));
    add_events(&s, org, 10_000).await;
    let day2_last = head_seq(&s, org).await;

    s.clock.set(at("2026-11-25T02:00:00Z"));
    let started = Instant::now();
    let report = seal::seal_day(&s.ctx, org, day("2026-11-23"))
        .await
        .unwrap();
    let first_seal = started.elapsed();
    assert_eq!(report.sealed.len(), 1);
    assert_eq!(report.rows_read, day1_last);
    let started = Instant::now();
    let report2 = seal::seal_day(&s.ctx, org, day("2026-11-24"))
        .await
        .unwrap();
    eprintln!(
        "sealed {} events in {first_seal:?}, then {} events (resuming from the edge) in {:?}",
        report.rows_read,
        report2.rows_read,
        started.elapsed()
    );
    assert_eq!(report2.rows_read, 10_000, "only the day's events are read");

    let roots = stored_roots(&s, org).await;
    assert_eq!(roots.len(), 2);
    let all = hashes(&s, org, 1, day2_last).await;
    for (r, (first, last)) in roots
        .iter()
        .zip([(1, day1_last), (day1_last + 1, day2_last)])
    {
        let day_hashes = &all[first as usize - 1..last as usize];
        assert_eq!(r.event_count, last - first + 1);
        assert_eq!((r.first_seq, r.last_seq), (first, last));
        assert_eq!(r.first_hash, day_hashes[0]);
        assert_eq!(r.last_hash, *day_hashes.last().unwrap());
        assert_eq!(
            r.day_root,
            merkle::root(day_hashes),
            "day root of {}",
            r.day
        );
        assert_eq!(r.tree_size, last);
        assert_eq!(
            r.tree_root,
            merkle::root(&all[..last as usize]),
            "tree root at {last}"
        );
    }
    assert_ne!(roots[1].day_root, roots[1].tree_root);

    // The checkpoints are signed notes that standard verifiers accept.
    let vkey = verifier_key(&s).await;
    for r in &roots {
        let cp = verify_signed_note(&r.checkpoint, &vkey).unwrap();
        assert_eq!(cp.origin, format!("ledgerline.local/orgs/{org}"));
        assert_eq!(cp.size, r.tree_size);
        assert_eq!(cp.root, r.tree_root);
        verify_with_dalek(&r.checkpoint, &vkey);
        assert!(!r.checkpoint.contains("2026"), "no time in the note");
    }

    // The API serves the same, in lowercase hex.
    let list: Value = s
        .get("/api/ledger/roots?limit=1", Some(&s.seed.org_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["has_more"], true);
    assert_eq!(list["next_cursor"], "2026-11-23");
    let rest: Value = s
        .get("/api/ledger/roots?after=2026-11-23", Some(&s.seed.org_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["has_more"], false);
    let one = &rest["data"][0];
    assert_eq!(one["day"], "2026-11-24");
    assert_eq!(one["day_root"], hex::encode(roots[1].day_root));
    assert_eq!(one["tree_root"], hex::encode(roots[1].tree_root));
    assert_eq!(one["first_hash"], hex::encode(roots[1].first_hash));
    assert_eq!(one["last_hash"], hex::encode(roots[1].last_hash));
    assert_eq!(one["event_count"], 10_000);
    assert_eq!(one["tree_size"], day2_last);
    assert_eq!(one["checkpoint"], roots[1].checkpoint.as_str());
    assert_eq!(one["verifier_key"], vkey.as_str());
    let got: Value = s
        .get("/api/ledger/roots/2026-11-24", Some(&s.seed.org_key))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&got, one);
    for v in [&one["day_root"], &one["tree_root"], &one["edge"]] {
        let v = v.as_str().unwrap();
        assert!(v.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')), "{v}");
    }
}

#[tokio::test]
async fn sealing_is_idempotent_catches_up_and_splits_days_at_midnight() {
    let s = TestServer::start().await;
    let org = seed_org(&s); // 2 events on 2026-11-23 at 10:30
                            // The last microsecond of the 23rd and the first of the 24th.
    s.clock.set(at("2026-11-23T23:59:59.999999Z"));
    add_events(&s, org, 3).await;
    s.clock.set(at("2026-11-24T00:00:00Z"));
    add_events(&s, org, 2).await;
    s.clock.set(at("2026-11-26T12:00:00Z"));
    add_events(&s, org, 4).await; // the 26th: today, not sealable

    // Today and the future are refused.
    for d in ["2026-11-26", "2026-12-01"] {
        let e = seal::seal_day(&s.ctx, org, day(d)).await.unwrap_err();
        assert_eq!(e.code, "day_not_over");
        assert!(e.message.contains(d), "{}", e.message);
    }
    let e = jobs::manual_seal(&s.ctx, "2026-11-26", None)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("not over yet"), "{e:#}");
    assert!(jobs::manual_seal(&s.ctx, "26/11/2026", None).await.is_err());

    // Nothing was sealed for the 23rd (a missed night): sealing the 25th
    // seals the 23rd and the 24th, oldest first; the 25th had no events.
    let report = seal::seal_day(&s.ctx, org, day("2026-11-25"))
        .await
        .unwrap();
    let days: Vec<_> = report.sealed.iter().map(|r| r.day.to_string()).collect();
    assert_eq!(days, ["2026-11-23", "2026-11-24"]);
    let roots = stored_roots(&s, org).await;
    assert_eq!((roots[0].first_seq, roots[0].last_seq), (1, 5));
    assert_eq!((roots[1].first_seq, roots[1].last_seq), (6, 7));
    assert_eq!(report.rows_read, 7);

    // Again: nothing changes, not even sealed_at.
    let before = raw_rows(&s, org).await;
    let again = seal::seal_day(&s.ctx, org, day("2026-11-25"))
        .await
        .unwrap();
    assert!(again.sealed.is_empty());
    assert_eq!(again.rows_read, 0);
    assert_eq!(raw_rows(&s, org).await, before);

    // A seal lost (say, the row deleted before a crash was noticed) is
    // recomputed to exactly the same row: the signature is deterministic.
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "DELETE FROM ledger_roots WHERE org_id = $1 AND day = '2026-11-24'",
        &[&org],
    )
    .await
    .unwrap();
    s.clock.set(at("2026-11-26T12:00:00Z"));
    seal::seal_day(&s.ctx, org, day("2026-11-24"))
        .await
        .unwrap();
    let after = raw_rows(&s, org).await;
    assert_eq!(after, before);

    // Concurrent sealers of one organisation: one row per day, no error.
    let (other, _, _) = s.new_org("Concurrent").await;
    let other = Uuid::parse_str(&other).unwrap();
    add_events(&s, other, 50).await;
    s.clock.set(at("2026-11-27T03:00:00Z"));
    let (a, b) = tokio::join!(
        seal::seal_day(&s.ctx, other, day("2026-11-26")),
        seal::seal_day(&s.ctx, other, day("2026-11-26"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.sealed.len() + b.sealed.len(), 1);
    assert_eq!(stored_roots(&s, other).await.len(), 1);
}

#[tokio::test]
async fn a_failed_transaction_leaves_no_half_seal() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    s.clock.set(at("2026-11-24T03:00:00Z"));
    // Break the log: a gap in seq (as a corrupted database would have).
    add_events(&s, org, 5).await;
    let c = s.db.pool.get().await.unwrap();
    c.execute(
        "UPDATE ledger_events SET seq = seq + 1000 WHERE org_id = $1 AND seq = 5",
        &[&org],
    )
    .await
    .unwrap();
    s.clock.set(at("2026-11-25T03:00:00Z"));
    let e = seal::seal_day(&s.ctx, org, day("2026-11-24"))
        .await
        .unwrap_err();
    assert_eq!(e.status, 500);
    // The 23rd sealed fine in its own transaction; the 24th left nothing.
    let roots = stored_roots(&s, org).await;
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].day, day("2026-11-23"));
}

/// Seals three days of different sizes and checks proofs over HTTP.
#[tokio::test]
async fn proofs_verify_against_signed_checkpoints_and_other_orgs_see_nothing() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    let key = s.seed.org_key.clone();
    add_events(&s, org, 35).await; // 23rd: 37 events
    s.clock.set(at("2026-11-24T08:00:00Z"));
    add_events(&s, org, 100).await; // 24th: 100
    s.clock.set(at("2026-11-25T08:00:00Z"));
    add_events(&s, org, 1).await; // 25th: 1
    s.clock.set(at("2026-11-26T08:00:00Z"));
    add_events(&s, org, 9).await; // 26th: today, unsealed
    seal::seal_day(&s.ctx, org, day("2026-11-25"))
        .await
        .unwrap();
    let sizes = [37u64, 137, 138];
    let roots = stored_roots(&s, org).await;
    assert_eq!(roots.iter().map(|r| r.tree_size).collect::<Vec<_>>(), sizes);
    let vkey = verifier_key(&s).await;
    let get = |path: String| {
        let req = s.get(&path, Some(&key));
        async move { req.send().await.unwrap() }
    };
    let hex32 = |v: &Value| -> Hash {
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };

    for (i, &size) in sizes.iter().enumerate() {
        for seq in [1, 2, 16, 17, 36, 37, 38, 64, 100, 128, 129, 137, 138] {
            if seq > size {
                continue;
            }
            let r = get(format!(
                "/api/ledger/proof/inclusion?seq={seq}&tree_size={size}"
            ))
            .await;
            assert_eq!(r.status(), 200, "seq {seq} in {size}");
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["leaf_index"], seq - 1);
            assert_eq!(p["tree_size"], size);
            // The root is the one the signed checkpoint commits to.
            let cp = verify_signed_note(p["checkpoint"].as_str().unwrap(), &vkey).unwrap();
            assert_eq!(cp.size, size);
            assert_eq!(hex32(&p["root"]), cp.root);
            assert_eq!(cp.root, roots[i].tree_root);
            // The leaf is the stored event's hash.
            let ev: Value = get(format!("/api/ledger/events/{seq}"))
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(p["leaf_hash"], ev["hash"]);
            let path: Vec<Hash> = p["audit_path"]
                .as_array()
                .unwrap()
                .iter()
                .map(hex32)
                .collect();
            let leaf = merkle::leaf_hash(&hex32(&p["leaf_hash"]));
            assert_eq!(hex32(&p["leaf_hash_rfc6962"]), leaf);
            assert!(
                merkle::verify_inclusion(&leaf, seq - 1, size, &path, &cp.root),
                "seq {seq} in {size}"
            );
            assert!(
                !merkle::verify_inclusion(&leaf, seq % size, size, &path, &cp.root) || size == 1
            );
        }
    }
    for (m, n) in [(37, 137), (37, 138), (137, 138), (37, 37)] {
        let r = get(format!("/api/ledger/proof/consistency?from={m}&to={n}")).await;
        assert_eq!(r.status(), 200);
        let p: Value = r.json().await.unwrap();
        let proof: Vec<Hash> = p["proof"].as_array().unwrap().iter().map(hex32).collect();
        let old = verify_signed_note(p["from_checkpoint"].as_str().unwrap(), &vkey).unwrap();
        let new = verify_signed_note(p["to_checkpoint"].as_str().unwrap(), &vkey).unwrap();
        assert_eq!(hex32(&p["from_root"]), old.root);
        assert_eq!(hex32(&p["to_root"]), new.root);
        assert_eq!((p["from"].as_u64(), p["to"].as_u64()), (Some(m), Some(n)));
        assert!(
            merkle::verify_consistency(m, n, &old.root, &new.root, &proof),
            "{m} -> {n}"
        );
        // The same proof as the reference computation over all leaves.
        let all = hashes(&s, org, 1, n).await;
        let want = merkle::consistency_proof(&all, m).unwrap();
        assert_eq!(proof, want);
    }

    // Bad requests are refused clearly.
    for (path, status, code) in [
        (
            "/api/ledger/proof/inclusion?seq=1&tree_size=50",
            404,
            "not_found",
        ),
        (
            "/api/ledger/proof/inclusion?seq=1&tree_size=146",
            404,
            "not_found",
        ),
        (
            "/api/ledger/proof/inclusion?seq=38&tree_size=37",
            422,
            "validation_failed",
        ),
        (
            "/api/ledger/proof/inclusion?seq=0&tree_size=37",
            422,
            "validation_failed",
        ),
        (
            "/api/ledger/proof/inclusion?tree_size=37",
            400,
            "missing_parameter",
        ),
        (
            "/api/ledger/proof/inclusion?seq=x&tree_size=37",
            400,
            "invalid_parameter",
        ),
        (
            "/api/ledger/proof/consistency?from=137&to=37",
            422,
            "validation_failed",
        ),
        (
            "/api/ledger/proof/consistency?from=0&to=37",
            404,
            "not_found",
        ),
        (
            "/api/ledger/proof/consistency?from=37&to=40",
            404,
            "not_found",
        ),
        ("/api/ledger/roots/2026-11-26", 404, "not_found"),
        ("/api/ledger/roots/yesterday", 400, "invalid_day"),
        ("/api/ledger/roots?after=11-24", 400, "invalid_day"),
    ] {
        let body = assert_error(get(path.to_string()).await, status, code).await;
        if path.contains("tree_size=50") {
            assert!(body["message"].as_str().unwrap().contains("tree size 50"));
        }
    }
    // Without a key: 401; another organisation: nothing at all.
    let r = s.get("/api/ledger/roots", None).send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;
    let (_, other_key, _) = s.new_org("Other").await;
    let other = |path: &str| s.get(path, Some(&other_key)).send();
    let list: Value = other("/api/ledger/roots")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"], serde_json::json!([]));
    for path in [
        "/api/ledger/roots/2026-11-23",
        "/api/ledger/proof/inclusion?seq=1&tree_size=37",
        "/api/ledger/proof/consistency?from=37&to=138",
    ] {
        assert_error(other(path).await.unwrap(), 404, "not_found").await;
    }
}

#[tokio::test]
async fn cron_queues_one_job_per_org_with_unsealed_days_and_the_worker_seals_once() {
    let s = TestServer::start().await;
    let seed = seed_org(&s);
    let (b, _, _) = s.new_org("B").await; // events on the 23rd too
    let b = Uuid::parse_str(&b).unwrap();
    s.clock.set(at("2026-11-24T10:00:00Z"));
    let (c, _, _) = s.new_org("C").await; // only on the 24th
    let c = Uuid::parse_str(&c).unwrap();
    add_events(&s, b, 3).await; // B on the 24th as well
    let queue = PgQueue::new(s.ctx.pool.clone(), "test_roots");

    // 02:00 on the 25th. Pretend the night of the 24th failed entirely:
    s.clock.set(at("2026-11-25T02:00:00Z"));
    // nothing ran, so B's 23rd is caught up together with the 24th.
    seal::seal_day(&s.ctx, seed, day("2026-11-24"))
        .await
        .unwrap(); // seed org is up to date
    let fan = jobs::fan_out_seals(&s.ctx, &queue).await.unwrap();
    assert_eq!(fan.through_day, day("2026-11-24"));
    assert_eq!(fan.jobs, 2, "B and C, not the sealed seed org");
    let msgs = queue
        .receive(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap();
    let mut jobs_seen: Vec<SealJob> = msgs
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect();
    jobs_seen.sort_by_key(|j| j.org_id);
    let mut want = vec![
        SealJob {
            org_id: b,
            through_day: day("2026-11-24"),
        },
        SealJob {
            org_id: c,
            through_day: day("2026-11-24"),
        },
    ];
    want.sort_by_key(|j| j.org_id);
    assert_eq!(jobs_seen, want);
    for m in &msgs {
        // Give them back (visible again at once) and add a duplicate of B's.
        queue
            .change_visibility(&m.receipt_handle, Duration::ZERO)
            .await
            .unwrap();
    }
    let dup = serde_json::to_string(&SealJob {
        org_id: b,
        through_day: day("2026-11-24"),
    })
    .unwrap();
    queue.send(&dup, Duration::ZERO).await.unwrap();

    let worker = RootsWorker::new(s.ctx.clone());
    let (ok, failed) = worker.work_once(&queue, Duration::ZERO).await.unwrap();
    assert_eq!((ok, failed), (3, 0));
    assert!(queue
        .receive(10, Duration::from_secs(60), Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    let b_roots = stored_roots(&s, b).await;
    assert_eq!(
        b_roots
            .iter()
            .map(|r| r.day.to_string())
            .collect::<Vec<_>>(),
        ["2026-11-23", "2026-11-24"]
    );
    assert_eq!(stored_roots(&s, c).await.len(), 1);
    // A repeated job is harmless.
    let rows = raw_rows(&s, b).await;
    let again = worker.handle(&dup).await.unwrap();
    assert!(again.sealed.is_empty());
    assert_eq!(raw_rows(&s, b).await, rows);
    // A job naming today (a skewed sender) seals only through yesterday.
    let today = serde_json::to_string(&SealJob {
        org_id: c,
        through_day: day("2026-11-25"),
    })
    .unwrap();
    let r = worker.handle(&today).await.unwrap();
    assert_eq!(r.through_day, day("2026-11-24"));
    // The next night has nothing left to do.
    assert_eq!(jobs::fan_out_seals(&s.ctx, &queue).await.unwrap().jobs, 0);

    // A bad message fails (locally: it is retried later, then dead-lettered).
    queue.send("not a job", Duration::ZERO).await.unwrap();
    let (ok, failed) = worker.work_once(&queue, Duration::ZERO).await.unwrap();
    assert_eq!((ok, failed), (0, 1));
    assert_eq!(worker.heartbeat.counts().1, 1);
}

/// The Lambda handlers fed their sample events (events/*.json), the way
/// the runtime would deserialize them.
#[tokio::test]
async fn lambda_handlers_take_their_sample_events() {
    let s = TestServer::start().await;
    let org = seed_org(&s);
    s.clock.set(at("2026-11-24T02:00:00Z"));

    // cron: the scheduler's event → one job per organisation.
    let queue = PgQueue::new(s.ctx.pool.clone(), "test_roots_lambda");
    let cron_event: Value =
        serde_json::from_str(&sample_event("cron_ledger_roots", &s.seed)).unwrap();
    let out = jobs::handle_cron_event(&s.ctx, &queue, cron_event)
        .await
        .unwrap();
    assert_eq!(out["jobs"], 1);
    assert_eq!(out["through_day"], "2026-11-23");
    assert!(out["purged"].is_object(), "{out}");

    // worker: the first record seals the seed org, the second is not a
    // job and is reported as that message's failure only.
    let worker = RootsWorker::new(s.ctx.clone());
    let event = sample_event("worker_ledger_roots", &s.seed);
    let resp = worker
        .handle_sqs_batch(serde_json::from_str(&event).unwrap())
        .await;
    let failed: Vec<_> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["c80e8021-a70a-42c7-a470-796e1186f753"]);
    let json = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "c80e8021-a70a-42c7-a470-796e1186f753"}]})
    );
    let roots = stored_roots(&s, org).await;
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].tree_size, 2);
    // Redelivered: harmless, and now nothing fails but the bad record.
    let resp = worker
        .handle_sqs_batch(serde_json::from_str(&event).unwrap())
        .await;
    assert_eq!(resp.batch_item_failures.len(), 1);
    assert_eq!(stored_roots(&s, org).await, roots);

    // The HTTP functions' events (the seed org's day is now sealed: tree size 2).
    for function in [
        "api_list_ledger_roots",
        "api_get_ledger_root",
        "api_ledger_inclusion_proof",
        "api_ledger_consistency_proof",
        "api_checkpoint_key",
    ] {
        let event = sample_event(function, &s.seed);
        let req = lambda_http::request::from_str(&event)
            .unwrap_or_else(|e| panic!("events/{function}.json: {e}"));
        let pipeline = Pipeline::new(s.ctx.clone(), Serve::Function(function));
        let resp = ledgerline::lambda::handle_event(&pipeline, req).await;
        assert_eq!(resp.status(), 200, "{function}: {:?}", resp.body());
    }
}

/// The nightly run's housekeeping deletes expired rate-limit windows and
/// Idempotency-Key records, and only those.
#[tokio::test]
async fn the_nightly_run_purges_expired_windows_and_idempotency_records() {
    let s = TestServer::start().await;
    let now = at("2026-11-24T02:00:00Z");
    s.clock.set(now);
    let c = s.db.pool.get().await.unwrap();
    c.batch_execute(
        "INSERT INTO rate_limit_windows (bucket, window_start, count, expires_at)
         SELECT 'b' || g, '2026-11-23T00:00:00Z', 1,
                CASE WHEN g % 2 = 0 THEN timestamptz '2026-11-24T01:00:00Z'
                     ELSE timestamptz '2026-11-24T03:00:00Z' END
           FROM generate_series(1, 25001) g;
         INSERT INTO idempotency_records (owner, idempotency_key, route, fingerprint, expires_at)
         VALUES ('o', 'old', 'POST /x', '\\x00', '2026-11-23T02:00:00Z'),
                ('o', 'new', 'POST /x', '\\x00', '2026-11-25T02:00:00Z');",
    )
    .await
    .unwrap();
    let purged = jobs::purge_expired(&s.ctx, now).await.unwrap();
    assert_eq!(purged.rate_limit_windows, 12_500);
    assert_eq!(purged.idempotency_records, 1);
    let left: Vec<(i64, i64)> = c
        .query(
            "SELECT (SELECT count(*) FROM rate_limit_windows WHERE expires_at > $1),
                    (SELECT count(*) FROM rate_limit_windows)",
            &[&now],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, [(12_501, 12_501)]);
    let keys: Vec<String> = c
        .query("SELECT idempotency_key FROM idempotency_records", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["new"]);
    // Nothing left to purge: a second run deletes nothing.
    let again = jobs::purge_expired(&s.ctx, now).await.unwrap();
    assert_eq!(again, jobs::Purged::default());
}
