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
 * Multipath (docs/multipath.md): one target is one path. A LUN whose logical unit (logicalUnitKey)
 * is already exported through another target joins that LU as a path (a LuGroup: the owner's
 * LunRuntime holds the export and device, a MultipathGate spreads the I/O over the paths' rports)
 * when both targets allow multipath; otherwise it is refused. A detached owner hands the export and
 * device to the next path; the last path takes them away.
 *
 * Every operation the API offers is a method here, throwing DaemonError with an HTTP status and a
 * message naming the target; the REST layer (api.ts) only maps requests to these methods. What md
 * should do about a device is decided by each target's MdReaddPolicy (md.ts), told of attach and
 * path changes here; GET /metrics is rendered by metrics.ts from a snapshot taken here.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { type ChannelConnector, type LunEvent, SrpPort, type SrpPortOptions } from '../fsm/srp-port.js';
import { LunBackend } from '../fsm/lun-backend.js';
import { MultipathGate } from '../fsm/multipath.js';
import { defaultIsTransportError } from '../fsm/gate.js';
import { TransportError } from '../initiator/scsi-executor.js';
import type { Rport } from '../fsm/rport.js';
import { formatTmo, type TmoParams, validateTmo } from '../fsm/timers.js';
import { samToLun } from '../initiator/scsi-cdb.js';
import { reportLuns, type ScsiDisk } from '../initiator/scsi-disk.js';
import {
  describeIdentity,
  designatorString,
  identityFromJSON,
  identityToJSON,
  logicalUnitKey,
  type LunIdentity,
  sameIdentity,
} from '../initiator/lun-identity.js';
import type { SrpTargetAddress } from '../initiator/target-address.js';
import { tryLoadNative } from '../native/native.js';
import {
  attach as nbdAttach,
  type AttachOptions,
  detach as nbdDetach,
  type NbdAttachment,
  NbdNetlink,
  reattach as nbdReattach,
} from '../nbd/netlink.js';
import { NbdServer } from '../nbd/server.js';
import type { TestFabric } from '../testing/test-fabric.js';
import { type AnyAddress, deriveTargetId, formatAnyAddress, parseAnyAddress } from './address.js';
import { addTargetConflicts, addTargetTuning, applyTuning } from './add-target-options.js';
import {
  type DaemonConfig,
  overridesOf,
  resolveOptions,
  type TargetOptions,
  type TargetOverrides,
  type TargetSpec,
  tmoOf,
} from './config.js';
import { limitDeviceIo, setDeviceIoTimeout } from './device-limits.js';
import { mdMemberships, MdReaddPolicy } from './md.js';
import { type LunChange, MeteredBackend, renderMetrics } from './metrics.js';
import type { MemoryReport } from './memory.js';
import { BY_ID_DIR, byIdName, type Resolved, resolveName, UnknownNameError } from './names.js';
import { type PersistedLun, type PersistedTarget, StateStore } from './state.js';
import {
  emptyTimes,
  type FoundLun,
  type LuGroup,
  type LunRuntime,
  type PathLun,
  type TargetRuntime,
} from './runtime.js';
import {
  type DetachResult,
  type LunView,
  type PathsResult,
  luView,
  metricsOf,
  pathViews,
  persistedById,
  soloLu,
  type TargetLookup,
  targetSummary,
  type TargetSummary,
  targetView,
  type TargetView,
  timersOf,
} from './views.js';

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
  /**
   * The kernel NBD driver (tests use src/testing/mock-nbd-kernel.ts); default: NBD netlink through
   * the native addon, opened at the first device attach (a failure is retried at the next one).
   */
  nbdKernel?: () => Promise<NbdKernel>;
}

/** What the daemon does with kernel NBD devices: CONNECT, RECONFIGURE (take back), DISCONNECT. */
export interface NbdKernel {
  attach(opts: AttachOptions): Promise<NbdAttachment>;
  reattach(opts: AttachOptions & { index: number }): Promise<NbdAttachment>;
  detach(att: NbdAttachment, graceMs: number, onAbort?: () => void): Promise<void>;
  /** NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES (Linux >= 5.3). */
  resize(att: NbdAttachment, sizeBytes: number): Promise<void>;
  close(): void;
}

/** How long NBD_CMD_DISCONNECT may wait for the kernel before the device's connection is closed under it. */
const DISCONNECT_GRACE_MS = 1000;

const hex16 = (n: bigint): string => n.toString(16).padStart(16, '0');

export class Daemon {
  readonly nbd: NbdServer;
  readonly store: StateStore;
  private readonly targets = new Map<string, TargetRuntime>();
  /** Exported LUs by logicalUnitKey: where a further path to one of them joins. */
  private readonly lus = new Map<string, LuGroup>();
  /**
   * Persisted targets the daemon cannot run (an address that no longer parses, a test target
   * while test targets are disabled): kept in state.json as they are, listed as failed, dropped
   * only by `detach`.
   */
  private readonly unusable = new Map<string, { persisted: PersistedTarget; error: string }>();
  private readonly log: Logger;
  private netlink: Promise<NbdKernel> | undefined;
  private readonly startedAt = Date.now();
  private closing = false;
  /** The memory protections applied (memory.ts), set by the daemon command. */
  memory: MemoryReport | null = null;

  constructor(private readonly opts: DaemonOptions) {
    this.log = opts.logger;
    this.nbd = new NbdServer({ logger: opts.logger.child({ component: 'nbd' }) });
    this.store = new StateStore(opts.config.state_dir);
  }

  get config(): DaemonConfig {
    return this.opts.config;
  }

  /**
   * Resolves when every target of the start (persisted and configured) is attached or its first
   * attempt failed (unreachable targets keep retrying in the background); set by start().
   */
  settled: Promise<void> = Promise.resolve();

  /**
   * Listens on the NBD socket, re-attaches the persisted set, then attaches config targets not
   * yet known; with `waitForTargets` (the default) it returns once they are `settled`.
   */
  async start(opts: { waitForTargets?: boolean } = {}): Promise<void> {
    const cfg = this.opts.config;
    const persisted = this.store.load(); // a damaged state file stops the start: never guess
    fs.mkdirSync(path.dirname(cfg.nbd_socket), { recursive: true, mode: 0o755 });
    await this.nbd.listenUnix(cfg.nbd_socket, 0o600);
    this.log.info({ socket: cfg.nbd_socket }, 'NBD exports on unix socket');
    const firsts: Promise<void>[] = [];
    for (const p of persisted.targets) {
      if (this.targets.has(p.id) || this.unusable.has(p.id)) {
        this.log.error(
          { target: p.id, entry: p },
          'state.json holds this id twice: the later entry is ignored (and not saved again)',
        );
        continue;
      }
      let address: AnyAddress;
      try {
        address = parseAnyAddress(p.address);
        this.checkTestTargetAllowed(address);
        if (address.kind === 'srp') {
          const refused = addTargetTuning(address.addr).refused;
          if (refused.length > 0) throw new Error(refused.map((r) => r.message).join('; '));
        }
      } catch (e) {
        const error = (e as Error).message;
        this.unusable.set(p.id, { persisted: p, error });
        this.log.error(
          { target: p.id, address: p.address, err: error },
          'persisted target not attached: kept in state.json (`srp-nbd detach` drops it)',
        );
        continue;
      }
      const rt = this.newRuntime(p.id, address, p.overrides as TargetOverrides, p.luns, p.attachedAt);
      this.targets.set(rt.id, rt);
      rt.log.info(
        { luns: p.luns.map((l) => ({ export: l.export, device: l.device })) },
        're-attaching persisted target',
      );
      firsts.push(this.connectWithRetry(rt));
    }
    for (const spec of cfg.targets) {
      const address = parseAnyAddress(spec.address);
      const id = spec.id ?? deriveTargetId(address);
      if (this.targets.has(id) || this.unusable.has(id)) continue;
      try {
        this.checkTestTargetAllowed(address);
      } catch (e) {
        this.log.error({ target: id, err: (e as Error).message }, 'target of the configuration not attached');
        continue;
      }
      const rt = this.newRuntime(id, address, overridesOf(spec), [], new Date().toISOString());
      this.targets.set(id, rt);
      rt.log.info('attaching target from the configuration');
      firsts.push(this.connectWithRetry(rt));
    }
    this.settled = Promise.all(firsts).then(() => this.persist());
    if (opts.waitForTargets !== false) await this.settled;
  }

