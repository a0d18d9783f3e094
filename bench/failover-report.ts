/**
 * The report of `npm run bench:failover`: reads what the guest scenario bench-failover left in each
 * boot (event marks, the probe writer's and the rport watcher's logs, values read in the guest, the
 * daemon's log), computes every row for srp-nbd and for kernel ib_srp, prints the table, writes the
 * JSON file and replaces the table in docs/failover.md (between its bench:failover markers).
 *
 *   node dist/bench/failover-report.js OUT_DIR OUT.json [docs/failover.md]
 *
 * OUT_DIR holds boot1/, boot2/, ... (bench/failover.sh). Times are guest uptime seconds: the marks,
 * the probe's CLOCK_BOOTTIME, and the daemon's log (epoch ms) shifted by the clock mark.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const WHO = ['srp-nbd', 'ib_srp'] as const;
export type Who = (typeof WHO)[number];
export const EVENTS = ['linkdown', 'blackhole', 'restart', 'rebuild', 'mdreadd', 'kill'] as const;
export type EventName = (typeof EVENTS)[number];

/** One probe write: start, end (uptime s), errno (0: completed). */
export interface Write {
  start: number;
  end: number;
  errno: number;
}

/** What one boot left for one initiator and event. */
export interface EventData {
  marks: Record<string, number>;
  writes: Write[];
  /** uptime of each state change seen (daemon log for srp-nbd, sysfs rport state for ib_srp) */
  states: [number, string][];
  rows: Record<string, string>;
  /** other watchers of the event (watch-WHO-EVENT-NAME.log) by NAME, e.g. md's member state */
  watches: Record<string, [number, string][]>;
  boot: number;
}

export interface Outcome {
  /** measured, or why not ('not applicable': the initiator has no such behaviour, see NOT_APPLICABLE) */
  status: 'measured' | 'kernel crashed' | 'not measured' | 'not applicable';
  detail?: string;
  values: Record<string, number | string | null>;
}

export type Results = Record<Who, Partial<Record<EventName, Outcome>>>;

/** Events an initiator is not put through, and why. */
export const NOT_APPLICABLE: Partial<Record<Who, Partial<Record<EventName, string>>>> = {
  ib_srp: { mdreadd: 'ib_srp never re-adds a member md failed: it stays faulty until `mdadm --re-add`' },
};

export function parseTsv(text: string): string[][] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.split('\t'));
}

export function parseWrites(text: string): Write[] {
  const out: Write[] = [];
  for (const l of text.split('\n')) {
    const [a, b, c] = l.trim().split(/\s+/);
    if (c === undefined) continue;
    out.push({ start: Number(a), end: Number(b), errno: Number(c) });
  }
  return out;
}

/** `state A -> B` lines of the daemon's log as [uptime, B], with uptime = epoch ms / 1000 - offset. */
export function daemonStates(log: string, offsetS: number): [number, string][] {
  const out: [number, string][] = [];
  for (const l of log.split('\n')) {
    if (!l.startsWith('{')) continue;
    let o: { time?: number; msg?: string };
    try {
      o = JSON.parse(l) as { time?: number; msg?: string };
    } catch {
      continue;
    }
    const m = /^state (\S+) -> (\S+)$/.exec(o.msg ?? '');
    if (m && typeof o.time === 'number') out.push([o.time / 1000 - offsetS, m[2]!]);
  }
  return out;
}

/** The watcher's "uptime value" lines. */
export function watchStates(text: string): [number, string][] {
  const out: [number, string][] = [];
  for (const l of text.split('\n')) {
    const i = l.indexOf(' ');
    if (i > 0) out.push([Number(l.slice(0, i)), l.slice(i + 1).trim()]);
  }
  return out;
}

const round2 = (x: number) => Math.round(x * 100) / 100;

/** First state change at or after `from` that leaves running (blocked, fail-fast, lost, gone ...). */
export function firstFailure(states: [number, string][], from: number): number | undefined {
  return states.find(([t, s]) => t >= from && s !== 'running')?.[0];
}

/** End of the first write that failed / completed among those ending at or after `from`. */
export function firstWrite(writes: Write[], from: number, ok: boolean): number | undefined {
  return writes.find((w) => w.end >= from && (w.errno === 0) === ok)?.end;
}

export function failedWrites(writes: Write[], from: number, to = Infinity): number {
  return writes.filter((w) => w.end >= from && w.start <= to && w.errno !== 0).length;
}

