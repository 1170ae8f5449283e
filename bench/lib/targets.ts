// Issue 22's four targets, as its done-when words them, in one place: `npm run bench` (run.ts)
// judges one run with them, bench/summarise-runs.ts the medians of several.

export interface Target {
  name: string;
  target: string;
  figure: string;
  met: boolean;
}

export interface Issue22Figures {
  s1Ratio?: number;
  s2Ratio?: number;
  /** Scenario 1's CPU per check minus the do-nothing server's, µs. */
  s1CpuGapUs?: number;
  s1P99Ratio?: number;
  rssAboveNoopAfterFillMb?: number;
  startToReadyMs?: number;
}

/** What each figure was read from, appended to it (e.g. the run's raw numbers). */
export type Details = Partial<Record<'throughput' | 'latency' | 'memory' | 'ready', string>>;

/** The targets whose figures are present; a scenario that did not run gives no verdict. */
export function issue22Targets(f: Issue22Figures, details: Details = {}): Target[] {
  const more = (k: keyof Details): string => (details[k] ? ` (${details[k]})` : '');
  const out: Target[] = [];
  if (f.s1Ratio !== undefined) {
    const ratios = f.s1Ratio >= 0.8 && f.s2Ratio !== undefined && f.s2Ratio >= 0.9;
    out.push({
      name: 'throughput: scenario 1 at >= 0.80 and scenario 2 at >= 0.90 of the do-nothing server, or scenario 1 CPU per check within 20 us of its',
      target: '(>= 0.80 and >= 0.90) or <= 20 us',
      figure: `ratios ${f.s1Ratio} and ${f.s2Ratio ?? '-'}; scenario 1 CPU gap ${f.s1CpuGapUs ?? '-'} us${more('throughput')}`,
      met: ratios || (f.s1CpuGapUs !== undefined && f.s1CpuGapUs <= 20),
    });
  }
  if (f.s1P99Ratio !== undefined) {
    out.push({ name: 'scenario 1 p99 at half the do-nothing maximum', target: '<= 1.5 x do-nothing p99', figure: `x${f.s1P99Ratio}${more('latency')}`, met: f.s1P99Ratio <= 1.5 });
  }
  if (f.rssAboveNoopAfterFillMb !== undefined) {
    out.push({ name: 'RSS after the 100 k fill, above the do-nothing server at the same point', target: '<= 100 MB', figure: `${f.rssAboveNoopAfterFillMb} MB${more('memory')}`, met: f.rssAboveNoopAfterFillMb <= 100 });
  }
  if (f.startToReadyMs !== undefined) {
    out.push({ name: 'start to ready', target: '<= 500 ms', figure: `median ${f.startToReadyMs} ms${more('ready')}`, met: f.startToReadyMs <= 500 });
  }
  return out;
}