  /** Stops serving; kernel devices are left configured (the next start takes them back with RECONFIGURE). */
  async close(): Promise<void> {
    this.closing = true;
    for (const rt of this.targets.values()) {
      clearTimeout(rt.restoreTimer);
      rt.md.cancel();
    }
    await this.nbd.close();
    await Promise.all(
      [...this.targets.values()].map(async (rt) => {
        await rt.port?.close().catch(() => undefined);
        rt.closeTransport?.();
      }),
    );
    if (this.netlink) {
      await this.netlink.then(
        (k) => k.close(),
        () => undefined,
      );
    }
  }

  /* ------------------------------------------------------------------ operations */

  /** Attaches a target (POST /targets). The spec has been validated by targetSpecSchema. */
  async attach(spec: TargetSpec): Promise<TargetView> {
    if (this.closing) throw new DaemonError('the daemon is shutting down', 503);
    const address = parseAnyAddress(spec.address);
    const id = spec.id ?? deriveTargetId(address);
    if (this.targets.has(id) || this.unusable.has(id))
      throw new DaemonError(`target ${id} is already attached (detach it first, or give another id)`, 409);
    this.checkTestTargetAllowed(address, 400);
    const text = formatAnyAddress(address);
    for (const other of this.targets.values()) {
      if (other.addressText === text)
        throw new DaemonError(`target ${id}: ${text} is already attached as ${other.id}`, 409);
    }
    const overrides = overridesOf(spec as Record<string, unknown>);
    const refused =
      address.kind === 'srp'
        ? [...addTargetTuning(address.addr).refused, ...addTargetConflicts(address.addr, overrides)]
        : [];
    if (refused.length > 0) {
      throw new DaemonError(
        `target ${id}: ${refused.map((r) => r.message).join('; ')}`,
        400,
        refused.map((r) => ({ path: 'address', rule: 'add-target-option', message: r.message })),
      );
    }
    const rt = this.newRuntime(id, address, overrides, [], new Date().toISOString());
    const problems = validateTmo(tmoOf(rt.options));
    if (problems.length > 0) {
      throw new DaemonError(
        `target ${id}: ${problems.map((p) => p.message).join('; ')}`,
        400,
        problems.map((p) => ({ path: p.params[0], rule: p.rule, message: p.message })),
      );
    }
    this.targets.set(id, rt);
    try {
      await this.connectOnce(rt);
      this.stillWanted(rt);
    } catch (e) {
      if (this.targets.get(id) === rt) this.targets.delete(id); // never another runtime under the id
      await this.teardown(rt, rt.removed);
      if (rt.removed) throw new DaemonError(`target ${id}: detached while it was being attached`, 409);
      throw e instanceof DaemonError ? e : new DaemonError(`target ${id}: attach failed: ${(e as Error).message}`, 502);
    }
    // persist, then commit: a target that cannot be saved is not left attached
    try {
      this.save(this.snapshot());
    } catch (e) {
      if (this.targets.get(id) === rt) this.targets.delete(id);
      rt.removed = true;
      await this.teardown(rt, true);
      throw e;
    }
    return this.view(rt);
  }

  /**
   * Detaches a target (DELETE /targets/:name): the only way its exports and devices go away.
   * `name` is anything resolveName accepts (a device or an export names its whole target).
   */
  async detach(name: string): Promise<DetachResult> {
    const id = this.resolve(name).target;
    const bad = this.unusable.get(id);
    if (bad) {
      this.save(this.snapshot({ without: id }));
      this.unusable.delete(id);
      this.log.info(
        { target: id, address: bad.persisted.address },
        'target detached (it was not attached: its entry is dropped)',
      );
      return { detached: id, exports: [], devices: [] };
    }
    const rt = this.get(id);
    const { exports, devices } = this.namesOf(rt);
    // persist, then commit: when the state cannot be saved nothing changes
    this.save(this.snapshot({ without: id }));
    if (this.targets.get(id) === rt) this.targets.delete(id);
    rt.removed = true;
    clearTimeout(rt.restoreTimer);
    rt.md.cancel();
    await rt.connecting?.catch(() => undefined); // it stops at its next step and undoes its own work
    await this.teardown(rt, true);
    rt.log.info({ devices }, 'target detached');
    return { detached: id, exports, devices };
  }

  /** Resolves a target id, /dev/nbdN, nbdN, export name or stable name; 404 listing what exists. */
  resolve(name: string): Resolved {
    // LUNs already exported count before the attach completes: udev asks (udev-info) while the
    // kernel device is being connected
    const named = this.list().map((t) => {
      const live = this.targets.get(t.id)?.luns ?? [];
      if (live.length === 0) return { ...t, luns: t.luns.filter((l) => l.path_of === undefined) };
      return {
        ...t,
        luns: live.map((l) => ({ export: l.exportName, device: l.device, by_id: byIdName(l.identity, l.exportName) })),
      };
    });
    try {
      return resolveName(name, named);
    } catch (e) {
      if (e instanceof UnknownNameError) throw new DaemonError(e.message, 404);
      throw e;
    }
  }

  /** One LUN by any of its names (GET /luns/:name): what `udev-info` and scripts need. */
  lun(name: string): LunView {
    const r = this.resolve(name);
    if (r.export === undefined) {
      const exports =
        this.list()
          .find((t) => t.id === r.target)
          ?.luns.map((l) => l.export) ?? [];
      throw new DaemonError(
        `${name} is a target, not a LUN: give a device, an export or a stable name (${exports.join(', ') || 'it has no LUNs'})`,
        404,
      );
    }
    const rt = this.targets.get(r.target);
    const l = rt?.luns.find((x) => x.exportName === r.export);
    if (!rt || !l)
      throw new DaemonError(
        `${name}: LUN ${r.export} of target ${r.target} is not attached now (${rt?.status ?? 'failed'})`,
        409,
      );
    const byId = byIdName(l.identity, l.exportName);
    return {
      target: rt.id,
      lun: l.number,
      export: l.exportName,
      device: l.device,
      by_id: byId,
      by_id_path: `${BY_ID_DIR}/${byId}`,
      uri: `nbd+unix:///${l.exportName}?socket=${this.opts.config.nbd_socket}`,
      size: l.backend.size,
      block_size: l.backend.blockSize.minimum,
      identity: describeIdentity(l.identity),
      vendor: l.identity.vendor ?? null,
      product: l.identity.product ?? null,
      revision: l.identity.revision ?? null,
      serial: l.identity.serial ?? null,
      designators: l.identity.designators.map((d) => designatorString(d)),
    };
  }

  /** The exports and kernel devices a target has now. */
  private namesOf(rt: TargetRuntime): { exports: string[]; devices: string[] } {
    // LUs with another path keep their export and device
    const stays = new Set(rt.luns.filter((l) => l.lu && l.lu.paths.length > 1).map((l) => l.exportName));
    const luns = targetSummary(rt).luns.filter((l) => l.path_of === undefined && !stays.has(l.export));
    return {
      exports: luns.map((l) => l.export),
      devices: luns.map((l) => l.device).filter((d): d is string => d !== null),
    };
  }

  list(): TargetSummary[] {
    const bad = [...this.unusable.values()].map(({ persisted: p, error }) => ({
      id: p.id,
      status: 'failed' as const,
      state: null,
      address: p.address,
      luns: p.luns.map((l) => ({ export: l.export, device: l.device, by_id: persistedById(l) })),
      error,
    }));
    return [...[...this.targets.values()].map((rt) => targetSummary(rt)), ...bad];
  }

