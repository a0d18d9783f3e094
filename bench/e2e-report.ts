/**
 * The report of `npm run bench:e2e`: reads what the guest scenario bench-e2e left (fio JSON per
 * run, runs.tsv with the daemon's and nbdkit's CPU seconds per run, strace -c summaries) and the
 * host-native row (bench/e2e-host.ts), prints the table, writes the JSON file and replaces the
 * measured table in docs/performance.md (between its bench:e2e markers).
 *
 *   node dist/bench/e2e-report.js GUEST_E2E_DIR HOST.json OUT.json [docs/performance.md]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { HostRow } from './e2e-host.js';
import { median } from './proc-stats.js';

export const INITIATORS = ['srp-nbd', 'ib_srp', 'nbdkit'] as const;
type Initiator = (typeof INITIATORS)[number];

/** Targets of the data-path work: srp-nbd / ib_srp on the same LUN, same boot. */
export const TARGETS: Record<string, number> = {
  'randread-4k-qd32': 0.8,
  'randwrite-4k-qd32': 0.8,
  'randread-4k-qd1': 0.7,
  'read-1m-qd8': 1.0,
  'write-1m-qd8': 1.0,
};
/** Daemon CPU per 4K I/O over rxe at most this times nbdkit's; natively test-target / memory. */
export const CPU_TARGET_VS_NBDKIT = 3;
export const CPU_TARGET_NATIVE = 2;

export interface Cell {
  /** IOPS (4K) or MiB/s (1M) of each run, in run order. */
  rates: number[];
  median: number;
  /** Median of the runs' mean I/O latency (fio lat_ns: submission to completion), µs. */
  latUs: number;
  /** Median CPU µs per I/O of the serving process (srp-nbd daemon, nbdkit); null for ib_srp. */
  cpuUsPerIo: number | null;
  /** The same split into user and system (kernel) time; null without a process or in older runs. */
  userUsPerIo: number | null;
  sysUsPerIo: number | null;
  /**
   * Median CPU µs per I/O of the whole guest (every vCPU, user + system + interrupts, /proc/stat):
   * what the I/O costs wherever it runs, so also for ib_srp, whose work is in kernel context.
   */
  guestUsPerIo: number | null;
  /** Median share of one vCPU the serving process used during the runs (1 = one vCPU saturated). */
  busy: number | null;
  /** System calls per I/O of the serving process, from the strace pass; null without one. */
  syscallsPerIo: number | null;
  topSyscalls: string[];
}

export interface Row {
  workload: string;
  unit: 'IOPS' | 'MiB/s';
  cells: Record<Initiator, Cell>;
  ratio: number;
  pairedRange: [number, number];
  target: number;
}

/** Rate and I/O count of one fio JSON result. */
export function fioResult(file: string, workload: string): { rate: number; ios: number; latUs: number } {
  const text = fs.readFileSync(file, 'utf8');
  const job = JSON.parse(text.slice(text.indexOf('{'))).jobs[0];
  const side = workload.includes('write') ? job.write : job.read;
  const big = workload.includes('-1m-');
  const latNs = side.lat_ns?.mean ?? side.clat_ns?.mean ?? NaN;
  return { rate: big ? side.bw_bytes / (1 << 20) : side.iops, ios: side.total_ios, latUs: latNs / 1000 };
}

/** One result line of perftest's latency tests (ib_send_lat): half the round trip, µs. */
export interface VerbsLatency {
  bytes: number;
  iterations: number;
  minUs: number;
  typicalUs: number;
  avgUs: number;
}

