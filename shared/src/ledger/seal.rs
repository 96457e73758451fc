//! Nightly seals and the proofs served from them (DESIGN.md §6).
//!
//! For each organisation and UTC day with events, [`seal_day`] stores in
//! `ledger_roots`: the day's RFC 6962 root over that day's event hashes, its
//! count and hash range, and a signed checkpoint of the whole log at the
//! day's last event. The whole-log tree is resumed from the previous seal's
//! stored right edge (a [`CompactRange`]), so sealing reads and hashes only
//! the day's events, streaming them in fixed-size batches: memory stays
//! small however large the day.
//!
//! A day's events are a contiguous seq range because `recorded_at` never
//! goes backwards within an organisation (see `ledger_sequence_at_commit`
//! in migrations/V6__ledger_sequencing_at_commit.sql). Seals are made in day order; a missed night is
//! caught up by the next run, oldest day first. Each day is stored by one
//! INSERT in its own transaction, and the row is a pure function of the
//! stored events and the key (Ed25519 signatures are deterministic and the
//! note carries no time), so a crash leaves nothing and a repeat changes
//! nothing.
//!
//! Proofs are computed on demand from the stored edges plus the leaves they
//! do not cover: an inclusion proof reads from the last seal before the
//! event up to the checkpoint, a consistency proof only the leaves between
//! the two checkpoints (its left part *is* the older checkpoint's edge).

use super::checkpoint::{CheckpointSigner, NoteVerifier};
use super::events::Hash;
use super::merkle::{self, CompactRange};
use crate::config::{Config, ConfigError};
use crate::context::AppContext;
use crate::error::{ApiError, ApiResult};
use anyhow::{anyhow, Context as _};
use chrono::{DateTime, NaiveDate, Utc};
use http::StatusCode;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

/// Rows fetched per round trip while streaming event hashes: large enough
/// that round trips are cheap, small enough that a batch is ~1 MB.
const FETCH_ROWS: i32 = 16_384;

/// Fetched batches in flight between the reader and the hashing thread.
const PIPELINE_BATCHES: usize = 4;

/// The most leaves one proof request may read. Proofs are computed on
/// demand in O(leaves read) time and O(log n) memory; this bounds the time.
pub const MAX_PROOF_LEAVES: u64 = 10_000_000;

/// The file in the data dir that keeps a locally generated signer key.
pub const CHECKPOINT_KEY_FILE: &str = "checkpoint.key";

// ---------------------------------------------------------------------------
// The checkpoint key
// ---------------------------------------------------------------------------

/// What a process does with the checkpoint key, for the start-up check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Signs checkpoints: needs the private key.
    Sign,
    /// Publishes the public key: the verifier key (or the private key) will do.
    Publish,
}

/// Start-up check: in Lambda the key must be configured (locally a key is
/// generated once into the data dir, so there is nothing to check).
pub fn check_key_config(config: &Config, usage: KeyUse) -> Result<(), ConfigError> {
    if !config.in_lambda {
        return Ok(());
    }
    let cp = &config.checkpoint;
    match usage {
        KeyUse::Sign if cp.signing_key.is_none() => Err(ConfigError(
            "LEDGERLINE_CHECKPOINT_KEY is required in Lambda to sign checkpoints \
             (a signer key PRIVATE+KEY+<name>+<key id>+<key>; generate one locally \
             with `ledgerline checkpoint-key`)"
                .into(),
        )),
        KeyUse::Publish if cp.signing_key.is_none() && cp.verifier_key.is_none() => {
            Err(ConfigError(
                "LEDGERLINE_CHECKPOINT_VERIFIER_KEY (or LEDGERLINE_CHECKPOINT_KEY) is required \
                 in Lambda to publish the checkpoint key"
                    .into(),
            ))
        }
        _ => Ok(()),
    }
}

/// The checkpoint signer: from `LEDGERLINE_CHECKPOINT_KEY`, or locally from
/// `<data dir>/checkpoint.key`, generated there on first use. Built once
/// per context.
pub async fn checkpoint_signer(ctx: &AppContext) -> ApiResult<Arc<CheckpointSigner>> {
    ctx.checkpoint_signer
        .get_or_try_init(|| async {
            let config = ctx.config.clone();
            tokio::task::spawn_blocking(move || load_signer(&config))
                .await
                .map_err(|e| ApiError::internal(anyhow!("loading the checkpoint key: {e}")))?
                .map(Arc::new)
        })
        .await
        .cloned()
}

fn load_signer(config: &Config) -> ApiResult<CheckpointSigner> {
    if let Some(key) = &config.checkpoint.signing_key {
        return CheckpointSigner::from_private_key(key.expose())
            .map_err(|e| ApiError::internal(anyhow!("LEDGERLINE_CHECKPOINT_KEY: {e}")));
    }
    if config.in_lambda {
        return Err(ApiError::unavailable(anyhow!(
            "LEDGERLINE_CHECKPOINT_KEY is not set in Lambda"
        )));
    }
    local_signer(&config.data_dir, &config.checkpoint.origin).map_err(ApiError::internal)
}

