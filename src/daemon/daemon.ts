/**
 * The srp-nbd daemon: one process owning every target session and every export.
 *
 * attach: target address → connector (in-process test target, or the RDMA/CM connector) → SrpPort
 * (login, rport FSM, I/O gate) → REPORT LUNS → one LunBackend per LUN, measured by a MeteredBackend
 * → an export `<target-id>-lun<N>` on the daemon's NBD unix socket → optionally /dev/nbdN through
 * NBD netlink. The attached set is persisted (StateStore) after every change; at start it is
 * re-attached under the same export names and devices, each LUN's identity checked against the
 * recorded one (a different disk is never exported under the old name).
 *
 * Every operation the API offers is a method here, throwing DaemonError with an HTTP status and a
 * message naming the target; the REST layer (api.ts) only maps requests to these methods. What md
 * should do about a device is decided by each target's MdReaddPolicy (md.ts), told of attach and
 * path changes here; GET /metrics is rendered by metrics.ts from a snapshot taken here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { type ChannelConnector, SrpPort, type SrpPortOptions } from '../fsm/srp-port.js';
import { LunBackend } from '../fsm/lun-backend.js';
import { RPORT_STATES, type RportState } from '../fsm/rport.js';
import { formatTmo, type TmoParams, validateTmo } from '../fsm/timers.js';
import { samToLun } from '../initiator/scsi-cdb.js';
import { reportLuns } from '../initiator/scsi-disk.js';
import { describeIdentity, identityFromJSON, identityToJSON, type LunIdentity, sameIdentity } from '../initiator/lun-identity.js';
import type { SrpTargetAddress } from '../initiator/target-address.js';
import { tryLoadNative } from '../native/native.js';
import { attach as nbdAttach, detach as nbdDetach, type NbdAttachment, NbdNetlink, type NetlinkBinding, reattach as nbdReattach } from '../nbd/netlink.js';
import { NbdServer } from '../nbd/server.js';
import { TEST_INITIATOR_PORT_ID, TEST_TARGET_PORT_ID } from '../testing/test-fabric.js';
import { type AnyAddress, deriveTargetId, formatAnyAddress, parseAnyAddress } from './address.js';
import { type DaemonConfig, overridesOf, resolveOptions, type TargetOptions, type TargetOverrides, type TargetSpec, tmoOf } from './config.js';
import { type MdMembership, mdMemberships, MdReaddPolicy } from './md.js';
import { IO_OPS, MeteredBackend, renderMetrics, type TargetMetrics } from './metrics.js';
import { type PersistedLun, type PersistedTarget, StateStore } from './state.js';
import { createTestFabric } from './test-target.js';

export const VERSION = '0.1.0';

/** A refused or failed operation: HTTP status for the API, message naming the target and the problem. */
export class DaemonError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'DaemonError';
  }
}

/** Lifecycle of a target inside the daemon (the rport state says how its path is). */
export type TargetStatus = 'connecting' | 'attached' | 'failed';

interface LunRuntime {
  sam: bigint;
  number: number;
  exportName: string;
  backendId: string;
  device: string | null;
  deviceNote?: string;
  identity: LunIdentity;
  backend: MeteredBackend;
  attachment?: NbdAttachment;
  /** md membership of the device as last read (refreshed asynchronously by status and metrics). */
  md: MdMembership[];
}

interface TargetStats {
  stateSince: number;
  timeInState: Record<RportState, number>;
  reconnectAttempts: number;
  reconnects: number;
  failedReconnectsTotal: number;
}

interface TargetRuntime {
  id: string;
  address: AnyAddress;
  addressText: string;
  overrides: TargetOverrides;
  options: TargetOptions;
  attachedAt: string;
  status: TargetStatus;
  error?: string;
  connectorDescription?: string;
  port?: SrpPort;
  closeTransport?: () => void;
  luns: LunRuntime[];
  /** LUNs as persisted: the export names, devices and identities a (re-)attach must reproduce. */
  persisted: PersistedLun[];
  stats: TargetStats;
  restoreTimer?: NodeJS.Timeout;
  restoreAttempt: number;
  removed: boolean;
  /** When to re-add the target's devices to md arrays that failed them (told of attach and path changes). */
  md: MdReaddPolicy;
  log: Logger;
}

