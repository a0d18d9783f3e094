import t from 'tap';
import {
  RETRY_SOON_MS,
  chkready,
  EVENT_TABLE,
  Rport,
  RPORT_EVENT_TYPES,
  RPORT_STATES,
  TIMER_OWNERS,
  transitionError,
  TRANSITIONS,
  type ReconnectPhase,
  type RportAction,
  type RportEvent,
  type RportEventType,
  type RportState,
  type TimerName,
} from '../src/fsm/rport.js';
import { VirtualScheduler } from '../src/fsm/scheduler.js';
import { TmoValidationError, type TmoParams } from '../src/fsm/timers.js';
import { mulberry32, pick, randInt } from '../src/fsm/prng.js';

// ---- Expected tables, written out independently of src/fsm/rport.ts ----

/** Legal moves as "from>to" strings. */
const LEGAL = new Set([
  'running>blocked',
  'running>detached',
  'blocked>running',
  'blocked>fail-fast',
  'blocked>lost',
  'blocked>detached',
  'fail-fast>running',
  'fail-fast>lost',
  'fail-fast>detached',
  'lost>blocked',
  'lost>detached',
]);

type Expect = RportState | 'stay' | 'refused';
const R = 'refused' as const;
// Columns in RPORT_EVENT_TYPES order:
// failure-detected, reconnect-succeeded, reconnect-failed, identity-verified, identity-mismatch,
// explicit-reconnect, path-up, detach, reconnect-timer, fast-io-fail-tmo, dev-loss-tmo
const MATRIX: Record<RportState, Expect[]> = {
  running: ['blocked', R, R, R, R, R, R, 'detached', R, R, R],
  blocked: ['stay', 'stay', 'stay', 'running', 'lost', 'stay', 'stay', 'detached', 'stay', 'fail-fast', 'lost'],
  'fail-fast': ['stay', 'stay', 'stay', 'running', 'lost', 'stay', 'stay', 'detached', 'stay', R, 'lost'],
  lost: ['stay', R, R, R, R, 'blocked', R, 'detached', R, R, R],
  detached: [R, R, R, R, R, R, R, R, R, R, R],
};

/** Actions (types) each accepted pair must emit, in order. Key "state/event". */
const ACTIONS: Record<string, RportAction['type'][]> = {
  'running/failure-detected': ['state-changed', 'hold-io', 'reconnect-scheduled'],
  'running/detach': ['state-changed', 'stop-reconnecting', 'fail-io', 'remove-device'],
  'lost/failure-detected': [],
  'lost/explicit-reconnect': ['state-changed', 'hold-io', 'reconnect'],
  'lost/detach': ['state-changed', 'stop-reconnecting', 'fail-io', 'remove-device'],
};
for (const s of ['blocked', 'fail-fast'] as const) {
  Object.assign(ACTIONS, {
    [`${s}/failure-detected`]: [],
    [`${s}/reconnect-succeeded`]: ['verify-identity'],
    [`${s}/reconnect-failed`]: ['reconnect-scheduled'],
    [`${s}/identity-verified`]: ['state-changed', 'release-io'],
    [`${s}/identity-mismatch`]: ['state-changed', 'stop-reconnecting', 'fail-io'],
    [`${s}/explicit-reconnect`]: ['reconnect'],
    [`${s}/path-up`]: ['reconnect'],
    [`${s}/detach`]: ['state-changed', 'stop-reconnecting', 'fail-io', 'remove-device'],
    [`${s}/reconnect-timer`]: ['reconnect'],
    [`${s}/dev-loss-tmo`]: ['state-changed', 'stop-reconnecting', 'fail-io'],
  });
}
ACTIONS['blocked/fast-io-fail-tmo'] = ['state-changed', 'fail-io'];

// ---- Helpers ----

const TMO: TmoParams = { reconnectDelay: 1, reconnectDelayMax: 30, fastIoFailTmo: 5, devLossTmo: 600 };

/** random() = 0.5 leaves back-off delays unjittered. */
function make(tmo: Partial<TmoParams> = {}, random: () => number = () => 0.5) {
  const s = new VirtualScheduler();
  const r = new Rport({ scheduler: s, tmo: { ...TMO, ...tmo }, random, name: 'port-1:1' });
  const actions: RportAction[] = [];
  r.subscribe((a) => actions.push(a));
  /** virtual time at which each reconnect attempt started */
  const at: number[] = [];
  r.subscribe((a) => {
    if (a.type === 'reconnect') at.push(s.now());
  });
  const misfires: string[] = [];
  s.onFire = (label) => {
    const name = label?.split(':').pop() as TimerName;
    if (!TIMER_OWNERS[name].includes(r.state)) misfires.push(`${name} fired in ${r.state}`);
  };
  return { s, r, actions, at, misfires };
}

