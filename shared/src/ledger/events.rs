//! Ledger events: the canonical encoding and hash (docs/ledger-format.md),
//! appending in the caller's transaction (sequenced at its commit),
//! reading, and chain verification.

use crate::db;
use crate::error::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;
use uuid::Uuid;

pub type Hash = [u8; 32];

/// The hash before event 1.
pub const GENESIS_PREV_HASH: Hash = [0u8; 32];

/// Domain separation for version 1 of the encoding.
const MAGIC: &[u8; 5] = b"LLEV1";

/// An event to append. The payload is stored as canonical JSON (object keys
/// sorted, no insignificant white space), exactly the bytes that are hashed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub subject: String,
    pub actor: String,
    pub request_id: String,
    pub payload: serde_json::Value,
}

/// A committed but not yet sequenced event (its row id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending(pub i64);

/// A stored, sequenced event.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEvent {
    pub seq: u64,
    pub org_id: Uuid,
    pub event_type: String,
    pub subject: String,
    pub actor: String,
    pub request_id: String,
    pub recorded_at: DateTime<Utc>,
    /// Canonical JSON text as stored and hashed.
    pub payload: String,
    pub prev_hash: Hash,
    pub hash: Hash,
}

/// The canonical bytes of an event, version 1. See docs/ledger-format.md.
#[allow(clippy::too_many_arguments)]
pub fn canonical_bytes(
    seq: u64,
    prev_hash: &Hash,
    org_id: Uuid,
    recorded_at_micros: i64,
    event_type: &str,
    subject: &str,
    actor: &str,
    request_id: &str,
    payload: &str,
) -> Vec<u8> {
    let strings = [event_type, subject, actor, request_id, payload];
    let mut out = Vec::with_capacity(
        MAGIC.len() + 8 + 32 + 16 + 8 + strings.iter().map(|s| 4 + s.len()).sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(prev_hash);
    out.extend_from_slice(org_id.as_bytes());
    out.extend_from_slice(&recorded_at_micros.to_be_bytes());
    for s in strings {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

impl LedgerEvent {
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_bytes(
            self.seq,
            &self.prev_hash,
            self.org_id,
            self.recorded_at.timestamp_micros(),
            &self.event_type,
            &self.subject,
            &self.actor,
            &self.request_id,
            &self.payload,
        )
    }

    /// The hash this event should have, from its own fields.
    pub fn computed_hash(&self) -> Hash {
        Sha256::digest(self.canonical_bytes()).into()
    }
}

/// Canonical JSON: serde_json's map is ordered by key and `to_string` is
/// compact, so equal values always give equal bytes.
pub fn canonical_json(v: &serde_json::Value) -> String {
    v.to_string()
}

/// Appends an event inside the caller's transaction: it commits if and only
/// if the change it records commits, and is sequenced by that COMMIT (the
/// `ledger_sequence_at_commit` trigger, migrations/V6). `now` is the
/// writer's clock reading; the event keeps it as `recorded_at` unless the
/// organisation's log is already later. After the commit, call [`settle`]
/// before telling anyone: the commit is asynchronous and settling makes it
/// durable.
pub async fn append(
    tx: &deadpool_postgres::Transaction<'_>,
    org_id: Uuid,
    ev: &NewEvent,
    now: DateTime<Utc>,
) -> ApiResult<Pending> {
    let payload = canonical_json(&ev.payload);
    let row = db::query_one(
        tx,
        "INSERT INTO ledger_events
             (org_id, event_type, subject, actor, request_id, payload, recorded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            &org_id,
            &ev.event_type,
            &ev.subject,
            &ev.actor,
            &ev.request_id,
            &payload,
            &now,
        ],
    )
    .await?;
    Ok(Pending(row.get(0)))
}

/// Appends several events inside the caller's transaction with one
/// statement, as [`append`] does each (same `now` for all). At COMMIT they
/// are sequenced in the order given, so callers that append to several
/// organisations sort by organisation: concurrent transactions then take
/// the organisations' heads in one order. Returns nothing: call [`flush`]
/// after the commit.
pub async fn append_all(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[(Uuid, NewEvent)],
    now: DateTime<Utc>,
) -> ApiResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let orgs: Vec<Uuid> = events.iter().map(|(o, _)| *o).collect();
    let types: Vec<&str> = events.iter().map(|(_, e)| e.event_type).collect();
    let subjects: Vec<&str> = events.iter().map(|(_, e)| e.subject.as_str()).collect();
    let actors: Vec<&str> = events.iter().map(|(_, e)| e.actor.as_str()).collect();
    let requests: Vec<&str> = events.iter().map(|(_, e)| e.request_id.as_str()).collect();
    let payloads: Vec<String> = events
        .iter()
        .map(|(_, e)| canonical_json(&e.payload))
        .collect();
    db::execute(
        tx,
        "INSERT INTO ledger_events
             (org_id, event_type, subject, actor, request_id, payload, recorded_at)
         SELECT org_id, event_type, subject, actor, request_id, payload, $7::timestamptz
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                WITH ORDINALITY AS e (org_id, event_type, subject, actor, request_id, payload, n)
          ORDER BY n",
        &[
            &orgs, &types, &subjects, &actors, &requests, &payloads, &now,
        ],
    )
    .await?;
    Ok(())
}

/// After the commit that appended `pending`: waits until that commit is
/// durable (`ledger_settle`, migrations/V6) and returns the event's seq and
/// hash.
pub async fn settle(
    db: &impl deadpool_postgres::GenericClient,
    pending: Pending,
) -> ApiResult<(u64, Hash)> {
    let row = db::query_opt(
        db,
        "SELECT out_seq, out_hash FROM ledger_settle($1)",
        &[&pending.0],
    )
    .await?
    .ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "ledger event {} was not committed",
            pending.0
        ))
    })?;
    let seq: i64 = row.get(0);
    Ok((seq as u64, to_hash(row.get(1))?))
}

