-- The local queue (shared/src/queue/pg.rs): SQS semantics on a table, for
-- `ledgerline serve` and tests. In AWS the same port is served by SQS and
-- this table stays empty.

CREATE TABLE local_queue_messages (
    id             uuid PRIMARY KEY,
    -- Queues share the table and are told apart by name.
    queue_name     text NOT NULL CHECK (length(queue_name) BETWEEN 1 AND 80),
    -- SQS's limit: 256 KiB.
    body           text NOT NULL CHECK (octet_length(body) BETWEEN 1 AND 262144),
    sent_at        timestamptz NOT NULL DEFAULT now(),
    -- Invisible until then: the send delay, then each visibility timeout.
    visible_at     timestamptz NOT NULL,
    receive_count  integer NOT NULL DEFAULT 0 CHECK (receive_count >= 0),
    -- Drawn afresh on every delivery; a receipt handle names one token, so
    -- a handle from an earlier delivery matches nothing.
    receipt_token  uuid
);

-- What receive scans: the visible messages of one queue, oldest first.
CREATE INDEX local_queue_messages_visible ON local_queue_messages (queue_name, visible_at);
