-- One trading unit's database. Nothing here refers to any other unit.
-- utf8mb4_bin: identifiers compare byte for byte, exactly as on SQLite.

CREATE TABLE IF NOT EXISTS orders (
    seq             BIGINT       NOT NULL,  -- the unit's sequence: appends in InnoDB
    merchant_id     VARCHAR(64)  NOT NULL,
    out_trade_no    VARCHAR(64)  NOT NULL,
    user_id         VARCHAR(64)  NOT NULL,
    amount          BIGINT       NOT NULL,  -- minor units
    currency        CHAR(3)      NOT NULL,
    description     VARCHAR(256) NULL,
    status          VARCHAR(16)  NOT NULL,
    paid_amount     BIGINT       NOT NULL,
    refunded_amount BIGINT       NOT NULL,
    payment_ref     VARCHAR(64)  NULL,
    version         BIGINT       NOT NULL,  -- optimistic lock, +1 per change
    created_at_ms   BIGINT       NOT NULL,  -- UTC, ms since the epoch
    updated_at_ms   BIGINT       NOT NULL,
    sections        MEDIUMTEXT   NOT NULL,  -- JSON object of named sections
    PRIMARY KEY (seq),
    UNIQUE KEY uk_orders_merchant_key (merchant_id, out_trade_no),
    KEY ix_orders_user_recent (user_id, created_at_ms, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS refunds (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    order_seq     BIGINT       NOT NULL,
    refund_id     VARCHAR(64)  NOT NULL,
    amount        BIGINT       NOT NULL,
    reason        VARCHAR(256) NULL,
    created_at_ms BIGINT       NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uk_refunds_order_refund (order_seq, refund_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Transactional outbox: every change to an order writes its event here in the
-- same transaction; a relay publishes and marks them.
CREATE TABLE IF NOT EXISTS outbox (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    order_seq       BIGINT      NOT NULL,
    order_version   BIGINT      NOT NULL,
    event_type      VARCHAR(32) NOT NULL,
    payload         MEDIUMTEXT  NOT NULL,
    created_at_ms   BIGINT      NOT NULL,
    published_at_ms BIGINT      NULL,
    PRIMARY KEY (id),
    KEY ix_outbox_unpublished (published_at_ms, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Segment allocator for the unit's order sequence (Leaf "segment" mode).
CREATE TABLE IF NOT EXISTS sequences (
    name       VARCHAR(32) NOT NULL,
    next_value BIGINT      NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT IGNORE INTO sequences (name, next_value) VALUES ('order', 1);
