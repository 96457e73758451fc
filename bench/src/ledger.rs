//! Ledger figures (issue 3), each against a baseline measured in the same
//! run on the same database:
//!
//! 1. Appends for one organisation from N concurrent writers (the product's
//!    path: the event inserted in the business transaction, sequenced by its
//!    COMMIT, then settled), against plain single-row INSERTs of the same
//!    rows into a table without a chain. Target ≥ 0.5×. Two bounds and the
//!    batched-sequencing design are measured beside it (see [`Kind`]).
//! 2. Sealing one org/day of many events (`seal_day`, what the worker runs):
//!    time and peak RSS, against only streaming those rows' hashes out of
//!    Postgres. Target ≤ 1.5× the read, peak RSS ≤ 64 MB.
//! 3. Merkle hashing alone (the compact range the seal uses) against raw
//!    one-shot SHA-256 calls over inputs of the same sizes. Target ≥ 0.8×.

use crate::stats::{ratio, round3, summarize};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use ledgerline::accounts::{self, Actor, NewOrg};
use ledgerline::config::Config;
use ledgerline::context::AppContext;
use ledgerline::error::ApiError;
use ledgerline::ledger::events::{self, NewEvent, GENESIS_PREV_HASH};
use ledgerline::ledger::merkle::{self, CompactRange};
use ledgerline::ledger::seal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub struct Settings {
    /// Append: concurrent writers, each on its own connection.
    pub writers: usize,
    /// Append: measured seconds per phase (each kind runs `rounds` phases,
    /// alternating, after one unmeasured warm-up phase each).
    pub append_duration: Duration,
    pub append_rounds: usize,
    /// Seal: events in the sealed day.
    pub seal_events: u64,
    /// Seal: read/seal pairs measured (medians are reported).
    pub seal_runs: usize,
    /// Merkle: leaves hashed.
    pub merkle_leaves: usize,
}

pub const APPEND_TARGET: f64 = 0.5;
pub const SEAL_TARGET: f64 = 1.5;
pub const SEAL_RSS_TARGET_MB: f64 = 64.0;
pub const MERKLE_TARGET: f64 = 0.8;

/// Rows per statement when loading the sealed day, and per portal fetch
/// when reading it back (the seal's own fetch size).
const LOAD_CHUNK: usize = 20_000;
const FETCH_ROWS: i32 = 16_384;

pub async fn run(database_url: &str, s: &Settings) -> anyhow::Result<Value> {
    anyhow::ensure!(s.writers > 0, "--ledger-writers must be at least 1");
    anyhow::ensure!(s.append_rounds > 0, "--ledger-rounds must be at least 1");
    anyhow::ensure!(s.seal_runs > 0, "--seal-runs must be at least 1");
    anyhow::ensure!(s.seal_events > 0, "--seal-events must be at least 1");
    let data_dir = std::env::temp_dir().join(format!("ledgerline-bench-{}", std::process::id()));
    let mut config = Config::from_env()?;
    config.database_url = database_url.to_owned();
    config.data_dir = data_dir.clone();
    config.db_pool_size = config.db_pool_size.max(s.writers + 2);
    let ctx = AppContext::new(config)?;
    let result = async {
        let append = append_figures(&ctx, s).await?;
        let seal = seal_figures(&ctx, s).await?;
        let merkle = tokio::task::spawn_blocking({
            let n = s.merkle_leaves;
            move || merkle_figures(n)
        })
        .await?;
        anyhow::Ok(json!({"append": append, "seal": seal, "merkle": merkle}))
    }
    .await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

async fn new_org(ctx: &AppContext, name: &str) -> anyhow::Result<Uuid> {
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let actor = Actor {
        key_id: None,
        request_id: "bench".into(),
        at: Utc::now(),
    };
    let (org, _) = accounts::create_org(
        &tx,
        &NewOrg {
            name: name.into(),
            plan_tier: None,
        },
        &actor,
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    tx.commit().await?;
    events::flush(&**client)
        .await
        .map_err(ApiError::into_anyhow)?;
    Ok(org.id)
}

// ---------------------------------------------------------------- append --

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One autocommitted single-row INSERT into a table without a chain
    /// (a prepared statement: the fastest plain insert).
    Plain,
    /// The product's append: BEGIN; `events::append`; COMMIT (which
    /// sequences the event); `events::settle` (how every change worth
    /// auditing records its event), its seq and hash returned.
    Ledger,
    /// BEGIN; the plain INSERT; COMMIT: the same transaction shape without
    /// a chain, for context.
    PlainInTx,
    /// Not the product: how fast any design that chains each event inside
    /// its writer's own transaction could go here. One statement locks a
    /// head row, hashes and inserts the chained event; BEGIN, it and COMMIT
    /// go in one round trip, and the commit is not even made durable.
    ChainCeiling,
    /// The same, then made durable: a fourth statement in the same round
    /// trip flushes the WAL past the commit (`ledger_settle(NULL)`).
    ChainCeilingDurable,
    /// Not the product: the batched-sequencing design, measured. The event
    /// is committed unsequenced (asynchronously), then in the same round
    /// trip `bench_batch_settle` waits for its seq: the first writer to
    /// find no batch running sequences every pending event in one
    /// transaction whose synchronous commit makes them (and the inserts
    /// before them) durable; the others wait for that batch.
    BatchedSequencing,
}

const KINDS: [Kind; 6] = [
    Kind::Plain,
    Kind::Ledger,
    Kind::PlainInTx,
    Kind::ChainCeiling,
    Kind::ChainCeilingDurable,
    Kind::BatchedSequencing,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain_insert",
            Kind::Ledger => "ledger_append",
            Kind::PlainInTx => "plain_insert_in_transaction",
            Kind::ChainCeiling => "chain_ceiling_not_durable",
            Kind::ChainCeilingDurable => "chain_ceiling_durable",
            Kind::BatchedSequencing => "batched_sequencing",
        }
    }
}