/** The result of an ib_send_lat run (its table: #bytes #iterations t_min t_max t_typical t_avg ...). */
export function parsePerftestLatency(text: string): VerbsLatency | null {
  const lines = text.split('\n');
  const head = lines.findIndex((l) => /#bytes\s+#iterations\s+t_min/.test(l));
  if (head < 0) return null;
  const f = (lines[head + 1] ?? '').trim().split(/\s+/).map(Number);
  if (f.length < 6 || f.slice(0, 6).some((x) => !Number.isFinite(x))) return null;
  return { bytes: f[0]!, iterations: f[1]!, minUs: f[2]!, typicalUs: f[4]!, avgUs: f[5]! };
}

/** The daemon's session counters after the runs (srp-nbd status --json), if the bench saved them. */
export interface SessionCounters {
  commands: number;
  registrations: number;
  perCommand: number;
  slotRegions: number;
}

export function readSessionCounters(dir: string): SessionCounters | null {
  const f = path.join(dir, 'srp-nbd-status.json');
  if (!fs.existsSync(f)) return null;
  let found: Record<string, unknown> | null = null;
  const walk = (v: unknown): void => {
    if (found || v === null || typeof v !== 'object') return;
    const o = v as Record<string, unknown>;
    const sess = o.session as Record<string, unknown> | undefined;
    if (sess && typeof sess === 'object' && typeof sess.memory_registrations === 'number') found = sess;
    else Object.values(o).forEach(walk);
  };
  try {
    walk(JSON.parse(fs.readFileSync(f, 'utf8')));
  } catch {
    return null;
  }
  const s = found as Record<string, number> | null;
  if (!s) return null;
  return {
    commands: s.commands_completed ?? 0,
    registrations: s.memory_registrations ?? 0,
    perCommand: s.per_command_registrations ?? 0,
    slotRegions: s.slot_regions ?? 0,
  };
}

/** The user-space verbs floor the bench measured (verbs-events.txt, verbs-polling.txt), if any. */
export function readVerbsFloor(dir: string): Partial<Record<'events' | 'polling', VerbsLatency>> {
  const floor: Partial<Record<'events' | 'polling', VerbsLatency>> = {};
  for (const mode of ['events', 'polling'] as const) {
    const f = path.join(dir, `verbs-${mode}.txt`);
    const r = fs.existsSync(f) ? parsePerftestLatency(fs.readFileSync(f, 'utf8')) : null;
    if (r) floor[mode] = r;
  }
  return floor;
}

/** Calls per syscall from `strace -c` output, most frequent first. */
export function parseStraceSummary(text: string): { total: number; top: [string, number][] } {
  const rows: [string, number][] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors], syscall
    if (f.length < 5 || !/^\d+\.\d+$/.test(f[0]!) || f[f.length - 1] === 'total') continue;
    const calls = Number(f[3]);
    if (Number.isFinite(calls)) rows.push([f[f.length - 1]!, calls]);
  }
  rows.sort((a, b) => b[1] - a[1]);
  return { total: rows.reduce((s, r) => s + r[1], 0), top: rows };
}

export function buildRows(dir: string): Row[] {
  const tsv = fs.readFileSync(path.join(dir, 'runs.tsv'), 'utf8').trim().split('\n').filter(Boolean);
  const workloads = [...new Set(tsv.map((l) => l.split('\t')[0]!))];
  const rows: Row[] = [];
  for (const w of workloads) {
    const cells = {} as Record<Initiator, Cell>;
    for (const i of INITIATORS) {
      const runs = tsv.map((l) => l.split('\t')).filter((f) => f[0] === w && f[1] === i && f[3] === 'run');
      const rates: number[] = [];
      const lat: number[] = [];
      const cpu: number[] = [];
      const user: number[] = [];
      const sys: number[] = [];
      const guest: number[] = [];
      const busy: number[] = [];
      // runs.tsv: workload, initiator, rep, "run", process CPU s, seconds, [process user s, system s, guest CPU s]
      const perIo = (v: string | undefined, ios: number) =>
        v === undefined || v === '-' ? null : (Number(v) * 1e6) / ios;
      for (const f of runs) {
        const r = fioResult(path.join(dir, `${w}-${i}-${f[2]}.json`), w);
        const ios = Math.max(1, r.ios);
        rates.push(r.rate);
        if (Number.isFinite(r.latUs)) lat.push(r.latUs);
        if (f[4] !== '-') cpu.push((Number(f[4]) * 1e6) / ios);
        if (f[4] !== '-' && Number(f[5]) > 0) busy.push(Number(f[4]) / Number(f[5]));
        const u = perIo(f[6], ios);
        const k = perIo(f[7], ios);
        const g = perIo(f[8], ios);
        if (u !== null) user.push(u);
        if (k !== null) sys.push(k);
        if (g !== null) guest.push(g);
      }
      const med = (xs: number[]) => (xs.length ? median(xs) : null);
      let syscallsPerIo: number | null = null;
      let topSyscalls: string[] = [];
      const st = path.join(dir, `${w}-${i}.strace`);
      if (fs.existsSync(st)) {
        const s = parseStraceSummary(fs.readFileSync(st, 'utf8'));
        const ios = fioResult(path.join(dir, `${w}-${i}-strace.json`), w).ios;
        syscallsPerIo = s.total / Math.max(1, ios);
        topSyscalls = s.top.slice(0, 5).map(([n, c]) => `${n} ${(c / Math.max(1, ios)).toFixed(2)}`);
      }
      cells[i] = {
        rates,
        median: median(rates),
        latUs: lat.length ? median(lat) : NaN,
        cpuUsPerIo: med(cpu),
        userUsPerIo: med(user),
        sysUsPerIo: med(sys),
        guestUsPerIo: med(guest),
        busy: med(busy),
        syscallsPerIo,
        topSyscalls,
      };
    }
    const ours = cells['srp-nbd'];
    const kernel = cells.ib_srp;
    const paired = ours.rates.map((r, k) => r / kernel.rates[k]!);
    rows.push({
      workload: w,
      unit: w.includes('-1m-') ? 'MiB/s' : 'IOPS',
      cells,
      ratio: ours.median / kernel.median,
      pairedRange: [Math.min(...paired), Math.max(...paired)],
      target: TARGETS[w] ?? 1,
    });
  }
  return rows;
}

