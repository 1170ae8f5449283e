// TRUSTED_PROXIES: the peers whose forwarding headers count (transport/http/client-address.ts).
// Here, below config.ts, so that a bad value is refused at start-up with the rest of the config.
import { BlockList, isIP } from 'node:net';

/**
 * Loopback only: a proxy on the same host or in the same pod. A proxy elsewhere must be named
 * (the Helm chart sets the cluster's private ranges), or every client behind it shares its address.
 */
export const DEFAULT_TRUSTED_PROXIES = '127.0.0.0/8,::1/128';

export class TrustedProxies {
  private readonly list = new BlockList();

  /** `spec`: comma-separated CIDRs or single addresses; throws on the first that is not one. */
  constructor(spec: string) {
    for (const raw of spec.split(',')) {
      const item = raw.trim();
      if (item === '') continue;
      const [address, bits, extra] = item.split('/');
      const family = isIP(address ?? '');
      const max = family === 4 ? 32 : 128;
      const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
      if (family === 0 || extra !== undefined || !(prefix >= 0 && prefix <= max)) throw new Error(`"${item.slice(0, 64)}" is not an IP address or CIDR`);
      this.list.addSubnet(address!, prefix, family === 4 ? 'ipv4' : 'ipv6');
    }
  }

  has(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && this.list.check(address, family === 4 ? 'ipv4' : 'ipv6');
  }
}
