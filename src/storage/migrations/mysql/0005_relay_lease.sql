-- The outbox relay's lease: one engine process at a time publishes this
-- unit's events (docs/events.md). `holder` names the process; another may
-- take the lease once `expires_at_ms` has passed.
CREATE TABLE IF NOT EXISTS relay_lease (
    id            INT          NOT NULL,
    holder        VARCHAR(128) NOT NULL,
    expires_at_ms BIGINT       NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT IGNORE INTO relay_lease (id, holder, expires_at_ms) VALUES (1, '', 0);
