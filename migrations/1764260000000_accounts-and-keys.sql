-- Up Migration
CREATE TABLE accounts (
  id          text PRIMARY KEY,
  email       text NOT NULL UNIQUE,
  plan        text NOT NULL DEFAULT 'free',
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
  id              text PRIMARY KEY,
  account_id      text NOT NULL REFERENCES accounts (id),
  name            text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
  scope           text NOT NULL,
  -- HMAC-SHA256 of the key under pepper `pepper_version`; the key itself is never stored.
  key_hash        bytea NOT NULL UNIQUE,
  pepper_version  integer NOT NULL,
  display_prefix  text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  expires_at      timestamptz,
  last_used_at    timestamptz,
  revoked_at      timestamptz,
  -- Bumped by every change that caches must not miss (revocation); cache fills compare it.
  version         bigint NOT NULL DEFAULT 1
);

CREATE INDEX api_keys_account_id_idx ON api_keys (account_id);

-- Down Migration
DROP TABLE api_keys;
DROP TABLE accounts;
