
-- A payment's newest audit entries, kept in its own row as a JSON array of
-- [ms since created_at_ms, from_status, to_status, cause]: a state change
-- rewrites the row it changes anyway, where an entry in payment_events was
-- one more B-tree page in the synced commit. (A time in ms written out is 13
-- digits, which a card-number scan of the file would report.) payment_events
-- keeps the entries written before this version and those a long history
-- moves out of the row (HISTORY_IN_ROW_BYTES).
ALTER TABLE payments ADD COLUMN history TEXT NOT NULL DEFAULT '[]';
