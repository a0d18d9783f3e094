/**
 * The I/O gate: sits between the NBD server and the SCSI disk and applies the rport state to every
 * request (chkready): dispatch while running, hold while blocked, fail with EIO in fail-fast, lost
 * and detached.
 *
 * Contract with callers (the NBD server):
 *  - An op is a function that performs one block request on the *current* channel and resolves
 *    only when the target has acknowledged it. It may be called more than once (replay after a
 *    reconnect), never concurrently with itself: block reads and writes are idempotent. submit()
 *    resolves with the op's value, so an NBD reply is sent only for what the target acknowledged.
 *  - Ordering: held ops are replayed in submission order. Replayed ops run concurrently, like any
 *    ops in flight; that is enough for NBD semantics, since FLUSH covers only writes already
 *    replied to, and those were acknowledged by the target before the FLUSH was submitted.
 *  - Memory is bounded: at most `queueDepth` ops are admitted (in flight + held). Later submissions
 *    wait in FIFO order; a reader that awaits waitForRoom() before reading the next request keeps
 *    the waiting list bounded too.
 */
import { TransportError } from '../initiator/scsi-executor.js';
import { chkready, type FailReason, type Rport, type RportAction } from './rport.js';

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

export interface IoGateOptions {
  /** Max ops admitted at once (in flight + held); default 256. */
  queueDepth?: number;
  /** Which op failures mean "the channel failed, retry after reconnect"; default: TransportError. */
  isTransportError?: (e: unknown) => boolean;
  /**
   * Channels one op may fail on before it fails with EIO instead of being held again (default 5):
   * an op that kills every channel it runs on must not keep the port reconnecting forever.
   */
  maxDispatches?: number;
}

/** Counters for tests and the REST stats view. */
export interface IoGateStats {
  inFlight: number;
  held: number;
  waiting: number;
  /** Ops dispatched from the hold queue when I/O was released. */
  released: number;
  /** Dispatches of an op that had already been dispatched (replays after a transport error). */
  retried: number;
  /** Ops failed with EioError. */
  failedEio: number;
}

interface Entry {
  seq: number;
  op: () => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** Channel epoch of the last dispatch: bumps on every release, so a late transport error from an old channel is recognised. */
  epoch: number;
  where: 'waiting' | 'held' | 'inflight' | 'done';
  dispatches: number;
}

export function defaultIsTransportError(e: unknown): boolean {
  return e instanceof TransportError || (e instanceof Error && e.name === 'TransportError');
}