const PLAIN_INSERT: &str =
    "INSERT INTO bench_plain_events (org_id, event_type, subject, actor, request_id, payload)
     VALUES ($1, $2, $3, $4, $5, $6)";

struct Phase {
    ops: u64,
    seconds: f64,
    latencies_ms: Vec<f64>,
}

fn event(writer: usize, n: u64) -> NewEvent {
    NewEvent {
        event_type: "evidence.stored",
        subject: format!("evidence:{writer}-{n}"),
        actor: "key:bench".into(),
        request_id: format!("bench-{writer}-{n}"),
        payload: json!({
            "evidence_id": format!("{writer}-{n}"),
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "size": 4096,
            "filename": "report.pdf",
        }),
    }
}

/// [`Kind::ChainCeiling`]'s statement, on tables shaped like the ledger's
/// (same keys and indexes) and the ledger's own canonical encoding.
const CEILING_APPEND: &str = "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true)),
     old AS (SELECT h.last_seq, h.last_hash FROM bench_chain_heads h, lazy
              WHERE h.org_id = $1 FOR UPDATE OF h),
     ev AS (SELECT old.last_seq + 1 AS seq, old.last_hash AS prev_hash,
                   sha256(ledger_canonical(old.last_seq + 1, old.last_hash, $1, $7, $2, $3, $4,
                                           $5, $6)) AS hash
              FROM old),
     head AS (UPDATE bench_chain_heads h SET last_seq = ev.seq, last_hash = ev.hash
                FROM ev WHERE h.org_id = $1)
INSERT INTO bench_chain_events
    (org_id, seq, prev_hash, hash, event_type, subject, actor, request_id, payload, recorded_at)
SELECT $1, ev.seq, ev.prev_hash, ev.hash, $2, $3, $4, $5, $6, $7 FROM ev";

/// [`Kind::BatchedSequencing`]'s tables and functions, shaped like the
/// ledger's (pending rows have no seq; the same keys, indexes and canonical
/// encoding).
const BATCHED_SETUP: &str = "
CREATE TABLE IF NOT EXISTS bench_batch_heads (
    org_id           uuid PRIMARY KEY REFERENCES organizations (id),
    last_seq         bigint NOT NULL,
    last_hash        bytea NOT NULL,
    last_recorded_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_batch_events (
    id          bigserial PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id),
    seq         bigint,
    prev_hash   bytea,
    hash        bytea,
    event_type  text NOT NULL,
    subject     text NOT NULL,
    actor       text NOT NULL,
    request_id  text NOT NULL,
    payload     text NOT NULL,
    recorded_at timestamptz NOT NULL,
    UNIQUE (org_id, seq)
);
CREATE INDEX IF NOT EXISTS bench_batch_events_pending
    ON bench_batch_events (org_id, id) WHERE seq IS NULL;
CREATE INDEX IF NOT EXISTS bench_batch_events_recorded
    ON bench_batch_events (org_id, recorded_at) WHERE seq IS NOT NULL;

