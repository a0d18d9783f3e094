/**
 * The RDMA channel transport: one RC queue pair and its rdma_cm id, through the native addon
 * (librdmacm + libibverbs), implementing ChannelTransport so the SRP session runs unchanged over
 * the loopback or over RDMA.
 *
 * Per connection: an rdma_cm event channel, a cm id, a PD, one CQ with a completion channel, the QP,
 * a registered send pool (IUs are copied in: "the bytes are taken at call time") and a registered
 * receive pool (IUs are handed to listeners as views, then the buffer is reposted). Registered
 * buffer pools given in options are registered once per connection, so registerBuffer() of a view
 * into one costs no system call. Everything is released on close, on loss and on failed connects.
 *
 * Failure detection: QP async events (PORT_ERR, QP_FATAL, DEVICE_FATAL), CM
 * DISCONNECTED / DEVICE_REMOVAL, failed work completions, and probe() (a zero-length RDMA WRITE) for a
 * silent black hole, which fails after (retryCount + 1) × 4.096 µs × 2^ackTimeout. retryCount is
 * kept ≤ 6 because 7 means "retry forever" on rxe; the ACK timeout is set with rdma_set_option.
 * librdmacm does not move the QP to error on DISCONNECTED, so we call rdma_disconnect ourselves.
 * Address resolution uses a short timeout with retries (100 ms: it waits the whole timeout when no
 * neighbour entry exists yet, then succeeds).
 */
import { TransportError } from '../scsi-executor.js';
import { SRP_LOGIN_REJ, SRP_LOGIN_RSP } from '../srp-constants.js';
import { decodeLoginRsp } from '../srp-iu.js';
import type { SrpLogger } from '../srp-session.js';
import { Emitter, type ChannelEvents, type ChannelState, type ChannelTransport, type LoginForm, type MemoryRegion } from '../transport.js';
import { readWc, type AsyncEvent, type CmEvent, type DeviceAttr, type NativeBinding, type NativeError } from '../../native/native.js';
import * as R from '../../native/rdma-constants.js';
import { encodeRdmaAddress, formatRdmaAddress } from '../../native/sockaddr.js';
import { AsyncEventHub } from './async-event-hub.js';
import { resolveTransportOptions, type RdmaTransportOptions, type ResolvedTransportOptions } from './options.js';
import { ParkedIds } from './parked-ids.js';

export interface RdmaChannelEvents extends ChannelEvents {
  /** Any device async event of this channel's device (PORT_ACTIVE included), for logs and reconnect triggers. */
  asyncEvent: [ev: AsyncEvent & { name: string; device: string }];
}

const silent: SrpLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** wr_id spaces */
const WR_RECV = 0x10_0000;
const WR_PROBE = 0x20_0000;
const POLL_BATCH = 64;

/* ------------------------------------------------------------ errors */

/** No usable RDMA device / kernel support, with what to do. */
export class RdmaUnavailableError extends TransportError {
  constructor(detail: string, options?: { cause?: unknown }) {
    super(`no RDMA device available (${detail}): load an RDMA driver, e.g. \`modprobe rdma_rxe && rdma link add rxe0 type rxe netdev eth0\`, `
      + 'and make sure /dev/infiniband/rdma_cm and uverbs devices exist (modprobe rdma_ucm ib_uverbs)', 'disconnected', options);
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
    throw new RdmaUnavailableError(code === 'ENOSYS' ? 'the kernel has no RDMA support loaded (ibv_get_device_list: ENOSYS)' : `ibv_get_device_list: ${code}`, { cause: err });
  }
  if (names.length === 0) throw new RdmaUnavailableError('ibv_get_device_list returned no device');
  return names;
}

/* ------------------------------------------------------------ transport */

interface UserMr { mr: number; length: number }
interface Pool { buf: Buffer; mr: number; addr: bigint; rkey: number }

export class RdmaChannelTransport extends Emitter<RdmaChannelEvents> implements ChannelTransport {
  readonly loginForm: LoginForm = 'rdma-cm';
  private stateValue: ChannelState = 'idle';
  private readonly o: ResolvedTransportOptions;
  private keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  private keepaliveInFlight = false;
  private readonly log: SrpLogger;
  private readonly poolBufs: Buffer[];
  private maxRegion: number;

