-- Reversals of nexo payments (issue #23): a void the register asked for, or
-- one posd owes (a partial approval, an approval after the register's
-- cancel). Each attempt is a row under the SaleID and ServiceID it goes to
-- the terminal under, written in the commit that moves the lane's counter
-- past that ServiceID, before the request leaves. A 'pending' row may be at
-- the terminal: only a TransactionStatus for its ServiceID settles it. A
-- payment owes a reversal while it has an 'owed' row and none of its rows
-- (owed or void: each reverses the whole POI transaction) is 'booked'. The
-- payment driver writes an owed row in the commit that stores the terminal's
-- answer that makes it owed.
CREATE TABLE nexo_reversals (
    sale_id TEXT NOT NULL,
    service_id TEXT NOT NULL,
    payment_id TEXT NOT NULL REFERENCES payments (id),
    kind TEXT NOT NULL,
    sale_transaction_id TEXT NOT NULL,
    poi_transaction_id TEXT NOT NULL,
    poi_time_stamp TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    status TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sale_id, service_id)
);
CREATE INDEX nexo_reversals_by_payment ON nexo_reversals (payment_id);
