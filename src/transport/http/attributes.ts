// Narrows a plain HTTP request to the RequestAttributes the decision pipeline reads.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { splitJoined, type RequestAttributes } from '../../check/attributes.js';
import { acceptRequestId } from '../../check/request-id.js';
import type { TrustedProxies } from '../../net/trusted-proxies.js';
import { clientAddress } from './client-address.js';

/**
 * Reads every occurrence of the credential headers from `rawHeaders`: Node's
 * `headers` keeps only the first `authorization` and joins other repeats, and
 * a repeated credential header must be a 401, as it is on Check. Identity
 * headers (`x-ryvion-*`) are never read.
 */
export function toAttributes(req: IncomingMessage, trustedProxies: TrustedProxies): RequestAttributes {
  const authorization: string[] = [];
  const apiKey: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === 'authorization') authorization.push(...splitJoined(raw[i + 1]!));
    else if (name === 'x-api-key') apiKey.push(...splitJoined(raw[i + 1]!));
  }
  return {
    method: req.method ?? '',
    path: req.url ?? '/',
    authorization,
    apiKey,
    requestId: clientRequestId(req),
    sourceAddress: clientAddress(req, trustedProxies),
  };
}

/** The client's (or proxy's) first `x-request-id` when it is a safe value (check/request-id.ts), else a new UUID. */
export function requestIdOf(req: IncomingMessage): string {
  return clientRequestId(req) ?? randomUUID();
}

function clientRequestId(req: IncomingMessage): string | undefined {
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'x-request-id') {
      return acceptRequestId(raw[i + 1]!.trim());
    }
  }
  return undefined;
}
