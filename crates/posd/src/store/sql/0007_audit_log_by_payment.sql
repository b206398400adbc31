
-- The audit log, kept in one B-tree clustered by payment: an entry is one
-- page write, where the rowid table wrote its row, its index entry and (for
-- AUTOINCREMENT) the sqlite_sequence row. seq orders a payment's entries; the
-- entries copied here keep theirs, new ones continue after the payment's last.
CREATE TABLE payment_events_v7 (
    payment_id TEXT NOT NULL REFERENCES payments (id),
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    cause TEXT NOT NULL,
    PRIMARY KEY (payment_id, seq)
) WITHOUT ROWID;
INSERT INTO payment_events_v7 (payment_id, seq, at_ms, from_status, to_status, cause)
    SELECT payment_id, seq, at_ms, from_status, to_status, cause FROM payment_events;
DROP TABLE payment_events;
ALTER TABLE payment_events_v7 RENAME TO payment_events;
DELETE FROM sqlite_sequence WHERE name = 'payment_events';
-- The outbox's next FIFO position, found without reading every payment.
CREATE INDEX payments_queue ON payments (queue_seq) WHERE queue_seq IS NOT NULL;
