-- Message delivery: project endpoints and signing secrets, messages and
-- their events and delivery attempts, and the operator audit log.
--
-- Message timing (next_attempt_at, lease_until, enqueued_at) uses the
-- database clock, like the local queue, so every worker agrees on it.

-- Where a project's messages are delivered, and the Standard Webhooks secret
-- (`whsec_…`) they are signed with. The secret is shown once, when the
-- project is created, and otherwise only read by the delivery worker.
ALTER TABLE projects
    ADD COLUMN endpoint_url   text CHECK (endpoint_url IS NULL OR length(endpoint_url) BETWEEN 8 AND 2048),
    ADD COLUMN signing_secret text CHECK (signing_secret IS NULL OR signing_secret LIKE 'whsec\_%'),
    ADD COLUMN suspended_at   timestamptz;

CREATE TABLE messages (
    id               uuid PRIMARY KEY,
    project_id       uuid NOT NULL REFERENCES projects (id),
    org_id           uuid NOT NULL REFERENCES organizations (id),
    -- Listing order (newest first), stable even within one microsecond.
    position         bigserial NOT NULL UNIQUE,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'delivering', 'delivered', 'failed')),
    recipient        text NOT NULL CHECK (char_length(recipient) BETWEEN 1 AND 512),
    event_type       text NOT NULL CHECK (event_type ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    body             jsonb NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    idempotency_key  text CHECK (length(idempotency_key) <= 255),
    -- Attempts started so far (a claim counts one).
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- A queued message is not delivered before this.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- While delivering: the claim expires then, and the sweeper may requeue.
    lease_until      timestamptz,
    -- When a queue message was last sent for it (NULL: the send failed).
    enqueued_at      timestamptz,
    last_error       text CHECK (length(last_error) <= 1000),
    request_id       text NOT NULL DEFAULT '' CHECK (length(request_id) <= 128),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CHECK ((status = 'delivering') = (lease_until IS NOT NULL)),
    CHECK ((status IN ('delivered', 'failed')) = (finished_at IS NOT NULL))
);
CREATE INDEX messages_project_position ON messages (project_id, position);
CREATE INDEX messages_project_status_position ON messages (project_id, status, position);
-- What the sweeper scans.
CREATE INDEX messages_queued_due ON messages (next_attempt_at) WHERE status = 'queued';
CREATE INDEX messages_delivering_lease ON messages (lease_until) WHERE status = 'delivering';

-- A message's timeline. Every type a message can go through is listed, so a
-- typo in code fails loudly instead of writing an event nobody reads.
CREATE TABLE message_events (
    id          bigserial PRIMARY KEY,
    message_id  uuid NOT NULL REFERENCES messages (id),
    project_id  uuid NOT NULL REFERENCES projects (id),
    event_type  text NOT NULL CONSTRAINT message_events_event_type_check CHECK (event_type IN (
                    'message.queued',      -- accepted by POST /v1/messages
                    'message.skipped',     -- not delivered now: the project is suspended
                    'message.requeued',    -- sent to the queue again (activation, sweep, lease expiry)
                    'message.attempted',   -- one HTTP attempt, with its result
                    'message.retry_scheduled',
                    'message.delivered',
                    'message.failed')),
    details     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_events_message ON message_events (message_id, id);

-- Every HTTP attempt: what came back and how long it took. A timeout or a
-- connection failure has no status code and says so in `error`.
CREATE TABLE delivery_attempts (
    id           bigserial PRIMARY KEY,
    message_id   uuid NOT NULL REFERENCES messages (id),
    attempt      integer NOT NULL CHECK (attempt >= 1),
    status_code  integer CHECK (status_code BETWEEN 100 AND 599),
    duration_ms  integer NOT NULL CHECK (duration_ms >= 0),
    error        text CHECK (length(error) <= 1000),
    outcome      text NOT NULL CHECK (outcome IN ('delivered', 'rejected', 'retry')),
    started_at   timestamptz NOT NULL,
    UNIQUE (message_id, attempt),
    CHECK (status_code IS NOT NULL OR error IS NOT NULL)
);

-- The operator audit log: one row per operator write, written after the
-- write commits, in its own statement (a failing audit write never undoes
-- or blocks the action; it is logged instead).
CREATE TABLE admin_events (
    id            bigserial PRIMARY KEY,
    actor_key_id  uuid,
    actor         text NOT NULL CHECK (length(actor) <= 200),
    action        text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{0,63}$'),
    target_type   text NOT NULL CHECK (target_type ~ '^[a-z][a-z0-9_]{0,31}$'),
    target_id     text NOT NULL CHECK (length(target_id) BETWEEN 1 AND 200),
    request_id    text NOT NULL DEFAULT '' CHECK (length(request_id) <= 128),
    details       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_events_target ON admin_events (target_type, target_id, id);
CREATE INDEX admin_events_action ON admin_events (action, id);
