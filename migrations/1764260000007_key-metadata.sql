-- Up Migration
-- A small JSON object per key (at most 1 KiB as the API receives it; the bound here is looser
-- because jsonb's text form adds spaces).
ALTER TABLE api_keys ADD COLUMN metadata jsonb CHECK (metadata IS NULL OR (jsonb_typeof(metadata) = 'object' AND octet_length(metadata::text) <= 4096));

-- Down Migration
ALTER TABLE api_keys DROP COLUMN metadata;
