import t from 'tap';
import { TransportError } from '../src/initiator/scsi-executor.js';
import { RportDriver } from '../src/fsm/driver.js';
import { assertSameLun, type LunIdentity } from '../src/fsm/identity.js';
import { EioError } from '../src/fsm/gate.js';
import { IoGate } from '../src/fsm/io-gate.js';
import { mulberry32, randInt } from '../src/fsm/prng.js';
import { Rport, TIMER_OWNERS, type RportAction, type TimerName } from '../src/fsm/rport.js';
import { settle, VirtualScheduler } from '../src/fsm/scheduler.js';
import type { TmoParams } from '../src/fsm/timers.js';

// ---- A fake LUN behind a link that can drop ----

const ID_A: LunIdentity = {
  designators: [{ designatorType: 3, codeSet: 1, value: '60014050aaaa' }],
  serial: 'SERIAL-A',
  blockCount: 1024n,
  blockSize: 512,
};
const ID_B: LunIdentity = {
  designators: [{ designatorType: 3, codeSet: 1, value: '60014050bbbb' }],
  serial: 'SERIAL-B',
  blockCount: 1024n,
  blockSize: 512,
};

/** A RAM disk: block -> last written value. Records every command it executes. */
class FakeDisk {
  readonly blocks = new Map<number, number>();
  readonly executed: { op: number; kind: 'read' | 'write'; lba: number; value?: number; at: number }[] = [];
  constructor(readonly identity: LunIdentity) {}
}

/**
 * The channel between initiator and target. Commands take `latency` ms; dropping the link fails
 * every command in flight with a TransportError (each may or may not have executed on the target,
 * at random, like a write whose response was lost) and fails new ones until a reconnect.
 */
class Link {
  up = true;
  connected = true;
  disk: FakeDisk;
  private inflight = new Set<{ fail: () => void }>();
  /** ops currently executing, by op id: must never exceed 1 for any op */
  readonly running = new Map<number, number>();
  maxConcurrentPerOp = 0;
  reconnectCalls = 0;
  stopCalls = 0;

  constructor(
    readonly s: VirtualScheduler,
    disk: FakeDisk,
    readonly latency = 1,
    readonly random: () => number = () => 0.5,
  ) {
    this.disk = disk;
  }

  private enter(op: number) {
    const n = (this.running.get(op) ?? 0) + 1;
    this.running.set(op, n);
    this.maxConcurrentPerOp = Math.max(this.maxConcurrentPerOp, n);
  }
  private leave(op: number) {
    this.running.set(op, this.running.get(op)! - 1);
  }

  /** One SCSI command on the current channel. */
  command(op: number, kind: 'read' | 'write', lba: number, value?: number): Promise<number | undefined> {
    this.enter(op);
    if (!this.connected) {
      this.leave(op);
      return Promise.reject(new TransportError('channel down', 'disconnected'));
    }
    const disk = this.disk;
    return new Promise((resolve, reject) => {
      const apply = () => {
        disk.executed.push({ op, kind, lba, value, at: this.s.now() });
        if (kind === 'write') disk.blocks.set(lba, value!);
        return kind === 'read' ? (disk.blocks.get(lba) ?? 0) : undefined;
      };
      const entry = {
        fail: () => {
          this.s.cancel(timer);
          if (this.random() < 0.5) apply(); // executed, response lost
          this.leave(op);
          reject(new TransportError('channel lost', 'disconnected'));
        },
      };
      const timer = this.s.setTimer(
        this.latency,
        () => {
          this.inflight.delete(entry);
          const v = apply();
          this.leave(op);
          resolve(v);
        },
        'disk',
      );
      this.inflight.add(entry);
    });
  }

  drop() {
    this.up = false;
    this.connected = false;
    // Newest first: failures need not arrive in submission order.
    const victims = [...this.inflight].reverse();
    this.inflight.clear();
    for (const v of victims) v.fail();
  }

  restore(disk: FakeDisk = this.disk) {
    this.up = true;
    this.disk = disk;
  }

