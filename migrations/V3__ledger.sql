-- The per-organisation, hash-chained ledger (docs/ledger-format.md).
--
-- Appending is split in two so that concurrent writers never serialise on a
-- lock held across their whole transaction:
--   1. the business transaction inserts its event as *pending* (seq NULL),
--      so the event commits if and only if the change does;
--   2. after commit, ledger_sequence() takes a per-organisation advisory
--      lock and gives every pending event of the organisation, in arrival
--      order, the next seq, its prev_hash, hash and recorded_at, in one
--      batch (group sequencing). A writer whose event was already sequenced
--      by someone else's batch returns at once without writing.
-- Rolled-back transactions never produce a pending row, so seq stays gapless.

CREATE TABLE ledger_heads (
    org_id           uuid PRIMARY KEY REFERENCES organizations (id),
    last_seq         bigint NOT NULL CHECK (last_seq >= 0),
    last_hash        bytea NOT NULL CHECK (length(last_hash) = 32),
    last_recorded_at timestamptz NOT NULL
);

CREATE TABLE ledger_events (
    id          bigserial PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id),
    seq         bigint CHECK (seq >= 1),
    event_type  text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_.]{0,63}$'),
    subject     text NOT NULL DEFAULT '' CHECK (length(subject) <= 200),
    actor       text NOT NULL DEFAULT '' CHECK (length(actor) <= 200),
    request_id  text NOT NULL DEFAULT '' CHECK (length(request_id) <= 128),
    -- Canonical JSON text, exactly the bytes that were hashed.
    payload     text NOT NULL CHECK (octet_length(payload) <= 65536),
    recorded_at timestamptz,
    prev_hash   bytea CHECK (length(prev_hash) = 32),
    hash        bytea CHECK (length(hash) = 32),
    UNIQUE (org_id, seq),
    CHECK ((seq IS NULL) = (hash IS NULL)
       AND (seq IS NULL) = (prev_hash IS NULL)
       AND (seq IS NULL) = (recorded_at IS NULL))
);
CREATE INDEX ledger_events_pending ON ledger_events (org_id, id) WHERE seq IS NULL;
CREATE INDEX ledger_events_recorded ON ledger_events (org_id, recorded_at) WHERE seq IS NOT NULL;

-- The canonical bytes of an event (docs/ledger-format.md, version 1). The
-- Rust implementation (shared/src/ledger/events.rs) is the reference; tests
-- check that both agree on every stored event.
CREATE FUNCTION ledger_canonical(
    p_seq bigint, p_prev bytea, p_org uuid, p_at timestamptz, p_type text,
    p_subject text, p_actor text, p_request_id text, p_payload text
) RETURNS bytea LANGUAGE sql STABLE STRICT AS $$
    SELECT convert_to('LLEV1', 'UTF8')
        || int8send(p_seq)
        || p_prev
        || uuid_send(p_org)
        || int8send((extract(epoch FROM p_at) * 1000000)::bigint)
        || int4send(octet_length(p_type)) || convert_to(p_type, 'UTF8')
        || int4send(octet_length(p_subject)) || convert_to(p_subject, 'UTF8')
        || int4send(octet_length(p_actor)) || convert_to(p_actor, 'UTF8')
        || int4send(octet_length(p_request_id)) || convert_to(p_request_id, 'UTF8')
        || int4send(octet_length(p_payload)) || convert_to(p_payload, 'UTF8')
$$;

-- Sequences every pending event of p_org and returns (seq, hash) of the
-- pending event p_want (NULL: returns nothing). recorded_at never goes
-- backwards within an organisation, so each UTC day is a contiguous seq range.
CREATE FUNCTION ledger_sequence(p_org uuid, p_now timestamptz, p_want bigint)
RETURNS TABLE (out_seq bigint, out_hash bytea) LANGUAGE plpgsql AS $$
DECLARE
    v_seq  bigint;
    v_prev bytea;
    v_at   timestamptz;
    v_hash bytea;
    v_n    bigint := 0;
    ev     record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('ledgerline.ledger:' || p_org::text, 0));
    IF p_want IS NOT NULL THEN
        SELECT e.seq, e.hash INTO v_seq, v_hash FROM ledger_events e WHERE e.id = p_want;
        IF v_seq IS NOT NULL THEN
            RETURN QUERY SELECT v_seq, v_hash;
            RETURN;
        END IF;
    END IF;
    SELECT h.last_seq, h.last_hash, h.last_recorded_at INTO v_seq, v_prev, v_at
      FROM ledger_heads h WHERE h.org_id = p_org;
    IF NOT FOUND THEN
        v_seq := 0;
        v_prev := decode(repeat('00', 32), 'hex');
        v_at := p_now;
    END IF;
    v_at := greatest(v_at, p_now);
    FOR ev IN
        SELECT e.id, e.event_type, e.subject, e.actor, e.request_id, e.payload
          FROM ledger_events e
         WHERE e.org_id = p_org AND e.seq IS NULL
         ORDER BY e.id
    LOOP
        v_seq := v_seq + 1;
        v_hash := sha256(ledger_canonical(v_seq, v_prev, p_org, v_at, ev.event_type,
                                          ev.subject, ev.actor, ev.request_id, ev.payload));
        UPDATE ledger_events
           SET seq = v_seq, prev_hash = v_prev, hash = v_hash, recorded_at = v_at
         WHERE id = ev.id;
        v_prev := v_hash;
        v_n := v_n + 1;
    END LOOP;
    IF v_n > 0 THEN
        INSERT INTO ledger_heads (org_id, last_seq, last_hash, last_recorded_at)
        VALUES (p_org, v_seq, v_prev, v_at)
        ON CONFLICT (org_id) DO UPDATE
           SET last_seq = EXCLUDED.last_seq, last_hash = EXCLUDED.last_hash,
               last_recorded_at = EXCLUDED.last_recorded_at;
    END IF;
    IF p_want IS NOT NULL THEN
        RETURN QUERY SELECT e.seq, e.hash FROM ledger_events e WHERE e.id = p_want;
    END IF;
END;
$$;

-- Nightly seals: per organisation and UTC day, the day's Merkle root and a
-- signed checkpoint of the whole log at the day's last event. `edge` is the
-- compact range (right edge) of the whole tree at that point, so the next
-- day's checkpoint costs O(that day's events).
CREATE TABLE ledger_roots (
    org_id          uuid NOT NULL REFERENCES organizations (id),
    day             date NOT NULL,
    event_count     bigint NOT NULL CHECK (event_count >= 1),
    first_seq       bigint NOT NULL,
    last_seq        bigint NOT NULL,
    first_hash      bytea NOT NULL CHECK (length(first_hash) = 32),
    last_hash       bytea NOT NULL CHECK (length(last_hash) = 32),
    day_root        bytea NOT NULL CHECK (length(day_root) = 32),
    tree_size       bigint NOT NULL,
    tree_root       bytea NOT NULL CHECK (length(tree_root) = 32),
    edge            bytea NOT NULL,
    checkpoint      text NOT NULL,
    sealed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, day),
    UNIQUE (org_id, last_seq),
    CHECK (last_seq >= first_seq AND event_count = last_seq - first_seq + 1 AND tree_size = last_seq)
);
