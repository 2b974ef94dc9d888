-- Cost, carbon and subject rollups (spaces, equipment, combined equipment, tenants, stores, shopfloors), and
-- bucket quality recomputed from the contributions still in force.

-- Quality ledger: per (batch, point, quarter, quality) the net number of intervals of that quality the batch
-- added (+1) or withdrew (-1, a late reading splitting an interval). A quarter's quality is the worst quality
-- with a positive net count over every batch, so an estimated gap later filled by real readings becomes good.
-- Rows already in the energy ledger count once at their quality (what they were before).
CREATE TABLE quality_ledger_quarter (
    batch_key bigint      NOT NULL,
    point_id  integer     NOT NULL,
    quarter   timestamptz NOT NULL,
    quality   smallint    NOT NULL,
    n         integer     NOT NULL,
    PRIMARY KEY (batch_key, point_id, quarter, quality)
);
INSERT INTO quality_ledger_quarter (batch_key, point_id, quarter, quality, n)
SELECT batch_key, point_id, quarter, quality, 1 FROM energy_ledger_quarter;
CREATE INDEX quality_ledger_quarter_point ON quality_ledger_quarter (point_id, quarter);

-- Copies of the registry's read model (services/registry/api/aggregation_internal.py).
CREATE TABLE energy_category_factors (
    energy_category_id integer          PRIMARY KEY,
    kgce               double precision NOT NULL,
    kgco2e             double precision NOT NULL
);

-- kind: meter | virtual_meter | offline_meter
CREATE TABLE source_info (
    kind               text    NOT NULL,
    source_id          integer NOT NULL,
    energy_category_id integer NOT NULL,
    energy_item_id     integer,
    cost_center_id     integer,
    is_counted         boolean NOT NULL,
    timezone           text    NOT NULL,
    PRIMARY KEY (kind, source_id)
);

CREATE TABLE tariff_copies (
    tariff_id          integer     PRIMARY KEY,
    energy_category_id integer     NOT NULL,
    definition         jsonb       NOT NULL
);
CREATE TABLE cost_center_tariff_copies (
    cost_center_id integer NOT NULL,
    tariff_id      integer NOT NULL,
    PRIMARY KEY (cost_center_id, tariff_id)
);

-- Cost per source per quarter, priced with its cost center's tariff for its energy category.
CREATE TABLE source_cost_quarter (
    kind      text             NOT NULL,
    source_id integer          NOT NULL,
    quarter   timestamptz      NOT NULL,
    cost      double precision NOT NULL,
    PRIMARY KEY (kind, source_id, quarter)
);

-- Sources whose cost is to be recomputed wholly (tariff, cost center or category changed).
CREATE TABLE cost_pending (
    kind      text    NOT NULL,
    source_id integer NOT NULL,
    PRIMARY KEY (kind, source_id)
);

ALTER TABLE meter_energy_daily ADD COLUMN cost double precision;
ALTER TABLE meter_energy_monthly ADD COLUMN cost double precision;
ALTER TABLE meter_energy_yearly ADD COLUMN cost double precision;

-- Every source's quarters in one relation.
CREATE VIEW source_energy_quarter AS
SELECT 'meter'::text AS kind, meter_id AS source_id, quarter, energy, quality FROM meter_energy_quarter
UNION ALL
SELECT 'offline_meter'::text, offline_meter_id, quarter, energy, quality FROM offline_meter_energy_quarter
UNION ALL
SELECT 'virtual_meter'::text, virtual_meter_id, quarter, energy, quality FROM virtual_meter_energy_quarter;

-- Subjects: space | equipment | combined_equipment | tenant | store | shopfloor | virtual_meter | offline_meter,
-- with their zone and the counted sources they add up (services/aggregation/subjects.py).
CREATE TABLE subjects (
    kind       text    NOT NULL,
    subject_id integer NOT NULL,
    timezone   text    NOT NULL,
    PRIMARY KEY (kind, subject_id)
);
CREATE TABLE subject_members (
    kind        text    NOT NULL,
    subject_id  integer NOT NULL,
    source_kind text    NOT NULL,
    source_id   integer NOT NULL,
    PRIMARY KEY (kind, subject_id, source_kind, source_id)
);
CREATE INDEX subject_members_source ON subject_members (source_kind, source_id);

-- Subject rollups in the subject's local time, per energy category and item (0: no item).
-- `quarters` counts the distinct quarters with energy from any member.
CREATE TABLE subject_energy_daily (
    kind               text             NOT NULL,
    subject_id         integer          NOT NULL,
    local_date         date             NOT NULL,
    energy_category_id integer          NOT NULL,
    energy_item_id     integer          NOT NULL,
    energy             double precision NOT NULL,
    cost               double precision,
    quality            smallint         NOT NULL,
    quarters           integer          NOT NULL,
    PRIMARY KEY (kind, subject_id, local_date, energy_category_id, energy_item_id)
);
CREATE TABLE subject_energy_monthly (
    kind               text             NOT NULL,
    subject_id         integer          NOT NULL,
    local_month        date             NOT NULL,
    energy_category_id integer          NOT NULL,
    energy_item_id     integer          NOT NULL,
    energy             double precision NOT NULL,
    cost               double precision,
    quality            smallint         NOT NULL,
    quarters           integer          NOT NULL,
    PRIMARY KEY (kind, subject_id, local_month, energy_category_id, energy_item_id)
);
CREATE TABLE subject_energy_yearly (
    kind               text             NOT NULL,
    subject_id         integer          NOT NULL,
    local_year         integer          NOT NULL,
    energy_category_id integer          NOT NULL,
    energy_item_id     integer          NOT NULL,
    energy             double precision NOT NULL,
    cost               double precision,
    quality            smallint         NOT NULL,
    quarters           integer          NOT NULL,
    PRIMARY KEY (kind, subject_id, local_year, energy_category_id, energy_item_id)
);

-- Subjects to rebuild wholly (members or zone changed).
CREATE TABLE subject_rebuild_pending (
    kind       text    NOT NULL,
    subject_id integer NOT NULL,
    PRIMARY KEY (kind, subject_id)
);
