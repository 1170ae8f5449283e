// Waiting for acknowledgements of one revocation, each replica until its lease runs out.
import type { Clock, Timer } from '../../time/clock.js';
import type { Ack } from './messages.js';

export interface LiveReplica {
  id: string;
  remainingMs: number;
}

/** Margin over each remaining lease, for timer and clock granularity. */
export const ACK_DEADLINE_MARGIN_MS = 25;

export interface AckWait {
  /**
   * Resolves true when every listed replica acknowledged, false when some
   * replica's lease ran out first (that replica no longer answers from memory).
   */
  wait(replicas: readonly LiveReplica[]): Promise<boolean>;
  close(): void;
}

export class AckCollector {
  private readonly waiters = new Map<string, (instance: string) => void>();

  constructor(private readonly clock: Clock) {}

  /** Starts collecting for `rid`; call before the revocation commits, so no acknowledgement is missed. */
  expect(rid: string): AckWait {
    const acked = new Set<string>();
    let recheck: (() => void) | undefined;
    this.waiters.set(rid, (instance) => {
      acked.add(instance);
      recheck?.();
    });
    return {
      wait: (replicas) =>
        new Promise<boolean>((resolve) => {
          const start = this.clock.now();
          const deadlines = new Map(replicas.map((r) => [r.id, start + r.remainingMs + ACK_DEADLINE_MARGIN_MS]));
          let timer: Timer | undefined;
          recheck = () => {
            const now = this.clock.now();
            let pendingUntil = 0;
            for (const [id, deadline] of deadlines) {
              if (!acked.has(id) && deadline > now) pendingUntil = Math.max(pendingUntil, deadline);
            }
            timer?.cancel();
            if (pendingUntil === 0) {
              recheck = undefined;
              resolve([...deadlines.keys()].every((id) => acked.has(id)));
              return;
            }
            timer = this.clock.setTimer(() => recheck?.(), pendingUntil - now);
          };
          recheck();
        }),
      close: () => {
        this.waiters.delete(rid);
      },
    };
  }

  onAck(ack: Ack): void {
    this.waiters.get(ack.rid)?.(ack.instance);
  }
}
