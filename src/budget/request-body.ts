// What an inference request's body says about its cost: the model, the most output it may produce
// and an estimate of its prompt tokens.
//
// The estimate is the documented characters/4 rule (OpenAI's own rule of thumb for English text)
// over the text the request sends (messages, prompt, input, instructions), plus 4 tokens per
// message for the chat format's framing. No tokenizer runs here: a real one costs far more per
// check than a decision's whole budget, and the reservation is corrected by the actual usage
// anyway (reconcile.ts); only a request's place in the limit is estimated.

export interface BodyCost {
  model: string;
  /** The request's own maximum output (max_tokens / max_completion_tokens / max_output_tokens), if it names one. */
  maxOutput: number | undefined;
  /** Completions asked for (`n`), at least 1. */
  choices: number;
  promptTokens: number;
}

export type BodyReading = { ok: true; cost: BodyCost } | { ok: false; problem: 'missing' | 'truncated' | 'unparsable' | 'no_model' };

const MAX_CHOICES = 128;
const MESSAGE_OVERHEAD_TOKENS = 4;
const decoder = new TextDecoder('utf-8', { fatal: false });

export function readRequestBody(body: Uint8Array | undefined, truncated: boolean): BodyReading {
  if (truncated) return { ok: false, problem: 'truncated' };
  if (!body || body.length === 0) return { ok: false, problem: 'missing' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(body));
  } catch {
    return { ok: false, problem: 'unparsable' };
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return { ok: false, problem: 'unparsable' };
  const b = parsed as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model.length === 0 || b.model.length > 256) return { ok: false, problem: 'no_model' };
  const max = firstCount(b.max_completion_tokens, b.max_tokens, b.max_output_tokens);
  const n = typeof b.n === 'number' && Number.isInteger(b.n) && b.n >= 1 ? Math.min(b.n, MAX_CHOICES) : 1;
  let chars = 0;
  let messages = 0;
  const count = (v: unknown, depth: number): void => {
    if (depth > 8) return;
    if (typeof v === 'string') chars += v.length;
    else if (Array.isArray(v)) for (const x of v) count(x, depth + 1);
    else if (typeof v === 'object' && v !== null) {
      const o = v as Record<string, unknown>;
      // Chat and Responses content parts: only their text counts (an image URL is not prompt text).
      if (typeof o.text === 'string') chars += o.text.length;
      if ('content' in o) count(o.content, depth + 1);
    }
  };
  if (Array.isArray(b.messages)) {
    messages = b.messages.length;
    count(b.messages, 0);
  }
  count(b.prompt, 0);
  count(b.input, 0);
  count(b.instructions, 0);
  count(b.system, 0);
  const promptTokens = Math.ceil(chars / 4) + messages * MESSAGE_OVERHEAD_TOKENS;
  return { ok: true, cost: { model: b.model, maxOutput: max, choices: n, promptTokens } };
}

function firstCount(...values: unknown[]): number | undefined {
  for (const v of values) if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return Math.min(v, 100_000_000);
  return undefined;
}
