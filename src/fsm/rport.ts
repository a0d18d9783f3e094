/**
 * The SRP remote-port (rport) state machine, after Linux scsi_transport_srp.c (srp_rport_set_state,
 * srp_chkready, the reconnect / fast_io_fail / dev_loss work items), with one deliberate change:
 * "lost" keeps the exported device; an explicit reconnect moves it back to blocked and only detach
 * removes it.
 *
 *   running   --failure-detected-->  blocked     I/O held (bounded), timers + reconnect attempts start
 *   blocked   --identity-verified--> running     held I/O replayed (after reconnect-succeeded + identity check)
 *   blocked   --fast-io-fail-tmo-->  fail-fast   held and new I/O fail with EIO; reconnecting goes on
 *   blocked   --reconnect-failed (hard)--> fail-fast   a reject that retrying will not cure
 *   fail-fast --identity-verified--> running
 *   blocked|fail-fast --dev-loss-tmo | identity-mismatch--> lost   reconnecting stops, I/O fails
 *   lost      --explicit-reconnect-> blocked
 *   any       --detach------------>  detached    the only way the device goes away
 *
 * Reconnect cadence: while blocked an attempt every reconnect_delay (no growth: the outage may
 * still end before fast_io_fail_tmo); in fail-fast the delay doubles per failed attempt from
 * 2 x reconnect_delay, with ±jitter, up to reconnect_delay_max. A sign that the path is back
 * ('path-up') starts an attempt at once and restarts the back-off. A blocked attempt the target
 * answered with a transient reject (it is being rebuilt), or one whose short wait for an answer
 * ran out (SrpPort), is followed RETRY_SOON_MS after its start.
 *
 * Pure and deterministic: no I/O. Time comes from the injected Scheduler, randomness (back-off
 * jitter) from the injected random(). Events go in through handle(); actions come out to
 * subscribers, synchronously and in order. The owner performs the actions (see RportAction) and
 * reports their outcome as events carrying the attempt number, so late results of an abandoned
 * attempt are refused as stale.
 */
import type { Scheduler, TimerHandle } from './scheduler.js';
import { assertValidTmo, backoffDelayMs, DEFAULT_TMO, formatTmo, type TmoParams } from './timers.js';

/**
 * While blocked, the period of attempts after one that failed with retrySoon: the target answered
 * with a transient reject (LIO while its port is disabled: SRP_LOGIN_REJ 0x00010001; nothing
 * listening; no ACL yet). The attempt after the target comes back should not wait a whole
 * reconnect_delay: a reject costs the target one CM exchange, and a blocked port's outage lasts
 * at most fast_io_fail_tmo. Never longer than reconnect_delay. The same period follows a login
 * that got no answer within a wait the target's answer times made shorter than reconnect_delay
 * (src/fsm/login-answer-wait.ts): the path may be back, and the next attempt is the one that can tell.
 */
export const RETRY_SOON_MS = 250;

/** State names exactly as in /sys/class/srp_remote_ports/*\/state (plus our terminal "detached"). */
export const RPORT_STATES = ['running', 'blocked', 'fail-fast', 'lost', 'detached'] as const;
export type RportState = (typeof RPORT_STATES)[number];

/**
 * The transition table: every legal state change. setState() refuses anything else, including
 * "moves" to the same state. Compared with srp_rport_set_state(): no running->fail-fast (that path
 * exists in the kernel only when both fast_io_fail_tmo and dev_loss_tmo are off, which validateTmo
 * forbids); lost->blocked is new (explicit reconnect keeps the device); detached is new (removal).
 */
export const TRANSITIONS: Readonly<Record<RportState, readonly RportState[]>> = Object.freeze({
  running: ['blocked', 'detached'],
  blocked: ['running', 'fail-fast', 'lost', 'detached'],
  'fail-fast': ['running', 'lost', 'detached'],
  lost: ['blocked', 'detached'],
  detached: [],
});

/** Why a move is illegal, or undefined if the transition table allows it. */
export function transitionError(from: RportState, to: RportState): string | undefined {
  if (from === to) return `rport is already ${from}`;
  if (!TRANSITIONS[from].includes(to)) return `illegal rport transition ${from} -> ${to}`;
  return undefined;
}

/** What the I/O path does with a request in a state: dispatch it, hold it, or fail it with EIO. */
export type IoVerdict = 'go' | 'queue' | 'fail';

