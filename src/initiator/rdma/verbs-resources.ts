/**
 * The rdma_cm and verbs resources of one channel as one object, as Linux ib_srp's
 * srp_create_ch_ib() creates a channel's resources as one unit and unwinds them in order
 * (srp_free_ch_ib): each creation step records how to undo it, and free() undoes the steps in
 * reverse order.
 *
 * Order of creation: the rdma_cm event channel and its poller; the cm id (address and route
 * resolution are the caller's; a failed attempt destroys the id again); the device's async events;
 * the PD; the completion channel and its poller; the CQ; the registered memory (send and receive
 * IU pools, the caller's buffer pools, then the table of per-command regions); the QP last. free()
 * so destroys the QP first (nothing can reach memory being deregistered), the registered memory,
 * the CQ, the completion channel, the PD, and the cm id and event channel last, unless they are
 * parked: see ParkedIds. freeAsync() does the same with the QP destroyed on a worker thread: the
 * channel's pollers are stopped first, the rest waits for the destroy.
 *
 * A handle is 0 (a pool undefined) until its step ran and again after free(). What the channel
 * learned about its device (device, qpNum) stays after free() for logs and the connector.
 */
import { TransportError } from '../scsi-executor.js';
import type { SrpLogger } from '../srp-session.js';
import type { MemoryRegion } from '../transport.js';
import {
  UV_READABLE,
  type AsyncEvent,
  type ConnParam,
  type DeviceAttr,
  type NativeBinding,
  type NativeError,
} from '../../native/native.js';
import * as R from '../../native/rdma-constants.js';
import { AsyncEventHub } from './async-event-hub.js';
import type { ResolvedTransportOptions } from './options.js';
import { ParkedIds } from './parked-ids.js';

/** No usable RDMA device / kernel support, with what to do. */
export class RdmaUnavailableError extends TransportError {
  constructor(detail: string, options?: { cause?: unknown }) {
    super(
      `no RDMA device available (${detail}): load an RDMA driver, e.g. ` +
        '`modprobe rdma_rxe && rdma link add rxe0 type rxe netdev eth0`, ' +
        'and make sure /dev/infiniband/rdma_cm and uverbs devices exist (modprobe rdma_ucm ib_uverbs)',
      'disconnected',
      options,
    );
    this.name = 'RdmaUnavailableError';
  }
}

/** Checks that RDMA is usable here; throws RdmaUnavailableError otherwise. Returns the device names. */
export function checkRdmaAvailable(b: NativeBinding): string[] {
  let names: string[];
  try {
    names = b.getDeviceList();
  } catch (err) {
    const code = (err as NativeError).code;
    throw new RdmaUnavailableError(
      code === 'ENOSYS'
        ? 'the kernel has no RDMA support loaded (ibv_get_device_list: ENOSYS)'
        : `ibv_get_device_list: ${code}`,
      { cause: err },
    );
  }
  if (names.length === 0) throw new RdmaUnavailableError('ibv_get_device_list returned no device');
  return names;
}

/** Runs a setup call, turning its NativeError into a TransportError naming the call. */
export function verbsCall<T>(fn: () => T, what: string): T {
  try {
    return fn();
  } catch (err) {
    const code = (err as NativeError).code;
    if (what === 'rdma_create_event_channel' && (code === 'ENODEV' || code === 'ENOENT')) {
      throw new RdmaUnavailableError(`${what}: ${code}, /dev/infiniband/rdma_cm missing`, { cause: err });
    }
    if (code === 'EPERM' || code === 'EACCES') {
      throw new TransportError(
        `${what}: permission denied: run as root or grant access to /dev/infiniband/* ` + 'and raise RLIMIT_MEMLOCK',
        'disconnected',
        { cause: err },
      );
    }
    throw new TransportError(`${what} failed: ${(err as Error).message}`, 'disconnected', { cause: err });
  }
}

/** What the channel is told about its fds (pollers run them) and its device. */
export interface VerbsEventHandlers {
  /** The rdma_cm event channel is readable: read it with cmGetEvent() until null. */
  cmEvents(): void;
  /** The completion channel is readable. */
  completions(): void;
  /** An async event of the channel's device (any port, any QP). */
  asyncEvent(ev: AsyncEvent): void;
  /** The poll of one of the channel's fds failed: the addon stopped it, nothing more comes from that fd. */
  pollFailed(fd: PolledFd, err: NativeError): void;
}

/** The fds a channel has polled. */
export type PolledFd = 'rdma_cm event channel' | 'completion channel' | 'device async events';

/** The device the cm id resolved to. */
export interface ChannelDevice {
  ctx: number;
  port: number;
  name: string;
  attr: DeviceAttr;
}

