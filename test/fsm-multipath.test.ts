// The multipath gate over real rport FSMs on a virtual clock: selection, failback (immediate,
// manual, N seconds), re-issue of transport failures only, hold and EIO, the replay bound.
import t from 'tap';
import { EioError } from '../src/fsm/gate.js';
import { MultipathGate, type Failback, type PathSelector } from '../src/fsm/multipath.js';
import { Rport } from '../src/fsm/rport.js';
import { settle, VirtualScheduler } from '../src/fsm/scheduler.js';
import { TransportError } from '../src/initiator/scsi-executor.js';

/** A "disk" per path: records the ops it ran; `fail` makes the next ops fail as set. */
class FakeDisk {
  ran = 0;
  fail: 'transport' | 'scsi' | undefined;
  constructor(readonly name: string) {}
  run(): Promise<string> {
    this.ran++;
    if (this.fail === 'transport') return Promise.reject(new TransportError(`${this.name}: channel closed`, 'closed'));
    if (this.fail === 'scsi') return Promise.reject(new Error(`${this.name}: MEDIUM ERROR`));
    return Promise.resolve(this.name);
  }
}

function setup(selector: PathSelector = 'failover', failback: Failback = 'immediate', paths = 2) {
  const s = new VirtualScheduler();
  const gate = new MultipathGate<FakeDisk>({ selector, failback, now: () => s.now() });
  const rports: Rport[] = [];
  const disks: FakeDisk[] = [];
  for (let i = 0; i < paths; i++) {
    const r = new Rport({ scheduler: s, tmo: { reconnectDelay: 1, fastIoFailTmo: 5, devLossTmo: 60 }, name: `p${i}` });
    rports.push(r);
    disks.push(new FakeDisk(`p${i}`));
    gate.addPath(`p${i}`, r, disks[i]!);
  }
  const op = () => gate.submit((d) => d.run());
  return { s, gate, rports, disks, op };
}

/** Brings a blocked path back: a reconnect attempt that succeeds and passes its identity check. */
function recover(r: Rport): void {
  if (r.phase === 'waiting') r.handle({ type: 'reconnect-timer' });
  r.handle({ type: 'reconnect-succeeded', attempt: r.attempt });
  r.handle({ type: 'identity-verified', attempt: r.attempt });
}

const roles = (g: MultipathGate<FakeDisk>) => g.pathList.map((p) => g.roleOf(p));

t.test('failover: one active path; round-robin and queue-length spread', async (t) => {
  const f = setup('failover');
  await Promise.all([f.op(), f.op(), f.op()]);
  t.same([f.disks[0]!.ran, f.disks[1]!.ran], [3, 0]);
  t.same(roles(f.gate), ['active', 'standby']);
  const rr = setup('round-robin');
  await Promise.all([rr.op(), rr.op(), rr.op(), rr.op()]);
  t.same([rr.disks[0]!.ran, rr.disks[1]!.ran], [2, 2]);
  const ql = setup('queue-length');
  await Promise.all([ql.op(), ql.op(), ql.op()]);
  t.same([ql.disks[0]!.ran, ql.disks[1]!.ran], [2, 1], 'the path with fewer in flight first, ties by order');
});

t.test('a transport failure is re-issued on the other path; a SCSI error is returned', async (t) => {
  const f = setup('failover');
  f.disks[0]!.fail = 'transport';
  t.equal(await f.op(), 'p1', 'completed on p1');
  t.equal(f.rports[0]!.state, 'blocked', 'p0 told failure-detected');
  t.equal(f.gate.path('p0')!.counters.errors, 1);
  t.equal(f.gate.stats.retried, 1);
  f.disks[1]!.fail = 'scsi';
  await t.rejects(f.op(), /MEDIUM ERROR/, 'the SCSI error as it is');
  t.equal(f.disks[1]!.ran, 2, 'not re-issued');
  t.equal(f.gate.path('p1')!.counters.commands, 2, 'a command with a status counts as completed');
});