/** Bring a fresh rport into `state` with reconnect phase `phase` (blocked/fail-fast only). */
function driveTo(state: RportState, phase: ReconnectPhase = 'waiting') {
  const m = make();
  const { r, s } = m;
  const setPhase = () => {
    if (phase === 'waiting') return;
    if (r.phase === 'waiting') r.handle({ type: 'reconnect-timer' });
    if (phase === 'verifying') r.handle({ type: 'reconnect-succeeded', attempt: r.attempt });
  };
  if (state === 'blocked') {
    r.handle({ type: 'failure-detected' });
    setPhase();
  } else if (state === 'fail-fast') {
    r.handle({ type: 'failure-detected' });
    r.handle({ type: 'reconnect-timer' });
    r.handle({ type: 'reconnect-failed', attempt: r.attempt });
    s.advance(5000); // attempt 2 is due at 1000 + 2000 ms: cancel-free path to fail-fast
    if (r.phase === 'connecting') r.handle({ type: 'reconnect-failed', attempt: r.attempt });
    setPhase();
  } else if (state === 'lost') {
    r.handle({ type: 'failure-detected' });
    r.handle({ type: 'dev-loss-tmo' });
  } else if (state === 'detached') {
    r.handle({ type: 'detach' });
  }
  m.actions.length = 0;
  return m;
}

function eventFor(type: RportEventType, r: Rport): RportEvent {
  switch (type) {
    case 'reconnect-succeeded':
    case 'reconnect-failed':
    case 'identity-verified':
      return { type, attempt: r.attempt } as RportEvent;
    case 'identity-mismatch':
      return { type, attempt: r.attempt, detail: 'serial "A" != "B"' };
    default:
      return { type } as RportEvent;
  }
}

/** The phase that makes an event applicable in blocked/fail-fast. */
function phaseFor(type: RportEventType): ReconnectPhase {
  if (type === 'reconnect-succeeded' || type === 'reconnect-failed') return 'connecting';
  if (type === 'identity-verified' || type === 'identity-mismatch') return 'verifying';
  return 'waiting';
}

// ---- Tests ----

t.test('transition table: all 25 state pairs, one gate', async (t) => {
  for (const from of RPORT_STATES) {
    for (const to of RPORT_STATES) {
      const legal = LEGAL.has(`${from}>${to}`);
      t.equal(transitionError(from, to) === undefined, legal, `${from} -> ${to} ${legal ? 'allowed' : 'refused'}`);
      t.equal(TRANSITIONS[from].includes(to), legal);
    }
  }
  t.match(transitionError('lost', 'running'), /illegal rport transition lost -> running/);
  t.match(transitionError('blocked', 'blocked'), /already blocked/);
  t.same(RPORT_STATES, ['running', 'blocked', 'fail-fast', 'lost', 'detached'], 'sysfs state strings');
});

t.test('chkready verdicts', async (t) => {
  t.same(
    RPORT_STATES.map((s) => chkready(s)),
    ['go', 'queue', 'fail', 'fail', 'fail'],
  );
});

