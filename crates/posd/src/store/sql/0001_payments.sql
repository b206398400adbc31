
CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    order_reference TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    manual_capture INTEGER NOT NULL,
    status TEXT NOT NULL,
    gateway_key TEXT NOT NULL UNIQUE,
    masked_pan TEXT,
    brand TEXT,
    entry_mode INTEGER,
    wallet INTEGER,
    aid TEXT,
    application_label TEXT,
    verification INTEGER,
    card_fingerprint TEXT,
    -- Reader-encrypted card data; NULL outside CARD_READ / AUTHORIZING.
    encrypted_card BLOB,
    reason_code TEXT NOT NULL DEFAULT '',
    reason_message TEXT NOT NULL DEFAULT '',
    auth_code TEXT NOT NULL DEFAULT '',
    gateway_reference TEXT NOT NULL DEFAULT '',
    demo INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX payments_by_terminal ON payments (terminal_id, created_at_ms);
CREATE INDEX payments_by_created ON payments (created_at_ms, id);
CREATE INDEX payments_by_status ON payments (status);
CREATE TABLE payment_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    at_ms INTEGER NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    cause TEXT NOT NULL
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id, seq);
