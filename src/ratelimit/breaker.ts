// When to stop asking Redis for rate-limit decisions, and when to try it again.
//
// Closed: every decision asks Redis; a failed call is decided locally. After `failureThreshold`
// failures in a row it opens: decisions are local without waiting on Redis (a hung Redis would
// otherwise cost each check the whole store timeout). Every `openMs` one call probes Redis
// (half-open); its success closes the breaker, its failure keeps it open.

export interface CircuitBreakerOptions {
  failureThreshold: number;
  openMs: number;
  now: () => number;
}

export class CircuitBreaker {
  private failures = 0;
  /** 0 while closed; else when the next probe may go. */
  private probeAt = 0;
  private probing = false;

  constructor(private readonly opts: CircuitBreakerOptions) {}

  get open(): boolean {
    return this.probeAt !== 0;
  }

  /** Whether this call may ask Redis. */
  allow(): boolean {
    if (this.probeAt === 0) return true;
    if (this.probing || this.opts.now() < this.probeAt) return false;
    this.probing = true;
    return true;
  }

  success(): void {
    this.failures = 0;
    this.probeAt = 0;
    this.probing = false;
  }

  failure(): void {
    this.failures++;
    this.probing = false;
    if (this.probeAt !== 0 || this.failures >= this.opts.failureThreshold) this.probeAt = this.opts.now() + this.opts.openMs;
  }
}
