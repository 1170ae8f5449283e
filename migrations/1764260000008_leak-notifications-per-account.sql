-- Up Migration
-- One owner notification per account per GitHub report, listing that account's leaked keys. The
-- revocation of each key appends it to its account's row for the report (in the revocation's own
-- transaction); the unique index finds that row while it has not been claimed for delivery yet.
ALTER TABLE leak_notifications ADD COLUMN report_id uuid;
CREATE UNIQUE INDEX leak_notifications_report_account_idx ON leak_notifications (report_id, account_id) WHERE attempts = 0;

-- Undelivered notifications of the per-key kind become the per-account kind, one key each.
UPDATE leak_notifications n
   SET payload = jsonb_build_object(
         'event', 'api_keys.leaked',
         'account_id', n.account_id,
         'account_email', (SELECT a.email FROM accounts a WHERE a.id = n.account_id),
         'report_id', NULL,
         'keys', jsonb_build_array(jsonb_build_object(
           'key_id', n.payload->>'key_id',
           'name', (SELECT k.name FROM api_keys k WHERE k.id = n.payload->>'key_id'),
           'url', n.payload->'url',
           'source', n.payload->'source',
           'revoked_at', n.payload->'revoked_at')))
 WHERE n.delivered_at IS NULL AND n.payload ? 'key_id';

-- Down Migration
DROP INDEX leak_notifications_report_account_idx;
ALTER TABLE leak_notifications DROP COLUMN report_id;
