-- Privileges (MyEMS /privileges): `data: {"spaces": [ids]}` narrows a user to those spaces and everything
-- below them. The registry expands the subtree when it verifies the user's token; the connection's scope
-- carries the allowed ids (gridfleet.spaces) and the policies below apply them.

CREATE TABLE privileges (
    id          bigserial PRIMARY KEY,
    uuid        uuid NOT NULL UNIQUE,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    provider_id bigint REFERENCES providers(id) ON DELETE RESTRICT DEFAULT gf_provider(),
    description text
);
CREATE UNIQUE INDEX privileges_name_per_provider ON privileges (coalesce(provider_id, 0), name);
ALTER TABLE privileges ENABLE ROW LEVEL SECURITY;
ALTER TABLE privileges FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON privileges USING (gf_visible(provider_id)) WITH CHECK (gf_visible(provider_id));

ALTER TABLE users ADD COLUMN privilege_id bigint REFERENCES privileges(id) ON DELETE SET NULL;

CREATE FUNCTION gf_spaces() RETURNS bigint[] LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('gridfleet.spaces', true), '')::bigint[]
$$;

DROP POLICY tenant_isolation ON spaces;
CREATE POLICY tenant_isolation ON spaces
    USING (gf_visible(provider_id) AND (gf_spaces() IS NULL OR id = ANY (gf_spaces())))
    WITH CHECK (gf_visible(provider_id));

DROP POLICY tenant_isolation ON meters;
CREATE POLICY tenant_isolation ON meters
    USING (
        gf_visible(provider_id)
        AND (gf_spaces() IS NULL
             OR EXISTS (SELECT 1 FROM space_meters sm WHERE sm.meter_id = meters.id AND sm.space_id = ANY (gf_spaces())))
    )
    WITH CHECK (gf_visible(provider_id));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gridfleet_tenant') THEN
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO gridfleet_tenant', current_schema());
    END IF;
END $$;
