-- Up Migration
-- Per-key IP allow-list: canonical CIDR blocks (IPv4 or IPv6); NULL: any address.
ALTER TABLE api_keys ADD COLUMN allowed_cidrs text[] CHECK (allowed_cidrs IS NULL OR cardinality(allowed_cidrs) BETWEEN 1 AND 64);

-- Down Migration
ALTER TABLE api_keys DROP COLUMN allowed_cidrs;