/** A registered IU pool: slot i is buf[i × IU length ...]. */
export interface IuPool {
  buf: Buffer;
  mr: number;
  addr: bigint;
  lkey: number;
}

interface PoolRegion {
  buf: Buffer;
  mr: number;
  addr: bigint;
  rkey: number;
}
interface UserRegion {
  mr: number;
  length: number;
}

interface Step {
  /** the undoing call, for the log line when it fails */
  what: string;
  undo: () => void;
  /** the same on a worker thread (freeAsync): the QP destroy */
  undoAsync?: () => Promise<void>;
  /** the cm id and its event channel: handed to ParkedIds instead when the id is parked */
  keptWhenParked?: boolean;
  /** stops a poller: freeAsync does these first (no event handler runs while the QP is destroyed) */
  poller?: boolean;
}

/** A QP destroy that took this long is logged at info level (ms). */
const SLOW_QP_DESTROY_MS = 100;

/** Send work requests beyond the IU slots (keep-alive probes are posted outside them). */
const EXTRA_SEND_WRS = 8;
/** CQ entries beyond one per IU slot and posted receive (covers EXTRA_SEND_WRS). */
const EXTRA_CQES = 16;

/** Memory the peer reads and writes through RDMA (IU pools are local only). */
const REMOTE_ACCESS = R.IBV_ACCESS_LOCAL_WRITE | R.IBV_ACCESS_REMOTE_WRITE | R.IBV_ACCESS_REMOTE_READ;

export class VerbsResources {
  eventChannel = 0;
  cmId = 0;
  device: ChannelDevice | undefined;
  pd = 0;
  compChannel = 0;
  cq = 0;
  qpNum = 0;
  sendPool: IuPool | undefined;
  recvPool: IuPool | undefined;
  private readonly pools: PoolRegion[] = [];
  /** per-command registrations (registerBuffer outside the pools), by rkey */
  private readonly userRegions = new Map<number, UserRegion>();
  /** rdma_connect was called: tearing the id down sends a CM MAD (DREQ/REJ) */
  private connectSent = false;
  private readonly steps: Step[] = [];
  private cmIdStep: Step | undefined;
  /** freeAsync is running: deregister() leaves the regions to it (after the QP is gone) */
  private freeing = false;

  constructor(
    private readonly b: NativeBinding,
    private readonly log: SrpLogger,
    private readonly on: VerbsEventHandlers,
  ) {}

  /** rdma_create_event_channel, watched by a poller. */
  openEventChannel(): void {
    const b = this.b;
    const ch = verbsCall(() => b.cmCreateChannel(), 'rdma_create_event_channel');
    this.eventChannel = ch.channel;
    this.steps.push({
      what: 'rdma_destroy_event_channel',
      undo: () => b.cmDestroyChannel(ch.channel),
      keptWhenParked: true,
    });
    const poller = b.pollStart(ch.fd, UV_READABLE, (err) => {
      if (err) this.on.pollFailed('rdma_cm event channel', err);
      else this.on.cmEvents();
    });
    this.steps.push({ what: 'stop the rdma_cm event poller', undo: () => b.pollStop(poller), poller: true });
  }

  /** rdma_create_id on the event channel (RDMA_PS_TCP: a reliable connection). */
  createCmId(): void {
    const id = verbsCall(() => this.b.cmCreateId(this.eventChannel, R.RDMA_PS_TCP), 'rdma_create_id');
    this.cmId = id;
    this.cmIdStep = { what: 'rdma_destroy_id', undo: () => this.b.cmDestroyId(id), keptWhenParked: true };
    this.steps.push(this.cmIdStep);
  }

  /** Destroys the id of a failed address resolution (the last step), so another can be tried. */
  destroyCmId(): void {
    const step = this.cmIdStep;
    if (!step || this.steps[this.steps.length - 1] !== step) {
      throw new Error('destroyCmId: the cm id is not the last resource');
    }
    step.undo();
    this.steps.pop();
    this.cmIdStep = undefined;
    this.cmId = 0;
  }

