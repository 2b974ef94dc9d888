-- Registry: master data (MyEMS model) and identity.

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    uuid          uuid NOT NULL UNIQUE,
    name          text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    email         text,
    password_hash text NOT NULL,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_sessions (
    token_digest text PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX user_sessions_user ON user_sessions (user_id);

CREATE TABLE timezones (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    description text NOT NULL,
    utc_offset  text NOT NULL
);

CREATE TABLE energy_categories (
    id              bigserial PRIMARY KEY,
    uuid            uuid NOT NULL UNIQUE,
    name            text NOT NULL UNIQUE,
    unit_of_measure text NOT NULL,
    kgce            double precision NOT NULL DEFAULT 0,
    kgco2e          double precision NOT NULL DEFAULT 0
);

CREATE TABLE gateways (
    id                 bigserial PRIMARY KEY,
    uuid               uuid NOT NULL UNIQUE,
    name               text NOT NULL UNIQUE,
    token_digest       text NOT NULL,
    last_seen_at       timestamptz,
    reported_status    text,
    description        text
);

CREATE TABLE data_sources (
    id           bigserial PRIMARY KEY,
    uuid         uuid NOT NULL UNIQUE,
    name         text NOT NULL UNIQUE,
    gateway_id   bigint NOT NULL REFERENCES gateways(id) ON DELETE RESTRICT,
    protocol     text NOT NULL,
    connection   jsonb NOT NULL DEFAULT '{}'::jsonb,
    last_seen_at timestamptz,
    description  text
);
CREATE INDEX data_sources_gateway ON data_sources (gateway_id);

CREATE TABLE points (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL,
    data_source_id bigint NOT NULL REFERENCES data_sources(id) ON DELETE RESTRICT,
    object_type    text NOT NULL,
    units          text NOT NULL DEFAULT '',
    high_limit     double precision,
    low_limit      double precision,
    higher_limit   double precision,
    lower_limit    double precision,
    ratio          double precision NOT NULL DEFAULT 1,
    is_trend       boolean NOT NULL DEFAULT true,
    is_virtual     boolean NOT NULL DEFAULT false,
    address        jsonb NOT NULL DEFAULT '{}'::jsonb,
    description    text,
    UNIQUE (data_source_id, name)
);

CREATE TABLE meters (
    id                 bigserial PRIMARY KEY,
    uuid               uuid NOT NULL UNIQUE,
    name               text NOT NULL UNIQUE,
    energy_category_id bigint NOT NULL REFERENCES energy_categories(id) ON DELETE RESTRICT,
    is_counted         boolean NOT NULL DEFAULT true,
    hourly_low_limit   double precision NOT NULL DEFAULT 0,
    hourly_high_limit  double precision,
    master_meter_id    bigint REFERENCES meters(id) ON DELETE RESTRICT,
    description        text
);

CREATE TABLE meter_points (
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE CASCADE,
    point_id bigint NOT NULL REFERENCES points(id) ON DELETE RESTRICT,
    PRIMARY KEY (meter_id, point_id)
);
CREATE INDEX meter_points_point ON meter_points (point_id);

CREATE TABLE spaces (
    id                bigserial PRIMARY KEY,
    uuid              uuid NOT NULL UNIQUE,
    name              text NOT NULL,
    parent_space_id   bigint REFERENCES spaces(id) ON DELETE RESTRICT,
    area              double precision NOT NULL DEFAULT 0,
    timezone_id       integer NOT NULL REFERENCES timezones(id),
    is_input_counted  boolean NOT NULL DEFAULT true,
    is_output_counted boolean NOT NULL DEFAULT false,
    latitude          double precision,
    longitude         double precision,
    description       text
);

CREATE TABLE space_meters (
    space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE RESTRICT,
    PRIMARY KEY (space_id, meter_id)
);
CREATE INDEX space_meters_meter ON space_meters (meter_id);

INSERT INTO energy_categories (uuid, name, unit_of_measure, kgce, kgco2e)
VALUES (gen_random_uuid(), 'Electricity', 'kWh', 0.1229, 0.8825);
