/**
 * A reconnect attempt's login has a deadline (reconnect_delay, at least RECONNECT_LOGIN_MIN_MS): a
 * login sent into a black hole is never answered, so without it the next attempt would come only
 * after the session's 5 s login timeout, seconds after the path delivers again. Every login keeps
 * that deadline, blocked or in fail-fast: a shorter one would abandon logins a slow target answers.
 */
import t, { type Test } from 'tap';
import pino from 'pino';
import { RECONNECT_LOGIN_MIN_MS, SrpPort } from '../src/fsm/srp-port.js';
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
  return { m, port, made, attempts };
}

t.test('a login into a black hole is abandoned at reconnect_delay; the next follows at once', async (t) => {
  hold(t);
  t.equal(RECONNECT_LOGIN_MIN_MS, 1000);
  const { m, port, made, attempts } = await blackHolePort({ reconnectDelay: 1, fastIoFailTmo: 30, devLossTmo: 60 });
  t.teardown(async () => {
    await port.close();
    made.close();
  });
  m.blackHole = true;
  t.ok(await until(() => port.state === 'blocked', 2000), 'the keep-alive blocks the port');
  // attempt 1 at +1 s is never answered; abandoned at +2 s, attempt 2 at once; abandoned at +3 s ...
  t.ok(await until(() => attempts.length >= 3, 5000), `three attempts into the black hole (${attempts.length})`);
  const gaps = attempts.slice(1).map((a, i) => a - attempts[i]!);
  for (const g of gaps)
    t.ok(g >= 950 && g < 1500, `attempts follow each other every reconnect_delay (${g.toFixed(0)} ms)`);
  t.match(port.rport.lastError, /no answer to the login request .* before the connect timeout/);
  t.equal(port.state, 'blocked', 'still blocked: no I/O failed');
  // the hole ends while attempt 3's login is unanswered: it is abandoned at its deadline
  await new Promise((r) => setTimeout(r, 300));
  const over = performance.now();
  m.blackHole = false;
  t.ok(await until(() => port.state === 'running', 3000), `running again (${port.state})`);
  const back = performance.now() - over;
  t.ok(
    back < 1000 + 500,
    `running ${back.toFixed(0)} ms after the black hole ended (at most one reconnect_delay + login)`,
  );
});

t.test('blocked or fail-fast, every login waits reconnect_delay (a slow target is still reached)', async (t) => {
  hold(t);
  const { m, port, made } = await blackHolePort({ reconnectDelay: 1, fastIoFailTmo: 3, devLossTmo: 60 });
  t.teardown(async () => {
    await port.close();
    made.close();
  });
  const deadlines: [string, number][] = [];
  const log = (port as unknown as { log: { info: (o: object, msg: string) => void } }).log;
  const info = log.info.bind(log);
  log.info = (o: object, msg: string) => {
    if (msg === 'reconnect attempt') deadlines.push([port.state, (o as { loginTimeoutMs: number }).loginTimeoutMs]);
    info(o, msg);
  };
  m.blackHole = true;
  t.ok(await until(() => port.state === 'fail-fast', 5000), 'fail-fast at fast_io_fail_tmo');
  t.ok(await until(() => deadlines.some(([s]) => s === 'fail-fast'), 5000), 'an attempt in fail-fast');
  t.ok(deadlines.filter(([s]) => s === 'blocked').length >= 2, `unanswered logins while blocked (${deadlines.length})`);
  t.same(
    deadlines.filter(([, d]) => d !== 1000),
    [],
    `every login's deadline is reconnect_delay (${JSON.stringify(deadlines)})`,
  );
  m.blackHole = false;
  t.ok(await until(() => port.state === 'running', 8000), 'running once the hole ends');
});

t.test('the deadline: reconnect_delay, at least 1 s, at most the login timeout', async (t) => {
  hold(t);
  for (const [tmo, loginTimeoutMs, expectMs] of [
    [{ reconnectDelay: 3 }, undefined, 3000],
    [{ reconnectDelay: 0.2 }, undefined, RECONNECT_LOGIN_MIN_MS],
    [{ reconnectDelay: 3 }, 1500, 1500],
    [{ reconnectDelay: 'off' }, undefined, DEFAULT_LOGIN_TIMEOUT_MS],
  ] as const) {
    const { m, port, made } = await blackHolePort({ ...tmo, fastIoFailTmo: 30, devLossTmo: 60 }, loginTimeoutMs);
    const seen: number[] = [];
    m.blackHole = true;
    await until(() => port.state === 'blocked', 2000);
    // the attempt's log line names its deadline; start one now (explicit reconnect)
    const origInfo = (port as unknown as { log: { info: (o: object, msg: string) => void } }).log;
    const info = origInfo.info.bind(origInfo);
    origInfo.info = (o: object, msg: string) => {
      if (msg === 'reconnect attempt') seen.push((o as { loginTimeoutMs: number }).loginTimeoutMs);
      info(o, msg);
    };
    port.rport.handle({ type: 'explicit-reconnect' });
    await until(() => seen.length > 0, 1000);
    t.same(seen.slice(0, 1), [expectMs], `${JSON.stringify(tmo)} login ${loginTimeoutMs ?? 'default'}: ${expectMs} ms`);
    m.blackHole = false;
    await port.close();
    made.close();
  }
});
