// Budget periods: calendar day, week (ISO: from Monday) or month, in UTC.
import type { BudgetPeriod } from '../keys/token-limits.js';

/** The first day of the period holding `ms`, as YYYY-MM-DD. */
export function periodStart(period: BudgetPeriod, ms: number): string {
  const d = new Date(ms);
  let start: Date;
  if (period === 'day') start = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  else if (period === 'week') start = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - ((d.getUTCDay() + 6) % 7)));
  else start = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
  return start.toISOString().slice(0, 10);
}

/** When the period holding `ms` ends (ms since the epoch). */
export function periodEnd(period: BudgetPeriod, ms: number): number {
  const start = new Date(`${periodStart(period, ms)}T00:00:00Z`);
  if (period === 'day') return start.getTime() + 86_400_000;
  if (period === 'week') return start.getTime() + 7 * 86_400_000;
  return Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1);
}
