-- The evidence vault: one row per stored file, and the direct (presigned)
-- uploads of files too large for the API.
--
-- An evidence row is inserted in the same transaction as its
-- `evidence.stored` ledger event (ledger_event_id), so neither exists
-- without the other. The bytes live in the blob store under `blob_key`
-- (`evidence/<org_id>/<evidence_id>`); they are written before the row and
-- removed again if the transaction fails.

CREATE TABLE evidence (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES organizations (id),
    -- Listing order (newest first); a sequence rather than created_at, so
    -- items stored in the same microsecond still have one stable order.
    position        bigserial NOT NULL UNIQUE,
    filename        text NOT NULL CHECK (char_length(filename) BETWEEN 1 AND 255),
    content_type    text NOT NULL CHECK (length(content_type) BETWEEN 1 AND 256),
    size            bigint NOT NULL CHECK (size >= 1),
    sha256          bytea NOT NULL CHECK (length(sha256) = 32),
    blob_key        text NOT NULL UNIQUE,
    -- 'api' (POST /api/evidence) or 'direct_upload' (a presigned PUT).
    source          text NOT NULL CHECK (source IN ('api', 'direct_upload')),
    -- ledger_events.id of the evidence.stored event (not a foreign key: the
    -- ledger is checked by its hash chain, and a tampering test that deletes
    -- an event must be able to).
    ledger_event_id bigint NOT NULL UNIQUE,
    created_by      uuid,
    request_id      text NOT NULL DEFAULT '' CHECK (length(request_id) <= 128),
    created_at      timestamptz NOT NULL
);
CREATE INDEX evidence_org_position ON evidence (org_id, position);

-- A direct upload: created with a presigned PUT, completed once the stored
-- object has been checked against the declared size and SHA-256.
CREATE TABLE evidence_uploads (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES organizations (id),
    -- The id the evidence will have; the object is stored under its key.
    evidence_id     uuid NOT NULL UNIQUE,
    blob_key        text NOT NULL UNIQUE,
    filename        text NOT NULL CHECK (char_length(filename) BETWEEN 1 AND 255),
    content_type    text NOT NULL CHECK (length(content_type) BETWEEN 1 AND 256),
    size            bigint NOT NULL CHECK (size >= 1),
    sha256          bytea NOT NULL CHECK (length(sha256) = 32),
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'completed', 'failed')),
    failure_reason  text,
    created_by      uuid,
    request_id      text NOT NULL DEFAULT '' CHECK (length(request_id) <= 128),
    created_at      timestamptz NOT NULL,
    -- When the presigned PUT stops working.
    expires_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    CHECK ((state = 'pending') = (finished_at IS NULL)),
    CHECK ((state = 'failed') = (failure_reason IS NOT NULL))
);
CREATE INDEX evidence_uploads_pending ON evidence_uploads (expires_at) WHERE state = 'pending';
