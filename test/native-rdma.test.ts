// RDMA channel transport: the real addon on a host without RDMA (clear errors, nothing leaked), and
// the same transport over MockRdmaBinding carrying the real SRP session to the test SRP target.
import { randomBytes } from 'node:crypto';
import t from 'tap';
import {
  RdmaChannelTransport,
  RdmaUnavailableError,
  checkRdmaAvailable,
  parkedCmIds,
  type RdmaTransportOptions,
} from '../src/initiator/rdma/index.js';
import { ScsiDisk } from '../src/initiator/scsi-disk.js';
import { TransportError } from '../src/initiator/scsi-executor.js';
import { classifyLoginFailure } from '../src/initiator/login-failure.js';
import { SrpLoginRejectedError, SrpSession } from '../src/initiator/srp-session.js';
import type { LoopbackTargetEnd } from '../src/initiator/loopback.js';
import { MockRdmaBinding, type MockTargetEnd } from '../src/testing/mock-rdma-binding.js';
import { encodeCredReq } from '../src/initiator/srp-iu.js';
import { tryLoadNative, readWc, type NativeBinding } from '../src/native/native.js';
import * as R from '../src/native/rdma-constants.js';
import { encodeSockaddrIb, encodeSockaddrIp } from '../src/native/sockaddr.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../src/testing/srp-target.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const ids = { initiatorPortId: Buffer.alloc(16, 1), targetPortId: Buffer.alloc(16, 2) };
const dst = { family: 'ip', host: '192.0.2.2', port: 5000 } as const;

t.test('sockaddr bytes (sockaddr_in, sockaddr_in6, sockaddr_ib)', async (t) => {
  t.same(encodeSockaddrIp('192.0.2.2', 5000), hex('0200 1388 c0000202 0000000000000000'));
  t.same(encodeSockaddrIp('fe80::1%3', 5000), hex('0a00 1388 00000000 fe800000000000000000000000000001 03000000'));
  t.same(encodeSockaddrIp('::ffff:192.0.2.1', 1), hex('0a00 0001 00000000 00000000000000000000ffffc0000201 00000000'));
  const gid = hex('fe800000000000000002c90300a1b2c3');
  t.same(
    encodeSockaddrIb(gid, 0x0000000001061388n, 0x8001),
    hex(`
    1b00 8001 00000000 fe800000000000000002c90300a1b2c3 0000000001061388 ffffffffffffffff 0000000000000000`),
  );
  t.throws(() => encodeSockaddrIp('target.example', 1), /numeric address/);
});

t.test('completion records decode (cqPoll layout)', async (t) => {
  const b = hex('0100100000000000 0c000000 00000000 00000000 11000000 81000000 00000000');
  t.same(readWc(b, 0), {
    wrId: 0x100001,
    status: R.IBV_WC_RETRY_EXC_ERR,
    opcode: 0,
    byteLen: 0,
    qpNum: 0x11,
    vendorErr: 0x81,
    wcFlags: 0,
  });
  t.equal(R.nameOfWcStatus(12), 'IBV_WC_RETRY_EXC_ERR');
  t.equal(R.nameOfAsyncEvent(R.IBV_EVENT_PORT_ERR), 'IBV_EVENT_PORT_ERR');
  t.equal(R.nameOfCmEvent(R.RDMA_CM_EVENT_ESTABLISHED), 'RDMA_CM_EVENT_ESTABLISHED');
});

t.test('options: retry count 7 (forever on rxe) is refused', async (t) => {
  const b = new MockRdmaBinding().asBinding();
  t.throws(() => new RdmaChannelTransport(b, { dst, retryCount: 7 }), /7 means retry forever/);
  t.throws(() => new RdmaChannelTransport(b, { dst, ackTimeout: 32 }), RangeError);
});

