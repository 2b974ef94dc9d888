-- Which points make up which meter: a copy of the registry's bindings (refreshed on change events).
CREATE TABLE meter_points (
    meter_id integer NOT NULL,
    point_id integer NOT NULL,
    PRIMARY KEY (meter_id, point_id)
);
CREATE INDEX meter_points_point ON meter_points (point_id);

-- Every hourly contribution ever received, keyed by the batch it came in: a redelivered batch adds nothing.
CREATE TABLE energy_ledger (
    batch_key bigint           NOT NULL,
    point_id  integer          NOT NULL,
    hour      timestamptz      NOT NULL,
    energy    double precision NOT NULL,
    quality   smallint         NOT NULL,
    PRIMARY KEY (batch_key, point_id, hour)
);
CREATE INDEX energy_ledger_point_hour ON energy_ledger (point_id, hour);

-- Energy per meter per UTC hour: the sum of its points' ledger entries.
CREATE TABLE meter_energy_hourly (
    meter_id   integer          NOT NULL,
    hour       timestamptz      NOT NULL,
    energy     double precision NOT NULL,
    quality    smallint         NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, hour)
);
