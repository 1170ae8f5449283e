// The request method as the policy judges it: an RFC 9110 token, upper-cased by ASCII rules only.

// tchar (RFC 9110 section 5.6.2).
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * The canonical method, or undefined when it is missing or not a token. Unicode
 * case mapping is never used: it turns `poſt` into `POST`, a method the client
 * did not send and the upstream would not see.
 */
export function canonicalMethod(raw: string): string | undefined {
  if (!TOKEN.test(raw)) return undefined;
  return asciiUpperCase(raw);
}

export function asciiUpperCase(s: string): string {
  // Most methods arrive upper-case already: return them as they are, without a replace pass.
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x61 && c <= 0x7a) return s.replace(/[a-z]+/g, (run) => run.toUpperCase());
  }
  return s;
}