  /**
   * Once the address is resolved: the device (watched for async events), PD, completion channel,
   * CQ, registered memory and QP.
   */
  allocate(o: ResolvedTransportOptions, poolBufs: Buffer[]): void {
    const b = this.b;
    const info = b.cmIdInfo(this.cmId);
    const ctx = info.context;
    const attr = b.ctxQuery(ctx);
    this.device = { ctx, port: info.port, name: info.device ?? '?', attr };
    const unsubscribe = AsyncEventHub.subscribe(
      b,
      ctx,
      attr.asyncFd,
      (ev) => this.on.asyncEvent(ev),
      (err) => this.on.pollFailed('device async events', err),
    );
    this.steps.push({ what: 'unsubscribe from device async events', undo: unsubscribe });

    const pd = (this.pd = verbsCall(() => b.pdAlloc(ctx), 'ibv_alloc_pd'));
    this.steps.push({ what: 'ibv_dealloc_pd', undo: () => b.pdDealloc(pd) });

    const cc = verbsCall(() => b.compChannelCreate(ctx), 'ibv_create_comp_channel');
    this.compChannel = cc.channel;
    this.steps.push({ what: 'ibv_destroy_comp_channel', undo: () => b.compChannelDestroy(cc.channel) });
    const poller = b.pollStart(cc.fd, UV_READABLE, (err) => {
      if (err) this.on.pollFailed('completion channel', err);
      else this.on.completions();
    });
    this.steps.push({ what: 'stop the completion poller', undo: () => b.pollStop(poller), poller: true });

    const depth = o.sendQueueDepth + o.recvQueueDepth + EXTRA_CQES;
    const cq = (this.cq = verbsCall(
      () => (o.compVector ? b.cqCreate(ctx, depth, cc.channel, o.compVector) : b.cqCreate(ctx, depth, cc.channel)),
      'ibv_create_cq',
    ));
    this.steps.push({ what: 'ibv_destroy_cq', undo: () => b.cqDestroy(cq) });

    this.sendPool = this.registerIuPool(o.sendQueueDepth * o.maxSendIuLen);
    this.recvPool = this.registerIuPool(o.recvQueueDepth * o.recvIuLen);
    for (const buf of poolBufs) {
      const mr = verbsCall(() => b.mrReg(pd, buf, REMOTE_ACCESS), 'ibv_reg_mr');
      this.pools.push({ buf, mr: mr.mr, addr: mr.addr, rkey: mr.rkey });
      this.steps.push({ what: 'ibv_dereg_mr', undo: () => b.mrDereg(mr.mr) });
    }
    this.steps.push({ what: 'ibv_dereg_mr', undo: () => this.deregisterAll() });

    const caps = verbsCall(
      () =>
        b.cmCreateQp(this.cmId, {
          pd,
          sendCq: cq,
          recvCq: cq,
          maxSendWr: o.sendQueueDepth + EXTRA_SEND_WRS,
          maxRecvWr: o.recvQueueDepth,
          maxSendSge: 1,
          maxRecvSge: 1,
        }),
      'rdma_create_qp',
    );
    this.qpNum = caps.qpNum;
    const id = this.cmId;
    this.steps.push({
      what: 'rdma_destroy_qp',
      undo: () => b.cmDestroyQp(id),
      undoAsync: () => b.cmDestroyQpAsync(id),
    });
  }

  private registerIuPool(size: number): IuPool {
    const buf = Buffer.allocUnsafeSlow(size);
    const mr = verbsCall(() => this.b.mrReg(this.pd, buf, R.IBV_ACCESS_LOCAL_WRITE), 'ibv_reg_mr');
    this.steps.push({ what: 'ibv_dereg_mr', undo: () => this.b.mrDereg(mr.mr) });
    return { buf, mr: mr.mr, addr: mr.addr, lkey: mr.lkey };
  }

  /** rdma_connect: from now on, tearing the id down sends a CM MAD (DREQ, or REJ while connecting). */
  connect(param: ConnParam): void {
    this.connectSent = true;
    verbsCall(() => this.b.cmConnect(this.cmId, param), 'rdma_connect');
  }

  /**
   * The channel's port is not ACTIVE (a CM MAD sent now would fail: see ParkedIds), as the device's
   * async events tell it (AsyncEventHub.portActive: no ibv_query_port after the first time).
   */
  portDown(): boolean {
    const d = this.device;
    if (!d || !d.ctx || !d.port) return false;
    const query = (): boolean => {
      try {
        return this.b.portQuery(d.ctx, d.port).state === R.IBV_PORT_ACTIVE;
      } catch {
        return true;
      }
    };
    return !AsyncEventHub.portActive(this.b, d.ctx, d.attr.asyncFd, d.port, query);
  }

  /* ---------------------------------------------------------- memory the peer accesses */

  /**
   * Makes buf reachable by the peer: a view into a pool needs no system call, any other buffer is
   * registered until deregister(). Zero-length buffers cannot be registered and get a harmless key.
   */
  register(buf: Buffer): MemoryRegion {
    for (const p of this.pools) {
      if (
        buf.buffer === p.buf.buffer &&
        buf.byteOffset >= p.buf.byteOffset &&
        buf.byteOffset + buf.length <= p.buf.byteOffset + p.buf.length
      ) {
        return { va: p.addr + BigInt(buf.byteOffset - p.buf.byteOffset), rkey: p.rkey, length: buf.length };
      }
    }
    if (buf.length === 0) return { va: 0n, rkey: 0, length: 0 };
    const mr = verbsCall(() => this.b.mrReg(this.pd, buf, REMOTE_ACCESS), 'ibv_reg_mr');
    this.userRegions.set(mr.rkey, { mr: mr.mr, length: buf.length });
    return { va: mr.addr, rkey: mr.rkey, length: buf.length };
  }

