/**
 * Runs the owner-side work the rport FSM asks for ('reconnect', 'verify-identity',
 * 'stop-reconnecting') through async hooks and reports the outcome back as events. This is the
 * only impure glue around the FSM; the SRP session plugs in through TransportHooks (SrpPort).
 */
import { IdentityMismatchError } from './identity.js';
import type { Rport, RportAction } from './rport.js';

export interface TransportHooks {
  /**
   * Re-establish the channel for attempt `attempt` (SRP login). Reject with HardReconnectError
   * when retrying soon cannot help (the port then fails I/O at once). Before resolving, the old channel
   * must be closed and every command it carried settled (task management has cleared it on the
   * target), because held I/O is replayed on the new channel and a stale write landing later
   * could overwrite newer data. Reject if the target cannot be reached. Stop when `signal` aborts
   * (and close whatever the attempt opened).
   */
  reconnect(attempt: number, signal: AbortSignal): Promise<void>;
  /**
   * Check that the LUN behind the new channel is the one exported (see assertSameLun). Resolve if
   * so; reject with IdentityMismatchError if it is a different disk; any other rejection (e.g. the
   * channel dropped during INQUIRY) counts as a failed reconnect attempt.
   */
  verifyIdentity(attempt: number, signal: AbortSignal): Promise<void>;
  /**
   * Reconnecting stopped (lost or detached): close any channel an attempt opened that is not in
   * use, e.g. the one to a different LUN after an identity mismatch. The attempt in progress, if
   * any, has already been aborted through its signal.
   */
  stop?(): void;
}

/**
 * A reconnect attempt failed in a way that retrying on the blocked cadence will not cure (e.g. the
 * target refused our IU size): reported as a hard reconnect-failed, which fails I/O at once.
 */
export class HardReconnectError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HardReconnectError';
  }
}

/**
 * A reconnect attempt whose failure calls for the next one soon: the target refused it with a
 * transient reject (its port not enabled yet, nothing listening, no ACL yet: a target being
 * rebuilt, reachable), or its login went unanswered within a wait that the target's answer times
 * made shorter than the attempt's deadline (src/fsm/login-answer-wait.ts). Reported as
 * reconnect-failed with retrySoon, which a blocked port follows RETRY_SOON_MS after the attempt's start.
 */
export class RetrySoonError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RetrySoonError';
  }
}

/** Subscribes to `rport` and drives reconnect attempts and identity checks. dispose() unsubscribes and aborts. */
export class RportDriver {
  private controller: AbortController | undefined;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly rport: Rport,
    private readonly hooks: TransportHooks,
  ) {
    this.unsubscribe = rport.subscribe((a) => this.onAction(a));
  }

  dispose(): void {
    this.unsubscribe();
    this.abort();
  }

  private onAction(a: RportAction): void {
    switch (a.type) {
      case 'reconnect':
        this.run(
          (s) => this.hooks.reconnect(a.attempt, s),
          () => ({ type: 'reconnect-succeeded', attempt: a.attempt }),
          (e) => ({
            type: 'reconnect-failed',
            attempt: a.attempt,
            reason: errorText(e),
            ...(e instanceof HardReconnectError ? { hard: true } : {}),
            ...(e instanceof RetrySoonError ? { retrySoon: true } : {}),
          }),
        );
        break;
      case 'verify-identity':
        this.run(
          (s) => this.hooks.verifyIdentity(a.attempt, s),
          () => ({ type: 'identity-verified', attempt: a.attempt }),
          (e) =>
            e instanceof IdentityMismatchError
              ? { type: 'identity-mismatch', attempt: a.attempt, detail: e.differences.join('; ') }
              : { type: 'reconnect-failed', attempt: a.attempt, reason: errorText(e) },
        );
        break;
      case 'stop-reconnecting':
        this.abort();
        this.hooks.stop?.();
        break;
      default:
        break;
    }
  }

  private run(
    work: (signal: AbortSignal) => Promise<void>,
    ok: () => Parameters<Rport['handle']>[0],
    fail: (e: unknown) => Parameters<Rport['handle']>[0],
  ): void {
    this.abort();
    const controller = new AbortController();
    this.controller = controller;
    let p: Promise<void>;
    try {
      p = work(controller.signal);
    } catch (e) {
      p = Promise.reject(e);
    }
    // An aborted attempt's result is dropped: attempt numbers restart in a new outage, so a late
    // result could otherwise be taken for the current attempt's.
    p.then(
      () => {
        if (controller.signal.aborted) return;
        if (this.controller === controller) this.controller = undefined;
        this.rport.handle(ok());
      },
      (e: unknown) => {
        if (controller.signal.aborted) return;
        if (this.controller === controller) this.controller = undefined;
        this.rport.handle(fail(e));
      },
    );
  }

  private abort(): void {
    this.controller?.abort();
    this.controller = undefined;
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