/**
 * Loads the RDMA/CM connector module: the one place that names its path. Loaded at the first
 * attach of an RDMA address, so a daemon serving only test targets never loads the RDMA stack, and
 * a module that cannot be loaded fails that attach (503), not the daemon. (The module loads the
 * native addon only when a connector is created; without the addon that attach fails with what to
 * build.)
 */
const loadRdmaConnector = () => import('../initiator/rdma/index.js');

/** What the daemon uses of the RDMA/CM connector module. */
export type RdmaConnectorModule = Pick<Awaited<ReturnType<typeof loadRdmaConnector>>, 'createRdmaConnector'>;

export interface DaemonOptions {
  config: DaemonConfig;
  logger: Logger;
  /** Loads the RDMA/CM connector module; default loadRdmaConnector. */
  loadRdma?: () => Promise<RdmaConnectorModule>;
  /** sysfs root for md membership (tests use a fake tree); default /sys. */
  sysfs?: string;
}

/** How long NBD_CMD_DISCONNECT may wait for the kernel before the device's connection is closed under it. */
const DISCONNECT_GRACE_MS = 1000;

const emptyTimes = (): Record<RportState, number> => Object.fromEntries(RPORT_STATES.map((s) => [s, 0])) as Record<RportState, number>;
const hex16 = (n: bigint): string => n.toString(16).padStart(16, '0');

export class Daemon {
  readonly nbd: NbdServer;
  readonly store: StateStore;
  private readonly targets = new Map<string, TargetRuntime>();
  private readonly log: Logger;
  private netlink: Promise<{ nl: NbdNetlink; b: NetlinkBinding }> | undefined;
  private readonly startedAt = Date.now();
  private closing = false;

  constructor(private readonly opts: DaemonOptions) {
    this.log = opts.logger;
    this.nbd = new NbdServer({ logger: opts.logger.child({ component: 'nbd' }) });
    this.store = new StateStore(opts.config.state_dir);
  }

  get config(): DaemonConfig {
    return this.opts.config;
  }

  /**
   * Listens on the NBD socket, re-attaches the persisted set (first attempt awaited; unreachable
   * targets keep retrying in the background), then attaches config targets not yet known.
   */
  async start(): Promise<void> {
    const cfg = this.opts.config;
    const persisted = this.store.load(); // a damaged state file stops the start: never guess
    fs.mkdirSync(path.dirname(cfg.nbd_socket), { recursive: true, mode: 0o755 });
    await this.nbd.listenUnix(cfg.nbd_socket, 0o600);
    this.log.info({ socket: cfg.nbd_socket }, 'NBD exports on unix socket');
    const firsts: Promise<void>[] = [];
    for (const p of persisted.targets) {
      let address: AnyAddress;
      try {
        address = parseAnyAddress(p.address);
      } catch (e) {
        this.log.error({ target: p.id, address: p.address, err: (e as Error).message }, 'persisted target has an invalid address; skipped (detach it to drop it)');
        continue;
      }
      const rt = this.newRuntime(p.id, address, p.overrides as TargetOverrides, p.luns, p.attachedAt);
      this.targets.set(rt.id, rt);
      rt.log.info({ luns: p.luns.map((l) => ({ export: l.export, device: l.device })) }, 're-attaching persisted target');
      firsts.push(this.connectWithRetry(rt));
    }
    for (const spec of cfg.targets) {
      const address = parseAnyAddress(spec.address);
      const id = spec.id ?? deriveTargetId(address);
      if (this.targets.has(id)) continue;
      const rt = this.newRuntime(id, address, overridesOf(spec), [], new Date().toISOString());
      this.targets.set(id, rt);
      rt.log.info('attaching target from the configuration');
      firsts.push(this.connectWithRetry(rt));
    }
    await Promise.all(firsts);
    this.persist();
  }