  /** GET /targets/:name: `name` is anything resolveName accepts. */
  async status(name: string): Promise<TargetView> {
    const rt = this.get(this.resolve(name).target);
    await this.refreshMd([rt]);
    return this.view(rt);
  }

  /** Changes timers at runtime (PATCH /targets/:id); the combination is checked by validateTmo. */
  setTimers(
    id: string,
    patch: Partial<
      Pick<TargetOptions, 'reconnect_delay' | 'reconnect_delay_max' | 'fast_io_fail_tmo' | 'dev_loss_tmo'>
    >,
  ): TargetView {
    const rt = this.get(id);
    const next = { ...rt.options, ...definedOnly(patch) } as TargetOptions;
    const problems = validateTmo(tmoOf(next));
    if (problems.length > 0) {
      throw new DaemonError(
        `target ${id}: ${problems.map((p) => p.message).join('; ')}`,
        400,
        problems.map((p) => ({ path: p.params[0], rule: p.rule, message: p.message })),
      );
    }
    const overrides = { ...rt.overrides, ...definedOnly(patch) };
    this.save(this.snapshot({ overrides: [id, overrides] })); // persist, then commit
    rt.port?.rport.setTimeouts(tmoOf(next));
    rt.options = next;
    rt.overrides = overrides;
    rt.log.info({ timers: timersOf(next) }, 'timers changed');
    return this.view(rt);
  }

  /** Reconnects now (POST /targets/:id/reconnect): from lost too; a target not yet connected retries at once. */
  reconnect(id: string): TargetView {
    const rt = this.get(id);
    if (rt.port) {
      rt.log.info({ state: rt.port.state }, 'reconnect requested');
      rt.port.reconnectNow();
    } else if (rt.connecting) {
      rt.log.info({ status: rt.status }, 'reconnect requested: a connect is already in progress');
    } else {
      rt.log.info({ status: rt.status }, 'reconnect requested: connecting now');
      clearTimeout(rt.restoreTimer);
      rt.restoreTimer = undefined;
      rt.status = 'connecting';
      void this.connectWithRetry(rt);
    }
    return this.view(rt);
  }

  /**
   * Follows LUN changes now (POST /targets/:id/rescan): REPORT LUNS (new LUNs are exported,
   * vanished ones fail I/O with EIO until detach), then every LUN's capacity and WP bit (a LUN that
   * grew is resized: export and /dev/nbdN). Needs the path running.
   */
  async rescan(id: string): Promise<TargetView> {
    const rt = this.get(id);
    if (rt.status !== 'attached' || !rt.port)
      throw new DaemonError(`target ${id}: not attached (${rt.status}): nothing to rescan`, 409);
    if (rt.port.state !== 'running')
      throw new DaemonError(`target ${id}: the path is ${rt.port.state}: rescan once it is running`, 409);
    rt.log.info('rescan requested');
    try {
      await this.lunWork(rt, async () => {
        await this.rescanLuns(rt); // first: a LUN that vanished has no capacity to re-read
        await this.refreshLuns(rt, rt.luns);
      });
    } catch (e) {
      throw new DaemonError(`target ${id}: rescan failed: ${(e as Error).message}`, 502);
    }
    return this.view(rt);
  }

  /** The in-process test target of a test address (for tests: its LUNs can be changed under the daemon). */
  testFabric(id: string): TestFabric | undefined {
    return this.targets.get(id)?.fabric;
  }

  health(): { status: 'ok'; version: string; uptime_s: number; targets: number; memory: MemoryReport | null } {
    return {
      status: 'ok',
      version: VERSION,
      uptime_s: Math.round((Date.now() - this.startedAt) / 1000),
      targets: this.targets.size,
      memory: this.memory,
    };
  }

  /* ------------------------------------------------------------------ attach machinery */

  private newRuntime(
    id: string,
    address: AnyAddress,
    overrides: TargetOverrides,
    persisted: PersistedLun[],
    attachedAt: string,
  ): TargetRuntime {
    const log = this.log.child({ target: id });
    const tuning = address.kind === 'srp' ? addTargetTuning(address.addr).tuning : {};
    const rt: TargetRuntime = {
      id,
      address,
      addressText: formatAnyAddress(address),
      overrides,
      options: applyTuning(resolveOptions(this.opts.config.defaults as TargetOptions, overrides), tuning),
      tuning,
      attachedAt,
      status: 'connecting',
      luns: [],
      pathLuns: [],
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
      lunWork: Promise.resolve(),
      lunChanges: {},
      mdUp: true,
      mdFailed: false,
      md: new MdReaddPolicy(
        {
          log,
          readdEnabled: () => rt.options.md_readd,
          active: () => !rt.removed && !this.closing,
          running: () => this.luRunning(rt),
          *devices() {
            for (const l of rt.luns) if (l.device) yield { device: l.device, connected: l.attachment !== undefined };
          },
        },
        { sysfs: this.opts.sysfs },
      ),
      log,
    };
    return rt;
  }

  /** A start-time (re-)attach: retried with the target's back-off until it works, it is detached, or an identity check fails. */
  private async connectWithRetry(rt: TargetRuntime): Promise<void> {
    if (rt.removed || this.closing) return;
    rt.restoreAttempt++;
    try {
      await this.connectOnce(rt);
      rt.restoreAttempt = 0;
      this.persist();
    } catch (e) {
      const err = e as Error;
      rt.error = err.message;
      await this.teardown(rt, rt.removed);
      if (rt.removed || this.closing) return;
      if (
        e instanceof IdentityCheckError ||
        e instanceof DuplicateLuError ||
        (e instanceof DaemonError && e.status === 503)
      ) {
        rt.status = 'failed';
        rt.log.error(
          { err: err.message },
          'target not attached; fix the cause, then `srp-nbd reconnect` or `srp-nbd detach` it',
        );
        return;
      }
      rt.status = 'connecting';
      const o = rt.options;
      const base = o.reconnect_delay === 'off' ? o.reconnect_delay_max : o.reconnect_delay;
      const delay = Math.min(o.reconnect_delay_max, base * 2 ** Math.min(rt.restoreAttempt - 1, 20));
      rt.log.warn(
        { attempt: rt.restoreAttempt, delayS: delay, err: err.message },
        `connect attempt ${rt.restoreAttempt} failed, next in ${delay.toFixed(1)} s`,
      );
      rt.restoreTimer = setTimeout(() => {
        rt.restoreTimer = undefined;
        void this.connectWithRetry(rt);
      }, delay * 1000);
    }
  }

  /** connect(), or the one already in flight for this target. */
  private connectOnce(rt: TargetRuntime): Promise<void> {
    if (!rt.connecting) {
      const p = this.connect(rt).finally(() => {
        if (rt.connecting === p) rt.connecting = undefined;
      });
      rt.connecting = p;
    }
    return rt.connecting;
  }

  /** Throws when the target was detached (or the daemon is stopping) while a step was awaited. */
  private stillWanted(rt: TargetRuntime): void {
    if (rt.removed) throw new Error('detached while connecting');
    if (this.closing) throw new Error('the daemon is stopping');
  }

