-- The digest of the registry read model last applied (services/aggregation/model.py): a sync that fetches
-- the same model again (an unrelated registry change, the one-minute timer) skips the diff. `applies` counts
-- the syncs that did diff and write.
CREATE TABLE model_state (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    digest     text        NOT NULL,
    applies    bigint      NOT NULL,
    applied_at timestamptz NOT NULL
);