  private channel = 0;
  private cmPoller = 0;
  private id = 0;
  private ctx = 0;
  private port = 0;
  private device = '';
  private qpNum = 0;
  private pd = 0;
  private compCh = 0;
  private compPoller = 0;
  private cq = 0;
  private unsubscribeAsync: (() => void) | undefined;
  private sendPool: { buf: Buffer; mr: number; addr: bigint; lkey: number } | undefined;
  private recvPool: { buf: Buffer; mr: number; addr: bigint; lkey: number } | undefined;
  private freeSlots: number[] = [];
  private readonly userMrs = new Map<number, UserMr>();
  private readonly pools: Pool[] = [];
  private readonly wcBuf = Buffer.alloc(POLL_BATCH * R.WC_RECORD_LEN);
  private cmWaiter: ((ev: CmEvent) => void) | undefined;
  private probeSeq = 0;
  private readonly probes = new Map<number, { resolve: (ms: number) => void; reject: (e: Error) => void; t0: number }>();
  private closing = false;
  /** rdma_connect was called: tearing the id down sends a CM MAD (DREQ/REJ) */
  private cmSent = false;
  private disconnectedFired = false;
  private drainWaiter: (() => void) | undefined;
  /** counters for status and tests */
  readonly stats = { sends: 0, recvs: 0, completions: 0, pollBatches: 0, probes: 0, resolveAttempts: 0, connectMs: 0 };

  constructor(private readonly b: NativeBinding, options: RdmaTransportOptions) {
    super();
    this.o = resolveTransportOptions(options);
    this.maxRegion = this.o.maxRegionSize;
    this.poolBufs = options.pools ?? [];
    this.log = options.logger ?? silent;
  }

  get state(): ChannelState {
    return this.stateValue;
  }
  get maxRegionSize(): number {
    return this.maxRegion;
  }
  /** Device, port and QP number once connected (for logs and status). */
  get info(): { device: string; port: number; qpNum: number; dst: string } {
    return { device: this.device, port: this.port, qpNum: this.qpNum, dst: formatRdmaAddress(this.o.dst) };
  }
  /** The verbs device context and port this channel uses (known once the address is resolved). */
  get deviceHandle(): { ctx: number; port: number; asyncFd: number; device: string } | undefined {
    return this.ctx && this.devAttr ? { ctx: this.ctx, port: this.port, asyncFd: this.devAttr.asyncFd, device: this.device } : undefined;
  }

  /* ---------------------------------------------------------- connect */

  async connect(loginReq: Buffer, opts: { timeoutMs?: number } = {}): Promise<Buffer> {
    if (this.stateValue !== 'idle') throw new TransportError(`connect in state ${this.stateValue}`, 'closed');
    this.stateValue = 'connecting';
    const t0 = Date.now();
    const deadline = t0 + (opts.timeoutMs ?? 5000);
    const dst = formatRdmaAddress(this.o.dst);
    try {
      checkRdmaAvailable(this.b);
      const ch = this.sys(() => this.b.cmCreateChannel(), 'rdma_create_event_channel');
      this.channel = ch.channel;
      this.cmPoller = this.b.pollStart(ch.fd, 1, () => this.drainCm());
      await this.resolve(deadline, dst);
      this.setupVerbs();
      this.b.cmSetOption(this.id, R.RDMA_OPTION_ID, R.RDMA_OPTION_ID_ACK_TIMEOUT, Buffer.from([this.o.ackTimeout]));
      const attr = this.devAttr!;
      this.cmSent = true;
      this.sys(() => this.b.cmConnect(this.id, {
        privateData: loginReq,
        responderResources: Math.min(attr.maxQpRdAtom, 16),
        initiatorDepth: Math.min(attr.maxQpInitRdAtom, 16),
        retryCount: this.o.retryCount,
        rnrRetryCount: this.o.rnrRetryCount,
      }), 'rdma_connect');
      const ev = await this.nextCmEvent(deadline, `no answer to the login request from ${dst}`);
      switch (ev.event) {
        case R.RDMA_CM_EVENT_ESTABLISHED: {
          const rsp = Buffer.from(ev.privateData ?? Buffer.alloc(0));
          this.checkLoginRsp(rsp);
          this.stateValue = 'connected';
          this.stats.connectMs = Date.now() - t0;
          this.startKeepalive();
          this.log.info({ dst, device: this.device, port: this.port, qpNum: this.qpNum, ms: this.stats.connectMs }, 'rdma: connected');
          return rsp;
        }
        case R.RDMA_CM_EVENT_REJECTED:
          if (ev.privateData && ev.privateData[0] === SRP_LOGIN_REJ) {
            const rej = Buffer.from(ev.privateData);
            this.release();
            this.stateValue = 'closed';
            return rej;
          }
          throw new TransportError(`connection to ${dst} rejected (CM reject reason ${ev.status}${ev.status === 8 ? ': invalid service ID, no SRP target listening there' : ''})`, 'disconnected');
        case R.RDMA_CM_EVENT_UNREACHABLE:
          throw new TransportError(`target ${dst} unreachable (no answer to the CM REQ)`, 'disconnected');
        default:
          throw new TransportError(`connect to ${dst} failed: ${R.nameOfCmEvent(ev.event)} (status ${ev.status})`, 'disconnected');
      }
    } catch (err) {
      this.release();
      this.stateValue = 'closed';
      if (err instanceof TransportError) throw err;
      throw new TransportError(`connect to ${dst} failed: ${(err as Error).message}`, 'disconnected', { cause: err });
    }
  }

