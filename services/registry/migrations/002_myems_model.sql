-- The rest of the MyEMS master-data model: lookups, organisation, equipment, offline and virtual meters,
-- and the binding matrix (seed 001, digest section 2.3). Names are unique where MyEMS makes them so.

ALTER TABLE points ADD COLUMN uuid uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE;

CREATE TABLE contacts (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    email text, phone text, description text
);

CREATE TABLE cost_centers (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    external_id text, description text
);

CREATE TABLE energy_items (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    energy_category_id bigint NOT NULL REFERENCES energy_categories(id) ON DELETE RESTRICT, description text
);

CREATE TABLE protocols (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    code text NOT NULL UNIQUE, description text
);
INSERT INTO protocols (uuid, name, code)
SELECT gen_random_uuid(), code, code FROM unnest(ARRAY[
    'modbus-tcp', 'modbus-rtu', 'bacnet-ip', 's7', 'profibus', 'profinet', 'opc-ua', 'lora', 'simulation',
    'controllogix', 'weather', 'mysql', 'sqlserver', 'postgresql', 'oracle', 'mongodb', 'influxdb', 'mqtt'
]) AS code;

CREATE TABLE sensors (id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE, description text);

CREATE TABLE tenant_types (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    simplified_code text, description text
);
CREATE TABLE store_types (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    simplified_code text, description text
);

CREATE TABLE tenants (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    buildings text, floors text, rooms text, area double precision NOT NULL DEFAULT 0,
    tenant_type_id bigint NOT NULL REFERENCES tenant_types(id) ON DELETE RESTRICT,
    is_input_counted boolean NOT NULL DEFAULT true, is_key_tenant boolean NOT NULL DEFAULT false,
    lease_number text, lease_start_datetime timestamptz, lease_end_datetime timestamptz,
    is_in_lease boolean NOT NULL DEFAULT true,
    contact_id bigint REFERENCES contacts(id) ON DELETE RESTRICT,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    description text,
    CONSTRAINT tenant_lease_ordered CHECK (lease_end_datetime IS NULL OR lease_start_datetime IS NULL
                                            OR lease_end_datetime > lease_start_datetime)
);

CREATE TABLE stores (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    address text, latitude double precision, longitude double precision, area double precision NOT NULL DEFAULT 0,
    store_type_id bigint NOT NULL REFERENCES store_types(id) ON DELETE RESTRICT,
    is_input_counted boolean NOT NULL DEFAULT true,
    contact_id bigint REFERENCES contacts(id) ON DELETE RESTRICT,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    description text
);

CREATE TABLE shopfloors (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    area double precision NOT NULL DEFAULT 0, is_input_counted boolean NOT NULL DEFAULT true,
    contact_id bigint REFERENCES contacts(id) ON DELETE RESTRICT,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    description text
);

CREATE TABLE equipments (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    is_input_counted boolean NOT NULL DEFAULT true, is_output_counted boolean NOT NULL DEFAULT false,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    svg text, camera_url text, description text
);

CREATE TABLE combined_equipments (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    is_input_counted boolean NOT NULL DEFAULT true, is_output_counted boolean NOT NULL DEFAULT false,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    svg text, camera_url text, description text
);

CREATE TABLE working_calendars (id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE, description text);

CREATE TABLE offline_meters (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    energy_category_id bigint NOT NULL REFERENCES energy_categories(id) ON DELETE RESTRICT,
    is_counted boolean NOT NULL DEFAULT true,
    hourly_low_limit double precision NOT NULL DEFAULT 0, hourly_high_limit double precision,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    energy_item_id bigint REFERENCES energy_items(id) ON DELETE RESTRICT,
    description text
);

CREATE TABLE virtual_meters (
    id bigserial PRIMARY KEY, uuid uuid NOT NULL UNIQUE, name text NOT NULL UNIQUE,
    energy_category_id bigint NOT NULL REFERENCES energy_categories(id) ON DELETE RESTRICT,
    is_counted boolean NOT NULL DEFAULT true,
    cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    energy_item_id bigint REFERENCES energy_items(id) ON DELETE RESTRICT,
    expression jsonb NOT NULL,
    description text
);

