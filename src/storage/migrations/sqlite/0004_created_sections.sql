-- See the MySQL migration of the same name.
ALTER TABLE orders ADD COLUMN created_sections TEXT NULL;
