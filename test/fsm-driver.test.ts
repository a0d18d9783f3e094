import t from 'tap';
import { RportDriver } from '../src/fsm/driver.js';
import { assertSameLun, IdentityMismatchError, type LunIdentity } from '../src/fsm/identity.js';
import { Rport } from '../src/fsm/rport.js';
import { settle, VirtualScheduler } from '../src/fsm/scheduler.js';

const naa = (value: string) => ({ designatorType: 3, codeSet: 1, value });
const A: LunIdentity = {
  designators: [naa('60014050111100000000000000000001')],
  serial: 'S1',
  blockCount: 2048n,
  blockSize: 512,
};

t.test('assertSameLun: same disk passes; every difference is named in the error', async (t) => {
  t.doesNotThrow(() => assertSameLun(A, { ...A, designators: [...A.designators] }));
  try {
    assertSameLun(A, {
      designators: [naa('6001405011110000000000000000ffff')],
      serial: 'S2',
      blockCount: 1024n,
      blockSize: 512,
    });
    t.fail('should have thrown');
  } catch (e) {
    t.ok(e instanceof IdentityMismatchError);
    const d = (e as IdentityMismatchError).differences;
    t.equal(d.length, 3);
    t.match(d[0], /NAA.*changed/);
    t.match(d[1], /serial number changed: "S1" -> "S2"/);
    t.match(d[2], /capacity shrank below the attached size/);
  }
  t.throws(() => assertSameLun(A, { ...A, blockSize: 4096 }), /logical block size changed/);
  t.doesNotThrow(() => assertSameLun(A, { ...A, blockCount: 4096n }), 'a LUN that grew is the same disk');
  t.throws(() => assertSameLun(A, { ...A, designators: [] }), /is gone/);
});

function setup() {
  const s = new VirtualScheduler();
  const rport = new Rport({ scheduler: s, random: () => 0 });
  const calls: string[] = [];
  const signals: AbortSignal[] = [];
  let reconnectResult: () => Promise<void> = async () => {};
  let verifyResult: () => Promise<void> = async () => {};
  const driver = new RportDriver(rport, {
    reconnect: (attempt, signal) => {
      calls.push(`reconnect ${attempt}`);
      signals.push(signal);
      return reconnectResult();
    },
    verifyIdentity: (attempt) => {
      calls.push(`verify ${attempt}`);
      return verifyResult();
    },
    stop: () => calls.push('stop'),
  });
  return {
    s,
    rport,
    driver,
    calls,
    signals,
    setReconnect: (f: () => Promise<void>) => (reconnectResult = f),
    setVerify: (f: () => Promise<void>) => (verifyResult = f),
  };
}

t.test('driver: reconnect then verify then running', async (t) => {
  const h = setup();
  h.rport.handle({ type: 'failure-detected' });
  await h.s.advanceAsync(1000);
  t.same(h.calls, ['reconnect 1', 'verify 1']);
  t.equal(h.rport.state, 'running');
});

t.test(
  'driver: failed reconnect and a verify that fails for another reason both count as failed attempts',
  async (t) => {
    const h = setup();
    h.setReconnect(async () => {
      throw new Error('no route');
    });
    h.rport.handle({ type: 'failure-detected' });
    await h.s.advanceAsync(1000);
    t.equal(h.rport.failedReconnects, 1);
    h.setReconnect(async () => {});
    h.setVerify(async () => {
      throw new Error('INQUIRY timed out');
    });
    await h.s.advanceAsync(1000);
    t.same(h.calls, ['reconnect 1', 'reconnect 2', 'verify 2'], 'blocked: attempt 2 one reconnect_delay later');
    t.equal(h.rport.failedReconnects, 2);
    t.equal(h.rport.state, 'blocked');
    t.equal(h.rport.phase, 'waiting');
    h.setVerify(async () => {});
    await h.s.advanceAsync(999);
    t.equal(h.rport.state, 'blocked', 'attempt 3 is due at 3 s');
    await h.s.advanceAsync(1);
    t.equal(h.rport.state, 'running');
  },
);

t.test('driver: IdentityMismatchError -> lost, stop() closes the wrong connection', async (t) => {
  const h = setup();
  h.setVerify(async () => {
    throw new IdentityMismatchError(['serial "S1" != "S2"']);
  });
  h.rport.handle({ type: 'failure-detected' });
  await h.s.advanceAsync(1000);
  t.equal(h.rport.state, 'lost');
  t.match(h.rport.lastFailure?.message, /serial "S1" != "S2"/);
  t.same(h.calls, ['reconnect 1', 'verify 1', 'stop']);
});

t.test('driver: detach aborts the attempt in progress; its late result is refused', async (t) => {
  const h = setup();
  let finish!: () => void;
  h.setReconnect(() => new Promise<void>((r) => (finish = r)));
  h.rport.handle({ type: 'failure-detected' });
  await h.s.advanceAsync(1000);
  t.equal(h.rport.phase, 'connecting');
  h.rport.handle({ type: 'detach' });
  t.equal(h.signals[0]!.aborted, true, 'attempt aborted');
  finish();
  await settle();
  t.equal(h.rport.state, 'detached');
  t.same(h.calls, ['reconnect 1', 'stop'], 'no verify for an abandoned attempt');
});

t.test('driver: dispose stops following the rport', async (t) => {
  const h = setup();
  h.driver.dispose();
  h.rport.handle({ type: 'failure-detected' });
  await h.s.advanceAsync(1000);
  t.same(h.calls, []);
  t.equal(h.rport.phase, 'connecting', 'the FSM asked, nobody answered');
});