  /**
   * Logs in, finds the LUNs, checks identities against the persisted ones, exports them, attaches
   * devices. After every awaited step it checks that the target is still wanted (stillWanted), so
   * a detach in the middle never leaves exports or devices behind.
   */
  private async connect(rt: TargetRuntime): Promise<void> {
    const o = rt.options;
    let connector: ChannelConnector;
    let ids: { initiatorPortId: Buffer; targetPortId: Buffer };
    if (rt.address.kind === 'test') {
      // loaded only for a test target: the daemon of a real fabric never loads the test target's code
      const [{ createTestFabric }, { TEST_INITIATOR_PORT_ID, TEST_TARGET_PORT_ID }] = await Promise.all([
        import('./test-target.js'),
        import('../testing/test-fabric.js'),
      ]);
      const { fabric, close } = await createTestFabric(rt.address.spec, this.config.state_dir);
      rt.closeTransport = close;
      rt.fabric = fabric;
      this.stillWanted(rt);
      connector = fabric;
      ids = { initiatorPortId: TEST_INITIATOR_PORT_ID, targetPortId: TEST_TARGET_PORT_ID };
    } else {
      const made = await this.rdmaConnector(rt, rt.address.addr);
      rt.closeTransport = made.close;
      this.stillWanted(rt);
      connector = made.connector;
      ids = made;
    }
    rt.connectorDescription = connector.description;
    rt.connector = connector;
    rt.fixedInitiatorPortId = rt.address.kind === 'test' ? ids.initiatorPortId : undefined;
    const portOpts: SrpPortOptions = {
      name: rt.id,
      connector,
      session: {
        ...ids,
        queueSize: o.queue_size,
        immediateData: o.immediate_data,
        commandTimeoutMs: o.command_timeout * 1000,
        ...(rt.tuning.cmdSgEntries !== undefined ? { cmdSgEntries: rt.tuning.cmdSgEntries } : {}),
        ...(rt.tuning.maxItIuSize !== undefined ? { maxItIuSize: rt.tuning.maxItIuSize } : {}),
      },
      tmo: tmoOf(o),
      queueDepth: o.max_hold_queue,
      commandTimeoutMs: o.command_timeout * 1000,
      ...(rt.tuning.maxTransferBytes !== undefined ? { maxTransferBytes: rt.tuning.maxTransferBytes } : {}),
      ...(rt.tuning.maxCmdPerLun !== undefined ? { maxCmdPerLun: rt.tuning.maxCmdPerLun } : {}),
      logger: this.log,
      onLunEvent: (sam, ev) => this.onLunEvent(rt, sam, ev),
    };
    rt.log.info({ via: connector.description }, 'logging in');
    const port = await SrpPort.connect(portOpts);
    rt.port = port;
    this.stillWanted(rt);
    this.follow(rt, port);
    // in LUN order, whatever order REPORT LUNS lists them in (LIO: newest first), so that devices
    // are handed out in LUN order: the lowest LUN gets the lowest free /dev/nbdN (or N of /dev/nbdN)
    const sams = sortLuns(await reportLuns(port.executor));
    this.stillWanted(rt);
    const found: FoundLun[] = [];
    const mismatches: string[] = [];
    for (const sam of sams) {
      const disk = await port.addLun(sam);
      this.stillWanted(rt);
      const identity = disk.probeResult!.identity;
      const number = lunNumber(sam);
      const own = rt.persisted.find((p) => p.lun === hex16(sam));
      // a fresh path to an LU persisted by a target not connected yet continues that LU's export
      const before = own ?? this.persistedPathOf(rt, identity);
      if (own) {
        const cmp = sameIdentity(identityFromJSON(own.identity), identity);
        if (!cmp.same) {
          mismatches.push(`LUN ${number} (export ${own.export}): ${cmp.differences.join('; ')}`);
          continue;
        }
        rt.log.info(
          { lun: number, export: own.export, identity: describeIdentity(identity) },
          'identity check passed: same LUN as before',
        );
      }
      found.push({ sam, number, disk, identity, before });
    }
    for (const p of rt.persisted) {
      if (!sams.some((s) => hex16(s) === p.lun))
        mismatches.push(`LUN ${p.lun} (export ${p.export}) is no longer reported by the target`);
    }
    if (mismatches.length > 0) {
      rt.log.error({ mismatches }, 'identity check failed: not exporting a different disk under the old name');
      throw new IdentityCheckError(`target ${rt.id}: identity check failed: ${mismatches.join('; ')}`);
    }
    // synchronously from here to rt.luns: a concurrent attach of the same LU sees this one
    const joins = this.groupLus(rt, found);
    const luns: LunRuntime[] = [];
    for (const f of found) {
      const g = joins.get(f);
      if (g) {
        rt.pathLuns.push(this.joinLu(rt, port, g, f));
        continue;
      }
      const exportName = f.before?.export ?? `${rt.id}-lun${f.number}`;
      const l = this.newLun(rt, port, f.disk, f.sam, exportName, f.before);
      if (l.lunBackend.readOnly)
        rt.log.info({ lun: f.number, reason: l.lunBackend.readOnlyReason }, 'LUN exported read-only');
      luns.push(l);
    }
    for (const l of luns) {
      this.nbd.addExport(l.exportName, l.backend);
      const key = logicalUnitKey(l.identity);
      const held = key === undefined ? undefined : this.lus.get(key);
      if (key !== undefined && (!held || held.owner.removed)) {
        l.lu = { key, owner: rt, lun: l, paths: [rt] };
        this.lus.set(key, l.lu);
      }
    }
    rt.luns = luns;
    await this.attachDevices(rt);
    rt.status = 'attached';
    rt.error = undefined;
    rt.persisted = this.persistedLuns(rt);
    rt.log.info(
      { luns: luns.map((l) => ({ lun: l.number, export: l.exportName, device: l.device, size: l.backend.size })) },
      'target attached',
    );
    rt.md.onAttached(); // a member md failed while we were away (restart after a long outage)
  }

  /**
   * One LU is exported once: a LUN whose identity (designators + serial, logicalUnitKey) is already
   * attached under another target (another path, another src=, another id) is refused, naming the
   * target and the device that have it. Targets not connected at the moment count with their
   * persisted LUNs.
   */
  private refuseDuplicateLus(rt: TargetRuntime, luns: readonly FoundLun[]): void {
    const mine = new Map<string, FoundLun>();
    for (const l of luns) {
      const key = logicalUnitKey(l.identity);
      if (key !== undefined) mine.set(key, l);
    }
    if (mine.size === 0) return;
    const clashes: string[] = [];
    for (const other of this.targets.values()) {
      if (other === rt || other.removed) continue;
      // both allow multipath: a live LU was joined as a path (groupLus); a persisted one is continued
      if (rt.options.multipath && other.options.multipath) continue;
      const theirs =
        other.luns.length > 0
          ? other.luns.map((l) => ({
              lun: l.number,
              where: l.device ?? `export ${l.exportName}`,
              identity: l.identity,
            }))
          : other.persisted.flatMap((p) => {
              try {
                const identity = identityFromJSON(p.identity);
                return [{ lun: lunNumber(BigInt('0x' + p.lun)), where: p.device ?? `export ${p.export}`, identity }];
              } catch {
                return [];
              }
            });
      for (const o of theirs) {
        const key = logicalUnitKey(o.identity);
        const l = key === undefined ? undefined : mine.get(key);
        if (l)
          clashes.push(
            `LUN ${l.number} (${describeIdentity(l.identity)}) is already attached as target ${other.id} LUN ${o.lun} (${o.where})`,
          );
      }
    }
    if (clashes.length > 0) {
      rt.log.error({ clashes }, 'duplicate attach refused: the same logical unit would get two devices');
      throw new DuplicateLuError(
        `target ${rt.id}: ${clashes.join('; ')}: one logical unit is never attached twice without multipath (multipath is off on one of the targets; use that device, or detach it first)`,
      );
    }
  }

  /**
   * Which of the LUNs found are further paths of LUs already exported (both targets allow
   * multipath): those join the LU; the others are checked by refuseDuplicateLus and exported.
   */
  private groupLus(rt: TargetRuntime, found: readonly FoundLun[]): Map<FoundLun, LuGroup> {
    const joins = new Map<FoundLun, LuGroup>();
    const own: FoundLun[] = [];
    for (const f of found) {
      const key = logicalUnitKey(f.identity);
      const g = key === undefined ? undefined : this.lus.get(key);
      if (g && g.owner !== rt && !g.owner.removed && g.owner.port && rt.options.multipath && g.owner.options.multipath)
        joins.set(f, g);
      else own.push(f);
    }
    this.refuseDuplicateLus(rt, own);
    return joins;
  }

