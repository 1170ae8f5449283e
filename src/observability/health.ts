// Readiness and store health: one state read by /readyz, /healthz and grpc.health.v1.

export type StoreStatus = 'unknown' | 'up' | 'down' | 'not_configured';

export class HealthState {
  private policyLoaded = false;
  private listening = false;
  private shuttingDown = false;
  private readonly stores = new Map<string, StoreStatus>();
  private readonly listeners: Array<(ready: boolean) => void> = [];

  /** Ready to answer: policy loaded, servers listening, not shutting down. Stores do not count (SPEC 1). */
  get ready(): boolean {
    return this.policyLoaded && this.listening && !this.shuttingDown;
  }

  onChange(fn: (ready: boolean) => void): void {
    this.listeners.push(fn);
  }

  setPolicyLoaded(): void {
    this.update(() => (this.policyLoaded = true));
  }
  setListening(): void {
    this.update(() => (this.listening = true));
  }
  setShuttingDown(): void {
    this.update(() => (this.shuttingDown = true));
  }

  setStore(name: string, status: StoreStatus): void {
    this.stores.set(name, status);
  }

  snapshot(): { ready: boolean; shutting_down: boolean; stores: Record<string, StoreStatus> } {
    return { ready: this.ready, shutting_down: this.shuttingDown, stores: Object.fromEntries(this.stores) };
  }

  private update(change: () => void): void {
    const before = this.ready;
    change();
    if (before !== this.ready) for (const fn of this.listeners) fn(this.ready);
  }
}
