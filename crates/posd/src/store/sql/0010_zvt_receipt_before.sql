-- The lane's last payment-terminal receipt number when a ZVT payment or
-- refund started (-1: none known yet), kept with its row and written in the
-- commit that starts it on the terminal; NULL: it never reached a terminal.
-- Until now they were `meta` rows `zvt_before:<id>`, one per payment and
-- refund, never deleted: they move here and are gone from `meta`.
ALTER TABLE payments ADD COLUMN zvt_receipt_before INTEGER;
ALTER TABLE refunds ADD COLUMN zvt_receipt_before INTEGER;
UPDATE payments SET zvt_receipt_before = (SELECT value FROM meta WHERE key = 'zvt_before:' || payments.id)
WHERE EXISTS (SELECT 1 FROM meta WHERE key = 'zvt_before:' || payments.id);
UPDATE refunds SET zvt_receipt_before = (SELECT value FROM meta WHERE key = 'zvt_before:' || refunds.id)
WHERE EXISTS (SELECT 1 FROM meta WHERE key = 'zvt_before:' || refunds.id);
DELETE FROM meta WHERE substr(key, 1, 11) = 'zvt_before:';
