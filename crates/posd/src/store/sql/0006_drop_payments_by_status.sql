
-- Fewer pages written by each payment state change, which is a synced commit.
-- payments_outbox (status, queue_seq) serves every lookup by status.
DROP INDEX payments_by_status;