/// Makes every commit so far durable (what [`settle`] does, for callers
/// that appended several events and need no seq back).
pub async fn flush(db: &impl GenericClient) -> ApiResult<()> {
    db.query_typed("SELECT out_seq FROM ledger_settle(NULL)", &[])
        .await?;
    Ok(())
}

/// Called right after the commit that appended `pending`: settles it and
/// returns its seq. If settling fails (the connection broke), the committed
/// change and its sequenced event stand and become durable with the next
/// WAL flush; None is returned and the cause logged.
pub async fn settle_committed(
    db: &impl deadpool_postgres::GenericClient,
    org_id: Uuid,
    pending: Pending,
) -> Option<u64> {
    match settle(db, pending).await {
        Ok((seq, _)) => Some(seq),
        Err(e) => {
            tracing::error!(
                org_id = %org_id,
                error = %e,
                cause = ?e.cause,
                "settling a committed ledger event failed"
            );
            None
        }
    }
}

fn to_hash(v: Vec<u8>) -> ApiResult<Hash> {
    v.try_into()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("stored hash is not 32 bytes")))
}

/// The columns [`event_from_row`] reads, in its order.
pub const EVENT_COLUMNS: &str =
    "seq, org_id, event_type, subject, actor, request_id, recorded_at, payload, prev_hash, hash";

/// A sequenced event from a row of [`EVENT_COLUMNS`].
pub fn event_from_row(row: &tokio_postgres::Row) -> ApiResult<LedgerEvent> {
    let seq: i64 = row.get(0);
    Ok(LedgerEvent {
        seq: seq as u64,
        org_id: row.get(1),
        event_type: row.get(2),
        subject: row.get(3),
        actor: row.get(4),
        request_id: row.get(5),
        recorded_at: row.get(6),
        payload: row.get(7),
        prev_hash: to_hash(row.get(8))?,
        hash: to_hash(row.get(9))?,
    })
}

pub async fn get_event(db: &impl GenericClient, org_id: Uuid, seq: u64) -> ApiResult<LedgerEvent> {
    let row = db
        .query_opt(
            &format!("SELECT {EVENT_COLUMNS} FROM ledger_events WHERE org_id = $1 AND seq = $2"),
            &[&org_id, &(seq as i64)],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("ledger event"))?;
    event_from_row(&row)
}

