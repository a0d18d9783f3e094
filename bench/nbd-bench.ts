/**
 * NBD server benchmark: fio's nbd engine (the same client, in the same run)
 * against `srp-nbd serve --memory` and nbdkit's memory plugin, over a unix
 * socket and TCP. Runs alternate between the two servers, each row is
 * measured BENCH_REPEAT times and the median is kept, so a noisy shared
 * machine affects both sides alike. Prints each figure, the ratio
 * srp-nbd / nbdkit of the medians and the range of the ratios of the
 * paired runs (run i of srp-nbd against run i of nbdkit), so the noise of a
 * shared machine is visible next to the figure.
 *
 *   npm run bench:nbd                 (BENCH_RUNTIME=5 seconds per run, BENCH_REPEAT=3)
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

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

interface Server {
  proc: ChildProcess;
  uri: string;
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-bench-'));
const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;

async function startServer(kind: 'srp-nbd' | 'nbdkit', transport: Transport, port: number): Promise<Server> {
  const sock = path.join(dir, `${kind}.sock`);
  const listen = transport === 'unix' ? ['-U', sock] : ['-p', String(port), '-i', '127.0.0.1'];
  const proc =
    kind === 'nbdkit'
      ? spawn('nbdkit', ['-f', ...listen, 'memory', SIZE], { stdio: 'ignore' })
      : spawn(process.execPath, [bin, 'serve', '--memory', SIZE, '--log-level', 'warn', ...(transport === 'unix' ? ['--unix', sock] : ['--tcp', `127.0.0.1:${port}`])], { stdio: 'ignore' });
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

function fio(uri: string, w: Workload, runtime: number): Promise<{ iops: number; mibs: number }> {
  const args = [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.qd}`,
    `--size=${SIZE}`, `--runtime=${runtime}`, '--time_based', '--output-format=json',
  ];
  return new Promise((resolve, reject) => {
    execFile('fio', args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`fio failed: ${stderr}`));
      const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
      const side = w.rw.includes('write') ? job.write : job.read;
      resolve({ iops: side.iops, mibs: side.bw_bytes / 2 ** 20 });
    });
  });
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const load = (): string => os.loadavg().map((l) => l.toFixed(2)).join(' ');
  console.log(`fio nbd engine, ${RUNTIME} s per run, median of ${REPEAT}, ${os.cpus().length} CPUs, ${SIZE} RAM export, load average ${load()}`);
  console.log('transport  workload              srp-nbd            nbdkit             ratio  target  paired runs');
  let below = 0;
  let port = 20000 + (process.pid % 20000);
  for (const transport of ['unix', 'tcp'] as Transport[]) {
    const ours = await startServer('srp-nbd', transport, port++);
    const peer = await startServer('nbdkit', transport, port++);
    try {
      // Fill both exports so reads touch real pages, not holes.
      await fio(ours.uri, { name: 'fill', rw: 'write', bs: '1M', qd: 8, target: 0 }, 0).catch(() => undefined);
      await fio(peer.uri, { name: 'fill', rw: 'write', bs: '1M', qd: 8, target: 0 }, 0).catch(() => undefined);
      for (const w of WORKLOADS) {
        const a: number[] = [];
        const b: number[] = [];
        for (let i = 0; i < REPEAT; i++) {
          // Who goes first alternates, so a drift in the machine's load favours neither side.
          if (i % 2 === 0) {
            a.push((await fio(ours.uri, w, RUNTIME)).iops);
            b.push((await fio(peer.uri, w, RUNTIME)).iops);
          } else {
            b.push((await fio(peer.uri, w, RUNTIME)).iops);
            a.push((await fio(ours.uri, w, RUNTIME)).iops);
          }
        }
        const [x, y] = [median(a), median(b)];
        const ratio = x / y;
        const paired = a.map((v, i) => v / b[i]!);
        if (ratio < w.target) below++;
        const fmt = (iops: number): string =>
          w.bs === '1M' ? `${(iops).toFixed(0).padStart(7)} MiB/s   ` : `${(iops / 1000).toFixed(1).padStart(7)}k IOPS   `;
        console.log(
          `${transport.padEnd(10)} ${w.name.padEnd(21)} ${fmt(x)}  ${fmt(y)}  ${ratio.toFixed(2).padStart(5)}  ${ratio >= w.target ? '>=' : '< '}${w.target.toFixed(1)}   ` +
            `${Math.min(...paired).toFixed(2)}–${Math.max(...paired).toFixed(2)}`,
        );
      }
    } finally {
      ours.proc.kill('SIGTERM');
      peer.proc.kill('SIGTERM');
    }
  }
  console.log(below === 0 ? 'all rows meet their target' : `${below} row(s) below target`);
  console.log(`load average at the end: ${load()}`);
  fs.rmSync(dir, { recursive: true, force: true });
}

await main();
