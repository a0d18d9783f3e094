// Multipath in the daemon, in process (mock RDMA binding, two in-process SRP targets exposing the
// same RAM LUs, mock kernel NBD): grouping by LU identity, selectors, re-issue of a command whose
// channel died, hold and EIO, path fail/reinstate, detach of one path, restart regrouping, metrics.
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { pino } from 'pino';
import { startApi } from '../src/daemon/api.js';
import { ApiError, ControlClient } from '../src/daemon/client.js';
import { DaemonError } from '../src/daemon/daemon.js';
import type { PathsResult } from '../src/daemon/views.js';
import { Daemon } from '../src/daemon/daemon.js';
import { parseConfig, targetSpecSchema } from '../src/daemon/config.js';
import type { Backend } from '../src/nbd/backend.js';
import { lunToSam } from '../src/initiator/scsi-cdb.js';
import { SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL } from '../src/initiator/srp-constants.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../src/testing/srp-target.js';
import { rdmaDaemon, type RdmaDaemonFixture } from './helpers/rdma-daemon.js';

const DEST0 = '192.0.2.2:5000';
const DEST1 = '192.0.2.3:5000';
const ADDR0 = `id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=${DEST0}`;
const ADDR1 = `id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=${DEST1}`;

/** Two target ports (as LIO's two srpt ports) exposing the same RAM LUs. */
function twoPorts(luns = 1, serial = 'mp'): { t0: SrpTestTarget; t1: SrpTestTarget; disks: RamScsiLun[] } {
  const disks = Array.from({ length: luns }, (_, i) => new RamScsiLun({ blocks: 4096, serial: `${serial}-l${i}` }));
  const list = (): [bigint, RamScsiLun][] => disks.map((d, i) => [lunToSam(i), d]);
  return { t0: new SrpTestTarget({ luns: list() }), t1: new SrpTestTarget({ luns: list() }), disks };
}

async function fixture(
  tt: Parameters<typeof rdmaDaemon>[0],
  defaults: Record<string, unknown> = {},
  luns = 1,
): Promise<RdmaDaemonFixture & { t0: SrpTestTarget; t1: SrpTestTarget; disks: RamScsiLun[] }> {
  const p = twoPorts(luns);
  const f = await rdmaDaemon(
    tt,
    new Map([
      [DEST0, p.t0],
      [DEST1, p.t1],
    ]),
    defaults,
  );
  return { ...f, ...p };
}

function backend(d: Daemon, name: string): Backend {
  const b = d.nbd.lookup(name)?.backend;
  if (!b) throw new Error(`no export ${name}`);
  return b;
}

const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;

/** The srp-nbd CLI as a child process against the fixture's control socket. */
function cli(f: RdmaDaemonFixture, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = execFile(
      process.execPath,
      [bin, ...args, '--socket', f.d.config.control_socket],
      { timeout: 60_000, env: { ...process.env, NODE_OPTIONS: '' } },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    c.stdin!.end();
  });
}

const pathOf = (r: PathsResult, target: string) => r.paths!.find((p) => p.target === target)!;

async function io(b: Backend, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const data = Buffer.alloc(4096, i + 1);
    await b.write(i * 4096, data, false);
    const back = Buffer.alloc(4096);
    await b.read(i * 4096, back);
    if (!back.equals(data)) throw new Error(`block ${i} read back differs`);
  }
}

t.test('two targets reaching one LU: one device, the second LUN is a path of it', async (t) => {
  const f = await fixture(t);
  await f.d.attach({ address: ADDR0, id: 'p0' });
  const v1 = await f.d.attach({ address: ADDR1, id: 'p1' });
  t.equal(f.kernel.describe(), '/dev/nbd0=p0-lun0', 'one device, under the first path name');
  t.same(v1.lun_details, [], 'p1 exports nothing of its own');
  t.same(
    v1.path_luns.map((p) => [p.lun, p.export, p.device, p.owner]),
    [[0, 'p0-lun0', '/dev/nbd0', 'p0']],
  );
  t.same(
    f.d.list().map((x) => [x.id, x.luns.map((l) => [l.export, l.path_of ?? null])]),
    [
      ['p0', [['p0-lun0', null]]],
      ['p1', [['p0-lun0', 'p0']]],
    ],
    'list marks the path',
  );
  const r = f.d.paths('p0');
  t.equal(r.device, '/dev/nbd0');
  t.equal(r.export, 'p0-lun0');
  t.same(
    r.paths!.map((p) => [p.target, p.state, p.role]),
    [
      ['p0', 'running', 'active'],
      ['p1', 'running', 'standby'],
    ],
    'failover: one active path',
  );
  t.same(f.d.paths('/dev/nbd0').paths, r.paths, 'the device names the same LU');
  t.same(f.d.paths('p1').export, 'p0-lun0', "the path's target names it too");
  const s0 = await f.d.status('p0');
  t.equal(s0.lun_details[0]!.paths.length, 2, 'status carries the paths');
  for (const k of ['target', 'address', 'state', 'role', 'commands', 'errors', 'in_flight', 'last_failure'])
    t.ok(k in s0.lun_details[0]!.paths[0]!, `path field ${k}`);
});