-- Chains every committed pending event of the organisation, oldest first,
-- under the head row's lock: one UPDATE for the batch, one for the head.
CREATE OR REPLACE FUNCTION bench_batch_sequence(p_org uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    h      bench_batch_heads%ROWTYPE;
    e      record;
    ids    bigint[] := '{}';
    seqs   bigint[] := '{}';
    prevs  bytea[] := '{}';
    hashes bytea[] := '{}';
    ats    timestamptz[] := '{}';
BEGIN
    SELECT * INTO h FROM bench_batch_heads WHERE org_id = p_org FOR UPDATE;
    FOR e IN SELECT id, event_type, subject, actor, request_id, payload, recorded_at
               FROM bench_batch_events WHERE org_id = p_org AND seq IS NULL ORDER BY id
    LOOP
        h.last_recorded_at := greatest(h.last_recorded_at, e.recorded_at);
        h.last_seq := h.last_seq + 1;
        ids := ids || e.id;
        seqs := seqs || h.last_seq;
        prevs := prevs || h.last_hash;
        ats := ats || h.last_recorded_at;
        h.last_hash := sha256(ledger_canonical(h.last_seq, h.last_hash, p_org,
                                               h.last_recorded_at, e.event_type, e.subject,
                                               e.actor, e.request_id, e.payload));
        hashes := hashes || h.last_hash;
    END LOOP;
    IF cardinality(ids) > 0 THEN
        UPDATE bench_batch_events b
           SET seq = u.seq, prev_hash = u.prev, hash = u.hash, recorded_at = u.at
          FROM unnest(ids, seqs, prevs, hashes, ats) AS u (id, seq, prev, hash, at)
         WHERE b.id = u.id;
        UPDATE bench_batch_heads
           SET last_seq = h.last_seq, last_hash = h.last_hash,
               last_recorded_at = h.last_recorded_at
         WHERE org_id = p_org;
    END IF;
END;
$$;

-- Returns event p_id's seq once a batch has sequenced it and that batch's
-- commit is durable. A batch is named by the head's seq when it began: its
-- leader holds that name's advisory lock from election to the end of its
-- commit, and waiters take the same lock shared, so all of them wake at
-- once when it ends and none holds anything the next leader needs.
CREATE OR REPLACE FUNCTION bench_batch_settle(p_org uuid, p_id bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_seq  bigint;
    v_last bigint;
    v_name bigint;
BEGIN
    LOOP
        SELECT seq INTO v_seq FROM bench_batch_events WHERE id = p_id;
        IF v_seq IS NOT NULL THEN
            RETURN v_seq;
        END IF;
        SELECT last_seq INTO v_last FROM bench_batch_heads WHERE org_id = p_org;
        v_name := hashtextextended('bench.batch:' || p_org::text, v_last);
        IF pg_try_advisory_xact_lock(v_name) THEN
            PERFORM bench_batch_sequence(p_org);
            SELECT seq INTO v_seq FROM bench_batch_events WHERE id = p_id;
            RETURN v_seq;
        END IF;
        PERFORM pg_advisory_lock_shared(v_name);
        PERFORM pg_advisory_unlock_shared(v_name);
    END LOOP;
END;
$$;";

/// [`Kind::BatchedSequencing`]'s insert: the pending event, committed
/// asynchronously (the batch's synchronous commit makes it durable).
const BATCHED_INSERT: &str = "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO bench_batch_events (org_id, event_type, subject, actor, request_id, payload, recorded_at)
SELECT $1, $2, $3, $4, $5, $6, $7 FROM lazy";

/// One write of `kind`, as its own transaction(s).
async fn write_once(
    client: &mut deadpool_postgres::Client,
    kind: Kind,
    org: Uuid,
    ev: &NewEvent,
) -> anyhow::Result<()> {
    let payload = events::canonical_json(&ev.payload);
    let now = Utc::now();
    // The row's six columns, then its time (the ceiling's $7).
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &org,
        &ev.event_type,
        &ev.subject,
        &ev.actor,
        &ev.request_id,
        &payload,
        &now,
    ];
    let row = &params[..6];
    match kind {
        Kind::Plain => {
            let insert = client.prepare_cached(PLAIN_INSERT).await?;
            client.execute(&insert, row).await?;
        }
        Kind::PlainInTx => {
            let insert = client.prepare_cached(PLAIN_INSERT).await?;
            let tx = client.transaction().await?;
            tx.execute(&insert, row).await?;
            tx.commit().await?;
        }
        Kind::ChainCeiling | Kind::ChainCeilingDurable => {
            let begin = client.prepare_cached("BEGIN").await?;
            let append = client.prepare_cached(CEILING_APPEND).await?;
            let commit = client.prepare_cached("COMMIT").await?;
            let flush = client
                .prepare_cached("SELECT out_seq FROM ledger_settle(NULL)")
                .await?;
            let durable = async {
                if kind == Kind::ChainCeilingDurable {
                    client.query(&flush, &[]).await?;
                }
                Ok(())
            };
            // Sent together: one round trip. If the append fails, COMMIT
            // ends the aborted transaction and the error is reported.
            let (_, appended, _, ()) = futures_util::future::try_join4(
                client.execute(&begin, &[]),
                client.execute(&append, &params),
                client.execute(&commit, &[]),
                durable,
            )
            .await?;
            anyhow::ensure!(appended == 1, "the ceiling append found no head row");
        }
        Kind::BatchedSequencing => {
            let insert = client.prepare_cached(BATCHED_INSERT).await?;
            let settle = client
                .prepare_cached(
                    "SELECT bench_batch_settle($1, currval('bench_batch_events_id_seq'))",
                )
                .await?;
            // Sent together: one round trip, each its own transaction.
            let (_, settled) = futures_util::future::try_join(
                client.execute(&insert, &params),
                client.query_one(&settle, &[&org]),
            )
            .await?;
            let seq: Option<i64> = settled.get(0);
            anyhow::ensure!(seq.is_some(), "a batched event was not sequenced");
        }
        Kind::Ledger => {
            let tx = client.transaction().await?;
            let pending = events::append(&tx, org, ev, now)
                .await
                .map_err(ApiError::into_anyhow)?;
            tx.commit().await?;
            events::settle(&*client, pending)
                .await
                .map_err(ApiError::into_anyhow)?;
        }
    }
    Ok(())
}

/// `writers` tasks write `kind` rows as fast as they can for `duration`.
async fn phase(
    clients: &mut Vec<deadpool_postgres::Client>,
    kind: Kind,
    org: Uuid,
    duration: Duration,
) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (w, mut client) in clients.drain(..).enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            let mut result = Ok(());
            while Instant::now() < deadline {
                let t = Instant::now();
                if let Err(e) = write_once(&mut client, kind, org, &event(w, n)).await {
                    result = Err(e);
                    break;
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                n += 1;
            }
            (client, lat, result)
        }));
    }
    let mut latencies_ms = Vec::new();
    let mut first_err = None;
    for t in tasks {
        let (client, lat, result) = t.await?;
        clients.push(client);
        latencies_ms.extend(lat);
        if let (Err(e), None) = (result, &first_err) {
            first_err = Some(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e.context(format!("{} writer failed", kind.name())));
    }
    Ok(Phase {
        ops: latencies_ms.len() as u64,
        seconds: start.elapsed().as_secs_f64(),
        latencies_ms,
    })
}

