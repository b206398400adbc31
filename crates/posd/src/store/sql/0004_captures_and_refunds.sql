
-- Captures and refunds.
ALTER TABLE payments ADD COLUMN captured_minor INTEGER NOT NULL DEFAULT 0;
CREATE TABLE refunds (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
    currency TEXT NOT NULL,
    -- posd's key for the gateway, reused on every retry.
    refund_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason TEXT NOT NULL,
    failure_code TEXT NOT NULL DEFAULT '',
    failure_message TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX refunds_by_payment ON refunds (payment_id, created_at_ms);
