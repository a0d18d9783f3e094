/**
 * Probe 1 of the security review: signals sent to the root daemon. Without a SIGUSR1 listener
 * Node opens its inspector on 127.0.0.1:9229 (any local user could then run code as root);
 * SIGHUP and SIGUSR2 ended the daemon without its clean shutdown. Each is sent to the real
 * daemon process and to `srp-nbd serve`: the process keeps serving, no inspector port opens, the
 * signal is logged, and SIGTERM still stops it cleanly.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { bin, childEnv, cleanup, cli, dir, startDaemon } from './helpers/daemon.js';

t.teardown(cleanup);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** TCP ports a process listens on: LISTEN rows of /proc/net/tcp{,6} whose inode is one of its fds. */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      /* fd closed meanwhile */
    }
  }
  const ports: number[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9]!)) continue; // 0A = TCP_LISTEN
      ports.push(parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return ports;
}

t.test('daemon: SIGUSR1, SIGUSR2 and SIGHUP are logged and ignored; no inspector', async (t) => {
  const d = await startDaemon();
  const pid = d.child.pid!;
  const before = listeningPorts(pid);
  for (const s of ['SIGUSR1', 'SIGUSR2', 'SIGHUP'] as const) {
    d.child.kill(s);
    await sleep(300);
    t.equal(d.child.exitCode, null, `${s}: the daemon still runs`);
    t.match(d.log(), new RegExp(`"signal":"${s}".*${s} ignored`), `${s} logged`);
  }
  t.notOk(listeningPorts(pid).includes(9229), 'no listener on the inspector port');
  t.same(listeningPorts(pid), before, 'no new TCP listener at all');
  t.notMatch(d.log(), /Debugger listening/, 'the inspector never started');
  const list = await cli(['list']);
  t.equal(list.code, 0, 'the control API still answers');
  d.child.kill('SIGTERM');
  t.equal(await d.exited, 0, 'SIGTERM: clean stop, exit 0');
  t.match(d.log(), /"signal":"SIGTERM".*stopping/);
});

t.test('serve: SIGUSR1 does not open the inspector either', async (t) => {
  const sock = path.join(dir, 'serve.sock');
  const child = spawn(process.execPath, [bin, 'serve', '--memory', '1M', '--unix', sock], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: childEnv,
  });
  let out = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (out += c));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  for (let i = 0; i < 200 && !/listening on unix/.test(out); i++) await sleep(50);
  t.match(out, /listening on unix/);
  child.kill('SIGUSR1');
  await sleep(300);
  t.equal(child.exitCode, null, 'still running');
  t.notOk(listeningPorts(child.pid!).includes(9229), 'no listener on the inspector port');
  t.notMatch(out, /Debugger listening/);
  t.match(out, /SIGUSR1 ignored/);
  child.kill('SIGTERM');
  t.equal(await exited, 0);
});
