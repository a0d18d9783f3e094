/**
 * The multipath gate: one logical unit reached through several paths (one SrpPort, one rport FSM,
 * one login each), applying the paths' states to every block request the way IoGate applies one
 * rport's (see io-gate.ts for the op contract: an op may run more than once, never concurrently
 * with itself; it resolves only when the target acknowledged it).
 *
 *   - I/O runs while ANY usable path runs (rport running, not failed by the operator). The
 *     selector picks the path of each dispatch: `failover` (one active path: the preferred one by
 *     path_priority, then attach order, subject to the failback policy), `round-robin`, or
 *     `queue-length` (fewest ops in flight), the last two over every running path.
 *   - An op that fails with a transport error on path A (no SCSI status came back: the channel
 *     died or was never there) is re-issued on another running path at once; A is told
 *     failure-detected (once per channel) and goes through its own FSM as a single path would.
 *     An op that got a SCSI status (a ScsiError, a check condition, an abort that the target
 *     confirmed) is returned as it is: it is never re-issued. An op is dispatched at most
 *     `maxDispatches` times in all (then EIO), as IoGate bounds its replays.
 *   - Held only while no usable path runs but at least one is blocked (its reconnect and
 *     fast_io_fail_tmo still going); EIO once every usable path is in fail-fast, lost or detached
 *     (or failed by the operator): the same moment a single path's gate would fail it, with each
 *     path's own fast_io_fail_tmo.
 *
 * Failback (failover selector): `immediate` (the preferred running path is active as soon as it
 * runs), `manual` (the active path stays until it stops running or the operator fails or
 * reinstates a path), or N seconds (the preferred path becomes active again once it has been
 * running for N seconds without a break). Evaluated at every dispatch and every state change of a
 * path, against the injected clock, so no timer is needed.
 */
import { EioError, Gate, type GateEntry, type GateOptions } from './gate.js';
import { chkready, type FailReason, type IoVerdict, type Rport, type RportState } from './rport.js';

export const PATH_SELECTORS = ['failover', 'round-robin', 'queue-length'] as const;
export type PathSelector = (typeof PATH_SELECTORS)[number];
/** 'immediate', 'manual', or seconds of the preferred path running before it takes over again. */
export type Failback = 'immediate' | 'manual' | number;

/** What a path is for the LU: carrying I/O (active), ready (standby), or failed by the operator. */
export type PathRole = 'active' | 'standby' | 'failed';

/** maxDispatches counts the dispatches of one op over all paths. */
export interface MultipathOptions extends GateOptions {
  selector?: PathSelector;
  failback?: Failback;
  /** Milliseconds clock (tests inject a virtual one); default Date.now. */
  now?: () => number;
}

export interface PathCounters {
  /** Ops completed on the path (acknowledged, or failed with a SCSI status). */
  commands: number;
  /** Transport failures of ops on the path (each re-issued elsewhere or held). */
  errors: number;
  bytes: number;
  inFlight: number;
  lastFailure: { reason: string; at: string } | null;
}

export interface MultipathPath<D> {
  readonly id: string;
  readonly rport: Rport;
  readonly disk: D;
  priority: number;
  /** Attach order (lower first): breaks priority ties. */
  readonly order: number;
  /** Failed by the operator: carries no I/O until reinstated. */
  operatorFailed: boolean;
  readonly counters: PathCounters;
  /** When the path last became running (ms, the gate's clock); undefined while it is not. */
  runningSince: number | undefined;
  /** Bumps every time the path starts running: a transport error from an older channel is recognised. */
  epoch: number;
  unsubscribe: () => void;
}

interface Entry<D> extends GateEntry {
  op: (disk: D) => Promise<unknown>;
  bytes: number;
}

export class MultipathGate<D> extends Gate<Entry<D>> {
  selector: PathSelector;
  failback: Failback;
  private readonly now: () => number;
  private readonly paths: MultipathPath<D>[] = [];
  private nextOrder = 0;
  private rr = 0;
  private active: MultipathPath<D> | undefined;

  constructor(opts: MultipathOptions = {}) {
    super(opts);
    this.selector = opts.selector ?? 'failover';
    this.failback = opts.failback ?? 'immediate';
    this.now = opts.now ?? Date.now;
  }

