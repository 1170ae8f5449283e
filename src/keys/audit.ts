// The audit trail of key management: who created or revoked which key. Never a secret.

export type AuditAction = 'key.created' | 'key.revoked' | 'key.rolled';

/**
 * Who made a change: a key over the HTTP API, an operator at the CLI (no key), or the service
 * itself: the sweeper ending a roll's overlap, or a leak reported by secret scanning.
 */
export interface AuditActor {
  /** The calling key's id; null for the CLI and the service itself. */
  keyId: string | null;
  via: 'api' | 'cli' | 'sweeper' | 'secret_scanning';
  /** The HTTP request's x-request-id, to find the matching log lines. */
  requestId?: string;
}

export interface AuditEvent {
  id: number;
  occurredAt: Date;
  accountId: string;
  actorKeyId: string | null;
  action: AuditAction;
  targetKeyId: string;
  detail: Record<string, unknown>;
}

/** The `detail` column: how the change was made plus what the action adds (names, scopes, dates; no secrets). */
export function auditDetail(actor: AuditActor, extra: Record<string, string | null> = {}): Record<string, string | null> {
  return { via: actor.via, ...(actor.requestId ? { request_id: actor.requestId } : {}), ...extra };
}
