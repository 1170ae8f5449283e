// The client address on HTTP_PORT, one rule for /authz and the key API: forwarding headers count
// only when the peer is a trusted proxy (TRUSTED_PROXIES), so a client cannot pick its own address.
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';
import type { TrustedProxies } from '../../net/trusted-proxies.js';

/**
 * The peer, unless it is a trusted proxy: then the nearest `x-forwarded-for` entry, from the
 * right, that is not a trusted proxy (each proxy appends the peer it saw, so entries left of an
 * untrusted one are the client's own words), else `x-real-ip`, else the peer.
 */
export function clientAddress(req: IncomingMessage, trusted: TrustedProxies): string | undefined {
  const peer = plain(req.socket.remoteAddress);
  if (peer === undefined || !trusted.has(peer)) return peer;
  const hops: string[] = [];
  let realIp: string | undefined;
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === 'x-forwarded-for') hops.push(...raw[i + 1]!.split(','));
    else if (name === 'x-real-ip') realIp ??= raw[i + 1]!;
  }
  let nearest = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = plain(hops[i]!.trim());
    // Not written by a proxy we trust: the last address one of them did write is as far as we know.
    if (hop === undefined) return nearest;
    if (!trusted.has(hop)) return hop;
    nearest = hop;
  }
  if (hops.length > 0) return nearest;
  return plain(realIp?.trim()) ?? peer;
}

/** An IP address in canonical text, IPv4-mapped IPv6 as IPv4; undefined for anything else. */
function plain(address: string | undefined): string | undefined {
  if (!address) return undefined;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (isIP(v4) === 4) return v4;
  return isIP(address) === 6 ? address.toLowerCase() : undefined;
}