const real = tryLoadNative();
t.test('real addon on this host', { skip: real ? false : 'native addon not built' }, async (t) => {
  const b = real!;
  let devices: string[] | undefined;
  try {
    devices = checkRdmaAvailable(b);
  } catch (err) {
    t.type(err, RdmaUnavailableError);
    t.match((err as Error).message, /no RDMA device available .*modprobe rdma_rxe/);
  }
  if (devices) {
    t.comment(`RDMA devices present: ${devices.join(', ')}; the guest scenario covers them`);
    return;
  }
  t.throws(
    () => b.cmCreateChannel(),
    { code: 'ENODEV', syscall: 'rdma_create_event_channel' },
    'real call: errno, code and syscall',
  );
  const tr = new RdmaChannelTransport(b, { dst });
  await t.rejects(tr.connect(Buffer.alloc(56)), { name: 'RdmaUnavailableError', code: 'disconnected' });
  t.equal(tr.state, 'closed');
  t.same(b.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(b.pollCount(), 0);
  t.throws(() => b.cmDestroyId(12345), { code: 'EBADF' }, 'a stale handle is an error, not a crash');
  t.throws(() => b.cmDestroyQpAsync(12345), { code: 'EBADF' }, 'also for the QP destroy on a worker thread');
  t.throws(() => b.postSend(1, 0, 0, 0n, 0, 0, 0, 0n, 0), { code: 'EBADF' });
  t.throws(() => b.mrReg(1, Buffer.alloc(1), 1), { code: 'EBADF' });
  t.throws(() => (b.cmCreateId as unknown as (x: string) => number)('x'), TypeError);
});

/* ------------------------------------------------ over the mock fabric */

function fabric(target: SrpTestTarget): MockRdmaBinding {
  const m = new MockRdmaBinding();
  m.onConnect = (end) => target.accept(end as unknown as LoopbackTargetEnd);
  return m;
}
const newTarget = () => new SrpTestTarget({ luns: [[0n, new RamScsiLun({ blocks: 8192 })]] });
const transport = (b: NativeBinding, o: Partial<RdmaTransportOptions> = {}) =>
  new RdmaChannelTransport(b, { dst, sendQueueDepth: 16, recvQueueDepth: 16, ...o });

t.test('SRP session over the RDMA transport (mock fabric): login, verified I/O, clean close', async (t) => {
  const target = newTarget();
  const m = fabric(target);
  const b = m.asBinding();
  const tr = transport(b, { resolveAttempts: 3 });
  m.resolveFailures = 2;
  const session = await SrpSession.login(tr, ids);
  t.equal(tr.state, 'connected');
  t.equal(tr.stats.resolveAttempts, 3, 'address resolution retried after ADDR_ERROR');
  t.same(m.ackTimeouts, [14], 'ACK timeout set with rdma_set_option');
  t.match(m.connectParams[0], { retryCount: 6, rnrRetryCount: 7 });
  t.equal(m.connectParams[0]!.privateData!.length, 56, 'srp_login_req_rdma travels as CM private data');
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const data = randomBytes(256 * 1024);
  await disk.write(4096, data);
  t.same(await disk.read(4096, data.length), data, 'write then read back over RDMA READ/WRITE');
  const small = randomBytes(4096);
  await disk.write(0, small);
  t.same(await disk.read(0, 4096), small, 'immediate-data write');
  t.ok(tr.stats.pollBatches > 0 && tr.stats.completions >= tr.stats.sends);
  t.ok(session.counters.slotRegions > 0, 'command slots registered once');
  t.equal(tr.registeredRegions, session.counters.slotRegions, 'per-command regions released, only the slots stay');
  t.equal(session.counters.perCommandRegistrations, 0, 'the 256 KiB transfers went through a grown slot');
  t.ok(session.counters.slotGrowths > 0, 'a slot grew to 256 KiB, registered once');
  t.ok((await tr.probe()) >= 0, 'zero-length RDMA WRITE probe completes');
  const gone = new Promise<TransportError>((r) => tr.on('disconnect', r));
  await session.close();
  t.equal((await gone).code, 'closed');
  t.same(
    m.rdmaObjectCounts(),
    { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 },
    'everything released',
  );
  t.equal(m.pollCount(), 0, 'no poller left');
});

t.test('posting: IUs queued in one event go out as one list, at most its last work request signalled', async (t) => {
  const target = newTarget();
  const m = fabric(target);
  const tr = transport(m.asBinding(), { sendQueueDepth: 64, recvQueueDepth: 64 });
  const session = await SrpSession.login(tr, { ...ids, queueSize: 32 });
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const before = { sends: tr.stats.sends, completions: tr.stats.completions, lists: m.sendLists.length };
  const data = randomBytes(32 * 4096);
  await Promise.all(
    Array.from({ length: 32 }, (_, i) => disk.write(i * 4096, data.subarray(i * 4096, (i + 1) * 4096))),
  );
  const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => disk.read(i * 4096, 4096)));
  t.same(Buffer.concat(reads), data, 'the data went through');
  const sends = tr.stats.sends - before.sends;
  const lists = m.sendLists.slice(before.lists);
  t.equal(sends, 64, 'one SRP_CMD per command');
  t.equal(
    lists.reduce((a, b) => a + b, 0),
    sends,
    'every IU posted exactly once',
  );
  t.ok(Math.max(...lists) >= 16, `commands issued together share a post (lists: ${lists.join(',')})`);
  const completions = tr.stats.completions - before.completions;
  t.ok(completions < 2 * sends, `a send completion per list, not per IU (${completions} for ${sends} IUs each way)`);
  await session.close();
  t.same(m.rdmaObjectCounts().qps, 0, 'closed cleanly: every send slot came back');
});

