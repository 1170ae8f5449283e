// The narrow view of a request that the decision pipeline reads, whatever transport it came by.

export interface RequestAttributes {
  /** HTTP method of the original request as received ('' when absent); the pipeline checks and upper-cases it. */
  method: string;
  /** Raw request target as the proxy saw it: query string included, not decoded. */
  path: string;
  /** Each value of `authorization` as received: more than one means the header was repeated. */
  authorization: readonly string[];
  /** Each value of `x-api-key` as received. */
  apiKey: readonly string[];
  /** Set when the request carried its headers in two forms (Envoy's `headers` and `header_map`) that disagree on a credential. */
  credentialsDisagree?: boolean;
  /** The proxy's `x-request-id`, when it sent one. */
  requestId: string | undefined;
  /** Client address as the proxy reports it, for per-source limits. */
  sourceAddress: string | undefined;
  /** The request body, when the proxy forwards it (Envoy `with_request_body`, Traefik `forwardBody`). */
  body?: Uint8Array | undefined;
  /** The proxy cut the body short (Envoy: `x-envoy-auth-partial-body: true`). */
  bodyTruncated?: boolean;
}

/**
 * Splits a header value that a proxy may have joined from repeats. Envoy joins
 * repeated headers with commas in `headers`; a credential never contains a
 * comma, so any comma means more than one value.
 */
export function splitJoined(value: string): string[] {
  return value.indexOf(',') === -1 ? [value] : value.split(',');
}
