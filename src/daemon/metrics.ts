/**
 * Metrics in the Prometheus text exposition format (version 0.0.4), hand-written: a few counters,
 * gauges and latency histograms need no client library.
 *
 * MeteredBackend wraps a LUN's NBD backend and counts operations, bytes, errors and latency per
 * operation type. renderMetrics() declares every metric family of GET /metrics and renders a
 * snapshot the daemon takes per scrape (DaemonMetrics): per target the rport state, reconnects,
 * credits, the I/O gate, md re-adds and time in each state, per LUN md membership and the
 * MeteredBackend counts.
 */
import type { GateStats } from '../fsm/gate.js';
import { RPORT_STATES, type RportState } from '../fsm/rport.js';
import type { SrpSessionCounters } from '../initiator/srp-session.js';
import type { Backend, BlockSizeConstraints, MaybePromise } from '../nbd/backend.js';
import { batchNow } from '../util/clock.js';
import type { MdMembership } from './md.js';

/** Latency bucket upper bounds in seconds. */
export const LATENCY_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

export class Histogram {
  readonly counts = new Array<number>(LATENCY_BUCKETS.length).fill(0);
  count = 0;
  sum = 0;

  observe(seconds: number): void {
    this.count++;
    this.sum += seconds;
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
      if (seconds <= LATENCY_BUCKETS[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }
}

export const IO_OPS = ['read', 'write', 'flush', 'trim', 'write_zeroes'] as const;
export type IoOp = (typeof IO_OPS)[number];

export interface OpStats {
  ops: number;
  bytes: number;
  errors: number;
  latency: Histogram;
}

/** A Backend that measures every request and passes it on unchanged. */
export class MeteredBackend implements Backend {
  readonly stats: Record<IoOp, OpStats> = Object.fromEntries(
    IO_OPS.map((op) => [op, { ops: 0, bytes: 0, errors: 0, latency: new Histogram() }]),
  ) as Record<IoOp, OpStats>;

  constructor(readonly inner: Backend) {}

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get blockSize(): BlockSizeConstraints {
    return this.inner.blockSize;
  }
  get description(): string {
    return this.inner.description;
  }
  get canFlush(): boolean {
    return this.inner.canFlush;
  }
  get canFua(): boolean {
    return this.inner.canFua;
  }
  get canTrim(): boolean {
    return this.inner.canTrim;
  }
  get canWriteZeroes(): boolean {
    return this.inner.canWriteZeroes;
  }
  get canMultiConn(): boolean {
    return this.inner.canMultiConn;
  }

  // read and write, once per I/O, call the inner backend directly (no closure for call()).
  read(offset: number, dst: Buffer): Promise<void> {
    const t0 = batchNow();
    let p: Promise<void>;
    try {
      p = Promise.resolve(this.inner.read(offset, dst));
    } catch (e) {
      p = Promise.reject(e);
    }
    return this.track(this.stats.read, dst.length, t0, p);
  }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const t0 = batchNow();
    let p: Promise<void>;
    try {
      p = Promise.resolve(this.inner.write(offset, data, fua));
    } catch (e) {
      p = Promise.reject(e);
    }
    return this.track(this.stats.write, data.length, t0, p);
  }
  flush(): Promise<void> {
    const t0 = batchNow();
    return this.track(
      this.stats.flush,
      0,
      t0,
      call(() => this.inner.flush()),
    );
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    const t0 = batchNow();
    return this.track(
      this.stats.trim,
      length,
      t0,
      call(() => this.inner.trim(offset, length, fua)),
    );
  }
  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    const t0 = batchNow();
    return this.track(
      this.stats.write_zeroes,
      length,
      t0,
      call(() => this.inner.writeZeroes(offset, length, fua, noHole)),
    );
  }
  async close(): Promise<void> {
    await this.inner.close?.();
  }

  /**
   * Counts a request when it settles. One then() on the request's own promise: this runs once per
   * I/O, so no async wrapper and no bigint clock; the clock is read once per batch (batchNow).
   */
  private track(s: OpStats, bytes: number, t0: number, p: Promise<void>): Promise<void> {
    return p.then(
      () => {
        s.ops++;
        s.bytes += bytes;
        s.latency.observe((batchNow() - t0) / 1e3);
      },
      (e: unknown) => {
        s.errors++;
        s.latency.observe((batchNow() - t0) / 1e3);
        throw e;
      },
    );
  }
}