-- Links (parent, child); flags where MyEMS has them.
CREATE TABLE sensor_points (sensor_id bigint NOT NULL REFERENCES sensors(id) ON DELETE CASCADE,
    point_id bigint NOT NULL REFERENCES points(id) ON DELETE RESTRICT, PRIMARY KEY (sensor_id, point_id));

CREATE TABLE space_points (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    point_id bigint NOT NULL REFERENCES points(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, point_id));
CREATE TABLE space_offline_meters (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    offline_meter_id bigint NOT NULL REFERENCES offline_meters(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, offline_meter_id));
CREATE TABLE space_virtual_meters (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    virtual_meter_id bigint NOT NULL REFERENCES virtual_meters(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, virtual_meter_id));
CREATE TABLE space_sensors (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    sensor_id bigint NOT NULL REFERENCES sensors(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, sensor_id));
CREATE TABLE space_equipments (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    equipment_id bigint NOT NULL REFERENCES equipments(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, equipment_id));
CREATE TABLE space_combined_equipments (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    combined_equipment_id bigint NOT NULL REFERENCES combined_equipments(id) ON DELETE RESTRICT,
    PRIMARY KEY (space_id, combined_equipment_id));
CREATE TABLE space_shopfloors (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, shopfloor_id));
CREATE TABLE space_stores (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    store_id bigint NOT NULL REFERENCES stores(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, store_id));
CREATE TABLE space_tenants (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE RESTRICT, PRIMARY KEY (space_id, tenant_id));
CREATE TABLE space_working_calendars (space_id bigint NOT NULL REFERENCES spaces(id) ON DELETE CASCADE,
    working_calendar_id bigint NOT NULL REFERENCES working_calendars(id) ON DELETE RESTRICT,
    PRIMARY KEY (space_id, working_calendar_id));

CREATE TABLE equipment_meters (equipment_id bigint NOT NULL REFERENCES equipments(id) ON DELETE CASCADE,
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE RESTRICT, is_output boolean NOT NULL DEFAULT false,
    PRIMARY KEY (equipment_id, meter_id));
CREATE TABLE combined_equipment_equipments (combined_equipment_id bigint NOT NULL REFERENCES combined_equipments(id) ON DELETE CASCADE,
    equipment_id bigint NOT NULL REFERENCES equipments(id) ON DELETE RESTRICT, PRIMARY KEY (combined_equipment_id, equipment_id));
CREATE TABLE combined_equipment_meters (combined_equipment_id bigint NOT NULL REFERENCES combined_equipments(id) ON DELETE CASCADE,
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE RESTRICT, is_output boolean NOT NULL DEFAULT false,
    PRIMARY KEY (combined_equipment_id, meter_id));

CREATE TABLE shopfloor_meters (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, meter_id));
CREATE TABLE shopfloor_points (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    point_id bigint NOT NULL REFERENCES points(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, point_id));
CREATE TABLE shopfloor_equipments (shopfloor_id bigint NOT NULL REFERENCES shopfloors(id) ON DELETE CASCADE,
    equipment_id bigint NOT NULL REFERENCES equipments(id) ON DELETE RESTRICT, PRIMARY KEY (shopfloor_id, equipment_id));
CREATE TABLE store_meters (store_id bigint NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE RESTRICT, PRIMARY KEY (store_id, meter_id));
CREATE TABLE store_points (store_id bigint NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    point_id bigint NOT NULL REFERENCES points(id) ON DELETE RESTRICT, PRIMARY KEY (store_id, point_id));
CREATE TABLE tenant_meters (tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    meter_id bigint NOT NULL REFERENCES meters(id) ON DELETE RESTRICT, PRIMARY KEY (tenant_id, meter_id));
CREATE TABLE tenant_points (tenant_id bigint NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    point_id bigint NOT NULL REFERENCES points(id) ON DELETE RESTRICT, PRIMARY KEY (tenant_id, point_id));