t.test('pre-registered pool: views need no registration', async (t) => {
  const target = newTarget();
  const m = fabric(target);
  const pool = Buffer.allocUnsafeSlow(1 << 20);
  const tr = transport(m.asBinding(), { pools: [pool] });
  const session = await SrpSession.login(tr, ids);
  const before = m.rdmaObjectCounts().mrs;
  const view = pool.subarray(65536, 65536 + 8192);
  const r = tr.registerBuffer(view);
  t.equal(m.rdmaObjectCounts().mrs, before, 'no new MR for a pool view');
  const r2 = tr.registerBuffer(pool.subarray(0, 512));
  t.equal(r.rkey, r2.rkey);
  t.equal(r.va - r2.va, 65536n);
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const data = randomBytes(8192);
  await disk.write(8192, data);
  await disk.read(8192, 8192, view);
  t.same(view, data, 'data-in landed in the pool view');
  await session.close();
  t.equal(m.rdmaObjectCounts().mrs, 0);
});

t.test('failures: login reject, no listener, PORT_ERR, black hole probe, target disconnect', async (t) => {
  const target = newTarget();
  target.rejectLogin = 0x00010006; // SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES-ish: any reason
  const m = fabric(target);
  await t.rejects(SrpSession.login(transport(m.asBinding()), ids), SrpLoginRejectedError);
  t.equal(m.rdmaObjectCounts().qps, 0, 'reject releases the QP');
  target.rejectLogin = undefined;

  const nobody = new MockRdmaBinding();
  await t.rejects(transport(nobody.asBinding()).connect(Buffer.alloc(56)), {
    code: 'disconnected',
    message: /rejected .*no SRP target listening/,
  });

  const unreachable = new MockRdmaBinding();
  unreachable.resolveFailures = 100;
  await t.rejects(transport(unreachable.asBinding(), { resolveAttempts: 3 }).connect(Buffer.alloc(56)), {
    message: /unreachable: address resolution failed 3 times/,
  });
  t.same(unreachable.rdmaObjectCounts().ids, 0);

  let tr = transport(m.asBinding());
  let session = await SrpSession.login(tr, ids);
  let lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  const t0 = Date.now();
  m.portDown();
  const e1 = await lost;
  t.match(e1.message, /link down: IBV_EVENT_PORT_ERR on mock0 port 1/);
  t.ok(Date.now() - t0 < 1000, 'PORT_ERR noticed at once');
  await tr.released(); // the QP is destroyed in the background, the rest after it
  t.equal(m.rdmaObjectCounts().qps, 0);
  t.equal(m.madsWhilePortDown, 0, 'no DREQ through the downed port');
  t.equal(parkedCmIds(m.asBinding()), 1, 'the cm id waits for the port');
  t.match(m.rdmaObjectCounts(), { ids: 1, channels: 1, qps: 0, cqs: 0, mrs: 0, pds: 0 });
  m.portUp();
  await new Promise((r) => setTimeout(r, 10));
  t.equal(parkedCmIds(m.asBinding()), 0, 'PORT_ACTIVE: the parked id is disconnected and destroyed');
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(m.madsWhilePortDown, 0);

  tr = transport(m.asBinding());
  session = await SrpSession.login(tr, ids);
  lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  m.blackHole = true;
  await t.rejects(tr.probe(), { message: /retry counter exceeded/ });
  t.match((await lost).message, /retry counter exceeded/);
  m.blackHole = false;

  tr = transport(m.asBinding());
  session = await SrpSession.login(tr, ids);
  lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  m.disconnectFromTarget([...(m as unknown as { ids: Map<number, unknown> }).ids.keys()][0]!);
  t.match((await lost).message, /disconnected \(RDMA_CM_EVENT_DISCONNECTED\)/);
  await tr.released();
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(m.pollCount(), 0);
});

