-- Energy per 15-minute UTC bucket ("quarter") instead of per UTC hour: local days in zones offset by 30 or
-- 45 minutes (Asia/Kolkata, Asia/Kathmandu, Pacific/Chatham) start mid-hour but always on a quarter.
--
-- Existing hourly data is spread evenly over the hour's four quarters (a quarter of the energy each, same
-- quality and time of update). The ledger is converted the same way, so that a batch applied before this
-- migration and redelivered after it finds every one of its (batch, point, quarter) keys already there and
-- adds nothing.

CREATE TABLE energy_ledger_quarter (
    batch_key bigint           NOT NULL,
    point_id  integer          NOT NULL,
    quarter   timestamptz      NOT NULL,
    energy    double precision NOT NULL,
    quality   smallint         NOT NULL,
    PRIMARY KEY (batch_key, point_id, quarter)
);
INSERT INTO energy_ledger_quarter (batch_key, point_id, quarter, energy, quality)
SELECT l.batch_key, l.point_id, l.hour + k * interval '15 minutes', l.energy / 4, l.quality
FROM energy_ledger l CROSS JOIN generate_series(0, 3) AS k;
CREATE INDEX energy_ledger_quarter_point ON energy_ledger_quarter (point_id, quarter);
DROP TABLE energy_ledger;

-- Energy per meter per quarter: the sum of its points' ledger entries.
CREATE TABLE meter_energy_quarter (
    meter_id   integer          NOT NULL,
    quarter    timestamptz      NOT NULL,
    energy     double precision NOT NULL,
    quality    smallint         NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, quarter)
);
INSERT INTO meter_energy_quarter (meter_id, quarter, energy, quality, updated_at)
SELECT h.meter_id, h.hour + k * interval '15 minutes', h.energy / 4, h.quality, h.updated_at
FROM meter_energy_hourly h CROSS JOIN generate_series(0, 3) AS k;
DROP TABLE meter_energy_hourly;

-- The hourly table as it was, for readers that want UTC hours.
CREATE VIEW meter_energy_hourly AS
SELECT meter_id, date_trunc('hour', quarter, 'UTC') AS hour, sum(energy) AS energy, max(quality) AS quality,
       max(updated_at) AS updated_at
FROM meter_energy_quarter
GROUP BY meter_id, date_trunc('hour', quarter, 'UTC');

-- Each meter's reporting zone (its space's, from the registry), as the rollups below were computed in it.
CREATE TABLE meter_zones (
    meter_id integer PRIMARY KEY,
    timezone text    NOT NULL
);

-- Rollups in the meter's local civil time. `quarters` counts the stored quarters that fed the row.
CREATE TABLE meter_energy_daily (
    meter_id   integer          NOT NULL,
    local_date date             NOT NULL,
    energy     double precision NOT NULL,
    quality    smallint         NOT NULL,
    quarters   integer          NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, local_date)
);
CREATE TABLE meter_energy_monthly (
    meter_id    integer          NOT NULL,
    local_month date             NOT NULL CHECK (extract(day FROM local_month) = 1),
    energy      double precision NOT NULL,
    quality     smallint         NOT NULL,
    quarters    integer          NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, local_month)
);
CREATE TABLE meter_energy_yearly (
    meter_id   integer          NOT NULL,
    local_year integer          NOT NULL,
    energy     double precision NOT NULL,
    quality    smallint         NOT NULL,
    quarters   integer          NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, local_year)
);

-- Quarters whose energy changed since the rollups last saw them: written by every batch, in the statement
-- that changes them; taken (deleted) by the rollup task. Duplicates are fine and cheap (no key to check).
CREATE TABLE rollup_pending (
    meter_id integer     NOT NULL,
    quarter  timestamptz NOT NULL
);
CREATE INDEX rollup_pending_meter ON rollup_pending (meter_id, quarter);  -- reports ask what is still pending

-- Sources to recompute wholly: 0 a meter (rebound, or its zone changed: all its rollups and the virtual
-- meters using it), 1 an offline meter (its values changed), 2 a virtual meter (redefined or deleted).
CREATE TABLE rebuild_pending (
    kind      smallint NOT NULL CHECK (kind IN (0, 1, 2)),
    source_id integer  NOT NULL,
    PRIMARY KEY (kind, source_id)
);
INSERT INTO rebuild_pending (kind, source_id) SELECT DISTINCT 0, meter_id FROM meter_energy_quarter;

-- Virtual meters as the registry defines them (a copy, refreshed on change events) and their energy.
CREATE TABLE virtual_meter_definitions (
    virtual_meter_id integer PRIMARY KEY,
    expression       jsonb   NOT NULL
);
CREATE TABLE virtual_meter_energy_quarter (
    virtual_meter_id integer          NOT NULL,
    quarter          timestamptz      NOT NULL,
    energy           double precision NOT NULL,
    quality          smallint         NOT NULL,
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (virtual_meter_id, quarter)
);

-- Offline meter period totals as the registry holds them (a copy), and their energy spread into quarters.
CREATE TABLE offline_meter_values (
    offline_meter_id integer          NOT NULL,
    start_at         timestamptz      NOT NULL,
    end_at           timestamptz      NOT NULL,
    value            double precision NOT NULL,
    file_id          bigint           NOT NULL,
    PRIMARY KEY (offline_meter_id, start_at)
);
CREATE TABLE offline_meter_energy_quarter (
    offline_meter_id integer          NOT NULL,
    quarter          timestamptz      NOT NULL,
    energy           double precision NOT NULL,
    quality          smallint         NOT NULL,
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (offline_meter_id, quarter)
);