/// Events with seq > `after`, in seq order.
pub async fn list_events(
    db: &impl GenericClient,
    org_id: Uuid,
    after: u64,
    limit: i64,
) -> ApiResult<Vec<LedgerEvent>> {
    let rows = db
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM ledger_events
                  WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ),
            &[&org_id, &(after as i64), &limit],
        )
        .await?;
    rows.iter().map(event_from_row).collect()
}

/// The result of checking a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChainStatus {
    Intact {
        events: u64,
        #[serde(with = "hex_hash")]
        head: Hash,
    },
    Broken {
        /// The first seq at which the chain does not hold.
        seq: u64,
        reason: &'static str,
    },
}

mod hex_hash {
    pub fn serialize<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
}

/// Checks a chain incrementally: feed events in the order they are stored
/// (by seq), then [`ChainVerifier::finish`]. Memory is O(1).
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev: Hash,
    broken: Option<(u64, &'static str)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev: GENESIS_PREV_HASH,
            broken: None,
        }
    }

    /// Resumes after a trusted event (e.g. a sealed checkpoint's last one).
    pub fn resume(after_seq: u64, after_hash: Hash) -> Self {
        ChainVerifier {
            expected_seq: after_seq + 1,
            prev: after_hash,
            broken: None,
        }
    }

    /// Returns false once the chain is broken (further events are ignored).
    pub fn push(&mut self, ev: &LedgerEvent) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let at = self.expected_seq;
        let reason = if ev.seq != at {
            // A missing, moved or renumbered event: the chain breaks where
            // the expected seq is absent.
            Some("missing or out-of-order seq")
        } else if ev.prev_hash != self.prev {
            Some("prev_hash does not match the previous event's hash")
        } else if ev.computed_hash() != ev.hash {
            Some("hash does not match the event's contents")
        } else {
            None
        };
        match reason {
            Some(r) => {
                self.broken = Some((at, r));
                false
            }
            None => {
                self.prev = ev.hash;
                self.expected_seq += 1;
                true
            }
        }
    }

    pub fn finish(self) -> ChainStatus {
        match self.broken {
            Some((seq, reason)) => ChainStatus::Broken { seq, reason },
            None => ChainStatus::Intact {
                events: self.expected_seq - 1,
                head: self.prev,
            },
        }
    }
}

/// Verifies a whole chain held in memory.
pub fn verify_chain<'a>(events: impl IntoIterator<Item = &'a LedgerEvent>) -> ChainStatus {
    let mut v = ChainVerifier::new();
    for ev in events {
        if !v.push(ev) {
            break;
        }
    }
    v.finish()
}

