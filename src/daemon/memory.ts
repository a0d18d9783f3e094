/**
 * Keeping the daemon able to serve I/O when the machine is short of memory. The daemon is the
 * block device's server: if reclaim makes it wait on writeback to its own devices, or evicts the
 * pages it needs to run, the kernel's writeback waits on the daemon and nothing moves.
 *
 *   - I/O flusher: prctl(PR_SET_IO_FLUSHER) (Linux 5.6+, needs CAP_SYS_RESOURCE) makes the
 *     kernel's allocations for this process avoid recursing into file system and block I/O
 *     (PF_MEMALLOC_NOIO), as for loop and nbd servers. Logged when the kernel lacks it.
 *   - Memory locking: not mlockall. V8 gives memory back with madvise(MADV_DONTNEED) and mmap,
 *     which fail on locked pages, and V8 treats that as fatal ("Check failed: 0 == ret"): with
 *     mlockall(MCL_CURRENT) (with or without MCL_FUTURE or MCL_ONFAULT) Node aborts at its next
 *     heap shrink or at exit; test/daemon-memory.test.ts shows it. Instead the file-backed mappings
 *     (the node binary, shared libraries, the addon: code and read-only data, what reclaim would
 *     drop and read back from disk) are locked with mlock(2) once the daemon is up; anonymous
 *     memory (V8's heap) is bounded by the unit's --max-old-space-size and kept out of swap by its
 *     MemorySwapMax=0.
 *
 * What was applied is in GET /health (`memory`) and `srp-nbd status`.
 */
import * as fs from 'node:fs';
import { getHeapStatistics } from 'node:v8';
import type { Logger } from 'pino';
import type { NativeBinding } from '../native/native.js';

export const PR_SET_IO_FLUSHER = 57;
export const MCL_CURRENT = 1;
export const MCL_FUTURE = 2;

export interface MemoryOptions {
  lock: boolean;
  io_flusher: boolean;
}

export interface MemoryReport {
  io_flusher: { enabled: boolean; applied: boolean; error: string | null };
  lock: {
    enabled: boolean;
    /** What is locked: the file-backed mappings (mlockall is not usable under V8). */
    what: 'file-backed mappings';
    mappings: number;
    locked_bytes: number;
    failed: number;
    error: string | null;
  };
  /** V8's heap limit (--max-old-space-size), MiB. */
  heap_limit_mib: number;
}

export interface Mapping {
  start: bigint;
  end: bigint;
  perms: string;
  path: string;
}

/** /proc/PID/maps lines -> mappings (anonymous ones have path ''). */
export function parseMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) out.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), perms: m[3]!, path: m[4]! });
  }
  return out;
}

/** Mappings of regular files that reclaim could drop: readable, a path, not a device or deleted file. */
export function lockable(maps: readonly Mapping[]): Mapping[] {
  return maps.filter(
    (m) =>
      m.perms[0] === 'r' && m.path.startsWith('/') && !m.path.startsWith('/dev/') && !m.path.endsWith(' (deleted)'),
  );
}

const errText = (e: unknown): string => {
  const err = e as { code?: string; message?: string };
  return err.code ?? err.message ?? String(e);
};

type MemoryBinding = Pick<NativeBinding, 'prctlSet' | 'mlock'> | undefined;
const MISSING = 'the native addon is not built or out of date (npm run build:native)';

/** A report of nothing applied yet, for `opts`. */
export function memoryReport(opts: MemoryOptions): MemoryReport {
  return {
    io_flusher: { enabled: opts.io_flusher, applied: false, error: null },
    lock: { enabled: opts.lock, what: 'file-backed mappings', mappings: 0, locked_bytes: 0, failed: 0, error: null },
    heap_limit_mib: Math.round(getHeapStatistics().heap_size_limit / 1048576),
  };
}

/**
 * PR_SET_IO_FLUSHER, if enabled: first thing at start, since the flag is per thread and threads
 * created later (libuv's pool, the addon's workers) inherit it. Never throws; a failure is logged.
 */
export function applyIoFlusher(report: MemoryReport, binding: MemoryBinding, log: Logger): void {
  if (!report.io_flusher.enabled) return;
  try {
    if (!binding || typeof binding.prctlSet !== 'function') throw new Error(MISSING);
    binding.prctlSet(PR_SET_IO_FLUSHER, 1);
    report.io_flusher.applied = true;
  } catch (e) {
    const code = errText(e);
    report.io_flusher.error =
      code === 'EINVAL'
        ? 'EINVAL: the kernel lacks PR_SET_IO_FLUSHER (Linux 5.6+)'
        : code === 'EPERM'
          ? 'EPERM: needs CAP_SYS_RESOURCE'
          : code;
    log.warn({ err: report.io_flusher.error }, 'memory: not an I/O flusher (PR_SET_IO_FLUSHER)');
  }
}

/**
 * mlock(2) of every lockable mapping, if enabled: once the daemon is up (its code and libraries
 * loaded). Never throws; what failed is counted, the first error kept and logged.
 */
export function lockMappings(
  report: MemoryReport,
  binding: MemoryBinding,
  log: Logger,
  readMaps: () => string = () => fs.readFileSync('/proc/self/maps', 'utf8'),
): void {
  const r = report.lock;
  if (!r.enabled) return;
  try {
    if (!binding || typeof binding.mlock !== 'function') throw new Error(MISSING);
    for (const m of lockable(parseMaps(readMaps()))) {
      try {
        binding.mlock(m.start, m.end - m.start);
        r.mappings++;
        r.locked_bytes += Number(m.end - m.start);
      } catch (e) {
        r.failed++;
        const code = errText(e);
        r.error ??= `${code} locking ${m.path}${code === 'ENOMEM' ? ' (RLIMIT_MEMLOCK; the unit sets LimitMEMLOCK=infinity)' : ''}`;
      }
    }
  } catch (e) {
    r.error = errText(e);
  }
  if (r.error !== null) log.warn({ lock: r }, 'memory: not every mapping could be locked');
  log.info(
    {
      io_flusher: report.io_flusher.applied,
      locked_mib: Math.round(r.locked_bytes / 1048576),
      mappings: r.mappings,
      heap_limit_mib: report.heap_limit_mib,
    },
    'memory protections applied',
  );
}

/** One line for `srp-nbd status`. */
export function describeMemory(r: MemoryReport): string {
  const flusher = !r.io_flusher.enabled
    ? 'I/O flusher off'
    : r.io_flusher.applied
      ? 'I/O flusher'
      : `not an I/O flusher (${r.io_flusher.error})`;
  const lock = !r.lock.enabled
    ? 'memory lock off'
    : `${(r.lock.locked_bytes / 1048576).toFixed(0)} MiB locked (${r.lock.mappings} file-backed mappings${r.lock.failed ? `, ${r.lock.failed} failed: ${r.lock.error}` : ''}${r.lock.error && !r.lock.failed ? `: ${r.lock.error}` : ''})`;
  return `${flusher}, ${lock}, heap limit ${r.heap_limit_mib} MiB`;
}
