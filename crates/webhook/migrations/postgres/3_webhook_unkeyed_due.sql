-- An ordered endpoint's claim reads its unkeyed deliveries apart from the keyed ones (whose
-- turn is found per key, through the order index), so that a key with a long backlog in
-- retry cannot hide the deliveries that may go now.
CREATE INDEX onephase_webhook_deliveries_due_unkeyed
    ON onephase_webhook_deliveries (endpoint_id, next_at_ms, id)
    WHERE status = 'pending' AND partition_key IS NULL;
