-- Fleet health (seed 000's fleet manager): the latest report and status of every controller, with history.

CREATE TABLE gateway_state (
    gateway_uuid      text PRIMARY KEY,
    status            text,                 -- from the retained status topic (last will): online / offline
    status_changed_at timestamptz,
    last_seen_at      timestamptz,          -- any message from the controller
    health            jsonb,                -- the latest health report as received (validated)
    health_at         timestamptz
);

CREATE TABLE gateway_health_history (
    gateway_uuid text        NOT NULL,
    received_at  timestamptz NOT NULL,
    report       jsonb       NOT NULL,
    PRIMARY KEY (gateway_uuid, received_at)
);

CREATE TABLE gateway_status_history (
    gateway_uuid text        NOT NULL,
    at           timestamptz NOT NULL,
    status       text        NOT NULL,
    PRIMARY KEY (gateway_uuid, at)
);