const n0 = (x: number | null): string => (x === null || !Number.isFinite(x) ? '–' : x.toFixed(0));
const n1 = (x: number | null): string => (x === null ? '–' : x.toFixed(1));

export function markdownTable(
  rows: Row[],
  host: HostRow[],
  verbs: Partial<Record<'events' | 'polling', VerbsLatency>> = {},
  session: SessionCounters | null = null,
): string {
  const out: string[] = [];
  out.push(
    '| workload | srp-nbd | ib_srp | nbdkit + nbd-client | srp-nbd / ib_srp (paired runs) | target | daemon µs CPU/IO | nbdkit µs CPU/IO | daemon / nbdkit CPU | daemon syscalls/IO | nbdkit syscalls/IO |',
  );
  out.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const c = r.cells;
    const cpuRatio =
      c['srp-nbd'].cpuUsPerIo !== null && c.nbdkit.cpuUsPerIo ? c['srp-nbd'].cpuUsPerIo / c.nbdkit.cpuUsPerIo : null;
    out.push(
      `| ${r.workload} | ${n0(c['srp-nbd'].median)} ${r.unit} | ${n0(c.ib_srp.median)} | ${n0(c.nbdkit.median)} | ` +
        `**${r.ratio.toFixed(2)}** (${r.pairedRange[0].toFixed(2)}–${r.pairedRange[1].toFixed(2)}) | ${r.ratio >= r.target ? '≥' : '<'} ${r.target.toFixed(1)} | ` +
        `${n0(c['srp-nbd'].cpuUsPerIo)} | ${n0(c.nbdkit.cpuUsPerIo)} | ${cpuRatio === null ? '–' : cpuRatio.toFixed(1) + 'x'} | ` +
        `${n1(c['srp-nbd'].syscallsPerIo)} | ${n1(c.nbdkit.syscallsPerIo)} |`,
    );
  }
  if (rows.some((r) => r.cells.ib_srp.guestUsPerIo !== null)) {
    out.push('');
    out.push(
      '| where the CPU goes | daemon user µs/IO | daemon system µs/IO | daemon busy (vCPUs) | guest µs/IO srp-nbd | guest µs/IO ib_srp | guest µs/IO nbdkit | srp-nbd / ib_srp guest CPU |',
    );
    out.push('|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      const c = r.cells;
      const g = c['srp-nbd'].guestUsPerIo;
      const k = c.ib_srp.guestUsPerIo;
      out.push(
        `| ${r.workload} | ${n0(c['srp-nbd'].userUsPerIo)} | ${n0(c['srp-nbd'].sysUsPerIo)} | ` +
          `${c['srp-nbd'].busy === null ? '–' : c['srp-nbd'].busy.toFixed(2)} | ${n0(g)} | ${n0(k)} | ` +
          `${n0(c.nbdkit.guestUsPerIo)} | ${g !== null && k ? (g / k).toFixed(1) + 'x' : '–'} |`,
      );
    }
  }
  if (session) {
    out.push('');
    out.push(
      `srp-nbd's session over the whole run: ${session.commands} commands, ${session.registrations} memory ` +
        `registrations (${session.slotRegions} command slots registered once, ${session.perCommand} commands that ` +
        `registered their own memory).`,
    );
  }
  const qd1 = rows.find((r) => r.workload === 'randread-4k-qd1');
  if (qd1 && (verbs.events || verbs.polling)) {
    const c = qd1.cells;
    const v = (x: VerbsLatency | undefined) => (x ? `${n0(x.typicalUs)} (avg ${n0(x.avgUs)})` : '–');
    out.push('');
    out.push(
      '| latency at QD1, µs | srp-nbd 4K read | ib_srp 4K read | nbdkit 4K read | verbs floor, one way, events | verbs floor, one way, polling |',
    );
    out.push('|---|---|---|---|---|---|');
    out.push(
      `| randread-4k-qd1 | ${n0(c['srp-nbd'].latUs)} | ${n0(c.ib_srp.latUs)} | ${n0(c.nbdkit.latUs)} | ` +
        `${v(verbs.events)} | ${v(verbs.polling)} |`,
    );
  }
  if (host.length) {
    out.push('');
    out.push(
      '| host-native (fio nbd engine) | serve --memory | serve --test-target | test-target / memory CPU (target ≤ 2x) |',
    );
    out.push('|---|---|---|---|');
    for (const w of [...new Set(host.map((h) => h.workload))]) {
      const m = host.find((h) => h.workload === w && h.server === 'memory')!;
      const t = host.find((h) => h.workload === w && h.server === 'test-target')!;
      out.push(
        `| ${w} | ${m.iops.toFixed(0)} IOPS, ${m.cpuUsPerIo.toFixed(1)} µs/IO | ${t.iops.toFixed(0)} IOPS, ${t.cpuUsPerIo.toFixed(1)} µs/IO | ` +
          `**${(t.cpuUsPerIo / m.cpuUsPerIo).toFixed(1)}x** |`,
      );
    }
  }
  return out.join('\n');
}

