-- Idempotency keys across units: see the MySQL migration of the same name.
CREATE TABLE IF NOT EXISTS key_claims (
    merchant_id  TEXT    NOT NULL,
    out_trade_no TEXT    NOT NULL,
    unit         INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, out_trade_no)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS engine_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS key_fences (
    merchant_id  TEXT    NOT NULL,
    out_trade_no TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, out_trade_no, attempt)
) WITHOUT ROWID;
