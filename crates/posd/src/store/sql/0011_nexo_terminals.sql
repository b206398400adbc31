-- Payment terminals spoken to in nexo "Sale to POI" (Adyen's Terminal API,
-- local; issue #23). A nexo payment or refund goes to the terminal under the
-- lane's SaleID and a ServiceID, both written in the commit that starts it
-- there, before the request leaves: one in doubt is asked for by them
-- (TransactionStatus). NULL: it never went to a nexo terminal.
ALTER TABLE payments ADD COLUMN nexo_sale_id TEXT;
ALTER TABLE payments ADD COLUMN nexo_service_id TEXT;
ALTER TABLE refunds ADD COLUMN nexo_sale_id TEXT;
ALTER TABLE refunds ADD COLUMN nexo_service_id TEXT;
-- The terminal's own id and time stamp of the transaction (POITransactionID),
-- what a reversal of it names.
ALTER TABLE terminal_results ADD COLUMN poi_transaction_id TEXT;
ALTER TABLE terminal_results ADD COLUMN poi_time_stamp TEXT;
-- The last ServiceID counter value per SaleID, raised in the commit that
-- uses it: ServiceIDs stay unique per SaleID across restarts.
CREATE TABLE nexo_service_ids (
    sale_id TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