async fn append_figures(ctx: &AppContext, s: &Settings) -> anyhow::Result<Value> {
    let org = new_org(ctx, "Bench ledger append").await?;
    {
        let c = ctx.pool.get().await?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_plain_events (
                 id          bigserial PRIMARY KEY,
                 org_id      uuid NOT NULL REFERENCES organizations (id),
                 event_type  text NOT NULL,
                 subject     text NOT NULL,
                 actor       text NOT NULL,
                 request_id  text NOT NULL,
                 payload     text NOT NULL,
                 recorded_at timestamptz NOT NULL DEFAULT now()
             );
             CREATE TABLE IF NOT EXISTS bench_chain_heads (
                 org_id    uuid PRIMARY KEY REFERENCES organizations (id),
                 last_seq  bigint NOT NULL,
                 last_hash bytea NOT NULL
             );
             CREATE TABLE IF NOT EXISTS bench_chain_events (
                 id          bigserial PRIMARY KEY,
                 org_id      uuid NOT NULL REFERENCES organizations (id),
                 seq         bigint NOT NULL,
                 prev_hash   bytea NOT NULL,
                 hash        bytea NOT NULL,
                 event_type  text NOT NULL,
                 subject     text NOT NULL,
                 actor       text NOT NULL,
                 request_id  text NOT NULL,
                 payload     text NOT NULL,
                 recorded_at timestamptz NOT NULL,
                 UNIQUE (org_id, seq)
             );
             CREATE INDEX IF NOT EXISTS bench_chain_events_recorded
                 ON bench_chain_events (org_id, recorded_at);",
        )
        .await?;
        c.execute(
            "INSERT INTO bench_chain_heads (org_id, last_seq, last_hash)
             VALUES ($1, 0, $2) ON CONFLICT (org_id) DO NOTHING",
            &[&org, &GENESIS_PREV_HASH.as_slice()],
        )
        .await?;
        c.batch_execute(BATCHED_SETUP).await?;
        c.execute(
            "INSERT INTO bench_batch_heads (org_id, last_seq, last_hash, last_recorded_at)
             VALUES ($1, 0, $2, '-infinity') ON CONFLICT (org_id) DO NOTHING",
            &[&org, &GENESIS_PREV_HASH.as_slice()],
        )
        .await?;
    }
    let mut clients = Vec::with_capacity(s.writers);
    for _ in 0..s.writers {
        clients.push(ctx.pool.get().await?);
    }
    eprintln!(
        "ledger append: {} writers, {} × {:?} per kind (alternating, after a warm-up each)",
        s.writers, s.append_rounds, s.append_duration
    );
    let warm = s.append_duration.min(Duration::from_secs(1));
    for kind in KINDS {
        phase(&mut clients, kind, org, warm).await?;
    }
    let mut totals: Vec<(u64, f64, Vec<f64>)> =
        KINDS.iter().map(|_| (0, 0.0, Vec::new())).collect();
    let mut rounds = Vec::new();
    for round in 0..s.append_rounds {
        // Reverse the order every other round, so drift hits every kind alike.
        let mut order = KINDS;
        if round % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let p = phase(&mut clients, kind, org, s.append_duration).await?;
            let rate = p.ops as f64 / p.seconds;
            eprintln!("ledger append: {:<13} {:>9.0} writes/s", kind.name(), rate);
            rounds.push(json!({"round": round + 1, "kind": kind.name(), "writes": p.ops, "seconds": round3(p.seconds), "writes_per_s": round3(rate)}));
            let t = &mut totals[kind as usize];
            t.0 += p.ops;
            t.1 += p.seconds;
            t.2.extend(p.latencies_ms);
        }
    }
    drop(clients);

    // Every chain the appends built must be whole, or its figure means
    // nothing: the product's, the ceiling's and the batched design's.
    let c = ctx.pool.get().await?;
    let events_after = whole_chain(&c, "ledger_events", org).await?;
    whole_chain(&c, "bench_chain_events", org).await?;
    whole_chain(&c, "bench_batch_events", org).await?;

    let figures = |t: &(u64, f64, Vec<f64>)| {
        let rate = t.0 as f64 / t.1;
        let lat = summarize(t.2.clone());
        json!({
            "writes": t.0,
            "seconds": round3(t.1),
            "writes_per_s": round3(rate),
            "latency_ms": lat.map(|l| json!({"p50": round3(l.median), "p99": round3(l.p99), "max": round3(l.max)})),
        })
    };
    let rate = |k: Kind| totals[k as usize].0 as f64 / totals[k as usize].1;
    let r = ratio(rate(Kind::Ledger), rate(Kind::Plain));
    let r_tx = ratio(rate(Kind::Ledger), rate(Kind::PlainInTx));
    Ok(json!({
        "method": "one organisation; each writer has its own connection and loops for the phase's duration; every write is durable before the next. plain_insert = one autocommitted single-row INSERT of the same row into a table without a chain (bigserial key, default time, foreign key to organizations), as a cached prepared statement. ledger_append = the product's path: BEGIN; INSERT the event (events::append); COMMIT, whose deferred trigger sequences it under the organisation's head-row lock and commits asynchronously (migrations/V6); then events::settle (ledger_settle: a synchronous commit that makes it durable) returns its seq and hash. plain_insert_in_transaction = BEGIN; the plain INSERT; COMMIT (the same transaction shape without a chain, for context). chain_ceiling_not_durable = not the product, a bound: BEGIN; one statement that locks a head row, hashes with the ledger's canonical encoding and inserts the chained event into a table with the ledger's keys and indexes; COMMIT, all three in one round trip, asynchronously committed and never flushed (so not durable); what any design that chains each event in its writer's own transaction could at best reach here. chain_ceiling_durable = the same plus ledger_settle(NULL) in the same round trip, a synchronous commit that flushes the WAL past it (durable). batched_sequencing = not the product, the batched-sequencing design measured on tables shaped like the ledger's: the event INSERTed unsequenced and committed asynchronously, then in the same round trip bench_batch_settle waits for its seq: the first writer to find no batch running sequences every committed pending event in one transaction (one UPDATE for the batch, one for the head) whose synchronous commit makes them durable, the others wait on that batch's advisory lock (shared, released at once) and look again. Kinds run in turn, order reversed every other round; totals over all measured phases",
        "writers": s.writers,
        "rounds": rounds,
        "plain_insert": figures(&totals[Kind::Plain as usize]),
        "ledger_append": figures(&totals[Kind::Ledger as usize]),
        "ledger_over_plain": r,
        "target": APPEND_TARGET,
        "target_met": r.as_f64().map(|x| x >= APPEND_TARGET),
        "plain_insert_in_transaction": figures(&totals[Kind::PlainInTx as usize]),
        "ledger_over_plain_in_transaction": r_tx,
        "chain_ceiling_not_durable": figures(&totals[Kind::ChainCeiling as usize]),
        "chain_ceiling_over_plain": ratio(rate(Kind::ChainCeiling), rate(Kind::Plain)),
        "chain_ceiling_durable": figures(&totals[Kind::ChainCeilingDurable as usize]),
        "chain_ceiling_durable_over_plain": ratio(rate(Kind::ChainCeilingDurable), rate(Kind::Plain)),
        "batched_sequencing": figures(&totals[Kind::BatchedSequencing as usize]),
        "batched_sequencing_over_plain": ratio(rate(Kind::BatchedSequencing), rate(Kind::Plain)),
        "chain_after": {"events": events_after, "verified": events_after, "intact": true},
    }))
}