t.test('event table: every state x event pair, allowed and refused', async (t) => {
  for (const state of RPORT_STATES) {
    RPORT_EVENT_TYPES.forEach((type, col) => {
      const want = MATRIX[state][col]!;
      t.equal(EVENT_TABLE[state][type], want, `table ${state}/${type}`);
      if (want !== 'stay' && want !== 'refused')
        t.ok(LEGAL.has(`${state}>${want}`), `${state}/${type} target is a legal move`);

      const { r, actions, misfires, s } = driveTo(state, phaseFor(type));
      t.equal(r.state, state, `setup reached ${state}`);
      const timersBefore = r.armedTimers().sort();
      const res = r.handle(eventFor(type, r));
      const label = `${state} x ${type}`;
      if (want === 'refused') {
        t.equal(res.outcome, 'refused', `${label}: refused`);
        t.match(res.reason, new RegExp(`${type}.*${state}`), `${label}: reason names event and state`);
        t.equal(r.state, state, `${label}: state unchanged`);
        t.same(actions, [], `${label}: no action`);
        t.same(r.armedTimers().sort(), timersBefore, `${label}: timers unchanged`);
      } else {
        const to = want === 'stay' ? state : want;
        t.equal(res.outcome, want === 'stay' ? 'stayed' : 'moved', `${label}: outcome`);
        t.equal(r.state, to, `${label}: now ${to}`);
        t.same(
          actions.map((a) => a.type),
          ACTIONS[`${state}/${type}`],
          `${label}: actions`,
        );
        const sc = actions.find((a) => a.type === 'state-changed');
        if (sc) t.same(sc, { type: 'state-changed', from: state, to, cause: type }, `${label}: state-changed`);
        for (const name of r.armedTimers())
          t.ok(TIMER_OWNERS[name].includes(to), `${label}: ${name} timer owned by ${to}`);
      }
      // Whatever is still armed must never fire outside its owning states.
      s.advance(10_000_000);
      t.same(misfires, [], `${label}: no timer fired outside its owners`);
    });
  }
});

t.test('reconnect phases within blocked: stale and out-of-phase results are refused', async (t) => {
  type P = Exclude<ReconnectPhase, 'none'>;
  const types: RportEventType[] = [
    'reconnect-succeeded',
    'reconnect-failed',
    'identity-verified',
    'identity-mismatch',
    'reconnect-timer',
    'explicit-reconnect',
    'path-up',
  ];
  // expected [outcome, phase after] per phase, columns as `types`
  const want: Record<P, [string, string][]> = {
    idle: [
      ['refused', 'idle'],
      ['refused', 'idle'],
      ['refused', 'idle'],
      ['refused', 'idle'],
      ['refused', 'idle'],
      ['stayed', 'connecting'],
      ['stayed', 'connecting'],
    ],
    waiting: [
      ['refused', 'waiting'],
      ['refused', 'waiting'],
      ['refused', 'waiting'],
      ['refused', 'waiting'],
      ['stayed', 'connecting'],
      ['stayed', 'connecting'],
      ['stayed', 'connecting'],
    ],
    connecting: [
      ['stayed', 'verifying'],
      ['stayed', 'waiting'],
      ['refused', 'connecting'],
      ['refused', 'connecting'],
      ['refused', 'connecting'],
      ['stayed', 'connecting'],
      ['stayed', 'connecting'],
    ],
    verifying: [
      ['refused', 'verifying'],
      ['stayed', 'waiting'],
      ['moved', 'none'],
      ['moved', 'none'],
      ['refused', 'verifying'],
      ['stayed', 'verifying'],
      ['stayed', 'verifying'],
    ],
  };
  for (const phase of Object.keys(want) as P[]) {
    types.forEach((type, i) => {
      const m = make(phase === 'idle' ? { reconnectDelay: 'off' } : {});
      const { r } = m;
      r.handle({ type: 'failure-detected' });
      if (phase === 'connecting' || phase === 'verifying') r.handle({ type: 'reconnect-timer' });
      if (phase === 'verifying') r.handle({ type: 'reconnect-succeeded', attempt: 1 });
      t.equal(r.phase, phase, `setup phase ${phase}`);
      const res = r.handle(eventFor(type, r));
      t.same([res.outcome, r.phase], want[phase][i], `${phase} x ${type}`);
    });
  }
  // A result for another attempt than the current one is stale.
  const { r } = make();
  r.handle({ type: 'failure-detected' });
  r.handle({ type: 'reconnect-timer' });
  r.handle({ type: 'reconnect-failed', attempt: 1 });
  r.handle({ type: 'reconnect-timer' });
  t.equal(r.attempt, 2);
  t.match(r.handle({ type: 'reconnect-succeeded', attempt: 1 }), {
    outcome: 'refused',
    reason: /attempt 1 refused: phase is connecting of attempt 2/,
  });
  t.equal(r.handle({ type: 'reconnect-succeeded', attempt: 2 }).outcome, 'stayed');
  t.equal(r.handle({ type: 'identity-verified', attempt: 1 }).outcome, 'refused');
  t.equal(r.handle({ type: 'identity-verified', attempt: 2 }).outcome, 'moved');
  t.equal(r.state, 'running');
});

