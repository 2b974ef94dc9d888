-- Tenancy, users, API keys and the audit log.
--
-- Service providers are tenants. Every tenant-owned table carries provider_id (filled from the caller's
-- scope on insert) and a row-level security policy, forced even for the table owner, so a query that forgets
-- a filter still cannot see another provider's rows. The scope is set per connection by libs/db.py
-- (gridfleet.admin / gridfleet.provider / gridfleet.user / gridfleet.role).

CREATE TABLE providers (
    id          bigserial PRIMARY KEY,
    uuid        uuid NOT NULL UNIQUE,
    name        text NOT NULL UNIQUE,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION gf_is_admin() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('gridfleet.admin', true), 'off') = 'on'
$$;

CREATE FUNCTION gf_provider() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('gridfleet.provider', true), '')::bigint
$$;

CREATE FUNCTION gf_visible(owner bigint) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT gf_is_admin() OR (owner IS NOT NULL AND owner = gf_provider())
$$;

DO $$
DECLARE
    t text;
    k text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'gateways', 'data_sources', 'points', 'meters', 'spaces', 'contacts', 'cost_centers', 'energy_items',
        'sensors', 'tenant_types', 'store_types', 'tenants', 'stores', 'shopfloors', 'equipments',
        'combined_equipments', 'working_calendars', 'offline_meters', 'virtual_meters', 'offline_meter_files',
        'tariffs', 'instances'
    ] LOOP
        CONTINUE WHEN to_regclass(t) IS NULL;
        EXECUTE format('ALTER TABLE %I ADD COLUMN provider_id bigint REFERENCES providers(id) ON DELETE RESTRICT'
                       ' DEFAULT gf_provider()', t);
        EXECUTE format('CREATE INDEX %I ON %I (provider_id)', t || '_provider', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (gf_visible(provider_id))'
                       ' WITH CHECK (gf_visible(provider_id))', t);
        -- Names are unique within a provider, not across the platform.
        FOR k IN SELECT conname FROM pg_constraint
                 WHERE conrelid = to_regclass(t) AND contype = 'u'
                   AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass(t) AND attname = 'name')]
        LOOP
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, k);
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I (coalesce(provider_id, 0), name)', t || '_name_per_provider', t);
        END LOOP;
    END LOOP;
END $$;

-- Users: a role, a provider (none for platform admins), login by name or e-mail, lockout and expiry.
ALTER TABLE users
    ADD COLUMN provider_id bigint REFERENCES providers(id) ON DELETE RESTRICT DEFAULT gf_provider(),
    ADD COLUMN role text NOT NULL DEFAULT 'provider_admin'
        CHECK (role IN ('platform_admin', 'provider_admin', 'operator', 'installer', 'owner', 'guest')),
    ADD COLUMN failed_logins integer NOT NULL DEFAULT 0,
    ADD COLUMN locked_until timestamptz,
    ADD COLUMN password_changed_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN password_expires_at timestamptz,
    ADD COLUMN account_expires_at timestamptz,
    ADD COLUMN is_disabled boolean NOT NULL DEFAULT false;
UPDATE users SET role = 'platform_admin' WHERE is_admin;
ALTER TABLE users ADD CONSTRAINT users_admin_has_no_provider CHECK (role <> 'platform_admin' OR provider_id IS NULL);
ALTER TABLE users ADD CONSTRAINT users_provider_user_has_provider CHECK (role = 'platform_admin' OR provider_id IS NOT NULL);
CREATE UNIQUE INDEX users_email ON users (lower(email)) WHERE email IS NOT NULL;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (gf_visible(provider_id) OR id = nullif(current_setting('gridfleet.user', true), '')::bigint)
    WITH CHECK (gf_visible(provider_id));

ALTER TABLE user_sessions ADD COLUMN revoked_at timestamptz;

CREATE TABLE api_keys (
    id           bigserial PRIMARY KEY,
    uuid         uuid NOT NULL UNIQUE,
    name         text NOT NULL,
    user_id      bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    provider_id  bigint REFERENCES providers(id) ON DELETE RESTRICT DEFAULT gf_provider(),
    prefix       text NOT NULL UNIQUE,
    key_digest   text NOT NULL,
    scope        text NOT NULL DEFAULT 'user' CHECK (scope IN ('user', 'portal')),
    package      text NOT NULL DEFAULT 'basic' CHECK (package IN ('basic', 'advanced')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (gf_visible(provider_id)) WITH CHECK (gf_visible(provider_id));

CREATE TABLE audit_logs (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL,
    actor          text NOT NULL,
    actor_kind     text NOT NULL,
    provider_id    bigint,
    action         text NOT NULL,
    object         text NOT NULL,
    outcome        integer NOT NULL,
    source_address text,
    correlation_id text,
    event_key      text NOT NULL UNIQUE
);
CREATE INDEX audit_logs_at ON audit_logs (at);
CREATE INDEX audit_logs_object ON audit_logs (object);
ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_logs USING (gf_visible(provider_id)) WITH CHECK (true);

-- The role every request runs as (see libs/db.py). Created once per cluster; granted per schema.
DO $$
BEGIN
    CREATE ROLE gridfleet_tenant NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation OR insufficient_privilege THEN NULL;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gridfleet_tenant') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO gridfleet_tenant', current_schema());
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO gridfleet_tenant', current_schema());
        EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT EXECUTE ON FUNCTIONS TO gridfleet_tenant', current_schema());
    END IF;
END $$;
