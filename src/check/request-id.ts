// Which client-sent request ids are echoed and logged: the rest are replaced by a fresh one.

export const REQUEST_ID_MAX_CHARS = 128;

// UUIDs, hex and base64 ids, `req_...` style ids: nothing that can split a header, a log line or a terminal.
const SAFE = /^[A-Za-z0-9._~:+/=-]+$/;
// A key pasted into the wrong header must not reach a log line: the decision log is not redacted (decision-log.ts).
const KEY_SHAPED = /ryv_/i;

/** The id when it is safe to echo in a response header and to log; undefined otherwise. */
export function acceptRequestId(value: string | undefined): string | undefined {
  if (value === undefined || value.length === 0 || value.length > REQUEST_ID_MAX_CHARS) return undefined;
  if (!SAFE.test(value) || KEY_SHAPED.test(value)) return undefined;
  return value;
}
