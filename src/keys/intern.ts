// One copy of the strings that many cached key records repeat: account ids (an account's keys share
// it), scopes and plans. Postgres and JSON.parse hand back a new string for every row, so without
// this each of 100 000 cached records held its own copy of each (bench/README.md, memory: about
// 9 MB of the 28 MB of strings at 100 k keys). Key names are not interned: most are one key's own.
// Bounded: when full it starts again empty, which costs only the sharing of the strings already
// handed out, never a wrong answer.
const MAX_INTERNED = 50_000;

export class Interner {
  private readonly held = new Map<string, string>();

  constructor(private readonly max = MAX_INTERNED) {}

  /** The held copy of `s` (equal to it), holding `s` itself when none is held. */
  of(s: string): string {
    const held = this.held.get(s);
    if (held !== undefined) return held;
    if (this.held.size >= this.max) this.held.clear();
    this.held.set(s, s);
    return s;
  }

  get size(): number {
    return this.held.size;
  }
}

/** Shared by everything that builds key records (Postgres rows, Redis entries). */
export const recordStrings = new Interner();