/// The verifier key to publish: `LEDGERLINE_CHECKPOINT_VERIFIER_KEY`, else
/// the signer's public key.
pub async fn checkpoint_verifier_key(ctx: &AppContext) -> ApiResult<String> {
    if let Some(v) = &ctx.config.checkpoint.verifier_key {
        return Ok(v.clone());
    }
    Ok(checkpoint_signer(ctx).await?.verifier_key())
}

/// Reads the signer key kept in `dir`, or generates one named `name` and
/// keeps it there (mode 600). Two processes starting at once agree on one
/// key: the new key is written to a private temporary file and linked into
/// place, and whoever loses the race reads the winner's.
pub fn local_signer(dir: &Path, name: &str) -> anyhow::Result<CheckpointSigner> {
    let path = dir.join(CHECKPOINT_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => return parse_key_file(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let signer = CheckpointSigner::generate(name)
        .map_err(|e| anyhow!("generating a checkpoint key: {e}"))?;
    let tmp = dir.join(format!(
        ".{CHECKPOINT_KEY_FILE}.{}.tmp",
        Uuid::new_v4().simple()
    ));
    write_private_file(&tmp, format!("{}\n", signer.private_key()).as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(
                path = %path.display(),
                verifier_key = %signer.verifier_key(),
                "generated a checkpoint signing key"
            );
            Ok(signer)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse_key_file(&path, &text)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn parse_key_file(path: &Path, text: &str) -> anyhow::Result<CheckpointSigner> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the checkpoint key file is readable by others; chmod 600 it"
                );
            }
        }
    }
    CheckpointSigner::from_private_key(text.trim())
        .map_err(|e| anyhow!("{} does not hold a signer key: {e}", path.display()))
}

fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The checkpoint origin of one organisation's log.
pub fn checkpoint_origin(config: &Config, org_id: Uuid) -> String {
    format!("{}/orgs/{org_id}", config.checkpoint.origin)
}

// ---------------------------------------------------------------------------
// Stored seals
// ---------------------------------------------------------------------------

/// One sealed day (a row of `ledger_roots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRoot {
    pub org_id: Uuid,
    pub day: NaiveDate,
    pub event_count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hashes of the day's first and last events.
    pub first_hash: Hash,
    pub last_hash: Hash,
    /// RFC 6962 root over the day's event hashes alone.
    pub day_root: Hash,
    /// The whole log at the day's last event: size (= last_seq) and root.
    pub tree_size: u64,
    pub tree_root: Hash,
    /// The whole tree's compact range at `tree_size` ([`CompactRange::to_bytes`]).
    pub edge: Vec<u8>,
    /// The signed checkpoint note (C2SP tlog-checkpoint in a signed note).
    pub checkpoint: String,
    pub sealed_at: DateTime<Utc>,
}

impl DayRoot {
    /// Equal in everything that was computed (not when it was stored).
    pub fn same_seal(&self, other: &DayRoot) -> bool {
        DayRoot {
            sealed_at: other.sealed_at,
            ..self.clone()
        } == *other
    }
}

const ROOT_COLUMNS: &str = "org_id, day, event_count, first_seq, last_seq, first_hash, last_hash, \
     day_root, tree_size, tree_root, edge, checkpoint, sealed_at";

fn hash_col(row: &tokio_postgres::Row, i: usize) -> ApiResult<Hash> {
    let v: &[u8] = row.get(i);
    v.try_into()
        .map_err(|_| ApiError::internal(anyhow!("stored hash is not 32 bytes")))
}

fn root_from_row(row: &tokio_postgres::Row) -> ApiResult<DayRoot> {
    let n = |i: usize| -> u64 { row.get::<_, i64>(i) as u64 };
    Ok(DayRoot {
        org_id: row.get(0),
        day: row.get(1),
        event_count: n(2),
        first_seq: n(3),
        last_seq: n(4),
        first_hash: hash_col(row, 5)?,
        last_hash: hash_col(row, 6)?,
        day_root: hash_col(row, 7)?,
        tree_size: n(8),
        tree_root: hash_col(row, 9)?,
        edge: row.get(10),
        checkpoint: row.get(11),
        sealed_at: row.get(12),
    })
}

/// Sealed days after `after` (exclusive), oldest first.
pub async fn list_roots(
    db: &impl GenericClient,
    org_id: Uuid,
    after: Option<NaiveDate>,
    limit: i64,
) -> ApiResult<Vec<DayRoot>> {
    let rows = db
        .query(
            &format!(
                "SELECT {ROOT_COLUMNS} FROM ledger_roots
                  WHERE org_id = $1 AND ($2::date IS NULL OR day > $2)
                  ORDER BY day LIMIT $3"
            ),
            &[&org_id, &after, &limit],
        )
        .await?;
    rows.iter().map(root_from_row).collect()
}

