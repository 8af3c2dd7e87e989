-- One trading unit's database. Nothing here refers to any other unit.

CREATE TABLE IF NOT EXISTS orders (
    seq             INTEGER NOT NULL PRIMARY KEY,  -- the unit's sequence
    merchant_id     TEXT    NOT NULL,
    out_trade_no    TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    amount          INTEGER NOT NULL,              -- minor units
    currency        TEXT    NOT NULL,
    description     TEXT    NULL,
    status          TEXT    NOT NULL,
    paid_amount     INTEGER NOT NULL,
    refunded_amount INTEGER NOT NULL,
    payment_ref     TEXT    NULL,
    version         INTEGER NOT NULL,              -- optimistic lock, +1 per change
    created_at_ms   INTEGER NOT NULL,              -- UTC, ms since the epoch
    updated_at_ms   INTEGER NOT NULL,
    sections        TEXT    NOT NULL               -- JSON object of named sections
);
CREATE UNIQUE INDEX IF NOT EXISTS uk_orders_merchant_key ON orders (merchant_id, out_trade_no);
CREATE INDEX IF NOT EXISTS ix_orders_user_recent ON orders (user_id, created_at_ms, seq);

CREATE TABLE IF NOT EXISTS refunds (
    id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    order_seq     INTEGER NOT NULL,
    refund_id     TEXT    NOT NULL,
    amount        INTEGER NOT NULL,
    reason        TEXT    NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uk_refunds_order_refund ON refunds (order_seq, refund_id);

-- Transactional outbox: every change to an order writes its event here in the
-- same transaction; a relay publishes and marks them.
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    order_seq       INTEGER NOT NULL,
    order_version   INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    published_at_ms INTEGER NULL
);
CREATE INDEX IF NOT EXISTS ix_outbox_unpublished ON outbox (published_at_ms, id);

-- Segment allocator for the unit's order sequence (Leaf "segment" mode).
CREATE TABLE IF NOT EXISTS sequences (
    name       TEXT    NOT NULL PRIMARY KEY,
    next_value INTEGER NOT NULL
);

INSERT OR IGNORE INTO sequences (name, next_value) VALUES ('order', 1);