  /** Runs a setup call, turning its NativeError into a TransportError naming the call. */
  private sys<T>(fn: () => T, what: string): T {
    try {
      return fn();
    } catch (err) {
      const code = (err as NativeError).code;
      if (what === 'rdma_create_event_channel' && (code === 'ENODEV' || code === 'ENOENT')) {
        throw new RdmaUnavailableError(`${what}: ${code}, /dev/infiniband/rdma_cm missing`, { cause: err });
      }
      if (code === 'EPERM' || code === 'EACCES') {
        throw new TransportError(`${what}: permission denied: run as root or grant access to /dev/infiniband/* and raise RLIMIT_MEMLOCK`, 'disconnected', { cause: err });
      }
      throw new TransportError(`${what} failed: ${(err as Error).message}`, 'disconnected', { cause: err });
    }
  }

  private async resolve(deadline: number, dst: string): Promise<void> {
    const dstAddr = encodeRdmaAddress(this.o.dst);
    const srcAddr = this.o.src ? encodeRdmaAddress(this.o.src) : null;
    let last = '';
    for (let attempt = 1; ; attempt++) {
      this.stats.resolveAttempts++;
      this.id = this.sys(() => this.b.cmCreateId(this.channel, R.RDMA_PS_TCP), 'rdma_create_id');
      this.sys(() => this.b.cmResolveAddr(this.id, srcAddr, dstAddr, this.o.resolveTimeoutMs), 'rdma_resolve_addr');
      const ev = await this.nextCmEvent(deadline, `address of ${dst} not resolved`);
      if (ev.event === R.RDMA_CM_EVENT_ADDR_RESOLVED) break;
      last = `${R.nameOfCmEvent(ev.event)} status ${ev.status}`;
      this.b.cmDestroyId(this.id);
      this.id = 0;
      if (attempt >= this.o.resolveAttempts) {
        throw new TransportError(`target ${dst} unreachable: address resolution failed ${attempt} times (${last}); check the route and that the local RDMA port is up`, 'disconnected');
      }
    }
    this.sys(() => this.b.cmResolveRoute(this.id, this.o.routeTimeoutMs), 'rdma_resolve_route');
    const ev = await this.nextCmEvent(deadline, `route to ${dst} not resolved`);
    if (ev.event !== R.RDMA_CM_EVENT_ROUTE_RESOLVED) {
      throw new TransportError(`target ${dst} unreachable: ${R.nameOfCmEvent(ev.event)} (status ${ev.status})`, 'disconnected');
    }
  }

  private devAttr: DeviceAttr | undefined;

