/**
 * What the daemon shows of its targets: the rows and documents of the REST API (GET /targets,
 * /targets/:id, /targets/:id/paths, /luns/:name), `srp-nbd status` and `path`, and the snapshot
 * GET /metrics is rendered from. Read-only views of the runtime records (runtime.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { PathRole } from '../fsm/multipath.js';
import type { RportState } from '../fsm/rport.js';
import { formatPortId } from '../initiator/login-reject.js';
import { describeIdentity, identityFromJSON } from '../initiator/lun-identity.js';
import { rcRetryBoundMs } from '../initiator/rdma/options.js';
import type { TargetOptions } from './config.js';
import type { MdMembership } from './md.js';
import { IO_OPS, type TargetMetrics } from './metrics.js';
import { byIdName } from './names.js';
import type { LuGroup, LunRuntime, TargetRuntime, TargetStatus } from './runtime.js';
import type { PersistedLun } from './state.js';

/** Finds an attached target by id (a path's target, for the paths of an LU). */
export type TargetLookup = (id: string) => TargetRuntime | undefined;

/** What a target's view needs beyond the target. */
export interface ViewContext {
  /** the daemon's NBD unix socket (the exports' URIs) */
  nbdSocket: string;
  /** sysfs root (tests use a fake tree); default /sys */
  sysfs?: string;
  target: TargetLookup;
}

/** Row of GET /targets. */
export interface TargetSummary {
  id: string;
  status: TargetStatus;
  state: RportState | null;
  address: string;
  /**
   * by_id: the LUN's stable name (names.ts), linked as /dev/disk/by-id/<by_id> while it has a
   * device. path_of: the LUN is another path of an LU whose export and device are that target's.
   */
  luns: { export: string; device: string | null; by_id: string | null; path_of?: string }[];
  error?: string;
}

/** DELETE /targets/:name. */
export interface DetachResult {
  detached: string;
  exports: string[];
  devices: string[];
}

/** GET /luns/:name. */
export interface LunView {
  target: string;
  lun: number;
  export: string;
  device: string | null;
  by_id: string;
  by_id_path: string;
  uri: string;
  size: number;
  block_size: number;
  identity: string;
  vendor: string | null;
  product: string | null;
  revision: string | null;
  serial: string | null;
  designators: string[];
}

/** The stable name of a persisted LUN, null when its recorded identity cannot be read. */
export function persistedById(l: PersistedLun): string | null {
  try {
    return byIdName(identityFromJSON(l.identity), l.export);
  } catch {
    return null;
  }
}

/** GET /targets/:id. */
export interface TargetView extends TargetSummary {
  transport: string;
  via: string | null;
  /** the initiator port id of the last login as the target saw it ("0x" + 32 hex digits); null before one */
  initiator_port_id: string | null;
  attached_at: string;
  timers: Record<'reconnect_delay' | 'reconnect_delay_max' | 'fast_io_fail_tmo' | 'dev_loss_tmo', number | 'off'>;
  options: TargetOptions;
  reconnect: {
    phase: string;
    attempt: number;
    failed_reconnects: number;
    attempts_total: number;
    reconnects_total: number;
    failed_reconnects_total: number;
    logins_total: number;
    last_failure: string | null;
    /**
     * A reconnect login's wait for the target's answer: 3 × the slowest of its last 8 answers
     * (slowest_answer_ms, null before the first), at least 250 ms, at most the attempt's deadline.
     */
    login_wait: { slowest_answer_ms: number | null; next_wait_ms: number } | null;
  };
  /**
   * How soon a dead path (black hole) is noticed at the latest, idle or under load: the RC retry
   * bound (retry_count + 1) × 4.096 µs × 2^ack_timeout plus the keep-alive interval; bound_ms is
   * null with keep-alive off. null for the test target.
   */
  path_check: { bound_ms: number | null; rc_retry_ms: number; keepalive_interval_s: number } | null;
  /**
   * The last transport failure, failed reconnect or login reject (explained for an operator), kept
   * after the port runs again; else the last attach or connect failure; null when none.
   */
  last_error: string | null;
  /** md re-adds (option md_readd): how many, and ms from the path's return to the last one. */
  md_readd: { readds_total: number; last_readd_ms: number | null };
  credits: { req_lim: number; granted_total: number; zero_req_lim_total: number } | null;
  io: {
    in_flight: number;
    held: number;
    waiting: number;
    released_total: number;
    replayed_total: number;
    failed_eio_total: number;
  } | null;
  session: Record<string, number> | null;
  time_in_state_s: Record<string, number>;
  lun_details: {
    lun: number;
    export: string;
    uri: string;
    device: string | null;
    by_id: string;
    /** md arrays holding the device (/sys/block/nbdN/holders) and its state in each. */
    md: MdMembership[];
    device_note?: string;
    /** 'removed': the target stopped reporting the LUN; I/O fails with EIO until detach. */
    state: 'attached' | 'removed';
    /** A capacity change not followed (the LUN shrank). */
    capacity_note?: string;
    size: number;
    block_size: number;
    /** the kernel device's largest request as set at attach (max_sectors_kb × 1024); null if not set */
    max_io_bytes: number | null;
    /** Writes refused with EPERM (NBD_FLAG_READ_ONLY at export), and why. */
    read_only: boolean;
    read_only_reason: 'option' | 'write_protect' | null;
    /** The LU's WP bit as last read (MODE SENSE). */
    write_protect: boolean;
    /** /sys/block/nbdN/ro: fixed when the device was connected (netlink cannot change it later). */
    kernel_read_only: boolean | null;
    identity: string;
    /** The LU's paths (one entry for an LU reached through this target only). */
    paths: PathView[];
    io: Record<string, { ops: number; bytes: number; errors: number }>;
  }[];
  /** LUNs of this target that are further paths of an LU exported through another target (`owner`). */
  path_luns: { lun: number; export: string; device: string | null; owner: string; paths: PathView[] }[];
}

