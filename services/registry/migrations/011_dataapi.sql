-- The Data API (seeds 000 and 004): one account per service provider, and the history of data source status.
--
-- An account holds its current key and, for a grace period after a renewal, the previous one; both only as
-- SHA-256 digests (the clear key is shown once). Scope `user` narrows the key to the installations its user
-- is a member of; scope `portal` sees every installation of the provider.

CREATE TABLE dataapi_accounts (
    id                    bigserial PRIMARY KEY,
    uuid                  uuid NOT NULL UNIQUE,
    provider_id           bigint NOT NULL REFERENCES providers(id) ON DELETE CASCADE DEFAULT gf_provider(),
    scope                 text NOT NULL CHECK (scope IN ('user', 'portal')),
    package               text NOT NULL CHECK (package IN ('basic', 'advanced')),
    user_id               bigint REFERENCES users(id) ON DELETE CASCADE,
    created_by            bigint REFERENCES users(id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz,
    key_prefix            text NOT NULL UNIQUE,
    key_digest            text NOT NULL,
    key_created_at        timestamptz NOT NULL DEFAULT now(),
    previous_prefix       text UNIQUE,
    previous_digest       text,
    previous_valid_until  timestamptz,
    last_used_at          timestamptz,
    CONSTRAINT dataapi_accounts_one_per_provider UNIQUE (provider_id),
    CONSTRAINT dataapi_accounts_user_scope_has_user CHECK (scope = 'portal' OR user_id IS NOT NULL)
);
ALTER TABLE dataapi_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE dataapi_accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dataapi_accounts
    USING (gf_visible(provider_id)) WITH CHECK (gf_visible(provider_id));

-- Every status change of a data source (the registry keeps only the latest on data_sources itself), for the
-- Data API's component events.
CREATE TABLE datasource_status_events (
    id             bigserial PRIMARY KEY,
    data_source_id bigint NOT NULL REFERENCES data_sources(id) ON DELETE CASCADE,
    provider_id    bigint,
    status         text NOT NULL,
    at             timestamptz NOT NULL
);
CREATE INDEX datasource_status_events_source ON datasource_status_events (data_source_id, at);
ALTER TABLE datasource_status_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE datasource_status_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON datasource_status_events
    USING (gf_visible(provider_id)) WITH CHECK (true);

CREATE FUNCTION gf_record_datasource_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS NOT NULL AND NEW.status_changed_at IS NOT NULL
       AND (NEW.status IS DISTINCT FROM OLD.status OR NEW.status_changed_at IS DISTINCT FROM OLD.status_changed_at) THEN
        INSERT INTO datasource_status_events (data_source_id, provider_id, status, at)
        VALUES (NEW.id, NEW.provider_id, NEW.status, NEW.status_changed_at);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER data_sources_status_history AFTER UPDATE OF status, status_changed_at ON data_sources
    FOR EACH ROW EXECUTE FUNCTION gf_record_datasource_status();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gridfleet_tenant') THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON dataapi_accounts, datasource_status_events TO gridfleet_tenant');
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO gridfleet_tenant', current_schema());
    END IF;
END $$;