t.test('multipath off on either target keeps refusing the duplicate', async (t) => {
  const f = await fixture(t);
  await f.d.attach({ address: ADDR0, id: 'p0' });
  const err = (await f.d
    .attach({ address: ADDR1, id: 'p1', multipath: false })
    .catch((e: unknown) => e)) as DaemonError;
  t.type(err, DaemonError);
  t.equal(err.status, 409);
  t.match(err.message, /already attached as target p0 LUN 0 \(\/dev\/nbd0\).*multipath is off/);
  await f.d.detach('p0');
  await f.d.attach({ address: ADDR0, id: 'q0', multipath: false });
  const err2 = (await f.d.attach({ address: ADDR1, id: 'q1' }).catch((e: unknown) => e)) as DaemonError;
  t.equal(err2.status, 409, 'off on the first target refuses too');
  t.equal(f.kernel.describe(), '/dev/nbd0=q0-lun0');
});

t.test('a LUN with another identity is not a path: it gets its own device', async (t) => {
  const other = new SrpTestTarget({ luns: [[lunToSam(0), new RamScsiLun({ blocks: 4096, serial: 'other' })]] });
  const p = twoPorts(1);
  const f = await rdmaDaemon(
    t,
    new Map([
      [DEST0, p.t0],
      [DEST1, other],
    ]),
  );
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  t.equal(f.kernel.describe(), '/dev/nbd0=p0-lun0 /dev/nbd1=p1-lun0');
  t.equal(f.d.paths('p0').paths!.length, 1);
});

t.test('selectors: failover uses one path, round-robin both, queue-length both under load', async (t) => {
  for (const [selector, expectBoth] of [
    ['failover', false],
    ['round-robin', true],
    ['queue-length', true],
  ] as const) {
    const f = await fixture(t, { path_selector: selector });
    await f.d.attach({ address: ADDR0, id: 'p0' });
    await f.d.attach({ address: ADDR1, id: 'p1' });
    const b = backend(f.d, 'p0-lun0');
    if (selector === 'queue-length') {
      // concurrent requests: the path with fewer in flight gets the next one
      await Promise.all(Array.from({ length: 16 }, (_, i) => b.write(i * 4096, Buffer.alloc(4096, i), false)));
    } else {
      await io(b, 8);
    }
    const r = f.d.paths('p0');
    const c0 = pathOf(r, 'p0').commands;
    const c1 = pathOf(r, 'p1').commands;
    if (expectBoth) {
      t.ok(c0 > 0 && c1 > 0, `${selector}: both paths carry commands (${c0}, ${c1})`);
      if (selector === 'round-robin') t.equal(c0, c1, 'round-robin: evenly');
      t.same(
        r.paths!.map((p) => p.role),
        ['active', 'active'],
      );
    } else {
      t.equal(c1, 0, 'failover: the standby path carries nothing');
      t.equal(c0, 16, 'failover: the active path carries every request');
    }
  }
});

t.test('path_priority chooses the active path', async (t) => {
  const f = await fixture(t);
  await f.d.attach({ address: ADDR0, id: 'p0', path_priority: 0 });
  await f.d.attach({ address: ADDR1, id: 'p1', path_priority: 5 });
  await io(backend(f.d, 'p0-lun0'), 2);
  const r = f.d.paths('p0');
  t.same(
    r.paths!.map((p) => [p.target, p.role, p.commands]),
    [
      ['p0', 'standby', 0],
      ['p1', 'active', 4],
    ],
  );
});

