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
 *    the waiting list bounded too (the admission queue both gates share: gate.ts).
 */
import { EioError, Gate, type GateEntry, type GateOptions } from './gate.js';
import { chkready, type FailReason, type IoVerdict, type Rport, type RportAction } from './rport.js';

interface Entry extends GateEntry {
  op: () => Promise<unknown>;
  /** Channel epoch of the last dispatch: bumps on every release, so a late transport error from an old channel is recognised. */
  epoch: number;
}

let capturedResolve: ((v: unknown) => void) | undefined;
let capturedReject: ((e: unknown) => void) | undefined;
function capture(resolve: (v: never) => void, reject: (e: unknown) => void): void {
  capturedResolve = resolve as (v: unknown) => void;
  capturedReject = reject;
}

export class IoGate extends Gate<Entry> {
  private epoch = 0;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly rport: Rport,
    opts: GateOptions = {},
  ) {
    super(opts);
    this.unsubscribe = rport.subscribe((a) => this.onAction(a));
  }

  /** Stop following the rport (the owner disposes the gate with its export). Held/waiting ops are failed. */
  dispose(): void {
    this.unsubscribe();
    this.failAll('detached', 'I/O gate disposed');
  }

  verdict(): IoVerdict {
    return chkready(this.rport.state);
  }

  /**
   * Submit one op. Resolves with its value once the target acknowledged it (possibly after
   * replays); rejects with the op's own non-transport error, or with EioError when the port is in
   * fail-fast, lost or detached.
   */
  submit<T>(op: () => Promise<T>): Promise<T> {
    // The settle functions are captured by a shared executor: no closure per request.
    const promise = new Promise<T>(capture);
    const e: Entry = {
      seq: 0,
      op,
      resolve: capturedResolve!,
      reject: capturedReject!,
      epoch: -1,
      where: 'waiting',
      dispatches: 0,
    };
    capturedResolve = capturedReject = undefined;
    try {
      this.enter(e);
    } catch (err) {
      e.reject(err); // as when enter() ran inside the promise's executor
    }
    return promise;
  }

  private onAction(a: RportAction): void {
    switch (a.type) {
      case 'release-io':
        // New channel is up and verified: replay held ops in submission order, then admit waiters.
        this.epoch++;
        this.releaseHeld();
        break;
      case 'fail-io':
        this.failAll(a.reason, a.message);
        break;
      default:
        break;
    }
  }

  protected dispatch(e: Entry): void {
    this.started(e);
    e.epoch = this.epoch;
    let p: Promise<unknown>;
    try {
      p = e.op();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      (v) => {
        this.ended();
        this.finish(e, true, v);
      },
      (err: unknown) => {
        this.ended();
        this.onOpError(e, err);
      },
    );
  }

  private onOpError(e: Entry, err: unknown): void {
    if (!this.isTransportError(err)) return this.finish(e, false, err);
    if (e.dispatches >= this.maxDispatches) {
      const current = e.epoch === this.epoch && this.verdict() === 'go';
      this.giveUp(e, 'replay-limit', `I/O failed on ${e.dispatches} channels in a row: giving up on it`, err);
      if (current)
        this.rport.handle({ type: 'failure-detected', reason: err instanceof Error ? err.message : String(err) });
      return;
    }
    switch (this.verdict()) {
      case 'fail': {
        const f = this.rport.lastFailure;
        this.giveUp(e, f?.reason, f?.message, err);
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

  protected failEio(e: Entry, reason?: FailReason, message?: string, cause?: unknown): void {
    const f = this.rport.lastFailure;
    const r = reason ?? f?.reason ?? 'detached';
    const m = message ?? f?.message ?? `I/O refused: rport is ${this.rport.state}`;
    this.rejectEio(e, new EioError(r, m, cause === undefined ? undefined : { cause }));
  }
}
