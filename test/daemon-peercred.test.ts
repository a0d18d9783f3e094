/**
 * The control socket refuses unprivileged callers twice over: its mode (0600) and, behind it, the
 * daemon's SO_PEERCRED check of every connection (root and the daemon's own uid only; 403 and a log
 * line naming pid and uid otherwise). The native getPeerCred() against a socketpair of our own; the
 * guard in-process with a fake binding; and the real daemon with the CLI run as nobody (65534),
 * first through the 0600 mode, then with the socket loosened to 0666.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Logger, pino } from 'pino';
import t from 'tap';
import { buildApp, guardControlPeers } from '../src/daemon/api.js';
import type { Daemon as DaemonCore } from '../src/daemon/daemon.js';
import { tryLoadNative } from '../src/native/native.js';
import { bin, childEnv, cleanup, cli, type CliResult, controlSock, dir, startDaemon } from './helpers/daemon.js';

t.teardown(cleanup);

const NOBODY = 65534;
const native = tryLoadNative();

t.test('native getPeerCred: a socketpair of our own reports our pid, uid and gid', async (t) => {
  if (!native) return void t.plan(0, 'native addon not built (npm run build:native)');
  const [a, b] = native.socketPair();
  try {
    t.same(native.getPeerCred(a), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    t.same(native.getPeerCred(b), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  } finally {
    native.close(a);
    native.close(b);
  }
  const fd = fs.openSync(bin, 'r');
  try {
    t.throws(() => native.getPeerCred(fd), { code: 'ENOTSOCK', syscall: 'getsockopt(SO_PEERCRED)' });
  } finally {
    fs.closeSync(fd);
  }
});

/** A pino logger whose JSON lines land in an array. */
function memoryLogger(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void out.push(s) }) as Logger;
  return { logger, lines: () => out.map((s) => JSON.parse(s) as Record<string, unknown>) };
}

/** GET /health over a unix socket: status and body. */
function get(socketPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    void import('node:http').then((http) => {
      const q = http.request({ socketPath, path: '/health' }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
      });
      q.on('error', reject);
      q.end();
    });
  });
}

t.test(
  'guardControlPeers: uid 0 and the own uid pass, anyone else gets 403 and a log line; no addon: logged once',
  async (t) => {
    const stub = { health: () => ({ status: 'ok' }) } as unknown as DaemonCore;
    for (const [uid, own, want] of [
      [0, 0, 200],
      [1000, 1000, 200],
      [NOBODY, 0, 403],
      [NOBODY, 1000, 403],
    ] as const) {
      const { logger, lines } = memoryLogger();
      const app = buildApp(stub, logger);
      guardControlPeers(app, logger, { getPeerCred: () => ({ pid: 4242, uid, gid: uid }) }, own);
      const sock = path.join(dir, `guard-${uid}-${own}.sock`);
      await app.listen({ path: sock });
      const r = await get(sock);
      await app.close();
      t.equal(r.status, want, `peer uid ${uid}, daemon uid ${own}`);
      const refusals = lines().filter(
        (l) => l.msg !== undefined && String(l.msg).startsWith('control connection refused'),
      );
      if (want === 403) {
        t.same(JSON.parse(r.body), {
          error: 'Forbidden',
          message: `permission denied (root only): refused uid ${uid} (pid 4242)`,
        });
        t.match(refusals, [
          {
            pid: 4242,
            uid,
            gid: uid,
            msg: `control connection refused: uid ${uid} (pid 4242) is neither root nor the daemon's uid ${own}`,
          },
        ]);
      } else {
        t.equal(refusals.length, 0);
      }
    }
    const broken = memoryLogger();
    const app = buildApp(stub, broken.logger);
    guardControlPeers(app, broken.logger, {
      getPeerCred: () => {
        throw Object.assign(new Error('getsockopt(SO_PEERCRED) failed'), { code: 'EBADF' });
      },
    });
    const sock = path.join(dir, 'guard-broken.sock');
    await app.listen({ path: sock });
    t.equal((await get(sock)).status, 403, 'credentials that cannot be read: refused (fail closed)');
    await app.close();
    const none = memoryLogger();
    guardControlPeers(buildApp(stub, none.logger), none.logger, undefined);
    t.match(none.lines(), [
      {
        level: 40,
        msg: /native addon not loaded: control socket peers are not checked with SO_PEERCRED; the socket mode 0600 alone/,
      },
    ]);
  },
);

/** The CLI run as nobody (65534:65534), with node and the repository read in place. */
function cliAsNobody(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    // env -u: tap's process-info hook re-adds itself to NODE_OPTIONS of every child, and nobody may not write its files
    const c = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, bin, ...args, '--socket', controlSock], {
      uid: NOBODY,
      gid: NOBODY,
      env: { ...childEnv, HOME: '/' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d) => (stdout += d));
    c.stderr.on('data', (d) => (stderr += d));
    c.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

t.test(
  'the real daemon: nobody is refused by the 0600 mode, and by SO_PEERCRED once the mode is loosened; root still works',
  async (t) => {
    if (process.getuid?.() !== 0) return void t.plan(0, 'needs root to run the CLI as uid 65534');
    const probe = await cliAsNobody(['--help']);
    if (probe.code !== 0)
      return void t.plan(
        0,
        `uid 65534 cannot run the CLI from ${bin} in place (${probe.stderr.split('\n')[0]}): the repository is not readable by others`,
      );
    const d = await startDaemon();
    t.equal(fs.statSync(controlSock).mode & 0o777, 0o600);

    const byMode = await cliAsNobody(['list']);
    t.equal(byMode.code, 1, 'exit status 1: the daemon cannot be reached');
    t.equal(byMode.stderr, `srp-nbd: cannot reach the daemon at ${controlSock}: permission denied (root only)\n`);

    fs.chmodSync(controlSock, 0o666);
    const byCred = await cliAsNobody(['attach', 'test-target,name=evil']);
    t.equal(byCred.code, 1, 'exit status 1 with the socket loosened too');
    t.match(
      byCred.stderr,
      new RegExp(
        `^srp-nbd: cannot reach the daemon at ${controlSock}: permission denied \\(root only\\): refused uid 65534 \\(pid \\d+\\)\\n$`,
      ),
    );
    // the daemon logs on its own time: the CLI may have exited before the line reached the log
    const refusedLines = () =>
      d
        .log()
        .split('\n')
        .filter((l) => l.includes('control connection refused'))
        .map((l) => JSON.parse(l) as { uid: number; gid: number; pid: number; msg: string });
    let logged = refusedLines();
    for (let i = 0; i < 100 && logged.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      logged = refusedLines();
    }
    t.equal(logged.length, 1, 'one log line for the refused connection');
    t.match(logged[0], {
      uid: NOBODY,
      gid: NOBODY,
      pid: Number(/pid (\d+)/.exec(byCred.stderr)![1]),
      msg: /uid 65534 \(pid \d+\) is neither root nor the daemon's uid 0/,
    });

    const asRoot = await cli(['list', '--json']);
    t.equal(asRoot.code, 0, asRoot.stderr);
    t.same(JSON.parse(asRoot.stdout), [], 'root still works, and the refused attach attached nothing');
  },
);