t.test('outage timeline: cadence, fast_io_fail, back-off, dev_loss, nothing after lost', async (t) => {
  const { s, r, actions, misfires } = make();
  const attempts: [number, number][] = [];
  // The owner fails every attempt at once, from inside the listener (exercises run-to-completion).
  r.subscribe((a) => {
    if (a.type === 'reconnect') {
      attempts.push([a.attempt, s.now()]);
      t.equal(r.handle({ type: 'reconnect-failed', attempt: a.attempt }).outcome, 'deferred');
    }
  });
  r.handle({ type: 'failure-detected', reason: 'link down' });
  t.equal(r.state, 'blocked');
  t.same(r.armedTimers().sort(), ['dev-loss', 'fast-io-fail', 'reconnect']);
  s.advance(4999);
  t.equal(r.state, 'blocked', 'still blocked just before fast_io_fail_tmo');
  s.advance(1);
  t.equal(r.state, 'fail-fast', 'fail-fast at exactly 5 s');
  t.match(
    actions.find((a) => a.type === 'fail-io'),
    { reason: 'fail-fast', message: /fast_io_fail_tmo \(5 s\) expired/ },
  );
  s.advance(600_000 - 5000 - 1);
  t.equal(r.state, 'fail-fast');
  s.advance(1);
  t.equal(r.state, 'lost', 'lost at exactly dev_loss_tmo');
  t.same(r.armedTimers(), [], 'no timer armed in lost');
  // Blocked: an attempt every reconnect_delay (1 s), no growth; the one due at 5 s runs just after
  // fast_io_fail_tmo (its timer was armed first). Fail-fast: step k waits min(30 s, 1 s x 2^k)
  // after the previous failure (random() = 0.5: no jitter).
  const expectTimes = [1000, 2000, 3000, 4000, 5000];
  for (let k = 1, at = 5000; ; k++) {
    at += Math.min(30_000, 1000 * 2 ** k);
    if (at >= 600_000) break;
    expectTimes.push(at);
  }
  t.same(
    attempts.map(([, at]) => at),
    expectTimes,
  );
  t.same(
    attempts.map(([n]) => n),
    expectTimes.map((_, i) => i + 1),
  );
  t.equal(r.failedReconnects, expectTimes.length);
  const lostActions = actions.slice(actions.findIndex((a) => a.type === 'state-changed' && a.to === 'lost'));
  t.same(
    lostActions.map((a) => a.type),
    ['state-changed', 'stop-reconnecting', 'fail-io'],
  );
  t.match(lostActions[2], { reason: 'dev-loss', message: /dev_loss_tmo \(600 s\) expired.*device is kept/ });
  const n = attempts.length;
  s.advance(10_000_000);
  t.equal(attempts.length, n, 'no reconnect attempt after lost');
  t.same(misfires, []);

  // Explicit reconnect: back to blocked, attempt 1 at once, fresh timers.
  actions.length = 0;
  r.handle({ type: 'explicit-reconnect' });
  t.equal(r.state, 'blocked');
  t.same(attempts.at(-1), [1, s.now()], 'attempt 1 starts immediately');
  t.same(r.armedTimers().sort(), ['dev-loss', 'fast-io-fail', 'reconnect']);
});

t.test('fail-fast back-off: ±jitter from the injected random source; blocked has none', async (t) => {
  const seq = [0.5, 0.25, 0.999];
  let i = 0;
  const { s, r, actions } = make({ fastIoFailTmo: 2 }, () => seq[i++ % seq.length]!);
  r.handle({ type: 'failure-detected' });
  for (let k = 0; k < 5; k++) {
    s.advance(s.nextDue()! - s.now());
    if (r.phase === 'connecting') r.handle({ type: 'reconnect-failed', attempt: r.attempt });
  }
  const delays = actions.flatMap((a) => (a.type === 'reconnect-scheduled' ? [[a.attempt, a.delayMs]] : []));
  t.same(delays, [
    [1, 1000], // blocked: every reconnect_delay
    [2, 1000],
    [3, 2000], // fail-fast step 1: 2 s x (1 + 0.2 x (2 x 0.5 - 1))
    [4, 3600], // step 2: 4 s, 10 % shorter
    [5, 9597], // step 3: 8 s, 20 % longer (almost)
    [6, 16000], // the source wrapped round
  ]);
  t.equal(r.state, 'fail-fast');
});

