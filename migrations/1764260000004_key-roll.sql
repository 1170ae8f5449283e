-- Up Migration
-- A rolled key's successor names it; at most one successor per key, so a key is rolled once
-- (roll the successor to rotate again).
ALTER TABLE api_keys ADD COLUMN successor_of text REFERENCES api_keys (id);
CREATE UNIQUE INDEX api_keys_successor_of_idx ON api_keys (successor_of) WHERE successor_of IS NOT NULL;
-- Recent rolls are replayed into Redis with recent revocations.
CREATE INDEX api_keys_recent_successors_idx ON api_keys (created_at) WHERE successor_of IS NOT NULL;

ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check CHECK (action IN ('key.created', 'key.revoked', 'key.rolled'));

-- Down Migration
DELETE FROM audit_events WHERE action = 'key.rolled';
ALTER TABLE audit_events DROP CONSTRAINT audit_events_action_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_action_check CHECK (action IN ('key.created', 'key.revoked'));
DROP INDEX api_keys_recent_successors_idx;
DROP INDEX api_keys_successor_of_idx;
ALTER TABLE api_keys DROP COLUMN successor_of;