/** fn() as a promise, also when it throws instead of rejecting. */
function call(fn: () => MaybePromise): Promise<void> {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e);
  }
}

/** One LUN in a metrics snapshot. */
export interface LunMetrics {
  export: string;
  /** md arrays holding the LUN's kernel device, as last read. */
  md: readonly Pick<MdMembership, 'array' | 'state'>[];
  stats: Record<IoOp, OpStats>;
}

/** One target in a metrics snapshot. */
export interface TargetMetrics {
  id: string;
  /** Attached and exported; false while connecting or failed. */
  attached: boolean;
  /** The rport state; undefined while the target has no port. */
  state: RportState | undefined;
  /** Seconds spent in each rport state, the current stretch included. */
  secondsInState: Record<RportState, number>;
  reconnectAttempts: number;
  reconnects: number;
  /** Failed reconnect attempts in the current outage. */
  failedReconnects: number;
  failedReconnectsTotal: number;
  logins: number;
  /** The current SRP session's counters; undefined without a session. */
  session:
    | Pick<
        SrpSessionCounters,
        'reqLim' | 'creditsGranted' | 'zeroReqLim' | 'memoryRegistrations' | 'perCommandRegistrations'
      >
    | undefined;
  /** The port's I/O gate; undefined without a port. */
  io: Pick<GateStats, 'inFlight' | 'held' | 'retried' | 'failedEio'> | undefined;
  mdReadds: number;
  /** LUN changes followed while attached, by kind. */
  lunChanges: Partial<Record<LunChange, number>>;
  /** Seconds from the path's return to the last md re-add; undefined before the first. */
  mdReaddLastSeconds: number | undefined;
  luns: LunMetrics[];
}

/** Kinds of srp_nbd_lun_changes_total. */
export const LUN_CHANGES = ['grown', 'shrunk', 'added', 'removed', 'write_protected', 'write_enabled'] as const;
export type LunChange = (typeof LUN_CHANGES)[number];

/** What the daemon hands renderMetrics() at each scrape. */
export interface DaemonMetrics {
  version: string;
  targets: TargetMetrics[];
  /** The paths of every LU with several paths (multipath); an LU with one path has only target metrics. */
  paths?: PathMetrics[];
}

/** One path of a multipath LU: `lu` is the LU's export name, `target` the path's target id. */
export interface PathMetrics {
  lu: string;
  target: string;
  state: string | undefined;
  role: string;
  commands: number;
  errors: number;
  bytes: number;
  inFlight: number;
}