  /** Stops serving; kernel devices are left configured (the next start takes them back with RECONFIGURE). */
  async close(): Promise<void> {
    this.closing = true;
    for (const rt of this.targets.values()) {
      clearTimeout(rt.restoreTimer);
      rt.md.cancel();
    }
    await this.nbd.close();
    await Promise.all([...this.targets.values()].map(async (rt) => {
      await rt.port?.close().catch(() => undefined);
      rt.closeTransport?.();
    }));
    if (this.netlink) {
      await this.netlink.then(({ nl }) => nl.close(), () => undefined);
    }
  }

  /* ------------------------------------------------------------------ operations */

  /** Attaches a target (POST /targets). The spec has been validated by targetSpecSchema. */
  async attach(spec: TargetSpec): Promise<TargetView> {
    if (this.closing) throw new DaemonError('the daemon is shutting down', 503);
    const address = parseAnyAddress(spec.address);
    const id = spec.id ?? deriveTargetId(address);
    if (this.targets.has(id)) throw new DaemonError(`target ${id} is already attached (detach it first, or give another id)`, 409);
    const text = formatAnyAddress(address);
    for (const other of this.targets.values()) {
      if (other.addressText === text) throw new DaemonError(`target ${id}: ${text} is already attached as ${other.id}`, 409);
    }
    const overrides = overridesOf(spec as Record<string, unknown>);
    const rt = this.newRuntime(id, address, overrides, [], new Date().toISOString());
    const problems = validateTmo(tmoOf(rt.options));
    if (problems.length > 0) {
      throw new DaemonError(`target ${id}: ${problems.map((p) => p.message).join('; ')}`, 400, problems.map((p) => ({ path: p.params[0], rule: p.rule, message: p.message })));
    }
    this.targets.set(id, rt);
    try {
      await this.connect(rt);
    } catch (e) {
      this.targets.delete(id);
      await this.teardown(rt, false);
      throw e instanceof DaemonError ? e : new DaemonError(`target ${id}: attach failed: ${(e as Error).message}`, 502);
    }
    this.persist();
    return this.view(rt);
  }

  /** Detaches a target (DELETE /targets/:id): the only way its exports and devices go away. */
  async detach(id: string): Promise<void> {
    const rt = this.get(id);
    this.targets.delete(id);
    rt.removed = true;
    clearTimeout(rt.restoreTimer);
    rt.md.cancel();
    await this.teardown(rt, true);
    this.persist();
    rt.log.info('target detached');
  }

  list(): TargetSummary[] {
    return [...this.targets.values()].map((rt) => this.summary(rt));
  }

  async status(id: string): Promise<TargetView> {
    const rt = this.get(id);
    await this.refreshMd([rt]);
    return this.view(rt);
  }

  /** Changes timers at runtime (PATCH /targets/:id); the combination is checked by validateTmo. */
  setTimers(id: string, patch: Partial<Pick<TargetOptions, 'reconnect_delay' | 'reconnect_delay_max' | 'fast_io_fail_tmo' | 'dev_loss_tmo'>>): TargetView {
    const rt = this.get(id);
    const next = { ...rt.options, ...definedOnly(patch) } as TargetOptions;
    const problems = validateTmo(tmoOf(next));
    if (problems.length > 0) {
      throw new DaemonError(`target ${id}: ${problems.map((p) => p.message).join('; ')}`, 400, problems.map((p) => ({ path: p.params[0], rule: p.rule, message: p.message })));
    }
    rt.port?.rport.setTimeouts(tmoOf(next));
    rt.options = next;
    rt.overrides = { ...rt.overrides, ...definedOnly(patch) };
    rt.log.info({ timers: timersOf(next) }, 'timers changed');
    this.persist();
    return this.view(rt);
  }

  /** Reconnects now (POST /targets/:id/reconnect): from lost too; a target not yet connected retries at once. */
  reconnect(id: string): TargetView {
    const rt = this.get(id);
    if (rt.port) {
      rt.log.info({ state: rt.port.state }, 'reconnect requested');
      rt.port.reconnectNow();
    } else {
      rt.log.info({ status: rt.status }, 'reconnect requested: connecting now');
      clearTimeout(rt.restoreTimer);
      rt.restoreTimer = undefined;
      rt.status = 'connecting';
      void this.connectWithRetry(rt);
    }
    return this.view(rt);
  }