export class IoGate {
  private readonly depth: number;
  private readonly isTransportError: (e: unknown) => boolean;
  private readonly maxDispatches: number;
  private seq = 0;
  private epoch = 0;
  private admitted = 0;
  private inFlight = 0;
  private held: Entry[] = [];
  private waiting: Entry[] = [];
  private roomWaiters: (() => void)[] = [];
  private released = 0;
  private retried = 0;
  private failedEio = 0;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly rport: Rport,
    opts: IoGateOptions = {},
  ) {
    this.depth = opts.queueDepth ?? 256;
    if (!Number.isInteger(this.depth) || this.depth < 1)
      throw new RangeError(`queueDepth ${this.depth} must be an integer >= 1`);
    this.isTransportError = opts.isTransportError ?? defaultIsTransportError;
    this.maxDispatches = opts.maxDispatches ?? 5;
    this.unsubscribe = rport.subscribe((a) => this.onAction(a));
  }

  /** Stop following the rport (the owner disposes the gate with its export). Held/waiting ops are failed. */
  dispose(): void {
    this.unsubscribe();
    this.failAll('detached', 'I/O gate disposed');
  }

  get stats(): IoGateStats {
    return {
      inFlight: this.inFlight,
      held: this.held.length,
      waiting: this.waiting.length,
      released: this.released,
      retried: this.retried,
      failedEio: this.failedEio,
    };
  }

  /**
   * Submit one op. Resolves with its value once the target acknowledged it (possibly after
   * replays); rejects with the op's own non-transport error, or with EioError when the port is in
   * fail-fast, lost or detached.
   */
  submit<T>(op: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const e: Entry = {
        seq: this.seq++,
        op,
        resolve: resolve as (v: unknown) => void,
        reject,
        epoch: -1,
        where: 'waiting',
        dispatches: 0,
      };
      if (chkready(this.rport.state) === 'fail') return this.failEio(e);
      if (this.admitted < this.depth && this.waiting.length === 0) this.admit(e);
      else this.waiting.push(e);
    });
  }

  /** Resolves when a new submission would be admitted without waiting (backpressure for the NBD reader). */
  waitForRoom(): Promise<void> {
    if (this.hasRoom()) return Promise.resolve();
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  private hasRoom(): boolean {
    return this.admitted + this.waiting.length < this.depth;
  }

  private onAction(a: RportAction): void {
    switch (a.type) {
      case 'release-io':
        this.release();
        break;
      case 'fail-io':
        this.failAll(a.reason, a.message);
        break;
      default:
        break;
    }
  }

  /** New channel is up and verified: replay held ops in submission order, then admit waiters. */
  private release(): void {
    this.epoch++;
    const replay = this.held;
    this.held = [];
    for (const e of replay) {
      this.released++;
      this.dispatch(e);
    }
    this.pump();
  }

  private failAll(reason: FailReason, message: string): void {
    const victims = [...this.held, ...this.waiting];
    this.held = [];
    this.waiting = [];
    for (const e of victims) {
      if (e.where === 'held') this.admitted--;
      this.failEio(e, reason, message);
    }
    this.pump();
  }

  private admit(e: Entry): void {
    this.admitted++;
    if (chkready(this.rport.state) === 'go') this.dispatch(e);
    else this.hold(e);
  }

  private hold(e: Entry): void {
    e.where = 'held';
    // Keep submission order; transport failures can arrive out of order.
    let i = this.held.length;
    while (i > 0 && this.held[i - 1]!.seq > e.seq) i--;
    this.held.splice(i, 0, e);
  }

  private dispatch(e: Entry): void {
    e.where = 'inflight';
    e.epoch = this.epoch;
    if (e.dispatches++ > 0) this.retried++;
    this.inFlight++;
    let p: Promise<unknown>;
    try {
      p = e.op();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (v) => this.settle(e, () => e.resolve(v)),
      (err: unknown) => this.onOpError(e, err),
    );
  }

  private onOpError(e: Entry, err: unknown): void {
    this.inFlight--;
    if (!this.isTransportError(err)) return this.finish(e, () => e.reject(err));
    if (e.dispatches >= this.maxDispatches) {
      const current = e.epoch === this.epoch && chkready(this.rport.state) === 'go';
      this.admitted--;
      this.failEio(e, 'replay-limit', `I/O failed on ${e.dispatches} channels in a row: giving up on it`, err);
      this.pump();
      if (current)
        this.rport.handle({ type: 'failure-detected', reason: err instanceof Error ? err.message : String(err) });
      return;
    }
    switch (chkready(this.rport.state)) {
      case 'fail': {
        const f = this.rport.lastFailure;
        this.admitted--;
        this.failEio(e, f?.reason, f?.message, err);
        this.pump();
        return;
      }
      case 'queue':
        this.hold(e);
        return;
      case 'go':
        if (e.epoch < this.epoch) {
          // The error comes from a channel older than the current one: just run it again.
          this.dispatch(e);
          return;
        }
        // First sign of trouble on the current channel: hold it and block the port.
        this.hold(e);
        this.rport.handle({ type: 'failure-detected', reason: err instanceof Error ? err.message : String(err) });
        return;
    }
  }

  private settle(e: Entry, deliver: () => void): void {
    this.inFlight--;
    this.finish(e, deliver);
  }

  private finish(e: Entry, deliver: () => void): void {
    e.where = 'done';
    this.admitted--;
    deliver();
    this.pump();
  }

  private failEio(e: Entry, reason?: FailReason, message?: string, cause?: unknown): void {
    const f = this.rport.lastFailure;
    const r = reason ?? f?.reason ?? 'detached';
    const m = message ?? f?.message ?? `I/O refused: rport is ${this.rport.state}`;
    e.where = 'done';
    this.failedEio++;
    e.reject(new EioError(r, m, cause === undefined ? undefined : { cause }));
  }

  /** Admit waiting ops while there is room, then wake backpressure waiters. */
  private pump(): void {
    while (this.waiting.length > 0 && this.admitted < this.depth) {
      const e = this.waiting.shift()!;
      if (chkready(this.rport.state) === 'fail') this.failEio(e);
      else this.admit(e);
    }
    while (this.roomWaiters.length > 0 && this.hasRoom()) this.roomWaiters.shift()!();
  }
}
