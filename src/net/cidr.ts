// IP addresses and CIDR blocks for per-key allow-lists: IPv4, IPv6, and IPv4-mapped IPv6 judged as IPv4.
import { isIP } from 'node:net';

export interface Cidr {
  family: 4 | 6;
  /** The network address, host bits zero. */
  network: bigint;
  prefix: number;
}

const WIDTH = { 4: 32, 6: 128 } as const;

/** An address as a number; `::ffff:a.b.c.d` becomes the IPv4 address. Undefined for anything else. */
export function parseAddress(text: string): { family: 4 | 6; value: bigint } | undefined {
  const family = isIP(text);
  if (family === 4) return { family: 4, value: v4(text) };
  if (family !== 6) return undefined;
  const value = v6(text);
  if (value >> 32n === 0xffffn) return { family: 4, value: value & 0xffffffffn };
  return { family: 6, value };
}

/** `a.b.c.d/n`, `x::y/n`, or a single address; host bits are cleared. Undefined when not one. */
export function parseCidr(text: string): Cidr | undefined {
  const [address, bits, extra] = text.trim().split('/');
  if (extra !== undefined || address === undefined) return undefined;
  const isMapped = isIP(address) === 6 && (v6(address) >> 32n) === 0xffffn;
  const parsed = parseAddress(address);
  if (!parsed) return undefined;
  const width = isMapped ? 128 : WIDTH[parsed.family];
  let prefix = bits === undefined ? width : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if (!(prefix >= 0 && prefix <= width)) return undefined;
  // An IPv4-mapped block (::ffff:10.0.0.0/104) is the IPv4 block it maps.
  if (isMapped) {
    if (prefix < 96) return undefined;
    prefix -= 96;
  }
  return { family: parsed.family, network: parsed.value & mask(parsed.family, prefix), prefix };
}

export function formatCidr(c: Cidr): string {
  return `${c.family === 4 ? formatV4(c.network) : formatV6(c.network)}/${c.prefix}`;
}

/** Every address of `inner` is in `outer`. */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return outer.family === inner.family && outer.prefix <= inner.prefix && (inner.network & mask(outer.family, outer.prefix)) === outer.network;
}

export function addressInCidrs(address: string | undefined, cidrs: readonly Cidr[]): boolean {
  const a = address === undefined ? undefined : parseAddress(address);
  if (!a) return false;
  return cidrs.some((c) => c.family === a.family && (a.value & mask(c.family, c.prefix)) === c.network);
}

function mask(family: 4 | 6, prefix: number): bigint {
  const width = BigInt(WIDTH[family]);
  return ((1n << width) - 1n) ^ ((1n << (width - BigInt(prefix))) - 1n);
}

function v4(text: string): bigint {
  return text.split('.').reduce((n, part) => (n << 8n) | BigInt(Number(part)), 0n);
}

/** A valid IPv6 text (isIP said so) as a number, with `::` and a dotted IPv4 tail. */
function v6(text: string): bigint {
  const groupsOf = (s: string): number[] => {
    if (s === '') return [];
    const out: number[] = [];
    for (const g of s.split(':')) {
      if (g.includes('.')) {
        const n = Number(v4(g));
        out.push(n >>> 16, n & 0xffff);
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const zone = text.indexOf('%');
  const plain = zone === -1 ? text : text.slice(0, zone);
  const [head, tail] = plain.split('::') as [string, string | undefined];
  const left = groupsOf(head);
  const right = tail === undefined ? [] : groupsOf(tail);
  const groups = tail === undefined ? left : [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
  return groups.reduce((n, g) => (n << 16n) | BigInt(g), 0n);
}

function formatV4(n: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((n >> s) & 0xffn)).join('.');
}

function formatV6(n: bigint): string {
  const groups = Array.from({ length: 8 }, (_, i) => Number((n >> BigInt(112 - 16 * i)) & 0xffffn));
  // The longest run of two or more zero groups becomes "::" (RFC 5952).
  let best = { start: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len && j - i >= 2) best = { start: i, len: j - i };
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.start === -1) return hex.join(':');
  return `${hex.slice(0, best.start).join(':')}::${hex.slice(best.start + best.len).join(':')}`;
}
