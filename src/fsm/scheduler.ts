/**
 * The clock and timer source the transport state machine runs on. Injected so the FSM stays pure:
 * the daemon passes a RealScheduler, tests a VirtualScheduler whose time only moves on advance()
 * (SPDK's unit tests do the same with spdk_delay_us() + poll_threads()).
 */

/** Opaque handle of one armed timer. */
export interface TimerHandle {
  readonly id: number;
}

/** Clock + one-shot timers. Times are milliseconds. */
export interface Scheduler {
  /** Monotonic time in ms (not wall-clock). */
  now(): number;
  /**
   * Arm a one-shot timer that calls fn after `ms` (>= 0). `label` only names the timer for traces.
   * fn may arm and cancel timers. Timers with equal due times fire in the order they were armed.
   */
  setTimer(ms: number, fn: () => void, label?: string): TimerHandle;
  /** Disarm; cancelling a fired or already cancelled timer is a no-op. */
  cancel(handle: TimerHandle): void;
}

/** Scheduler over setTimeout/performance.now() for the daemon. */
export class RealScheduler implements Scheduler {
  private nextId = 1;
  private readonly live = new Map<number, NodeJS.Timeout>();

  /** @param unref when true, armed timers do not keep the process alive. */
  constructor(private readonly unref = false) {}

  now(): number {
    return performance.now();
  }

  setTimer(ms: number, fn: () => void): TimerHandle {
    const id = this.nextId++;
    const t = setTimeout(
      () => {
        this.live.delete(id);
        fn();
      },
      Math.max(0, ms),
    );
    if (this.unref) t.unref();
    this.live.set(id, t);
    return { id };
  }

  cancel(handle: TimerHandle): void {
    const t = this.live.get(handle.id);
    if (t !== undefined) {
      clearTimeout(t);
      this.live.delete(handle.id);
    }
  }

  /** Number of armed timers (for shutdown checks). */
  get pending(): number {
    return this.live.size;
  }
}

interface VirtualTimer {
  id: number;
  due: number;
  fn: () => void;
  label: string | undefined;
}

/**
 * Deterministic scheduler for tests: time starts at 0 and moves only in advance()/advanceAsync().
 * `onFire` (optional) sees each timer just before its callback runs, e.g. to check which state owns it.
 */
export class VirtualScheduler implements Scheduler {
  private t = 0;
  private nextId = 1;
  private readonly timers = new Map<number, VirtualTimer>();
  onFire: ((label: string | undefined, at: number) => void) | undefined;

  now(): number {
    return this.t;
  }

  setTimer(ms: number, fn: () => void, label?: string): TimerHandle {
    if (!(ms >= 0)) throw new RangeError(`setTimer: delay ${ms} must be >= 0`);
    const id = this.nextId++;
    this.timers.set(id, { id, due: this.t + ms, fn, label });
    return { id };
  }

  cancel(handle: TimerHandle): void {
    this.timers.delete(handle.id);
  }

  /** Number of armed timers. */
  get pending(): number {
    return this.timers.size;
  }

  /** Labels of armed timers, earliest first. */
  pendingLabels(): (string | undefined)[] {
    return [...this.timers.values()].sort(byDue).map((x) => x.label);
  }

  /** Due time of the earliest armed timer, or undefined. */
  nextDue(): number | undefined {
    let best: VirtualTimer | undefined;
    for (const x of this.timers.values()) if (best === undefined || byDue(x, best) < 0) best = x;
    return best?.due;
  }

  /** Pop and run the earliest timer due at or before `limit`; false if none. Time moves to its due time. */
  private fireOne(limit: number): boolean {
    let best: VirtualTimer | undefined;
    for (const x of this.timers.values()) if (x.due <= limit && (best === undefined || byDue(x, best) < 0)) best = x;
    if (best === undefined) return false;
    this.timers.delete(best.id);
    this.t = Math.max(this.t, best.due);
    this.onFire?.(best.label, this.t);
    best.fn();
    return true;
  }

  /** Move time forward by ms, firing every timer that falls due (including ones armed meanwhile) in order. */
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`advance: ${ms} must be >= 0`);
    const end = this.t + ms;
    while (this.fireOne(end));
    this.t = end;
  }

  /**
   * advance() for code that mixes timers and promises: after each timer (and once at the start) it
   * lets pending promise callbacks run (a macrotask turn), so a promise resolved by a timer is seen
   * before the next timer fires.
   */
  async advanceAsync(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`advanceAsync: ${ms} must be >= 0`);
    const end = this.t + ms;
    await settle();
    while (this.fireOne(end)) await settle();
    this.t = end;
    await settle();
  }
}

/** Let every queued promise callback run: one macrotask turn drains the microtask queue. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

const byDue = (a: VirtualTimer, b: VirtualTimer): number => a.due - b.due || a.id - b.id;
