// The daemon's RDMA connector (createRdmaConnector): port ids from the add_target address, fresh
// channels per open(), keep-alive probes whose failure is a channel loss, PORT_ACTIVE as path-up,
// and an SrpPort that blocks on a black hole and reconnects at once when the path comes back.
import t, { type Test } from 'tap';
import pino from 'pino';
import { SrpPort } from '../src/fsm/srp-port.js';
import { createRdmaConnector } from '../src/initiator/rdma/index.js';
import { rcRetryBoundMs } from '../src/initiator/rdma/options.js';
import { SrpSession } from '../src/initiator/srp-session.js';
import { parseTargetAddress } from '../src/initiator/target-address.js';
import type { TransportError } from '../src/initiator/scsi-executor.js';
import type { LoopbackTargetEnd } from '../src/initiator/loopback.js';
import { MockRdmaBinding } from '../src/testing/mock-rdma-binding.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../src/testing/srp-target.js';

const logger = pino({ level: 'silent' });
const newFabric = () => {
  const target = new SrpTestTarget({ luns: [[0n, new RamScsiLun({ blocks: 8192 })]] });
  const m = new MockRdmaBinding();
  m.onConnect = (end) => target.accept(end as unknown as LoopbackTargetEnd);
  return { target, m };
};
const small = { sendQueueDepth: 16, recvQueueDepth: 16 };
// keep-alive timers are unref'd (they never hold a daemon open): hold the test's event loop
const hold = (t: Test) => {
  const h = setInterval(() => undefined, 1000);
  t.teardown(() => clearInterval(h));
};

t.test('createRdmaConnector: dest= only; channels, description, port ids', async (t) => {
  const { m } = newFabric();
  const ib = parseTargetAddress('id_ext=1,ioc_guid=2,dgid=fe800000000000000000000000000001,pkey=ffff,service_id=3');
  await t.rejects(
    createRdmaConnector(ib, { ackTimeout: 14, retryCount: 6, keepaliveIntervalMs: 0, logger, binding: m.asBinding() }),
    /dest=IP:port/,
  );
  const addr = parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000,src=192.0.2.1');
  const made = await createRdmaConnector(addr, {
    ackTimeout: 12,
    retryCount: 3,
    keepaliveIntervalMs: 0,
    logger,
    binding: m.asBinding(),
    transport: small,
  });
  t.equal(made.connector.description, 'dest=192.0.2.2:5000,src=192.0.2.1');
  t.equal(made.targetPortId.toString('hex'), '00000000000000010000000000000002');
  t.equal(made.initiatorPortId.subarray(0, 8).toString('hex'), '0000000000000000', 'initiator_ext defaults to 0');
  const again = await createRdmaConnector(addr, {
    ackTimeout: 12,
    retryCount: 3,
    keepaliveIntervalMs: 0,
    logger,
    binding: m.asBinding(),
  });
  t.same(again.initiatorPortId, made.initiatorPortId, 'the host part is stable');
  const tr = await made.connector.open(new AbortController().signal);
  const s = await SrpSession.login(tr, made);
  t.same(m.ackTimeouts, [12]);
  t.match(m.connectParams[0], { retryCount: 3 });
  await s.close();
  const aborted = new AbortController();
  aborted.abort();
  await t.rejects(made.connector.open(aborted.signal), /aborted/);
  made.close();
  await t.rejects(made.connector.open(new AbortController().signal), /closed/);
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
  t.equal(m.pollCount(), 0);
});

t.test('keep-alive: probes on the interval; a failed probe is a channel disconnect', async (t) => {
  hold(t);
  const { m } = newFabric();
  const addr = parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000');
  const made = await createRdmaConnector(addr, {
    ackTimeout: 14,
    retryCount: 6,
    keepaliveIntervalMs: 20,
    logger,
    binding: m.asBinding(),
    transport: small,
  });
  const tr = await made.connector.open(new AbortController().signal);
  const s = await SrpSession.login(tr, made);
  // poll for the condition (a loaded machine stretches the interval), bounded
  for (const t0 = Date.now(); tr.stats.probes < 3 && Date.now() - t0 < 2000;)
    await new Promise((r) => setTimeout(r, 10));
  t.ok(tr.stats.probes >= 3, `probes sent on the interval (${tr.stats.probes})`);
  const lost = new Promise<TransportError>((r) => s.on('disconnect', r));
  m.blackHole = true;
  const e = await lost;
  t.match(e.message, /keep-alive probe failed: .*retry counter exceeded/);
  t.equal(e.code, 'disconnected');
  m.blackHole = false;
  const n = tr.stats.probes;
  await new Promise((r) => setTimeout(r, 60));
  t.equal(tr.stats.probes, n, 'no probe after the loss');
  made.close();
  t.same(m.rdmaObjectCounts(), { channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 });
});

