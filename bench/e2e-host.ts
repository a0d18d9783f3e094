/**
 * The host-native row of `npm run bench:e2e`: fio's nbd engine against `srp-nbd serve --memory`
 * (the NBD server alone) and `srp-nbd serve --test-target` (NBD + SRP initiator + SCSI + the
 * transport state machine + the in-process SRP test target, no RDMA), 4K random I/O at QD32.
 * Runs alternate between the two servers; the median of REPEAT runs is kept. The figure is each
 * server's CPU time per request (all its threads), the target being test-target <= 2x memory.
 *
 *   node dist/bench/e2e-host.js OUT.json       (BENCH_RUNTIME=5 s per run, BENCH_REPEAT=3)
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cpuSeconds, median } from './proc-stats.js';

const RUNTIME = Number(process.env.BENCH_RUNTIME ?? 5);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;

export interface HostRow {
  workload: string;
  server: 'memory' | 'test-target';
  iops: number;
  cpuUsPerIo: number;
}

const SERVERS = {
  memory: { args: ['--memory', '256M'], exportName: '' },
  'test-target': { args: ['--test-target', '--lun-size', '256M'], exportName: 'lun0' },
} as const;
type ServerKind = keyof typeof SERVERS;

const WORKLOADS = [
  { name: 'randread-4k-qd32', rw: 'randread' },
  { name: 'randwrite-4k-qd32', rw: 'randwrite' },
];

function fio(uri: string, rw: string, runtime: number): Promise<{ iops: number; ios: number }> {
  const args = ['--name=e2e', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', '--iodepth=32'];
  args.push('--size=256M', `--runtime=${runtime}`, '--time_based', '--output-format=json');
  return new Promise((resolve, reject) => {
    execFile('fio', args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`fio failed: ${stderr}`));
      const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
      const side = rw.includes('write') ? job.write : job.read;
      resolve({ iops: side.iops, ios: side.total_ios });
    });
  });
}

async function start(kind: ServerKind, dir: string): Promise<{ proc: ChildProcess; uri: string }> {
  const sock = path.join(dir, `${kind}.sock`);
  const proc = spawn(process.execPath, [bin, 'serve', ...SERVERS[kind].args, '--unix', sock, '--log-level', 'warn'], {
    stdio: 'ignore',
  });
  const uri = `nbd+unix:///${SERVERS[kind].exportName}?socket=${sock}`;
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((r) => execFile('nbdinfo', ['--size', uri], (e) => r(!e)));
    if (up) return { proc, uri };
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill();
  throw new Error(`serve ${kind} did not start`);
}

async function main(): Promise<void> {
  const out = process.argv[2];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-e2e-'));
  const kinds = Object.keys(SERVERS) as ServerKind[];
  const servers = new Map<ServerKind, { proc: ChildProcess; uri: string }>();
  const rows: HostRow[] = [];
  try {
    for (const k of kinds) servers.set(k, await start(k, dir));
    for (const s of servers.values()) await fio(s.uri, 'write', 2); // pages touched before reads
    for (const w of WORKLOADS) {
      const runs = new Map<ServerKind, { iops: number; us: number }[]>(kinds.map((k) => [k, []]));
      for (let i = 0; i < REPEAT; i++) {
        for (let j = 0; j < kinds.length; j++) {
          const k = kinds[(i + j) % kinds.length]!;
          const s = servers.get(k)!;
          const c0 = cpuSeconds(s.proc.pid!);
          const r = await fio(s.uri, w.rw, RUNTIME);
          runs.get(k)!.push({ iops: r.iops, us: ((cpuSeconds(s.proc.pid!) - c0) * 1e6) / Math.max(1, r.ios) });
        }
      }
      for (const k of kinds) {
        const rs = runs.get(k)!;
        rows.push({
          workload: w.name,
          server: k,
          iops: median(rs.map((r) => r.iops)),
          cpuUsPerIo: median(rs.map((r) => r.us)),
        });
      }
    }
  } finally {
    for (const s of servers.values()) s.proc.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
  for (const r of rows)
    console.log(
      `host ${r.workload.padEnd(18)} serve ${r.server.padEnd(12)} ${r.iops.toFixed(0).padStart(7)} IOPS  ${r.cpuUsPerIo.toFixed(1).padStart(6)} µs CPU/IO`,
    );
  if (out)
    fs.writeFileSync(
      out,
      JSON.stringify({ runtime: RUNTIME, repeat: REPEAT, cpus: os.cpus().length, rows }, null, 2) + '\n',
    );
}

await main();