  health(): { status: 'ok'; version: string; uptime_s: number; targets: number } {
    return { status: 'ok', version: VERSION, uptime_s: Math.round((Date.now() - this.startedAt) / 1000), targets: this.targets.size };
  }

  /* ------------------------------------------------------------------ attach machinery */

  private newRuntime(id: string, address: AnyAddress, overrides: TargetOverrides, persisted: PersistedLun[], attachedAt: string): TargetRuntime {
    const log = this.log.child({ target: id });
    const rt: TargetRuntime = {
      id,
      address,
      addressText: formatAnyAddress(address),
      overrides,
      options: resolveOptions(this.opts.config.defaults as TargetOptions, overrides),
      attachedAt,
      status: 'connecting',
      luns: [],
      persisted,
      stats: {
        stateSince: Date.now(),
        timeInState: emptyTimes(),
        reconnectAttempts: 0,
        reconnects: 0,
        failedReconnectsTotal: 0,
      },
      restoreAttempt: 0,
      removed: false,
      md: new MdReaddPolicy({
        log,
        readdEnabled: () => rt.options.md_readd,
        active: () => !rt.removed && !this.closing,
        running: () => rt.port?.state === 'running',
        *devices() {
          for (const l of rt.luns) if (l.device) yield { device: l.device, connected: l.attachment !== undefined };
        },
      }, { sysfs: this.opts.sysfs }),
      log,
    };
    return rt;
  }

  /** A start-time (re-)attach: retried with the target's back-off until it works, it is detached, or an identity check fails. */
  private async connectWithRetry(rt: TargetRuntime): Promise<void> {
    if (rt.removed || this.closing) return;
    rt.restoreAttempt++;
    try {
      await this.connect(rt);
      rt.restoreAttempt = 0;
      this.persist();
    } catch (e) {
      const err = e as Error;
      rt.error = err.message;
      await this.teardown(rt, false);
      if (rt.removed || this.closing) return;
      if (e instanceof IdentityCheckError || (e instanceof DaemonError && e.status === 503)) {
        rt.status = 'failed';
        rt.log.error({ err: err.message }, 'target not attached; fix the cause, then `srp-nbd reconnect` or `srp-nbd detach` it');
        return;
      }
      rt.status = 'connecting';
      const o = rt.options;
      const base = o.reconnect_delay === 'off' ? o.reconnect_delay_max : o.reconnect_delay;
      const delay = Math.min(o.reconnect_delay_max, base * 2 ** Math.min(rt.restoreAttempt - 1, 20));
      rt.log.warn({ attempt: rt.restoreAttempt, delayS: delay, err: err.message }, `connect attempt ${rt.restoreAttempt} failed, next in ${delay.toFixed(1)} s`);
      rt.restoreTimer = setTimeout(() => {
        rt.restoreTimer = undefined;
        void this.connectWithRetry(rt);
      }, delay * 1000);
    }
  }

