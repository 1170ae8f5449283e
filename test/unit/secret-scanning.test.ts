// GitHub's signing keys: an unknown identifier may cause a fetch, but at most one per interval.
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { GithubKeySource, parseReport } from '../../src/keys/secret-scanning.js';
import { createLogger } from '../../src/observability/logger.js';
import { FakeClock } from '../../src/time/fake-clock.js';

const pem = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
const list = JSON.stringify({ public_keys: [{ key_identifier: 'known', key: pem, is_current: true }] });

function source(clock: FakeClock) {
  const calls: string[] = [];
  const fake = (async (url: string | URL | Request) => {
    calls.push(String(url));
    return new Response(list, { status: 200 });
  }) as typeof fetch;
  const keys = new GithubKeySource({ url: 'https://github.example/keys', refetchMinIntervalMs: 60_000, clock, logger: createLogger('silent'), fetch: fake });
  return { keys, calls };
}

describe('GitHub signing keys', () => {
  it('fetches once for the first look-up, then answers known identifiers from the cache', async () => {
    const { keys, calls } = source(new FakeClock());
    expect(await keys.keyFor('known')).toBeDefined();
    expect(await keys.keyFor('known')).toBeDefined();
    expect(calls).toHaveLength(1);
  });

  it('a flood of unknown identifiers causes at most one fetch per interval', async () => {
    const clock = new FakeClock();
    const { keys, calls } = source(clock);
    for (let i = 0; i < 50; i++) expect(await keys.keyFor(`unknown-${i}`)).toBeUndefined();
    expect(calls).toHaveLength(1);
    await clock.advance(60_000);
    expect(await keys.keyFor('unknown-again')).toBeUndefined();
    expect(calls).toHaveLength(2);
  });
});

describe('secret scanning reports', () => {
  it('hostile bodies are messages for a 400, never exceptions', () => {
    for (const body of ['', 'null', '{}', '[1]', '[{"token": 1, "type": "t"}]', '[{"token": "t"}]', `[${'{"token":"t","type":"t"},'.repeat(1000)}{"token":"t","type":"t"}]`]) {
      expect(typeof parseReport(Buffer.from(body))).toBe('string');
    }
    expect(parseReport(Buffer.from('[{"token": "t", "type": "x", "url": 5}]'))).toEqual([{ token: 't', type: 'x', url: null, source: null }]);
  });
});
