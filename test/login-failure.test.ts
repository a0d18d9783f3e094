// Login failure classes (src/initiator/login-failure.ts) and what a reconnecting SrpPort does with
// each, over the daemon's RDMA connector on the mock binding: transient SRP_LOGIN_REJs retry on the
// cadence, hard ones fail I/O at once with the reason, a stale connection is retried at once with a
// new connection (bounded), a port redirect (not expressible through RDMA/CM) retries on the cadence.
import t, { type Test } from 'tap';
import pino from 'pino';
import { RETRY_SOON_MS } from '../src/fsm/rport.js';
import { SrpPort } from '../src/fsm/srp-port.js';
import { CmRejectedError, classifyLoginFailure, STALE_CONNECTION_RETRIES } from '../src/initiator/login-failure.js';
import { createRdmaConnector } from '../src/initiator/rdma/index.js';
import { cmRejectKind } from '../src/initiator/rdma/channel.js';
import type { LoopbackTargetEnd } from '../src/initiator/loopback.js';
import { TransportError } from '../src/initiator/scsi-executor.js';
import * as C from '../src/initiator/srp-constants.js';
import { SrpLoginRejectedError } from '../src/initiator/srp-session.js';
import { parseTargetAddress } from '../src/initiator/target-address.js';
import * as R from '../src/native/rdma-constants.js';
import { MockRdmaBinding, type MockTargetEnd } from '../src/testing/mock-rdma-binding.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../src/testing/srp-target.js';

const logger = pino({ level: 'silent' });

/** An RDMA connector over the mock binding `m` to DEST (keep-alive off, small queues). */
function mockConnector(m: MockRdmaBinding, dest: string): ReturnType<typeof createRdmaConnector> {
  return createRdmaConnector(parseTargetAddress(dest), {
    ackTimeout: 14,
    retryCount: 6,
    keepaliveIntervalMs: 0,
    logger,
    binding: m.asBinding(),
    transport: { sendQueueDepth: 16, recvQueueDepth: 16 },
  });
}

t.test('classes: SRP_LOGIN_REJ reasons, CM reject reasons, other errors', async (t) => {
  const rej = (reason: number) => classifyLoginFailure(new SrpLoginRejectedError(reason, 0));
  const cm = (reason: number) =>
    classifyLoginFailure(new CmRejectedError(`rejected (${reason})`, reason, cmRejectKind(reason)));
  t.match(rej(C.SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES), { kind: 'transient', retryable: true }, 'LIO port disabled');
  t.match(rej(C.SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED), { kind: 'transient', retryable: true }, 'LIO: no ACL');
  t.match(rej(C.SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL), { kind: 'transient' });
  t.match(rej(C.SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL), { kind: 'transient' });
  t.match(rej(0x00010042), { kind: 'transient' }, 'an unknown reason is retried');
  for (const r of [
    C.SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
    C.SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT,
    C.SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
  ]) {
    const f = rej(r);
    t.match(f, { kind: 'hard', retryable: false }, C.nameOfSrpLoginRejReason(r));
    t.match(f.message, new RegExp(`${C.nameOfSrpLoginRejReason(r)}.*will not help`));
  }
  t.match(cm(R.IB_CM_REJ_STALE_CONN), { kind: 'stale-connection', retryable: true, message: /stale connection/ });
  t.match(cm(R.IB_CM_REJ_PORT_CM_REDIRECT), { kind: 'redirect', retryable: true, message: /RDMA\/CM cannot follow/ });
  t.match(cm(R.IB_CM_REJ_PORT_REDIRECT), { kind: 'redirect', retryable: true });
  t.match(cm(R.IB_CM_REJ_DUPLICATE_LOCAL_COMM_ID), { kind: 'transient' });
  t.match(cm(R.IB_CM_REJ_INVALID_SERVICE_ID), { kind: 'transient' }, 'nothing listening: a target being rebuilt');
  t.match(classifyLoginFailure(new TransportError('no answer', 'timeout')), { kind: 'transient' });
  t.match(classifyLoginFailure('odd'), { kind: 'transient', message: 'odd' });
  // what came back: the target's reject (reachable, not ready), nothing before the deadline (maybe a
  // black hole), or a local failure
  t.equal(rej(C.SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES).answer, 'rejected', 'SRP_LOGIN_REJ: answered');
  t.equal(cm(R.IB_CM_REJ_INVALID_SERVICE_ID).answer, 'rejected', 'CM reject: answered');
  t.equal(cm(R.IB_CM_REJ_STALE_CONN).answer, 'rejected', 'stale connection: answered');
  t.equal(classifyLoginFailure(new TransportError('no answer', 'timeout')).answer, 'none', 'timeout: no answer');
  t.equal(classifyLoginFailure(new Error('rdma_resolve_addr failed: ENETUNREACH')).answer, 'local', 'unreachable');
  t.equal(classifyLoginFailure(new Error('ENETUNREACH')).answer, 'local', 'unreachable: not a missing answer');
});

/** A port over the RDMA connector on the mock binding; `drop()` makes the target drop the channel. */
async function setup(t: Test, reconnectDelay = 0.1) {
  const hold = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(hold));
  const target = new SrpTestTarget({ luns: [[0n, new RamScsiLun({ blocks: 8192 })]] });
  const m = new MockRdmaBinding();
  let last: MockTargetEnd | undefined;
  let connects = 0;
  m.onConnect = (end) => {
    connects++;
    last = end;
    target.accept(end as unknown as LoopbackTargetEnd);
  };
  const made = await mockConnector(m, 'id_ext=1,ioc_guid=2,dest=192.0.2.9:5000');
  const port = await SrpPort.connect({
    name: 't',
    connector: made.connector,
    session: { initiatorPortId: made.initiatorPortId, targetPortId: made.targetPortId },
    tmo: { reconnectDelay, fastIoFailTmo: 5, devLossTmo: 60 },
    logger,
  });
  await port.addLun(0n);
  t.teardown(async () => {
    await port.close();
    made.close();
  });
  const until = async (pred: () => boolean, ms = 3000) => {
    for (const t0 = Date.now(); !pred();) {
      if (Date.now() - t0 > ms) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
    return true;
  };
  return { m, target, port, until, connects: () => connects, drop: () => last!.close() };
}

