-- Licenses (seed 003): a type (Basic < PRO < Elite) of one service on one device, from a single-use code.
-- Time starts at activation and never pauses; the expiry moves only forward (extension, upgrade).

CREATE TABLE licenses (
    id                  bigserial PRIMARY KEY,
    instance_id         bigint NOT NULL,
    provider_id         bigint,
    service             text NOT NULL,
    type                text NOT NULL CHECK (type IN ('Basic', 'PRO', 'Elite')),
    activated_at        timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    activated_by        bigint,
    activated_by_name   text,
    code_id             bigint REFERENCES activation_codes(id) ON DELETE SET NULL,
    -- when the expiry warning and the expiry itself were announced (reset by an extension)
    warned_at           timestamptz,
    expired_notified_at timestamptz,
    CHECK (expires_at > activated_at)
);
CREATE INDEX licenses_instance ON licenses (instance_id, service);
CREATE INDEX licenses_expiry ON licenses (expires_at) WHERE expired_notified_at IS NULL;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gridfleet_tenant') THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO gridfleet_tenant', current_schema());
    END IF;
END $$;

ALTER TABLE licenses ENABLE ROW LEVEL SECURITY;
ALTER TABLE licenses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON licenses USING (gf_visible(provider_id)) WITH CHECK (gf_visible(provider_id));
