-- The locked index holds only the deliveries in flight (a recorded attempt sets
-- locked_until_ms back to 0), so counting an endpoint's attempts in flight reads those alone,
-- and a claim's read of due deliveries (which sets no condition on the lock) can only be
-- planned on the due index, even before the table's statistics catch up with a burst.
DROP INDEX onephase_webhook_deliveries_locked;
CREATE INDEX onephase_webhook_deliveries_locked
    ON onephase_webhook_deliveries (endpoint_id, locked_until_ms)
    WHERE status = 'pending' AND locked_until_ms > 0;
