-- The supervisor's synthetic order: a real write, read and commit in the
-- unit's database (not SELECT 1), so a probe fails whenever creates would.
CREATE TABLE IF NOT EXISTS probe (
    id            INTEGER NOT NULL PRIMARY KEY,
    token         INTEGER NOT NULL,
    written_at_ms INTEGER NOT NULL
);

INSERT OR IGNORE INTO probe (id, token, written_at_ms) VALUES (1, 0, 0);
