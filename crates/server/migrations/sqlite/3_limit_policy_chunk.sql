-- Hybrid policies: decide in process on chunks of this many units leased from the shared
-- store. NULL: every decision asks the store.
ALTER TABLE onephase_limit_policies ADD COLUMN chunk BIGINT;
