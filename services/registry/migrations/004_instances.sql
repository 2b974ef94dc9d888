-- Installations (seed 000's "instances"): basic details, bound controllers, device groups, owner and guests.
-- Depends on 001 only (timezones, spaces, gateways, users). The API validates everything first; the
-- constraints here are the last line of defence and the tie-breakers when two requests race.

CREATE TABLE instances (
    id            bigserial PRIMARY KEY,
    uuid          uuid NOT NULL UNIQUE,
    title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 255),
    type          text NOT NULL DEFAULT 'other' CHECK (length(type) BETWEEN 1 AND 64),
    serial        text NOT NULL CHECK (length(serial) BETWEEN 1 AND 64),
    street        text,
    postal_code   text,
    city          text,
    country       text CHECK (country ~ '^[A-Z]{2}$'),
    timezone_id   integer NOT NULL REFERENCES timezones(id),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'maintenance')),
    parameters    jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(parameters) = 'object'),
    root_space_id bigint REFERENCES spaces(id) ON DELETE RESTRICT,
    created_at    timestamptz NOT NULL DEFAULT now(),
    modified_at   timestamptz NOT NULL DEFAULT now(),
    description   text
);
-- Titles are unique regardless of case ("Home A" and "home a" would be indistinguishable in a list).
CREATE UNIQUE INDEX instances_title_unique ON instances (lower(title));
CREATE UNIQUE INDEX instances_serial_unique ON instances (serial);
CREATE INDEX instances_root_space ON instances (root_space_id);

-- A controller belongs to one installation at most.
CREATE TABLE instance_gateways (
    instance_id bigint NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    gateway_id  bigint NOT NULL REFERENCES gateways(id) ON DELETE RESTRICT,
    bound_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, gateway_id),
    CONSTRAINT instance_gateways_gateway_unique UNIQUE (gateway_id)
);

CREATE TABLE instance_device_groups (
    id              bigserial PRIMARY KEY,
    instance_id     bigint NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    grp             text NOT NULL CHECK (grp IN ('battery', 'solar', 'ev', 'hvac')),
    devices         jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(devices) = 'array'),
    max_charge_w    double precision CHECK (max_charge_w >= 0),
    max_discharge_w double precision CHECK (max_discharge_w >= 0),
    capacity_wh     double precision CHECK (capacity_wh >= 0),
    max_power_w     double precision CHECK (max_power_w >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    modified_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT instance_device_groups_group_unique UNIQUE (instance_id, grp)
);

CREATE TABLE instance_users (
    instance_id   bigint NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    user_id       bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role          text NOT NULL CHECK (role IN ('owner', 'guest')),
    share_content boolean NOT NULL DEFAULT false,
    share_reports boolean NOT NULL DEFAULT false,
    allow_write   boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, user_id),
    -- A guest may write to devices only when content is shared with them.
    CONSTRAINT instance_users_guest_write CHECK (role = 'owner' OR share_content OR NOT allow_write)
);
CREATE INDEX instance_users_user ON instance_users (user_id);
-- Each installation has at most one owner (and any number of guests).
CREATE UNIQUE INDEX instance_users_one_owner ON instance_users (instance_id) WHERE role = 'owner';
