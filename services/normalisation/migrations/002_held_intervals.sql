-- Energy intervals held back as spikes: sent downstream with energy 0 and quality suspect, their energy kept
-- here until a person confirms it (sent on, quality manual) or rejects it, or later readings split the
-- interval (superseded). Rows are never deleted: nothing is silently dropped.
CREATE TABLE held_intervals (
    id            bigserial PRIMARY KEY,
    point_id      integer          NOT NULL,
    start_ms      bigint           NOT NULL, -- the interval is (start_ms, end_ms], epoch milliseconds UTC
    end_ms        bigint           NOT NULL,
    energy        double precision NOT NULL, -- as computed, in the point's unit
    quality       smallint         NOT NULL, -- the interval's own quality (proto_schemas/quality.py)
    reason        text             NOT NULL,
    status        text             NOT NULL DEFAULT 'held'
                  CHECK (status IN ('held', 'confirmed', 'rejected', 'superseded')),
    held_at       timestamptz      NOT NULL DEFAULT now(),
    resolved_at   timestamptz,               -- when confirmed or rejected
    resolved_by   text,                      -- by whom (the user's name when the call named one)
    superseded_at timestamptz,
    UNIQUE (point_id, start_ms, end_ms)
);
CREATE INDEX held_intervals_open ON held_intervals (held_at) WHERE status = 'held';