  /** Adds a path (its LUN identity already checked by the caller); I/O may use it at once. */
  addPath(id: string, rport: Rport, disk: D, priority = 0): MultipathPath<D> {
    if (this.paths.some((p) => p.id === id)) throw new Error(`path ${id} is already a path of this LU`);
    const p: MultipathPath<D> = {
      id,
      rport,
      disk,
      priority,
      order: this.nextOrder++,
      operatorFailed: false,
      counters: { commands: 0, errors: 0, bytes: 0, inFlight: 0, lastFailure: null },
      runningSince: rport.state === 'running' ? this.now() : undefined,
      epoch: 0,
      unsubscribe: () => undefined,
    };
    p.unsubscribe = rport.subscribe((a) => {
      if (a.type !== 'state-changed') return;
      if (a.to === 'running') {
        p.runningSince = this.now();
        p.epoch++;
      } else {
        p.runningSince = undefined;
        // the path stopped running, or went on to fail-fast or lost (an identity mismatch says why)
        p.counters.lastFailure = failureOf(rport, `path ${a.to}`, this.now());
      }
      this.onPathsChanged();
    });
    this.paths.push(p);
    this.onPathsChanged();
    return p;
  }

  /** Removes a path (its target detached); ops in flight on it finish or are re-issued elsewhere. */
  removePath(id: string): void {
    const i = this.paths.findIndex((p) => p.id === id);
    if (i < 0) return;
    const [p] = this.paths.splice(i, 1);
    p!.unsubscribe();
    if (this.active === p) this.active = undefined;
    this.onPathsChanged();
  }

  get pathList(): readonly MultipathPath<D>[] {
    return this.paths;
  }

  path(id: string): MultipathPath<D> | undefined {
    return this.paths.find((p) => p.id === id);
  }

  /** The operator fails a path (no I/O goes to it) or reinstates it. */
  setOperatorFailed(id: string, failed: boolean): void {
    const p = this.path(id);
    if (!p) throw new Error(`no path ${id}`);
    p.operatorFailed = failed;
    if (failed) p.counters.lastFailure = { reason: 'failed by the operator', at: new Date(this.now()).toISOString() };
    // a reinstate (or a fail) is an operator decision: manual failback re-chooses now
    this.active = undefined;
    this.onPathsChanged();
  }

  /** Paths that could carry I/O now: running and not failed by the operator. */
  private usable(): MultipathPath<D>[] {
    return this.paths.filter((p) => !p.operatorFailed && p.rport.state === 'running');
  }

  /** go while a usable path runs; queue while one is blocked; fail otherwise (no path could ever carry it). */
  verdict(): IoVerdict {
    let queue = false;
    for (const p of this.paths) {
      if (p.operatorFailed) continue;
      const v = chkready(p.rport.state);
      if (v === 'go') return 'go';
      if (v === 'queue') queue = true;
    }
    return queue ? 'queue' : 'fail';
  }

  /** The role of each path now (failover: one active; the spreading selectors: every running path). */
  roleOf(p: MultipathPath<D>): PathRole {
    if (p.operatorFailed) return 'failed';
    if (this.selector !== 'failover') return p.rport.state === 'running' ? 'active' : 'standby';
    return this.activePath() === p ? 'active' : 'standby';
  }

  /** The preferred order: highest priority first, then attach order. */
  private preferred(paths: MultipathPath<D>[]): MultipathPath<D> | undefined {
    let best: MultipathPath<D> | undefined;
    for (const p of paths)
      if (!best || p.priority > best.priority || (p.priority === best.priority && p.order < best.order)) best = p;
    return best;
  }

  /** failover: the active path, re-chosen when it stopped running or failback says so. */
  activePath(): MultipathPath<D> | undefined {
    const usable = this.usable();
    const best = this.preferred(usable);
    const cur = this.active;
    if (!cur || !usable.includes(cur)) {
      this.active = best;
      return best;
    }
    if (
      !best ||
      best === cur ||
      best.priority < cur.priority ||
      (best.priority === cur.priority && best.order > cur.order)
    )
      return cur;
    const fb = this.failback;
    if (
      fb === 'immediate' ||
      (typeof fb === 'number' && best.runningSince !== undefined && this.now() - best.runningSince >= fb * 1000)
    )
      this.active = best;
    return this.active;
  }

