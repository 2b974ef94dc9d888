-- Meters carry their cost center and energy item, spaces their contact and cost center (MyEMS fields that
-- were refused until the referenced resources existed). A referenced row cannot be deleted while in use.
ALTER TABLE meters
    ADD COLUMN cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT,
    ADD COLUMN energy_item_id bigint REFERENCES energy_items(id) ON DELETE RESTRICT;
ALTER TABLE spaces
    ADD COLUMN contact_id bigint REFERENCES contacts(id) ON DELETE RESTRICT,
    ADD COLUMN cost_center_id bigint REFERENCES cost_centers(id) ON DELETE RESTRICT;
CREATE INDEX meters_cost_center ON meters (cost_center_id) WHERE cost_center_id IS NOT NULL;
CREATE INDEX meters_energy_item ON meters (energy_item_id) WHERE energy_item_id IS NOT NULL;