  private setupVerbs(): void {
    const info = this.b.cmIdInfo(this.id);
    this.ctx = info.context;
    this.port = info.port;
    this.device = info.device ?? '?';
    const attr = (this.devAttr = this.b.ctxQuery(this.ctx));
    this.maxRegion = Math.min(this.o.maxRegionSize, Number(attr.maxMrSize));
    this.unsubscribeAsync = AsyncEventHub.subscribe(this.b, this.ctx, attr.asyncFd, (ev) => this.onAsync(ev));
    this.pd = this.sys(() => this.b.pdAlloc(this.ctx), 'ibv_alloc_pd');
    const cc = this.sys(() => this.b.compChannelCreate(this.ctx), 'ibv_create_comp_channel');
    this.compCh = cc.channel;
    this.compPoller = this.b.pollStart(cc.fd, 1, () => this.onCompletionEvent());
    const depth = this.o.sendQueueDepth + this.o.recvQueueDepth + 16;
    this.cq = this.sys(() => this.b.cqCreate(this.ctx, depth, this.compCh), 'ibv_create_cq');
    const caps = this.sys(() => this.b.cmCreateQp(this.id, {
      pd: this.pd, sendCq: this.cq, recvCq: this.cq, maxSendWr: this.o.sendQueueDepth + 8, maxRecvWr: this.o.recvQueueDepth,
      maxSendSge: 1, maxRecvSge: 1,
    }), 'rdma_create_qp');
    this.qpNum = caps.qpNum;
    const reg = (size: number, access: number) => {
      const buf = Buffer.allocUnsafeSlow(size);
      const mr = this.sys(() => this.b.mrReg(this.pd, buf, access), 'ibv_reg_mr');
      return { buf, mr: mr.mr, addr: mr.addr, lkey: mr.lkey };
    };
    this.sendPool = reg(this.o.sendQueueDepth * this.o.maxSendIuLen, R.IBV_ACCESS_LOCAL_WRITE);
    this.recvPool = reg(this.o.recvQueueDepth * this.o.recvIuLen, R.IBV_ACCESS_LOCAL_WRITE);
    this.freeSlots = Array.from({ length: this.o.sendQueueDepth }, (_, i) => this.o.sendQueueDepth - 1 - i);
    for (const buf of this.poolBufs) {
      const mr = this.sys(() => this.b.mrReg(this.pd, buf, R.IBV_ACCESS_LOCAL_WRITE | R.IBV_ACCESS_REMOTE_WRITE | R.IBV_ACCESS_REMOTE_READ), 'ibv_reg_mr');
      this.pools.push({ buf, mr: mr.mr, addr: mr.addr, rkey: mr.rkey });
    }
    for (let i = 0; i < this.o.recvQueueDepth; i++) this.postRecv(i);
    this.b.cqReqNotify(this.cq);
  }

  private checkLoginRsp(rsp: Buffer): void {
    if (rsp.length < 52 || rsp[0] !== SRP_LOGIN_RSP) return; // the session judges what it got
    const { maxTiIuLen } = decodeLoginRsp(rsp);
    if (maxTiIuLen > this.o.recvIuLen) {
      throw new TransportError(`target max_ti_iu_len ${maxTiIuLen} exceeds the receive buffers (${this.o.recvIuLen}): raise recvIuLen`, 'protocol');
    }
  }

  /* ---------------------------------------------------------- CM events */