t.test('a login through a port that is not ACTIVE is not sent (no CM MAD through a downed port)', async (t) => {
  const m = fabric(newTarget());
  m.portDown();
  // the address still resolves (a cached neighbour), but the REQ would go out through the downed port
  await t.rejects(transport(m.asBinding()).connect(Buffer.alloc(56)), {
    code: 'disconnected',
    message: /local port mock0\/1 is not active: login to .* not sent/,
  });
  t.equal(m.connectParams.length, 0, 'no rdma_connect');
  t.equal(m.madsWhilePortDown, 0, 'no REQ, and no REJ from destroying the id');
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(classifyLoginFailure(new TransportError('x', 'disconnected')).answer, 'local');
  m.portUp();
  const session = await SrpSession.login(transport(m.asBinding()), ids);
  t.equal(m.connectParams.length, 1, 'the port is ACTIVE again: the login goes out');
  await session.close();
});

t.test('port state from the async events: ibv_query_port once per port, never on a failure', async (t) => {
  // on rxe ibv_query_port waits for the RTNL lock, which link changes hold for seconds
  const m = fabric(newTarget());
  let queries = 0;
  const query = m.portQuery.bind(m);
  m.portQuery = () => {
    queries++;
    return query();
  };
  const tr = transport(m.asBinding());
  let session = await SrpSession.login(tr, ids);
  t.equal(queries, 1, 'the first login asks once');
  const lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  m.portDown();
  t.match((await lost).message, /PORT_ERR/);
  await tr.released();
  t.equal(parkedCmIds(m.asBinding()), 1, 'the port is known to be down: the id is parked');
  m.portUp();
  await new Promise((r) => setTimeout(r, 10));
  t.equal(parkedCmIds(m.asBinding()), 0);
  session = await SrpSession.login(transport(m.asBinding()), ids);
  await session.close();
  t.equal(queries, 1, 'loss, parking and the next login asked nothing');
  t.equal(m.madsWhilePortDown, 0);
});

/** What each creating call of the binding is undone by. */
const UNDO: Record<string, string> = {
  cmCreateChannel: 'cmDestroyChannel',
  pollStart: 'pollStop',
  cmCreateId: 'cmDestroyId',
  pdAlloc: 'pdDealloc',
  compChannelCreate: 'compChannelDestroy',
  cqCreate: 'cqDestroy',
  mrReg: 'mrDereg',
  cmCreateQp: 'cmDestroyQp',
};
/** The binding, recording its creating and destroying calls in order; `failing` throws ENOMEM instead. */
function recording(m: MockRdmaBinding, failing?: string): { b: NativeBinding; calls: string[] } {
  const calls: string[] = [];
  const undoers = new Set(Object.values(UNDO));
  const b = new Proxy(m, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof prop !== 'string' || typeof v !== 'function' || !(prop in UNDO || undoers.has(prop))) return v;
      return (...args: unknown[]) => {
        if (prop === failing) throw Object.assign(new Error(`${prop} failed`), { code: 'ENOMEM' });
        calls.push(prop);
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  }) as unknown as NativeBinding;
  return { b, calls };
}

