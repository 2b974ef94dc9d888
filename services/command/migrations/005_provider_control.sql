-- External signal providers steering over MQTT (CONTRACTS.md §2.2).
--
-- provider_links: this service's copy of the onboarding service's links (ProviderLinkChanged events, and
-- GET /internal/links?state=active at start-up). A provider steers an installation only while its link is
-- `active`, and only the groups listed. `changed_ms` orders the events: an older one never overwrites a newer.
CREATE TABLE provider_links (
    provider_id     bigint NOT NULL,
    installation_id bigint NOT NULL,
    state           text NOT NULL CHECK (state IN ('pending', 'active', 'rejected', 'offboarded')),
    device_groups   text[] NOT NULL DEFAULT '{}',
    changed_ms      bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider_id, installation_id)
);
CREATE INDEX provider_links_active ON provider_links (installation_id) WHERE state = 'active';

-- A provider's request id travels with what it created, and every later acknowledgement to the provider
-- (applied, expired, removed) is sent from these rows once (an outbox: *_acked_at records it was sent).
ALTER TABLE policies ADD COLUMN request_id text,
    ADD COLUMN applied_acked_at timestamptz,
    ADD COLUMN end_acked_at timestamptz;
ALTER TABLE schedules ADD COLUMN request_id text,
    ADD COLUMN stored_acked_at timestamptz,
    ADD COLUMN end_acked_at timestamptz;

ALTER TABLE policies DROP CONSTRAINT policies_end_reason_check;
ALTER TABLE policies ADD CONSTRAINT policies_end_reason_check
    CHECK (end_reason IN ('replaced', 'removed', 'expired', 'installation deleted', 'offboarded'));
ALTER TABLE schedules DROP CONSTRAINT schedules_end_reason_check;
ALTER TABLE schedules ADD CONSTRAINT schedules_end_reason_check
    CHECK (end_reason IN ('replaced', 'removed', 'finished', 'installation deleted', 'offboarded'));

CREATE INDEX policies_provider_acks ON policies (created_at) WHERE request_id IS NOT NULL
    AND ((applied_at IS NOT NULL AND applied_acked_at IS NULL) OR (ended_at IS NOT NULL AND end_acked_at IS NULL));
CREATE INDEX schedules_provider_acks ON schedules (created_at) WHERE request_id IS NOT NULL
    AND ((stored_at IS NOT NULL AND stored_acked_at IS NULL) OR (ended_at IS NOT NULL AND end_acked_at IS NULL));
