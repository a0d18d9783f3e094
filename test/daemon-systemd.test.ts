/**
 * systemd integration: the units pass `systemd-analyze verify` and are ordered for boot and
 * shutdown like srp_daemon's; the daemon speaks sd_notify through the addon (STATUS while starting,
 * READY=1 once its targets are attached, STOPPING=1 at SIGTERM), and `wait-online` waits for the
 * targets.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { describeTargets, settledWithin } from '../src/daemon/systemd.js';
import { bin, childEnv, cleanup, cli, controlSock, dir, nbdSock, stateDir } from './helpers/daemon.js';

t.teardown(cleanup);

const repo = new URL('../../', import.meta.url).pathname;
const UNITS = ['srp-nbd.service', 'srp-nbd-wait-online.service'];

/** `KEY=value` lines of a unit, values of a repeated key joined with a space. */
function directives(unit: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of fs.readFileSync(path.join(repo, 'packaging', unit), 'utf8').split('\n')) {
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (kv) m.set(kv[1]!, m.has(kv[1]!) ? `${m.get(kv[1]!)} ${kv[2]!}` : kv[2]!);
  }
  return m;
}

t.test('systemd-analyze verify passes on both units (ExecStart pointed at this checkout)', async (t) => {
  const tmp = fs.mkdtempSync(path.join(dir, 'units-'));
  for (const u of UNITS) {
    const text = fs.readFileSync(path.join(repo, 'packaging', u), 'utf8');
    t.match(text, /ExecStart=\/usr\/local\/bin\/srp-nbd /);
    fs.writeFileSync(path.join(tmp, u), text.replaceAll('/usr/local/bin/srp-nbd', bin));
  }
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const p = spawn('systemd-analyze', ['verify', '--man=no', ...UNITS.map((u) => path.join(tmp, u))]);
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', (e) => resolve({ code: -1, stderr: `${e.message} (scripts/setup.sh installs systemd)` }));
    p.on('exit', (code) => resolve({ code, stderr }));
  });
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stderr, '', 'no warning either (unknown keys, bad values)');
});

t.test('the unit starts before remote file systems and stops after them', async (t) => {
  const d = directives('srp-nbd.service');
  t.equal(d.get('DefaultDependencies'), 'no');
  t.match(d.get('Before')!, /remote-fs-pre\.target/);
  t.match(d.get('Wants')!, /remote-fs-pre\.target/);
  t.match(d.get('Before')!, /shutdown\.target/);
  t.equal(d.get('Conflicts'), 'shutdown.target');
  t.match(d.get('After')!, /network-online\.target/);
  t.match(d.get('After')!, /rdma-load-modules@rdma\.service/);
  t.equal(d.get('Type'), 'notify');
  t.equal(d.get('NotifyAccess'), 'main', 'the daemon itself notifies');
  t.match(d.get('Environment')!, /NODE_OPTIONS=--max-old-space-size=\d+/, 'a bounded heap');
  t.equal(d.get('MemorySwapMax'), '0');
  t.ok(Number(d.get('TimeoutStartSec')) > 90, 'longer than the default ready_timeout');
  const w = directives('srp-nbd-wait-online.service');
  t.match(w.get('After')!, /srp-nbd\.service/);
  t.match(w.get('ExecStart')!, /srp-nbd wait-online --timeout \d+/);
});

t.test('describeTargets: counts by status, paths not running', async (t) => {
  const row = (status: string, state: string | null) => ({ id: 'x', status, state, address: '', luns: [] });
  t.equal(describeTargets([]), 'no targets');
  t.equal(
    describeTargets([row('attached', 'running'), row('attached', 'blocked'), row('connecting', null)] as never),
    '3 targets: 2 attached, 1 connecting; paths: 1 blocked',
  );
});

t.test('settledWithin: false when settled first, true at the timeout', async (t) => {
  t.equal(await settledWithin(Promise.resolve(), 1000), false);
  t.equal(await settledWithin(new Promise(() => undefined), 20), true);
});

t.test('sd_notify: STATUS while starting, READY=1 with the targets, STOPPING=1 at SIGTERM', async (t) => {
  const notifySock = path.join(dir, 'notify.sock');
  const notifyLog = path.join(dir, 'notify.log');
  // Node has no unix datagram sockets: python3 (scripts/setup.sh) listens as systemd would.
  const listener = spawn('python3', [
    '-c',
    `import socket,sys
s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM); s.bind(sys.argv[1]); print('up',flush=True)
with open(sys.argv[2],'a') as f:
    while True:
        f.write(s.recv(4096).decode()+'\\n--\\n'); f.flush()`,
    notifySock,
    notifyLog,
  ]);
  t.teardown(() => void listener.kill());
  await new Promise((resolve) => listener.stdout.once('data', resolve));
  const cfg = path.join(dir, 'notify-config.json');
  fs.writeFileSync(
    cfg,
    JSON.stringify({
      control_socket: controlSock,
      nbd_socket: nbdSock,
      state_dir: stateDir,
      test_targets: { enabled: true, memory_budget_mib: 64 },
      defaults: { device: 'none' },
      targets: [{ address: 'test-target,name=n,luns=1,lun_size=4M' }],
    }),
    { mode: 0o600 },
  );
  const daemon = spawn(process.execPath, [bin, 'daemon', '--config', cfg], {
    env: { ...childEnv, NOTIFY_SOCKET: notifySock },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  daemon.stderr.on('data', (d) => (log += d));
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', resolve));
  const notes = (): string => (fs.existsSync(notifyLog) ? fs.readFileSync(notifyLog, 'utf8') : '');
  const deadline = Date.now() + 20_000;
  while (!/READY=1/.test(notes()) && Date.now() < deadline && daemon.exitCode === null)
    await new Promise((r) => setTimeout(r, 50));
  t.match(notes(), /STATUS=starting: 1 target: 1 connecting\n--\n/, log);
  t.match(notes(), new RegExp(`READY=1\\nSTATUS=ready: 1 target: 1 attached\\nMAINPID=${daemon.pid}\\n`));

  t.equal((await cli(['attach', 'test-target,name=o,luns=1,lun_size=4M'])).code, 0);
  const until = Date.now() + 10_000;
  while (!/STATUS=running: 2 targets: 2 attached\n/.test(notes()) && Date.now() < until)
    await new Promise((r) => setTimeout(r, 100));
  t.match(notes(), /STATUS=running: 2 targets: 2 attached\n--\n/, 'STATUS follows the targets');

  const wait = await cli(['wait-online', '--timeout', '5']);
  t.equal(wait.code, 0, wait.stderr);
  t.equal(wait.stdout, 'online: 2 targets attached\n');

  daemon.kill('SIGTERM');
  t.equal(await exited, 0, log);
  t.match(notes(), /STOPPING=1\nSTATUS=stopping/);
  t.match(log, /"systemd":true,"msg":"srp-nbd daemon ready"/);

  const start = Date.now();
  const gone = await cli(['wait-online', '--timeout', '1']);
  t.equal(gone.code, 1, 'no daemon: fails at the timeout');
  t.match(gone.stderr, /timed out after 1 s: cannot reach the daemon/);
  t.ok(Date.now() - start >= 1000, 'it waited');
  t.equal((await cli(['wait-online', '--timeout', 'soon'])).code, 2);
});
