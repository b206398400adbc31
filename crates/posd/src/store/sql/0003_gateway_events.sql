
-- Gateway events (webhooks) applied, by id: each is applied once.
CREATE TABLE gateway_events (
    event_id TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL,
    kind TEXT NOT NULL,
    transaction_key TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL
);
