-- Sequencing at commit (docs/ledger-format.md, section 1, "Appending").
--
-- V3 sequenced events in a second transaction after the business commit,
-- under the organisation's lock and through a second synchronous commit:
-- every writer queued on that lock and on its WAL flush, and an event whose
-- writer died between the two stayed unsequenced until someone else came
-- by. Now an event is sequenced by its own transaction's COMMIT: a deferred
-- constraint trigger locks the organisation's ledger_heads row, gives the
-- event the next seq, its prev_hash, recorded_at and hash, and the
-- transaction commits at once. Every committed event has its seq. The lock
-- is held from that trigger to the end of the commit, never across a
-- client round trip.
--
-- So that the lock is not held across a WAL flush either, a transaction
-- that appended an event commits asynchronously, and the writer calls
-- ledger_settle() before it tells anyone about the change. That call's
-- commit is synchronous and so flushes the WAL up to and past the event's
-- commit; concurrent callers share flushes (Postgres's group commit). If
-- the database crashes before the flush, the whole transaction (change and
-- event) is lost and its writer told no one; the chain has no gap, because
-- a later event's commit is later in the WAL. (Like any asynchronous
-- commit, the rows are visible to other sessions during that sub-millisecond
-- window; a crash inside it takes back what they read.)
--
-- Rolled-back transactions undo the trigger's work, so seq stays gapless.
-- Rows inserted with a seq (bulk loads that chain events themselves, see
-- bench/) skip the trigger.

-- Whatever V3 left pending is sequenced once, oldest first.
SELECT count(*) FROM (
    SELECT ledger_sequence(p.org_id, now(), NULL)
      FROM (SELECT DISTINCT org_id FROM ledger_events WHERE seq IS NULL) p
) s;

DROP FUNCTION ledger_sequence(uuid, timestamptz, bigint);
DROP INDEX ledger_events_pending;

-- A pending row now carries the writer's clock reading in recorded_at (the
-- sequencer keeps it unless the organisation's log is already later).
ALTER TABLE ledger_events DROP CONSTRAINT ledger_events_check;
ALTER TABLE ledger_events ADD CONSTRAINT ledger_events_sequenced CHECK (
    (seq IS NULL) = (hash IS NULL)
    AND (seq IS NULL) = (prev_hash IS NULL)
    AND (seq IS NULL OR recorded_at IS NOT NULL)
);

CREATE FUNCTION ledger_sequence_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    h      ledger_heads%ROWTYPE;
    v_hash bytea;
BEGIN
    -- The organisation's head row is its lock: held to the end of the
    -- commit, and a waiter reads the head its predecessor left.
    SELECT * INTO h FROM ledger_heads WHERE org_id = NEW.org_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO ledger_heads (org_id, last_seq, last_hash, last_recorded_at)
        VALUES (NEW.org_id, 0, decode(repeat('00', 32), 'hex'), '-infinity')
        ON CONFLICT (org_id) DO NOTHING;
        SELECT * INTO h FROM ledger_heads WHERE org_id = NEW.org_id FOR UPDATE;
    END IF;
    -- recorded_at never goes backwards within an organisation, so each UTC
    -- day is a contiguous seq range.
    h.last_recorded_at := greatest(h.last_recorded_at, coalesce(NEW.recorded_at, clock_timestamp()));
    h.last_seq := h.last_seq + 1;
    v_hash := sha256(ledger_canonical(h.last_seq, h.last_hash, NEW.org_id, h.last_recorded_at,
                                      NEW.event_type, NEW.subject, NEW.actor, NEW.request_id,
                                      NEW.payload));
    UPDATE ledger_events
       SET seq = h.last_seq, prev_hash = h.last_hash, hash = v_hash,
           recorded_at = h.last_recorded_at
     WHERE id = NEW.id;
    UPDATE ledger_heads
       SET last_seq = h.last_seq, last_hash = v_hash, last_recorded_at = h.last_recorded_at
     WHERE org_id = NEW.org_id;
    -- Durable once the writer has called ledger_settle (above).
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER ledger_sequence_at_commit
    AFTER INSERT ON ledger_events
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.seq IS NULL)
    EXECUTE FUNCTION ledger_sequence_at_commit();

-- Called after the commit that appended event p_id: returns once that
-- commit is durable, with the event's seq and hash (no row: the event was
-- never committed). It writes one empty transactional WAL record so that
-- its own transaction has a commit record to flush synchronously.
CREATE FUNCTION ledger_settle(p_id bigint)
RETURNS TABLE (out_seq bigint, out_hash bytea) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_logical_emit_message(true, 'ledgerline.settle', '');
    RETURN QUERY SELECT e.seq, e.hash FROM ledger_events e WHERE e.id = p_id AND e.seq IS NOT NULL;
END;
$$;