t.test('resources: freed in the reverse order of their creation, also when a step fails', async (t) => {
  const target = newTarget();
  const { b, calls } = recording(fabric(target));
  const session = await SrpSession.login(transport(b, { pools: [Buffer.allocUnsafeSlow(65536)] }), ids);
  await session.close();
  const created = calls.filter((c) => c in UNDO);
  const qp = created.indexOf('cmCreateQp');
  const channel = created.slice(0, qp + 1);
  t.same(
    channel,
    [
      'cmCreateChannel',
      'pollStart',
      'cmCreateId',
      'pollStart',
      'pdAlloc',
      'compChannelCreate',
      'pollStart',
      'cqCreate',
      'mrReg',
      'mrReg',
      'mrReg',
      'cmCreateQp',
    ],
    'event channel, cm id, device events, PD, completions, CQ, memory, QP',
  );
  const slots = created.slice(qp + 1);
  t.ok(
    slots.length > 0 && slots.every((c) => c === 'mrReg'),
    `then the session's command slots (${slots.length} regions)`,
  );
  // The QP goes first (no RDMA can reach memory after it), then the session's slots, then the rest
  // of the channel, last first.
  const undone = calls.filter((c) => !(c in UNDO));
  const reversed = channel.map((c) => UNDO[c]).reverse();
  t.equal(undone[0], reversed[0], 'the QP is destroyed first');
  t.same(
    undone.slice(1, 1 + slots.length),
    slots.map((c) => UNDO[c]),
    "then the session's slots are deregistered",
  );
  t.same(undone.slice(1 + slots.length), reversed.slice(1), 'then the rest of the channel: undone last first');

  for (const failing of ['cmCreateQp', 'cqCreate', 'pdAlloc']) {
    const m = fabric(target);
    const r = recording(m, failing);
    const login = SrpSession.login(transport(r.b), ids);
    await t.rejects(login, { code: 'disconnected', message: new RegExp(`${failing} failed`) });
    const made = r.calls.filter((c) => c in UNDO);
    t.same(
      r.calls.filter((c) => !(c in UNDO)),
      made.map((c) => UNDO[c]).reverse(),
      `${failing} fails: what was made is undone in reverse`,
    );
    t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
    t.equal(m.pollCount(), 0);
  }
});

t.test('a failed poll: no completions or CM events is a loss, no device events only an error', async (t) => {
  const none = { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 };
  const target = newTarget();
  const m = fabric(target);
  const open = async (portIds = ids) => {
    const tr = transport(m.asBinding());
    const session = await SrpSession.login(tr, portIds);
    const errors: Error[] = [];
    tr.on('error', (e) => errors.push(e));
    return { tr, session, errors, lost: new Promise<TransportError>((r) => session.on('disconnect', r)) };
  };
  for (const [kind, fd] of [
    ['completion', 'completion channel'],
    ['cm', 'rdma_cm event channel'],
  ] as const) {
    const c = await open();
    t.equal(m.failPolls(kind), 1);
    const e = await c.lost;
    t.match(
      e,
      { code: 'disconnected', message: `${fd} poll failed: uv_poll failed (EBADF)` },
      `${kind}: the channel is lost`,
    );
    t.match(e.cause, { code: 'EBADF', syscall: 'uv_poll' }, "the addon's error is the cause");
    t.match(c.errors, [{ code: 'EBADF', syscall: 'uv_poll' }], "and goes out on 'error'");
    await c.tr.released();
    t.same(m.rdmaObjectCounts(), none);
    t.equal(m.pollCount(), 0, 'the failed poller is released with the rest');
  }

  const a = await open();
  t.equal(m.failPolls('async'), 1);
  await new Promise((r) => setImmediate(r));
  t.match(a.errors, [{ code: 'EBADF', syscall: 'uv_poll' }], 'device events: an error');
  t.equal(a.tr.state, 'connected', 'the channel goes on');
  const disk = new ScsiDisk(a.session, { lun: 0n });
  await disk.probe();
  const data = randomBytes(8192);
  await disk.write(0, data);
  t.same(await disk.read(0, data.length), data, 'I/O still works');
  const b = await open({ ...ids, initiatorPortId: Buffer.alloc(16, 3) }); // another initiator: a stays logged in
  m.portDown();
  t.match(await a.lost, { message: /PORT_ERR/ }, 'the next channel on the device polls its events again, for both');
  t.match(await b.lost, { message: /PORT_ERR/ });
  await Promise.all([a.tr.released(), b.tr.released()]);
  t.equal(parkedCmIds(m.asBinding()), 2, 'both ids wait for the port');
  m.portUp();
  await new Promise((r) => setTimeout(r, 10));
  t.same(m.rdmaObjectCounts(), none);
  t.equal(m.pollCount(), 0);
});

