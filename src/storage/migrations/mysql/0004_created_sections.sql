-- Sections can be replaced after the create (PUT /v1/orders/{id}/sections/{name}):
-- the sections as the create made them are kept here from the first such
-- change on (NULL while they are as created), so that a replay of the create
-- is still told from a different create under the same key. Added last, so
-- MariaDB adds it instantly whatever the table's size.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS created_sections MEDIUMTEXT NULL;