  /** TransportHooks.reconnect: a login that takes 2 ms and works only if the link is up. */
  reconnect = (_attempt: number, signal: AbortSignal): Promise<void> => {
    this.reconnectCalls++;
    return new Promise((resolve, reject) => {
      this.s.setTimer(
        2,
        () => {
          if (signal.aborted) return reject(new Error('aborted'));
          if (!this.up) return reject(new TransportError('login: no route to target', 'disconnected'));
          this.connected = true;
          resolve();
        },
        'login',
      );
    });
  };

  stop = () => {
    this.stopCalls++;
    this.connected = false;
  };
}

const TMO: TmoParams = { reconnectDelay: 1, reconnectDelayMax: 30, fastIoFailTmo: 5, devLossTmo: 600 };

function setup(opts: { tmo?: Partial<TmoParams>; queueDepth?: number; latency?: number; random?: () => number } = {}) {
  const s = new VirtualScheduler();
  const diskA = new FakeDisk(ID_A);
  const link = new Link(s, diskA, opts.latency ?? 1, opts.random);
  const rport = new Rport({
    scheduler: s,
    tmo: { ...TMO, ...opts.tmo },
    random: opts.random ?? (() => 0),
    name: 'port-1:1',
  });
  const actions: RportAction[] = [];
  rport.subscribe((a) => actions.push(a));
  const misfires: string[] = [];
  s.onFire = (label) => {
    const name = label?.split(':').pop() as TimerName;
    if (name in TIMER_OWNERS && !TIMER_OWNERS[name].includes(rport.state)) misfires.push(`${name} in ${rport.state}`);
  };
  const driver = new RportDriver(rport, {
    reconnect: link.reconnect,
    verifyIdentity: async () => assertSameLun(ID_A, link.disk.identity),
    stop: link.stop,
  });
  const gate = new IoGate(rport, { queueDepth: opts.queueDepth ?? 64 });
  let nextOp = 0;
  type Outcome = { ok: true; value: number | undefined; at: number } | { ok: false; error: unknown; at: number };
  const outcomes = new Map<number, Outcome[]>();
  const submitted: number[] = [];
  /** Submit a block op through the gate; returns the op id. Settlements are recorded per op. */
  const submit = (kind: 'read' | 'write', lba: number, value?: number): number => {
    const op = nextOp++;
    submitted.push(op);
    outcomes.set(op, []);
    gate
      .submit(() => link.command(op, kind, lba, value))
      .then(
        (v) => outcomes.get(op)!.push({ ok: true, value: v, at: s.now() }),
        (e: unknown) => outcomes.get(op)!.push({ ok: false, error: e, at: s.now() }),
      );
    return op;
  };
  const settledOnce = () => submitted.every((op) => outcomes.get(op)!.length === 1);
  const okOps = () => submitted.filter((op) => outcomes.get(op)![0]?.ok === true);
  const eioOps = () => submitted.filter((op) => outcomes.get(op)![0]?.ok === false);
  return {
    s,
    link,
    diskA,
    rport,
    gate,
    driver,
    actions,
    outcomes,
    submit,
    submitted,
    settledOnce,
    okOps,
    eioOps,
    misfires,
  };
}

// ---- Scenarios ----