/**
 * srp_chkready() for our I/O path. Unlike the kernel (which returns "go" in blocked because the
 * SCSI mid-layer has already blocked the queue) we say 'queue' there: the I/O gate does the holding.
 */
export function chkready(state: RportState): IoVerdict {
  switch (state) {
    case 'running':
      return 'go';
    case 'blocked':
      return 'queue';
    case 'fail-fast':
    case 'lost':
    case 'detached':
      return 'fail';
  }
}

/** The FSM's own timers. */
export type TimerName = 'reconnect' | 'fast-io-fail' | 'dev-loss';

/** The states in which each timer may be armed (and fire). Leaving them cancels the timer. */
export const TIMER_OWNERS: Readonly<Record<TimerName, readonly RportState[]>> = Object.freeze({
  reconnect: ['blocked', 'fail-fast'],
  'fast-io-fail': ['blocked'],
  'dev-loss': ['blocked', 'fail-fast'],
});

/** Events into the FSM. Attempt numbers tie a result to the attempt that produced it. */
export type RportEvent =
  /** The transport failed (channel closed, an I/O failed with a transport error). */
  | { type: 'failure-detected'; reason?: string }
  /** The owner's reconnect attempt `attempt` produced a usable channel (old channel fully cleared). */
  | { type: 'reconnect-succeeded'; attempt: number }
  /**
   * The owner's reconnect attempt `attempt` failed (including a failed identity check for a reason
   * other than a mismatch). `hard`: retrying on the blocked cadence will not help (e.g. the target
   * refused our IU size): go to fail-fast at once; reconnecting goes on with back-off. `retrySoon`:
   * the target refused the login with a transient reject (reachable, not ready yet), or it went
   * unanswered within a short wait (SrpPort): while blocked the next attempt starts RETRY_SOON_MS
   * after this one's start instead of reconnect_delay.
   */
  | { type: 'reconnect-failed'; attempt: number; reason?: string; hard?: boolean; retrySoon?: boolean }
  /** The LUN behind the new channel of attempt `attempt` is the same one: release I/O. */
  | { type: 'identity-verified'; attempt: number }
  /** The LUN behind the new channel of attempt `attempt` is a different one: never send it I/O. */
  | { type: 'identity-mismatch'; attempt: number; detail: string }
  /** Operator/API request: reconnect now (from lost: start over in blocked). */
  | { type: 'explicit-reconnect' }
  /** The transport saw a sign that the path is back (PORT_ACTIVE, a channel to the same destination connected): attempt now. Lost stays lost. */
  | { type: 'path-up'; reason?: string }
  /** Operator/API request: remove the device. Terminal. */
  | { type: 'detach'; reason?: string }
  /** Timer expiries; normally raised by the FSM's own timers (tests may inject them). */
  | { type: 'reconnect-timer' }
  | { type: 'fast-io-fail-tmo' }
  | { type: 'dev-loss-tmo' };

export type RportEventType = RportEvent['type'];

export const RPORT_EVENT_TYPES: readonly RportEventType[] = Object.freeze([
  'failure-detected',
  'reconnect-succeeded',
  'reconnect-failed',
  'identity-verified',
  'identity-mismatch',
  'explicit-reconnect',
  'path-up',
  'detach',
  'reconnect-timer',
  'fast-io-fail-tmo',
  'dev-loss-tmo',
] as const);

/** What an event does in a state: move to a state, stay (accepted, no state change), or refuse. */
export type EventOutcome = RportState | 'stay' | 'refused';

const LIVE_OUTAGE: Readonly<Record<RportEventType, EventOutcome>> = {
  'failure-detected': 'stay',
  'reconnect-succeeded': 'stay',
  'reconnect-failed': 'stay',
  'identity-verified': 'running',
  'identity-mismatch': 'lost',
  'explicit-reconnect': 'stay',
  'path-up': 'stay',
  detach: 'detached',
  'reconnect-timer': 'stay',
  'fast-io-fail-tmo': 'fail-fast',
  'dev-loss-tmo': 'lost',
};

const ALL_REFUSED = Object.fromEntries(RPORT_EVENT_TYPES.map((e) => [e, 'refused'])) as Record<
  RportEventType,
  EventOutcome
>;

/**
 * The event table: state x event -> outcome. Within blocked/fail-fast, results of the owner's
 * work are further checked against the current phase and attempt (stale ones are refused).
 */
