-- The W3C traceparent of the request that started the run: the orchestrator's spans for the
-- run are its children, so one trace follows the request through every step.
ALTER TABLE onephase_saga_runs ADD COLUMN traceparent TEXT;