  /** The persisted LUN of another target (not connected now) with the same LU, when both allow multipath. */
  private persistedPathOf(rt: TargetRuntime, identity: LunIdentity): PersistedLun | undefined {
    const key = logicalUnitKey(identity);
    if (key === undefined || !rt.options.multipath || this.lus.has(key)) return undefined;
    for (const other of this.targets.values()) {
      if (other === rt || other.removed || !other.options.multipath || other.luns.length > 0) continue;
      for (const p of other.persisted) {
        try {
          if (logicalUnitKey(identityFromJSON(p.identity)) === key) return p;
        } catch {
          // an unreadable identity matches nothing
        }
      }
    }
    return undefined;
  }

  /** The LU's multipath gate, created when a second path joins (the owner's LUN is the first path). */
  private ensureGate(g: LuGroup): MultipathGate<ScsiDisk> {
    if (g.gate) return g.gate;
    const o = g.owner.options;
    const gate = new MultipathGate<ScsiDisk>({
      selector: o.path_selector,
      failback: o.failback,
      queueDepth: o.max_hold_queue,
      isTransportError: srpTransportError,
    });
    gate.addPath(g.owner.id, g.owner.port!.rport, g.lun.lunBackend.disk, o.path_priority);
    g.lun.lunBackend.useMultipath(gate);
    g.gate = gate;
    return gate;
  }

  /** Adds `rt`'s LUN as a path of the LU `g` (its identity matched the LU's key). */
  private joinLu(rt: TargetRuntime, port: SrpPort, g: LuGroup, f: FoundLun): PathLun {
    const gate = this.ensureGate(g);
    gate.addPath(rt.id, port.rport, f.disk, rt.options.path_priority);
    g.paths.push(rt);
    const o = g.owner.options;
    if (rt.options.path_selector !== o.path_selector || rt.options.failback !== o.failback)
      rt.log.warn(
        { selector: o.path_selector, failback: o.failback },
        `path_selector/failback of this target differ from the LU's: the LU keeps those of ${g.owner.id}, which created it`,
      );
    rt.log.info(
      { lun: f.number, export: g.lun.exportName, device: g.lun.device, paths: g.paths.map((p) => p.id) },
      'LUN is another path of an attached LU: added as a path (multipath)',
    );
    return { sam: f.sam, number: f.number, identity: f.identity, disk: f.disk, lu: g };
  }

  /** `rt` stops being a path of `g` (detach, teardown). */
  private leaveLu(rt: TargetRuntime, g: LuGroup): void {
    g.gate?.removePath(rt.id);
    g.paths = g.paths.filter((p) => p !== rt);
  }

  /**
   * The owner of `l`'s LU is going away while other paths remain: the export, backend and device
   * move to the next path's target, which stops holding the LU as a mere path.
   */
  private handOver(rt: TargetRuntime, l: LunRuntime): void {
    const g = l.lu!;
    this.leaveLu(rt, g);
    const next = g.paths[0]!;
    const pl = next.pathLuns.find((p) => p.lu === g)!;
    next.pathLuns = next.pathLuns.filter((p) => p !== pl);
    rt.luns = rt.luns.filter((x) => x !== l);
    l.sam = pl.sam;
    l.number = pl.number;
    l.lunBackend.moveTo(next.port!, pl.disk);
    next.luns.push(l);
    g.owner = next;
    next.persisted = this.persistedLuns(next);
    next.log.info(
      { lun: l.number, export: l.exportName, device: l.device, from: rt.id },
      "the LU's first path was detached: its export and device continue on this target",
    );
  }

  private async rdmaConnector(
    rt: TargetRuntime,
    addr: SrpTargetAddress,
  ): Promise<{ connector: ChannelConnector; initiatorPortId: Buffer; targetPortId: Buffer; close?: () => void }> {
    let mod: RdmaConnectorModule;
    try {
      mod = await (this.opts.loadRdma ?? loadRdmaConnector)();
    } catch (e) {
      const cause = (e as Error).message;
      const why = `the RDMA/CM connector module cannot be loaded (${cause}): rebuild srp-nbd (npm run build)`;
      throw new DaemonError(`target ${rt.id}: RDMA transport not available: ${why}`, 503);
    }
    if (addr.transport === 'ib-cm') {
      throw new DaemonError(
        `target ${rt.id}: RDMA transport not available for IB CM addressing (dgid/pkey/service_id); use dest=IP:port (RDMA/CM)`,
        503,
      );
    }
    try {
      return await mod.createRdmaConnector(addr, {
        ackTimeout: rt.options.ack_timeout,
        retryCount: rt.options.retry_count,
        keepaliveIntervalMs: rt.options.keepalive_interval * 1000,
        initiatorId: rt.options.initiator_id,
        logger: rt.log,
        transport: {
          busyPollUs: rt.options.busy_poll,
          ...(rt.tuning.compVector !== undefined ? { compVector: rt.tuning.compVector } : {}),
        },
      });
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
      let nb: NbdKernel;
      try {
        nb = await this.kernelNbd();
      } catch (e) {
        const reason = (e as Error).message;
        if (fixed !== undefined && restoreIndex === undefined) {
          throw new DaemonError(`target ${rt.id}: cannot attach ${want}: ${reason}`, 503);
        }
        l.deviceNote = `no kernel device: ${reason}`;
        if (restoreIndex !== undefined)
          rt.log.error({ device: l.device, err: reason }, 'cannot take the kernel device back');
        else
          rt.log.warn(
            { export: l.exportName, err: reason },
            'device auto: kernel NBD not available, exporting on the unix socket only',
          );
        continue;
      }
      const common = {
        server: this.nbd,
        exportName: l.exportName,
        backendId: l.backendId,
        deadConnTimeoutSec: rt.options.dead_conn_timeout,
      };
      if (restoreIndex !== undefined) {
        try {
          l.attachment = await nb.reattach({ ...common, index: restoreIndex });
          this.stillWanted(rt);
          await this.limitDeviceIo(rt, l);
          rt.log.info({ device: l.attachment.device, export: l.exportName }, 'kernel device taken back (RECONFIGURE)');
          continue;
        } catch (e) {
          rt.log.warn(
            { device: l.device, err: (e as Error).message },
            'RECONFIGURE refused; connecting the device anew',
          );
        }
      }
      l.attachment = await nb.attach({ ...common, ...(fixed !== undefined ? { index: fixed } : {}) });
      l.device = l.attachment.device;
      this.stillWanted(rt); // the caller's teardown disconnects what was attached
      await this.limitDeviceIo(rt, l);
      rt.log.info({ device: l.device, export: l.exportName }, 'kernel device attached (CONNECT)');
    }
  }

  /** A LUN's runtime over its probed disk: a new export, or the persisted one it continues (`before`). */
  private newLun(
    rt: TargetRuntime,
    port: SrpPort,
    disk: ScsiDisk,
    sam: bigint,
    exportName: string,
    before?: PersistedLun,
  ): LunRuntime {
    const number = lunNumber(sam);
    const identity = disk.probeResult!.identity;
    const description = `${rt.id} LUN ${number}: ${describeIdentity(identity)}`;
    const lunBackend = new LunBackend(port, disk, description, rt.options.read_only);
    return {
      sam,
      number,
      exportName,
      backendId: before?.backendId ?? `srp-nbd:${exportName}`,
      device: before?.device ?? null,
      identity,
      lunBackend,
      backend: new MeteredBackend(lunBackend),
      md: [],
      state: 'attached',
    };
  }

