-- Up Migration
-- Who created or revoked which key, and when. Never holds a secret or a hash.
CREATE TABLE audit_events (
  id             bigserial PRIMARY KEY,
  occurred_at    timestamptz NOT NULL DEFAULT now(),
  account_id     text NOT NULL,
  -- The key that made the call; NULL when an operator used the CLI.
  actor_key_id   text,
  action         text NOT NULL CHECK (action IN ('key.created', 'key.revoked')),
  target_key_id  text NOT NULL,
  detail         jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_events_account_idx ON audit_events (account_id, occurred_at DESC, id DESC);

-- Down Migration
DROP TABLE audit_events;
