
-- Offline store-and-forward. Additive only: queued payments are never rewritten.
ALTER TABLE payments ADD COLUMN offline INTEGER NOT NULL DEFAULT 0;
-- FIFO position in the outbox, set once when approved offline.
ALTER TABLE payments ADD COLUMN queue_seq INTEGER;
-- Ageing-clock time the payment entered the outbox.
ALTER TABLE payments ADD COLUMN queued_at_ms INTEGER;
ALTER TABLE payments ADD COLUMN forward_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN last_error TEXT NOT NULL DEFAULT '';
CREATE INDEX payments_outbox ON payments (status, queue_seq);
-- The register's resumable event stream.
CREATE TABLE events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