/// Checks `table`'s chain for `org` as the product checks its own: every
/// event sequenced, seqs 1..n, each linked to its predecessor and hashing
/// to its stored hash ([`events::ChainVerifier`]). Returns n.
async fn whole_chain(c: &deadpool_postgres::Client, table: &str, org: Uuid) -> anyhow::Result<u64> {
    let row = c
        .query_one(
            &format!("SELECT count(*), count(seq) FROM {table} WHERE org_id = $1"),
            &[&org],
        )
        .await?;
    let (all, sequenced): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(
        all == sequenced,
        "{table}: {} of {all} events were never sequenced",
        all - sequenced
    );
    let page = format!(
        "SELECT {} FROM {table} WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT 10000",
        events::EVENT_COLUMNS
    );
    let mut verifier = events::ChainVerifier::new();
    let mut after = 0i64;
    loop {
        let rows = c.query(&page, &[&org, &after]).await?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        for row in &rows {
            verifier.push(&events::event_from_row(row).map_err(ApiError::into_anyhow)?);
        }
    }
    match verifier.finish() {
        events::ChainStatus::Intact { events, .. } if events == all as u64 => Ok(events),
        status => anyhow::bail!("{table}: the chain of {all} events is not whole: {status:?}"),
    }
}

// ------------------------------------------------------------------ seal --