export const EVENT_TABLE: Readonly<Record<RportState, Readonly<Record<RportEventType, EventOutcome>>>> = Object.freeze({
  running: { ...ALL_REFUSED, 'failure-detected': 'blocked', detach: 'detached' },
  blocked: LIVE_OUTAGE,
  'fail-fast': { ...LIVE_OUTAGE, 'fast-io-fail-tmo': 'refused' },
  lost: { ...ALL_REFUSED, 'failure-detected': 'stay', 'explicit-reconnect': 'blocked', detach: 'detached' },
  detached: ALL_REFUSED,
});

/**
 * Where reconnecting stands while blocked/fail-fast: 'waiting' for the reconnect timer, 'connecting'
 * (the owner runs attempt N), 'verifying' (the owner checks identity on attempt N's channel), or
 * 'idle' (reconnect_delay is off: only an explicit reconnect starts an attempt). 'none' elsewhere.
 */
export type ReconnectPhase = 'none' | 'idle' | 'waiting' | 'connecting' | 'verifying';

/** Why I/O is being failed with EIO. */
export type FailReason = 'fail-fast' | 'dev-loss' | 'identity-mismatch' | 'detached' | 'replay-limit';

/** Actions out of the FSM, in the order the owner must see them. */
export type RportAction =
  /** Every state change (for logs, the REST state attribute). */
  | { type: 'state-changed'; from: RportState; to: RportState; cause: RportEventType }
  /** Stop dispatching I/O; hold new and transport-failed I/O. */
  | { type: 'hold-io' }
  /** Reconnect attempt `attempt` will start in delayMs (informational; the FSM owns the timer). */
  | { type: 'reconnect-scheduled'; attempt: number; delayMs: number }
  /**
   * Owner: make attempt `attempt` now. The old channel must be closed and every command it carried
   * settled (task management has cleared it on the target) before reporting reconnect-succeeded,
   * because held I/O is replayed on the new channel. Report reconnect-succeeded / reconnect-failed.
   */
  | { type: 'reconnect'; attempt: number }
  /** Owner: check the LUN identity on attempt `attempt`'s channel; report identity-verified / identity-mismatch / reconnect-failed. */
  | { type: 'verify-identity'; attempt: number }
  /** Dispatch held I/O again, in submission order, on the new channel. */
  | { type: 'release-io' }
  /** Fail held and new I/O with EIO until the next release-io. */
  | { type: 'fail-io'; reason: FailReason; message: string }
  /** Owner: abort any attempt in progress and close any channel an attempt opened that is not in use. */
  | { type: 'stop-reconnecting' }
  /** Owner: remove the exported device (detach only). */
  | { type: 'remove-device' };

export type RportListener = (action: RportAction) => void;

/** Result of handle(): what happened to the event. 'deferred' = queued behind the event being processed. */
export interface HandleResult {
  outcome: 'moved' | 'stayed' | 'refused' | 'deferred';
  from: RportState;
  to: RportState;
  reason?: string;
}

export interface RportOptions {
  scheduler: Scheduler;
  /** Timer parameters in seconds (validated with validateTmo); defaults DEFAULT_TMO. */
  tmo?: Partial<TmoParams>;
  /** Uniform random in [0, 1) for back-off jitter; default Math.random. */
  random?: () => number;
  /** Fraction by which a fail-fast back-off delay varies at random (±), in [0, 1); default 0.2. */
  jitter?: number;
  /** Name used in messages and timer labels, e.g. "port-1:1". */
  name?: string;
}

const TIMER_EVENT: Record<TimerName, RportEventType> = {
  reconnect: 'reconnect-timer',
  'fast-io-fail': 'fast-io-fail-tmo',
  'dev-loss': 'dev-loss-tmo',
};

/** One SRP remote port's transport state. Starts in running (created after the first login). */
export class Rport {
  readonly name: string;
  private st: RportState = 'running';
  private ph: ReconnectPhase = 'none';
  private attemptNo = 0;
  /** When the current (or last) attempt started (scheduler clock): the blocked cadence counts from it. */
  private attemptStartedAt = 0;
  private failed = 0;
  /** Failed attempts since the port went fail-fast in this outage: the back-off step. */
  private failedInFailFast = 0;
  private lastErr: string | undefined;
  private params: TmoParams;
  private failure: { reason: FailReason; message: string } | undefined;
  private readonly timers: Partial<Record<TimerName, TimerHandle>> = {};
  private readonly listeners: RportListener[] = [];
  private readonly scheduler: Scheduler;
  private readonly random: () => number;
  private readonly jitter: number;
  // Run-to-completion: events raised while one is processed (e.g. by a listener) wait here.
  private busy = false;
  private readonly pendingEvents: RportEvent[] = [];
  private readonly outbox: RportAction[] = [];

