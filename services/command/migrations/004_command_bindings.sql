-- Commands bound to meters and spaces (seed 001: /meters/{id}/commands, /spaces/{id}/commands).
--
-- The meter or space is the registry's (checked through its API when a binding is made, and the binding is
-- removed when the registry announces the object deleted); the command is this service's, so deleting it
-- removes its bindings with it.

CREATE TABLE command_bindings (
    kind       text NOT NULL CHECK (kind IN ('meter', 'space')),
    object_id  bigint NOT NULL,
    command_id bigint NOT NULL REFERENCES commands(id) ON DELETE CASCADE,
    bound_by   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, object_id, command_id)
);
CREATE INDEX command_bindings_command ON command_bindings (command_id);
