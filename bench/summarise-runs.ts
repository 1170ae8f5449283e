// `npx tsx bench/summarise-runs.ts RUN.json RUN.json ...`: the medians (and the spread) of several
// full runs of `npm run bench` (each run's JSON, from BENCH_OUTPUT), per scenario, and the
// issue-22 targets judged on those medians. Prints a Markdown table; `--json` prints the figures.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { median, round } from './lib/stats.js';
import { issue22Targets } from './lib/targets.js';

interface Result {
  id: number;
  title: string;
  ratio?: number;
  cpuUsPerCheck?: number;
  noopCpuUsPerCheck?: number;
  p99Ms?: number;
  noopP99Ms?: number;
  p99Ratio?: number;
  p999Ms?: number;
  noopP999Ms?: number;
  rssAboveNoopAfterFillMb?: number;
}
interface Run {
  startedAt: string;
  startToReadyMs?: { median: number };
  results: Result[];
}

const args = process.argv.slice(2);
const asJson = args.includes('--json');
const files = args.filter((a) => a !== '--json');
if (files.length === 0) {
  process.stderr.write('usage: npx tsx bench/summarise-runs.ts RUN.json [RUN.json ...] [--json]\n');
  process.exit(2);
}
const runs: Run[] = files.map((f) => JSON.parse(readFileSync(path.resolve(f), 'utf8')) as Run);

type Figure = { median: number; min: number; max: number; runs: number[] };
function figure(values: Array<number | undefined>): Figure | undefined {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));
  if (v.length === 0) return undefined;
  return { median: round(median(v), 3), min: round(Math.min(...v), 3), max: round(Math.max(...v), 3), runs: v.map((x) => round(x, 3)) };
}

const ids = [...new Set(runs.flatMap((r) => r.results.map((x) => x.id)))].sort((a, b) => a - b);
const perScenario = ids.map((id) => {
  const rs = runs.map((r) => r.results.find((x) => x.id === id));
  const pick = (k: keyof Result): Figure | undefined => figure(rs.map((x) => x?.[k] as number | undefined));
  const cpuGap = figure(rs.map((x) => (x?.cpuUsPerCheck !== undefined && x.noopCpuUsPerCheck !== undefined ? x.cpuUsPerCheck - x.noopCpuUsPerCheck : undefined)));
  // The bench's own p99 ratio (the median of its per-round ratios, each round's pair run back to back)
  // where it has one; else this run's p99 over the do-nothing server's.
  const p99Ratio = figure(rs.map((x) => x?.p99Ratio ?? (x?.p99Ms !== undefined && x.noopP99Ms ? x.p99Ms / x.noopP99Ms : undefined)));
  return {
    id, title: rs.find(Boolean)!.title, runs: rs.filter(Boolean).length,
    ratio: pick('ratio'), cpuUsPerCheck: pick('cpuUsPerCheck'), noopCpuUsPerCheck: pick('noopCpuUsPerCheck'), cpuGapUs: cpuGap,
    p99Ms: pick('p99Ms'), noopP99Ms: pick('noopP99Ms'), p99Ratio, p999Ms: pick('p999Ms'), noopP999Ms: pick('noopP999Ms'),
    rssAboveNoopAfterFillMb: pick('rssAboveNoopAfterFillMb'),
  };
});
const ready = figure(runs.map((r) => r.startToReadyMs?.median));
const s = (id: number): (typeof perScenario)[number] | undefined => perScenario.find((x) => x.id === id);
const targets = issue22Targets({
  s1Ratio: s(1)?.ratio?.median,
  s2Ratio: s(2)?.ratio?.median,
  s1CpuGapUs: s(1)?.cpuGapUs ? round(s(1)!.cpuGapUs!.median, 1) : undefined,
  s1P99Ratio: s(1)?.p99Ratio ? round(s(1)!.p99Ratio!.median, 2) : undefined,
  rssAboveNoopAfterFillMb: s(6)?.rssAboveNoopAfterFillMb?.median,
  startToReadyMs: ready?.median,
});

if (asJson) {
  process.stdout.write(`${JSON.stringify({ files, startedAt: runs.map((r) => r.startedAt), perScenario, startToReadyMs: ready, targets }, null, 2)}\n`);
} else {
  const f = (x: Figure | undefined, digits = 3): string => (x ? `${round(x.median, digits)} (${round(x.min, digits)}–${round(x.max, digits)})` : '-');
  const lines = [
    `Medians of ${runs.length} runs (${runs.map((r) => r.startedAt).join(', ')}); in brackets the lowest and highest run.`,
    '',
    '| # | scenario | ratio | CPU µs/check | do-nothing CPU µs/check | p99 ms | do-nothing p99 ms | p99 ratio | RSS above do-nothing after the fill, MB |',
    '|---|---|---|---|---|---|---|---|---|',
    ...perScenario.map((x) => `| ${x.id} | ${x.title} | ${f(x.ratio)} | ${f(x.cpuUsPerCheck, 1)} | ${f(x.noopCpuUsPerCheck, 1)} | ${f(x.p99Ms, 2)} | ${f(x.noopP99Ms, 2)} | ${f(x.p99Ratio, 2)} | ${f(x.rssAboveNoopAfterFillMb, 1)} |`),
    '',
    `Start to ready (each run's median): ${f(ready, 0)} ms`,
    '',
    '| target (issue 22) | median of the runs | |',
    '|---|---|---|',
    ...targets.map((t) => `| ${t.name} | ${t.figure} | ${t.met ? 'met' : 'NOT MET'} |`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
