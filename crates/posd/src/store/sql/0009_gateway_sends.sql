
-- Operations that may be sent to the gateway more than once (refunds,
-- captures, voids). A row is committed before the first attempt leaves:
-- from then on the operation may be at the gateway, and only the gateway's
-- record under its key settles it, never a later attempt that was not sent.
CREATE TABLE gateway_sends (
    kind TEXT NOT NULL CHECK (kind IN ('refund', 'capture', 'void')),
    op_key TEXT NOT NULL,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    first_sent_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, op_key)
) WITHOUT ROWID;
-- A refund an older posd left pending may have reached the gateway.
INSERT INTO gateway_sends (kind, op_key, payment_id, first_sent_at_ms)
    SELECT 'refund', refund_key, payment_id, updated_at_ms FROM refunds WHERE status = 'pending';
-- A lane's end of day under way with the gateway: its key, committed before
-- the first attempt and reused until the gateway's answer is stored, so a
-- retry returns the batch the first attempt closed.
CREATE TABLE batch_closes (
    terminal_id TEXT PRIMARY KEY,
    batch_key TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