function main(): void {
  const [dir, hostFile, outFile, doc] = process.argv.slice(2);
  if (!dir || !outFile) {
    process.stderr.write('usage: e2e-report GUEST_E2E_DIR HOST.json|- OUT.json [docs/performance.md]\n');
    process.exit(2);
  }
  const rows = buildRows(dir);
  const host: HostRow[] =
    hostFile && hostFile !== '-' && fs.existsSync(hostFile) ? JSON.parse(fs.readFileSync(hostFile, 'utf8')).rows : [];
  const verbs = readVerbsFloor(dir);
  const session = readSessionCounters(dir);
  const table = markdownTable(rows, host, verbs, session);
  console.log(table);
  for (const r of rows) {
    const top = r.cells['srp-nbd'].topSyscalls.join(', ');
    if (top) console.log(`${r.workload}: daemon syscalls per I/O: ${top}`);
  }
  const when = new Date().toISOString();
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, JSON.stringify({ when, rows, host, verbs, session }, null, 2) + '\n');
  if (doc && fs.existsSync(doc)) {
    const text = fs.readFileSync(doc, 'utf8');
    const begin = '<!-- bench:e2e begin -->';
    const end = '<!-- bench:e2e end -->';
    const a = text.indexOf(begin);
    const b = text.indexOf(end);
    if (a >= 0 && b > a) {
      const pf = path.join(dir, 'params');
      const params = fs.existsSync(pf) ? ` (${fs.readFileSync(pf, 'utf8').trim()})` : '';
      const body = `\n_Measured ${when.slice(0, 16).replace('T', ' ')} UTC by \`npm run bench:e2e\`${params}._\n\n${table}\n`;
      fs.writeFileSync(doc, text.slice(0, a + begin.length) + body + text.slice(b));
      console.log(`table written to ${doc}`);
    }
  }
}

if (process.argv[1] && import.meta.url === new URL(`file://${path.resolve(process.argv[1])}`).href) main();