/// The `n` events of one org/day, chained from genesis, loaded with their
/// hashes computed here (what sequencing would have stored), in chunks.
async fn load_day(ctx: &AppContext, org: Uuid, day: NaiveDate, n: u64) -> anyhow::Result<()> {
    let start = day.and_hms_opt(0, 0, 1).expect("valid time").and_utc();
    // Spread over the day, never going backwards.
    let step_us = (86_000_000_000i64 / n as i64).max(0);
    let mut prev = GENESIS_PREV_HASH;
    let c = ctx.pool.get().await?;
    let stmt = c
        .prepare(
            "INSERT INTO ledger_events
                 (org_id, seq, event_type, subject, actor, request_id, payload, recorded_at, prev_hash, hash)
             SELECT $1, s, 'evidence.stored', sub, 'key:bench', '', p, at, ph, h
               FROM unnest($2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::bytea[], $7::bytea[])
                    AS t(s, sub, p, at, ph, h)",
        )
        .await?;
    let mut seq = 1u64;
    let mut last_at = start;
    let t = Instant::now();
    while seq <= n {
        let end = (seq + LOAD_CHUNK as u64 - 1).min(n);
        let cap = (end - seq + 1) as usize;
        let (mut seqs, mut subs, mut payloads, mut ats, mut prevs, mut hashes) = (
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
        );
        for i in seq..=end {
            let at: DateTime<Utc> = start + ChronoDuration::microseconds(step_us * (i as i64 - 1));
            let subject = format!("evidence:{i}");
            let payload = format!("{{\"n\":{i},\"size\":4096}}");
            let bytes = events::canonical_bytes(
                i,
                &prev,
                org,
                at.timestamp_micros(),
                "evidence.stored",
                &subject,
                "key:bench",
                "",
                &payload,
            );
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            seqs.push(i as i64);
            subs.push(subject);
            payloads.push(payload);
            ats.push(at);
            prevs.push(prev.to_vec());
            hashes.push(hash.to_vec());
            prev = hash;
            last_at = at;
        }
        c.execute(
            &stmt,
            &[&org, &seqs, &subs, &payloads, &ats, &prevs, &hashes],
        )
        .await?;
        seq = end + 1;
        if (seq - 1) % 200_000 < LOAD_CHUNK as u64 || seq > n {
            eprint!("\rseal: loaded {}/{n} events", seq - 1);
        }
    }
    eprintln!(" in {:.1} s", t.elapsed().as_secs_f64());
    c.execute(
        "INSERT INTO ledger_heads (org_id, last_seq, last_hash, last_recorded_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id) DO UPDATE SET last_seq = EXCLUDED.last_seq,
             last_hash = EXCLUDED.last_hash, last_recorded_at = EXCLUDED.last_recorded_at",
        &[&org, &(n as i64), &prev.to_vec(), &last_at],
    )
    .await?;
    // What autovacuum would have done by 02:00 the next day.
    c.batch_execute("VACUUM ANALYZE ledger_events").await?;
    Ok(())
}