/// Verifies an organisation's stored chain, streaming in pages so memory
/// stays bounded, and also checks the stored head agrees with the last event.
pub async fn verify_org_chain(db: &impl GenericClient, org_id: Uuid) -> ApiResult<ChainStatus> {
    let mut v = ChainVerifier::new();
    let mut after = 0u64;
    loop {
        let page = list_events(db, org_id, after, 5000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for ev in &page {
            if !v.push(ev) {
                return Ok(v.finish());
            }
        }
    }
    let status = v.finish();
    if let ChainStatus::Intact { events, head } = &status {
        let stored = db
            .query_opt(
                "SELECT last_seq, last_hash FROM ledger_heads WHERE org_id = $1",
                &[&org_id],
            )
            .await?;
        if let Some(row) = stored {
            let last_seq: i64 = row.get(0);
            let last_hash: Vec<u8> = row.get(1);
            if last_seq as u64 != *events || last_hash != head.as_slice() {
                // Events were removed from the end (or the head was moved).
                return Ok(ChainStatus::Broken {
                    seq: (*events + 1).min(last_seq as u64),
                    reason: "the log does not reach the recorded head",
                });
            }
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<LedgerEvent> {
        let org = Uuid::from_u128(0x1234);
        let mut prev = GENESIS_PREV_HASH;
        (1..=n)
            .map(|seq| {
                let mut ev = LedgerEvent {
                    seq,
                    org_id: org,
                    event_type: "evidence.stored".into(),
                    subject: format!("evidence:{seq}"),
                    actor: "key:k".into(),
                    request_id: "r".into(),
                    recorded_at: DateTime::from_timestamp(1_700_000_000 + seq as i64, 123_456_000)
                        .unwrap(),
                    payload: canonical_json(&serde_json::json!({"n": seq, "a": "é"})),
                    prev_hash: prev,
                    hash: [0; 32],
                };
                ev.hash = ev.computed_hash();
                prev = ev.hash;
                ev
            })
            .collect()
    }

    #[test]
    fn canonical_layout_is_as_documented() {
        let org = Uuid::from_u128(0x00112233_44556677_8899aabb_ccddeeff);
        let b = canonical_bytes(
            1,
            &[0xab; 32],
            org,
            1_700_000_000_000_001,
            "t",
            "",
            "a",
            "r",
            "{}",
        );
        let mut expect = b"LLEV1".to_vec();
        expect.extend_from_slice(&1u64.to_be_bytes());
        expect.extend_from_slice(&[0xab; 32]);
        expect.extend_from_slice(&hex::decode("00112233445566778899aabbccddeeff").unwrap());
        expect.extend_from_slice(&1_700_000_000_000_001i64.to_be_bytes());
        for s in ["t", "", "a", "r", "{}"] {
            expect.extend_from_slice(&(s.len() as u32).to_be_bytes());
            expect.extend_from_slice(s.as_bytes());
        }
        assert_eq!(b, expect);
        // The worked example of docs/ledger-format.md.
        let example = canonical_bytes(
            1,
            &GENESIS_PREV_HASH,
            org,
            1_700_000_000_000_001,
            "t",
            "",
            "a",
            "r",
            "{}",
        );
        assert_eq!(
            hex::encode(Sha256::digest(&example)),
            "2de0431c2522b55c95f7eca08fff8b406495f2b1ce7e5cf8200b79e3fa3c1772"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"d": [1, 2], "c": null} }"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,2]},"b":1}"#);
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(20);
        assert_eq!(
            verify_chain(&c),
            ChainStatus::Intact {
                events: 20,
                head: c[19].hash
            }
        );
        assert_eq!(
            verify_chain(&[]),
            ChainStatus::Intact {
                events: 0,
                head: GENESIS_PREV_HASH
            }
        );
    }

    #[test]
    fn any_change_is_found_at_its_seq() {
        type Tamper = fn(&mut LedgerEvent);
        let tampers: &[(&str, Tamper)] = &[
            ("event_type", |e| e.event_type.push('x')),
            ("subject", |e| e.subject.push('x')),
            ("actor", |e| e.actor.clear()),
            ("request_id", |e| e.request_id.push('x')),
            ("payload", |e| e.payload = e.payload.replace("é", "e")),
            ("recorded_at", |e| {
                e.recorded_at += chrono::Duration::microseconds(1)
            }),
            ("org_id", |e| e.org_id = Uuid::from_u128(1)),
            ("prev_hash", |e| e.prev_hash[0] ^= 1),
            ("hash", |e| e.hash[31] ^= 0x80),
            ("seq", |e| e.seq += 100),
        ];
        for (field, tamper) in tampers {
            for at in [1usize, 7, 20] {
                let mut c = chain(20);
                tamper(&mut c[at - 1]);
                match verify_chain(&c) {
                    ChainStatus::Broken { seq, .. } => {
                        assert_eq!(seq, at as u64, "{field} at {at}")
                    }
                    other => panic!("{field} at {at} not detected: {other:?}"),
                }
            }
        }
        // Removing or swapping events breaks at the first affected seq.
        let mut c = chain(20);
        c.remove(9);
        assert!(matches!(
            verify_chain(&c),
            ChainStatus::Broken { seq: 10, .. }
        ));
        let mut c = chain(20);
        c.swap(4, 5);
        assert!(matches!(
            verify_chain(&c),
            ChainStatus::Broken { seq: 5, .. }
        ));
    }

    #[test]
    fn resume_continues_after_a_trusted_point() {
        let c = chain(10);
        let mut v = ChainVerifier::resume(5, c[4].hash);
        for e in &c[5..] {
            assert!(v.push(e));
        }
        assert_eq!(
            v.finish(),
            ChainStatus::Intact {
                events: 10,
                head: c[9].hash
            }
        );
    }
}
