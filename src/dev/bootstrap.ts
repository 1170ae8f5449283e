// First start of `ryvion-authz dev`: one account and one buyer key, printed once.
//
// Whether that happened is recorded in the database itself (table dev_state, made by `dev`, not by
// the migrations that production runs), so a restart never prints a key again. The key is shown
// before the record is written: a crash in between shows a second, new key on the next start
// rather than leaving the newcomer with none.
import type pg from 'pg';
import type { KeyInfo, KeyRepository } from '../keys/repository.js';

export const BOOTSTRAP_EMAIL = 'dev@example.com';
export const BOOTSTRAP_KEY_NAME = 'bootstrap';

export type Bootstrap =
  | { kind: 'created'; accountId: string; key: KeyInfo; secret: string; markShown: () => Promise<void> }
  | { kind: 'done'; accountId: string; keyId: string; at: Date };

export async function ensureBootstrap(pool: pg.Pool, repository: KeyRepository): Promise<Bootstrap> {
  await pool.query(`CREATE TABLE IF NOT EXISTS dev_state (
    name        text PRIMARY KEY,
    value       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
  )`);
  const done = await pool.query<{ value: { account_id: string; key_id: string }; created_at: Date }>(
    `SELECT value, created_at FROM dev_state WHERE name = 'bootstrap'`,
  );
  const row = done.rows[0];
  if (row) return { kind: 'done', accountId: row.value.account_id, keyId: row.value.key_id, at: row.created_at };

  const existing = await pool.query<{ id: string }>(`SELECT id FROM accounts WHERE email = $1`, [BOOTSTRAP_EMAIL]);
  const accountId = existing.rows[0]?.id ?? (await repository.createAccount(BOOTSTRAP_EMAIL, 'free')).id;
  const { key, secret } = await repository.createKey({ accountId, name: BOOTSTRAP_KEY_NAME, scope: 'buyer', expiresAt: null });
  return {
    kind: 'created',
    accountId,
    key,
    secret,
    markShown: async () => {
      await pool.query(`INSERT INTO dev_state (name, value) VALUES ('bootstrap', $1) ON CONFLICT (name) DO NOTHING`, [
        JSON.stringify({ account_id: accountId, key_id: key.id }),
      ]);
    },
  };
}

/** The text shown once, on stdout: the key, ready-to-paste curl calls, and the Envoy filter. */
export function welcomeText(o: { secret: string; keyId: string; accountId: string; httpPort: number; grpcPort: number; dataDir: string }): string {
  const base = `http://localhost:${o.httpPort}`;
  const target = o.grpcPort === 9191 ? '' : ` --target 127.0.0.1:${o.grpcPort}`;
  return `
================================================================================
ryvion-authz dev: first start. Created account ${o.accountId} (${BOOTSTRAP_EMAIL})
and a buyer key (${o.keyId}). The key is shown this once; only its hash is stored:

  ${o.secret}

Try it (key management API on :${o.httpPort}, gRPC Check on :${o.grpcPort}):

  curl ${base}/api/v1/auth/me -H "Authorization: Bearer ${o.secret}"

  curl -X POST ${base}/api/v1/auth/api-keys -H "Authorization: Bearer ${o.secret}" \\
    -H "Content-Type: application/json" -d '{"name":"my-new-key"}'

  npx ryvion-authz check --key ${o.secret}${target}

Envoy: this HTTP filter (before envoy.filters.http.router) and cluster send every
request through the gate:

http_filters:
  - name: envoy.filters.http.ext_authz
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
      transport_api_version: V3
      grpc_service:
        envoy_grpc: { cluster_name: ryvion_authz }
        timeout: 0.25s
      failure_mode_allow: false
      status_on_error: { code: ServiceUnavailable }
clusters:
  - name: ryvion_authz
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: ryvion_authz
      endpoints:
        - lb_endpoints:
            - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${o.grpcPort} } } }

Data, pepper and keys stay in ${o.dataDir}: restarts keep them (delete it to start over).
================================================================================
`;
}