t.test('SrpPort over the connector: black hole blocks the rport, PORT_ACTIVE reconnects at once', async (t) => {
  hold(t);
  const { m } = newFabric();
  const addr = parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000');
  const made = await createRdmaConnector(addr, {
    ackTimeout: 14,
    retryCount: 6,
    keepaliveIntervalMs: 20,
    logger,
    binding: m.asBinding(),
    transport: small,
  });
  const port = await SrpPort.connect({
    name: 't',
    connector: made.connector,
    session: { initiatorPortId: made.initiatorPortId, targetPortId: made.targetPortId },
    tmo: { reconnectDelay: 'off' },
    logger,
  });
  t.equal(port.state, 'running');
  m.blackHole = true;
  const until = async (pred: () => boolean, ms = 2000) => {
    const t0 = Date.now();
    while (!pred()) {
      if (Date.now() - t0 > ms) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
    return true;
  };
  t.ok(await until(() => port.state === 'blocked'), `keep-alive failure blocks the rport (${port.state})`);
  m.blackHole = false;
  // the path "comes back": a port flap on the device; PORT_ACTIVE must trigger the reconnect
  // (reconnect_delay off: nothing else would reconnect)
  m.portDown();
  await new Promise((r) => setTimeout(r, 10));
  m.portUp();
  t.ok(await until(() => port.state === 'running'), `reconnected on PORT_ACTIVE (${port.state})`);
  t.equal(port.logins, 2);
  await port.close();
  made.close();
});

t.test('a channel to the same destination connecting is a path-up for the other connectors', async (t) => {
  const { m } = newFabric();
  const opts = {
    ackTimeout: 14,
    retryCount: 6,
    keepaliveIntervalMs: 0,
    logger,
    binding: m.asBinding(),
    transport: small,
  };
  const a = await createRdmaConnector(parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.7:5000'), opts);
  const b = await createRdmaConnector(parseTargetAddress('id_ext=3,ioc_guid=2,dest=192.0.2.7:5000'), opts);
  const other = await createRdmaConnector(parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.8:5000'), opts);
  const heard = { a: 0, b: 0, other: 0 };
  a.connector.onPathUp(() => heard.a++);
  b.connector.onPathUp(() => heard.b++);
  other.connector.onPathUp(() => heard.other++);
  const s = await SrpSession.login(await b.connector.open(new AbortController().signal), b);
  t.same(heard, { a: 1, b: 0, other: 0 }, 'only the other connector to that destination hears it');
  await s.close();
  a.close();
  const s2 = await SrpSession.login(await b.connector.open(new AbortController().signal), b);
  t.same(heard, { a: 1, b: 0, other: 0 }, 'a closed connector hears nothing');
  await s2.close();
  b.close();
  other.close();
});

t.test('black hole the device never reports: an overdue send or probe is a dead path', async (t) => {
  hold(t);
  // ack_timeout 10, retry_count 6: (6 + 1) x 4.096 µs x 2^10 = 29.4 ms
  t.equal(rcRetryBoundMs(10, 6).toFixed(1), '29.4');
  t.equal(rcRetryBoundMs(14, 6).toFixed(2), '469.76', 'the defaults');
  for (const load of [true, false]) {
    const { m } = newFabric();
    m.blackHoleDetectMs = Infinity;
    const made = await createRdmaConnector(parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000'), {
      ackTimeout: 10,
      retryCount: 6,
      keepaliveIntervalMs: 20,
      logger,
      binding: m.asBinding(),
      transport: small,
    });
    const tr = await made.connector.open(new AbortController().signal);
    const s = await SrpSession.login(tr, made);
    const lost = new Promise<TransportError>((r) => s.on('disconnect', r));
    m.blackHole = true;
    const t0 = performance.now();
    const cmd = load ? s.execute({ lun: 0n, cdb: Buffer.alloc(6) }) : undefined; // TEST UNIT READY
    const e = await lost;
    const ms = performance.now() - t0;
    const what = load ? 'under load' : 'idle';
    t.match(e.message, /path dead: a send waited \d+ ms .* RC retry bound of 29\.4 ms/, `${what}: ${e.message}`);
    t.ok(ms < 29.4 + 20 + 150, `${what}: noticed after ${ms.toFixed(0)} ms (bound + interval 49.4 ms, plus slack)`);
    if (cmd) await t.rejects(cmd, { code: 'disconnected' }, 'the command in flight fails as a transport error');
    m.blackHole = false;
    made.close();
  }
});

t.test('idle black hole: the probe is judged the RC retry bound after it was posted, not a tick later', async (t) => {
  hold(t);
  const { m } = newFabric();
  m.blackHoleDetectMs = Infinity;
  const made = await createRdmaConnector(parseTargetAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000'), {
    ackTimeout: 10, // bound 29.4 ms
    retryCount: 6,
    keepaliveIntervalMs: 300,
    logger,
    binding: m.asBinding(),
    transport: small,
  });
  const s = await SrpSession.login(await made.connector.open(new AbortController().signal), made);
  const lost = new Promise<TransportError>((r) => s.on('disconnect', r));
  m.blackHole = true;
  const t0 = performance.now();
  const e = await lost;
  const ms = performance.now() - t0;
  t.match(e.message, /path dead/);
  // within interval + bound (329.4 ms); judged at the next tick it would take about 600 ms
  t.ok(ms < 480, `noticed after ${ms.toFixed(0)} ms`);
  m.blackHole = false;
  made.close();
});