/** Every metric family of GET /metrics, in the order rendered: name, type, HELP text. */
const FAMILIES: readonly [name: string, type: 'counter' | 'gauge' | 'histogram', help: string][] = [
  ['srp_nbd_info', 'gauge', 'Daemon version.'],
  ['srp_nbd_targets', 'gauge', 'Targets known to the daemon.'],
  ['srp_nbd_target_state', 'gauge', 'rport state of a target (1 for the current state).'],
  ['srp_nbd_target_attached', 'gauge', '1 when the target is attached and exported, 0 while connecting or failed.'],
  ['srp_nbd_state_seconds_total', 'counter', 'Time spent in each rport state.'],
  ['srp_nbd_reconnect_attempts_total', 'counter', 'Reconnect attempts started.'],
  ['srp_nbd_reconnects_total', 'counter', 'Successful reconnects (back to running).'],
  ['srp_nbd_failed_reconnects', 'gauge', 'Failed reconnect attempts in the current outage (sysfs failed_reconnects).'],
  ['srp_nbd_failed_reconnects_total', 'counter', 'Failed reconnect attempts.'],
  ['srp_nbd_logins_total', 'counter', 'SRP logins, the first one included.'],
  ['srp_nbd_credits', 'gauge', 'SRP credits held (req_lim).'],
  ['srp_nbd_credits_granted_total', 'counter', 'SRP credits granted by the target (current session).'],
  ['srp_nbd_credit_stalls_total', 'counter', 'Times the queue stalled for lack of credits (current session).'],
  [
    'srp_nbd_memory_registrations_total',
    'counter',
    'RDMA memory registrations (ibv_reg_mr) by the session: its command slots, then only larger transfers (current session).',
  ],
  [
    'srp_nbd_per_command_registrations_total',
    'counter',
    'Commands that registered memory of their own, being larger than a command slot (current session).',
  ],
  ['srp_nbd_io_in_flight', 'gauge', 'Block requests dispatched to the target.'],
  ['srp_nbd_io_held', 'gauge', 'Block requests held while the path is blocked.'],
  ['srp_nbd_io_replayed_total', 'counter', 'Block requests dispatched again after a reconnect.'],
  [
    'srp_nbd_io_failed_eio_total',
    'counter',
    'Block requests failed with EIO by the transport state (fail-fast, lost).',
  ],
  ['srp_nbd_md_readds_total', 'counter', 'Devices re-added to an md array that had failed them (option md_readd).'],
  [
    'srp_nbd_lun_changes_total',
    'counter',
    'LUN changes seen while attached: grown (resized), shrunk (not followed), added, removed, write_protected, write_enabled.',
  ],
  [
    'srp_nbd_md_readd_last_seconds',
    'gauge',
    "Seconds from the path's return to the last md re-add (absent before the first).",
  ],
  ['srp_nbd_md_member_faulty', 'gauge', '1 while md has the device marked faulty in the array.'],
  ['srp_nbd_path_state', 'gauge', 'rport state of a path of a multipath LU (1 for the current state).'],
  ['srp_nbd_path_active', 'gauge', '1 while the path carries I/O (role active), 0 standby or failed by the operator.'],
  ['srp_nbd_path_commands_total', 'counter', 'Block requests completed on the path.'],
  [
    'srp_nbd_path_errors_total',
    'counter',
    'Transport failures of block requests on the path (each re-issued on another path or held).',
  ],
  ['srp_nbd_path_bytes_total', 'counter', 'Bytes of block requests completed on the path.'],
  ['srp_nbd_path_in_flight', 'gauge', 'Block requests in flight on the path.'],
  ['srp_nbd_lun_ops_total', 'counter', 'Block requests completed, per export and operation.'],
  ['srp_nbd_lun_bytes_total', 'counter', 'Bytes transferred, per export and operation.'],
  ['srp_nbd_lun_errors_total', 'counter', 'Block requests that failed, per export and operation.'],
  [
    'srp_nbd_lun_latency_seconds',
    'histogram',
    'Block request latency (NBD backend call to completion), per export and operation.',
  ],
];