/** The row values of one measured event. */
export function measure(ev: EventName, d: EventData): Record<string, number | string | null> {
  const v: Record<string, number | string | null> = {};
  const fault = d.marks.fault;
  const back = d.marks.back;
  const since = (t: number | undefined, from: number | undefined) =>
    t === undefined || from === undefined ? null : round2(t - from);
  if (ev === 'linkdown' || ev === 'blackhole') {
    // noticed while the fault lasted (a state change after the path returned is another event's)
    const failedAt = fault === undefined ? undefined : firstFailure(d.states, fault);
    v.path_failed_s =
      back !== undefined && (failedAt === undefined || failedAt > back)
        ? `not noticed in ${(back - fault!).toFixed(1)} s`
        : since(failedAt, fault);
    v.first_eio_s = since(fault === undefined ? undefined : firstWrite(d.writes, fault, false), fault);
    v.io_back_s = since(back === undefined ? undefined : firstWrite(d.writes, back, true), back);
    v.failed_writes = fault === undefined ? null : failedWrites(d.writes, fault);
  }
  if (ev === 'restart') {
    v.failed_writes = fault === undefined ? null : failedWrites(d.writes, fault);
    v.io_back_s = since(back === undefined ? undefined : firstWrite(d.writes, back, true), back);
    v.teardown_s = since(d.marks.removed, fault);
    v.outage_s = since(back, fault);
  }
  if (ev === 'rebuild') {
    v.writes_on_other = d.rows.writes_on_other !== undefined ? Number(d.rows.writes_on_other) : null;
    v.failed_writes = fault === undefined ? null : failedWrites(d.writes, fault, d.marks.restore);
  }
  if (ev === 'mdreadd') {
    v.md_failures = d.rows.md_failures !== undefined ? Number(d.rows.md_failures) : null;
    v.md_members = d.rows.md_members ?? null;
    v.failed_writes = fault === undefined ? null : failedWrites(d.writes, fault);
    // from the link set up ("up"; the daemon may re-add the member before link_up returns):
    // back in the array = md's first state of the member after it was faulty that is not faulty
    const up = d.marks.up ?? back;
    const member = d.watches.state ?? [];
    const failedAt = member.find(([t, s]) => fault !== undefined && t >= fault && /faulty/.test(s))?.[0];
    const readded =
      failedAt === undefined ? undefined : member.find(([t, s]) => t > failedAt && s !== 'gone' && !/faulty/.test(s));
    v.md_readded_s = since(readded?.[0], up);
    const degraded = d.watches.degraded ?? [];
    const degradedAt = degraded.find(([t, s]) => fault !== undefined && t >= fault && s !== '0')?.[0];
    const whole = degradedAt === undefined ? undefined : degraded.find(([t, s]) => t > degradedAt && s === '0');
    v.md_synced_s = since(whole?.[0], up);
  }
  if (ev === 'kill') {
    v.md_failures = d.rows.md_failures !== undefined ? Number(d.rows.md_failures) : null;
    v.md_members = d.rows.md_members ?? null;
    v.failed_writes = fault === undefined ? null : failedWrites(d.writes, fault);
    const stalls = d.writes.filter((w) => fault !== undefined && w.end >= fault).map((w) => w.end - w.start);
    v.longest_write_s = stalls.length ? round2(Math.max(...stalls)) : null;
  }
  v.device = d.rows.device ?? null;
  return v;
}

/** Everything one boot directory holds, by initiator and event. */
export function readBoot(dir: string, boot: number): Map<string, EventData> {
  const fo = path.join(dir, 'failover');
  const out = new Map<string, EventData>();
  const read = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '');
  const get = (who: string, ev: string) => {
    const k = `${who}/${ev}`;
    let d = out.get(k);
    if (!d) out.set(k, (d = { marks: {}, writes: [], states: [], rows: {}, watches: {}, boot }));
    return d;
  };
  let offset: number | undefined;
  for (const [who, ev, name, t, epochMs] of parseTsv(read(path.join(fo, 'events.tsv')))) {
    if (who === 'clock') offset = Number(epochMs) / 1000 - Number(t);
    else get(who!, ev!).marks[name!] = Number(t);
  }
  for (const [who, ev, field, value] of parseTsv(read(path.join(fo, 'rows.tsv'))))
    get(who!, ev!).rows[field!] = value ?? '';
  const srpStates = offset === undefined ? [] : daemonStates(read(path.join(dir, 'daemon.log')), offset);
  const kibStates = watchStates(read(path.join(fo, 'watch-ib_srp.log')));
  const files = fs.existsSync(fo) ? fs.readdirSync(fo) : [];
  for (const [k, d] of out) {
    const [who, ev] = k.split('/') as [string, string];
    d.writes = parseWrites(read(path.join(fo, `probe-${who}-${ev}.log`)));
    d.states = who === 'srp-nbd' ? srpStates : kibStates;
    const prefix = `watch-${who}-${ev}-`;
    for (const f of files)
      if (f.startsWith(prefix) && f.endsWith('.log'))
        d.watches[f.slice(prefix.length, -'.log'.length)] = watchStates(read(path.join(fo, f)));
  }
  return out;
}

