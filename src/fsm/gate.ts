/**
 * What the two I/O gates share: IoGate (one rport's verdict, io-gate.ts) and MultipathGate (the
 * verdict of an LU's paths, multipath.ts). Both admit block requests up to a queue depth, let later
 * ones wait in FIFO order, hold admitted ones in submission order while the verdict is `queue`,
 * replay them when it turns `go`, fail them with EIO when it turns `fail`, and tell the NBD reader
 * when there is room again. How a request is dispatched, what a failed dispatch means and how an
 * EIO is explained is each gate's own.
 *
 * Entry life: waiting → (admitted) held | inflight → done. `admitted` counts held and in-flight
 * entries; it bounds memory together with the reader's waitForRoom().
 */
import { TransportError } from '../initiator/scsi-executor.js';
import type { FailReason, IoVerdict } from './rport.js';

/** errno EIO on Linux. */
export const EIO = 5;

/** An op failed because of the transport state; the NBD server replies NBD_EIO. */
export class EioError extends Error {
  readonly code = 'EIO';
  readonly errno = EIO;
  constructor(
    readonly reason: FailReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'EioError';
  }
}

/** The default test of "the channel failed, the op may run again elsewhere or later". */
export function defaultIsTransportError(e: unknown): boolean {
  return e instanceof TransportError || (e instanceof Error && e.name === 'TransportError');
}

export interface GateOptions {
  /** Max ops admitted at once (in flight + held); default 256. */
  queueDepth?: number;
  /** Which op failures mean "the channel failed, retry after reconnect"; default: TransportError. */
  isTransportError?: (e: unknown) => boolean;
  /**
   * Dispatches of one op before it fails with EIO instead of being held or re-issued again
   * (default 5): an op that kills every channel it runs on must not keep a port reconnecting forever.
   */
  maxDispatches?: number;
}

/** Counters for tests, status and metrics. */
export interface GateStats {
  inFlight: number;
  held: number;
  waiting: number;
  /** Ops dispatched from the hold queue when I/O was released. */
  released: number;
  /** Dispatches of an op that had already been dispatched (replayed or re-issued). */
  retried: number;
  /** Ops failed with EioError. */
  failedEio: number;
}

/** What every gate keeps per op; each gate adds its own fields. */
export interface GateEntry {
  seq: number;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  where: 'waiting' | 'held' | 'inflight' | 'done';
  dispatches: number;
}

export abstract class Gate<E extends GateEntry> {
  protected readonly isTransportError: (e: unknown) => boolean;
  protected readonly maxDispatches: number;
  private readonly depth: number;
  private seq = 0;
  private admitted = 0;
  private inFlight = 0;
  private held: E[] = [];
  private waiting: E[] = [];
  private roomWaiters: (() => void)[] = [];
  private released = 0;
  private retried = 0;
  private failedEio = 0;

  constructor(opts: GateOptions) {
    this.depth = opts.queueDepth ?? 256;
    if (!Number.isInteger(this.depth) || this.depth < 1)
      throw new RangeError(`queueDepth ${this.depth} must be an integer >= 1`);
    this.isTransportError = opts.isTransportError ?? defaultIsTransportError;
    this.maxDispatches = opts.maxDispatches ?? 5;
  }

  /** go: dispatch; queue: hold; fail: EIO. */
  abstract verdict(): IoVerdict;

  /** Runs an admitted entry (calls started() first, ended() when its op settles). */
  protected abstract dispatch(e: E): void;

  /** Rejects an entry with an EioError explained by the gate (through rejectEio()). */
  protected abstract failEio(e: E, reason?: FailReason, message?: string, cause?: unknown): void;

  get stats(): GateStats {
    return {
      inFlight: this.inFlight,
      held: this.held.length,
      waiting: this.waiting.length,
      released: this.released,
      retried: this.retried,
      failedEio: this.failedEio,
    };
  }

  /** Resolves when a new submission would be admitted without waiting (backpressure for the NBD reader). */
  waitForRoom(): Promise<void> {
    if (this.hasRoom()) return Promise.resolve();
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  private hasRoom(): boolean {
    return this.admitted + this.waiting.length < this.depth;
  }

  /** A new op (the entry as the subclass built it, `seq` assigned here): failed, admitted, or waiting. */
  protected enter(e: E): void {
    e.seq = this.seq++;
    if (this.verdict() === 'fail') return this.failEio(e);
    if (this.admitted < this.depth && this.waiting.length === 0) this.admit(e);
    else this.waiting.push(e);
  }

  private admit(e: E): void {
    this.admitted++;
    if (this.verdict() === 'go') this.dispatch(e);
    else this.hold(e);
  }

  /** Holds an admitted entry, in submission order (transport failures can arrive out of order). */
  protected hold(e: E): void {
    e.where = 'held';
    let i = this.held.length;
    while (i > 0 && this.held[i - 1]!.seq > e.seq) i--;
    this.held.splice(i, 0, e);
  }

  /** Bookkeeping of a dispatch: call first thing in dispatch(). */
  protected started(e: E): void {
    e.where = 'inflight';
    if (e.dispatches++ > 0) this.retried++;
    this.inFlight++;
  }

  /** The op of a dispatch settled (resolved or rejected). */
  protected ended(): void {
    this.inFlight--;
  }

  /** Replays the held entries in submission order, then admits waiting ones. */
  protected releaseHeld(): void {
    const replay = this.held;
    this.held = [];
    for (const e of replay) {
      this.released++;
      this.dispatch(e);
    }
    this.pump();
  }

  /** Fails every held and waiting entry with EIO. */
  protected failAll(reason?: FailReason, message?: string): void {
    const victims = [...this.held, ...this.waiting];
    this.held = [];
    this.waiting = [];
    for (const e of victims) {
      if (e.where === 'held') this.admitted--;
      this.failEio(e, reason, message);
    }
    this.pump();
  }

  /**
   * An admitted entry is done: deliver its result (resolve with `value` when `ok`, else reject
   * with it), make room. A flag rather than a callback: this runs once per request.
   */
  protected finish(e: E, ok: boolean, value: unknown): void {
    e.where = 'done';
    this.admitted--;
    if (ok) e.resolve(value);
    else e.reject(value);
    this.pump();
  }

  /** An admitted entry that failed its dispatch fails with EIO: make room. */
  protected giveUp(e: E, reason?: FailReason, message?: string, cause?: unknown): void {
    this.admitted--;
    this.failEio(e, reason, message, cause);
    this.pump();
  }

  protected rejectEio(e: E, err: EioError): void {
    e.where = 'done';
    this.failedEio++;
    e.reject(err);
  }

  /** Admits waiting entries while there is room, then wakes backpressure waiters. */
  private pump(): void {
    while (this.waiting.length > 0 && this.admitted < this.depth) {
      const e = this.waiting.shift()!;
      if (this.verdict() === 'fail') this.failEio(e);
      else this.admit(e);
    }
    while (this.roomWaiters.length > 0 && this.hasRoom()) this.roomWaiters.shift()!();
  }
}