  private nextCmEvent(deadline: number, what: string): Promise<CmEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.cmWaiter = undefined;
        reject(new TransportError(`${what} before the connect timeout`, 'timeout'));
      }, Math.max(0, deadline - Date.now()));
      this.cmWaiter = (ev) => {
        clearTimeout(timer);
        this.cmWaiter = undefined;
        resolve(ev);
      };
    });
  }

  private drainCm(): void {
    for (;;) {
      if (!this.channel) return;
      let ev: CmEvent | null;
      try {
        ev = this.b.cmGetEvent(this.channel);
      } catch (err) {
        this.emit('error', err as Error);
        return;
      }
      if (!ev) return;
      if (ev.id !== this.id && ev.id !== 0) continue; // a destroyed resolve attempt
      this.log.debug({ event: R.nameOfCmEvent(ev.event), status: ev.status }, 'rdma: cm event');
      if (this.cmWaiter) {
        this.cmWaiter(ev);
        continue;
      }
      switch (ev.event) {
        case R.RDMA_CM_EVENT_DISCONNECTED:
          if (this.closing) {
            this.finishClose();
          } else {
            this.lost(`target ${formatRdmaAddress(this.o.dst)} disconnected (RDMA_CM_EVENT_DISCONNECTED)`);
          }
          break;
        case R.RDMA_CM_EVENT_DEVICE_REMOVAL:
          this.lost(`RDMA device ${this.device} removed`);
          break;
        case R.RDMA_CM_EVENT_ADDR_CHANGE:
          this.log.warn({ device: this.device }, 'rdma: local address changed');
          break;
        default:
          break;
      }
    }
  }

  private onAsync(ev: AsyncEvent): void {
    const name = R.nameOfAsyncEvent(ev.type);
    this.emit('asyncEvent', { ...ev, name, device: this.device });
    if (this.stateValue === 'closed') return;
    switch (ev.type) {
      case R.IBV_EVENT_PORT_ERR:
        if (ev.portNum === this.port) this.lost(`link down: ${name} on ${this.device} port ${ev.portNum}`);
        return;
      case R.IBV_EVENT_QP_FATAL: case R.IBV_EVENT_QP_REQ_ERR: case R.IBV_EVENT_QP_ACCESS_ERR:
        if (ev.qpNum === this.qpNum) this.lost(`queue pair ${this.qpNum} failed: ${name}`);
        return;
      case R.IBV_EVENT_DEVICE_FATAL:
        this.lost(`device ${this.device} failed: ${name}`);
        return;
      default:
        return;
    }
  }

  /* ---------------------------------------------------------- completions */

  private onCompletionEvent(): void {
    if (!this.compCh) return;
    while (this.b.cqGetEvent(this.compCh) !== 0) { /* acknowledged in the addon */ }
    this.pollAll();
    if (!this.cq) return;
    this.b.cqReqNotify(this.cq);
    this.pollAll(); // completions that arrived between the last poll and re-arming
  }

  private pollAll(): void {
    while (this.cq) {
      const n = this.b.cqPoll(this.cq, this.wcBuf, POLL_BATCH);
      if (n === 0) return;
      this.stats.pollBatches++;
      for (let i = 0; i < n && this.cq; i++) this.onWc(i);
      if (n < POLL_BATCH) return;
    }
  }

  private onWc(i: number): void {
    const wc = readWc(this.wcBuf, i);
    this.stats.completions++;
    if (wc.wrId >= WR_PROBE) {
      const p = this.probes.get(wc.wrId);
      this.probes.delete(wc.wrId);
      if (wc.status === R.IBV_WC_SUCCESS) p?.resolve(Date.now() - p.t0);
      else {
        const e = new TransportError(`keep-alive probe failed: ${R.describeWcStatus(wc.status)}`, 'disconnected');
        p?.reject(e);
        this.lost(e.message);
      }
      return;
    }
    if (wc.status !== R.IBV_WC_SUCCESS) {
      if (wc.wrId < WR_RECV) this.freeSlots.push(wc.wrId);
      if (this.closing || this.stateValue !== 'connected') return; // flushed while going away
      this.lost(`${wc.wrId >= WR_RECV ? 'receive' : 'send'} failed: ${R.describeWcStatus(wc.status)} (vendor error 0x${wc.vendorErr.toString(16)})`);
      return;
    }
    if (wc.wrId >= WR_RECV) {
      const slot = wc.wrId - WR_RECV;
      const off = slot * this.o.recvIuLen;
      this.stats.recvs++;
      if (this.stateValue === 'connected' || this.stateValue === 'connecting') {
        this.emit('iu', this.recvPool!.buf.subarray(off, off + wc.byteLen));
      }
      if (this.stateValue === 'connected' && !this.closing) this.postRecv(slot);
      return;
    }
    this.freeSlots.push(wc.wrId);
    if (this.drainWaiter && this.freeSlots.length === this.o.sendQueueDepth) this.drainWaiter();
  }

  private postRecv(slot: number): void {
    const p = this.recvPool!;
    try {
      this.b.postRecv(this.id, WR_RECV + slot, p.addr + BigInt(slot * this.o.recvIuLen), this.o.recvIuLen, p.lkey);
    } catch (err) {
      if (this.stateValue === 'connected') this.lost(`ibv_post_recv failed: ${(err as Error).message}`);
      else throw err;
    }
  }

  /* ---------------------------------------------------------- data path */

  send(iu: Buffer): void {
    if (this.stateValue !== 'connected' || this.closing) throw new TransportError(`send on a ${this.closing ? 'closing' : this.stateValue} channel`, 'disconnected');
    if (iu.length > this.o.maxSendIuLen) throw new TransportError(`IU of ${iu.length} bytes exceeds the send buffer (${this.o.maxSendIuLen})`, 'protocol');
    const slot = this.freeSlots.pop();
    if (slot === undefined) throw new TransportError(`send queue full (${this.o.sendQueueDepth} IUs in flight)`, 'protocol');
    const p = this.sendPool!;
    const off = slot * this.o.maxSendIuLen;
    iu.copy(p.buf, off);
    try {
      this.b.postSend(this.id, slot, R.IBV_WR_SEND, p.addr + BigInt(off), iu.length, p.lkey, R.IBV_SEND_SIGNALED, 0n, 0);
      this.stats.sends++;
    } catch (err) {
      this.freeSlots.push(slot);
      const msg = `ibv_post_send failed: ${(err as Error).message}`;
      this.lost(msg);
      throw new TransportError(msg, 'disconnected', { cause: err });
    }
  }

  /**
   * Keep-alive: a zero-length RDMA WRITE (no SGE, remote address 0, rkey 0). Resolves with the round
   * trip in ms; when the path is a black hole it fails after the QP's retries and the channel is lost.
   */
  probe(): Promise<number> {
    if (this.stateValue !== 'connected' || this.closing) return Promise.reject(new TransportError(`probe on a ${this.stateValue} channel`, 'disconnected'));
    const wrId = WR_PROBE + (this.probeSeq = (this.probeSeq + 1) % 0x10_0000);
    return new Promise((resolve, reject) => {
      this.probes.set(wrId, { resolve, reject, t0: Date.now() });
      try {
        this.b.postSend(this.id, wrId, R.IBV_WR_RDMA_WRITE, 0n, 0, 0, R.IBV_SEND_SIGNALED, 0n, 0);
        this.stats.probes++;
      } catch (err) {
        this.probes.delete(wrId);
        const msg = `keep-alive probe: ibv_post_send failed: ${(err as Error).message}`;
        this.lost(msg);
        reject(new TransportError(msg, 'disconnected', { cause: err }));
      }
    });
  }

  private startKeepalive(): void {
    if (!this.o.keepaliveIntervalMs) return;
    this.keepaliveTimer = setInterval(() => {
      if (this.keepaliveInFlight || this.stateValue !== 'connected' || this.closing) return;
      this.keepaliveInFlight = true;
      // a failed probe has already declared the channel lost (lost() -> 'disconnect')
      this.probe().catch(() => undefined).finally(() => { this.keepaliveInFlight = false; });
    }, this.o.keepaliveIntervalMs);
    this.keepaliveTimer.unref?.();
  }

  registerBuffer(buf: Buffer): MemoryRegion {
    if (buf.length > this.maxRegion) throw new RangeError(`region of ${buf.length} bytes exceeds ${this.maxRegion}`);
    if (!this.pd) throw new TransportError(`registerBuffer on a ${this.stateValue} channel`, 'disconnected');
    for (const p of this.pools) {
      if (buf.buffer === p.buf.buffer && buf.byteOffset >= p.buf.byteOffset && buf.byteOffset + buf.length <= p.buf.byteOffset + p.buf.length) {
        return { va: p.addr + BigInt(buf.byteOffset - p.buf.byteOffset), rkey: p.rkey, length: buf.length };
      }
    }
    // zero-length buffers cannot be registered; describe them with a harmless key
    if (buf.length === 0) return { va: 0n, rkey: 0, length: 0 };
    const mr = this.sys(() => this.b.mrReg(this.pd, buf, R.IBV_ACCESS_LOCAL_WRITE | R.IBV_ACCESS_REMOTE_WRITE | R.IBV_ACCESS_REMOTE_READ), 'ibv_reg_mr');
    this.userMrs.set(mr.rkey, { mr: mr.mr, length: buf.length });
    return { va: mr.addr, rkey: mr.rkey, length: buf.length };
  }

  deregisterBuffer(region: MemoryRegion): void {
    const u = this.userMrs.get(region.rkey);
    if (!u) return; // pool view, or already released with the connection
    this.userMrs.delete(region.rkey);
    this.b.mrDereg(u.mr);
  }

  /** Live registrations outside the pools (tests check that nothing leaks). */
  get registeredRegions(): number {
    return this.userMrs.size;
  }

  /* ---------------------------------------------------------- teardown */

  close(): void {
    if (this.stateValue === 'closed' || this.closing) return;
    if (this.stateValue !== 'connected') {
      this.release();
      this.stateValue = 'closed';
      this.fireDisconnect(new TransportError('channel closed', 'closed'));
      return;
    }
    this.closing = true;
    // IUs already posted go out first (bounded), then DREQ; DISCONNECTED (or a timeout) ends it
    const disconnect = () => {
      this.drainWaiter = undefined;
      if (this.stateValue === 'closed') return;
      try {
        this.b.cmDisconnect(this.id);
      } catch {
        this.finishClose();
        return;
      }
      const t = setTimeout(() => this.finishClose(), 1000);
      t.unref?.();
    };
    if (this.freeSlots.length === this.o.sendQueueDepth) disconnect();
    else {
      this.drainWaiter = disconnect;
      const t = setTimeout(disconnect, 1000);
      t.unref?.();
    }
  }

  private finishClose(): void {
    if (this.stateValue === 'closed') return;
    this.release();
    this.stateValue = 'closed';
    this.fireDisconnect(new TransportError('channel closed', 'closed'));
  }

  /** The channel is gone: QP to error (rdma_disconnect), resources released, 'disconnect' emitted once. */
  private lost(reason: string): void {
    if (this.stateValue === 'closed') return;
    const wasConnecting = this.stateValue === 'connecting';
    this.log.warn({ reason, device: this.device, qpNum: this.qpNum }, 'rdma: channel lost');
    if (wasConnecting) {
      // connect() owns the cleanup; make its wait fail now
      this.cmWaiter?.({ event: R.RDMA_CM_EVENT_CONNECT_ERROR, id: this.id, status: 0, privateData: null });
      return;
    }
    if (this.id && !this.portDown()) {
      try {
        this.b.cmDisconnect(this.id);
      } catch { /* already disconnected */ }
    }
    this.release();
    this.stateValue = 'closed';
    this.fireDisconnect(new TransportError(reason, 'disconnected'));
  }

  private fireDisconnect(reason: TransportError): void {
    for (const [, p] of this.probes) p.reject(reason);
    this.probes.clear();
    if (this.disconnectedFired) return;
    this.disconnectedFired = true;
    this.emit('disconnect', reason);
  }

  /** The channel's port is not ACTIVE (a CM MAD sent now would fail: see ParkedIds). */
  private portDown(): boolean {
    if (!this.ctx || !this.port) return false;
    try {
      return this.b.portQuery(this.ctx, this.port).state !== R.IBV_PORT_ACTIVE;
    } catch {
      return false;
    }
  }

  /** Releases every resource, dependents first; safe to call more than once. */
  private release(): void {
    const b = this.b;
    // a connected/connecting id on a downed port is parked, not destroyed (no MAD through a downed port)
    const park = this.id !== 0 && this.cmSent && this.devAttr !== undefined && this.portDown();
    if (park && this.id) {
      try { b.qpModify(this.id, { state: R.IBV_QPS_ERR }); } catch { /* no QP */ }
    }
    const attempt = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (err) {
        this.log.warn({ err, what }, 'rdma: release failed');
      }
    };
    if (this.keepaliveTimer) { clearInterval(this.keepaliveTimer); this.keepaliveTimer = undefined; }
    if (this.cmPoller) { b.pollStop(this.cmPoller); this.cmPoller = 0; }
    if (this.compPoller) { b.pollStop(this.compPoller); this.compPoller = 0; }
    this.unsubscribeAsync?.();
    this.unsubscribeAsync = undefined;
    this.cmWaiter = undefined;
    if (this.id) attempt('rdma_destroy_qp', () => b.cmDestroyQp(this.id));
    for (const u of this.userMrs.values()) attempt('ibv_dereg_mr', () => b.mrDereg(u.mr));
    this.userMrs.clear();
    for (const p of this.pools.splice(0)) attempt('ibv_dereg_mr', () => b.mrDereg(p.mr));
    if (this.sendPool) attempt('ibv_dereg_mr', () => b.mrDereg(this.sendPool!.mr));
    if (this.recvPool) attempt('ibv_dereg_mr', () => b.mrDereg(this.recvPool!.mr));
    this.sendPool = this.recvPool = undefined;
    if (this.cq) attempt('ibv_destroy_cq', () => b.cqDestroy(this.cq));
    this.cq = 0;
    if (this.compCh) attempt('ibv_destroy_comp_channel', () => b.compChannelDestroy(this.compCh));
    this.compCh = 0;
    if (this.pd) attempt('ibv_dealloc_pd', () => b.pdDealloc(this.pd));
    this.pd = 0;
    if (park) {
      ParkedIds.park(b, this.ctx, this.port, this.devAttr!.asyncFd, this.id, this.channel, this.log);
    } else {
      if (this.id) attempt('rdma_destroy_id', () => b.cmDestroyId(this.id));
      if (this.channel) attempt('rdma_destroy_event_channel', () => b.cmDestroyChannel(this.channel));
    }
    this.id = 0;
    this.channel = 0;
  }
}