  /** The device's largest request from the LUN's limits and its request timer; a refusal is logged, never fatal. */
  private async limitDeviceIo(rt: TargetRuntime, l: LunRuntime): Promise<void> {
    if (!l.attachment) return;
    try {
      const bs = l.backend.blockSize.minimum;
      const maxTransfer = l.lunBackend.maxTransferBytes;
      l.deviceMaxIoKb = await limitDeviceIo(l.attachment.device, maxTransfer, bs, this.opts.sysfs);
      rt.log.info({ device: l.attachment.device, max_sectors_kb: l.deviceMaxIoKb }, 'device request size set');
    } catch (e) {
      rt.log.warn({ device: l.attachment.device, err: (e as Error).message }, 'cannot set the device request size');
    }
    try {
      await setDeviceIoTimeout(l.attachment.device, rt.options.nbd_io_timeout, this.opts.sysfs);
    } catch (e) {
      rt.log.warn({ device: l.attachment.device, err: (e as Error).message }, 'cannot set the device io_timeout');
    }
  }

  private kernelNbd(): Promise<NbdKernel> {
    this.netlink ??= this.opts.nbdKernel
      ? this.opts.nbdKernel()
      : (async () => {
          const b = tryLoadNative();
          if (!b) throw new Error('the native addon is not built (npm run build:native)');
          // Without it, NBD netlink requests would block the event loop (and a detach could deadlock).
          if (typeof b.netlinkSendAsync !== 'function')
            throw new Error('the native addon is out of date (no netlinkSendAsync): npm run build:native');
          const nl = await NbdNetlink.open(b);
          return {
            attach: (o) => nbdAttach(nl, b, o),
            reattach: (o) => nbdReattach(nl, b, o),
            detach: (att, graceMs, onAbort) => nbdDetach(nl, att, graceMs, onAbort),
            resize: (att, sizeBytes) => nl.resize(att.index, att.backendId, sizeBytes),
            close: () => nl.close(),
          } satisfies NbdKernel;
        })();
    const p = this.netlink;
    p.catch(() => {
      if (this.netlink === p) this.netlink = undefined; // try again next time (modprobe nbd)
    });
    return p;
  }

  /* ------------------------------------------------------------------ LUN changes while attached */

  /** Runs `fn` after the target's earlier LUN work (one change followed at a time). */
  private lunWork<T>(rt: TargetRuntime, fn: () => Promise<T>): Promise<T> {
    const p = rt.lunWork.then(fn);
    rt.lunWork = p.catch(() => undefined);
    return p;
  }

  /** What a unit attention or an identity check told about a LUN: follow it in the background. */
  private onLunEvent(rt: TargetRuntime, sam: bigint, ev: LunEvent): void {
    const l = rt.luns.find((x) => x.sam === sam);
    const background = (what: string, fn: () => Promise<void>): void => {
      this.lunWork(rt, async () => {
        if (rt.removed || this.closing || rt.status !== 'attached') return;
        await fn();
      }).catch((e: unknown) => rt.log.warn({ err: (e as Error).message }, `${what} failed`));
    };
    switch (ev.type) {
      case 'unit-attention':
        if (ev.what === 'capacity-changed' && l) {
          rt.log.info({ lun: l.number }, 'CAPACITY DATA HAS CHANGED: re-reading the capacity');
          background('capacity re-read', () => this.refreshLuns(rt, [l]));
        } else if (ev.what === 'luns-changed') {
          rt.log.info('REPORTED LUNS DATA HAS CHANGED: re-reading the LUN list');
          background('LUN rescan', () => this.rescanLuns(rt));
        }
        break;
      case 'grown':
        if (!l) break;
        this.countLunChange(rt, 'grown');
        background('device resize', async () => {
          l.identity = rt.port?.identityOf(sam) ?? l.identity;
          await this.resizeDevice(rt, l);
          this.persist();
        });
        break;
      case 'write-protect':
        if (!l) break;
        this.countLunChange(rt, ev.writeProtected ? 'write_protected' : 'write_enabled');
        this.noteWriteProtect(rt, l);
        break;
      default:
        break;
    }
  }

  private countLunChange(rt: TargetRuntime, change: LunChange): void {
    rt.lunChanges[change] = (rt.lunChanges[change] ?? 0) + 1;
  }

  /** The WP bit changed while attached: writes follow it at once; the kernel device cannot. */
  private noteWriteProtect(rt: TargetRuntime, l: LunRuntime): void {
    const wp = l.lunBackend.writeProtected;
    rt.log.warn(
      { lun: l.number, device: l.device, writeProtected: wp, readOnly: l.lunBackend.readOnly },
      wp
        ? 'the LU is now write protected: writes are refused with EPERM (the kernel device stays as it was connected)'
        : 'the LU is no longer write protected: the kernel device stays as it was connected until detach and attach',
    );
  }

  /** Re-reads the capacity and WP bit of `luns` (attached ones): grown ones are resized. */
  private async refreshLuns(rt: TargetRuntime, luns: readonly LunRuntime[]): Promise<void> {
    const port = rt.port;
    if (!port) return;
    let grown = false;
    let failed: Error | undefined;
    for (const l of luns) {
      if (l.state !== 'attached') continue;
      let r: Awaited<ReturnType<SrpPort['refreshLun']>>;
      try {
        r = await port.refreshLun(l.sam);
      } catch (e) {
        rt.log.warn({ lun: l.number, err: (e as Error).message }, 'cannot re-read the capacity and WP bit');
        failed ??= new Error(`LUN ${l.number}: ${(e as Error).message}`);
        continue;
      }
      if (r.writeProtectChanged) {
        this.countLunChange(rt, r.writeProtected ? 'write_protected' : 'write_enabled');
        this.noteWriteProtect(rt, l);
      }
      if (r.capacity === 'grown') {
        this.countLunChange(rt, 'grown');
        l.identity = port.identityOf(l.sam) ?? l.identity;
        l.capacityNote = undefined;
        rt.log.info(
          { lun: l.number, from: r.blocksBefore, to: r.blocksNow, size: l.backend.size },
          'the LUN grew: resizing its export and device',
        );
        await this.resizeDevice(rt, l);
        grown = true;
      } else if (r.capacity === 'shrank') {
        const note = `the target reports ${r.blocksNow} blocks, fewer than the ${r.blocksBefore} attached: not followed (I/O beyond the new end fails); detach and attach to take the new size`;
        if (l.capacityNote !== note) {
          this.countLunChange(rt, 'shrunk');
          rt.log.error({ lun: l.number, from: r.blocksBefore, to: r.blocksNow }, `the LUN shrank: ${note}`);
        }
        l.capacityNote = note;
      }
    }
    if (grown) this.persist();
    if (failed) throw failed;
  }

  /** Sets the kernel device's size to the export's (NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES). */
  private async resizeDevice(rt: TargetRuntime, l: LunRuntime): Promise<void> {
    const att = l.attachment;
    if (!att) return;
    try {
      const nb = await this.kernelNbd();
      await nb.resize(att, l.backend.size);
      l.deviceNote = undefined;
      rt.log.info({ device: l.device, size: l.backend.size }, 'kernel device resized (RECONFIGURE)');
    } catch (e) {
      l.deviceNote = `resize of ${l.device} to ${l.backend.size} bytes failed: ${(e as Error).message} (Linux >= 5.3 needed)`;
      rt.log.warn({ device: l.device, err: (e as Error).message }, 'kernel device not resized');
    }
  }

