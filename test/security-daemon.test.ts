/**
 * Probes 4, 6 and 7 of the security review, replayed against the real daemon process:
 * - one daemon per state directory and per socket (flock), started one after the other and both
 *   at once; a busy daemon's socket (EAGAIN) is not taken for stale; the NBD socket of a running
 *   daemon survives a refused second one;
 * - a TCP port in use at start: the daemon exits non-zero and leaves nothing answering;
 * - the TCP listener: half-sent requests (from uid nobody where root can) are dropped after the
 *   request timeout, connections above the cap are refused at once, root keeps working, and
 *   SIGTERM stops the daemon at once although a client holds a connection open.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import t from 'tap';
import { removeStaleSocket } from '../src/daemon/stale-socket.js';
import { API_LIMITS } from '../src/daemon/api.js';
import {
  bin,
  childEnv,
  cleanup,
  cli,
  configFile,
  controlSock,
  dir,
  nbdSock,
  startDaemon,
  stateDir,
} from './helpers/daemon.js';

t.teardown(cleanup);
const NOBODY = 65534;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A config file like the shared one with some keys replaced. */
function variant(name: string, over: Record<string, unknown>): string {
  const f = path.join(dir, `${name}.json`);
  fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(fs.readFileSync(configFile, 'utf8')), ...over }), { mode: 0o600 });
  return f;
}

/** Runs `srp-nbd daemon --config FILE` to its end (for daemons expected to refuse to start). */
function daemonRun(config: string, timeoutMs = 30_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [bin, 'daemon', '--config', config], {
      env: childEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

t.test('a second daemon on the same state directory or sockets is refused; the first keeps its sockets', async (t) => {
  const d = await startDaemon();
  const lock = path.join(stateDir, 'daemon.lock');
  t.equal(fs.readFileSync(lock, 'utf8').trim(), String(d.child.pid), 'the lock file names the holder');

  const sameState = variant('same-state', {
    control_socket: path.join(dir, 'c2.sock'),
    nbd_socket: path.join(dir, 'n2.sock'),
    tcp: undefined,
  });
  const a = await daemonRun(sameState);
  t.equal(a.code, 1);
  t.match(
    a.out,
    new RegExp(`another srp-nbd daemon \\(pid ${d.child.pid}\\) is using the state directory ${stateDir}`),
  );
  t.notOk(fs.existsSync(path.join(dir, 'c2.sock')), 'it created no socket');

  const sameNbd = variant('same-nbd', {
    control_socket: path.join(dir, 'c3.sock'),
    state_dir: path.join(dir, 'state3'),
    tcp: undefined,
  });
  const b = await daemonRun(sameNbd);
  t.equal(b.code, 1);
  t.match(b.out, /is using the NBD socket/);
  t.ok(fs.statSync(nbdSock).isSocket(), "the first daemon's NBD socket is still there");
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(nbdSock, () => (s.destroy(), resolve()));
    s.once('error', reject);
  });
  t.pass('and it answers');
  const list = await cli(['list']);
  t.equal(list.code, 0, 'the first daemon still serves its control socket');
  d.child.kill('SIGTERM');
  t.equal(await d.exited, 0);
});

t.test('two daemons started at once: exactly one runs, its sockets intact', async (t) => {
  const cfg = variant('race', { tcp: undefined });
  for (let round = 0; round < 3; round++) {
    const procs = [0, 1].map(() =>
      spawn(process.execPath, [bin, 'daemon', '--config', cfg], { env: childEnv, stdio: 'ignore' }),
    );
    const exits = procs.map((p) => new Promise<number | null>((r) => p.on('exit', (c) => r(c))));
    const first = await Promise.race(exits.map((e, i) => e.then((code) => ({ i, code }))));
    t.equal(first.code, 1, `round ${round}: the loser exits 1`);
    const winner = procs[1 - first.i]!;
    let listed = false;
    for (let i = 0; i < 100 && !listed; i++) {
      listed = (await cli(['list'])).code === 0;
      if (!listed) await sleep(100);
    }
    t.ok(listed, `round ${round}: the winner answers on the control socket`);
    t.ok(fs.statSync(nbdSock).isSocket(), `round ${round}: its NBD socket exists`);
    winner.kill('SIGTERM');
    t.equal(await exits[1 - first.i], 0);
  }
});