  constructor(opts: RportOptions) {
    this.scheduler = opts.scheduler;
    this.random = opts.random ?? Math.random;
    this.jitter = opts.jitter ?? 0.2;
    if (!(this.jitter >= 0 && this.jitter < 1)) throw new RangeError(`jitter ${this.jitter} must be in [0, 1)`);
    this.name = opts.name ?? 'rport';
    this.params = assertValidTmo({ ...DEFAULT_TMO, ...opts.tmo });
  }

  get state(): RportState {
    return this.st;
  }
  /** Reconnect phase; 'none' outside blocked/fail-fast. */
  get phase(): ReconnectPhase {
    return this.ph;
  }
  /** Number of the current (or last) reconnect attempt of this outage; 0 when none yet. */
  get attempt(): number {
    return this.attemptNo;
  }
  /** Failed reconnect attempts since the last time the port was running (sysfs failed_reconnects). */
  get failedReconnects(): number {
    return this.failed;
  }
  get tmo(): Readonly<TmoParams> {
    return this.params;
  }
  /** Why I/O currently fails (set by the last fail-io, cleared on running). */
  get lastFailure(): { reason: FailReason; message: string } | undefined {
    return this.failure;
  }
  /** The last transport failure or failed reconnect's reason (kept after the port runs again). */
  get lastError(): string | undefined {
    return this.lastErr;
  }
  /** Timers currently armed. */
  armedTimers(): TimerName[] {
    return (Object.keys(this.timers) as TimerName[]).filter((k) => this.timers[k] !== undefined);
  }

