-- Tariffs (MyEMS cost layer, digest section E) and their binding to cost centers.
-- Time-of-use periods are stored as half-open second ranges [start_second, end_second) of the local day; the
-- API writes them back in MyEMS's inclusive style (05:59:59). That the periods tile the day and the blocks form a
-- ladder from 0 is checked by services/registry/tariffs.py before anything is written.

CREATE TABLE tariffs (
    id                 bigserial PRIMARY KEY,
    uuid               uuid NOT NULL UNIQUE,
    name               text NOT NULL UNIQUE,
    energy_category_id bigint NOT NULL REFERENCES energy_categories(id) ON DELETE RESTRICT,
    tariff_type        text NOT NULL CHECK (tariff_type IN ('timeofuse', 'block')),
    unit_of_price      text NOT NULL,
    valid_from         timestamptz NOT NULL,
    valid_through      timestamptz NOT NULL,
    description        text,
    CONSTRAINT tariff_validity_ordered CHECK (valid_through > valid_from)
);
CREATE INDEX tariffs_energy_category ON tariffs (energy_category_id);

CREATE TABLE tariff_timeofuses (
    tariff_id    bigint NOT NULL REFERENCES tariffs(id) ON DELETE CASCADE,
    ordinal      integer NOT NULL,
    start_second integer NOT NULL CHECK (start_second >= 0 AND start_second < 86400),
    end_second   integer NOT NULL CHECK (end_second > start_second AND end_second <= 86400),
    peak_type    text NOT NULL CHECK (peak_type IN ('toppeak', 'onpeak', 'midpeak', 'offpeak')),
    price        numeric NOT NULL CHECK (price >= 0),
    PRIMARY KEY (tariff_id, ordinal)
);

CREATE TABLE tariff_blocks (
    tariff_id    bigint NOT NULL REFERENCES tariffs(id) ON DELETE CASCADE,
    ordinal      integer NOT NULL,
    start_amount numeric NOT NULL CHECK (start_amount >= 0),
    end_amount   numeric CHECK (end_amount IS NULL OR end_amount > start_amount),
    price        numeric NOT NULL CHECK (price >= 0),
    PRIMARY KEY (tariff_id, ordinal)
);

CREATE TABLE cost_center_tariffs (
    cost_center_id bigint NOT NULL REFERENCES cost_centers(id) ON DELETE CASCADE,
    tariff_id      bigint NOT NULL REFERENCES tariffs(id) ON DELETE RESTRICT,
    PRIMARY KEY (cost_center_id, tariff_id)
);
CREATE INDEX cost_center_tariffs_tariff ON cost_center_tariffs (tariff_id);
