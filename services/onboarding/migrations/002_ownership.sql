-- Device ownership (seed 003): activation codes, claims and transfers, their history, wrong-code attempts.
--
-- The registry keeps who owns and shares an installation (instance_users); this schema keeps how that came
-- about. Codes are stored as SHA-256 digests of their normalised form (random, 80 bits): never the code.

CREATE TABLE activation_codes (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('single', 'group', 'license')),
    code_digest     text NOT NULL UNIQUE,
    provider_id     bigint,
    sales_order     text,
    description     text,
    -- license codes: the service, the type and how long the license runs
    service         text,
    license_type    text CHECK (license_type IN ('Basic', 'PRO', 'Elite')),
    duration_days   double precision CHECK (duration_days > 0),
    created_by      bigint,
    created_by_name text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    used_at         timestamptz,
    used_by         bigint,
    used_by_name    text,
    used_for        text,
    CONSTRAINT activation_codes_license_fields CHECK (
        (kind = 'license') = (service IS NOT NULL AND license_type IS NOT NULL AND duration_days IS NOT NULL)),
    CONSTRAINT activation_codes_group_order CHECK (kind <> 'group' OR sales_order IS NOT NULL),
    CONSTRAINT activation_codes_used_together CHECK ((used_at IS NULL) = (used_by IS NULL))
);
CREATE INDEX activation_codes_provider ON activation_codes (provider_id, id);

CREATE TABLE activation_code_installations (
    code_id     bigint NOT NULL REFERENCES activation_codes(id) ON DELETE CASCADE,
    instance_id bigint NOT NULL,
    serial      text,
    PRIMARY KEY (code_id, instance_id)
);
CREATE INDEX activation_code_installations_instance ON activation_code_installations (instance_id);

CREATE TABLE device_claims (
    id            bigserial PRIMARY KEY,
    instance_id   bigint NOT NULL,
    provider_id   bigint,
    claimant_id   bigint NOT NULL,
    claimant_name text,
    owner_id      bigint NOT NULL,  -- the owner when the claim was made
    owner_name    text,
    code_id       bigint REFERENCES activation_codes(id) ON DELETE SET NULL,
    state         text NOT NULL DEFAULT 'transfer_pending'
                  CHECK (state IN ('transfer_pending', 'accepted', 'rejected', 'cancelled')),
    reason        text,
    keep_shares   boolean,
    created_at    timestamptz NOT NULL DEFAULT now(),
    decided_at    timestamptz,
    decided_by    bigint
);
-- One claim at a time per device: a second one racing the first fails on this index.
CREATE UNIQUE INDEX device_claims_one_pending ON device_claims (instance_id) WHERE state = 'transfer_pending';
CREATE INDEX device_claims_claimant ON device_claims (claimant_id, id);
CREATE INDEX device_claims_instance ON device_claims (instance_id, id);

CREATE TABLE device_history (
    id          bigserial PRIMARY KEY,
    instance_id bigint NOT NULL,
    license_id  bigint,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text NOT NULL,
    actor_id    bigint,
    actor_name  text,
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX device_history_instance ON device_history (instance_id, id);

-- Wrong codes entered, per user and per client address: sliding windows decide when entering codes is
-- paused (429).
CREATE TABLE code_failures (
    id      bigserial PRIMARY KEY,
    user_id bigint NOT NULL,
    address text,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX code_failures_user ON code_failures (user_id, at);
CREATE INDEX code_failures_address ON code_failures (address, at) WHERE address IS NOT NULL;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gridfleet_tenant') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO gridfleet_tenant', current_schema());
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO gridfleet_tenant', current_schema());
    END IF;
END $$;

-- Tenancy as elsewhere (the functions come from 001): the service reads these tables as the system and checks
-- the caller's provider itself; the policies keep a tenant-scoped connection to its own provider's rows.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['activation_codes', 'device_claims'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (gf_visible(provider_id))'
                       ' WITH CHECK (gf_visible(provider_id))', t);
    END LOOP;
END $$;