t.test('sub-second reconnect_delay: the blocked cadence follows it', async (t) => {
  const { s, r, at } = make({ reconnectDelay: 0.25 });
  r.subscribe((a) => {
    if (a.type === 'reconnect') r.handle({ type: 'reconnect-failed', attempt: a.attempt });
  });
  r.handle({ type: 'failure-detected' });
  s.advance(1000);
  t.same(at, [250, 500, 750, 1000]);
});

t.test('blocked: the cadence counts from the start of the attempt before, however long it took', async (t) => {
  const { s, r, actions, at } = make();
  r.handle({ type: 'failure-detected' });
  s.advance(1000); // attempt 1 at 1000
  s.advance(700);
  r.handle({ type: 'reconnect-failed', attempt: 1 }); // failed after 700 ms: attempt 2 at 2000
  t.match(actions.at(-1), { type: 'reconnect-scheduled', attempt: 2, delayMs: 300 });
  s.advance(300);
  s.advance(1500);
  r.handle({ type: 'reconnect-failed', attempt: 2 }); // took 1.5 s (its login deadline): attempt 3 at once
  t.match(actions.at(-1), { type: 'reconnect-scheduled', attempt: 3, delayMs: 0 });
  s.advance(0);
  t.same(at, [1000, 2000, 3500]);
  t.equal(r.state, 'blocked');
});

t.test(
  'blocked: a retrySoon failure is followed RETRY_SOON_MS after its start; another waits the cadence',
  async (t) => {
    const { s, r, actions, at } = make();
    r.handle({ type: 'failure-detected' });
    s.advance(1000); // attempt 1 at 1000
    s.advance(40);
    r.handle({ type: 'reconnect-failed', attempt: 1, reason: 'port not enabled', retrySoon: true });
    t.match(actions.at(-1), { type: 'reconnect-scheduled', attempt: 2, delayMs: RETRY_SOON_MS - 40 });
    s.advance(RETRY_SOON_MS - 40); // attempt 2 at 1250
    s.advance(30);
    r.handle({ type: 'reconnect-failed', attempt: 2, retrySoon: true });
    s.advance(RETRY_SOON_MS - 30); // attempt 3 at 1500
    s.advance(100);
    r.handle({ type: 'reconnect-failed', attempt: 3, reason: 'ENETUNREACH' }); // not retrySoon: the full period
    t.match(actions.at(-1), { type: 'reconnect-scheduled', attempt: 4, delayMs: 900 });
    s.advance(900); // attempt 4 at 2500
    t.same(at, [1000, 1000 + RETRY_SOON_MS, 1000 + 2 * RETRY_SOON_MS, 2500]);
    t.equal(r.state, 'blocked');
    // In fail-fast the back-off stands, retrySoon or not.
    s.advance(2500); // fast_io_fail_tmo at 5000: fail-fast (attempt 4 still connecting)
    t.equal(r.state, 'fail-fast');
    r.handle({ type: 'reconnect-failed', attempt: 4, retrySoon: true });
    t.match(actions.at(-1), { type: 'reconnect-scheduled', attempt: 5, delayMs: 2000 });
    // Never longer than reconnect_delay: a shorter reconnect_delay is the period.
    const m = make({ reconnectDelay: 0.1 });
    m.r.handle({ type: 'failure-detected' });
    m.s.advance(100);
    m.r.handle({ type: 'reconnect-failed', attempt: 1, retrySoon: true });
    t.match(m.actions.at(-1), { type: 'reconnect-scheduled', attempt: 2, delayMs: 100 });
  },
);

t.test('a hard reject moves blocked to fail-fast at once, with the reason', async (t) => {
  const { s, r, actions } = make();
  r.handle({ type: 'failure-detected', reason: 'link down' });
  t.equal(r.lastError, 'link down');
  s.advance(1000);
  t.equal(r.phase, 'connecting');
  const res = r.handle({ type: 'reconnect-failed', attempt: 1, reason: 'IU too large', hard: true });
  t.same([res.outcome, r.state], ['moved', 'fail-fast']);
  t.equal(r.lastError, 'IU too large');
  t.match(r.lastFailure, { reason: 'fail-fast', message: /IU too large.*EIO/ });
  t.match(actions.at(-1), { type: 'reconnect-scheduled', attempt: 2, delayMs: 2000 }, 'back-off from step 1');
  t.notOk(r.armedTimers().includes('fast-io-fail'), 'fast_io_fail timer cancelled');
  // A transient failure in blocked stays blocked, on the cadence.
  const m = make();
  m.r.handle({ type: 'failure-detected' });
  m.s.advance(1000);
  m.r.handle({ type: 'reconnect-failed', attempt: 1, reason: 'port not enabled' });
  t.equal(m.r.state, 'blocked');
  t.match(m.actions.at(-1), { type: 'reconnect-scheduled', delayMs: 1000 });
});

