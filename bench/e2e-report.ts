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

/**
 * native-loop is bench/native-loop.c, a C prototype of the daemon's steady-state data loop (a
 * measuring instrument, not a product path); runs of older bench versions lack it.
 */
export const INITIATORS = ['srp-nbd', 'native-loop', 'ib_srp', 'nbdkit'] as const;
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
  /** Median CPU µs per I/O of the serving process (srp-nbd daemon, native loop, nbdkit); null for ib_srp. */
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
  /** The native loop's ratio to ib_srp the same way; null when the run had no native-loop column. */
  nativeRatio: number | null;
  nativePairedRange: [number, number] | null;
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

/** fio's I/O count in the strace pass; 0 when its JSON is missing or unreadable (fio failed). */
function straceIos(file: string, workload: string): number {
  try {
    return fioResult(file, workload).ios;
  } catch {
    return 0;
  }
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
      const stIos = fs.existsSync(st) ? straceIos(path.join(dir, `${w}-${i}-strace.json`), w) : 0;
      // a strace pass whose fio did no I/O (it failed) counts nothing
      if (stIos > 0) {
        const s = parseStraceSummary(fs.readFileSync(st, 'utf8'));
        syscallsPerIo = s.total / stIos;
        topSyscalls = s.top.slice(0, 5).map(([n, c]) => `${n} ${(c / stIos).toFixed(2)}`);
      }
      cells[i] = {
        rates,
        median: rates.length ? median(rates) : NaN,
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
    const kernel = cells.ib_srp;
    const vsKernel = (c: Cell): { ratio: number; range: [number, number] } => {
      const paired = c.rates.map((r, k) => r / kernel.rates[k]!);
      return { ratio: c.median / kernel.median, range: [Math.min(...paired), Math.max(...paired)] };
    };
    const ours = vsKernel(cells['srp-nbd']);
    const native = cells['native-loop'].rates.length ? vsKernel(cells['native-loop']) : null;
    rows.push({
      workload: w,
      unit: w.includes('-1m-') ? 'MiB/s' : 'IOPS',
      cells,
      ratio: ours.ratio,
      pairedRange: ours.range,
      nativeRatio: native?.ratio ?? null,
      nativePairedRange: native?.range ?? null,
      target: TARGETS[w] ?? 1,
    });
  }
  return rows;
}

const n0 = (x: number | null): string => (x === null || !Number.isFinite(x) ? '–' : x.toFixed(0));
const n1 = (x: number | null): string => (x === null ? '–' : x.toFixed(1));

/** A table column: its header and the cell of a row; columns of the native loop only when it ran. */
type Column<T> = [header: string, cell: (r: T) => string];
function table<T>(columns: Column<T>[], items: T[]): string[] {
  return [
    `| ${columns.map((c) => c[0]).join(' | ')} |`,
    `|${columns.map(() => '---').join('|')}|`,
    ...items.map((r) => `| ${columns.map((c) => c[1](r)).join(' | ')} |`),
  ];
}
const times = (a: number | null, b: number | null): string => (a !== null && b ? (a / b).toFixed(1) + 'x' : '–');
const ratioCell = (ratio: number, range: [number, number]): string =>
  `**${ratio.toFixed(2)}** (${range[0].toFixed(2)}–${range[1].toFixed(2)})`;
const meets = (ratio: number | null, target: number): string => (ratio !== null && ratio >= target ? '≥' : '<');