/** The kernel's crash line in a boot's console, if any. */
export function crashLine(console: string): string | undefined {
  return console
    .split('\n')
    .find((l) => /list_add (double add|corruption)|kernel BUG|Oops|general protection|BUG:|Kernel panic/.test(l))
    ?.replace(/^\[\s*[\d.]+\]\s*/, '')
    .trim();
}

/** Results over all boots: the first boot that ran an event measures it; a begun, unfinished ib_srp event crashed. */
export function buildResults(dir: string): Results {
  const res: Results = { 'srp-nbd': {}, ib_srp: {} };
  const boots = fs
    .readdirSync(dir)
    .filter((b) => /^boot\d+$/.test(b))
    .sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
  let crashedIn: string | undefined;
  for (const b of boots) {
    const bdir = path.join(dir, b);
    const data = readBoot(bdir, Number(b.slice(4)));
    const consoleText = fs.existsSync(path.join(bdir, 'console.log'))
      ? fs.readFileSync(path.join(bdir, 'console.log'), 'utf8')
      : '';
    for (const who of WHO) {
      for (const ev of EVENTS) {
        const d = data.get(`${who}/${ev}`);
        if (!d || res[who][ev]?.status === 'measured') continue;
        const begun = who === 'srp-nbd' ? d.marks.fault !== undefined : d.marks.begin !== undefined;
        if (!begun) continue;
        const finished = who === 'srp-nbd' || d.marks.end !== undefined;
        if (finished) {
          res[who][ev] = { status: 'measured', values: measure(ev, d) };
        } else {
          const why = d.rows.kernel_bug ?? crashLine(consoleText) ?? 'the guest died during this event';
          res[who][ev] = { status: 'kernel crashed', detail: `boot ${d.boot}: ${why}`, values: measure(ev, d) };
          crashedIn = ev;
        }
      }
    }
  }
  for (const who of WHO)
    for (const ev of EVENTS) {
      const na = NOT_APPLICABLE[who]?.[ev];
      if (!res[who][ev] && na !== undefined) res[who][ev] = { status: 'not applicable', detail: na, values: {} };
      if (!res[who][ev])
        res[who][ev] = {
          status: 'not measured',
          detail: who === 'ib_srp' && crashedIn ? `the kernel crashed in ${crashedIn}` : 'not run',
          values: {},
        };
    }
  return res;
}

/** The table's rows: label, the initiator's event and value key, the target, how a value is shown. */
interface RowSpec {
  label: string;
  ev: EventName;
  key: string;
  target: string;
  unit?: 's';
}
export const ROWS: RowSpec[] = [
  { label: 'link down → path failed', ev: 'linkdown', key: 'path_failed_s', target: '< 0.5 s', unit: 's' },
  {
    label: 'link down → first EIO (fast_io_fail_tmo)',
    ev: 'linkdown',
    key: 'first_eio_s',
    target: '= fast_io_fail_tmo',
    unit: 's',
  },
  { label: 'link up → first completed I/O', ev: 'linkdown', key: 'io_back_s', target: '< 1 s', unit: 's' },
  { label: 'black hole → noticed', ev: 'blackhole', key: 'path_failed_s', target: '< 1 s', unit: 's' },
  { label: 'black hole over → first completed I/O', ev: 'blackhole', key: 'io_back_s', target: '< 1 s', unit: 's' },
  { label: 'black hole: writes failed', ev: 'blackhole', key: 'failed_writes', target: '0' },
  { label: 'target restart → writes failed', ev: 'restart', key: 'failed_writes', target: '0' },
  { label: 'target back → first completed I/O', ev: 'restart', key: 'io_back_s', target: '< 1 s', unit: 's' },
  { label: 'target restart: LIO teardown took', ev: 'restart', key: 'teardown_s', target: '—', unit: 's' },
  {
    label: 'target restart: outage (teardown begun → target enabled)',
    ev: 'restart',
    key: 'outage_s',
    target: '< fast_io_fail_tmo',
    unit: 's',
  },
  { label: 'target rebuilt, other disk → writes on it', ev: 'rebuild', key: 'writes_on_other', target: '0' },
  {
    label: 'link down past fast_io_fail_tmo under md: md failed the member',
    ev: 'mdreadd',
    key: 'md_failures',
    target: '1',
  },
  {
    label: 'link up → member back in md (re-added)',
    ev: 'mdreadd',
    key: 'md_readded_s',
    target: '< 2 s',
    unit: 's',
  },
  { label: 'link up → md in sync again', ev: 'mdreadd', key: 'md_synced_s', target: '—', unit: 's' },
  { label: 'daemon / initiator killed → md member failures', ev: 'kill', key: 'md_failures', target: '0' },
  { label: 'daemon / initiator killed → writes failed on md', ev: 'kill', key: 'failed_writes', target: '0' },
  { label: 'daemon / initiator killed → longest md write', ev: 'kill', key: 'longest_write_s', target: '—', unit: 's' },
];