t.test('short outage: every op succeeds exactly once, replayed in submission order', async (t) => {
  const h = setup();
  const { s, link, gate, rport } = h;
  for (let i = 0; i < 20; i++) h.submit('write', i, 100 + i);
  t.equal(gate.stats.inFlight, 20);
  link.drop(); // in-flight ops fail with TransportError; the gate blocks the port
  await settle();
  t.equal(rport.state, 'blocked', 'a transport error from an op blocks the port');
  t.equal(gate.stats.held, 20);
  for (let i = 20; i < 30; i++) h.submit('write', i, 100 + i);
  t.equal(gate.stats.held, 30, 'new ops are held');
  await s.advanceAsync(2000); // attempt 1 at 1 s fails: link still down
  t.equal(rport.state, 'blocked');
  link.restore();
  const returnedAt = s.now();
  const before = h.diskA.executed.length;
  await s.advanceAsync(2000); // attempt 2 at 2 s succeeds, identity verified, I/O released
  t.equal(rport.state, 'running');
  t.ok(h.settledOnce(), 'every op settled exactly once');
  t.equal(h.eioOps().length, 0, 'no I/O error during an outage shorter than fast_io_fail_tmo');
  for (let i = 0; i < 30; i++) t.equal(h.diskA.blocks.get(i), 100 + i, `block ${i} written`);
  const replay = h.diskA.executed.slice(before).map((e) => e.op);
  t.same(replay, [...Array(30).keys()], 'replay reached the disk in submission order');
  t.equal(link.maxConcurrentPerOp, 1, 'an op never ran twice at the same time');
  t.same(gate.stats, { inFlight: 0, held: 0, waiting: 0, released: 30, retried: 20, failedEio: 0 });
  t.notOk(
    h.actions.some((a) => a.type === 'remove-device' || a.type === 'fail-io'),
    'the export never went away',
  );
  const firstDone = Math.min(...h.okOps().map((op) => h.outcomes.get(op)![0]!.at));
  // Attempt 1 started at 1000 ms (failed at 1002); blocked: attempt 2 one reconnect_delay after
  // attempt 1 started, login 2 ms, write 1 ms.
  t.equal(firstDone, 1000 + 1000 + 2 + 1, 'first completion as the blocked cadence predicts');
  t.equal(firstDone - returnedAt, 3, 'link return to first completed I/O');
  t.same(h.misfires, []);
});

t.test('outage detected by the session (no I/O in flight) also holds new I/O', async (t) => {
  const h = setup();
  h.link.drop();
  h.rport.handle({ type: 'failure-detected', reason: 'channel closed' });
  const op = h.submit('write', 7, 7);
  t.equal(h.gate.stats.held, 1);
  t.equal(h.link.running.get(op), undefined, 'held op did not reach the link');
  h.link.restore();
  await h.s.advanceAsync(1003);
  t.equal(h.rport.state, 'running');
  t.match(h.outcomes.get(op), [{ ok: true }]);
  t.equal(h.diskA.blocks.get(7), 7);
});

t.test('long outage: EIO at fast_io_fail_tmo, normal I/O after the target returns', async (t) => {
  const h = setup();
  const { s, link, gate, rport } = h;
  for (let i = 0; i < 8; i++) h.submit('write', i, i);
  link.drop();
  await settle();
  for (let i = 8; i < 12; i++) h.submit('write', i, i);
  await s.advanceAsync(4999);
  t.equal(h.eioOps().length, 0, 'nothing failed before fast_io_fail_tmo');
  await s.advanceAsync(1);
  t.equal(rport.state, 'fail-fast');
  t.equal(h.eioOps().length, 12, 'all held ops failed at once');
  for (const op of h.eioOps()) {
    const o = h.outcomes.get(op)![0]!;
    t.equal(o.at, 5000);
    t.ok(
      !o.ok &&
        o.error instanceof EioError &&
        o.error.code === 'EIO' &&
        o.error.errno === 5 &&
        o.error.reason === 'fail-fast',
    );
  }
  const during = h.submit('read', 0);
  await settle();
  t.match(
    h.outcomes.get(during),
    [{ ok: false, error: { reason: 'fail-fast', message: /fast_io_fail_tmo \(5 s\) expired/ } }],
    'new I/O fails at once',
  );
  await s.advanceAsync(20_000);
  link.restore();
  await s.advanceAsync(40_000); // attempts continue in fail-fast, capped back-off
  t.equal(rport.state, 'running');
  const after: number[] = [];
  for (let i = 0; i < 12; i++) after.push(h.submit('write', i, 1000 + i));
  const reads: number[] = [];
  await s.advanceAsync(5);
  for (let i = 0; i < 12; i++) reads.push(h.submit('read', i));
  await s.advanceAsync(5);
  for (const op of after) t.match(h.outcomes.get(op), [{ ok: true }]);
  reads.forEach((op, i) =>
    t.match(h.outcomes.get(op), [{ ok: true, value: 1000 + i }], `verify block ${i} after return`),
  );
  t.ok(h.settledOnce());
  t.equal(gate.stats.held + gate.stats.waiting + gate.stats.inFlight, 0);
  t.same(h.misfires, []);
});