/** One path of an LU (status, `srp-nbd path`). */
export interface PathView {
  /** the path's target id */
  target: string;
  address: string;
  /** the LU's LUN number behind that target */
  lun: number | null;
  /** the path's rport state (running, blocked, fail-fast, lost, detached) */
  state: RportState | null;
  /** active: carries I/O; standby: ready or not running; failed: failed by the operator */
  role: PathRole;
  priority: number;
  /** block requests completed on the path (for an LU with one path: the export's) */
  commands: number;
  /** transport failures on the path (for an LU with one path: requests replayed after one) */
  errors: number;
  bytes: number;
  in_flight: number;
  last_failure: { reason: string; at: string } | null;
}

/** An LU and its paths (GET /targets/:id/paths). */
export interface LuPathsView {
  export: string;
  device: string | null;
  by_id: string;
  identity: string;
  /** the target holding the export and device */
  owner: string;
  selector: string;
  failback: string | number;
  /** whether the LU's I/O goes through the multipath gate (a second path joined, or the operator failed one) */
  multipath: boolean;
  io: {
    in_flight: number;
    held: number;
    waiting: number;
    released_total: number;
    reissued_total: number;
    failed_eio_total: number;
  } | null;
  paths: PathView[];
}

/** GET /targets/:id/paths: every LU behind the name, and when there is one, its fields at the top. */

export type PathsResult = Partial<LuPathsView> & { lus: LuPathsView[] };

function pathCheckOf(o: TargetOptions): NonNullable<TargetView['path_check']> {
  const rc = rcRetryBoundMs(o.ack_timeout, o.retry_count);
  const round = (ms: number) => Math.round(ms * 10) / 10;
  return {
    bound_ms: o.keepalive_interval > 0 ? round(rc + o.keepalive_interval * 1000) : null,
    rc_retry_ms: round(rc),
    keepalive_interval_s: o.keepalive_interval,
  };
}

export function timersOf(o: TargetOptions): TargetView['timers'] {
  return {
    reconnect_delay: o.reconnect_delay,
    reconnect_delay_max: o.reconnect_delay_max,
    fast_io_fail_tmo: o.fast_io_fail_tmo,
    dev_loss_tmo: o.dev_loss_tmo,
  };
}

/** /sys/block/nbdN/ro of a device, null when it cannot be read. */
function kernelReadOnly(device: string, sysfs = '/sys'): boolean | null {
  try {
    return fs.readFileSync(path.join(sysfs, 'block', path.basename(device), 'ro'), 'utf8').trim() === '1';
  } catch {
    return null;
  }
}