t.test('a write in flight on a path whose channel dies is re-issued on the other path, once', async (t) => {
  const f = await fixture(t, {
    reconnect_delay: 60,
    reconnect_delay_max: 60,
    fast_io_fail_tmo: 120,
    dev_loss_tmo: 300,
  });
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  const b = backend(f.d, 'p0-lun0');
  // the target port 0 takes the commands but never answers; then its channel dies
  f.t0.blackHole = true;
  const data = Buffer.alloc(8192, 0x5a);
  const w = b.write(0, data, false);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(f.d.paths('p0').paths![0]!.in_flight, 1, 'in flight on p0');
  f.t0.dropChannels();
  await w;
  const back = Buffer.alloc(8192);
  await b.read(0, back);
  t.ok(back.equals(data), 'the data is on the LU');
  const r = f.d.paths('p0');
  t.equal(pathOf(r, 'p0').errors, 1, 'one transport failure on p0');
  t.not(pathOf(r, 'p0').last_failure, null, 'with its reason');
  t.equal(pathOf(r, 'p0').state, 'blocked', 'p0 reconnects on its own');
  t.equal(pathOf(r, 'p1').commands, 2, 'the write (once) and the read completed on p1');
  t.equal(pathOf(r, 'p1').role, 'active');
  t.equal(r.io!.reissued_total, 1, 'one re-issue');
});

t.test('every path down: I/O is held, then fails with EIO once every path is in fail-fast', async (t) => {
  const f = await fixture(t, { reconnect_delay: 1, fast_io_fail_tmo: 2, dev_loss_tmo: 30 });
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  const b = backend(f.d, 'p0-lun0');
  f.t0.rejectLogin = SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL;
  f.t1.rejectLogin = SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL;
  f.t0.dropChannels();
  f.t1.dropChannels();
  await new Promise((r) => setTimeout(r, 100));
  let settled: string | undefined;
  const started = Date.now();
  const p = Promise.resolve(b.read(0, Buffer.alloc(4096))).then(
    () => (settled = 'ok'),
    (e: unknown) => (settled = (e as { code?: string }).code ?? String(e)),
  );
  await new Promise((r) => setTimeout(r, 500));
  t.equal(settled, undefined, 'held while the paths are blocked');
  t.equal(f.d.paths('p0').io!.held, 1);
  await p;
  t.equal(settled, 'EIO', 'EIO after fast_io_fail_tmo');
  t.ok(Date.now() - started >= 1400, `not before the timer (${Date.now() - started} ms)`);
  // a path comes back: I/O runs again
  f.t1.rejectLogin = undefined;
  f.d.reconnect('p1');
  for (let i = 0; i < 100 && f.d.paths('p0').paths![1]!.state !== 'running'; i++)
    await new Promise((r) => setTimeout(r, 50));
  await io(b, 1);
  t.pass('I/O runs over the path that returned');
});

t.test('operator fail and reinstate; the last running path needs force', async (t) => {
  const f = await fixture(t);
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  const b = backend(f.d, 'p0-lun0');
  let r = f.d.pathControl('p0', 'p0', 'fail');
  t.same(
    r.paths!.map((p) => p.role),
    ['failed', 'active'],
  );
  t.equal(pathOf(r, 'p0').last_failure?.reason, 'failed by the operator');
  await io(b, 2);
  r = f.d.paths('p0');
  t.same([pathOf(r, 'p0').commands, pathOf(r, 'p1').commands], [0, 4], 'no I/O on the failed path');
  const last = (() => {
    try {
      f.d.pathControl('p0', '1', 'fail');
    } catch (e) {
      return e as DaemonError;
    }
  })();
  t.equal(last?.status, 409, 'the last running path is refused');
  t.match(last?.message, /last running path.*force/);
  r = f.d.pathControl('/dev/nbd0', '0', 'reinstate');
  t.same(
    r.paths!.map((p) => p.role),
    ['active', 'standby'],
    'reinstated: failback immediate makes it active again',
  );
  t.throws(
    () => f.d.pathControl('p0', 'nope', 'fail'),
    /no path nope \(paths by index and target: p0-lun0: 0=p0 1=p1\)/,
  );
  t.throws(() => f.d.pathControl('p0', '7', 'fail'), /no path 7/);
  t.throws(() => f.d.paths('nosuch'), /nosuch: no such target/);
});