t.test("a lost channel's QP is destroyed in the background: the rest waits, the event loop does not", async (t) => {
  const m = fabric(newTarget());
  m.holdQpDestroys = true;
  const tr = transport(m.asBinding());
  const session = await SrpSession.login(tr, ids);
  const other = transport(m.asBinding());
  const otherSession = await SrpSession.login(other, { ...ids, initiatorPortId: Buffer.alloc(16, 3) });
  const otherDisk = new ScsiDisk(otherSession, { lun: 0n });
  await otherDisk.probe();
  const region = tr.registerBuffer(Buffer.alloc(4096));
  const before = m.rdmaObjectCounts();
  const polls = m.pollCount();
  const lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  m.disconnectFromTarget([...(m as unknown as { ids: Map<number, unknown> }).ids.keys()][0]!);
  t.match((await lost).message, /RDMA_CM_EVENT_DISCONNECTED/, 'the loss is reported at once');
  t.equal(m.pendingQpDestroys, 1, 'the QP destroy is under way');
  tr.deregisterBuffer(region); // the caller lets go meanwhile: deregistered after the QP, not now
  t.same(m.rdmaObjectCounts(), before, 'nothing the QP can reach is released before it is gone');
  t.equal(m.pollCount(), polls - 2, "the channel's CM and completion pollers are stopped first");

  // the event loop is free: timers run, the other channel's I/O completes
  await new Promise((r) => setTimeout(r, 20));
  const data = randomBytes(8192);
  await otherDisk.write(0, data);
  t.same(await otherDisk.read(0, data.length), data, 'I/O on another channel while the destroy is pending');
  let released = false;
  void tr.released().then(() => (released = true));
  await new Promise((r) => setImmediate(r));
  t.notOk(released, 'the teardown waits for the destroy');
  t.equal(m.pendingQpDestroys, 1);

  m.settleQpDestroys();
  await tr.released();
  t.same(
    m.rdmaObjectCounts(),
    { channels: 1, ids: 1, qps: 1, pds: 1, compChannels: 1, cqs: 1, mrs: before.mrs - 34 },
    "then everything of the lost channel is released (its 33 pool and IU regions and the caller's)",
  );
  t.equal(tr.registeredRegions, 0);
  t.same(m.busyCalls, [], 'nothing used the id or the CQ while the QP was destroyed');
  await otherSession.close();
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(m.pollCount(), 0);
});

t.test('a failed background QP destroy is logged, and the rest is released as far as it can be', async (t) => {
  const m = fabric(newTarget());
  m.qpDestroyError = 'EIO';
  const warns: { what?: string; err?: { code?: string } }[] = [];
  const logger = { debug() {}, info() {}, error() {}, warn: (o: object) => warns.push(o) };
  const tr = transport(m.asBinding(), { logger });
  const session = await SrpSession.login(tr, ids);
  const lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  m.disconnectFromTarget([...(m as unknown as { ids: Map<number, unknown> }).ids.keys()][0]!);
  await lost;
  await tr.released();
  t.match(
    warns.filter((w) => w.what),
    [
      { what: 'rdma_destroy_qp', err: { code: 'EIO' } },
      { what: 'ibv_destroy_cq', err: { code: 'EBUSY' } },
      { what: 'ibv_destroy_comp_channel', err: { code: 'EBUSY' } },
    ],
    'the failure is logged; what the QP still holds fails and is logged too',
  );
  t.same(
    m.rdmaObjectCounts(),
    { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 1, cqs: 1, mrs: 0 },
    'the memory, the PD, the cm id (with its QP) and the event channel are released',
  );
  t.equal(m.pollCount(), 0);
});

t.test('a QP destroyed in the background while the port comes back: the id is not parked', async (t) => {
  const m = fabric(newTarget());
  m.holdQpDestroys = true;
  const tr = transport(m.asBinding());
  const session = await SrpSession.login(tr, ids);
  const lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  m.portDown();
  await lost;
  m.portUp();
  await new Promise((r) => setTimeout(r, 10));
  m.settleQpDestroys();
  await tr.released();
  t.equal(parkedCmIds(m.asBinding()), 0, 'the port is active when the id is released: destroyed at once');
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(m.madsWhilePortDown, 0);
});

