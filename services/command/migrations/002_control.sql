-- Live control: the policies in force per installation and device group, and the retained `control` state.
--
-- One row per installation this service steers, locked by every change to its policies or schedules (REST
-- requests, the expiry sweeper, the schedule dispatcher), so changes of one installation are decided and
-- published one after the other. Versions come from sequences: a version taken by a transaction that then
-- rolled back (after its publish reached the broker) is never reused, so a controller never sees one version
-- number with two contents.

CREATE SEQUENCE control_version;
CREATE SEQUENCE schedule_version;

CREATE TABLE installations (
    instance_id        bigint PRIMARY KEY,       -- the registry's installation
    gateways           jsonb NOT NULL DEFAULT '[]',  -- [{"id", "uuid"}] as last read from the registry
    fallback_timeout_s integer NOT NULL DEFAULT 900,
    control_version    bigint NOT NULL DEFAULT 0,
    control_issued_at  timestamptz,
    schedule_version   bigint NOT NULL DEFAULT 0,
    schedule_issued_at timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policies (
    policy_id      uuid PRIMARY KEY,
    instance_id    bigint NOT NULL REFERENCES installations(instance_id) ON DELETE CASCADE,
    grp            text NOT NULL CHECK (grp IN ('battery', 'solar', 'ev', 'hvac')),
    setpoint       jsonb NOT NULL,
    source         text NOT NULL,            -- user:<uuid> | provider:<id> | operator
    priority       integer NOT NULL,         -- operator 3 > provider 2 > user 1
    origin         text NOT NULL DEFAULT 'live' CHECK (origin IN ('live', 'schedule')),
    interval_id    bigint,                   -- the schedule interval it came from
    requested_by   text,
    created_at     timestamptz NOT NULL,
    valid_until    timestamptz NOT NULL,
    ended_at       timestamptz,
    end_reason     text CHECK (end_reason IN ('replaced', 'removed', 'expired', 'installation deleted')),
    ended_by       text,
    applied_at     timestamptz,              -- a controller confirmed a control version holding it
    rejected_at    timestamptz,
    rejected_reason text
);
CREATE UNIQUE INDEX policies_in_force ON policies (instance_id, grp) WHERE ended_at IS NULL;
CREATE INDEX policies_expiring ON policies (valid_until) WHERE ended_at IS NULL;
CREATE INDEX policies_instance ON policies (instance_id, created_at DESC);

-- Every control state published to a controller, and its acknowledgement.
CREATE TABLE control_publications (
    gateway_uuid uuid NOT NULL,
    version      bigint NOT NULL,
    instance_id  bigint NOT NULL,
    issued_at    timestamptz NOT NULL,
    policy_ids   uuid[] NOT NULL,
    ack_status   text CHECK (ack_status IN ('applied', 'rejected')),
    ack_reason   text,
    acked_at     timestamptz,
    PRIMARY KEY (gateway_uuid, version)
);
CREATE INDEX control_publications_instance ON control_publications (instance_id, version DESC);
