-- Commands (seed 001) and their runs: one record per send, with a lifecycle
-- QUEUED -> SENT -> DELIVERED -> SUCCEEDED | FAILED, or TIMEOUT / EXPIRED, and the time of each step.

CREATE TABLE commands (
    id           bigserial PRIMARY KEY,
    uuid         uuid NOT NULL UNIQUE,
    name         text NOT NULL,
    topic        text NOT NULL,
    payload      text NOT NULL,             -- the template as saved: JSON with optional $s1 placeholders
    set_value    double precision,          -- substituted for $s1 when a send names none
    description  text,
    gateway_id   bigint NOT NULL,           -- the registry's gateway (read through its API, never its tables)
    gateway_uuid uuid NOT NULL,
    gateway_name text,
    provider_id  bigint,                    -- the service provider that owns it (NULL: platform-wide)
    timeout_s    integer NOT NULL DEFAULT 60 CHECK (timeout_s BETWEEN 1 AND 86400),
    expires_in_s integer NOT NULL DEFAULT 3600 CHECK (expires_in_s BETWEEN 1 AND 604800),
    created_at   timestamptz NOT NULL DEFAULT now(),
    modified_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX commands_name_per_provider ON commands (coalesce(provider_id, 0), name);
CREATE INDEX commands_gateway ON commands (gateway_id);

CREATE TABLE command_runs (
    id            uuid PRIMARY KEY,         -- the command_id the controller echoes in cmd/ack
    command_id    bigint REFERENCES commands(id) ON DELETE SET NULL,
    command_name  text NOT NULL,
    provider_id   bigint,
    gateway_id    bigint NOT NULL,
    gateway_uuid  uuid NOT NULL,
    topic         text NOT NULL,
    payload       jsonb NOT NULL,           -- what was sent, $s1 substituted
    set_value     double precision,
    status        text NOT NULL DEFAULT 'QUEUED'
                  CHECK (status IN ('QUEUED', 'SENT', 'DELIVERED', 'SUCCEEDED', 'FAILED', 'TIMEOUT', 'EXPIRED')),
    reason        text,
    result        jsonb,
    requested_by  text,                     -- who sent it (user name), for the history
    requested_by_uuid text,
    timeout_s     integer NOT NULL,
    expires_at    timestamptz NOT NULL,     -- not delivered by then: EXPIRED (the controller must not run it)
    deadline_at   timestamptz,              -- delivered_at + timeout_s: no result by then, TIMEOUT
    queued_at     timestamptz NOT NULL,
    sent_at       timestamptz,
    delivered_at  timestamptz,
    succeeded_at  timestamptz,
    failed_at     timestamptz,
    timeout_at    timestamptz,
    expired_at    timestamptz,
    publish_count integer NOT NULL DEFAULT 0,
    late_acks     jsonb NOT NULL DEFAULT '[]'  -- acknowledgements that came after the run ended
);
CREATE INDEX command_runs_command ON command_runs (command_id, queued_at DESC);
CREATE INDEX command_runs_open ON command_runs (status, expires_at) WHERE status IN ('QUEUED', 'SENT');
CREATE INDEX command_runs_delivered ON command_runs (deadline_at) WHERE status = 'DELIVERED';
CREATE INDEX command_runs_gateway_open ON command_runs (gateway_uuid) WHERE status IN ('QUEUED', 'SENT');