pub async fn get_root(db: &impl GenericClient, org_id: Uuid, day: NaiveDate) -> ApiResult<DayRoot> {
    let row = db
        .query_opt(
            &format!("SELECT {ROOT_COLUMNS} FROM ledger_roots WHERE org_id = $1 AND day = $2"),
            &[&org_id, &day],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("sealed day"))?;
    root_from_row(&row)
}

/// The sealed checkpoint of tree size `tree_size`, if one exists.
pub async fn root_at_size(
    db: &impl GenericClient,
    org_id: Uuid,
    tree_size: u64,
) -> ApiResult<Option<DayRoot>> {
    let Ok(size) = i64::try_from(tree_size) else {
        return Ok(None);
    };
    let row = db
        .query_opt(
            &format!("SELECT {ROOT_COLUMNS} FROM ledger_roots WHERE org_id = $1 AND last_seq = $2"),
            &[&org_id, &size],
        )
        .await?;
    row.as_ref().map(root_from_row).transpose()
}

/// The newest seal, if any.
pub async fn latest_root(db: &impl GenericClient, org_id: Uuid) -> ApiResult<Option<DayRoot>> {
    let row = db
        .query_opt(
            &format!(
                "SELECT {ROOT_COLUMNS} FROM ledger_roots WHERE org_id = $1
                  ORDER BY last_seq DESC LIMIT 1"
            ),
            &[&org_id],
        )
        .await?;
    row.as_ref().map(root_from_row).transpose()
}

// ---------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------

/// What one [`seal_day`] call did (also what the benchmark reports).
#[derive(Debug, Clone, Serialize)]
pub struct SealReport {
    pub org_id: Uuid,
    pub through_day: NaiveDate,
    /// Days this call sealed, oldest first; empty when all were sealed
    /// already (or had no events).
    #[serde(serialize_with = "serialize_days")]
    pub sealed: Vec<DayRoot>,
    /// Event rows read from the database.
    pub rows_read: u64,
    pub elapsed_ms: u64,
}

fn serialize_days<S: serde::Serializer>(days: &[DayRoot], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(days.iter().map(|d| d.day))
}

/// Refusal to seal a day that is not over yet.
pub fn day_not_over(day: NaiveDate, today: NaiveDate) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "day_not_over",
        format!("{day} cannot be sealed yet: only days before the current UTC day ({today}) can"),
        "Seal a past day; today is sealed after midnight UTC.",
    )
}

