/**
 * NBD server benchmark: fio's nbd engine (the same client, in the same run)
 * against `srp-nbd serve --memory` and nbdkit's memory plugin, over a unix
 * socket and TCP. Runs rotate between the servers, each row is measured
 * BENCH_REPEAT times and the median is kept, so a noisy shared machine
 * affects every side alike. Prints each figure, the ratio srp-nbd / nbdkit
 * of the medians and the range of the ratios of the paired runs (run i of
 * srp-nbd against run i of nbdkit), so the noise is visible next to the
 * figure.
 *
 * A third server is measured as a yardstick: bench/minimal-server.c, the
 * least a server can do for fio (compiled here with cc; skipped without
 * one). A second table shows where the CPU went: fio's job process (a
 * client at ~100 % of a CPU is what limits the row, whatever the server)
 * and each server's CPU time per request.
 *
 *   npm run bench:nbd                 (BENCH_RUNTIME=5 seconds per run, BENCH_REPEAT=3)
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cpuSeconds, median } from './proc-stats.js';

const RUNTIME = Number(process.env.BENCH_RUNTIME ?? 5);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const SIZE = '256M';

interface Workload {
  name: string;
  rw: string;
  bs: string;
  qd: number;
  /** Rows where the target ratio is at least this. */
  target: number;
}

const WORKLOADS: Workload[] = [
  { name: '1M seq write QD8', rw: 'write', bs: '1M', qd: 8, target: 1.0 },
  { name: '1M seq read QD8', rw: 'read', bs: '1M', qd: 8, target: 1.0 },
  { name: '4K randwrite QD32', rw: 'randwrite', bs: '4k', qd: 32, target: 1.5 },
  { name: '4K randread QD32', rw: 'randread', bs: '4k', qd: 32, target: 1.5 },
  { name: '4K randread QD1', rw: 'randread', bs: '4k', qd: 1, target: 1.0 },
];

type Transport = 'unix' | 'tcp';
type Kind = 'srp-nbd' | 'nbdkit' | 'minimal';

interface Server {
  proc: ChildProcess;
  uri: string;
}