t.test('path-up starts an attempt at once while waiting; never from lost', async (t) => {
  const { s, r } = make({ fastIoFailTmo: 2 });
  r.handle({ type: 'failure-detected' });
  s.advance(300);
  r.handle({ type: 'path-up' });
  t.same([r.phase, r.attempt], ['connecting', 1]);
  r.handle({ type: 'path-up' });
  t.equal(r.attempt, 1, 'no second attempt while one is under way');
  r.handle({ type: 'dev-loss-tmo' });
  t.equal(r.handle({ type: 'path-up' }).outcome, 'refused');
  t.equal(r.state, 'lost');
});

t.test('path-up in fail-fast restarts the back-off: a failed attempt after it waits 2 x reconnect_delay', async (t) => {
  const { s, r, actions } = make({ fastIoFailTmo: 2, reconnectDelay: 1, reconnectDelayMax: 30 });
  r.handle({ type: 'failure-detected' });
  r.handle({ type: 'fast-io-fail-tmo' });
  t.equal(r.state, 'fail-fast');
  for (let i = 0; i < 4; i++) {
    s.advance(60_000); // whatever the delay, the timer has fired
    t.equal(r.phase, 'connecting');
    r.handle({ type: 'reconnect-failed', attempt: r.attempt, reason: 'no answer' });
  }
  t.match(actions.at(-1), { type: 'reconnect-scheduled', delayMs: 16_000 }, 'back-off grown to 16 s');
  r.handle({ type: 'path-up', reason: 'PORT_ACTIVE' });
  t.equal(r.phase, 'connecting', 'path-up: an attempt at once');
  r.handle({ type: 'reconnect-failed', attempt: r.attempt, reason: 'no answer' });
  t.match(actions.at(-1), { type: 'reconnect-scheduled', delayMs: 2000 }, 'then 2 x reconnect_delay, not 32 s');
});

t.test('successful reconnect: verify identity, then running with timers cancelled', async (t) => {
  const { s, r, actions, misfires } = make();
  r.handle({ type: 'failure-detected' });
  s.advance(1000);
  t.equal(r.phase, 'connecting');
  r.handle({ type: 'reconnect-succeeded', attempt: 1 });
  t.equal(r.state, 'blocked', 'I/O stays held during the identity check');
  t.equal(r.phase, 'verifying');
  r.handle({ type: 'identity-verified', attempt: 1 });
  t.equal(r.state, 'running');
  t.equal(r.phase, 'none');
  t.equal(r.attempt, 0);
  t.same(r.armedTimers(), []);
  t.same(
    actions.map((a) => a.type),
    ['state-changed', 'hold-io', 'reconnect-scheduled', 'reconnect', 'verify-identity', 'state-changed', 'release-io'],
  );
  s.advance(10_000_000);
  t.equal(r.state, 'running', 'no stale timer fires later');
  t.same(misfires, []);
});

t.test('identity mismatch: lost with a clear message, explicit reconnect recovers', async (t) => {
  const { r, actions } = make();
  r.handle({ type: 'failure-detected' });
  r.handle({ type: 'reconnect-timer' });
  r.handle({ type: 'reconnect-succeeded', attempt: 1 });
  r.handle({ type: 'identity-mismatch', attempt: 1, detail: 'serial "A" != "B"' });
  t.equal(r.state, 'lost');
  t.match(r.lastFailure, {
    reason: 'identity-mismatch',
    message: /different disk \(serial "A" != "B"\).*no I\/O is sent/,
  });
  t.ok(actions.some((a) => a.type === 'stop-reconnecting'));
  r.handle({ type: 'explicit-reconnect' });
  t.equal(r.state, 'blocked');
  t.equal(r.lastFailure, undefined);
  r.handle({ type: 'reconnect-succeeded', attempt: 1 });
  r.handle({ type: 'identity-verified', attempt: 1 });
  t.equal(r.state, 'running');
});

