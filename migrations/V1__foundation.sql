-- Foundation: organisations, users, API keys, projects and tiers, and the
-- bookkeeping tables of the HTTP pipeline (rate-limit windows, idempotency).

CREATE TYPE plan_tier AS ENUM ('starter', 'pro', 'business', 'enterprise');

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan_tier   plan_tier NOT NULL DEFAULT 'starter',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id),
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    name        text CHECK (length(name) <= 200),
    role        text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_org_email ON users (org_id, lower(email));

-- Message tiers: named bundles of project limits.
CREATE TABLE tiers (
    id                  text PRIMARY KEY CHECK (id ~ '^[a-z0-9_-]{1,64}$'),
    name                text NOT NULL,
    messages_per_day    integer NOT NULL CHECK (messages_per_day >= 0),
    burst_per_minute    integer NOT NULL CHECK (burst_per_minute >= 0),
    max_payload_bytes   integer NOT NULL CHECK (max_payload_bytes BETWEEN 1 AND 102400),
    created_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tiers (id, name, messages_per_day, burst_per_minute, max_payload_bytes) VALUES
    ('free',       'Free',        1000,   60,  16384),
    ('growth',     'Growth',     50000,  600,  65536),
    ('scale',      'Scale',    1000000, 6000, 102400);

CREATE TABLE projects (
    id                  uuid PRIMARY KEY,
    org_id              uuid NOT NULL REFERENCES organizations (id),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    tier_id             text NOT NULL DEFAULT 'free' REFERENCES tiers (id),
    messages_per_day    integer NOT NULL CHECK (messages_per_day >= 0),
    burst_per_minute    integer NOT NULL CHECK (burst_per_minute >= 0),
    max_payload_bytes   integer NOT NULL CHECK (max_payload_bytes BETWEEN 1 AND 102400),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projects_org ON projects (org_id);

-- API keys are stored only as SHA-256 of their 256-bit secret; the id is part
-- of the presented token so lookup is by primary key and the comparison of
-- the hash is done in constant time in the application.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    scope        text NOT NULL CHECK (scope IN ('org', 'project', 'operator')),
    org_id       uuid REFERENCES organizations (id),
    project_id   uuid REFERENCES projects (id),
    user_id      uuid REFERENCES users (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   uuid,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK (
        (scope = 'operator' AND org_id IS NULL AND project_id IS NULL)
        OR (scope = 'org' AND org_id IS NOT NULL AND project_id IS NULL)
        OR (scope = 'project' AND org_id IS NOT NULL AND project_id IS NOT NULL)
    )
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at, id);

-- Fixed-window counters shared by every Lambda instance.
CREATE TABLE rate_limit_windows (
    bucket       text NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (bucket, window_start)
);
CREATE INDEX rate_limit_windows_expiry ON rate_limit_windows (expires_at);

-- Idempotency-Key records: the first response to a creating POST, replayed
-- for retries with the same key and body.
CREATE TABLE idempotency_records (
    owner            text NOT NULL,
    idempotency_key  text NOT NULL,
    route            text NOT NULL,
    fingerprint      bytea NOT NULL,
    status_code      integer,
    response_headers jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (owner, idempotency_key)
);
CREATE INDEX idempotency_records_expiry ON idempotency_records (expires_at);