t.test('dev_loss_tmo: lost keeps the device; explicit reconnect brings the same gate back', async (t) => {
  const h = setup({ tmo: { fastIoFailTmo: 2, devLossTmo: 10 } });
  const { s, link, gate, rport } = h;
  link.drop();
  rport.handle({ type: 'failure-detected' });
  await s.advanceAsync(10_000);
  t.equal(rport.state, 'lost');
  const calls = link.reconnectCalls;
  const op = h.submit('write', 1, 1);
  await settle();
  t.match(h.outcomes.get(op), [{ ok: false, error: { reason: 'dev-loss', message: /dev_loss_tmo \(10 s\) expired/ } }]);
  link.restore();
  await s.advanceAsync(100_000);
  t.equal(link.reconnectCalls, calls, 'no reconnect attempt while lost');
  t.equal(rport.state, 'lost', 'lost until asked');
  rport.handle({ type: 'explicit-reconnect' });
  t.equal(rport.state, 'blocked');
  const held = h.submit('write', 2, 2);
  await s.advanceAsync(10);
  t.equal(rport.state, 'running');
  t.match(h.outcomes.get(held), [{ ok: true }], 'I/O held during the explicit reconnect completes');
  const w = h.submit('write', 3, 3);
  await s.advanceAsync(2);
  t.match(h.outcomes.get(w), [{ ok: true }]);
  t.equal(h.diskA.blocks.get(3), 3);
  t.notOk(
    h.actions.some((a) => a.type === 'remove-device'),
    'the device was never removed',
  );
  t.equal(gate.stats.failedEio, 1);
});

t.test('identity mismatch: lost, clear error, no op reaches the new disk', async (t) => {
  const h = setup();
  const { s, link, rport } = h;
  const ops: number[] = [];
  for (let i = 0; i < 5; i++) ops.push(h.submit('write', i, i));
  link.drop();
  await settle();
  ops.push(h.submit('write', 9, 9));
  const diskB = new FakeDisk(ID_B);
  link.restore(diskB); // the target comes back with a different LUN
  await s.advanceAsync(1003);
  t.equal(rport.state, 'lost');
  t.same(diskB.executed, [], 'no command reached the other disk');
  t.equal(link.stopCalls, 1, 'the connection to the wrong LUN was closed');
  for (const op of ops) {
    t.match(h.outcomes.get(op), [
      {
        ok: false,
        error: {
          reason: 'identity-mismatch',
          message: /different disk.*serial number changed: "SERIAL-A" -> "SERIAL-B"/,
        },
      },
    ]);
  }
  const later = h.submit('read', 0);
  await settle();
  t.match(h.outcomes.get(later), [{ ok: false, error: { reason: 'identity-mismatch' } }]);
  // Operator fixes the target and asks for a reconnect.
  link.restore(h.diskA);
  rport.handle({ type: 'explicit-reconnect' });
  await s.advanceAsync(5);
  t.equal(rport.state, 'running');
  const w = h.submit('write', 4, 44);
  await s.advanceAsync(2);
  t.match(h.outcomes.get(w), [{ ok: true }]);
  t.same(diskB.executed, [], 'still nothing on the other disk');
});