t.test('reconnect_delay off: no automatic attempts; setTimeouts switches them on', async (t) => {
  const { s, r, actions } = make({ reconnectDelay: 'off' });
  r.handle({ type: 'failure-detected' });
  t.equal(r.phase, 'idle');
  t.same(r.armedTimers().sort(), ['dev-loss', 'fast-io-fail']);
  s.advance(4000);
  t.notOk(actions.some((a) => a.type === 'reconnect'));
  t.throws(() => r.setTimeouts({ reconnectDelay: 0 }), TmoValidationError);
  t.equal(r.tmo.reconnectDelay, 'off', 'invalid patch changes nothing');
  r.setTimeouts({ reconnectDelay: 2 });
  t.equal(r.phase, 'waiting');
  s.advance(2000);
  t.equal(r.phase, 'connecting');
  r.handle({ type: 'reconnect-failed', attempt: 1 });
  r.setTimeouts({ reconnectDelay: 'off' });
  t.equal(r.phase, 'idle');
  t.same(r.armedTimers().sort(), ['dev-loss'], 'fast-io-fail fired at 5 s; reconnect cancelled');
  t.equal(r.state, 'fail-fast');
  t.throws(() => new Rport({ scheduler: s, tmo: { fastIoFailTmo: 'off', devLossTmo: 'off' } }), /both "off"/);
});

t.test(
  'fast_io_fail_tmo off: blocked until dev_loss_tmo; dev_loss_tmo off: fail-fast forever, reconnecting',
  async (t) => {
    {
      const { s, r } = make({ fastIoFailTmo: 'off', devLossTmo: 60 });
      r.handle({ type: 'failure-detected' });
      s.advance(59_999);
      t.equal(r.state, 'blocked');
      s.advance(1);
      t.equal(r.state, 'lost');
    }
    {
      const { s, r, actions } = make({ fastIoFailTmo: 3, devLossTmo: 'off' });
      r.subscribe((a) => a.type === 'reconnect' && r.handle({ type: 'reconnect-failed', attempt: a.attempt }));
      r.handle({ type: 'failure-detected' });
      s.advance(3000);
      t.equal(r.state, 'fail-fast');
      s.advance(100_000_000);
      t.equal(r.state, 'fail-fast', 'never lost');
      t.ok(actions.filter((a) => a.type === 'reconnect').length > 3000, 'still reconnecting every 30 s');
    }
  },
);