/// Streams the day's hashes out of Postgres the way the seal reads them
/// (same query, portal, fetch size) and does nothing else with them.
async fn read_hashes(ctx: &AppContext, org: Uuid, n: u64) -> anyhow::Result<(Duration, Vec<u8>)> {
    let mut c = ctx.pool.get().await?;
    let t = Instant::now();
    let tx = c.transaction().await?;
    let stmt = tx
        .prepare(
            "SELECT seq, hash FROM ledger_events
              WHERE org_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
        )
        .await?;
    let portal = tx.bind(&stmt, &[&org, &0i64, &(n as i64)]).await?;
    let mut read = 0u64;
    let mut x = 0u8;
    loop {
        let rows = tx.query_portal(&portal, FETCH_ROWS).await?;
        for r in &rows {
            let _: i64 = r.get(0);
            x ^= r.get::<_, &[u8]>(1)[31];
            read += 1;
        }
        if rows.len() < FETCH_ROWS as usize {
            break;
        }
    }
    tx.commit().await?;
    let elapsed = t.elapsed();
    anyhow::ensure!(read == n, "read {read} hashes, expected {n}");
    Ok((elapsed, vec![x]))
}

/// A field of /proc/self/status in kB (Linux; 0 elsewhere).
fn proc_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// From-scratch RFC 6962 root over every stored hash of the org, read in
/// one query (the reference the seal must agree with).
async fn reference_root(ctx: &AppContext, org: Uuid) -> anyhow::Result<[u8; 32]> {
    let c = ctx.pool.get().await?;
    let rows = c
        .query(
            "SELECT hash FROM ledger_events WHERE org_id = $1 ORDER BY seq",
            &[&org],
        )
        .await?;
    let leaves: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    Ok(merkle::root(&leaves))
}

async fn seal_figures(ctx: &AppContext, s: &Settings) -> anyhow::Result<Value> {
    let org = new_org(ctx, "Bench ledger seal").await?;
    // The org's creation event is on today; the sealed day is yesterday.
    // Remove it so the day holds exactly the loaded events from seq 1.
    {
        let c = ctx.pool.get().await?;
        c.execute("DELETE FROM ledger_events WHERE org_id = $1", &[&org])
            .await?;
        c.execute("DELETE FROM ledger_heads WHERE org_id = $1", &[&org])
            .await?;
    }
    let day = Utc::now()
        .date_naive()
        .pred_opt()
        .expect("a day before today");
    eprintln!("seal: loading {} events on {day}", s.seal_events);
    load_day(ctx, org, day, s.seal_events).await?;
    // As in the worker, the key is loaded before the first job.
    seal::checkpoint_signer(ctx)
        .await
        .map_err(ApiError::into_anyhow)?;

    let mut reads = Vec::new();
    let mut seals = Vec::new();
    let mut peaks_kb = Vec::new();
    let mut before_kb = Vec::new();
    let mut sealed = None;
    for run in 0..s.seal_runs {
        let (read, _) = read_hashes(ctx, org, s.seal_events).await?;
        reads.push(read.as_secs_f64() * 1e3);
        {
            let c = ctx.pool.get().await?;
            c.execute("DELETE FROM ledger_roots WHERE org_id = $1", &[&org])
                .await?;
        }
        // Peak RSS of the seal alone: reset the high-water mark first.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        before_kb.push(proc_kb("VmRSS:"));
        let t = Instant::now();
        let report = seal::seal_day(ctx, org, day)
            .await
            .map_err(ApiError::into_anyhow)?;
        let took = t.elapsed();
        peaks_kb.push(proc_kb("VmHWM:"));
        seals.push(took.as_secs_f64() * 1e3);
        anyhow::ensure!(
            report.rows_read == s.seal_events && report.sealed.len() == 1,
            "the seal read {} rows and sealed {} days",
            report.rows_read,
            report.sealed.len()
        );
        let root = report.sealed.into_iter().next().expect("one day");
        if let Some(prev) = &sealed {
            anyhow::ensure!(root.same_seal(prev), "sealing the same day twice differed");
        }
        eprintln!(
            "seal: run {}: read {:.0} ms, seal {:.0} ms",
            run + 1,
            reads[run],
            seals[run]
        );
        sealed = Some(root);
    }
    let sealed = sealed.expect("at least one run");
    let reference = reference_root(ctx, org).await?;
    anyhow::ensure!(
        sealed.day_root == reference && sealed.tree_root == reference,
        "the seal's root differs from the from-scratch root"
    );
    let read = summarize(reads.clone()).expect("runs").median;
    let seal_ms = summarize(seals.clone()).expect("runs").median;
    let peak_mb = peaks_kb.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let r = ratio(seal_ms, read);
    Ok(json!({
        "method": "one org/day of `events` chained events loaded with VACUUM ANALYZE after; per run: stream the day's (seq, hash) rows through a portal (the seal's query and fetch size) and discard them, then seal_day (what worker_ledger_roots runs: sequencing check, seal lock, streaming read, leaf hashing into the day tree and the whole-log tree, signed checkpoint, one row written) with the seal row deleted before each run; medians over runs",
        "events": s.seal_events,
        "day": day.to_string(),
        "runs": s.seal_runs,
        "read_ms": reads.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
        "seal_ms": seals.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
        "read_median_ms": round3(read),
        "seal_median_ms": round3(seal_ms),
        "seal_over_read": r,
        "target": SEAL_TARGET,
        "peak_rss_note": "VmHWM of this process during the seal, after resetting the high-water mark (clear_refs) just before; includes what the process held already (rss_before_kb)",
        "rss_before_kb": before_kb,
        "peak_rss_kb": peaks_kb,
        "peak_rss_mb": round3(peak_mb),
        "rss_target_mb": SEAL_RSS_TARGET_MB,
        "root_matches_from_scratch": true,
        "target_met": r.as_f64().map(|x| x <= SEAL_TARGET && peak_mb <= SEAL_RSS_TARGET_MB),
    }))
}

