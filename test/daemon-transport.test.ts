/**
 * The daemon's RDMA/CM connector, loaded at the first attach of an RDMA address (in-process, no
 * kernel devices): the module is found at its path; a module that cannot be loaded, and IB CM
 * addressing, are refused with 503 and a message saying what is missing, while the daemon keeps
 * serving test targets.
 */
import t from 'tap';
import { inProcessDaemons } from './helpers/in-process-daemon.js';
import { Daemon, DaemonError, type DaemonOptions } from '../src/daemon/daemon.js';
import { createRdmaConnector } from '../src/initiator/rdma/index.js';
import type { LoopbackTargetEnd } from '../src/initiator/loopback.js';
import { MockRdmaBinding, type MockTargetEnd } from '../src/testing/mock-rdma-binding.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../src/testing/srp-target.js';

/** A daemon whose directory and sockets go away with the test. */
function daemon(t: Parameters<typeof inProcessDaemons>[0], loadRdma?: DaemonOptions['loadRdma']): Daemon {
  return inProcessDaemons(t, 'srp-nbd-transport-').make(loadRdma ? { loadRdma } : {});
}

const RDMA_CM = 'id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=192.0.2.2:5000';

t.test('a connector module that cannot be loaded: 503 naming cause and fix; test targets still attach', async (t) => {
  const d = daemon(t, () => Promise.reject(new Error("Cannot find module '/x/rdma-transport.js'")));
  await d.start();
  const err = await d.attach({ address: RDMA_CM }).catch((e: unknown) => e);
  t.type(err, DaemonError);
  t.equal((err as DaemonError).status, 503);
  t.equal(
    (err as DaemonError).message,
    'target srp-0002c90300aabbcc-192.0.2.2-5000: RDMA transport not available: ' +
      "the RDMA/CM connector module cannot be loaded (Cannot find module '/x/rdma-transport.js'): " +
      'rebuild srp-nbd (npm run build)',
  );
  t.same(d.list(), [], 'nothing attached');
  const a = await d.attach({ address: 'test-target,name=a' });
  t.equal(a.status, 'attached');
});

t.test('IB CM addressing: 503 saying to use dest=IP:port', async (t) => {
  const d = daemon(t);
  await d.start();
  const address = 'id_ext=1,ioc_guid=2,dgid=fe800000000000000002c90300aabbcd,pkey=ffff,service_id=1';
  const err = await d.attach({ address }).catch((e: unknown) => e);
  t.type(err, DaemonError);
  t.equal((err as DaemonError).status, 503);
  const message = (err as DaemonError).message;
  t.match(message, /: RDMA transport not available for IB CM addressing \(dgid\/pkey\/service_id\); use dest=IP:port/);
});

t.test('the default loader finds the connector module (the attach fails later: no RDMA here)', async (t) => {
  const d = daemon(t);
  await d.start();
  const err = await d.attach({ address: RDMA_CM }).catch((e: unknown) => e);
  t.type(err, DaemonError);
  t.notMatch((err as DaemonError).message, /cannot be loaded/, (err as DaemonError).message);
  t.match((err as DaemonError).message, /RDMA transport not available|attach failed|native addon/);
});

t.test('status over RDMA: path_check states the dead-path bound; last_error the last failure', async (t) => {
  const target = new SrpTestTarget({ luns: [[0n, new RamScsiLun({ blocks: 8192 })]] });
  const m = new MockRdmaBinding();
  let lastEnd: MockTargetEnd | undefined;
  m.onConnect = (end) => {
    lastEnd = end;
    target.accept(end as unknown as LoopbackTargetEnd);
  };
  const d = daemon(t, async () => ({
    createRdmaConnector: (addr, opts) => createRdmaConnector(addr, { ...opts, binding: m.asBinding() }),
  }));
  await d.start();
  const v = await d.attach({ address: RDMA_CM, reconnect_delay: 0.2 });
  t.equal(v.state, 'running');
  t.same(v.path_check, { bound_ms: 719.8, rc_retry_ms: 469.8, keepalive_interval_s: 0.25 }, 'defaults 14/6, 0.25 s');
  t.equal(v.last_error, null);
  t.equal(v.timers.reconnect_delay, 0.2, 'a sub-second reconnect_delay');
  const lw = v.reconnect.login_wait!;
  t.ok(
    lw.slowest_answer_ms !== null && lw.slowest_answer_ms >= 0,
    `the attach's answer is timed (${lw.slowest_answer_ms} ms)`,
  );
  t.equal(lw.next_wait_ms, 250, 'a fast target: the next login waits the 250 ms floor for its answer');
  m.answerDelayMs = 120; // the target now answers in 120 ms
  lastEnd!.close(); // the target drops the connection
  let st = await d.status(v.id);
  for (let i = 0; i < 200 && st.last_error === null; i++) {
    await new Promise((r) => setTimeout(r, 10));
    st = await d.status(v.id);
  }
  t.match(st.last_error, /disconnected/, `last_error: ${st.last_error}`);
  for (let i = 0; i < 300 && st.state !== 'running'; i++) {
    await new Promise((r) => setTimeout(r, 10));
    st = await d.status(v.id);
  }
  t.equal(st.state, 'running', 'reconnected');
  t.match(st.last_error, /disconnected/, 'last_error is kept after the port runs again');
  t.ok(
    st.reconnect.login_wait!.slowest_answer_ms! >= 115,
    `the slower answer is learnt (${st.reconnect.login_wait!.slowest_answer_ms} ms)`,
  );
  t.equal(st.reconnect.login_wait!.next_wait_ms, 3 * st.reconnect.login_wait!.slowest_answer_ms!, '3 x the slowest');
});