export function cell(o: Outcome | undefined, key: string, unit?: 's'): string {
  if (!o) return 'not measured';
  const v = o.values[key];
  const shown =
    v === null || v === undefined ? '—' : unit === 's' && typeof v === 'number' ? `${v.toFixed(2)} s` : String(v);
  if (o.status === 'kernel crashed')
    return v === null || v === undefined ? 'kernel crashed' : `${shown} (then the kernel crashed)`;
  if (o.status === 'not measured') return `not measured (${o.detail})`;
  if (o.status === 'not applicable') return `— (${o.detail})`;
  return shown;
}

/** The device after each event, per initiator. */
export function deviceLine(res: Results, who: Who): string {
  return EVENTS.map((ev) => {
    const o = res[who][ev];
    const d = o?.values.device;
    return `${ev}: ${o?.status === 'measured' ? (d ?? '—') : (o?.status ?? 'not measured')}`;
  }).join('; ');
}

export function markdownTable(res: Results): string {
  const lines = ['| event | srp-nbd | ib_srp | target |', '|---|---|---|---|'];
  for (const r of ROWS) {
    lines.push(
      `| ${r.label} | ${cell(res['srp-nbd'][r.ev], r.key, r.unit)} | ${cell(res.ib_srp[r.ev], r.key, r.unit)} | ${r.target} |`,
    );
  }
  lines.push(
    `| device after each event | ${deviceLine(res, 'srp-nbd')} | ${deviceLine(res, 'ib_srp')} | the same device |`,
  );
  const notes: string[] = [];
  for (const who of WHO)
    for (const ev of EVENTS) {
      const o = res[who][ev];
      if (o && o.status === 'kernel crashed') notes.push(`- ${who} ${ev}: kernel crashed (${o.detail})`);
    }
  return lines.join('\n') + (notes.length ? '\n\n' + notes.join('\n') : '');
}

function main(): void {
  const [dir, outFile, doc] = process.argv.slice(2);
  if (!dir || !outFile) {
    process.stderr.write('usage: failover-report OUT_DIR OUT.json [docs/failover.md]\n');
    process.exit(2);
  }
  const res = buildResults(dir);
  const table = markdownTable(res);
  console.log(table);
  const when = new Date().toISOString();
  const pf = path.join(dir, 'boot1', 'failover', 'params');
  const params = fs.existsSync(pf) ? fs.readFileSync(pf, 'utf8').trim() : '';
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, JSON.stringify({ when, params, results: res }, null, 2) + '\n');
  if (doc && fs.existsSync(doc)) {
    const text = fs.readFileSync(doc, 'utf8');
    const begin = '<!-- bench:failover begin -->';
    const end = '<!-- bench:failover end -->';
    const a = text.indexOf(begin);
    const b = text.indexOf(end);
    if (a >= 0 && b > a) {
      const body = `\n_Measured ${when.slice(0, 16).replace('T', ' ')} UTC by \`npm run bench:failover\`${params ? ` (${params})` : ''}._\n\n${table}\n`;
      fs.writeFileSync(doc, text.slice(0, a + begin.length) + body + text.slice(b));
      console.log(`table written to ${doc}`);
    }
  }
}

if (process.argv[1] && import.meta.url === new URL(`file://${path.resolve(process.argv[1])}`).href) main();
