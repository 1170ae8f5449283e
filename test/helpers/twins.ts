// In-memory twins of the pipeline's stores, for unit tests: the key source (KeySource), the
// Postgres key look-up (KeyLookup) and the shared rate-limit count (SharedGcra). The clock's twin
// is src/time/fake-clock.ts.
import type { KeySource } from '../../src/check/pipeline.js';
import type { KeyHash } from '../../src/keys/hash.js';
import { LookupThrottledError, type PostgresGuard } from '../../src/keys/lookup-guard.js';
import type { KeyLookup, KeyRecord } from '../../src/keys/repository.js';
import { gcra, type GcraResult, type Limit } from '../../src/ratelimit/gcra.js';
import type { SharedGcra } from '../../src/ratelimit/limiter.js';
import { StoreUnavailableError } from '../../src/store/errors.js';

const idOf = (c: readonly KeyHash[]): string => c[0]!.hash.toString('base64url');

/** Memory answers synchronously; the "store" behind it asks the guard, can be down, and counts its look-ups. */
export class InMemoryKeySource implements KeySource {
  readonly memory = new Map<string, KeyRecord>();
  readonly store = new Map<string, KeyRecord>();
  storeLookups = 0;
  down = false;

  find(c: readonly KeyHash[], beforePostgres?: PostgresGuard): KeyRecord | Promise<KeyRecord | null> {
    return this.memory.get(idOf(c)) ?? this.fromStore(idOf(c), beforePostgres);
  }

  private async fromStore(id: string, beforePostgres?: PostgresGuard): Promise<KeyRecord | null> {
    const wait = beforePostgres?.() ?? 0;
    if (wait > 0) throw new LookupThrottledError(wait);
    this.storeLookups++;
    if (this.down) throw new StoreUnavailableError('postgres', 'timeout');
    return this.store.get(id) ?? null;
  }
}

/** Postgres's key table; each look-up waits until the test releases it, so tests can hold look-ups in flight. */
export class HeldKeyLookup implements KeyLookup {
  readonly records = new Map<string, KeyRecord>();
  lookups = 0;
  private readonly waiting: Array<() => void> = [];

  async findByHash(c: readonly KeyHash[]): Promise<KeyRecord | null> {
    this.lookups++;
    await new Promise<void>((resolve) => this.waiting.push(resolve));
    return this.records.get(idOf(c)) ?? null;
  }

  /** Look-ups waiting for release. */
  get pending(): number {
    return this.waiting.length;
  }

  releaseAll(): void {
    for (const r of this.waiting.splice(0)) r();
  }
}

/** The shared count with the same GCRA as the Redis script, per subject; `down` fails every call as a timeout would. */
export class InMemorySharedGcra implements SharedGcra {
  calls = 0;
  down = false;
  private readonly tats = new Map<string, number>();

  constructor(private readonly clock: { now(): number }) {}

  async check(limits: readonly Limit[], accountId: string, keyId: string): Promise<GcraResult> {
    this.calls++;
    if (this.down) throw new StoreUnavailableError('redis', 'timeout');
    const ids = limits.map((l) => (l.name === 'account' ? `a:${accountId}` : `k:${keyId}`));
    const r = gcra(limits, ids.map((id) => this.tats.get(id)), this.clock.now());
    if (r.allowed) ids.forEach((id, i) => this.tats.set(id, r.newTats[i]!));
    return r;
  }
}
