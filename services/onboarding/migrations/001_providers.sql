-- External signal providers, their links to installations, and the persisted webhook outbox.
--
-- Signal providers belong to a service provider (tenant): provider_id is filled from the caller's scope and a
-- forced row-level security policy shows each caller only its tenant's rows, as in the registry.

CREATE OR REPLACE FUNCTION gf_is_admin() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('gridfleet.admin', true), 'off') = 'on'
$$;

CREATE OR REPLACE FUNCTION gf_provider() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('gridfleet.provider', true), '')::bigint
$$;

CREATE OR REPLACE FUNCTION gf_visible(owner bigint) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT gf_is_admin() OR (owner IS NOT NULL AND owner = gf_provider())
$$;

CREATE TABLE signal_providers (
    id               bigserial PRIMARY KEY,
    provider_id      bigint DEFAULT gf_provider(),
    name             text NOT NULL,
    webhook_base_url text NOT NULL,
    -- The signing secret must be usable for HMAC, so it is kept as given (never hashed), in this service's
    -- own schema, and never returned by the API.
    secret           text NOT NULL,
    -- The provider's MQTT password (its broker account `provider-{id}`), handed over in onboarding only.
    mqtt_password    text NOT NULL,
    device_groups    text[] NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    modified_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (device_groups <@ ARRAY['battery', 'solar', 'ev', 'hvac'])
);
CREATE UNIQUE INDEX signal_providers_name_per_provider ON signal_providers (coalesce(provider_id, 0), name);

CREATE TABLE provider_links (
    signal_provider_id bigint NOT NULL REFERENCES signal_providers(id) ON DELETE RESTRICT,
    installation_id    bigint NOT NULL,
    provider_id        bigint,
    contract_number    text NOT NULL,
    state              text NOT NULL CHECK (state IN ('pending', 'active', 'rejected', 'offboarded')),
    reason             text,
    -- Raised each time the link is (re)added: an answer to an older onboarding changes nothing.
    epoch              integer NOT NULL DEFAULT 1,
    created_at         timestamptz NOT NULL DEFAULT now(),
    changed_at         timestamptz NOT NULL DEFAULT now(),
    -- The status last reported in a healthcheck, and when the next periodic one is due (active links).
    last_health        text,
    health_due_at      timestamptz,
    PRIMARY KEY (signal_provider_id, installation_id)
);
CREATE INDEX provider_links_installation ON provider_links (installation_id);

-- One row per webhook; `id` is the Gridfleet-Delivery header, stable across retries. `seq` orders the
-- deliveries of one (signal provider, installation): the next is sent only when the previous is final.
CREATE TABLE webhook_outbox (
    id                 uuid PRIMARY KEY,
    seq                bigserial NOT NULL UNIQUE,
    signal_provider_id bigint NOT NULL REFERENCES signal_providers(id) ON DELETE RESTRICT,
    installation_id    bigint NOT NULL,
    provider_id        bigint,
    link_epoch         integer NOT NULL,
    event              text NOT NULL CHECK (event IN ('onboarding', 'offboarding', 'healthcheck')),
    payload            jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    lease_until        timestamptz,
    leased_by          text,
    last_status_code   integer,
    last_error         text,
    answer             jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    delivered_at       timestamptz,
    failed_at          timestamptz
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_outbox_queue ON webhook_outbox (signal_provider_id, installation_id, seq);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['signal_providers', 'provider_links', 'webhook_outbox'] LOOP
        EXECUTE format('CREATE INDEX %I ON %I (provider_id)', t || '_provider', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (gf_visible(provider_id))'
                       ' WITH CHECK (gf_visible(provider_id))', t);
    END LOOP;
END $$;

-- The role every request runs as (see libs/db.py): created once per cluster, granted per schema.
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