t.test('hold queue bound: held + in flight never exceed queueDepth; waiters keep order', async (t) => {
  const h = setup({ queueDepth: 4, latency: 3 });
  const { s, link, gate, rport } = h;
  link.drop();
  rport.handle({ type: 'failure-detected' });
  let roomResolved = false;
  const ops: number[] = [];
  for (let i = 0; i < 10; i++) ops.push(h.submit('write', i, i));
  t.same([gate.stats.held, gate.stats.waiting], [4, 6]);
  gate.waitForRoom().then(() => (roomResolved = true));
  await settle();
  t.notOk(roomResolved, 'backpressure: no room while the queue is full');
  link.restore();
  let maxAdmitted = 0;
  for (let ms = 0; ms < 1100; ms++) {
    await s.advanceAsync(1);
    maxAdmitted = Math.max(maxAdmitted, gate.stats.held + gate.stats.inFlight);
  }
  t.equal(rport.state, 'running');
  t.ok(maxAdmitted <= 4, `at most 4 admitted (saw ${maxAdmitted})`);
  t.ok(roomResolved);
  t.ok(h.settledOnce());
  t.equal(h.okOps().length, 10);
  t.same(
    h.diskA.executed.map((e) => e.op),
    ops,
    'dispatched in submission order across the hold queue and the waiters',
  );
  // fail-fast fails waiters as well as held ops.
  link.drop();
  rport.handle({ type: 'failure-detected' });
  for (let i = 0; i < 10; i++) h.submit('write', i, i);
  t.same([gate.stats.held, gate.stats.waiting], [4, 6]);
  await s.advanceAsync(5000);
  t.equal(rport.state, 'fail-fast');
  t.same([gate.stats.held, gate.stats.waiting], [0, 0]);
  t.equal(h.eioOps().length, 10);
  t.equal(await gate.waitForRoom(), undefined);
});

t.test('errors that are not transport errors pass through without blocking the port', async (t) => {
  const h = setup();
  const err = Object.assign(new Error('MEDIUM ERROR'), { code: 'EIO' });
  const p = h.gate.submit(() => Promise.reject(err));
  await t.rejects(p, err);
  const sync = h.gate.submit(() => {
    throw new RangeError('bad request');
  });
  await t.rejects(sync, RangeError);
  t.equal(h.rport.state, 'running');
  t.equal(h.gate.stats.inFlight, 0);
});

t.test('a transport error from the old channel after reconnect is retried, not a new outage', async (t) => {
  const h = setup();
  const { s, rport, gate } = h;
  let failLate!: () => void;
  let runs = 0;
  const p = gate.submit(() => {
    runs++;
    if (runs === 1)
      return new Promise<string>((_, reject) => (failLate = () => reject(new TransportError('late', 'aborted'))));
    return Promise.resolve('done');
  });
  rport.handle({ type: 'failure-detected' }); // the session noticed first
  h.link.drop();
  h.link.restore();
  await s.advanceAsync(1003);
  t.equal(rport.state, 'running');
  failLate();
  t.equal(await p, 'done');
  t.equal(runs, 2);
  t.equal(rport.state, 'running', 'no new outage for a stale error');
  t.equal(gate.stats.retried, 1);
});

t.test('detach: everything fails, the device is removed', async (t) => {
  const h = setup();
  h.link.drop();
  h.rport.handle({ type: 'failure-detected' });
  const held = h.submit('write', 0, 0);
  h.rport.handle({ type: 'detach', reason: 'operator' });
  const later = h.submit('read', 0);
  await settle();
  t.match(h.outcomes.get(held), [{ ok: false, error: { reason: 'detached', message: /detached \(operator\)/ } }]);
  t.match(h.outcomes.get(later), [{ ok: false, error: { reason: 'detached' } }]);
  t.ok(h.actions.some((a) => a.type === 'remove-device'));
  t.equal(h.link.stopCalls, 1);
  await h.s.advanceAsync(1_000_000);
  t.equal(h.s.pending, 0, 'no timer left');
});

