// A key's IP allow-list, judged on the client address the transport reports (Envoy's
// source.address, or the trusted-proxy address in HTTP mode). Kept apart from pipeline.ts.
import { addressInCidrs, parseCidr, type Cidr } from '../net/cidr.js';
import type { KeyRecord } from '../keys/repository.js';
import type { Deny } from './decision.js';

// Records are shared by the cache tiers, so each list is parsed once, not per request.
const parsed = new WeakMap<readonly string[], Cidr[]>();

/** The denial for a key used from outside its allow-list (or from an unknown address); undefined when allowed. */
export function ipAllowListDenial(key: KeyRecord, sourceAddress: string | undefined): Deny | undefined {
  const list = key.allowedCidrs;
  if (!list) return undefined;
  let cidrs = parsed.get(list);
  if (!cidrs) {
    cidrs = list.map((c) => parseCidr(c)).filter((c) => c !== undefined);
    parsed.set(list, cidrs);
  }
  return addressInCidrs(sourceAddress, cidrs) ? undefined : { allow: false, reason: 'ip_not_allowed', identity: key };
}
