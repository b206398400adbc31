-- Reversals posd owes on a nexo terminal (issue #23): what the terminal booked
-- and posd does not keep (a partial approval, another amount than asked, an
-- approval that came after the register canceled) is reversed at once. The
-- reversal's ServiceID is written here in the commit that stores the
-- terminal's answer, before the ReversalRequest leaves; the row stays open
-- (closed_at_ms NULL) until the terminal booked the reversal.
CREATE TABLE nexo_owed_reversals (
    payment_id TEXT PRIMARY KEY REFERENCES payments (id),
    sale_id TEXT NOT NULL,
    service_id TEXT NOT NULL,
    poi_transaction_id TEXT NOT NULL,
    poi_time_stamp TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    closed_at_ms INTEGER
);