/// Seals `org_id`'s log through UTC day `day`: every unsealed day with
/// events up to and including `day`, oldest first (so missed nights are
/// caught up).
/// Refuses `day` unless it is before the current UTC day (per the clock).
/// Days already sealed are left as they are; days without events get no row.
pub async fn seal_day(ctx: &AppContext, org_id: Uuid, day: NaiveDate) -> ApiResult<SealReport> {
    let started = Instant::now();
    let now = ctx.clock.now();
    let today = now.date_naive();
    if day >= today {
        return Err(day_not_over(day, today));
    }
    let signer = checkpoint_signer(ctx).await?;
    let origin = checkpoint_origin(&ctx.config, org_id);
    let mut client = ctx.db().await?;
    let mut report = SealReport {
        org_id,
        through_day: day,
        sealed: Vec::new(),
        rows_read: 0,
        elapsed_ms: 0,
    };
    loop {
        let tx = client.transaction().await?;
        let Some((root, rows)) = seal_next_day(&tx, &signer, &origin, org_id, day, now).await?
        else {
            break;
        };
        tx.commit().await?;
        tracing::info!(
            org_id = %org_id,
            day = %root.day,
            events = root.event_count,
            last_seq = root.last_seq,
            "sealed a ledger day"
        );
        report.rows_read += rows;
        report.sealed.push(root);
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// What sealing a day accumulates while the leaves stream by.
struct DayTrees {
    /// The day's own tree, from empty.
    day: CompactRange,
    /// The whole log's tree, resumed from the previous seal's edge.
    whole: CompactRange,
    first_hash: Option<Hash>,
    last_hash: Hash,
}

/// Seals the oldest unsealed day of the organisation if it is on or before
/// `through`. Returns the stored row and the event rows read, or None when
/// there is nothing to seal. Runs in the caller's transaction, holding the
/// organisation's seal lock, so concurrent sealers queue up instead of
/// repeating the work.
async fn seal_next_day(
    tx: &Transaction<'_>,
    signer: &CheckpointSigner,
    origin: &str,
    org_id: Uuid,
    through: NaiveDate,
    now: DateTime<Utc>,
) -> ApiResult<Option<(DayRoot, u64)>> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('ledgerline.seal:' || $1::uuid::text, 0))",
        &[&org_id],
    )
    .await?;
    let prev = latest_root(tx, org_id).await?;
    let (after, whole) = match &prev {
        Some(p) => {
            let edge = CompactRange::from_bytes(&p.edge)
                .map_err(|e| ApiError::internal(anyhow!("stored edge of {}: {e}", p.day)))?;
            if edge.size() != p.last_seq {
                return Err(ApiError::internal(anyhow!(
                    "stored edge of {} has size {}, not {}",
                    p.day,
                    edge.size(),
                    p.last_seq
                )));
            }
            (p.last_seq, edge)
        }
        None => (0, CompactRange::new()),
    };
    let Some(next) = tx
        .query_opt(
            "SELECT recorded_at FROM ledger_events WHERE org_id = $1 AND seq = $2",
            &[&org_id, &((after + 1) as i64)],
        )
        .await?
    else {
        return Ok(None);
    };
    let day = next.get::<_, DateTime<Utc>>(0).date_naive();
    if let Some(p) = &prev {
        if day <= p.day {
            // recorded_at went backwards past a seal: the log's invariant is
            // broken and sealing must not paper over it.
            return Err(ApiError::internal(anyhow!(
                "event {} of org {org_id} is recorded on {day}, but {} is already sealed",
                after + 1,
                p.day
            )));
        }
    }
    if day > through {
        return Ok(None);
    }
    let day_end = day
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .ok_or_else(|| ApiError::internal(anyhow!("no day after {day}")))?
        .and_utc();
    let last_seq = last_seq_before(tx, org_id, after + 1, day_end).await?;

    let start = DayTrees {
        day: CompactRange::new(),
        whole,
        first_hash: None,
        last_hash: [0u8; 32],
    };
    let (trees, rows) = stream_leaves(tx, org_id, after, last_seq, start, |t, batch| {
        if t.first_hash.is_none() {
            t.first_hash = batch.first().copied();
        }
        if let Some(h) = batch.last() {
            t.last_hash = *h;
        }
        for h in batch {
            // One leaf hash feeds both trees.
            let leaf = merkle::leaf_hash(h);
            t.day.append_leaf_hash(leaf);
            t.whole.append_leaf_hash(leaf);
        }
    })
    .await?;
    let DayTrees {
        day: day_range,
        whole,
        first_hash,
        last_hash,
    } = trees;
    let first_hash = first_hash.ok_or_else(|| ApiError::internal(anyhow!("empty day")))?;
    let tree_root = whole.root();
    let checkpoint = signer
        .sign_checkpoint(origin, last_seq, &tree_root)
        .map_err(|e| ApiError::internal(anyhow!("signing the checkpoint: {e}")))?;
    let root = DayRoot {
        org_id,
        day,
        event_count: last_seq - after,
        first_seq: after + 1,
        last_seq,
        first_hash,
        last_hash,
        day_root: day_range.root(),
        tree_size: last_seq,
        tree_root,
        edge: whole.to_bytes(),
        checkpoint,
        sealed_at: now,
    };
    let inserted = tx
        .execute(
            "INSERT INTO ledger_roots (org_id, day, event_count, first_seq, last_seq, first_hash,
                 last_hash, day_root, tree_size, tree_root, edge, checkpoint, sealed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (org_id, day) DO NOTHING",
            &[
                &root.org_id,
                &root.day,
                &(root.event_count as i64),
                &(root.first_seq as i64),
                &(root.last_seq as i64),
                &root.first_hash.as_slice(),
                &root.last_hash.as_slice(),
                &root.day_root.as_slice(),
                &(root.tree_size as i64),
                &root.tree_root.as_slice(),
                &root.edge,
                &root.checkpoint,
                &root.sealed_at,
            ],
        )
        .await?;
    if inserted == 0 {
        // Only reachable if another sealer got past the lock (it should
        // not); the stored row must then be this very seal.
        let stored = get_root(tx, org_id, day).await?;
        if !stored.same_seal(&root) {
            return Err(ApiError::internal(anyhow!(
                "the stored seal of {day} for org {org_id} differs from a recomputation"
            )));
        }
        return Ok(Some((stored, rows)));
    }
    Ok(Some((root, rows)))
}

