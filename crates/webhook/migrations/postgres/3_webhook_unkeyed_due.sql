-- An ordered endpoint's claim reads its unkeyed deliveries apart from the keyed ones (whose
-- turn is found per key, through the order index), so that a key with a long backlog in
-- retry cannot hide the deliveries that may go now. Each delivery carries its endpoint's
-- `ordered` (fixed when the endpoint is created), so that this index holds only ordered
-- endpoints' unkeyed deliveries and costs unordered endpoints nothing.
ALTER TABLE onephase_webhook_deliveries ADD COLUMN ordered BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE onephase_webhook_deliveries d SET ordered = TRUE
    FROM onephase_webhook_endpoints e WHERE e.id = d.endpoint_id AND e.ordered;
CREATE INDEX onephase_webhook_deliveries_due_unkeyed
    ON onephase_webhook_deliveries (endpoint_id, next_at_ms, id)
    WHERE status = 'pending' AND partition_key IS NULL AND ordered;