t.test('transient reject (port not enabled): blocked, retried every reconnect_delay, back at once', async (t) => {
  const { target, port, until, drop } = await setup(t);
  target.rejectLogin = C.SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES;
  drop();
  t.ok(await until(() => port.rport.failedReconnects >= 3), 'three attempts failed');
  t.equal(port.state, 'blocked', 'still blocked: I/O held, not failed');
  t.match(port.rport.lastError, /SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES/);
  target.rejectLogin = undefined;
  const t0 = Date.now();
  t.ok(await until(() => port.state === 'running'), 'running once the target accepts');
  t.ok(Date.now() - t0 < 1000, `within one reconnect_delay (+ slack): ${Date.now() - t0} ms`);
});

t.test('transient reject while blocked: the next attempt RETRY_SOON_MS later, not reconnect_delay', async (t) => {
  const { target, port, until, drop } = await setup(t, 1);
  target.rejectLogin = C.SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES;
  drop();
  t.ok(await until(() => port.rport.failedReconnects >= 1), 'the first attempt (1 s after the failure) rejected');
  const t0 = Date.now();
  t.ok(await until(() => port.rport.failedReconnects >= 3), 'two more rejected attempts');
  const took = Date.now() - t0;
  t.ok(took >= 2 * RETRY_SOON_MS - 50 && took < 1000, `two attempts in ${took} ms, not 2 x reconnect_delay`);
  t.equal(port.state, 'blocked');
  target.rejectLogin = undefined;
  const t1 = Date.now();
  t.ok(await until(() => port.state === 'running'), 'running once the target accepts');
  t.ok(Date.now() - t1 < RETRY_SOON_MS + 400, `within RETRY_SOON_MS + a login: ${Date.now() - t1} ms`);
});

t.test('hard reject (IU too large): fail-fast at once with the reason, back when accepted', async (t) => {
  const { target, port, until, drop } = await setup(t);
  target.rejectLogin = C.SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE;
  const t0 = Date.now();
  drop();
  t.ok(await until(() => port.state === 'fail-fast'), 'fail-fast');
  t.ok(Date.now() - t0 < 2000, `after ${Date.now() - t0} ms, not fast_io_fail_tmo (5 s)`);
  t.equal(port.rport.failedReconnects, 1, 'after the first rejected attempt');
  t.match(port.rport.lastError, /SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE.*will not help/);
  t.match(port.rport.lastFailure?.message, /SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE/);
  target.rejectLogin = undefined;
  t.ok(await until(() => port.state === 'running'), 'keeps trying with back-off; running when accepted');
});

t.test('stale connection: retried at once with a new connection, at most 3 times', async (t) => {
  const { m, port, until, drop, connects } = await setup(t, 0.5);
  m.cmRejects = [R.IB_CM_REJ_STALE_CONN, R.IB_CM_REJ_STALE_CONN];
  const before = connects();
  const logins = port.logins;
  drop();
  t.ok(await until(() => port.logins > logins && port.state === 'running'), 'running on a new login');
  t.equal(port.rport.failedReconnects, 0, 'within one attempt');
  t.equal(connects() - before, 3, 'two stale rejects, then a new connection that worked');

  m.cmRejects = Array(STALE_CONNECTION_RETRIES + 1).fill(R.IB_CM_REJ_STALE_CONN);
  const n = connects();
  drop();
  t.ok(await until(() => port.rport.failedReconnects === 1), 'the attempt fails after the retries');
  t.equal(connects() - n, STALE_CONNECTION_RETRIES + 1);
  t.match(port.rport.lastError, /stale connection/);
  t.equal(port.state, 'blocked', 'a transient failure: still blocked');
  t.ok(await until(() => port.state === 'running'), 'the next attempt on the cadence works');
});

t.test('port redirect: not expressible over RDMA/CM, retried on the cadence', async (t) => {
  const { m, port, until, drop } = await setup(t);
  m.cmRejects = [R.IB_CM_REJ_PORT_CM_REDIRECT, R.IB_CM_REJ_PORT_REDIRECT];
  const logins = port.logins;
  drop();
  t.ok(await until(() => port.rport.failedReconnects === 2), 'two attempts failed on the redirects');
  t.equal(port.state, 'blocked', 'still blocked');
  t.ok(await until(() => port.logins > logins && port.state === 'running'), 'running on the next attempt');
  t.match(port.rport.lastError, /redirects to another port, which RDMA\/CM cannot follow/);
});

t.test('the first login retries a stale connection too', async (t) => {
  const target = new SrpTestTarget({ luns: [[0n, new RamScsiLun({ blocks: 8192 })]] });
  const m = new MockRdmaBinding();
  m.onConnect = (end) => target.accept(end as unknown as LoopbackTargetEnd);
  m.cmRejects = [R.IB_CM_REJ_STALE_CONN];
  const made = await mockConnector(m, 'id_ext=1,ioc_guid=2,dest=192.0.2.10:5000');
  const port = await SrpPort.connect({
    name: 'first',
    connector: made.connector,
    session: { initiatorPortId: made.initiatorPortId, targetPortId: made.targetPortId },
    logger,
  });
  t.equal(port.state, 'running');
  t.equal(made.connector.opened, 2, 'one stale reject, then a new connection');
  await port.close();
  made.close();
});
