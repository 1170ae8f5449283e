-- Up Migration
-- LLM limits (issue 19): per account and per key, a JSON object
--   {"tokens_per_minute": n, "budget": {"amount": micro-units, "period": "day"|"week"|"month"}, "allowed_models": [...]}
-- whose absent fields fall back to the plan's (policy file). NULL: the plan's for all.
ALTER TABLE accounts ADD COLUMN token_limits jsonb CHECK (token_limits IS NULL OR (jsonb_typeof(token_limits) = 'object' AND octet_length(token_limits::text) <= 8192));
ALTER TABLE api_keys ADD COLUMN token_limits jsonb CHECK (token_limits IS NULL OR (jsonb_typeof(token_limits) = 'object' AND octet_length(token_limits::text) <= 8192));

-- The durable spend ledger: settled spend (reconciled usage and expired reservations) per subject
-- ('a:<account id>' or 'k:<key id>') per budget period, in micro-units of the policy's currency.
CREATE TABLE spend_ledger (
  subject text NOT NULL,
  period text NOT NULL CHECK (period IN ('day', 'week', 'month')),
  period_start date NOT NULL,
  spent_micros bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subject, period, period_start)
);

-- One row per settled reservation: what makes a ledger batch idempotent (a reservation id is
-- charged once, whichever path reported it and however often).
CREATE TABLE spend_settlements (
  reservation_id text PRIMARY KEY,
  key_id text NOT NULL,
  account_id text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('reconciled', 'expired')),
  cost_micros bigint NOT NULL,
  input_tokens bigint NOT NULL,
  output_tokens bigint NOT NULL,
  settled_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spend_settlements_settled_at ON spend_settlements (settled_at);

-- Down Migration
DROP TABLE spend_settlements;
DROP TABLE spend_ledger;
ALTER TABLE api_keys DROP COLUMN token_limits;
ALTER TABLE accounts DROP COLUMN token_limits;