  /** Subscribe to actions; returns the unsubscribe function. */
  subscribe(listener: RportListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /**
   * Feed one event. Runs to completion: actions go to every subscriber before the next event is
   * processed; an event raised from inside a listener is queued and reported as 'deferred'.
   */
  handle(ev: RportEvent): HandleResult {
    if (this.busy) {
      this.pendingEvents.push(ev);
      return { outcome: 'deferred', from: this.st, to: this.st };
    }
    return this.run(() => this.process(ev));
  }

  /**
   * Change the timer parameters (REST PATCH); throws TmoValidationError and changes nothing if the
   * combination is invalid. Like the kernel, new fast_io_fail/dev_loss values apply from the next
   * outage; a reconnect_delay switched on/off takes effect now.
   */
  setTimeouts(patch: Partial<TmoParams>): void {
    const next = assertValidTmo({ ...this.params, ...patch });
    this.run(() => {
      this.params = next;
      if (this.ph === 'waiting' && next.reconnectDelay === 'off') {
        this.cancelTimer('reconnect');
        this.ph = 'idle';
      } else if (this.ph === 'idle' && next.reconnectDelay !== 'off') {
        this.scheduleNextAttempt();
      }
    });
  }

  private run<R>(fn: () => R): R {
    this.busy = true;
    try {
      const r = fn();
      this.flush();
      for (let ev = this.pendingEvents.shift(); ev !== undefined; ev = this.pendingEvents.shift()) {
        this.process(ev);
        this.flush();
      }
      return r;
    } finally {
      this.busy = false;
    }
  }

  private flush(): void {
    for (let a = this.outbox.shift(); a !== undefined; a = this.outbox.shift()) {
      for (const l of [...this.listeners]) {
        try {
          l(a);
        } catch (e) {
          // A throwing listener is a bug in the owner; surface it without leaving the FSM half-updated.
          queueMicrotask(() => {
            throw e;
          });
        }
      }
    }
  }

  private emit(a: RportAction): void {
    this.outbox.push(a);
  }

  private process(ev: RportEvent): HandleResult {
    const from = this.st;
    const outcome = EVENT_TABLE[from][ev.type];
    const refuse = (reason: string): HandleResult => ({ outcome: 'refused', from, to: from, reason });
    if (outcome === 'refused') return refuse(`${ev.type} is not valid in state ${from}`);
    const done = (): HandleResult => ({ outcome: this.st === from ? 'stayed' : 'moved', from, to: this.st });

    switch (ev.type) {
      case 'failure-detected':
        if (ev.reason !== undefined) this.lastErr = ev.reason;
        if (from === 'running') this.enterBlocked(ev.type, false);
        return done();

      case 'reconnect-succeeded':
        if (this.ph !== 'connecting' || ev.attempt !== this.attemptNo)
          return refuse(this.staleReason(ev.type, ev.attempt, 'connecting'));
        this.ph = 'verifying';
        this.emit({ type: 'verify-identity', attempt: ev.attempt });
        return done();

      case 'reconnect-failed':
        if ((this.ph !== 'connecting' && this.ph !== 'verifying') || ev.attempt !== this.attemptNo) {
          return refuse(this.staleReason(ev.type, ev.attempt, 'connecting'));
        }
        this.failed++;
        if (ev.reason !== undefined) this.lastErr = ev.reason;
        if (ev.hard && from === 'blocked') {
          if (!this.setState('fail-fast', ev.type)) return refuse(transitionError(from, 'fail-fast')!);
          this.failIo(
            'fail-fast',
            `${this.name}: reconnecting cannot succeed as things are (${ev.reason ?? 'hard reject'}); I/O fails with EIO until the target accepts a login`,
          );
        }
        if (this.st === 'fail-fast') this.failedInFailFast++;
        this.scheduleNextAttempt(ev.retrySoon === true);
        return done();

      case 'identity-verified':
        if (this.ph !== 'verifying' || ev.attempt !== this.attemptNo)
          return refuse(this.staleReason(ev.type, ev.attempt, 'verifying'));
        if (!this.setState('running', ev.type)) return refuse(transitionError(from, 'running')!);
        this.emit({ type: 'release-io' });
        return done();

      case 'identity-mismatch':
        if (this.ph !== 'verifying' || ev.attempt !== this.attemptNo)
          return refuse(this.staleReason(ev.type, ev.attempt, 'verifying'));
        this.enterLost(
          ev.type,
          'identity-mismatch',
          `${this.name}: the LUN behind the new connection is a different disk (${ev.detail}); no I/O is sent to it, the device is kept in state lost; fix the target and request a reconnect`,
        );
        return done();

      case 'explicit-reconnect':
        if (from === 'lost') {
          this.enterBlocked(ev.type, true);
        } else if (this.ph === 'waiting' || this.ph === 'idle') {
          this.cancelTimer('reconnect');
          this.startAttempt();
        } // connecting/verifying: an attempt is already under way.
        return done();

      case 'path-up':
        // The back-off of fail-fast starts over: an attempt that fails right after the path came
        // back (the target not answering yet) is followed 2 x reconnect_delay later, not after the
        // long delay the outage had grown to.
        this.failedInFailFast = 0;
        // Also when reconnect_delay is off ('idle'): the path coming back is what it waits for.
        if (this.ph === 'waiting' || this.ph === 'idle') {
          this.cancelTimer('reconnect');
          this.startAttempt();
        } // connecting/verifying: an attempt is already under way.
        return done();

      case 'detach':
        if (!this.setState('detached', ev.type)) return refuse(transitionError(from, 'detached')!);
        this.emit({ type: 'stop-reconnecting' });
        this.failIo('detached', `${this.name}: detached${ev.reason ? ` (${ev.reason})` : ''}`);
        this.emit({ type: 'remove-device' });
        return done();

      case 'reconnect-timer':
        if (this.ph !== 'waiting')
          return refuse(`reconnect-timer in phase ${this.ph}: no reconnect attempt is waiting`);
        this.cancelTimer('reconnect'); // no-op when the timer itself fired
        this.startAttempt();
        return done();

      case 'fast-io-fail-tmo':
        if (!this.setState('fail-fast', ev.type)) return refuse(transitionError(from, 'fail-fast')!);
        this.failIo(
          'fail-fast',
          `${this.name}: fast_io_fail_tmo (${formatTmo(this.params.fastIoFailTmo)} s) expired; I/O fails with EIO until the target is back`,
        );
        return done();

      case 'dev-loss-tmo':
        this.enterLost(
          ev.type,
          'dev-loss',
          `${this.name}: dev_loss_tmo (${formatTmo(this.params.devLossTmo)} s) expired; reconnecting stopped, I/O fails with EIO, the device is kept; request a reconnect to resume`,
        );
        return done();
    }
  }

  private staleReason(type: RportEventType, attempt: number, want: ReconnectPhase): string {
    return `${type} for attempt ${attempt} refused: phase is ${this.ph} of attempt ${this.attemptNo}, expected ${want}`;
  }

  /** The one gate for state changes: refuses what TRANSITIONS does not list; cancels timers the new state does not own. */
  private setState(to: RportState, cause: RportEventType): boolean {
    const from = this.st;
    if (transitionError(from, to) !== undefined) return false;
    this.st = to;
    for (const name of Object.keys(TIMER_OWNERS) as TimerName[]) {
      if (!TIMER_OWNERS[name].includes(to)) this.cancelTimer(name);
    }
    if (to !== 'blocked' && to !== 'fail-fast') this.ph = 'none';
    if (to === 'running') {
      this.attemptNo = 0;
      this.failed = 0;
      this.failure = undefined;
    }
    this.emit({ type: 'state-changed', from, to, cause });
    return true;
  }

  /** running -> blocked (a failure) or lost -> blocked (explicit reconnect, which attempts at once). */
  private enterBlocked(cause: RportEventType, attemptNow: boolean): void {
    if (!this.setState('blocked', cause)) return;
    this.failure = undefined;
    this.attemptNo = 0;
    this.failedInFailFast = 0;
    this.emit({ type: 'hold-io' });
    const { fastIoFailTmo, devLossTmo } = this.params;
    if (fastIoFailTmo !== 'off') this.armTimer('fast-io-fail', fastIoFailTmo * 1000);
    if (devLossTmo !== 'off') this.armTimer('dev-loss', devLossTmo * 1000);
    if (attemptNow) this.startAttempt();
    else this.scheduleNextAttempt();
  }

  private enterLost(cause: RportEventType, reason: FailReason, message: string): void {
    if (!this.setState('lost', cause)) return;
    this.emit({ type: 'stop-reconnecting' });
    this.failIo(reason, message);
  }

  private failIo(reason: FailReason, message: string): void {
    this.failure = { reason, message };
    this.emit({ type: 'fail-io', reason, message });
  }

  private startAttempt(): void {
    this.attemptNo++;
    this.attemptStartedAt = this.scheduler.now();
    this.ph = 'connecting';
    this.emit({ type: 'reconnect', attempt: this.attemptNo });
  }

  /**
   * Arm the reconnect timer for the next attempt, or go idle if reconnect_delay is off: every
   * reconnect_delay while blocked, counted from the start of the attempt before (and for the first
   * attempt of fail-fast), with back-off after each failure in fail-fast. While blocked, after an
   * attempt that failed with `retrySoon`, the period is RETRY_SOON_MS.
   */
  private scheduleNextAttempt(retrySoon = false): void {
    if (this.params.reconnectDelay === 'off') {
      this.ph = 'idle';
      return;
    }
    const next = this.attemptNo + 1;
    // The cadence counts from the start of the attempt that failed: one that took its whole
    // reconnect_delay (a login into a black hole, abandoned at its deadline) is followed at once.
    const sinceAttempt = this.attemptNo > 0 ? this.scheduler.now() - this.attemptStartedAt : 0;
    const periodMs =
      retrySoon && this.st === 'blocked'
        ? Math.min(RETRY_SOON_MS, this.params.reconnectDelay * 1000)
        : this.params.reconnectDelay * 1000;
    const delayMs =
      this.st === 'fail-fast' && this.failedInFailFast > 0
        ? backoffDelayMs(this.failedInFailFast, this.params, this.jitter, this.random)
        : Math.max(0, Math.round(periodMs - sinceAttempt));
    this.ph = 'waiting';
    this.armTimer('reconnect', delayMs);
    this.emit({ type: 'reconnect-scheduled', attempt: next, delayMs });
  }

  private armTimer(name: TimerName, ms: number): void {
    this.cancelTimer(name);
    const handle = this.scheduler.setTimer(
      ms,
      () => {
        // Re-check before acting: a cancelled or replaced timer must do nothing; the event table
        // then re-checks the state.
        if (this.timers[name] !== handle) return;
        delete this.timers[name];
        this.handle({ type: TIMER_EVENT[name] } as RportEvent);
      },
      `${this.name}:${name}`,
    );
    this.timers[name] = handle;
  }

  private cancelTimer(name: TimerName): void {
    const h = this.timers[name];
    if (h !== undefined) {
      this.scheduler.cancel(h);
      delete this.timers[name];
    }
  }
}