  /** REPORT LUNS again: new LUNs exported (LUN order, lowest free /dev/nbdN), vanished ones fail with EIO. */
  private async rescanLuns(rt: TargetRuntime): Promise<void> {
    const port = rt.port;
    if (!port) return;
    const sams = new Set(await reportLuns(port.executor));
    this.stillWanted(rt);
    let changed = false;
    for (const l of rt.luns) {
      if (l.state !== 'attached' || sams.has(l.sam)) continue;
      l.state = 'removed';
      l.lunBackend.gone = true;
      port.removeLun(l.sam);
      this.countLunChange(rt, 'removed');
      changed = true;
      rt.log.warn(
        { lun: l.number, export: l.exportName, device: l.device },
        'the target no longer reports this LUN: its I/O fails with EIO; the device stays until detach',
      );
    }
    for (const pl of [...rt.pathLuns]) {
      if (sams.has(pl.sam)) continue;
      this.leaveLu(rt, pl.lu);
      rt.pathLuns = rt.pathLuns.filter((x) => x !== pl);
      port.removeLun(pl.sam);
      this.countLunChange(rt, 'removed');
      changed = true;
      rt.log.warn(
        { lun: pl.number, export: pl.lu.lun.exportName },
        'the target no longer reports this LUN: path removed',
      );
    }
    const known = (sam: bigint) => rt.luns.some((l) => l.sam === sam) || rt.pathLuns.some((l) => l.sam === sam);
    const added = [...sams].filter((sam) => !known(sam)).sort((a, b) => (a < b ? -1 : 1));
    for (const sam of added) {
      const number = lunNumber(sam);
      const exportName = `${rt.id}-lun${number}`;
      if (this.nbd.lookup(exportName)) {
        rt.log.error({ lun: number, export: exportName }, 'new LUN not exported: the export name is taken');
        continue;
      }
      const disk = await port.addLun(sam);
      this.stillWanted(rt);
      const identity = disk.probeResult!.identity;
      const l = this.newLun(rt, port, disk, sam, exportName);
      this.nbd.addExport(exportName, l.backend);
      rt.luns.push(l);
      this.countLunChange(rt, 'added');
      changed = true;
      await this.attachNewDevice(rt, l);
      rt.log.info(
        { lun: number, export: exportName, device: l.device, identity: describeIdentity(identity) },
        'new LUN exported',
      );
    }
    if (changed) {
      rt.persisted = this.persistedLuns(rt);
      this.persist();
    }
  }

  /** A kernel device for a LUN found by a rescan: the lowest free /dev/nbdN (unless device is none). */
  private async attachNewDevice(rt: TargetRuntime, l: LunRuntime): Promise<void> {
    if (rt.options.device === 'none') return;
    try {
      const nb = await this.kernelNbd();
      l.attachment = await nb.attach({
        server: this.nbd,
        exportName: l.exportName,
        backendId: l.backendId,
        deadConnTimeoutSec: rt.options.dead_conn_timeout,
      });
      l.device = l.attachment.device;
      await this.limitDeviceIo(rt, l);
    } catch (e) {
      l.deviceNote = `no kernel device: ${(e as Error).message}`;
      rt.log.warn({ export: l.exportName, err: (e as Error).message }, 'new LUN: no kernel device');
    }
  }

