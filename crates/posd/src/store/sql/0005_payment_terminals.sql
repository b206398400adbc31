
-- Payment terminals that authorize by themselves (ZVT).
ALTER TABLE payments ADD COLUMN device TEXT NOT NULL DEFAULT 'reader';
CREATE TABLE terminal_results (
    payment_id TEXT PRIMARY KEY REFERENCES payments (id),
    result_code INTEGER NOT NULL,
    receipt_no INTEGER,
    trace INTEGER,
    offline INTEGER NOT NULL,
    -- The terminal's id, 8 digits, kept as a number: as text beside the
    -- payment id it would read as one long digit run in the file.
    terminal_tid INTEGER,
    -- Receipt lines as the terminal sent them, one per line.
    lines TEXT NOT NULL DEFAULT ''
);
-- Records for the gateway's ledger, sent in order, each once (by key).
CREATE TABLE gateway_records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_key TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    kind TEXT NOT NULL CHECK (kind IN ('sale', 'reversal', 'refund')),
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    sent_at_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    -- The gateway refused the record itself: a person looks; later records go on.
    refused INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX gateway_records_pending ON gateway_records (sent_at_ms, refused, seq);