/** The exposition text of GET /metrics: every family declared (HELP, TYPE), then the samples. */
export function renderMetrics(d: DaemonMetrics): string {
  const e = new Exposition();
  for (const [name, type, help] of FAMILIES) e.family(name, type, help);
  e.sample('srp_nbd_info', '', { version: d.version }, 1);
  e.sample('srp_nbd_targets', '', {}, d.targets.length);
  for (const m of d.targets) {
    const t = { target: m.id };
    for (const s of RPORT_STATES) e.sample('srp_nbd_target_state', '', { ...t, state: s }, m.state === s ? 1 : 0);
    e.sample('srp_nbd_target_attached', '', t, m.attached ? 1 : 0);
    for (const s of RPORT_STATES) {
      e.sample('srp_nbd_state_seconds_total', '', { ...t, state: s }, Math.round(m.secondsInState[s] * 1000) / 1000);
    }
    e.sample('srp_nbd_reconnect_attempts_total', '', t, m.reconnectAttempts);
    e.sample('srp_nbd_reconnects_total', '', t, m.reconnects);
    e.sample('srp_nbd_failed_reconnects', '', t, m.failedReconnects);
    e.sample('srp_nbd_failed_reconnects_total', '', t, m.failedReconnectsTotal);
    e.sample('srp_nbd_logins_total', '', t, m.logins);
    const c = m.session;
    e.sample('srp_nbd_credits', '', t, c?.reqLim ?? 0);
    e.sample('srp_nbd_credits_granted_total', '', t, c?.creditsGranted ?? 0);
    e.sample('srp_nbd_credit_stalls_total', '', t, c?.zeroReqLim ?? 0);
    e.sample('srp_nbd_memory_registrations_total', '', t, c?.memoryRegistrations ?? 0);
    e.sample('srp_nbd_per_command_registrations_total', '', t, c?.perCommandRegistrations ?? 0);
    const g = m.io;
    e.sample('srp_nbd_io_in_flight', '', t, g?.inFlight ?? 0);
    e.sample('srp_nbd_io_held', '', t, g?.held ?? 0);
    e.sample('srp_nbd_io_replayed_total', '', t, g?.retried ?? 0);
    e.sample('srp_nbd_io_failed_eio_total', '', t, g?.failedEio ?? 0);
    e.sample('srp_nbd_md_readds_total', '', t, m.mdReadds);
    for (const c of LUN_CHANGES) e.sample('srp_nbd_lun_changes_total', '', { ...t, change: c }, m.lunChanges[c] ?? 0);
    if (m.mdReaddLastSeconds !== undefined) e.sample('srp_nbd_md_readd_last_seconds', '', t, m.mdReaddLastSeconds);
    for (const l of m.luns) {
      for (const md of l.md) {
        const faulty = md.state.includes('faulty') ? 1 : 0;
        e.sample('srp_nbd_md_member_faulty', '', { ...t, export: l.export, array: md.array }, faulty);
      }
    }
    for (const l of m.luns) {
      for (const op of IO_OPS) {
        const s = l.stats[op];
        const lab = { ...t, export: l.export, op };
        e.sample('srp_nbd_lun_ops_total', '', lab, s.ops);
        e.sample('srp_nbd_lun_bytes_total', '', lab, s.bytes);
        e.sample('srp_nbd_lun_errors_total', '', lab, s.errors);
        e.histogram('srp_nbd_lun_latency_seconds', lab, s.latency);
      }
    }
  }
  for (const p of d.paths ?? []) {
    const lab = { lu: p.lu, target: p.target };
    for (const s of RPORT_STATES) e.sample('srp_nbd_path_state', '', { ...lab, state: s }, p.state === s ? 1 : 0);
    e.sample('srp_nbd_path_active', '', lab, p.role === 'active' ? 1 : 0);
    e.sample('srp_nbd_path_commands_total', '', lab, p.commands);
    e.sample('srp_nbd_path_errors_total', '', lab, p.errors);
    e.sample('srp_nbd_path_bytes_total', '', lab, p.bytes);
    e.sample('srp_nbd_path_in_flight', '', lab, p.inFlight);
  }
  return e.render();
}

/** Builds an exposition text: HELP/TYPE once per metric family, samples in order. */
export class Exposition {
  private readonly families = new Map<string, { help: string; type: string; lines: string[] }>();

  family(name: string, type: 'counter' | 'gauge' | 'histogram', help: string): void {
    if (!this.families.has(name)) this.families.set(name, { help, type, lines: [] });
  }

  sample(family: string, suffix: string, labels: Record<string, string>, value: number): void {
    const f = this.families.get(family);
    if (!f) throw new Error(`metric family ${family} not declared`);
    f.lines.push(`${family}${suffix}${formatLabels(labels)} ${formatValue(value)}`);
  }

  histogram(family: string, labels: Record<string, string>, h: Histogram): void {
    let cum = 0;
    LATENCY_BUCKETS.forEach((b, i) => {
      cum += h.counts[i]!;
      this.sample(family, '_bucket', { ...labels, le: String(b) }, cum);
    });
    this.sample(family, '_bucket', { ...labels, le: '+Inf' }, h.count);
    this.sample(family, '_sum', labels, h.sum);
    this.sample(family, '_count', labels, h.count);
  }

  render(): string {
    let out = '';
    for (const [name, f] of this.families) {
      out += `# HELP ${name} ${f.help}\n# TYPE ${name} ${f.type}\n`;
      for (const l of f.lines) out += l + '\n';
    }
    return out;
  }
}

function formatLabels(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(
    ([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`,
  );
  return parts.length ? `{${parts.join(',')}}` : '';
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}
