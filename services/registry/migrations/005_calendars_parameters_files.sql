-- Non-working days of working calendars, equipment parameters, offline meter files,
-- and the rest of the binding matrix (offline/virtual meters, sensors and calendars of shopfloors, stores, tenants).

CREATE TABLE non_working_days (
    id bigserial PRIMARY KEY,
    working_calendar_id bigint NOT NULL REFERENCES working_calendars(id) ON DELETE CASCADE,
    date_local date NOT NULL,
    description text,
    UNIQUE (working_calendar_id, date_local)
);

CREATE TABLE equipment_parameters (
    id bigserial PRIMARY KEY,
    equipment_id bigint REFERENCES equipments(id) ON DELETE CASCADE,
    combined_equipment_id bigint REFERENCES combined_equipments(id) ON DELETE CASCADE,
    name text NOT NULL,
    parameter_type text NOT NULL CHECK (parameter_type IN ('constant', 'point', 'fraction')),
    constant text,
    point_id bigint REFERENCES points(id) ON DELETE RESTRICT,
    numerator_meter_id bigint REFERENCES meters(id) ON DELETE RESTRICT,
    denominator_meter_id bigint REFERENCES meters(id) ON DELETE RESTRICT,
    CHECK ((equipment_id IS NULL) <> (combined_equipment_id IS NULL))
);
CREATE UNIQUE INDEX equipment_parameters_name ON equipment_parameters (coalesce(equipment_id, 0), coalesce(combined_equipment_id, 0), name);

CREATE TABLE offline_meter_files (
    id bigserial PRIMARY KEY,
    uuid uuid NOT NULL UNIQUE,
    file_name text NOT NULL,
    content_type text NOT NULL,
    upload_datetime timestamptz NOT NULL DEFAULT now(),
    status text NOT NULL CHECK (status IN ('new', 'done', 'error')),
    error_row integer,
    error_reason text,
    rows_accepted integer NOT NULL DEFAULT 0,
    file_object bytea NOT NULL
);

-- Period totals from offline meter files; aggregation spreads them into hours with quality `manual`.
CREATE TABLE offline_meter_values (
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE CASCADE,
    start_datetime timestamptz NOT NULL,
    end_datetime timestamptz NOT NULL,
    value double precision NOT NULL,
    file_id bigint NOT NULL REFERENCES offline_meter_files(id) ON DELETE CASCADE,
    PRIMARY KEY (offline_meter_id, start_datetime),
    CHECK (end_datetime > start_datetime)
);

CREATE TABLE equipment_offline_meters (equipment_id bigint NOT NULL REFERENCES equipments(id) ON DELETE CASCADE,
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE RESTRICT, is_output boolean NOT NULL DEFAULT false,
    PRIMARY KEY (equipment_id, offline_meter_id));
CREATE TABLE equipment_virtual_meters (equipment_id bigint NOT NULL REFERENCES equipments(id) ON DELETE CASCADE,
    virtual_meter_id bigint NOT NULL REFERENCES virtual_meters(id) ON DELETE RESTRICT, is_output boolean NOT NULL DEFAULT false,
    PRIMARY KEY (equipment_id, virtual_meter_id));
CREATE TABLE combined_equipment_offline_meters (combined_equipment_id bigint NOT NULL REFERENCES combined_equipments(id) ON DELETE CASCADE,
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE RESTRICT, is_output boolean NOT NULL DEFAULT false,
    PRIMARY KEY (combined_equipment_id, offline_meter_id));
CREATE TABLE combined_equipment_virtual_meters (combined_equipment_id bigint NOT NULL REFERENCES combined_equipments(id) ON DELETE CASCADE,
    virtual_meter_id bigint NOT NULL REFERENCES virtual_meters(id) ON DELETE RESTRICT, is_output boolean NOT NULL DEFAULT false,
    PRIMARY KEY (combined_equipment_id, virtual_meter_id));

CREATE TABLE shopfloor_offline_meters (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, offline_meter_id));
CREATE TABLE shopfloor_virtual_meters (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    virtual_meter_id bigint NOT NULL REFERENCES virtual_meters(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, virtual_meter_id));
CREATE TABLE shopfloor_sensors (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    sensor_id bigint NOT NULL REFERENCES sensors(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, sensor_id));
CREATE TABLE shopfloor_working_calendars (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    working_calendar_id bigint NOT NULL REFERENCES working_calendars(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, working_calendar_id));

CREATE TABLE store_offline_meters (store_id bigint NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE RESTRICT, PRIMARY KEY (store_id, offline_meter_id));
CREATE TABLE store_virtual_meters (store_id bigint NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    virtual_meter_id bigint NOT NULL REFERENCES virtual_meters(id) ON DELETE RESTRICT, PRIMARY KEY (store_id, virtual_meter_id));
CREATE TABLE store_sensors (store_id bigint NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    sensor_id bigint NOT NULL REFERENCES sensors(id) ON DELETE RESTRICT, PRIMARY KEY (store_id, sensor_id));
CREATE TABLE store_working_calendars (store_id bigint NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    working_calendar_id bigint NOT NULL REFERENCES working_calendars(id) ON DELETE RESTRICT, PRIMARY KEY (store_id, working_calendar_id));

CREATE TABLE tenant_offline_meters (tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE RESTRICT, PRIMARY KEY (tenant_id, offline_meter_id));
CREATE TABLE tenant_virtual_meters (tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    virtual_meter_id bigint NOT NULL REFERENCES virtual_meters(id) ON DELETE RESTRICT, PRIMARY KEY (tenant_id, virtual_meter_id));
CREATE TABLE tenant_sensors (tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    sensor_id bigint NOT NULL REFERENCES sensors(id) ON DELETE RESTRICT, PRIMARY KEY (tenant_id, sensor_id));
CREATE TABLE tenant_working_calendars (tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    working_calendar_id bigint NOT NULL REFERENCES working_calendars(id) ON DELETE RESTRICT, PRIMARY KEY (tenant_id, working_calendar_id));
