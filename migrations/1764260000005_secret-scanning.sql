-- Up Migration
-- Owner notifications about leaked keys revoked from secret scanning: an outbox, written in the
-- revocation's transaction and delivered in the background until the webhook accepts it.
CREATE TABLE leak_notifications (
  id               bigserial PRIMARY KEY,
  account_id       text NOT NULL REFERENCES accounts (id),
  payload          jsonb NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  attempts         integer NOT NULL DEFAULT 0,
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  delivered_at     timestamptz
);

CREATE INDEX leak_notifications_due_idx ON leak_notifications (next_attempt_at) WHERE delivered_at IS NULL;

-- Down Migration
DROP TABLE leak_notifications;