t.test('a busy listener (EAGAIN) is not stale; only ECONNREFUSED is', async (t) => {
  const sock = path.join(dir, 'busy.sock');
  // python: a listener with a backlog of 1 that never accepts, so the queue fills
  const py = spawn(
    'python3',
    [
      '-c',
      `import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(${JSON.stringify(sock)})\ns.listen(1)\nprint('up',flush=True)\ntime.sleep(60)`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.teardown(() => py.kill());
  await new Promise((r) => py.stdout.once('data', r));
  const held: net.Socket[] = [];
  let eagain = false;
  for (let i = 0; i < 10 && !eagain; i++) {
    eagain = await new Promise<boolean>((resolve) => {
      const s = net.connect(sock, () => (held.push(s), resolve(false)));
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'EAGAIN'));
    });
  }
  t.ok(eagain, 'the backlog is full');
  await t.rejects(removeStaleSocket(sock), /another srp-nbd daemon is listening on/);
  t.ok(fs.existsSync(sock), 'the busy socket is left alone');
  for (const s of held) s.destroy();
  py.kill('SIGKILL');
  await new Promise((r) => py.on('exit', r));
  await removeStaleSocket(sock);
  t.notOk(fs.existsSync(sock), 'a socket nobody listens on is removed');
});

t.test('a TCP port in use at start: exit 1, nothing left answering', async (t) => {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  t.teardown(() => blocker.close());
  const port = (blocker.address() as net.AddressInfo).port;
  const cfg = variant('port-busy', { tcp: { host: '127.0.0.1', port, token: 'test-token-0123456789abcdef' } });
  const r = await daemonRun(cfg);
  t.equal(r.code, 1, r.out);
  t.match(r.out, /EADDRINUSE/);
  t.notOk(fs.existsSync(controlSock), 'the control socket is gone with the process');
});

t.test('TCP listener: half-sent requests dropped, a connection cap, SIGTERM not held', async (t) => {
  const d = await startDaemon();
  const port = d.tcpPort()!;
  t.ok(port);
  const asNobody = process.getuid?.() === 0;
  // A client (uid nobody when we are root) opens 60 connections, each sending half a request,
  // and prints when each one is closed by the daemon.
  const script = path.join(dir, 'half.cjs');
  fs.writeFileSync(
    script,
    `
    const net = require('net'); const t0 = Date.now(); let open = 0, refused = 0, peak = 0;
    for (let i = 0; i < 60; i++) {
      const s = net.connect(${port}, '127.0.0.1', () => { open++; peak = Math.max(peak, open); s.write('GET /health HTTP/1.1\\r\\nHost: x\\r\\n'); });
      let counted = false;
      s.on('close', () => { if (counted) return; counted = true; if (s.bytesWritten === 0) refused++; else open--;
        process.stdout.write(JSON.stringify({ i, ms: Date.now() - t0, wrote: s.bytesWritten }) + '\\n'); });
      s.on('error', () => {});
      s.resume(); // read the 408 and the end of the stream, or 'close' never comes
    }
  `,
    { mode: 0o644 },
  );
  const c = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, script], {
    ...(asNobody ? { uid: NOBODY, gid: NOBODY } : {}),
    env: { ...childEnv, HOME: '/' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const closes: { i: number; ms: number; wrote: number }[] = [];
  let buf = '';
  c.stdout.on('data', (d: Buffer) => {
    buf += d;
    for (let k; (k = buf.indexOf('\n')) >= 0; buf = buf.slice(k + 1)) closes.push(JSON.parse(buf.slice(0, k)));
  });
  await sleep(1500);
  const early = closes.length;
  t.ok(early >= 60 - API_LIMITS.MAX_CONNECTIONS, `connections above the cap closed at once (${early} of 60)`);
  const root = await cli(['list']);
  t.equal(root.code, 0, 'root is served meanwhile (control socket)');
  const limit = API_LIMITS.REQUEST_TIMEOUT_MS + 2 * API_LIMITS.CHECK_INTERVAL_MS + 3000;
  for (let waited = 0; closes.length < 60 && waited < limit + 2000; waited += 200) await sleep(200);
  t.equal(closes.length, 60, `every half-sent request was dropped (${closes.length} closed)`);
  const slowest = Math.max(...closes.map((x) => x.ms));
  t.ok(slowest <= limit, `the last one after ${slowest} ms (limit ${limit})`);
  c.kill();

  // A client that holds a connection open must not delay the stop.
  const holder = net.connect(port, '127.0.0.1');
  await new Promise((r) => holder.once('connect', r));
  holder.write('GET /health HTTP/1.1\r\nHost: x\r\n');
  holder.on('error', () => {});
  const t0 = Date.now();
  d.child.kill('SIGTERM');
  t.equal(await d.exited, 0);
  t.ok(Date.now() - t0 < 5000, `stopped in ${Date.now() - t0} ms with a connection held`);
  holder.destroy();
});