t.test('held while no path runs; EIO once every path is in fail-fast', async (t) => {
  const f = setup('round-robin');
  f.rports[0]!.handle({ type: 'failure-detected' });
  f.rports[1]!.handle({ type: 'failure-detected' });
  let done: unknown;
  const p = f.op().then(
    (v) => (done = v),
    (e: unknown) => (done = e),
  );
  await settle();
  t.equal(done, undefined, 'held');
  t.equal(f.gate.stats.held, 1);
  f.s.advance(5000); // both paths' fast_io_fail_tmo
  await p;
  t.type(done, EioError, 'EIO');
  t.match((done as Error).message, /no path can carry I\/O \(p0 fail-fast, p1 fail-fast\)/);
  await t.rejects(f.op(), EioError, 'new I/O fails at once');
  recover(f.rports[1]!);
  t.equal(await f.op(), 'p1', 'runs again when one path returns');
});

t.test('one path in fail-fast, the other blocked: held, released when it returns', async (t) => {
  const f = setup('failover');
  f.rports[0]!.handle({ type: 'failure-detected' });
  f.s.advance(5000);
  t.equal(f.rports[0]!.state, 'fail-fast');
  f.rports[1]!.handle({ type: 'failure-detected' });
  const p = f.op();
  await settle();
  t.equal(f.gate.stats.held, 1, 'held: p1 is blocked, its timer still runs');
  recover(f.rports[1]!);
  t.equal(await p, 'p1');
});

t.test('failback immediate, manual and after N seconds', async (t) => {
  const down = (f: ReturnType<typeof setup>) => f.rports[0]!.handle({ type: 'failure-detected' });
  const active = (f: ReturnType<typeof setup>) => f.gate.pathList.find((p) => f.gate.roleOf(p) === 'active')?.id;

  const imm = setup('failover', 'immediate');
  down(imm);
  t.equal(active(imm), 'p1');
  recover(imm.rports[0]!);
  t.equal(active(imm), 'p0', 'immediate: back at once');

  const man = setup('failover', 'manual');
  down(man);
  recover(man.rports[0]!);
  t.equal(active(man), 'p1', 'manual: stays on p1');
  man.s.advance(3_600_000);
  t.equal(active(man), 'p1', 'an hour later too');
  man.gate.setOperatorFailed('p0', false); // the operator reinstates: re-chosen
  t.equal(active(man), 'p0');

  const n = setup('failover', 10);
  down(n);
  recover(n.rports[0]!);
  n.s.advance(9000);
  t.equal(active(n), 'p1', '9 s running: not yet');
  n.rports[0]!.handle({ type: 'failure-detected' }); // flaps: the count starts over
  recover(n.rports[0]!);
  n.s.advance(9000);
  t.equal(active(n), 'p1', 'a flap restarts the 10 s');
  n.s.advance(1000);
  t.equal(active(n), 'p0', '10 s running without a break: back');
  t.equal(await n.op(), 'p0');
});

t.test('an op that kills every channel it runs on ends with EIO after maxDispatches', async (t) => {
  const f = setup('round-robin');
  f.disks[0]!.fail = 'transport';
  f.disks[1]!.fail = 'transport';
  const p = t.rejects(f.op(), /I\/O failed on 5 channels in a row/);
  // both paths go blocked; each recovery re-dispatches the op, which fails again
  for (let i = 0; i < 4; i++) {
    await settle();
    for (const r of f.rports) if (r.state === 'blocked') recover(r);
  }
  await p;
  t.equal(f.disks[0]!.ran + f.disks[1]!.ran, 5);
});

t.test('operator-failed paths carry nothing; removing a path re-routes', async (t) => {
  const f = setup('round-robin', 'immediate', 3);
  f.gate.setOperatorFailed('p1', true);
  await Promise.all([f.op(), f.op(), f.op(), f.op()]);
  t.same(
    f.disks.map((d) => d.ran),
    [2, 0, 2],
  );
  f.gate.removePath('p0');
  await Promise.all([f.op(), f.op()]);
  t.same(
    f.disks.map((d) => d.ran),
    [2, 0, 4],
  );
  t.throws(() => f.gate.addPath('p2', f.rports[2]!, f.disks[2]!), /already a path/);
  f.gate.setOperatorFailed('p2', true);
  await t.rejects(f.op(), EioError, 'every path failed by the operator: EIO');
});
