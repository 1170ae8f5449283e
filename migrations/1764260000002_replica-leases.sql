-- Up Migration
-- Each replica's lease on its invalidation channels. A revoke waits for every
-- replica listed here with a lease still running to acknowledge, or for that
-- lease to run out (the replica then no longer answers from memory).
CREATE TABLE replica_leases (
  instance_id       text PRIMARY KEY,
  lease_expires_at  timestamptz NOT NULL,
  started_at        timestamptz NOT NULL DEFAULT now()
);

-- Revocations are replayed into Redis from here when Redis comes back.
CREATE INDEX api_keys_revoked_at_idx ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;

-- Down Migration
DROP INDEX api_keys_revoked_at_idx;
DROP TABLE replica_leases;