  /** Undoes connect(): exports, devices (only when `removeDevices`), the port, the transport. */
  private async teardown(rt: TargetRuntime, removeDevices: boolean): Promise<void> {
    rt.md.cancel();
    for (const pl of rt.pathLuns) this.leaveLu(rt, pl.lu);
    rt.pathLuns = [];
    // an LU with other paths keeps its export and device: they move to the next path's target
    if (removeDevices) for (const l of [...rt.luns]) if (l.lu && l.lu.paths.length > 1) this.handOver(rt, l);
    for (const l of rt.luns) {
      const attachment = l.attachment;
      if (!attachment) continue;
      l.attachment = undefined; // a concurrent teardown (detach during a connect) skips it
      if (removeDevices) {
        try {
          const nb = await this.kernelNbd();
          const device = l.device;
          await nb.detach(attachment, DISCONNECT_GRACE_MS, () =>
            rt.log.warn(
              { device },
              'the kernel is still sending on the device (its I/O is held here): closing the connection so that the disconnect completes',
            ),
          );
        } catch (e) {
          rt.log.warn({ device: l.device, err: (e as Error).message }, 'NBD_CMD_DISCONNECT failed');
        }
      }
      attachment.connection.close();
    }
    // Devices gone (the kernel has failed their requests): held I/O ends now, not at
    // fast_io_fail_tmo. Devices kept (daemon stop) keep the port until their connections have
    // answered what they hold.
    if (removeDevices) await this.closePort(rt);
    for (const l of rt.luns) {
      await this.nbd.removeExport(l.exportName);
      if (l.lu && this.lus.get(l.lu.key) === l.lu) this.lus.delete(l.lu.key);
      l.lu?.gate?.dispose();
    }
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
    rt.mdUp = true; // just logged in: running
    rt.mdFailed = false;
    port.rport.subscribe((a) => {
      const s = rt.stats;
      switch (a.type) {
        case 'state-changed': {
          const now = Date.now();
          s.timeInState[a.from] += (now - s.stateSince) / 1000;
          s.stateSince = now;
          if (a.to === 'running' && (a.from === 'blocked' || a.from === 'fail-fast')) s.reconnects++;
          this.followMd(rt);
          for (const pl of rt.pathLuns) this.followMd(pl.lu.owner);
          if (a.cause === 'fast-io-fail-tmo' || a.cause === 'dev-loss-tmo') {
            const secs = a.cause === 'fast-io-fail-tmo' ? rt.options.fast_io_fail_tmo : rt.options.dev_loss_tmo;
            rt.log.warn(
              { timer: a.cause, seconds: secs, state: a.to },
              `${a.cause === 'fast-io-fail-tmo' ? 'fast_io_fail_tmo' : 'dev_loss_tmo'} (${formatTmo(secs)} s) expired: state ${a.to}`,
            );
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

  /** The rports behind the devices of `rt` (its own and every other path of its LUs). */
  private rportsOf(rt: TargetRuntime): Rport[] {
    const rports = new Set<Rport>();
    if (rt.port) rports.add(rt.port.rport);
    for (const l of rt.luns) for (const p of l.lu?.gate?.pathList ?? []) if (!p.operatorFailed) rports.add(p.rport);
    return [...rports];
  }

  /** Some path of the target's devices runs: their I/O reaches the LU. */
  private luRunning(rt: TargetRuntime): boolean {
    return this.rportsOf(rt).some((r) => r.state === 'running');
  }

  /**
   * Tells the target's md policy when its devices' LU stops running (every path down) and comes
   * back: from fail-fast when I/O failed meanwhile (no path was running or blocked), as a single
   * path's own rport would say.
   */
  private followMd(rt: TargetRuntime): void {
    const rports = this.rportsOf(rt);
    const up = rports.some((r) => r.state === 'running');
    if (rt.mdUp && !up) {
      rt.mdUp = false;
      rt.mdFailed = false;
      rt.md.onPathDown();
    } else if (!rt.mdUp && up) {
      rt.mdUp = true;
      rt.md.onPathReturned(rt.mdFailed ? 'fail-fast' : 'blocked');
    }
    if (!up && !rports.some((r) => r.state === 'blocked')) rt.mdFailed = true;
  }

  private get(id: string): TargetRuntime {
    const rt = this.targets.get(id);
    const bad = this.unusable.get(id);
    if (bad) throw new DaemonError(`target ${id}: not attached: ${bad.error} (srp-nbd detach ${id} drops it)`, 409);
    if (!rt) throw new DaemonError(`target ${id}: no such target (srp-nbd list shows the attached ones)`, 404);
    return rt;
  }

  /** The LUNs a restart must find again (not those the target stopped reporting). */
  private persistedLuns(rt: TargetRuntime): PersistedLun[] {
    const owned = rt.luns
      .filter((l) => l.state === 'attached')
      .map((l) => ({
        lun: hex16(l.sam),
        export: l.exportName,
        device: l.device,
        backendId: l.backendId,
        identity: identityToJSON(l.identity) as PersistedLun['identity'],
      }));
    // a path records the LU's export and device: whichever path connects first after a restart
    // exports the LU under them, the others join it
    const paths = rt.pathLuns.map((pl) => ({
      lun: hex16(pl.sam),
      export: pl.lu.lun.exportName,
      device: pl.lu.lun.device,
      backendId: pl.lu.lun.backendId,
      identity: identityToJSON(pl.identity) as PersistedLun['identity'],
    }));
    return [...owned, ...paths];
  }

  /** What state.json should hold, with a change not yet applied (persist, then commit). */
  private snapshot(change: { without?: string; overrides?: [string, TargetOverrides] } = {}): PersistedTarget[] {
    const targets: PersistedTarget[] = [];
    for (const rt of this.targets.values()) {
      if (rt.id === change.without) continue;
      const overrides = change.overrides?.[0] === rt.id ? change.overrides[1] : rt.overrides;
      targets.push({
        id: rt.id,
        address: rt.addressText,
        overrides: overrides as Record<string, unknown>,
        attachedAt: rt.attachedAt,
        luns: rt.status === 'attached' ? this.persistedLuns(rt) : rt.persisted,
      });
    }
    for (const [id, bad] of this.unusable) if (id !== change.without) targets.push(bad.persisted);
    return targets;
  }

  /** Writes state.json; a failure is a 500 naming the cause, and the caller changes nothing. */
  private save(targets: PersistedTarget[]): void {
    try {
      this.store.save({ version: 1, targets });
    } catch (e) {
      this.log.error(
        { err: (e as Error).message, file: this.store.file },
        'cannot save the state: the change is not made',
      );
      throw new DaemonError(
        `cannot save the state (${this.store.file}): ${(e as Error).message}; nothing was changed`,
        500,
      );
    }
  }

  /** Saves the current state after a change that is already made (a restore); a failure is logged. */
  private persist(): void {
    try {
      this.store.save({ version: 1, targets: this.snapshot() });
    } catch (e) {
      this.log.error(
        { err: (e as Error).message, file: this.store.file },
        'cannot save the state; retried at the next change',
      );
    }
  }

  /** Test targets need `test_targets.enabled` and fit within `test_targets.memory_budget_mib`. */
  private checkTestTargetAllowed(address: AnyAddress, status = 0): void {
    if (address.kind !== 'test') return;
    const tt = this.opts.config.test_targets;
    const fail = (msg: string): never => {
      throw status ? new DaemonError(msg, status) : new Error(msg);
    };
    if (!tt.enabled) fail('test targets are disabled (set test_targets.enabled in the configuration)');
    const bytes = (a: AnyAddress): number => (a.kind === 'test' ? a.spec.luns * a.spec.lunSize : 0);
    let used = 0;
    for (const rt of this.targets.values()) used += bytes(rt.address);
    const budget = tt.memory_budget_mib * 1024 * 1024;
    if (used + bytes(address) > budget) {
      fail(
        `test target needs ${bytes(address) >> 20} MiB of RAM, ${used >> 20} MiB of test_targets.memory_budget_mib (${tt.memory_budget_mib}) are in use`,
      );
    }
  }

  /* ------------------------------------------------------------------ views */

  /** A target as GET /targets/:id shows it. */
  private view(rt: TargetRuntime): TargetView {
    return targetView(rt, { nbdSocket: this.opts.config.nbd_socket, sysfs: this.opts.sysfs, target: this.lookup });
  }

  private readonly lookup: TargetLookup = (id) => this.targets.get(id);

  /** The LUs behind a name: a LUN's (device, export, stable name), or every LU a target reaches. */
  private lusOf(name: string): LuGroup[] {
    const r = this.resolve(name);
    const rt = this.get(r.target);
    const lus: LuGroup[] = [];
    const add = (g: LuGroup | undefined) => {
      if (g && !lus.includes(g)) lus.push(g);
    };
    for (const l of rt.luns) if (r.export === undefined || l.exportName === r.export) add(l.lu ?? soloLu(rt, l));
    if (r.export === undefined) for (const pl of rt.pathLuns) add(pl.lu);
    if (lus.length === 0)
      throw new DaemonError(`${name}: target ${rt.id} has no LUN attached now (${rt.status}): no paths to show`, 409);
    return lus;
  }

  /** GET /targets/:id/paths: the paths of the LU(s) behind a name; one LU's fields also at the top. */
  paths(name: string): PathsResult {
    const lus = this.lusOf(name).map((g) => luView(g, this.lookup));
    return { ...(lus.length === 1 ? lus[0] : {}), lus };
  }

  /**
   * POST /targets/:id/paths/:path/fail|reinstate: the operator takes a path out of use (it stays
   * logged in and probed; no I/O is sent to it) or gives it back. `path` is the path's target id
   * or its index in the paths list. Failing the last path that could carry I/O is refused unless
   * `force` (then the LU's I/O is held while another path is blocked, else it fails with EIO:
   * docs/multipath.md). Not persisted: a restart starts with every path in use.
   */
  pathControl(name: string, pathName: string, action: 'fail' | 'reinstate', force = false): PathsResult {
    const lus = this.lusOf(name);
    const picked: [LuGroup, string][] = [];
    for (const g of lus) {
      const views = pathViews(g, this.lookup);
      const v = /^\d+$/.test(pathName) ? views[Number(pathName)] : views.find((p) => p.target === pathName);
      if (v) picked.push([g, v.target]);
    }
    if (picked.length === 0) {
      const known = lus.map(
        (g) =>
          `${g.lun.exportName}: ${pathViews(g, this.lookup)
            .map((p, i) => `${i}=${p.target}`)
            .join(' ')}`,
      );
      throw new DaemonError(`${name}: no path ${pathName} (paths by index and target: ${known.join('; ')})`, 404);
    }
    if (action === 'fail' && !force) {
      for (const [g, id] of picked) {
        const others = (g.gate?.pathList ?? []).filter(
          (p) => p.id !== id && !p.operatorFailed && p.rport.state === 'running',
        );
        if (others.length === 0)
          throw new DaemonError(
            `${g.lun.exportName}: path ${id} is the last running path of the LU: failing it stops its I/O (held or EIO); give force (--force) to do it anyway`,
            409,
          );
      }
    }
    for (const [g, id] of picked) {
      if (g.key === '')
        throw new DaemonError(
          `${g.lun.exportName}: the LU has no identity key: it cannot be failed or reinstated as a path`,
          409,
        );
      const gate = this.ensureGate(g);
      gate.setOperatorFailed(id, action === 'fail');
      this.followMd(g.owner);
      this.log.warn(
        { lu: g.lun.exportName, path: id },
        action === 'fail' ? 'path failed by the operator' : 'path reinstated by the operator',
      );
    }
    return this.paths(name);
  }

  /** Prometheus exposition text (GET /metrics). */
  async metrics(): Promise<string> {
    await this.refreshMd(this.targets.values());
    const paths = [...this.lus.values()].flatMap((g) =>
      g.gate
        ? pathViews(g, this.lookup).map((p) => ({
            lu: g.lun.exportName,
            target: p.target,
            state: p.state ?? undefined,
            role: p.role,
            commands: p.commands,
            errors: p.errors,
            bytes: p.bytes,
            inFlight: p.in_flight,
          }))
        : [],
    );
    return renderMetrics({
      version: VERSION,
      targets: [...this.targets.values()].map((rt) => metricsOf(rt)),
      paths,
    });
  }
}

/** As the port's gate: a command aborted on a working channel (ABORT TASK succeeded) is a command error. */
function srpTransportError(e: unknown): boolean {
  return defaultIsTransportError(e) && !(e instanceof TransportError && e.code === 'aborted');
}

/** A LUN behind the new login is not the one recorded: the target stays unexported. */
export class IdentityCheckError extends Error {
  override readonly name = 'IdentityCheckError';
}

/** The target's LU is already attached under another target: refused (409), never retried on its own. */
export class DuplicateLuError extends DaemonError {
  constructor(message: string) {
    super(message, 409);
    this.name = 'DuplicateLuError';
  }
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** SAM LUNs sorted by LUN number (then by their 8 bytes, for LUNs of other address methods). */
export function sortLuns(sams: readonly bigint[]): bigint[] {
  return [...sams].sort((a, b) => lunNumber(a) - lunNumber(b) || (a < b ? -1 : a > b ? 1 : 0));
}

function lunNumber(sam: bigint): number {
  try {
    return samToLun(sam);
  } catch {
    return Number(sam >> 48n);
  }
}

export type { TmoParams };
