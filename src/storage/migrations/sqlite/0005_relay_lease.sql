-- See the MySQL migration of the same name.
CREATE TABLE IF NOT EXISTS relay_lease (
    id            INTEGER NOT NULL PRIMARY KEY,
    holder        TEXT    NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

INSERT OR IGNORE INTO relay_lease (id, holder, expires_at_ms) VALUES (1, '', 0);