// ---------------------------------------------------------------- merkle --

/// Merkle root over `n` leaves with the compact range (the seal's code),
/// against the same number of raw one-shot SHA-256 calls over inputs of the
/// same sizes (n of 33 bytes: the leaf hashes; n−1 of 65 bytes: the
/// interior nodes). Best of five each.
fn merkle_figures(n: usize) -> Value {
    let leaves: Vec<[u8; 32]> = (0..n as u64)
        .map(|i| Sha256::digest(i.to_be_bytes()).into())
        .collect();
    let mut tree_best = f64::MAX;
    let mut raw_best = f64::MAX;
    let mut stream_best = f64::MAX;
    let mut root = [0u8; 32];
    let mut sink = 0u8;
    for _ in 0..5 {
        let t = Instant::now();
        let mut range = CompactRange::new();
        for l in &leaves {
            range.append(l);
        }
        root = std::hint::black_box(range.root());
        tree_best = tree_best.min(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let mut leaf_in = [0u8; 33];
        let mut node_in = [0u8; 65];
        node_in[0] = 1;
        for (i, l) in leaves.iter().enumerate() {
            leaf_in[1..].copy_from_slice(l);
            let h: [u8; 32] = Sha256::digest(leaf_in).into();
            if i > 0 {
                node_in[1..33].copy_from_slice(&h);
                node_in[33..].copy_from_slice(l);
                let h2: [u8; 32] = Sha256::digest(node_in).into();
                sink ^= h2[0];
            }
            sink ^= h[0];
        }
        raw_best = raw_best.min(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let mut hasher = Sha256::new();
        for l in &leaves {
            hasher.update(l);
        }
        sink ^= hasher.finalize()[0];
        stream_best = stream_best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    std::hint::black_box(sink);
    let reference = merkle::root(&leaves);
    let r = ratio(raw_best, tree_best);
    json!({
        "method": "leaves are n distinct 32-byte hashes; tree = CompactRange append of every leaf then root() (the seal's code: n leaf hashes SHA-256(0x00||leaf) and n−1 node hashes SHA-256(0x01||l||r)); raw = the same count of one-shot SHA-256 calls over 33- and 65-byte inputs, nothing else; the three are interleaved, best of 5 each",
        "leaves": n,
        "tree_ms": round3(tree_best),
        "raw_same_calls_ms": round3(raw_best),
        "tree_speed_vs_raw": r,
        "target": MERKLE_TARGET,
        "target_met": r.as_f64().map(|x| x >= MERKLE_TARGET),
        "root_matches_recursive": root == reference,
        "context": {
            "stream_sha256_over_leaf_bytes_ms": round3(stream_best),
            "note": "one streaming SHA-256 over the n×32 leaf bytes: less work than any Merkle tree can do (it has no per-leaf or per-node hashes), shown for scale only",
        },
    })
}
