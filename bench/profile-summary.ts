// Summarises a V8 .cpuprofile (node --cpu-prof): self time by package / area and by function.
// Usage: npx tsx bench/profile-summary.ts FILE.cpuprofile [top-N]
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Where a frame's code lives: a package, our own source, Node's internals, or V8 itself. */
export function areaOf(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1]!;
  const own = /\/(src|bench)\/(.*)$/.exec(url);
  if (own) return `${own[1]}/${own[2]!.split('/').slice(0, -1).join('/') || '.'}`;
  if (url.startsWith('node:')) {
    const m = /^node:(internal\/)?([^/]+)/.exec(url);
    return `node:${m?.[2] ?? url}`;
  }
  return url;
}

export function summarise(profile: Profile, top = 25): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const areas = new Map<string, number>();
  const fns = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    const area = areaOf(url, functionName);
    areas.set(area, (areas.get(area) ?? 0) + us);
    const name = `${functionName || '(anonymous)'} ${url ? `${url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${lineNumber + 1}` : ''}`;
    fns.set(name, (fns.get(name) ?? 0) + us);
  }
  // Inclusive time: a node's self time plus its descendants', summed per function (a function
  // that appears under itself is counted once per distinct call path, so recursion over-counts).
  const inclusive = new Map<number, number>();
  const incl = (id: number): number => {
    const cached = inclusive.get(id);
    if (cached !== undefined) return cached;
    const n = byId.get(id)!;
    let t = self.get(id) ?? 0;
    for (const c of n.children ?? []) t += incl(c);
    inclusive.set(id, t);
    return t;
  };
  const totalFns = new Map<string, number>();
  const onStack = new Map<string, number>();
  const walk = (id: number): void => {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    const name = `${functionName || '(anonymous)'} ${url ? `${url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${lineNumber + 1}` : ''}`;
    const depth = onStack.get(name) ?? 0;
    if (depth === 0) totalFns.set(name, (totalFns.get(name) ?? 0) + incl(id));
    onStack.set(name, depth + 1);
    for (const c of n.children ?? []) walk(c);
    onStack.set(name, depth);
  };
  walk(profile.nodes[0]!.id);
  const pct = (us: number): string => `${((100 * us) / total).toFixed(1).padStart(5)} %`;
  const lines = [`total sampled ${(total / 1e6).toFixed(2)} s`, '', 'self time by area:'];
  for (const [a, us] of [...areas].sort((x, y) => y[1] - x[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${a}`);
  lines.push('', 'self time by function:');
  for (const [f, us] of [...fns].sort((x, y) => y[1] - x[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${f}`);
  lines.push('', 'total (inclusive) time by function:');
  for (const [f, us] of [...totalFns].sort((x, y) => y[1] - x[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${f}`);
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: tsx bench/profile-summary.ts FILE.cpuprofile [top-N]\n');
    process.exit(2);
  }
  process.stdout.write(summarise(JSON.parse(readFileSync(file, 'utf8')) as Profile, Number(process.argv[3] ?? 25)) + '\n');
}
