/**
 * A reconnect attempt's login has a deadline (reconnect_delay, at least RECONNECT_LOGIN_MIN_MS): a
 * login sent into a black hole is never answered, so without it the next attempt would come only
 * after the session's 5 s login timeout, seconds after the path delivers again. Within it, the
 * wait for the answer follows the target's recent answers (src/fsm/login-answer-wait.ts): 3x the
 * slowest, at least 250 ms, and every 4th unanswered login in a row waits the whole deadline, so a
 * target that became slow is still reached and its answer time learnt.
 */
import t, { type Test } from 'tap';
import pino from 'pino';
import { RECONNECT_LOGIN_MIN_MS, SrpPort } from '../src/fsm/srp-port.js';
import { FULL_WAIT_EVERY, LOGIN_ANSWER_FLOOR_MS } from '../src/fsm/login-answer-wait.js';
import { createRdmaConnector } from '../src/initiator/rdma/index.js';
import { DEFAULT_LOGIN_TIMEOUT_MS } from '../src/initiator/srp-session.js';
import { parseTargetAddress } from '../src/initiator/target-address.js';
import type { LoopbackTargetEnd } from '../src/initiator/loopback.js';
import { MockRdmaBinding } from '../src/testing/mock-rdma-binding.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../src/testing/srp-target.js';
import type { TmoParams } from '../src/fsm/timers.js';

const logger = pino({ level: 'silent' });
// keep-alive timers are unref'd (they never hold a daemon open): hold the test's event loop
const hold = (t: Test) => {
  const h = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(h));
};
const until = async (pred: () => boolean, ms: number) => {
  const t0 = performance.now();
  while (!pred()) {
    if (performance.now() - t0 > ms) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
};

async function blackHolePort(tmo: Partial<TmoParams>, loginTimeoutMs?: number) {
  const target = new SrpTestTarget({ luns: [[0n, new RamScsiLun({ blocks: 64, serial: 'deadline' })]] });
  const m = new MockRdmaBinding();
  m.onConnect = (end) => target.accept(end as unknown as LoopbackTargetEnd);
  const made = await createRdmaConnector(parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000'), {
    ackTimeout: 10,
    retryCount: 6,
    keepaliveIntervalMs: 20,
    logger,
    binding: m.asBinding(),
    transport: { sendQueueDepth: 16, recvQueueDepth: 16 },
  });
  const port = await SrpPort.connect({
    name: 't',
    connector: made.connector,
    session: {
      initiatorPortId: made.initiatorPortId,
      targetPortId: made.targetPortId,
      ...(loginTimeoutMs !== undefined ? { loginTimeoutMs } : {}),
    },
    tmo,
    logger,
  });
  const attempts: number[] = [];
  port.rport.subscribe((a) => {
    if (a.type === 'reconnect') attempts.push(performance.now());
  });
  // each attempt's log line names its deadlines
  const waits: { state: string; loginMs: number; answerMs: number }[] = [];
  const log = (port as unknown as { log: { info: (o: object, msg: string) => void } }).log;
  const info = log.info.bind(log);
  log.info = (o: object, msg: string) => {
    if (msg === 'reconnect attempt') {
      const d = o as { loginTimeoutMs: number; answerTimeoutMs: number };
      waits.push({ state: port.state, loginMs: d.loginTimeoutMs, answerMs: d.answerTimeoutMs });
    }
    info(o, msg);
  };
  return { m, port, made, attempts, waits };
}

t.test('into a black hole: 250 ms waits for an answer, every 4th the whole reconnect_delay', async (t) => {
  hold(t);
  t.equal(RECONNECT_LOGIN_MIN_MS, 1000);
  t.equal(LOGIN_ANSWER_FLOOR_MS, 250);
  t.equal(FULL_WAIT_EVERY, 4);
  const { m, port, made, attempts, waits } = await blackHolePort({
    reconnectDelay: 1,
    fastIoFailTmo: 30,
    devLossTmo: 60,
  });
  t.teardown(async () => {
    await port.close();
    made.close();
  });
  m.blackHole = true;
  t.ok(await until(() => port.state === 'blocked', 2000), 'the keep-alive blocks the port');
  // the mock target answered the attach's login in a few ms: waits are the 250 ms floor, but the
  // 4th unanswered login in a row waits the whole deadline; each unanswered attempt is followed at once
  t.ok(await until(() => attempts.length >= 6, 6000), `six attempts into the black hole (${attempts.length})`);
  t.same(
    waits.slice(0, 6).map((w) => [w.loginMs, w.answerMs]),
    [
      [1000, 250],
      [1000, 250],
      [1000, 250],
      [1000, 1000],
      [1000, 250],
      [1000, 250],
    ],
    'deadlines: whole 1 s; answer waits 250, 250, 250, 1000, 250, ...',
  );
  const gaps = attempts.slice(1, 6).map((a, i) => a - attempts[i]!);
  for (const [i, g] of gaps.entries()) {
    const wait = waits[i]!.answerMs;
    t.ok(g >= wait - 50 && g < wait + 400, `attempt ${i + 2} follows ${g.toFixed(0)} ms later (wait ${wait} ms)`);
  }
  t.match(port.rport.lastError, /no answer to the login request from .* within 250 ms/);
  t.equal(port.state, 'blocked', 'still blocked: no I/O failed');
  // the hole ends just after a short wait's login went out: that one is abandoned at 250 ms
  const n = attempts.length;
  t.ok(await until(() => attempts.length > n && waits[attempts.length - 1]!.answerMs === 250, 3000), 'a short wait');
  const over = performance.now();
  m.blackHole = false;
  t.ok(await until(() => port.state === 'running', 3000), `running again (${port.state})`);
  const back = performance.now() - over;
  t.ok(back < 250 + 400, `running ${back.toFixed(0)} ms after the black hole ended (one short wait + login)`);
});

