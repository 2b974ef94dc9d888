-- Scheduled control: plans of intervals per device group, each interval dispatched once.
--
-- An interval is due when its start has come and it has no outcome yet. The dispatcher locks the installation
-- (FOR UPDATE SKIP LOCKED: a replica that finds it locked moves on), applies the due intervals as the group's
-- policy, sets the outcome and counts the dispatch in the same transaction that publishes the control state.
-- A crash before the commit leaves the interval due (it is dispatched again, once); after the commit it has
-- its outcome and is never dispatched again. `dispatch_count` is there to prove it.

CREATE TABLE schedules (
    id           bigserial PRIMARY KEY,
    instance_id  bigint NOT NULL REFERENCES installations(instance_id) ON DELETE CASCADE,
    schedule_id  text NOT NULL,
    grp          text NOT NULL CHECK (grp IN ('battery', 'solar', 'ev', 'hvac')),
    source       text NOT NULL,
    priority     integer NOT NULL,
    requested_by text,
    created_at   timestamptz NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    ended_at     timestamptz,
    end_reason   text CHECK (end_reason IN ('replaced', 'removed', 'finished', 'installation deleted')),
    ended_by     text,
    stored_at    timestamptz,                -- a controller confirmed a schedule version holding it
    rejected_at  timestamptz,
    rejected_reason text
);
CREATE UNIQUE INDEX schedules_live ON schedules (instance_id, schedule_id) WHERE ended_at IS NULL;
CREATE INDEX schedules_finishing ON schedules (ends_at) WHERE ended_at IS NULL;

CREATE TABLE schedule_intervals (
    id             bigserial PRIMARY KEY,
    schedule_pk    bigint NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    instance_id    bigint NOT NULL,
    seq            integer NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    setpoint       jsonb NOT NULL,
    outcome        text CHECK (outcome IN ('applied', 'overridden', 'lapsed', 'cancelled')),
    outcome_reason text,
    dispatched_at  timestamptz,
    dispatch_count integer NOT NULL DEFAULT 0,
    dispatched_by  text,                     -- the replica that dispatched it
    policy_id      uuid,
    UNIQUE (schedule_pk, seq)
);
CREATE INDEX schedule_intervals_due ON schedule_intervals (start_at) WHERE outcome IS NULL;
CREATE INDEX schedule_intervals_instance ON schedule_intervals (instance_id) WHERE outcome IS NULL;

CREATE TABLE schedule_publications (
    gateway_uuid uuid NOT NULL,
    version      bigint NOT NULL,
    instance_id  bigint NOT NULL,
    issued_at    timestamptz NOT NULL,
    schedule_pks bigint[] NOT NULL,
    ack_status   text CHECK (ack_status IN ('stored', 'rejected')),
    ack_reason   text,
    acked_at     timestamptz,
    PRIMARY KEY (gateway_uuid, version)
);
CREATE INDEX schedule_publications_instance ON schedule_publications (instance_id, version DESC);