t.test('randomized event sequences keep the invariants', async (t) => {
  const SEEDS = 30;
  const STEPS = 3000;
  let moves = 0;
  let refusals = 0;
  for (let seed = 1; seed <= SEEDS; seed++) {
    const rnd = mulberry32(seed);
    const tmo: TmoParams = pick(rnd, [
      TMO,
      { reconnectDelay: 'off', reconnectDelayMax: 30, fastIoFailTmo: 2, devLossTmo: 20 },
      { reconnectDelay: 2, reconnectDelayMax: 8, fastIoFailTmo: 'off', devLossTmo: 15 },
      { reconnectDelay: 1, reconnectDelayMax: 4, fastIoFailTmo: 0, devLossTmo: 'off' },
    ]);
    const s = new VirtualScheduler();
    const r = new Rport({ scheduler: s, tmo, random: rnd, name: `seed${seed}` });
    const errors: string[] = [];
    let lastScheduled: { attempt: number; delayMs: number; at: number } | undefined;
    // the blocked cadence counts from the start of the attempt before (none yet: a whole reconnect_delay)
    let attemptAt: number | undefined;
    r.subscribe((a) => {
      if (a.type === 'state-changed' && !LEGAL.has(`${a.from}>${a.to}`)) errors.push(`illegal move ${a.from}>${a.to}`);
      if (a.type === 'state-changed' && a.to === 'blocked') attemptAt = undefined;
      if (a.type === 'reconnect') attemptAt = s.now();
      if (a.type === 'reconnect-scheduled') {
        const base = (tmo.reconnectDelay as number) * 1000;
        const cap = tmo.reconnectDelayMax * 1000;
        const cadence = attemptAt === undefined ? base : Math.max(0, base - (s.now() - attemptAt));
        if (r.state === 'blocked' && a.delayMs !== cadence)
          errors.push(`blocked: attempt ${a.attempt} delay ${a.delayMs}, not the reconnect_delay cadence ${cadence}`);
        if (r.state === 'fail-fast' && a.delayMs !== cadence && (a.delayMs > cap || a.delayMs < Math.floor(base * 1.6)))
          errors.push(`fail-fast: attempt ${a.attempt} delay ${a.delayMs} outside [1.6 x ${base}, ${cap}]`);
        lastScheduled = { ...a, at: s.now() };
      }
    });
    s.onFire = (label, at) => {
      const name = label!.split(':').pop() as TimerName;
      if (!TIMER_OWNERS[name].includes(r.state)) errors.push(`${name} fired in ${r.state}`);
      if (name === 'reconnect' && at !== lastScheduled!.at + lastScheduled!.delayMs)
        errors.push(`reconnect timer fired at ${at}, not when scheduled`);
    };
    for (let step = 0; step < STEPS && errors.length === 0; step++) {
      const roll = rnd();
      if (roll < 0.3) {
        s.advance(randInt(rnd, 40_000));
      } else {
        // Mostly events the table accepts in this state, sometimes any (detach rarely: it is terminal).
        const candidates = RPORT_EVENT_TYPES.filter(
          (e) => e !== 'detach' && (rnd() < 0.3 || EVENT_TABLE[r.state][e] !== 'refused'),
        );
        const type = rnd() < 0.003 ? 'detach' : pick(rnd, candidates.length > 0 ? candidates : RPORT_EVENT_TYPES);
        // Mostly current attempt numbers, sometimes stale ones.
        const attempt = rnd() < 0.8 ? r.attempt : randInt(rnd, r.attempt + 2);
        const ev = { type, attempt, detail: 'x' } as RportEvent;
        const from = r.state;
        const res = r.handle(ev);
        const want = EVENT_TABLE[from][type];
        if (res.outcome === 'deferred') errors.push('deferred outside a listener');
        if (want === 'refused' && res.outcome !== 'refused') errors.push(`${from}/${type} accepted against the table`);
        if (res.outcome === 'moved' && res.to !== want)
          errors.push(`${from}/${type} moved to ${res.to}, table says ${want}`);
        if (res.outcome === 'stayed' && want !== 'stay') errors.push(`${from}/${type} stayed, table says ${want}`);
        if (res.outcome === 'moved') moves++;
        if (res.outcome === 'refused') refusals++;
        if (r.state === 'detached') {
          // Terminal: everything is refused afterwards and nothing is armed.
          if (r.armedTimers().length > 0) errors.push('timers armed after detach');
          break;
        }
      }
      const inOutage = r.state === 'blocked' || r.state === 'fail-fast';
      if (inOutage === (r.phase === 'none')) errors.push(`phase ${r.phase} in state ${r.state}`);
      for (const name of r.armedTimers())
        if (!TIMER_OWNERS[name].includes(r.state)) errors.push(`${name} armed in ${r.state}`);
      if ((r.phase === 'waiting') !== r.armedTimers().includes('reconnect'))
        errors.push(`reconnect timer vs phase ${r.phase}`);
    }
    t.same(errors, [], `seed ${seed} (${tmo.reconnectDelay}/${tmo.fastIoFailTmo}/${tmo.devLossTmo})`);
  }
  t.ok(moves > 1000 && refusals > 1000, `both moves (${moves}) and refusals (${refusals}) were exercised`);
});

t.test('a timer callback that runs after its cancel does nothing (handlers re-check)', async (t) => {
  // Simulates a timer that had already fired and was queued when the FSM cancelled it.
  class LeakyScheduler extends VirtualScheduler {
    override cancel(): void {}
  }
  const s = new LeakyScheduler();
  const r = new Rport({ scheduler: s, tmo: TMO, random: () => 0 });
  const states: string[] = [];
  r.subscribe((a) => a.type === 'state-changed' && states.push(`${a.to}@${s.now()}`));
  r.handle({ type: 'failure-detected' }); // outage 1: fast-io-fail due at 5000
  s.advance(1000);
  r.handle({ type: 'reconnect-succeeded', attempt: 1 });
  r.handle({ type: 'identity-verified', attempt: 1 });
  s.advance(2000);
  r.handle({ type: 'failure-detected' }); // outage 2 at 3000: fast-io-fail due at 8000
  s.advance(4999);
  t.equal(r.state, 'blocked', 'the stale fast-io-fail timer of outage 1 (due 5000) did not fail I/O early');
  s.advance(1);
  t.same(states, ['blocked@0', 'running@1000', 'blocked@3000', 'fail-fast@8000']);
});
