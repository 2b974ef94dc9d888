-- Raw readings exactly as controllers sent them (before ratio), one row per (point, time).
CREATE TABLE raw_readings (
    point_id    integer          NOT NULL,
    ts          timestamptz      NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (point_id, ts)
);