t.test('random flaps under load: no acknowledged write lost, no op settles twice or is lost', async (t) => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const rnd = mulberry32(seed);
    const h = setup({
      tmo: { fastIoFailTmo: 5, devLossTmo: 30, reconnectDelayMax: 4 },
      queueDepth: 16,
      latency: 2,
      random: rnd,
    });
    const { s, link, gate, rport } = h;
    const LBAS = 32;
    const lastAcked = new Array<number>(LBAS).fill(0);
    const lastSubmitted = new Array<number>(LBAS).fill(0);
    const busy = new Array<boolean>(LBAS).fill(false);
    const errors: string[] = [];
    let version = 0;
    let flaps = 0;
    let acked = 0;
    let longOutage = false;
    /** Client: at most one outstanding write per block (as a file system would), versions grow. */
    const writeOne = () => {
      const lba = randInt(rnd, LBAS);
      if (busy[lba]) return;
      busy[lba] = true;
      const v = ++version;
      lastSubmitted[lba] = v;
      gate
        .submit(() => link.command(v, 'write', lba, v))
        .then(
          () => {
            lastAcked[lba] = v;
            busy[lba] = false;
            acked++;
          },
          (e: unknown) => {
            busy[lba] = false;
            if (!(e instanceof EioError)) errors.push(`write failed with ${String(e)}`);
            else if (!['fail-fast', 'dev-loss'].includes(e.reason)) errors.push(`unexpected EIO reason ${e.reason}`);
          },
        );
    };
    while (flaps < 200) {
      for (let k = randInt(rnd, 6); k > 0; k--) writeOne();
      await s.advanceAsync(randInt(rnd, 400));
      if (gate.stats.held + gate.stats.inFlight > 16) errors.push('queue bound exceeded');
      if (link.up && rnd() < 0.08) {
        link.drop();
        flaps++;
        longOutage = rnd() < 0.1; // some outages outlast dev_loss_tmo (30 s)
      } else if (!link.up && rnd() < (longOutage ? 0.004 : 0.25)) {
        link.restore();
      }
      if (rport.state === 'lost' && link.up) rport.handle({ type: 'explicit-reconnect' });
      // Every acknowledged write is on the disk (or a later version of that block is).
      for (let lba = 0; lba < LBAS; lba++) {
        const onDisk = h.diskA.blocks.get(lba) ?? 0;
        if (onDisk < lastAcked[lba]! || onDisk > lastSubmitted[lba]!)
          errors.push(`block ${lba}: disk ${onDisk}, acked ${lastAcked[lba]}`);
      }
      if (errors.length) break;
    }
    // End: the link comes back for good; nothing may stay pending.
    link.restore();
    if (rport.state === 'lost') rport.handle({ type: 'explicit-reconnect' });
    await s.advanceAsync(60_000);
    t.equal(rport.state, 'running', `seed ${seed}: running at the end`);
    t.equal(busy.filter(Boolean).length, 0, `seed ${seed}: every submitted write settled`);
    t.same(gate.stats.held + gate.stats.waiting + gate.stats.inFlight, 0);
    t.equal(link.maxConcurrentPerOp, 1, `seed ${seed}: no op ran twice concurrently`);
    for (let lba = 0; lba < LBAS; lba++) {
      const onDisk = h.diskA.blocks.get(lba) ?? 0;
      if (onDisk < lastAcked[lba]!)
        errors.push(`block ${lba} lost acknowledged write ${lastAcked[lba]} (disk ${onDisk})`);
    }
    t.same(
      errors,
      [],
      `seed ${seed}: ${flaps} flaps, ${acked} writes acknowledged, ${gate.stats.failedEio} EIO, ${gate.stats.retried} retried`,
    );
    t.same(h.misfires, [], `seed ${seed}: timers only fired in their states`);
    t.ok(acked > 500 && gate.stats.retried > 50, `seed ${seed}: load and replays were exercised`);
    const visits = (to: string) => h.actions.filter((a) => a.type === 'state-changed' && a.to === to).length;
    t.ok(
      visits('blocked') >= 100 && visits('fail-fast') > 0 && visits('lost') > 0,
      `seed ${seed}: ${visits('blocked')} blocked, ${visits('fail-fast')} fail-fast, ${visits('lost')} lost`,
    );
  }
});