  /** Logs in, finds the LUNs, checks identities against the persisted ones, exports them, attaches devices. */
  private async connect(rt: TargetRuntime): Promise<void> {
    const o = rt.options;
    let connector: ChannelConnector;
    let ids: { initiatorPortId: Buffer; targetPortId: Buffer };
    if (rt.address.kind === 'test') {
      const { fabric, close } = await createTestFabric(rt.address.spec, this.config.state_dir);
      rt.closeTransport = close;
      connector = fabric;
      ids = { initiatorPortId: TEST_INITIATOR_PORT_ID, targetPortId: TEST_TARGET_PORT_ID };
    } else {
      const made = await this.rdmaConnector(rt, rt.address.addr);
      rt.closeTransport = made.close;
      connector = made.connector;
      ids = made;
    }
    rt.connectorDescription = connector.description;
    const portOpts: SrpPortOptions = {
      name: rt.id,
      connector,
      session: { ...ids, queueSize: o.queue_size, immediateData: o.immediate_data, commandTimeoutMs: o.command_timeout * 1000 },
      tmo: tmoOf(o),
      queueDepth: o.max_hold_queue,
      commandTimeoutMs: o.command_timeout * 1000,
      logger: this.log,
    };
    rt.log.info({ via: connector.description }, 'logging in');
    const port = await SrpPort.connect(portOpts);
    rt.port = port;
    if (rt.removed) throw new Error('detached while connecting');
    this.follow(rt, port);
    const sams = await reportLuns(port.executor);
    const luns: LunRuntime[] = [];
    const mismatches: string[] = [];
    for (const sam of sams) {
      const disk = await port.addLun(sam);
      const identity = disk.probeResult!.identity;
      const number = lunNumber(sam);
      const before = rt.persisted.find((p) => p.lun === hex16(sam));
      if (before) {
        const cmp = sameIdentity(identityFromJSON(before.identity), identity);
        if (!cmp.same) {
          mismatches.push(`LUN ${number} (export ${before.export}): ${cmp.differences.join('; ')}`);
          continue;
        }
        rt.log.info({ lun: number, export: before.export, identity: describeIdentity(identity) }, 'identity check passed: same LUN as before');
      }
      const exportName = before?.export ?? `${rt.id}-lun${number}`;
      const lunBackend = new LunBackend(port, disk, `${rt.id} LUN ${number}: ${describeIdentity(identity)}`);
      luns.push({
        sam,
        number,
        exportName,
        backendId: before?.backendId ?? `srp-nbd:${exportName}`,
        device: before?.device ?? null,
        identity,
        backend: new MeteredBackend(lunBackend),
        md: [],
      });
    }
    for (const p of rt.persisted) {
      if (!sams.some((s) => hex16(s) === p.lun)) mismatches.push(`LUN ${p.lun} (export ${p.export}) is no longer reported by the target`);
    }
    if (mismatches.length > 0) {
      rt.log.error({ mismatches }, 'identity check failed: not exporting a different disk under the old name');
      throw new IdentityCheckError(`target ${rt.id}: identity check failed: ${mismatches.join('; ')}`);
    }
    for (const l of luns) this.nbd.addExport(l.exportName, l.backend);
    rt.luns = luns;
    await this.attachDevices(rt);
    rt.status = 'attached';
    rt.error = undefined;
    rt.persisted = this.persistedLuns(rt);
    rt.log.info({ luns: luns.map((l) => ({ lun: l.number, export: l.exportName, device: l.device, size: l.backend.size })) }, 'target attached');
    rt.md.onAttached(); // a member md failed while we were away (restart after a long outage)
  }

  private async rdmaConnector(rt: TargetRuntime, addr: SrpTargetAddress): Promise<{ connector: ChannelConnector; initiatorPortId: Buffer; targetPortId: Buffer; close?: () => void }> {
    let mod: RdmaConnectorModule;
    try {
      mod = await (this.opts.loadRdma ?? loadRdmaConnector)();
    } catch (e) {
      const cause = (e as Error).message;
      const why = `the RDMA/CM connector module cannot be loaded (${cause}): rebuild srp-nbd (npm run build)`;
      throw new DaemonError(`target ${rt.id}: RDMA transport not available: ${why}`, 503);
    }
    if (addr.transport === 'ib-cm') {
      throw new DaemonError(`target ${rt.id}: RDMA transport not available for IB CM addressing (dgid/pkey/service_id); use dest=IP:port (RDMA/CM)`, 503);
    }
    try {
      return await mod.createRdmaConnector(addr, { ackTimeout: rt.options.ack_timeout, retryCount: rt.options.retry_count, keepaliveIntervalMs: rt.options.keepalive_interval * 1000, logger: rt.log });
    } catch (e) {
      throw new DaemonError(`target ${rt.id}: RDMA transport not available: ${(e as Error).message}`, 503);
    }
  }