t.test('failback manual: the active path stays until the operator acts', async (t) => {
  const f = await fixture(t, { failback: 'manual' });
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  const b = backend(f.d, 'p0-lun0');
  f.d.pathControl('p0', 'p0', 'fail');
  await io(b, 1);
  // p0 comes back (reinstated) but the failback is manual: the reinstate itself is the decision
  f.d.pathControl('p0', 'p0', 'reinstate');
  t.equal(pathOf(f.d.paths('p0'), 'p0').role, 'active', 'the operator reinstated it: chosen again');
  // a path that returns on its own does not take the I/O back
  f.t0.dropChannels();
  await io(b, 1);
  t.equal(pathOf(f.d.paths('p0'), 'p1').role, 'active', 'p1 took over');
  for (let i = 0; i < 100 && pathOf(f.d.paths('p0'), 'p0').state !== 'running'; i++)
    await new Promise((r) => setTimeout(r, 50));
  t.equal(pathOf(f.d.paths('p0'), 'p0').state, 'running', 'p0 is back');
  await io(b, 1);
  t.equal(pathOf(f.d.paths('p0'), 'p1').role, 'active', 'manual: p1 stays active');
});

t.test('detaching one path keeps the device; detaching the first hands export and device over', async (t) => {
  const f = await fixture(t);
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  const b = backend(f.d, 'p0-lun0');
  await io(b, 1);
  const res = await f.d.detach('p0');
  t.same(res.devices, [], 'no device removed');
  t.same(res.exports, [], 'no export removed');
  t.equal(f.kernel.describe(), '/dev/nbd0=p0-lun0', 'the device stays');
  t.equal(backend(f.d, 'p0-lun0'), b, 'the same export');
  await io(b, 2);
  const r = f.d.paths('/dev/nbd0');
  t.same(
    r.paths!.map((p) => [p.target, p.role]),
    [['p1', 'active']],
  );
  t.equal(r.owner, 'p1');
  t.same(
    f.d.list().map((x) => [x.id, x.luns.map((l) => [l.export, l.device])]),
    [['p1', [['p0-lun0', '/dev/nbd0']]]],
  );
  // the last path goes: the device goes
  const last = await f.d.detach('p1');
  t.same(last.devices, ['/dev/nbd0']);
  t.equal(f.kernel.describe(), '');
});

t.test('a daemon restart regroups the paths onto the same device', async (t) => {
  const p = twoPorts(2);
  const f = await rdmaDaemon(
    t,
    new Map([
      [DEST0, p.t0],
      [DEST1, p.t1],
    ]),
  );
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  t.equal(f.kernel.describe(), '/dev/nbd0=p0-lun0 /dev/nbd1=p0-lun1');
  await f.d.close();
  // a new daemon on the same state (and kernel): same devices, both paths grouped
  const d2 = new Daemon({
    config: parseConfig({
      control_socket: `${f.dir}/control2.sock`,
      nbd_socket: `${f.dir}/nbd2.sock`,
      state_dir: `${f.dir}/state`,
      defaults: { reconnect_delay: 1, keepalive_interval: 0 },
    }),
    logger: (await import('pino')).pino({ level: 'silent' }),
    nbdKernel: () => Promise.resolve(f.kernel),
    sysfs: `${f.dir}/sys`,
    loadRdma: () =>
      import('../src/initiator/rdma/index.js').then((mod) => ({
        createRdmaConnector: (addr, opts) =>
          mod.createRdmaConnector(addr, {
            ...opts,
            binding: f.m.asBinding(),
            transport: { ...opts.transport, sendQueueDepth: 32, recvQueueDepth: 32 },
          }),
      })),
  });
  await d2.start();
  t.teardown(() => d2.close());
  t.equal(f.kernel.describe(), '/dev/nbd0=p0-lun0 /dev/nbd1=p0-lun1', 'the same devices');
  for (const dev of ['/dev/nbd0', '/dev/nbd1'])
    t.same(
      d2
        .paths(dev)
        .paths!.map((x) => x.target)
        .sort(),
      ['p0', 'p1'],
      `${dev}: both paths`,
    );
});