t.test('200 connect/disconnect cycles leak nothing (mock fabric)', async (t) => {
  const target = newTarget();
  const m = fabric(target);
  for (let i = 0; i < 200; i++) {
    const tr = transport(m.asBinding(), { sendQueueDepth: 4, recvQueueDepth: 4 });
    const s = await SrpSession.login(tr, ids);
    await s.close();
  }
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(m.pollCount(), 0);
});

t.test('a receive and the loss of the channel in one poll: the loss wins, nothing is reposted', async (t) => {
  const target = newTarget();
  const m = new MockRdmaBinding();
  let end: MockTargetEnd | undefined;
  m.onConnect = (e) => {
    end = e;
    target.accept(e as unknown as LoopbackTargetEnd);
  };
  const b = m.asBinding();
  const tr = transport(b);
  const session = await SrpSession.login(tr, ids);
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const lost = new Promise<TransportError>((r) => tr.on('disconnect', r));
  const posts = tr.stats.recvPosts;
  // both completions wait in the CQ for one completion event: a received IU (its receive is
  // queued for reposting), then the QP in error (the flushed receives end the channel)
  const e = end as unknown as { fabric: MockRdmaBinding; idHandle: number };
  e.fabric.deliverToInitiator(e.idHandle, encodeCredReq({ solNot: 0, tag: 7n, reqLimDelta: 0 }));
  b.qpModify((tr as unknown as { res: { cmId: number } }).res.cmId, { state: R.IBV_QPS_ERR });
  const why = await lost;
  t.match(why.message, /receive failed/);
  t.equal(tr.state, 'closed');
  t.equal(tr.stats.recvPosts, posts, 'the queued receive was not posted on the released QP');
  await tr.released();
  t.same(m.rdmaObjectCounts().qps, 0);
});

t.test('a completion handler that throws costs the channel, not the process', async (t) => {
  const target = newTarget();
  const m = fabric(target);
  const b = m.asBinding();
  const tr = transport(b);
  const session = await SrpSession.login(tr, ids);
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const lost = new Promise<TransportError>((r) => tr.on('disconnect', r));
  // an unexpected failure inside the completion handler (here: re-arming the CQ)
  b.cqReqNotify = () => {
    throw Object.assign(new Error('ibv_req_notify_cq failed: Bad file descriptor'), { code: 'EBADF' });
  };
  const read = disk.read(0, 4096).catch((e: unknown) => e);
  const why = await lost;
  t.match(why.message, /internal error in the completion handler: ibv_req_notify_cq failed/);
  t.equal(tr.state, 'closed');
  await read;
  await tr.released();
  t.same(m.rdmaObjectCounts().qps, 0, 'the channel is released');
});

t.test('signalling: at QD1 a command costs one completion; a probe completes the unsignalled sends', async (t) => {
  const target = newTarget();
  const m = fabric(target);
  const tr = transport(m.asBinding(), { sendQueueDepth: 16, recvQueueDepth: 16 });
  const session = await SrpSession.login(tr, { ...ids, queueSize: 8 });
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const data = randomBytes(4096);
  await disk.write(0, data);
  const before = { ...tr.stats };
  for (let i = 0; i < 40; i++) t.same(await disk.read(0, 4096), data, `read ${i}`);
  const sends = tr.stats.sends - before.sends;
  const recvs = tr.stats.recvs - before.recvs;
  const sendCompletions = tr.stats.completions - before.completions - recvs;
  t.equal(sends, 40);
  t.equal(recvs, 40, 'one response each');
  t.equal(tr.stats.signalledSends - before.signalledSends, sendCompletions, 'only signalled sends complete');
  t.ok(sendCompletions <= 5, `a signalled send every 8 (half the send queue): ${sendCompletions} for 40 commands`);
  // 40 sends through a 16-deep send queue: the budget held, and the uncovered tail is completed by a probe
  const free = () => (tr as unknown as { freeSlots: number[] }).freeSlots.length;
  t.ok(free() < 16, `sends still uncovered (${16 - free()} slots)`);
  await tr.probe();
  t.equal(free(), 16, 'the probe completed every send posted before it');
  // close drains without waiting for its timeout: a signalled work request covers what is left
  await disk.read(0, 4096);
  t.ok(free() < 16);
  const t0 = performance.now();
  const gone = new Promise<TransportError>((r) => tr.on('disconnect', r));
  await session.close();
  await gone;
  t.ok(performance.now() - t0 < 500, `closed in ${(performance.now() - t0).toFixed(0)} ms (drain timeout 1000)`);
  t.same(m.rdmaObjectCounts().qps, 0);
});

