-- Owners and guests see only the installations they are members of; titles are unique per provider.

CREATE FUNCTION gf_user() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('gridfleet.user', true), '')::bigint
$$;

CREATE FUNCTION gf_role() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('gridfleet.role', true), '')
$$;

DROP POLICY tenant_isolation ON instances;
CREATE POLICY tenant_isolation ON instances
    USING (
        gf_visible(provider_id)
        AND (gf_role() NOT IN ('owner', 'guest')
             OR id IN (SELECT instance_id FROM instance_users WHERE user_id = gf_user()))
    )
    WITH CHECK (gf_visible(provider_id));

DROP INDEX instances_title_unique;
CREATE UNIQUE INDEX instances_title_unique ON instances (coalesce(provider_id, 0), lower(title));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gridfleet_tenant') THEN
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO gridfleet_tenant', current_schema());
    END IF;
END $$;