/** A target as GET /targets lists it. */
export function targetSummary(rt: TargetRuntime): TargetSummary {
  return {
    id: rt.id,
    status: rt.status,
    state: rt.port?.state ?? null,
    address: rt.addressText,
    luns:
      rt.status === 'attached'
        ? [
            ...rt.luns.map((l) => ({
              export: l.exportName,
              device: l.device,
              by_id: byIdName(l.identity, l.exportName),
            })),
            ...rt.pathLuns.map((pl) => ({
              export: pl.lu.lun.exportName,
              device: pl.lu.lun.device,
              by_id: byIdName(pl.lu.lun.identity, pl.lu.lun.exportName),
              path_of: pl.lu.owner.id,
            })),
          ]
        : rt.persisted.map((l) => ({ export: l.export, device: l.device, by_id: persistedById(l) })),
    ...(rt.error !== undefined ? { error: rt.error } : {}),
  };
}

/** A target as GET /targets/:id shows it. */
export function targetView(rt: TargetRuntime, ctx: ViewContext): TargetView {
  const port = rt.port;
  const c = port?.sessionCounters;
  const times = secondsInState(rt);
  const g = port?.gate.stats;
  return {
    ...targetSummary(rt),
    transport: rt.address.kind === 'test' ? 'test-target' : rt.address.addr.transport,
    via: rt.connectorDescription ?? null,
    initiator_port_id: initiatorPortIdOf(rt),
    attached_at: rt.attachedAt,
    timers: timersOf(rt.options),
    options: { ...rt.options },
    reconnect: {
      phase: port?.rport.phase ?? 'none',
      attempt: port?.rport.attempt ?? rt.restoreAttempt,
      failed_reconnects: port?.rport.failedReconnects ?? 0,
      attempts_total: rt.stats.reconnectAttempts,
      reconnects_total: rt.stats.reconnects,
      failed_reconnects_total: rt.stats.failedReconnectsTotal,
      logins_total: port?.logins ?? 0,
      last_failure: port?.rport.lastFailure?.message ?? null,
      login_wait: port
        ? { slowest_answer_ms: port.loginWait.slowestAnswerMs, next_wait_ms: port.loginWait.nextWaitMs }
        : null,
    },
    path_check: rt.address.kind === 'test' ? null : pathCheckOf(rt.options),
    md_readd: { readds_total: rt.md.readds, last_readd_ms: rt.md.lastReaddMs ?? null },
    last_error: port?.rport.lastError ?? rt.error ?? null,
    credits: c ? { req_lim: c.reqLim, granted_total: c.creditsGranted, zero_req_lim_total: c.zeroReqLim } : null,
    io: g
      ? {
          in_flight: g.inFlight,
          held: g.held,
          waiting: g.waiting,
          released_total: g.released,
          replayed_total: g.retried,
          failed_eio_total: g.failedEio,
        }
      : null,
    session: c
      ? {
          commands_completed: c.commandsCompleted,
          commands_failed: c.commandsFailed,
          command_timeouts: c.commandTimeouts,
          aborts_sent: c.abortsSent,
          lun_resets: c.lunResets,
          bytes_in: c.bytesIn,
          bytes_out: c.bytesOut,
          immediate_data_commands: c.immediateDataCommands,
          memory_registrations: c.memoryRegistrations,
          per_command_registrations: c.perCommandRegistrations,
          slot_regions: c.slotRegions,
        }
      : null,
    time_in_state_s: Object.fromEntries(Object.entries(times).map(([k, v]) => [k, Math.round(v * 1000) / 1000])),
    path_luns: rt.pathLuns.map((pl) => ({
      lun: pl.number,
      export: pl.lu.lun.exportName,
      device: pl.lu.lun.device,
      owner: pl.lu.owner.id,
      paths: pathViews(pl.lu, ctx.target),
    })),
    lun_details: rt.luns.map((l) => ({
      lun: l.number,
      export: l.exportName,
      uri: `nbd+unix:///${l.exportName}?socket=${ctx.nbdSocket}`,
      device: l.device,
      by_id: byIdName(l.identity, l.exportName),
      md: l.md,
      ...(l.deviceNote ? { device_note: l.deviceNote } : {}),
      size: l.backend.size,
      block_size: l.backend.blockSize.minimum,
      max_io_bytes: l.deviceMaxIoKb !== undefined ? l.deviceMaxIoKb * 1024 : null,
      state: l.state,
      ...(l.capacityNote ? { capacity_note: l.capacityNote } : {}),
      read_only: l.lunBackend.readOnly,
      read_only_reason: l.lunBackend.readOnlyReason,
      write_protect: l.lunBackend.writeProtected,
      kernel_read_only: l.device ? kernelReadOnly(l.device, ctx.sysfs) : null,
      identity: describeIdentity(l.identity),
      paths: pathViews(l.lu ?? soloLu(rt, l), ctx.target),
      io: Object.fromEntries(
        IO_OPS.map((op) => {
          const s = l.backend.stats[op];
          return [op, { ops: s.ops, bytes: s.bytes, errors: s.errors }];
        }),
      ),
    })),
  };
}