t.test('signalling: unsignalled sends are never overdue on a live path, and a black hole still is', async (t) => {
  const hold = setInterval(() => undefined, 1000); // keep-alive timers are unref'd
  t.teardown(() => clearInterval(hold));
  const target = newTarget();
  const m = fabric(target);
  m.blackHoleDetectMs = Infinity; // a device that never reports: only the overdue check notices
  // ack_timeout 10, retry_count 6: RC retry bound 29.4 ms; a keep-alive tick every 20 ms
  const tr = transport(m.asBinding(), { ackTimeout: 10, retryCount: 6, keepaliveIntervalMs: 20 });
  const session = await SrpSession.login(tr, { ...ids, queueSize: 8 });
  const lost = new Promise<TransportError>((r) => session.on('disconnect', r));
  let gone = false;
  void lost.then(() => (gone = true));
  const disk = new ScsiDisk(session, { lun: 0n });
  await disk.probe();
  const signalled = tr.stats.signalledSends;
  await disk.read(0, 4096);
  t.equal(tr.stats.signalledSends, signalled, 'the read went unsignalled');
  await new Promise((r) => setTimeout(r, 150)); // five times the bound, seven ticks
  t.notOk(gone, 'an uncovered send is not taken for a dead path');
  t.ok(tr.stats.probes > 0, 'the keep-alive probes covered it meanwhile');
  m.blackHole = true;
  const t0 = performance.now();
  const cmd = session.execute({ lun: 0n, cdb: Buffer.alloc(6) }); // TEST UNIT READY, sent unsignalled
  const e = await lost;
  const ms = performance.now() - t0;
  t.match(e.message, /path dead: a send waited \d+ ms/);
  t.ok(ms < 29.4 + 20 + 150, `noticed after ${ms.toFixed(0)} ms (bound + interval 49.4 ms, plus slack)`);
  await t.rejects(cmd, { code: 'disconnected' });
  m.blackHole = false;
});

t.test('busy polling: each post polls the CQ for busyPollUs first; a miss waits for the event', async (t) => {
  for (const busyPollUs of [0, 250]) {
    const target = newTarget();
    const m = fabric(target);
    const tr = transport(m.asBinding(), { busyPollUs });
    const session = await SrpSession.login(tr, { ...ids, queueSize: 8 });
    const disk = new ScsiDisk(session, { lun: 0n });
    await disk.probe();
    const data = randomBytes(4096);
    await disk.write(0, data);
    const posts = tr.stats.sendPosts;
    const polls = m.busyPolls.length;
    for (let i = 0; i < 10; i++) t.same(await disk.read(0, 4096), data, `busy_poll ${busyPollUs}: read ${i}`);
    const spun = m.busyPolls.slice(polls);
    if (busyPollUs === 0) {
      t.same(spun, [], 'off: never spins');
      t.equal(tr.stats.busyPollHits + tr.stats.busyPollMisses, 0);
    } else {
      t.ok(
        spun.every((us) => us === busyPollUs),
        'with the budget asked for',
      );
      // the mock answers only on a later turn of the event loop: every spin misses, the event
      // completes the read, and after each miss the next 1, 2, 4 … posts skip their spin
      t.equal(tr.stats.busyPollMisses, m.busyPolls.length);
      t.equal(tr.stats.busyPollHits, 0);
      t.ok(
        spun.length >= 2 && spun.length < tr.stats.sendPosts - posts,
        `${spun.length} spins for ${tr.stats.sendPosts - posts} posts`,
      );
    }
    await session.close();
  }
  t.throws(() => transport(fabric(newTarget()).asBinding(), { busyPollUs: 10_001 }), RangeError);
  t.throws(() => transport(fabric(newTarget()).asBinding(), { busyPollUs: -1 }), RangeError);
});
