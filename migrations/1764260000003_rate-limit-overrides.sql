-- Up Migration
-- Per-account and per-key request limits (requests per minute) that override the plan's.
ALTER TABLE accounts ADD COLUMN rate_limit_rpm integer CHECK (rate_limit_rpm > 0);
ALTER TABLE api_keys ADD COLUMN rate_limit_rpm integer CHECK (rate_limit_rpm > 0);

-- Down Migration
ALTER TABLE api_keys DROP COLUMN rate_limit_rpm;
ALTER TABLE accounts DROP COLUMN rate_limit_rpm;