/** One fio run: its rate, fio's own CPU (% of one CPU) and the server's CPU time per request. */
interface Run {
  iops: number;
  fioCpu: number;
  serverUs: number;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-bench-'));
const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;
const minimalSource = new URL('../../bench/minimal-server.c', import.meta.url).pathname;
const minimalBin = path.join(dir, 'minimal-server');

function spawnServer(kind: Kind, transport: Transport, sock: string, port: number): ChildProcess {
  const sizeMiB = String(parseInt(SIZE, 10));
  switch (kind) {
    case 'nbdkit':
      return spawn(
        'nbdkit',
        ['-f', ...(transport === 'unix' ? ['-U', sock] : ['-p', String(port), '-i', '127.0.0.1']), 'memory', SIZE],
        { stdio: 'ignore' },
      );
    case 'minimal':
      return spawn(minimalBin, [transport === 'unix' ? sock : String(port), sizeMiB], { stdio: 'ignore' });
    case 'srp-nbd':
      return spawn(
        process.execPath,
        [
          bin,
          'serve',
          '--memory',
          SIZE,
          '--log-level',
          'warn',
          ...(transport === 'unix' ? ['--unix', sock] : ['--tcp', `127.0.0.1:${port}`]),
        ],
        { stdio: 'ignore' },
      );
  }
}

async function startServer(kind: Kind, transport: Transport, port: number): Promise<Server> {
  const sock = path.join(dir, `${kind}.sock`);
  const proc = spawnServer(kind, transport, sock, port);
  const uri = transport === 'unix' ? `nbd+unix:///?socket=${sock}` : `nbd://127.0.0.1:${port}/`;
  // Wait until the server answers.
  for (let i = 0; i < 100; i++) {
    if (await ok('nbdinfo', ['--size', uri])) return { proc, uri };
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill();
  throw new Error(`${kind} did not start on ${transport}`);
}

function ok(cmd: string, args: string[]): Promise<boolean> {
  return new Promise((resolve) => execFile(cmd, args, (err) => resolve(!err)));
}

function fio(server: Server, w: Workload, runtime: number): Promise<Run> {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${server.uri}`,
    `--rw=${w.rw}`,
    `--bs=${w.bs}`,
    `--iodepth=${w.qd}`,
    `--size=${SIZE}`,
    `--runtime=${runtime}`,
    '--time_based',
    '--output-format=json',
  ];
  const before = cpuSeconds(server.proc.pid!);
  return new Promise((resolve, reject) => {
    execFile('fio', args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`fio failed: ${stderr}`));
      const used = cpuSeconds(server.proc.pid!) - before;
      const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
      const side = w.rw.includes('write') ? job.write : job.read;
      resolve({
        iops: side.iops,
        fioCpu: job.usr_cpu + job.sys_cpu,
        serverUs: (used * 1e6) / Math.max(1, side.total_ios),
      });
    });
  });
}

/** The run whose rate is the median of the row's runs (its CPU figures go with it). */
const medianRun = (runs: Run[]): Run => {
  const m = median(runs.map((r) => r.iops));
  return runs.find((r) => r.iops === m)!;
};

function buildMinimal(): boolean {
  try {
    execFileSync('cc', ['-O2', '-o', minimalBin, minimalSource], { stdio: 'pipe' });
    return true;
  } catch (err) {
    console.log(`(no yardstick: cc could not build bench/minimal-server.c: ${(err as Error).message.split('\n')[0]})`);
    return false;
  }
}

async function main(): Promise<void> {
  const load = (): string =>
    os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ');
  const kinds: Kind[] = buildMinimal() ? ['srp-nbd', 'nbdkit', 'minimal'] : ['srp-nbd', 'nbdkit'];
  console.log(
    `fio nbd engine, ${RUNTIME} s per run, median of ${REPEAT}, ${os.cpus().length} CPUs, ${SIZE} RAM export, load average ${load()}`,
  );
  const fmt = (w: Workload, iops: number): string =>
    w.bs === '1M' ? `${iops.toFixed(0).padStart(7)} MiB/s` : `${(iops / 1000).toFixed(1).padStart(7)}k IOPS`;
  const header =
    'transport  workload              srp-nbd         nbdkit          ratio  target  paired runs' +
    (kinds.includes('minimal') ? '  minimal C     srp-nbd/minimal' : '');
  const cpuLines: string[] = [];
  console.log(header);
  let below = 0;
  let port = 20000 + (process.pid % 20000);
  for (const transport of ['unix', 'tcp'] as Transport[]) {
    const servers = new Map<Kind, Server>();
    for (const kind of kinds) servers.set(kind, await startServer(kind, transport, port++));
    try {
      // Fill every export so reads touch real pages, not holes.
      for (const s of servers.values())
        await fio(s, { name: 'fill', rw: 'write', bs: '1M', qd: 8, target: 0 }, 0).catch(() => undefined);
      for (const w of WORKLOADS) {
        const runs = new Map<Kind, Run[]>(kinds.map((k) => [k, []]));
        for (let i = 0; i < REPEAT; i++) {
          // Who goes first rotates, so a drift in the machine's load favours no side.
          for (let j = 0; j < kinds.length; j++) {
            const kind = kinds[(i + j) % kinds.length]!;
            runs.get(kind)!.push(await fio(servers.get(kind)!, w, RUNTIME));
          }
        }
        const ours = runs.get('srp-nbd')!;
        const peer = runs.get('nbdkit')!;
        const [x, y] = [median(ours.map((r) => r.iops)), median(peer.map((r) => r.iops))];
        const ratio = x / y;
        const paired = ours.map((r, i) => r.iops / peer[i]!.iops);
        if (ratio < w.target) below++;
        let line =
          `${transport.padEnd(10)} ${w.name.padEnd(21)} ${fmt(w, x)}  ${fmt(w, y)}  ${ratio.toFixed(2).padStart(5)}  ${ratio >= w.target ? '>=' : '< '}${w.target.toFixed(1)}   ` +
          `${Math.min(...paired).toFixed(2)}–${Math.max(...paired).toFixed(2)}`;
        const minimal = runs.get('minimal');
        if (minimal) {
          const z = median(minimal.map((r) => r.iops));
          line += `    ${fmt(w, z)}  ${(x / z).toFixed(2).padStart(5)}`;
        }
        console.log(line);
        const m = kinds.map((k) => medianRun(runs.get(k)!));
        cpuLines.push(
          `${transport.padEnd(10)} ${w.name.padEnd(21)} ${m.map((r) => `${r.fioCpu.toFixed(0).padStart(3)} %`).join('  ')}     ` +
            m.map((r) => r.serverUs.toFixed(1).padStart(6)).join('  '),
        );
      }
    } finally {
      for (const s of servers.values()) s.proc.kill('SIGTERM');
    }
  }
  console.log(below === 0 ? 'all rows meet their target' : `${below} row(s) below target`);
  console.log('');
  console.log(
    `CPU of the median run: fio's job (% of one CPU) and the server (µs of CPU per request), for ${kinds.join(' / ')}`,
  );
  console.log(`transport  workload              ${'fio CPU'.padEnd(kinds.length * 7 + 1)}    server µs/request`);
  for (const l of cpuLines) console.log(l);
  console.log(`load average at the end: ${load()}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

await main();
