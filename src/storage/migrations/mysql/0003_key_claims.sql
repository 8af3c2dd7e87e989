-- Idempotency keys across units (docs/idempotency.md). One row per key that
-- this unit knows of, in one of three roles, told apart by `unit`:
--   unit = this unit, attempt > 0: the key's order is here ("slot"), written
--     in the same transaction as the order;
--   unit = this unit, attempt = 0: a fence: no order for the key will ever
--     be written here;
--   another unit: this unit is one of the key's homes, and `attempt` may
--     write the key's order in that unit ("claim").
-- A row is replaced only by compare-and-set, and never deleted.
CREATE TABLE IF NOT EXISTS key_claims (
    merchant_id  VARCHAR(64) NOT NULL,
    out_trade_no VARCHAR(64) NOT NULL,
    unit         INT         NOT NULL,
    attempt      BIGINT      NOT NULL,
    PRIMARY KEY (merchant_id, out_trade_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Settings every engine process must agree on, fixed the first time the
-- units' databases meet (the key ring: which units are keys' homes).
CREATE TABLE IF NOT EXISTS engine_meta (
    name  VARCHAR(32)  NOT NULL,
    value VARCHAR(4096) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Create attempts that may never write a key's order in this unit: settling
-- an attempt here adds it. An order's slot may take the place of a fence,
-- or of its own attempt's claim, only if its attempt is not listed here.
CREATE TABLE IF NOT EXISTS key_fences (
    merchant_id  VARCHAR(64) NOT NULL,
    out_trade_no VARCHAR(64) NOT NULL,
    attempt      BIGINT      NOT NULL,
    PRIMARY KEY (merchant_id, out_trade_no, attempt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
