/**
 * Metrics in the Prometheus text exposition format (version 0.0.4), hand-written: a few counters,
 * gauges and latency histograms need no client library.
 *
 * MeteredBackend wraps a LUN's NBD backend and counts operations, bytes, errors and latency per
 * operation type; the daemon renders them with the rport state, reconnects, credits and time in
 * each state (see Daemon.metrics()).
 */
import type { Backend, BlockSizeConstraints } from '../nbd/backend.js';

/** Latency bucket upper bounds in seconds. */
export const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Histogram {
  readonly counts = new Array<number>(LATENCY_BUCKETS.length).fill(0);
  count = 0;
  sum = 0;

  observe(seconds: number): void {
    this.count++;
    this.sum += seconds;
    const i = LATENCY_BUCKETS.findIndex((b) => seconds <= b);
    if (i >= 0) this.counts[i]!++;
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

  get size(): number { return this.inner.size; }
  get readOnly(): boolean { return this.inner.readOnly; }
  get blockSize(): BlockSizeConstraints { return this.inner.blockSize; }
  get description(): string { return this.inner.description; }
  get canFlush(): boolean { return this.inner.canFlush; }
  get canFua(): boolean { return this.inner.canFua; }
  get canTrim(): boolean { return this.inner.canTrim; }
  get canWriteZeroes(): boolean { return this.inner.canWriteZeroes; }
  get canMultiConn(): boolean { return this.inner.canMultiConn; }

  read(offset: number, dst: Buffer): Promise<void> {
    return this.measure('read', dst.length, () => this.inner.read(offset, dst));
  }
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.measure('write', data.length, () => this.inner.write(offset, data, fua));
  }
  flush(): Promise<void> {
    return this.measure('flush', 0, () => this.inner.flush());
  }
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.measure('trim', length, () => this.inner.trim(offset, length, fua));
  }
  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.measure('write_zeroes', length, () => this.inner.writeZeroes(offset, length, fua, noHole));
  }
  async close(): Promise<void> {
    await this.inner.close?.();
  }

  private async measure(op: IoOp, bytes: number, fn: () => void | Promise<void>): Promise<void> {
    const s = this.stats[op];
    const t0 = process.hrtime.bigint();
    try {
      await fn();
      s.ops++;
      s.bytes += bytes;
    } catch (e) {
      s.errors++;
      throw e;
    } finally {
      s.latency.observe(Number(process.hrtime.bigint() - t0) / 1e9);
    }
  }
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
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}