  deregister(region: MemoryRegion): void {
    if (this.freeing) return; // deregistered by freeAsync once the QP is gone
    const u = this.userRegions.get(region.rkey);
    if (!u) return; // pool view, or already released with the connection
    this.userRegions.delete(region.rkey);
    this.b.mrDereg(u.mr);
  }

  /** Live registrations outside the pools. */
  get registeredRegions(): number {
    return this.userRegions.size;
  }

  private deregisterAll(): void {
    for (const u of this.userRegions.values()) this.attempt('ibv_dereg_mr', () => this.b.mrDereg(u.mr));
    this.userRegions.clear();
  }

  /* ---------------------------------------------------------- teardown */

  /**
   * Undoes every step, the last created first; safe to call more than once. A cm id that sent a
   * CM MAD on a port that is not ACTIVE is parked instead, with its event channel: its QP goes to
   * ERR (flushing what was posted), everything else is released as usual.
   */
  free(): void {
    const d = this.device;
    const id = this.cmId;
    const channel = this.eventChannel;
    const park = id !== 0 && this.connectSent && d !== undefined && this.portDown();
    if (park) this.flushQp(id);
    for (let step = this.steps.pop(); step; step = this.steps.pop()) {
      if (park && step.keptWhenParked) continue;
      this.attempt(step.what, step.undo);
    }
    if (park) ParkedIds.park(this.b, d.ctx, d.port, d.attr.asyncFd, id, channel, this.log);
    this.forget();
  }

  /**
   * free() for a lost channel, without blocking the event loop on the QP destroy: on soft-RoCE
   * (rxe) rdma_destroy_qp of a channel lost to a carrier loss waits for packets queued on an
   * unresolved neighbour entry, seconds during which every other channel's I/O would wait
   * (docs/failover.md, "Soft-RoCE: a QP destroyed while its link is down"). The handles read 0 at
   * once and the channel's pollers are stopped, so nothing on this thread uses the QP, its CQ or
   * the id meanwhile (the addon refuses them with EBUSY as well); the QP is destroyed on a worker
   * thread, and what depends on it (registered memory, CQ, completion channel, PD, the cm id) is
   * released in the usual order once that settled. A failed destroy is logged and the rest still
   * released (what the kernel still holds fails and is logged too). Whether the id is parked is
   * decided then, by the port's state at that time. Resolves when everything was released.
   */
  async freeAsync(): Promise<void> {
    const d = this.device;
    const id = this.cmId;
    const channel = this.eventChannel;
    const parkable = id !== 0 && this.connectSent && d !== undefined;
    if (parkable && this.portDown()) this.flushQp(id);
    const steps = this.steps.splice(0).reverse();
    this.forget();
    this.freeing = true;
    try {
      for (const step of steps) if (step.poller) this.attempt(step.what, step.undo);
      let park: boolean | undefined;
      for (const step of steps) {
        if (step.poller) continue;
        if (step.keptWhenParked) {
          park ??= parkable && this.portDown();
          if (park) continue;
        }
        if (step.undoAsync) await this.attemptAsync(step.what, step.undoAsync);
        else this.attempt(step.what, step.undo);
      }
      if (park) ParkedIds.park(this.b, d!.ctx, d!.port, d!.attr.asyncFd, id, channel, this.log);
    } finally {
      this.freeing = false;
    }
  }

  /** Moves the QP to ERR: what was posted is flushed (a parked id keeps no live QP). */
  private flushQp(id: number): void {
    try {
      this.b.qpModify(id, { state: R.IBV_QPS_ERR });
    } catch {
      /* no QP */
    }
  }

  /** Handles back to 0 (released, or being released by freeAsync). */
  private forget(): void {
    this.cmIdStep = undefined;
    this.eventChannel = this.cmId = this.pd = this.compChannel = this.cq = 0;
    this.sendPool = this.recvPool = undefined;
    this.pools.length = 0;
  }

  private attempt(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log.warn({ err, what }, 'rdma: release failed');
    }
  }

  private async attemptAsync(what: string, fn: () => Promise<void>): Promise<void> {
    const t0 = performance.now();
    try {
      await fn();
    } catch (err) {
      this.log.warn({ err, what }, 'rdma: release failed');
      return;
    }
    const ms = Math.round(performance.now() - t0);
    const fields = { what, ms, qpNum: this.qpNum };
    if (ms >= SLOW_QP_DESTROY_MS) this.log.info(fields, 'rdma: slow release, done on a worker thread');
    else this.log.debug(fields, 'rdma: released on a worker thread');
  }
}