export function markdownTable(
  rows: Row[],
  host: HostRow[],
  verbs: Partial<Record<'events' | 'polling', VerbsLatency>> = {},
  session: SessionCounters | null = null,
): string {
  const out: string[] = [];
  const native = rows.some((r) => r.nativeRatio !== null);
  const nat = <T>(cols: Column<T>[]): Column<T>[] => (native ? cols : []);
  const S = (r: Row) => r.cells['srp-nbd'];
  const N = (r: Row) => r.cells['native-loop'];
  const K = (r: Row) => r.cells.nbdkit;
  out.push(
    ...table<Row>(
      [
        ['workload', (r) => r.workload],
        ['srp-nbd', (r) => `${n0(S(r).median)} ${r.unit}`],
        ...nat<Row>([['native loop (C prototype)', (r) => n0(N(r).median)]]),
        ['ib_srp', (r) => n0(r.cells.ib_srp.median)],
        ['nbdkit + nbd-client', (r) => n0(K(r).median)],
        ['srp-nbd / ib_srp (paired runs)', (r) => ratioCell(r.ratio, r.pairedRange)],
        ...nat<Row>([
          [
            'native / ib_srp (paired runs)',
            (r) => (r.nativeRatio === null ? '–' : ratioCell(r.nativeRatio, r.nativePairedRange!)),
          ],
        ]),
        native
          ? [
              'target (srp-nbd; native)',
              (r) =>
                `${meets(r.ratio, r.target)} ${r.target.toFixed(1)}; ${meets(r.nativeRatio, r.target)} ${r.target.toFixed(1)}`,
            ]
          : ['target', (r) => `${meets(r.ratio, r.target)} ${r.target.toFixed(1)}`],
        ['daemon µs CPU/IO', (r) => n0(S(r).cpuUsPerIo)],
        ...nat<Row>([['native µs CPU/IO', (r) => n0(N(r).cpuUsPerIo)]]),
        ['nbdkit µs CPU/IO', (r) => n0(K(r).cpuUsPerIo)],
        ['daemon / nbdkit CPU', (r) => times(S(r).cpuUsPerIo, K(r).cpuUsPerIo)],
        ...nat<Row>([['native / nbdkit CPU', (r) => times(N(r).cpuUsPerIo, K(r).cpuUsPerIo)]]),
        ['daemon syscalls/IO', (r) => n1(S(r).syscallsPerIo)],
        ...nat<Row>([['native syscalls/IO', (r) => n1(N(r).syscallsPerIo)]]),
        ['nbdkit syscalls/IO', (r) => n1(K(r).syscallsPerIo)],
      ],
      rows,
    ),
  );
  if (rows.some((r) => r.cells.ib_srp.guestUsPerIo !== null)) {
    const busy = (x: number | null) => (x === null ? '–' : x.toFixed(2));
    out.push('');
    out.push(
      ...table<Row>(
        [
          ['where the CPU goes', (r) => r.workload],
          ['daemon user µs/IO', (r) => n0(S(r).userUsPerIo)],
          ['daemon system µs/IO', (r) => n0(S(r).sysUsPerIo)],
          ['daemon busy (vCPUs)', (r) => busy(S(r).busy)],
          ...nat<Row>([
            ['native user µs/IO', (r) => n0(N(r).userUsPerIo)],
            ['native system µs/IO', (r) => n0(N(r).sysUsPerIo)],
            ['native busy (vCPUs)', (r) => busy(N(r).busy)],
          ]),
          ['guest µs/IO srp-nbd', (r) => n0(S(r).guestUsPerIo)],
          ...nat<Row>([['guest µs/IO native', (r) => n0(N(r).guestUsPerIo)]]),
          ['guest µs/IO ib_srp', (r) => n0(r.cells.ib_srp.guestUsPerIo)],
          ['guest µs/IO nbdkit', (r) => n0(K(r).guestUsPerIo)],
          ['srp-nbd / ib_srp guest CPU', (r) => times(S(r).guestUsPerIo, r.cells.ib_srp.guestUsPerIo)],
          ...nat<Row>([['native / ib_srp guest CPU', (r) => times(N(r).guestUsPerIo, r.cells.ib_srp.guestUsPerIo)]]),
        ],
        rows,
      ),
    );
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
    const v = (x: VerbsLatency | undefined) => (x ? `${n0(x.typicalUs)} (avg ${n0(x.avgUs)})` : '–');
    out.push('');
    out.push(
      ...table<Row>(
        [
          ['latency at QD1, µs', (r) => r.workload],
          ['srp-nbd 4K read', (r) => n0(S(r).latUs)],
          ...nat<Row>([['native loop 4K read', (r) => n0(N(r).latUs)]]),
          ['ib_srp 4K read', (r) => n0(r.cells.ib_srp.latUs)],
          ['nbdkit 4K read', (r) => n0(K(r).latUs)],
          ['verbs floor, one way, events', () => v(verbs.events)],
          ['verbs floor, one way, polling', () => v(verbs.polling)],
        ],
        [qd1],
      ),
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
    for (const [who, i] of [
      ['daemon', 'srp-nbd'],
      ['native loop', 'native-loop'],
    ] as const) {
      const top = r.cells[i].topSyscalls.join(', ');
      if (top) console.log(`${r.workload}: ${who} syscalls per I/O: ${top}`);
    }
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