t.test('blocked or fail-fast, every attempt keeps reconnect_delay as its whole deadline', async (t) => {
  hold(t);
  const { m, port, made, waits } = await blackHolePort({ reconnectDelay: 1, fastIoFailTmo: 3, devLossTmo: 60 });
  t.teardown(async () => {
    await port.close();
    made.close();
  });
  m.blackHole = true;
  t.ok(await until(() => port.state === 'fail-fast', 5000), 'fail-fast at fast_io_fail_tmo');
  t.ok(await until(() => waits.some((w) => w.state === 'fail-fast'), 5000), 'an attempt in fail-fast');
  t.ok(waits.filter((w) => w.state === 'blocked').length >= 4, `unanswered logins while blocked (${waits.length})`);
  t.same(
    waits.filter((w) => w.loginMs !== 1000 || (w.answerMs !== 250 && w.answerMs !== 1000)),
    [],
    `whole deadline reconnect_delay, answer waits 250 or 1000 ms (${JSON.stringify(waits)})`,
  );
  m.blackHole = false;
  t.ok(await until(() => port.state === 'running', 8000), 'running once the hole ends');
});

t.test('a target that became slow is reached by the whole wait, and its answer time is learnt', async (t) => {
  hold(t);
  const { m, port, made, waits } = await blackHolePort({ reconnectDelay: 1, fastIoFailTmo: 30, devLossTmo: 60 });
  t.teardown(async () => {
    await port.close();
    made.close();
  });
  const lost = async () => {
    const session = (port as unknown as { session: { close(): Promise<void> } }).session;
    const n = waits.length;
    m.blackHole = true; // the keep-alive notices; logins meanwhile are lost
    await until(() => port.state === 'blocked', 2000);
    m.blackHole = false;
    return { n, session };
  };
  // the target now answers logins 400 ms after the REQ, slower than the 250 ms it earned
  m.answerDelayMs = 400;
  const first = await lost();
  t.ok(await until(() => port.state === 'running', 8000), `running again (${port.state})`);
  const seen = waits.slice(first.n).map((w) => w.answerMs);
  t.equal(seen.at(-1), 1000, `the login that got through waited the whole deadline (${JSON.stringify(seen)})`);
  t.ok(
    seen.slice(0, -1).every((w) => w === 250),
    'the ones before it waited 250 ms and were abandoned',
  );
  // next outage: the learnt 400 ms gives 3 x 400 = 1200 ms, capped by the whole deadline
  const second = await lost();
  t.ok(await until(() => port.state === 'running', 8000), `running again (${port.state})`);
  const next = waits.slice(second.n).map((w) => w.answerMs);
  t.ok(next.length >= 1 && next.every((w) => w === 1000), `waits after learning: ${JSON.stringify(next)}`);
});

t.test('the deadline: reconnect_delay, at least 1 s, at most the login timeout', async (t) => {
  hold(t);
  for (const [tmo, loginTimeoutMs, expectMs] of [
    [{ reconnectDelay: 3 }, undefined, 3000],
    [{ reconnectDelay: 0.2 }, undefined, RECONNECT_LOGIN_MIN_MS],
    [{ reconnectDelay: 3 }, 1500, 1500],
    [{ reconnectDelay: 'off' }, undefined, DEFAULT_LOGIN_TIMEOUT_MS],
  ] as const) {
    const { m, port, made, waits } = await blackHolePort({ ...tmo, fastIoFailTmo: 30, devLossTmo: 60 }, loginTimeoutMs);
    m.blackHole = true;
    await until(() => port.state === 'blocked', 2000);
    // start an attempt now (explicit reconnect); its log line names its deadlines
    port.rport.handle({ type: 'explicit-reconnect' });
    await until(() => waits.length > 0, 1000);
    t.same(
      waits.slice(0, 1).map((w) => [w.loginMs, w.answerMs]),
      [[expectMs, LOGIN_ANSWER_FLOOR_MS]],
      `${JSON.stringify(tmo)} login ${loginTimeoutMs ?? 'default'}: ${expectMs} ms, answer wait 250 ms`,
    );
    m.blackHole = false;
    await port.close();
    made.close();
  }
});