  /** Kernel devices per the target's `device` option (and the persisted ones on restart). */
  private async attachDevices(rt: TargetRuntime): Promise<void> {
    const want = rt.options.device;
    for (const [i, l] of rt.luns.entries()) {
      const restoreIndex = l.device ? Number(/\d+$/.exec(l.device)![0]) : undefined;
      if (restoreIndex === undefined && want === 'none') continue;
      const fixed = restoreIndex ?? (want.startsWith('/dev/nbd') ? Number(want.slice(8)) + i : undefined);
      let nb: { nl: NbdNetlink; b: NetlinkBinding };
      try {
        nb = await this.kernelNbd();
      } catch (e) {
        const reason = (e as Error).message;
        if (fixed !== undefined && restoreIndex === undefined) {
          throw new DaemonError(`target ${rt.id}: cannot attach ${want}: ${reason}`, 503);
        }
        l.deviceNote = `no kernel device: ${reason}`;
        if (restoreIndex !== undefined) rt.log.error({ device: l.device, err: reason }, 'cannot take the kernel device back');
        else rt.log.warn({ export: l.exportName, err: reason }, 'device auto: kernel NBD not available, exporting on the unix socket only');
        continue;
      }
      const common = { server: this.nbd, exportName: l.exportName, backendId: l.backendId, deadConnTimeoutSec: rt.options.dead_conn_timeout };
      if (restoreIndex !== undefined) {
        try {
          l.attachment = await nbdReattach(nb.nl, nb.b, { ...common, index: restoreIndex });
          rt.log.info({ device: l.attachment.device, export: l.exportName }, 'kernel device taken back (RECONFIGURE)');
          continue;
        } catch (e) {
          rt.log.warn({ device: l.device, err: (e as Error).message }, 'RECONFIGURE refused; connecting the device anew');
        }
      }
      l.attachment = await nbdAttach(nb.nl, nb.b, { ...common, ...(fixed !== undefined ? { index: fixed } : {}) });
      l.device = l.attachment.device;
      rt.log.info({ device: l.device, export: l.exportName }, 'kernel device attached (CONNECT)');
    }
  }

  private kernelNbd(): Promise<{ nl: NbdNetlink; b: NetlinkBinding }> {
    this.netlink ??= (async () => {
      const b = tryLoadNative();
      if (!b) throw new Error('the native addon is not built (npm run build:native)');
      // Without it, NBD netlink requests would block the event loop (and a detach could deadlock).
      if (typeof b.netlinkSendAsync !== 'function') throw new Error('the native addon is out of date (no netlinkSendAsync): npm run build:native');
      return { nl: await NbdNetlink.open(b), b };
    })();
    const p = this.netlink;
    p.catch(() => {
      if (this.netlink === p) this.netlink = undefined; // try again next time (modprobe nbd)
    });
    return p;
  }

  /** Undoes connect(): exports, devices (only when `removeDevices`), the port, the transport. */
  private async teardown(rt: TargetRuntime, removeDevices: boolean): Promise<void> {
    rt.md.cancel();
    for (const l of rt.luns) {
      if (!l.attachment) continue;
      if (removeDevices) {
        try {
          const nb = await this.kernelNbd();
          const device = l.device;
          await nbdDetach(nb.nl, l.attachment, DISCONNECT_GRACE_MS, () =>
            rt.log.warn({ device }, 'the kernel is still sending on the device (its I/O is held here): closing the connection so that the disconnect completes'),
          );
        } catch (e) {
          rt.log.warn({ device: l.device, err: (e as Error).message }, 'NBD_CMD_DISCONNECT failed');
        }
      }
      l.attachment.connection.close();
    }
    // Devices gone (the kernel has failed their requests): held I/O ends now, not at
    // fast_io_fail_tmo. Devices kept (daemon stop) keep the port until their connections have
    // answered what they hold.
    if (removeDevices) await this.closePort(rt);
    for (const l of rt.luns) await this.nbd.removeExport(l.exportName);
    rt.luns = [];
    await this.closePort(rt);
  }