t.test('metrics: per path lines that follow the I/O', async (t) => {
  const f = await fixture(t, { path_selector: 'round-robin' });
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  const before = await f.d.metrics();
  t.match(before, /srp_nbd_path_commands_total\{lu="p0-lun0",target="p1"\} 0/);
  t.match(before, /srp_nbd_path_state\{lu="p0-lun0",target="p0",state="running"\} 1/);
  await io(backend(f.d, 'p0-lun0'), 2);
  const after = await f.d.metrics();
  t.match(after, /srp_nbd_path_commands_total\{lu="p0-lun0",target="p1"\} 2/);
  t.match(after, /srp_nbd_path_commands_total\{lu="p0-lun0",target="p0"\} 2/);
  t.match(after, /srp_nbd_path_errors_total\{lu="p0-lun0",target="p0"\} 0/);
  t.match(after, /srp_nbd_path_active\{lu="p0-lun0",target="p1"\} 1/);
});

t.test('bad input: selector and failback values', async (t) => {
  const bad = targetSpecSchema.safeParse({ address: ADDR0, path_selector: 'random' });
  t.notOk(bad.success, 'an unknown selector is refused');
  t.match(JSON.stringify(bad.error?.issues), /failover.*round-robin.*queue-length/, 'naming the choices');
  t.throws(() => parseConfig({ defaults: { failback: 'later' } }), /failback/);
  t.throws(() => parseConfig({ defaults: { failback: 0 } }), /failback/);
  t.equal(parseConfig({ defaults: { failback: 30 } }).defaults.failback, 30);
  t.equal(parseConfig({}).defaults.multipath, true, 'multipath on by default');
});

t.test('CLI and REST: several addresses in one attach, path list, fail, reinstate, bad input', async (t) => {
  const f = await fixture(t);
  const api = await startApi(f.d, pino({ level: 'silent' }));
  t.teardown(() => api.close());
  const att = await cli(f, ['attach', ADDR0, ADDR1]);
  t.equal(att.code, 0, att.stderr);
  t.match(
    att.stdout,
    /attached \(0 LUNs, 1 path of an attached LU, state running\)\n\s+LUN 0: a path of srp-0002c90300aabbcc-192\.0\.2\.2-5000-lun0\s+\/dev\/nbd0/,
    'the second address is a path',
  );
  t.equal(f.kernel.describe(), '/dev/nbd0=srp-0002c90300aabbcc-192.0.2.2-5000-lun0', 'one device');
  const [id0, id1] = f.d.list().map((x) => x.id) as [string, string];

  const ls = await cli(f, ['path', id0, '--json']);
  t.equal(ls.code, 0, ls.stderr);
  const r = JSON.parse(ls.stdout) as PathsResult;
  t.equal(r.device, '/dev/nbd0');
  t.equal(r.export, `${id0}-lun0`);
  t.same(
    r.paths!.map((p) => [p.target, p.state, p.role, p.last_failure]),
    [
      [id0, 'running', 'active', null],
      [id1, 'running', 'standby', null],
    ],
  );
  t.match(r.paths![1]!.address, /dest=192\.0\.2\.3:5000/);
  const table = await cli(f, ['path', '/dev/nbd0']);
  t.match(table.stdout, /selector failover, failback immediate/);
  t.match(table.stdout, new RegExp(`1\\s+${id1}\\s+running\\s+standby`));

  const fail = await cli(f, ['path', id0, 'fail', id0]);
  t.equal(fail.code, 0, fail.stderr);
  t.same(
    f.d.paths(id0).paths!.map((p) => p.role),
    ['failed', 'active'],
  );
  const lastOne = await cli(f, ['path', id0, 'fail', '1']);
  t.equal(lastOne.code, 1, 'the last running path: refused');
  t.match(lastOne.stderr, /last running path.*--force/);
  const back = await cli(f, ['path', id0, 'reinstate', id0]);
  t.equal(back.code, 0, back.stderr);
  t.equal(f.d.paths(id0).paths![0]!.role, 'active');

  for (const [args, code, msg] of [
    [['path', id0, 'fail', 'nosuch'], 1, /no path nosuch/],
    [['path', 'nosuch'], 1, /nosuch: no such target/],
    [['path', id0, 'drop', id1], 2, /unknown action 'drop'/],
    [['path', id0, 'fail'], 2, /fail needs a PATH/],
    [
      ['attach', '--path-selector', 'random', ADDR0],
      2,
      /--path-selector: Invalid enum value.*'failover' \| 'round-robin' \| 'queue-length'/,
    ],
    [['attach', '--failback', 'later', ADDR0], 2, /--failback/],
  ] as const) {
    const res = await cli(f, [...args]);
    t.equal(res.code, code, `${args.join(' ')}: exit ${code}`);
    t.match(res.stderr, msg);
  }

  // REST
  const c = new ControlClient({ socket: f.d.config.control_socket });
  const viaRest = await c.call<PathsResult>('listPaths', { params: { id: id1 } });
  t.equal(viaRest.export, `${id0}-lun0`, 'the path target names the LU');
  const forced = await c.call<PathsResult>('failPath', { params: { id: id0, path: id1 }, body: { force: false } });
  t.same(
    forced.paths!.map((p) => p.role),
    ['active', 'failed'],
  );
  const e = (await c.call('failPath', { params: { id: id0, path: id0 } }).catch((x: unknown) => x)) as ApiError;
  t.equal(e.status, 409);
  const all = await c.call<PathsResult>('failPath', { params: { id: id0, path: id0 }, body: { force: true } });
  t.same(
    all.paths!.map((p) => p.role),
    ['failed', 'failed'],
  );
  await t.rejects(
    Promise.resolve(backend(f.d, `${id0}-lun0`).read(0, Buffer.alloc(512))),
    { code: 'EIO' },
    'every path failed: EIO',
  );
  await c.call('reinstatePath', { params: { id: id0, path: '1' } });
  await io(backend(f.d, `${id0}-lun0`), 1);
  const bad = (await c
    .call('failPath', { params: { id: id0, path: id1 }, body: { force: 'yes' } })
    .catch((x: unknown) => x)) as ApiError;
  t.equal(bad.status, 400, 'a bad body is a 400');
  const st = await cli(f, ['status', '--json']);
  const views = JSON.parse(st.stdout) as { lun_details: { paths: unknown[] }[]; path_luns: { paths: unknown[] }[] }[];
  t.equal(views[0]!.lun_details[0]!.paths.length, 2, 'status --json: the LU entry carries its paths');
  t.equal(views[1]!.path_luns[0]!.paths.length, 2, 'and so does the path entry');
  const list = await cli(f, ['list']);
  t.match(list.stdout, new RegExp(`${id0}-lun0 \\(path of ${id0}\\)`), 'list marks the path');
});