/// The last seq recorded before `end`, given that `first` is. Because
/// `recorded_at` never decreases with seq, this is a galloping search from
/// `first` with point lookups on the (org_id, seq) key: O(log day's events)
/// indexed reads, whatever the planner thinks of the table and however many
/// events share one timestamp (a sequencing batch shares its time), and it
/// never looks far past the day.
async fn last_seq_before(
    tx: &Transaction<'_>,
    org_id: Uuid,
    first: u64,
    end: DateTime<Utc>,
) -> ApiResult<u64> {
    let head = tx
        .query_one(
            "SELECT coalesce(max(seq), 0) FROM ledger_events WHERE org_id = $1",
            &[&org_id],
        )
        .await?
        .get::<_, i64>(0) as u64;
    let stmt = tx
        .prepare("SELECT recorded_at FROM ledger_events WHERE org_id = $1 AND seq = $2")
        .await?;
    let before_end = |seq: u64| {
        let stmt = &stmt;
        async move {
            let row = tx
                .query_opt(stmt, &[&org_id, &(seq as i64)])
                .await?
                .ok_or_else(|| missing_seq(org_id, seq))?;
            Ok::<_, ApiError>(row.get::<_, DateTime<Utc>>(0) < end)
        }
    };
    // Invariant: `lo` is before `end`; `hi` is not (or is past the head).
    let (mut lo, mut hi) = (first, head + 1);
    let mut step = 1;
    while lo + step <= head {
        if before_end(lo + step).await? {
            lo += step;
            step *= 2;
        } else {
            hi = lo + step;
            break;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if before_end(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Streams the event hashes with seq in `(after, through]`, in seq order,
/// through `f`, checking that no seq is missing; returns `state` as `f`
/// left it and the rows read. Needs a transaction (rows are read through a
/// portal, a batch at a time).
///
/// Reading and hashing overlap: this task only fetches batches and hands
/// the raw rows to a blocking thread that decodes them and runs `f`, so
/// Postgres produces the next batch while the previous one is hashed. At
/// most [`PIPELINE_BATCHES`] batches are in flight, which bounds memory.
async fn stream_leaves<S, F>(
    tx: &Transaction<'_>,
    org_id: Uuid,
    after: u64,
    through: u64,
    state: S,
    mut f: F,
) -> ApiResult<(S, u64)>
where
    S: Send + 'static,
    F: FnMut(&mut S, &[Hash]) + Send + 'static,
{
    if through <= after {
        return Ok((state, 0));
    }
    let stmt = tx
        .prepare(
            "SELECT seq, hash FROM ledger_events
              WHERE org_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
        )
        .await?;
    let portal = tx
        .bind(&stmt, &[&org_id, &(after as i64), &(through as i64)])
        .await?;
    let (send, mut receive) =
        tokio::sync::mpsc::channel::<Vec<tokio_postgres::Row>>(PIPELINE_BATCHES);
    let hashing = tokio::task::spawn_blocking(move || -> ApiResult<(S, u64)> {
        let mut state = state;
        let mut expected = after + 1;
        let mut batch: Vec<Hash> = Vec::with_capacity(FETCH_ROWS as usize);
        while let Some(rows) = receive.blocking_recv() {
            batch.clear();
            for row in &rows {
                let seq = row.get::<_, i64>(0) as u64;
                if seq != expected {
                    return Err(missing_seq(org_id, expected));
                }
                batch.push(hash_col(row, 1)?);
                expected += 1;
            }
            f(&mut state, &batch);
        }
        if expected != through + 1 {
            return Err(missing_seq(org_id, expected));
        }
        Ok((state, through - after))
    });
    let fetched: ApiResult<()> = async {
        loop {
            let rows = tx.query_portal(&portal, FETCH_ROWS).await?;
            let last = rows.len() < FETCH_ROWS as usize;
            // A send fails only when the hashing side stopped on an error,
            // which it reports below.
            if !rows.is_empty() && send.send(rows).await.is_err() {
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
    }
    .await;
    drop(send);
    let hashed = hashing
        .await
        .map_err(|e| ApiError::internal(anyhow!("the hashing task failed: {e}")))?;
    fetched?;
    hashed
}

fn missing_seq(org_id: Uuid, seq: u64) -> ApiError {
    ApiError::internal(anyhow!(
        "the ledger of org {org_id} has no sequenced event {seq}"
    ))
}

/// Organisations with events recorded before `before` (a day start) that
/// are not sealed yet, by id after `after_org`, at most `limit`. One indexed
/// probe per organisation: the event after its last seal.
pub async fn orgs_with_unsealed_days(
    db: &impl GenericClient,
    before: NaiveDate,
    after_org: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<Uuid>> {
    let before = day_start(before)?;
    let rows = db
        .query(
            "SELECT h.org_id FROM ledger_heads h
              WHERE ($2::uuid IS NULL OR h.org_id > $2)
                AND EXISTS (
                    SELECT 1 FROM ledger_events e
                     WHERE e.org_id = h.org_id
                       AND e.seq = coalesce((SELECT max(r.last_seq) FROM ledger_roots r
                                              WHERE r.org_id = h.org_id), 0) + 1
                       AND e.recorded_at < $1)
              ORDER BY h.org_id LIMIT $3",
            &[&before, &after_org, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Organisations with events recorded on `day`.
pub async fn orgs_with_events_on(db: &impl GenericClient, day: NaiveDate) -> ApiResult<Vec<Uuid>> {
    let start = day_start(day)?;
    let end = day_start(
        day.succ_opt()
            .ok_or_else(|| ApiError::validation("day is out of range"))?,
    )?;
    let rows = db
        .query(
            "SELECT h.org_id FROM ledger_heads h
              WHERE EXISTS (
                    SELECT 1 FROM ledger_events e
                     WHERE e.org_id = h.org_id AND e.seq IS NOT NULL
                       AND e.recorded_at >= $1 AND e.recorded_at < $2)
              ORDER BY h.org_id",
            &[&start, &end],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn day_start(day: NaiveDate) -> ApiResult<DateTime<Utc>> {
    Ok(day
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| ApiError::validation("day is out of range"))?
        .and_utc())
}

// ---------------------------------------------------------------------------
// Proofs
// ---------------------------------------------------------------------------

/// What an inclusion proof accumulates while the leaves stream by.
struct PathWalk {
    /// The index of the next leaf.
    next: u64,
    /// The leaf being proved.
    index: u64,
    /// The compact range [0, index): the left half of the path.
    left: CompactRange,
    leaf: Option<Hash>,
    /// The right half of the path.
    right: RangeRoots,
}

/// An RFC 9162 inclusion proof of one event in a sealed checkpoint.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    pub seq: u64,
    pub leaf_index: u64,
    /// The event hash (the leaf's data; its RFC 6962 leaf hash is
    /// `SHA-256(0x00 || event hash)`).
    pub event_hash: Hash,
    pub audit_path: Vec<Hash>,
    /// The checkpoint proved against (tree size and root).
    pub checkpoint: DayRoot,
    pub leaves_read: u64,
}

/// An RFC 9162 consistency proof between two sealed checkpoints.
#[derive(Debug, Clone)]
pub struct ConsistencyProof {
    pub from: DayRoot,
    pub to: DayRoot,
    pub proof: Vec<Hash>,
    pub leaves_read: u64,
}

fn no_checkpoint(size: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no sealed checkpoint has tree size {size}"),
        "Use the tree_size of a sealed day from GET /api/ledger/roots.",
    )
}

fn proof_too_large(leaves: u64) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "proof_too_large",
        format!(
            "this proof would read {leaves} leaves; at most {MAX_PROOF_LEAVES} are read per request"
        ),
        "Prove against an earlier checkpoint, or chain consistency proofs between closer checkpoints.",
    )
}

/// Inclusion proof of event `seq` in the sealed checkpoint of size
/// `tree_size`. Reads the leaves from the last seal before the event up to
/// the checkpoint; the rest of the path comes from that seal's stored edge.
pub async fn inclusion_proof(
    tx: &Transaction<'_>,
    org_id: Uuid,
    seq: u64,
    tree_size: u64,
) -> ApiResult<InclusionProof> {
    let checkpoint = root_at_size(tx, org_id, tree_size)
        .await?
        .ok_or_else(|| no_checkpoint(tree_size))?;
    if seq == 0 || seq > tree_size {
        return Err(ApiError::validation(format!(
            "seq must be from 1 to tree_size ({tree_size}), not {seq}"
        )));
    }
    let index = seq - 1;
    // The compact range [0, index) gives the left half of the path; start
    // from the newest seal at or before it.
    let base = tx
        .query_opt(
            "SELECT last_seq, edge FROM ledger_roots
              WHERE org_id = $1 AND last_seq <= $2 ORDER BY last_seq DESC LIMIT 1",
            &[&org_id, &(index as i64)],
        )
        .await?;
    let left = match base {
        Some(row) => stored_edge(row.get(1), row.get::<_, i64>(0) as u64)?,
        None => CompactRange::new(),
    };
    let reads = tree_size - left.size();
    if reads > MAX_PROOF_LEAVES {
        return Err(proof_too_large(reads));
    }
    let plan = inclusion_plan(index, tree_size);
    let start = left.size();
    let walk = PathWalk {
        next: start,
        index,
        left,
        leaf: None,
        right: RangeRoots::new(&plan),
    };
    let (walk, leaves_read) = stream_leaves(tx, org_id, start, tree_size, walk, |w, batch| {
        for h in batch {
            match w.next.cmp(&w.index) {
                std::cmp::Ordering::Less => w.left.append(h),
                std::cmp::Ordering::Equal => w.leaf = Some(*h),
                std::cmp::Ordering::Greater => w.right.push(w.next, merkle::leaf_hash(h)),
            }
            w.next += 1;
        }
    })
    .await?;
    let PathWalk {
        left, leaf, right, ..
    } = walk;
    let event_hash = leaf.ok_or_else(|| missing_seq(org_id, seq))?;
    let audit_path = assemble(&plan, left.hashes(), &right.roots)?;
    if !merkle::verify_inclusion(
        &merkle::leaf_hash(&event_hash),
        index,
        tree_size,
        &audit_path,
        &checkpoint.tree_root,
    ) {
        return Err(ApiError::internal(anyhow!(
            "inclusion proof of seq {seq} in tree {tree_size} of org {org_id} does not verify"
        )));
    }
    Ok(InclusionProof {
        seq,
        leaf_index: index,
        event_hash,
        audit_path,
        checkpoint,
        leaves_read,
    })
}

/// Consistency proof from the sealed checkpoint of size `from` to the one of
/// size `to`. Reads only the leaves between them.
pub async fn consistency_proof(
    tx: &Transaction<'_>,
    org_id: Uuid,
    from: u64,
    to: u64,
) -> ApiResult<ConsistencyProof> {
    if from > to {
        return Err(ApiError::validation(format!(
            "'from' ({from}) must not be larger than 'to' ({to})"
        )));
    }
    let to_root = root_at_size(tx, org_id, to)
        .await?
        .ok_or_else(|| no_checkpoint(to))?;
    let from_root = root_at_size(tx, org_id, from)
        .await?
        .ok_or_else(|| no_checkpoint(from))?;
    if from == to {
        return Ok(ConsistencyProof {
            from: from_root,
            to: to_root,
            proof: Vec::new(),
            leaves_read: 0,
        });
    }
    let reads = to - from;
    if reads > MAX_PROOF_LEAVES {
        return Err(proof_too_large(reads));
    }
    let edge = stored_edge(from_root.edge.clone(), from)?;
    let plan = consistency_plan(from, to);
    let walk = (from, RangeRoots::new(&plan));
    let ((_, right), leaves_read) =
        stream_leaves(tx, org_id, from, to, walk, |(j, right), batch| {
            for h in batch {
                right.push(*j, merkle::leaf_hash(h));
                *j += 1;
            }
        })
        .await?;
    let proof = assemble(&plan, edge.hashes(), &right.roots)?;
    if !merkle::verify_consistency(from, to, &from_root.tree_root, &to_root.tree_root, &proof) {
        return Err(ApiError::internal(anyhow!(
            "consistency proof {from} -> {to} of org {org_id} does not verify"
        )));
    }
    Ok(ConsistencyProof {
        from: from_root,
        to: to_root,
        proof,
        leaves_read,
    })
}

fn stored_edge(bytes: Vec<u8>, size: u64) -> ApiResult<CompactRange> {
    let edge = CompactRange::from_bytes(&bytes)
        .map_err(|e| ApiError::internal(anyhow!("stored edge at size {size}: {e}")))?;
    if edge.size() != size {
        return Err(ApiError::internal(anyhow!(
            "stored edge has size {}, not {size}",
            edge.size()
        )));
    }
    Ok(edge)
}

/// One node of a proof, in proof order: the root of the leaf range
/// `[start, end)` (computed from the leaves), or the `i`-th hash of a
/// compact range the caller already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProofNode {
    Range(u64, u64),
    Edge(usize),
}

/// The largest power of two strictly below `n` (n >= 2): the RFC 9162 split.
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The nodes of `PATH(index, D[size])` (RFC 9162 §2.1.3.1). Walking down from
/// the root, each left sibling is a complete subtree of the decomposition of
/// `[0, index)` — together, exactly the compact range `[0, index)`, largest
/// first — and the right siblings tile `(index, size)`.
fn inclusion_plan(index: u64, size: u64) -> Vec<ProofNode> {
    let (mut lo, mut hi) = (0u64, size);
    let mut lefts = 0;
    let mut nodes = Vec::new();
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            nodes.push(ProofNode::Range(lo + k, hi));
            hi = lo + k;
        } else {
            nodes.push(ProofNode::Edge(lefts));
            lefts += 1;
            lo += k;
        }
    }
    nodes.reverse();
    nodes
}

/// The nodes of `PROOF(old, D[size])` (RFC 9162 §2.1.4.1), 0 < old < size.
/// The left nodes, with the final subtree when it is not the whole old
/// tree, are exactly the old tree's compact range; the right nodes tile
/// `[old, size)`.
fn consistency_plan(old: u64, size: u64) -> Vec<ProofNode> {
    debug_assert!(0 < old && old < size);
    let (mut lo, mut hi) = (0u64, size);
    let mut lefts = 0;
    let mut old_root_is_known = true;
    let mut nodes = Vec::new();
    while old < hi {
        let k = split(hi - lo);
        if old - lo <= k {
            nodes.push(ProofNode::Range(lo + k, hi));
            hi = lo + k;
        } else {
            nodes.push(ProofNode::Edge(lefts));
            lefts += 1;
            lo += k;
            old_root_is_known = false;
        }
    }
    if !old_root_is_known {
        nodes.push(ProofNode::Edge(lefts));
    }
    nodes.reverse();
    nodes
}

/// Computes the roots of a plan's leaf ranges from leaves pushed in order.
struct RangeRoots {
    /// The ranges in leaf order (a plan lists them bottom-up, i.e. nearest
    /// first, which is also leaf order).
    ranges: Vec<(u64, u64)>,
    current: CompactRange,
    roots: Vec<Hash>,
}

impl RangeRoots {
    fn new(plan: &[ProofNode]) -> Self {
        let ranges = plan
            .iter()
            .filter_map(|n| match n {
                ProofNode::Range(a, b) => Some((*a, *b)),
                ProofNode::Edge(_) => None,
            })
            .collect();
        RangeRoots {
            ranges,
            current: CompactRange::new(),
            roots: Vec::new(),
        }
    }

    /// Leaf `j` (its leaf hash); leaves outside every range are ignored.
    fn push(&mut self, j: u64, leaf_hash: Hash) {
        let Some(&(start, end)) = self.ranges.get(self.roots.len()) else {
            return;
        };
        if j < start {
            return;
        }
        self.current.append_leaf_hash(leaf_hash);
        if j + 1 == end {
            self.roots.push(self.current.root());
            self.current = CompactRange::new();
        }
    }
}

fn assemble(plan: &[ProofNode], edge: &[Hash], roots: &[Hash]) -> ApiResult<Vec<Hash>> {
    let mut roots = roots.iter();
    plan.iter()
        .map(|node| match node {
            ProofNode::Edge(i) => edge.get(*i).copied(),
            ProofNode::Range(..) => roots.next().copied(),
        })
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| ApiError::internal(anyhow!("proof plan and leaves disagree")))
}

/// Whether `note` verifies under `verifier_key` (used to say which key
/// signed a stored checkpoint).
pub fn signed_by(note: &str, verifier_key: &str) -> bool {
    NoteVerifier::from_verifier_key(verifier_key)
        .and_then(|v| v.open(note).map(|_| ()))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| {
                let mut h = [0u8; 32];
                h[..8].copy_from_slice(&i.to_be_bytes());
                h[31] = 0x5a;
                h
            })
            .collect()
    }

    /// Computes a plan's proof the way the server does: the edge from a
    /// compact range, the ranges from the leaves.
    fn run_plan(plan: &[ProofNode], edge: &CompactRange, data: &[Hash], from: u64) -> Vec<Hash> {
        let mut rr = RangeRoots::new(plan);
        for (j, h) in data.iter().enumerate().skip(from as usize) {
            rr.push(j as u64, merkle::leaf_hash(h));
        }
        assemble(plan, edge.hashes(), &rr.roots).unwrap()
    }

    fn range_of(data: &[Hash]) -> CompactRange {
        let mut r = CompactRange::new();
        for h in data {
            r.append(h);
        }
        r
    }

    #[test]
    fn inclusion_plans_match_the_reference_proofs() {
        for n in 1..=70u64 {
            let data = leaves(n);
            for i in 0..n {
                let plan = inclusion_plan(i, n);
                let got = run_plan(&plan, &range_of(&data[..i as usize]), &data, i + 1);
                let want = merkle::inclusion_proof(&data, i).unwrap();
                assert_eq!(got, want, "n={n} i={i}");
            }
        }
    }

    #[test]
    fn consistency_plans_match_the_reference_proofs() {
        for n in 2..=70u64 {
            let data = leaves(n);
            for m in 1..n {
                let plan = consistency_plan(m, n);
                let got = run_plan(&plan, &range_of(&data[..m as usize]), &data, m);
                let want = merkle::consistency_proof(&data, m).unwrap();
                assert_eq!(got, want, "m={m} n={n}");
            }
        }
    }

    #[test]
    fn split_is_the_largest_power_of_two_below() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(1 << 40), 1 << 39);
        assert_eq!(split((1 << 40) + 1), 1 << 40);
    }

    #[test]
    fn a_local_key_is_generated_once_and_kept_private() {
        let dir = std::env::temp_dir().join(format!("ll-key-{}", Uuid::new_v4().simple()));
        let a = local_signer(&dir, "log.test").unwrap();
        let b = local_signer(&dir, "other.name").unwrap();
        assert_eq!(a.verifier_key(), b.verifier_key());
        assert_eq!(a.name(), "log.test");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(CHECKPOINT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_lambda_key_check_names_the_variable() {
        let get = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let lambda = Config::from_lookup(get(&[
            ("DATABASE_URL", "postgres://x"),
            ("AWS_LAMBDA_FUNCTION_NAME", "worker_ledger_roots"),
        ]))
        .unwrap();
        let e = check_key_config(&lambda, KeyUse::Sign).unwrap_err();
        assert!(e.0.contains("LEDGERLINE_CHECKPOINT_KEY"), "{e}");
        assert!(check_key_config(&lambda, KeyUse::Publish).is_err());
        let local = Config::from_lookup(get(&[("DATABASE_URL", "postgres://x")])).unwrap();
        assert!(check_key_config(&local, KeyUse::Sign).is_ok());
    }
}
