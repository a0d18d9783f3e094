/**
 * Fixtures for tests that run the real daemon process: a temporary directory with a config file
 * (control socket, NBD socket, state dir, TCP listener with a token), start/kill, the CLI and raw
 * HTTP requests to the control API.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { run } from './nbd.js';

export const MiB = 1 << 20;
/** Children run as an operator runs them: without the test runner's loader hooks. */
export const childEnv = { ...process.env, NODE_OPTIONS: '' };
export const bin = new URL('../../../bin/srp-nbd.js', import.meta.url).pathname;
export const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-daemon-'));
fs.chmodSync(dir, 0o755); // others may traverse: only the socket's own mode keeps them out
export const controlSock = path.join(dir, 'control.sock');
export const nbdSock = path.join(dir, 'nbd.sock');
export const stateDir = path.join(dir, 'state');
export const imageDir = path.join(stateDir, 'images'); // test-target images live under the state directory
export const token = 'test-token-0123456789abcdef';
export const configFile = path.join(dir, 'config.json');
fs.writeFileSync(
  configFile,
  JSON.stringify({
    control_socket: controlSock,
    nbd_socket: nbdSock,
    state_dir: stateDir,
    log_level: 'info',
    tcp: { host: '127.0.0.1', port: 0, token },
    test_targets: { enabled: true, memory_budget_mib: 512 },
    defaults: { device: 'none', reconnect_delay: 1, fast_io_fail_tmo: 5, dev_loss_tmo: 600 },
  }),
  { mode: 0o600 },
);

export interface Daemon {
  child: ChildProcess;
  log: () => string;
  tcpPort: () => number | undefined;
  exited: Promise<number | null>;
}

export const daemons: { current?: Daemon } = {};

export async function startDaemon(): Promise<Daemon> {
  const logFile = path.join(dir, `daemon-${Date.now()}.log`);
  const out = fs.openSync(logFile, 'w');
  const child = spawn(process.execPath, [bin, 'daemon', '--config', configFile], {
    stdio: ['ignore', out, out],
    env: childEnv,
  });
  fs.closeSync(out);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const log = (): string => fs.readFileSync(logFile, 'utf8');
  const d: Daemon = {
    child,
    log,
    exited,
    tcpPort: () => {
      const m = /"port":(\d+),"msg":"control API on TCP/.exec(log());
      return m ? Number(m[1]) : undefined;
    },
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (/srp-nbd daemon ready/.test(log())) break;
    if (child.exitCode !== null) throw new Error(`daemon exited ${child.exitCode}:\n${log()}`);
    if (Date.now() > deadline) throw new Error(`daemon not ready in 20 s:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  daemons.current = d;
  return d;
}

export async function stopDaemon(d: Daemon, signal: NodeJS.Signals): Promise<number | null> {
  d.child.kill(signal);
  return d.exited;
}

/** Stops a daemon left running and removes the directory; call from t.teardown. */
export async function cleanup(): Promise<void> {
  const c = daemons.current;
  if (c && c.child.exitCode === null) await stopDaemon(c, 'SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], opts: { stdin?: string; socket?: boolean } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const full = opts.socket === false ? args : [...args, '--socket', controlSock];
    const c = execFile(process.execPath, [bin, ...full], { timeout: 60_000, env: childEnv }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    if (opts.stdin !== undefined) c.stdin!.end(opts.stdin);
    else c.stdin!.end();
  });
}

export function request(opts: {
  method: string;
  path: string;
  body?: string;
  port?: number;
  headers?: Record<string, string>;
}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.body !== undefined) {
      headers['content-type'] ??= 'application/json';
      headers['content-length'] = String(Buffer.byteLength(opts.body));
    }
    const q = http.request(
      {
        method: opts.method,
        path: opts.path,
        headers,
        ...(opts.port ? { host: '127.0.0.1', port: opts.port } : { socketPath: controlSock }),
      },
      (res) => {
        let b = '';
        res.on('data', (c) => (b += c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: b }));
      },
    );
    q.on('error', reject);
    if (opts.body !== undefined) q.write(opts.body);
    q.end();
  });
}

export const uri = (exp: string): string => `nbd+unix:///${exp}?socket=${nbdSock}`;
export const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export async function fioVerify(exp: string): Promise<void> {
  const out = await run('fio', [
    '--name=v',
    '--ioengine=nbd',
    `--uri=${uri(exp)}`,
    '--rw=randwrite',
    '--bsrange=4k-64k',
    '--iodepth=8',
    '--size=8M',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
    '--verify_state_save=0',
    '--output-format=json',
  ]);
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  if (job.error !== 0) throw new Error(`fio error ${job.error}`);
}