t.test('REST: POST /targets with an array attaches the paths in order; errors name the entry', async (t) => {
  const f = await fixture(t);
  const api = await startApi(f.d, pino({ level: 'silent' }));
  t.teardown(() => api.close());
  const c = new ControlClient({ socket: f.d.config.control_socket });
  const bad = (await c
    .call('attach', {
      body: [
        { address: ADDR0, id: 'a' },
        { address: ADDR1, path_selector: 'random' },
      ],
    })
    .catch((x: unknown) => x)) as ApiError;
  t.equal(bad.status, 400, 'a bad entry: 400 before anything is attached');
  t.match(bad.message, /\[1\]\.path_selector: Invalid enum value/);
  const none = (await c.call('attach', { body: {} }).catch((x: unknown) => x)) as ApiError;
  t.match(none.message, /body: address: required/, 'a single body still gets field errors');
  t.same(f.d.list(), []);

  const views = await c.call<{ id: string; luns: { device: string | null }[] }[]>('attach', {
    body: [
      { address: ADDR0, id: 'a' },
      { address: ADDR1, id: 'b' },
    ],
  });
  t.same(
    views.map((v) => v.id),
    ['a', 'b'],
  );
  t.equal(f.kernel.describe(), '/dev/nbd0=a-lun0', 'one device for the two paths');
  t.same(
    f.d.paths('a').paths!.map((p) => [p.target, p.state]),
    [
      ['a', 'running'],
      ['b', 'running'],
    ],
  );

  await c.call('detach', { params: { id: 'b' } });
  const clash = (await c
    .call('attach', {
      body: [
        { address: ADDR1, id: 'c' },
        { address: ADDR1, id: 'd' },
      ],
    })
    .catch((x: unknown) => x)) as ApiError;
  t.equal(clash.status, 409, "the failing entry's status");
  t.match(clash.message, /^targets\[1\] \(id_ext=.*\): .*already attached.*still attached: c\)$/);
  t.same(
    f.d.paths('a').paths!.map((p) => p.target),
    ['a', 'c'],
    'the entries before the failure stay attached, as paths',
  );
});

