-- Whether the dispatcher disabled the endpoint (410 Gone, or failing for too long) rather than a
-- person. Such an endpoint's pending deliveries are dead letters, including one that a send
-- still in flight when it was disabled wrote afterwards; a claim sweeps those up.
ALTER TABLE onephase_webhook_endpoints ADD COLUMN disabled_auto INTEGER NOT NULL DEFAULT 0;
CREATE INDEX onephase_webhook_endpoints_auto_disabled ON onephase_webhook_endpoints (id)
    WHERE disabled_auto;