  private select(exclude?: MultipathPath<D>): MultipathPath<D> | undefined {
    let usable = this.usable();
    if (exclude && usable.length > 1) usable = usable.filter((p) => p !== exclude);
    if (usable.length === 0) return undefined;
    switch (this.selector) {
      case 'failover': {
        const a = this.activePath();
        return a && a !== exclude ? a : this.preferred(usable);
      }
      case 'round-robin':
        return usable[this.rr++ % usable.length];
      case 'queue-length': {
        let best = usable[0]!;
        for (const p of usable) if (p.counters.inFlight < best.counters.inFlight) best = p;
        return best;
      }
    }
  }

  dispose(): void {
    for (const p of this.paths) p.unsubscribe();
    this.paths.length = 0;
    this.failAll('detached', 'multipath gate disposed');
  }

  /** Submit one op (`bytes` counts toward the path that completes it). See IoGate.submit. */
  submit<T>(op: (disk: D) => Promise<T>, bytes = 0): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.enter({
        seq: 0,
        op: op as (disk: D) => Promise<unknown>,
        bytes,
        resolve: resolve as (v: unknown) => void,
        reject,
        where: 'waiting',
        dispatches: 0,
      }),
    );
  }

  /** A path changed state (or was added, removed, failed, reinstated): release, keep holding, or fail. */
  private onPathsChanged(): void {
    if (this.selector === 'failover') this.activePath();
    switch (this.verdict()) {
      case 'go':
        this.releaseHeld();
        break;
      case 'fail':
        this.failAll();
        break;
      case 'queue':
        break;
    }
  }

  protected dispatch(e: Entry<D>, exclude?: MultipathPath<D>): void {
    const p = this.select(exclude);
    if (!p) return this.hold(e);
    this.started(e);
    p.counters.inFlight++;
    const epoch = p.epoch;
    let promise: Promise<unknown>;
    try {
      promise = e.op(p.disk);
    } catch (err) {
      promise = Promise.reject(err);
    }
    promise.then(
      (v) => {
        this.ended();
        p.counters.inFlight--;
        p.counters.commands++;
        p.counters.bytes += e.bytes;
        this.finish(e, true, v);
      },
      (err: unknown) => {
        this.ended();
        p.counters.inFlight--;
        this.onOpError(e, p, epoch, err);
      },
    );
  }

  private onOpError(e: Entry<D>, p: MultipathPath<D>, epoch: number, err: unknown): void {
    if (!this.isTransportError(err)) {
      p.counters.commands++; // a SCSI status came back: the command completed, with an error
      return this.finish(e, false, err);
    }
    p.counters.errors++;
    const reason = err instanceof Error ? err.message : String(err);
    p.counters.lastFailure = { reason, at: new Date(this.now()).toISOString() };
    // the channel the op ran on died: the path's FSM takes it from here (once per channel)
    if (epoch === p.epoch && p.rport.state === 'running') p.rport.handle({ type: 'failure-detected', reason });
    if (e.dispatches >= this.maxDispatches)
      return this.giveUp(e, 'replay-limit', `I/O failed on ${e.dispatches} channels in a row: giving up on it`, err);
    switch (this.verdict()) {
      case 'go':
        this.dispatch(e, p);
        return;
      case 'queue':
        this.hold(e);
        return;
      case 'fail':
        this.giveUp(e, undefined, undefined, err);
        return;
    }
  }

  protected failEio(e: Entry<D>, reason?: FailReason, message?: string, cause?: unknown): void {
    const last = this.paths.map((p) => p.rport.lastFailure).find((f) => f !== undefined);
    const states = this.paths.map((p) => `${p.id} ${p.operatorFailed ? 'failed by the operator' : p.rport.state}`);
    const r = reason ?? last?.reason ?? 'detached';
    const m = message ?? `no path can carry I/O (${states.join(', ') || 'no paths'})`;
    this.rejectEio(e, new EioError(r, m, cause === undefined ? undefined : { cause }));
  }
}

function failureOf(rport: Rport, fallback: string, now: number): { reason: string; at: string } {
  return { reason: rport.lastFailure?.message ?? fallback, at: new Date(now).toISOString() };
}

/** The state string of a path as status prints it. */
export function pathState(p: MultipathPath<unknown>): RportState {
  return p.rport.state;
}