  private async closePort(rt: TargetRuntime): Promise<void> {
    const port = rt.port;
    rt.port = undefined;
    await port?.close().catch(() => undefined);
    rt.closeTransport?.();
    rt.closeTransport = undefined;
  }

  /** Reads the md membership of every device of `rts` into the LUNs' cache (for status and metrics). */
  private async refreshMd(rts: Iterable<TargetRuntime>): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (const rt of rts) {
      for (const l of rt.luns) {
        const device = l.device;
        jobs.push(device ? mdMemberships(device, this.opts.sysfs).then((m) => void (l.md = m)) : Promise.resolve());
      }
    }
    await Promise.all(jobs);
  }

  /** Follows the rport for statistics and the operator's log lines. */
  private follow(rt: TargetRuntime, port: SrpPort): void {
    rt.stats.stateSince = Date.now();
    port.rport.subscribe((a) => {
      const s = rt.stats;
      switch (a.type) {
        case 'state-changed': {
          const now = Date.now();
          s.timeInState[a.from] += (now - s.stateSince) / 1000;
          s.stateSince = now;
          if (a.to === 'running' && (a.from === 'blocked' || a.from === 'fail-fast')) s.reconnects++;
          if (a.from === 'running' && a.to !== 'running') rt.md.onPathDown();
          if (a.to === 'running') rt.md.onPathReturned(a.from);
          if (a.cause === 'fast-io-fail-tmo' || a.cause === 'dev-loss-tmo') {
            const secs = a.cause === 'fast-io-fail-tmo' ? rt.options.fast_io_fail_tmo : rt.options.dev_loss_tmo;
            rt.log.warn({ timer: a.cause, seconds: secs, state: a.to }, `${a.cause === 'fast-io-fail-tmo' ? 'fast_io_fail_tmo' : 'dev_loss_tmo'} (${formatTmo(secs)} s) expired: state ${a.to}`);
          }
          break;
        }
        case 'reconnect':
          s.reconnectAttempts++;
          break;
        case 'reconnect-scheduled':
          if (a.attempt > 1) s.failedReconnectsTotal++;
          break;
        default:
          break;
      }
    });
  }

  private get(id: string): TargetRuntime {
    const rt = this.targets.get(id);
    if (!rt) throw new DaemonError(`target ${id}: no such target (srp-nbd list shows the attached ones)`, 404);
    return rt;
  }

  private persistedLuns(rt: TargetRuntime): PersistedLun[] {
    return rt.luns.map((l) => ({ lun: hex16(l.sam), export: l.exportName, device: l.device, backendId: l.backendId, identity: identityToJSON(l.identity) as PersistedLun['identity'] }));
  }

  private persist(): void {
    const targets: PersistedTarget[] = [...this.targets.values()].map((rt) => ({
      id: rt.id,
      address: rt.addressText,
      overrides: rt.overrides as Record<string, unknown>,
      attachedAt: rt.attachedAt,
      luns: rt.status === 'attached' ? this.persistedLuns(rt) : rt.persisted,
    }));
    this.store.save({ version: 1, targets });
  }

  /* ------------------------------------------------------------------ views */

  private summary(rt: TargetRuntime): TargetSummary {
    return {
      id: rt.id,
      status: rt.status,
      state: rt.port?.state ?? null,
      address: rt.addressText,
      luns: (rt.status === 'attached' ? rt.luns.map((l) => ({ export: l.exportName, device: l.device })) : rt.persisted.map((l) => ({ export: l.export, device: l.device }))),
      ...(rt.error !== undefined ? { error: rt.error } : {}),
    };
  }

  private view(rt: TargetRuntime): TargetView {
    const port = rt.port;
    const c = port?.sessionCounters;
    const times = this.secondsInState(rt);
    const g = port?.gate.stats;
    return {
      ...this.summary(rt),
      transport: rt.address.kind === 'test' ? 'test-target' : rt.address.addr.transport,
      via: rt.connectorDescription ?? null,
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
      },
      credits: c ? { req_lim: c.reqLim, granted_total: c.creditsGranted, zero_req_lim_total: c.zeroReqLim } : null,
      io: g ? { in_flight: g.inFlight, held: g.held, waiting: g.waiting, released_total: g.released, replayed_total: g.retried, failed_eio_total: g.failedEio } : null,
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
          }
        : null,
      time_in_state_s: Object.fromEntries(Object.entries(times).map(([k, v]) => [k, Math.round(v * 1000) / 1000])),
      lun_details: rt.luns.map((l) => ({
        lun: l.number,
        export: l.exportName,
        uri: `nbd+unix:///${l.exportName}?socket=${this.opts.config.nbd_socket}`,
        device: l.device,
        md: l.md,
        ...(l.deviceNote ? { device_note: l.deviceNote } : {}),
        size: l.backend.size,
        block_size: l.backend.blockSize.minimum,
        identity: describeIdentity(l.identity),
        io: Object.fromEntries(IO_OPS.map((op) => {
          const s = l.backend.stats[op];
          return [op, { ops: s.ops, bytes: s.bytes, errors: s.errors }];
        })),
      })),
    };
  }

  /** Prometheus exposition text (GET /metrics). */
  async metrics(): Promise<string> {
    await this.refreshMd(this.targets.values());
    return renderMetrics({ version: VERSION, targets: [...this.targets.values()].map((rt) => this.metricsOf(rt)) });
  }

  /** One target as GET /metrics reports it. */
  private metricsOf(rt: TargetRuntime): TargetMetrics {
    const port = rt.port;
    return {
      id: rt.id,
      attached: rt.status === 'attached',
      state: port?.state,
      secondsInState: this.secondsInState(rt),
      reconnectAttempts: rt.stats.reconnectAttempts,
      reconnects: rt.stats.reconnects,
      failedReconnects: port?.rport.failedReconnects ?? 0,
      failedReconnectsTotal: rt.stats.failedReconnectsTotal,
      logins: port?.logins ?? 0,
      session: port?.sessionCounters,
      io: port?.gate.stats,
      mdReadds: rt.md.readds,
      luns: rt.luns.map((l) => ({ export: l.exportName, md: l.md, stats: l.backend.stats })),
    };
  }

  /** Seconds spent in each rport state, the current stretch included. */
  private secondsInState(rt: TargetRuntime): Record<RportState, number> {
    const times = { ...rt.stats.timeInState };
    if (rt.port) times[rt.port.state] += (Date.now() - rt.stats.stateSince) / 1000;
    return times;
  }
}

