-- The W3C traceparent of the request that sent the message: each delivery attempt's span is
-- its child, and the receiver gets the attempt's own traceparent header.
ALTER TABLE onephase_webhook_messages ADD COLUMN traceparent TEXT;