/** The paths of an LU as status and `srp-nbd path` show them. */
export function pathViews(g: LuGroup, target: TargetLookup): PathView[] {
  const gate = g.gate;
  if (!gate) {
    const rt = g.owner;
    const stats = Object.values(g.lun.backend.stats);
    return [
      {
        target: rt.id,
        address: rt.addressText,
        lun: g.lun.number,
        state: rt.port?.state ?? null,
        role: 'active',
        priority: rt.options.path_priority,
        commands: stats.reduce((n, s) => n + s.ops, 0),
        errors: rt.port?.gate.stats.retried ?? 0,
        bytes: stats.reduce((n, s) => n + s.bytes, 0),
        in_flight: rt.port?.gate.stats.inFlight ?? 0,
        last_failure: null,
      },
    ];
  }
  return gate.pathList.map((p) => {
    const rt = target(p.id);
    const lun = rt === g.owner ? g.lun.number : rt?.pathLuns.find((x) => x.lu === g)?.number;
    return {
      target: p.id,
      address: rt?.addressText ?? '',
      lun: lun ?? null,
      state: p.rport.state,
      role: gate.roleOf(p),
      priority: p.priority,
      commands: p.counters.commands,
      errors: p.counters.errors,
      bytes: p.counters.bytes,
      in_flight: p.counters.inFlight,
      last_failure: p.counters.lastFailure,
    };
  });
}

/** An LU and its paths (GET /targets/:id/paths). */
export function luView(g: LuGroup, target: TargetLookup): LuPathsView {
  const o = g.owner.options;
  const s = g.gate?.stats;
  return {
    export: g.lun.exportName,
    device: g.lun.device,
    by_id: byIdName(g.lun.identity, g.lun.exportName),
    identity: describeIdentity(g.lun.identity),
    owner: g.owner.id,
    selector: o.path_selector,
    failback: o.failback,
    multipath: g.gate !== undefined,
    io: s
      ? {
          in_flight: s.inFlight,
          held: s.held,
          waiting: s.waiting,
          released_total: s.released,
          reissued_total: s.retried,
          failed_eio_total: s.failedEio,
        }
      : null,
    paths: pathViews(g, target),
  };
}

/** A LUN without a logical unit key is an LU of its own, with one path and no grouping. */
export function soloLu(rt: TargetRuntime, l: LunRuntime): LuGroup {
  return { key: '', owner: rt, lun: l, paths: [rt] };
}

/** The initiator port id of the target's last login, as the target saw it ("0x" + 32 hex), if known. */
function initiatorPortIdOf(rt: TargetRuntime): string | null {
  const id = rt.connector?.loginContext?.()?.initiatorPortId ?? rt.fixedInitiatorPortId;
  return id ? formatPortId(id) : null;
}

/** One target as GET /metrics reports it. */
export function metricsOf(rt: TargetRuntime): TargetMetrics {
  const port = rt.port;
  return {
    id: rt.id,
    attached: rt.status === 'attached',
    state: port?.state,
    secondsInState: secondsInState(rt),
    reconnectAttempts: rt.stats.reconnectAttempts,
    reconnects: rt.stats.reconnects,
    failedReconnects: port?.rport.failedReconnects ?? 0,
    failedReconnectsTotal: rt.stats.failedReconnectsTotal,
    logins: port?.logins ?? 0,
    session: port?.sessionCounters,
    io: port?.gate.stats,
    mdReadds: rt.md.readds,
    lunChanges: rt.lunChanges,
    mdReaddLastSeconds: rt.md.lastReaddMs === undefined ? undefined : rt.md.lastReaddMs / 1000,
    luns: rt.luns.map((l) => ({ export: l.exportName, md: l.md, stats: l.backend.stats })),
  };
}

/** Seconds spent in each rport state, the current stretch included. */
function secondsInState(rt: TargetRuntime): Record<RportState, number> {
  const times = { ...rt.stats.timeInState };
  if (rt.port) times[rt.port.state] += (Date.now() - rt.stats.stateSince) / 1000;
  return times;
}
