// The durable spend ledger (Postgres): settled spend per key and account per budget period,
// written in batches. Each settlement (a reconciled or expired reservation) is a row keyed by its
// reservation id, inserted with the ledger's increments in one transaction, so a reservation is
// charged once however many times it is reported. Redis's counters are rebuilt from here.
import type pg from 'pg';
import { asPostgresUnavailable } from '../store/errors.js';
import type { ReservationClaims } from './reservation-id.js';

export interface Settlement {
  id: string;
  claims: ReservationClaims;
  kind: 'reconciled' | 'expired';
  costMicros: number;
  inputTokens: number;
  outputTokens: number;
}

/** `<subject>|<period>|<start>` as the claims name them. */
export function parsePeriod(p: string): { subject: string; period: 'day' | 'week' | 'month'; start: string } | undefined {
  const [subject, period, start] = p.split('|');
  if (!subject || !start || (period !== 'day' && period !== 'week' && period !== 'month')) return undefined;
  return { subject, period, start };
}

const INSERT_SETTLEMENTS = `
  INSERT INTO spend_settlements (reservation_id, key_id, account_id, kind, cost_micros, input_tokens, output_tokens)
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
  ON CONFLICT (reservation_id) DO NOTHING
  RETURNING reservation_id`;

const ADD_TO_LEDGER = `
  INSERT INTO spend_ledger AS l (subject, period, period_start, spent_micros)
  SELECT subject, period, period_start::date, sum(amount) FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(subject, period, period_start, amount)
  GROUP BY subject, period, period_start
  ON CONFLICT (subject, period, period_start) DO UPDATE SET spent_micros = l.spent_micros + EXCLUDED.spent_micros, updated_at = now()`;

export class Ledger {
  private pending: Settlement[] = [];
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly maxBatch = 500,
  ) {}

  /** Queues a settlement for the next batch. */
  add(s: Settlement): void {
    this.pending.push(s);
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  /** Micro-units this replica has settled but not yet written for one counter (added to a seed). */
  pendingFor(subject: string, period: string, start: string): number {
    const tag = `${subject}|${period}|${start}`;
    let sum = 0;
    for (const s of this.pending) if (s.claims.periods.includes(tag)) sum += s.costMicros;
    return sum;
  }

  /** Writes what is queued, in batches; a failed batch stays queued for the next flush. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.pending.length === 0) return Promise.resolve();
    const run = async (): Promise<void> => {
      // After the assignment below, so the `finally` always clears what was assigned.
      await Promise.resolve();
      try {
        while (this.pending.length > 0) {
          const batch = this.pending.slice(0, this.maxBatch);
          await this.write(batch);
          this.pending.splice(0, batch.length);
        }
      } finally {
        this.flushing = undefined;
      }
    };
    this.flushing = run();
    return this.flushing;
  }

  /** Writes settlements now; returns the ids this call settled (the others were settled before). */
  async write(batch: readonly Settlement[]): Promise<Set<string>> {
    if (batch.length === 0) return new Set();
    const client = await this.pool.connect().catch((err: unknown) => {
      throw asPostgresUnavailable(err) ?? err;
    });
    try {
      await client.query('BEGIN');
      const inserted = await client.query<{ reservation_id: string }>(INSERT_SETTLEMENTS, [
        batch.map((s) => s.id),
        batch.map((s) => s.claims.keyId),
        batch.map((s) => s.claims.accountId),
        batch.map((s) => s.kind),
        batch.map((s) => s.costMicros),
        batch.map((s) => s.inputTokens),
        batch.map((s) => s.outputTokens),
      ]);
      const settled = new Set(inserted.rows.map((r) => r.reservation_id));
      const rows: Array<[string, string, string, number]> = [];
      for (const s of batch) {
        if (!settled.has(s.id)) continue;
        for (const p of s.claims.periods) {
          const parsed = parsePeriod(p);
          if (parsed) rows.push([parsed.subject, parsed.period, parsed.start, s.costMicros]);
        }
      }
      if (rows.length > 0) await client.query(ADD_TO_LEDGER, [rows.map((r) => r[0]), rows.map((r) => r[1]), rows.map((r) => r[2]), rows.map((r) => r[3])]);
      await client.query('COMMIT');
      return settled;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw asPostgresUnavailable(err) ?? err;
    } finally {
      client.release();
    }
  }

  /** Settled spend of one counter. */
  async spent(subject: string, period: string, start: string): Promise<number> {
    try {
      const r = await this.pool.query<{ spent_micros: string }>(
        `SELECT spent_micros FROM spend_ledger WHERE subject = $1 AND period = $2 AND period_start = $3::date`,
        [subject, period, start],
      );
      return r.rows[0] ? Number(r.rows[0].spent_micros) : 0;
    } catch (err) {
      throw asPostgresUnavailable(err) ?? err;
    }
  }
}