t.test('a path whose LUN is another disk after a re-login is not used (lost, with the reason)', async (t) => {
  const f = await fixture(t, { path_selector: 'round-robin' });
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  f.t1.luns.set(lunToSam(0), new RamScsiLun({ blocks: 4096, serial: 'another-disk' }));
  f.t1.dropChannels();
  for (let i = 0; i < 100 && pathOf(f.d.paths('p0'), 'p1').state !== 'lost'; i++)
    await new Promise((r) => setTimeout(r, 50));
  const p1 = pathOf(f.d.paths('p0'), 'p1');
  t.equal(p1.state, 'lost', 'the path is lost');
  t.equal(p1.role, 'standby');
  t.match(p1.last_failure?.reason, /identity|serial/i, 'with the reason');
  await io(backend(f.d, 'p0-lun0'), 3);
  t.equal(pathOf(f.d.paths('p0'), 'p1').commands, 0, 'no I/O to the other disk');
  t.equal(pathOf(f.d.paths('p0'), 'p0').commands, 6);
});

t.test('md re-add follows the LU: every path failed I/O, then one (not the first) returns', async (t) => {
  const f = await fixture(t, { reconnect_delay: 1, fast_io_fail_tmo: 1, dev_loss_tmo: 30 });
  await f.d.attach({ address: ADDR0, id: 'p0' });
  await f.d.attach({ address: ADDR1, id: 'p1' });
  // /dev/nbd0 in md0, as Linux lays it out in sysfs (the daemon's sysfs root is the fixture's)
  const sys = path.join(f.dir, 'sys');
  const md = path.join(sys, 'block', 'md0', 'md');
  const member = path.join(md, 'dev-nbd0');
  fs.mkdirSync(member, { recursive: true });
  for (const [k, v] of Object.entries({ array_state: 'clean', level: 'raid1', degraded: '0' }))
    fs.writeFileSync(path.join(md, k), `${v}\n`);
  fs.mkdirSync(path.join(sys, 'block', 'nbd0', 'holders'), { recursive: true });
  fs.writeFileSync(path.join(sys, 'block', 'nbd0', 'holders', 'md0'), '');
  fs.writeFileSync(path.join(member, 'state'), 'in_sync\n');
  fs.writeFileSync(path.join(member, 'slot'), '0\n');

  f.t0.rejectLogin = SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL;
  f.t1.rejectLogin = SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL;
  f.t0.dropChannels();
  await new Promise((r) => setTimeout(r, 300));
  t.equal(f.d.paths('p0').paths![0]!.state, 'blocked');
  f.t1.dropChannels();
  const until = async (what: () => boolean) => {
    for (let i = 0; i < 100 && !what(); i++) await new Promise((r) => setTimeout(r, 50));
  };
  await until(() => f.d.paths('p0').paths!.every((p) => p.state === 'fail-fast'));
  t.same(
    f.d.paths('p0').paths!.map((p) => p.state),
    ['fail-fast', 'fail-fast'],
    'the LU failed I/O',
  );
  // md fails the member on the EIO and releases its slot
  fs.writeFileSync(path.join(member, 'state'), 'faulty\n');
  fs.writeFileSync(path.join(member, 'slot'), 'none\n');
  // the second path returns (the first stays down): the LU is back, its device is re-added
  f.t1.rejectLogin = undefined;
  f.d.reconnect('p1');
  await until(() => fs.readFileSync(path.join(member, 'state'), 'utf8').trim() === 're-add');
  t.equal(fs.readFileSync(path.join(member, 'state'), 'utf8').trim(), 're-add', 'md told to re-add /dev/nbd0');
  t.equal((await f.d.status('p0')).md_readd.readds_total, 1, "counted by the device's target");
});

t.test('config file targets that reach one LU are grouped at start', async (t) => {
  const p = twoPorts(1);
  const f = await rdmaDaemon(
    t,
    new Map([
      [DEST0, p.t0],
      [DEST1, p.t1],
    ]),
    {},
    {
      targets: [
        { id: 'c0', address: ADDR0, path_priority: 1 },
        { id: 'c1', address: ADDR1, path_priority: 2 },
      ],
    },
  );
  t.equal(f.kernel.describe().split(' ').length, 1, 'one device');
  const r = f.d.paths('/dev/nbd0');
  t.same(r.paths!.map((x) => x.target).sort(), ['c0', 'c1']);
  t.equal(pathOf(r, 'c1').role, 'active', 'the higher priority path is active');
});
