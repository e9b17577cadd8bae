-- Storage between runs: one row per key of a namespace (see `store/storage.rs`). Keys compare
-- bytewise (COLLATE "C"), like sled's, so pages follow one order on every backend. Writers
-- serialise per key with a transaction-scoped advisory lock (`postgres/storage.rs`).
CREATE TABLE hookflow.storage (
    namespace  text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      json NOT NULL,
    expires_at bigint,
    updated_at bigint NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX storage_expiry ON hookflow.storage (expires_at) WHERE expires_at IS NOT NULL;

-- The answers of writes made under an operation key (a step's idempotency key), so a repeat of
-- the write answers the same without applying it twice; forgotten after `expires_at`.
CREATE TABLE hookflow.storage_applied (
    op_key     text PRIMARY KEY,
    answer     json NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX storage_applied_expiry ON hookflow.storage_applied (expires_at);