/** A LUN behind the new login is not the one recorded: the target stays unexported. */
export class IdentityCheckError extends Error {
  override readonly name = 'IdentityCheckError';
}

/** Row of GET /targets. */
export interface TargetSummary {
  id: string;
  status: TargetStatus;
  state: RportState | null;
  address: string;
  luns: { export: string; device: string | null }[];
  error?: string;
}

/** GET /targets/:id. */
export interface TargetView extends TargetSummary {
  transport: string;
  via: string | null;
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
  };
  credits: { req_lim: number; granted_total: number; zero_req_lim_total: number } | null;
  io: { in_flight: number; held: number; waiting: number; released_total: number; replayed_total: number; failed_eio_total: number } | null;
  session: Record<string, number> | null;
  time_in_state_s: Record<string, number>;
  lun_details: {
    lun: number;
    export: string;
    uri: string;
    device: string | null;
    /** md arrays holding the device (/sys/block/nbdN/holders) and its state in each. */
    md: MdMembership[];
    device_note?: string;
    size: number;
    block_size: number;
    identity: string;
    io: Record<string, { ops: number; bytes: number; errors: number }>;
  }[];
}

function timersOf(o: TargetOptions): TargetView['timers'] {
  return { reconnect_delay: o.reconnect_delay, reconnect_delay_max: o.reconnect_delay_max, fast_io_fail_tmo: o.fast_io_fail_tmo, dev_loss_tmo: o.dev_loss_tmo };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function lunNumber(sam: bigint): number {
  try {
    return samToLun(sam);
  } catch {
    return Number(sam >> 48n);
  }
}

export type { TmoParams };
