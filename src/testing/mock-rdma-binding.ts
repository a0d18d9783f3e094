/**
 * An in-memory stand-in for the RDMA half of the native addon: one device ("mock0", port 1), cm
 * ids, PDs, MRs, CQs with completion channels, RC QPs, CM and async events, all delivered through
 * pollers exactly as the real addon does (the poller fires, the "get" call drains). The peer of
 * every connection is a MockTargetEnd (TargetChannelTransport with onConnect), so the test SRP
 * target serves it: `fabric.onConnect = (end) => target.accept(end as unknown as LoopbackTargetEnd)`.
 *
 * Faults: resolveFailures (ADDR_ERROR before success), cmRejects (CM REJ reasons for the next connects), portDown() (PORT_ERR), blackHole (nothing
 * is delivered or completed until the retry budget: a RETRY_EXC_ERR completion after
 * blackHoleDetectMs, never if that is Infinity; a connect sent meanwhile is never answered), answerDelayMs (a slow target: its
 * login answers come that much later), disconnectFromTarget(), failPolls() (a poll fails as the addon reports it).
 *
 * cmDestroyQpAsync settles on a later turn of the event loop, as the addon's worker thread does;
 * holdQpDestroys keeps it pending until settleQpDestroys(), qpDestroyError makes it fail. Meanwhile
 * the id and the QP's CQ are busy: calls with them fail with EBUSY and are counted in busyCalls.
 */
import { TransportError } from '../initiator/scsi-executor.js';
import {
  Emitter,
  type ChannelEvents,
  type ChannelState,
  type ConnectAnswer,
  type TargetChannelTransport,
} from '../initiator/transport.js';
import {
  UV_READABLE,
  readRecvWr,
  readSendWr,
  type AsyncEvent,
  type CmEvent,
  type CmIdInfo,
  type ConnParam,
  type DeviceAttr,
  type MrInfo,
  type NativeBinding,
  type NativeError,
  type PortAttr,
  type QpAttr,
  type QpCaps,
  type QpInit,
  type RdmaObjectCounts,
} from '../native/native.js';
import * as R from '../native/rdma-constants.js';

interface MockMr {
  pd: number;
  buf: Buffer;
  addr: bigint;
  lkey: number;
  rkey: number;
  access: number;
}
interface MockCq {
  compChannel: number;
  wcs: Buffer[];
  armed: boolean;
}
interface MockQp {
  qpNum: number;
  pd: number;
  cq: number;
  recvs: { wrId: number; addr: bigint; length: number; lkey: number }[];
  state: number;
}
interface MockPoller {
  fd: number;
  cb: (err: NativeError | null, events: number) => void;
  failed?: boolean;
}
interface MockId {
  channel: number;
  ctx: number;
  qp?: MockQp;
  peer?: MockTargetEnd;
  param?: ConnParam;
  connected: boolean;
  options: Map<number, Buffer>;
  /** "192.0.2.2:5000" (IPv4) or the sockaddr's hex, as given to cmResolveAddr */
  dst?: string;
  src?: string;
}

/** "a.b.c.d:port" of a sockaddr_in, else the bytes in hex. */
function sockaddrText(b: Buffer | null): string | undefined {
  if (!b) return undefined;
  if (b.length >= 8 && b.readUInt16LE(0) === 2) return `${[...b.subarray(4, 8)].join('.')}:${b.readUInt16BE(2)}`;
  return b.toString('hex');
}

/** Target end of a mock RDMA connection. */
export class MockTargetEnd extends Emitter<ChannelEvents> implements TargetChannelTransport {
  stateValue: ChannelState = 'connecting';
  handler: ((req: Buffer) => ConnectAnswer | Promise<ConnectAnswer>) | undefined;
  private gone = false;
  constructor(
    private readonly fabric: MockRdmaBinding,
    readonly idHandle: number,
    /** the destination the initiator resolved ("192.0.2.2:5000") */
    readonly dest: string = '',
  ) {
    super();
  }
  get state(): ChannelState {
    return this.stateValue;
  }
  onConnect(handler: (req: Buffer) => ConnectAnswer | Promise<ConnectAnswer>): void {
    this.handler = handler;
  }
  send(iu: Buffer): void {
    if (this.stateValue !== 'connected')
      throw new TransportError(`send on a ${this.stateValue} channel`, 'disconnected');
    const copy = Buffer.from(iu);
    this.fabric.later(() => this.fabric.deliverToInitiator(this.idHandle, copy));
  }
  rdmaRead(va: bigint, rkey: number, length: number): Promise<Buffer> {
    return this.fabric
      .remoteAccess(this.idHandle, va, rkey, length, R.IBV_ACCESS_REMOTE_READ)
      .then((v) => Buffer.from(v));
  }
  rdmaWrite(va: bigint, rkey: number, data: Buffer): Promise<void> {
    const copy = Buffer.from(data);
    return this.fabric.remoteAccess(this.idHandle, va, rkey, copy.length, R.IBV_ACCESS_REMOTE_WRITE).then((v) => {
      copy.copy(v);
    });
  }
  close(): void {
    this.fabric.disconnectFromTarget(this.idHandle);
  }
  /** @internal */
  deliver(iu: Buffer): void {
    this.emit('iu', iu);
  }
  /** @internal */
  gone_(reason: TransportError): void {
    if (this.gone) return;
    this.gone = true;
    this.stateValue = 'closed';
    this.emit('disconnect', reason);
  }
}

export class MockRdmaBinding implements Partial<NativeBinding> {
  /** Called for every connect with the new target end; install its onConnect handler there. */
  onConnect: ((end: MockTargetEnd) => void) | undefined;
  devices = ['mock0'];
  resolveFailures = 0;
  blackHole = false;
  blackHoleDetectMs = 50;
  /** The target answers a login (accept or reject) this long after the REQ: a slow target. */
  answerDelayMs = 0;
  /** CM reject reasons (enum ib_cm_rej_reason) for the next connects, first first: RDMA_CM_EVENT_REJECTED without private data. */
  cmRejects: number[] = [];
  readonly connectParams: ConnParam[] = [];
  readonly ackTimeouts: number[] = [];

  private next = 1;
  private nextFd = 100;
  private readonly channels = new Map<number, { fd: number; events: CmEvent[] }>();
  private readonly ids = new Map<number, MockId>();
  private readonly pds = new Set<number>();
  private readonly compChannels = new Map<number, { fd: number; events: number[] }>();
  private readonly cqs = new Map<number, MockCq>();
  private readonly mrs = new Map<number, MockMr>();
  private readonly pollers = new Map<number, MockPoller>();
  private readonly asyncFd = this.nextFd++;
  private readonly asyncEvents: AsyncEvent[] = [];
  private nextAddr = 0x7000_0000_0000n;
  private nextQpNum = 0x11;

  /* ---- fd readiness ---- */
  pollStart(fd: number, _events: number, cb: (err: NativeError | null, events: number) => void): number {
    const id = this.next++;
    this.pollers.set(id, { fd, cb });
    return id;
  }
  pollStop(id: number): void {
    this.pollers.delete(id);
  }
  pollRef(): void {}
  pollCount(): number {
    return this.pollers.size;
  }
  private kick(fd: number): void {
    setImmediate(() => {
      for (const p of [...this.pollers.values()]) if (p.fd === fd && !p.failed) p.cb(null, UV_READABLE);
    });
  }
  /**
   * The polls of one kind of fd fail as the addon reports it: each poller gets cb(err, 0) once
   * (code `code`, syscall 'uv_poll') and stays stopped until pollStop(). Returns how many failed.
   */
  failPolls(kind: 'cm' | 'completion' | 'async', code = 'EBADF'): number {
    const fds = new Set(
      kind === 'cm'
        ? [...this.channels.values()].map((c) => c.fd)
        : kind === 'completion'
          ? [...this.compChannels.values()].map((c) => c.fd)
          : [this.asyncFd],
    );
    const failing = [...this.pollers.values()].filter((p) => fds.has(p.fd) && !p.failed);
    for (const p of failing) {
      p.failed = true;
      const err: NativeError = Object.assign(new Error(`uv_poll failed (${code})`), { code, syscall: 'uv_poll' });
      setImmediate(() => p.cb(err, 0));
    }
    return failing.length;
  }
  /** @internal */
  later(fn: () => void): void {
    setImmediate(fn);
  }

  /* ---- devices ---- */
  getDeviceList(): string[] {
    return [...this.devices];
  }
  ctxQuery(): DeviceAttr {
    return {
      device: 'mock0',
      maxQpWr: 16384,
      maxSge: 32,
      maxCqe: 65536,
      maxMrSize: 1n << 40n,
      maxQpRdAtom: 128,
      maxQpInitRdAtom: 128,
      physPortCnt: 1,
      nodeGuid: 0x1122334455667788n,
      asyncFd: this.asyncFd,
    };
  }
  portQuery(): PortAttr {
    return { state: this.portState, activeMtu: 3, lid: 0, linkLayer: 2, pkeyTblLen: 1 };
  }
  /** Port GUID of the mock device's port 1 (the interface id of its GID 0). */
  portGuid = 0x0200_5eff_fe00_0001n;
  /** Completion vectors of the mock device. */
  numCompVectors = 2;
  /** Completion vector of every CQ created, in order. */
  readonly cqVectors: number[] = [];
  portGid(_ctx: number, port: number, index: number): Buffer {
    if (port !== 1 || index !== 0)
      throw Object.assign(new Error('ibv_query_gid failed: Invalid argument (EINVAL)'), { code: 'EINVAL' });
    const gid = Buffer.alloc(16);
    gid.writeUInt16BE(0xfe80, 0);
    gid.writeBigUInt64BE(this.portGuid, 8);
    return gid;
  }
  getAsyncEvent(): AsyncEvent | null {
    return this.asyncEvents.shift() ?? null;
  }
  /** port state as portQuery() reports it */
  portState: number = R.IBV_PORT_ACTIVE;
  /** CM MADs sent while the port was down: a REQ (rdma_connect), a DREQ (rdma_disconnect, destroying a connected id), a REJ (destroying a connecting id) */
  madsWhilePortDown = 0;
  /** The port goes down: PORT_ERR on the async fd. */
  portDown(): void {
    this.portState = R.IBV_PORT_DOWN;
    this.asyncEvents.push({ type: R.IBV_EVENT_PORT_ERR, portNum: 1, qpNum: 0 });
    this.kick(this.asyncFd);
  }
  /** The port is back: PORT_ACTIVE on the async fd. */
  portUp(): void {
    this.portState = R.IBV_PORT_ACTIVE;
    this.asyncEvents.push({ type: R.IBV_EVENT_PORT_ACTIVE, portNum: 1, qpNum: 0 });
    this.kick(this.asyncFd);
  }

  /* ---- rdma_cm ---- */
  cmCreateChannel(): { channel: number; fd: number } {
    const h = this.next++;
    const fd = this.nextFd++;
    this.channels.set(h, { fd, events: [] });
    return { channel: h, fd };
  }
  cmDestroyChannel(h: number): void {
    this.channels.delete(h);
  }
  cmCreateId(channel: number): number {
    const h = this.next++;
    this.ids.set(h, { channel, ctx: 0, connected: false, options: new Map() });
    return h;
  }
  cmDestroyId(h: number): void {
    this.notBusy('cmDestroyId', h);
    const id = this.ids.get(h);
    if (!id) throw Object.assign(new Error('stale cm id'), { code: 'EBADF' });
    if ((id.connected || id.param) && this.portState !== R.IBV_PORT_ACTIVE) this.madsWhilePortDown++;
    if (id.peer) id.peer.gone_(new TransportError('cm id destroyed', 'disconnected'));
    this.ids.delete(h);
  }
  private cmEvent(h: number, event: number, status = 0, privateData: Buffer | null = null): void {
    const id = this.ids.get(h);
    const ch = id && this.channels.get(id.channel);
    if (!ch) return;
    ch.events.push({ event, id: h, status, privateData });
    this.kick(ch.fd);
  }
  cmResolveAddr(h: number, src: Buffer | null, dst: Buffer): void {
    if (dst.length < 16) throw Object.assign(new Error('bad sockaddr'), { code: 'EINVAL' });
    const rid = this.ids.get(h)!;
    rid.dst = sockaddrText(dst);
    rid.src = sockaddrText(src);
    setTimeout(() => {
      if (this.resolveFailures > 0) {
        this.resolveFailures--;
        this.cmEvent(h, R.RDMA_CM_EVENT_ADDR_ERROR, -110);
        return;
      }
      const id = this.ids.get(h);
      if (!id) return; // destroyed meanwhile: a destroyed id gets no events, as with rdma_destroy_id
      id.ctx = 1;
      this.cmEvent(h, R.RDMA_CM_EVENT_ADDR_RESOLVED);
    }, 1);
  }
  cmResolveRoute(h: number): void {
    this.later(() => this.cmEvent(h, R.RDMA_CM_EVENT_ROUTE_RESOLVED));
  }
  cmSetOption(h: number, level: number, name: number, value: Buffer): void {
    this.ids.get(h)!.options.set(level * 256 + name, Buffer.from(value));
    if (level === R.RDMA_OPTION_ID && name === R.RDMA_OPTION_ID_ACK_TIMEOUT) this.ackTimeouts.push(value[0]!);
  }
  cmGetEvent(channel: number): CmEvent | null {
    return this.channels.get(channel)?.events.shift() ?? null;
  }
  cmIdInfo(h: number): CmIdInfo {
    this.notBusy('cmIdInfo', h);
    const id = this.ids.get(h)!;
    return {
      context: id.ctx,
      device: id.ctx ? 'mock0' : null,
      port: id.ctx ? 1 : 0,
      qpNum: id.qp?.qpNum ?? 0,
      srcAddr: id.ctx ? (id.src?.replace(/:\d+$/, '') ?? '192.0.2.1') : null,
    };
  }
  cmCreateQp(h: number, init: QpInit): QpCaps {
    const id = this.ids.get(h)!;
    if (!this.pds.has(init.pd) || !this.cqs.has(init.sendCq))
      throw Object.assign(new Error('bad pd/cq'), { code: 'EINVAL' });
    id.qp = { qpNum: this.nextQpNum++, pd: init.pd, cq: init.sendCq, recvs: [], state: R.IBV_QPS_INIT };
    return { qpNum: id.qp.qpNum, maxSendWr: init.maxSendWr ?? 64, maxRecvWr: init.maxRecvWr ?? 64, maxInlineData: 0 };
  }
  cmDestroyQp(h: number): void {
    this.notBusy('cmDestroyQp', h);
    const id = this.ids.get(h);
    if (id) delete id.qp;
  }

  /** cmDestroyQpAsync calls wait for settleQpDestroys() instead of settling on their own. */
  holdQpDestroys = false;
  /** The errno code the next async QP destroys fail with (the QP stays, as with the addon). */
  qpDestroyError: string | undefined;
  /** Calls refused because their id or CQ was busy (an async QP destroy in progress). */
  readonly busyCalls: string[] = [];
  private readonly busy = new Set<number>();
  private readonly heldQpDestroys: (() => void)[] = [];
  cmDestroyQpAsync(h: number): Promise<void> {
    this.notBusy('cmDestroyQpAsync', h);
    const id = this.ids.get(h);
    if (!id) throw Object.assign(new Error('stale cm id'), { code: 'EBADF' });
    const qp = id.qp;
    if (!qp) return Promise.resolve();
    const handles = [h, qp.cq];
    for (const b of handles) this.busy.add(b);
    return new Promise<void>((resolve, reject) => {
      const settle = (): void => {
        for (const b of handles) this.busy.delete(b);
        const code = this.qpDestroyError;
        if (code) return reject(Object.assign(new Error(`ibv_destroy_qp failed (${code})`), { code }));
        delete id.qp;
        resolve();
      };
      if (this.holdQpDestroys) this.heldQpDestroys.push(settle);
      else setImmediate(settle);
    });
  }
  /** Async QP destroys held (holdQpDestroys) and not settled yet. */
  get pendingQpDestroys(): number {
    return this.heldQpDestroys.length;
  }
  /** Settles the held async QP destroys (they complete, or fail with qpDestroyError). */
  settleQpDestroys(): void {
    for (const settle of this.heldQpDestroys.splice(0)) settle();
  }
  private notBusy(call: string, h: number): void {
    if (!this.busy.has(h)) return;
    this.busyCalls.push(call);
    throw Object.assign(new Error(`${call}: handle ${h} is busy: its QP is being destroyed`), { code: 'EBUSY' });
  }
  cmConnect(h: number, param: ConnParam): void {
    const id = this.ids.get(h)!;
    id.param = param;
    if (this.portState !== R.IBV_PORT_ACTIVE) this.madsWhilePortDown++;
    this.connectParams.push(param);
    const end = new MockTargetEnd(this, h, id.dst ?? '');
    id.peer = end;
    this.onConnect?.(end);
    const req = Buffer.from(param.privateData ?? Buffer.alloc(0));
    const cmReject = this.cmRejects.shift();
    this.later(async () => {
      // a black hole loses the REQ: no answer (a real CM resends it only seconds later)
      if (this.blackHole) return;
      if (this.answerDelayMs > 0) {
        await new Promise((r) => setTimeout(r, this.answerDelayMs));
        if (!this.ids.has(h)) return; // given up meanwhile: its REP meets a destroyed id
      }
      if (cmReject !== undefined) {
        end.stateValue = 'closed';
        this.cmEvent(h, R.RDMA_CM_EVENT_REJECTED, cmReject);
        return;
      }
      if (!end.handler) {
        this.cmEvent(h, R.RDMA_CM_EVENT_REJECTED, R.IB_CM_REJ_INVALID_SERVICE_ID);
        return;
      }
      let answer: ConnectAnswer;
      try {
        answer = await end.handler(req);
      } catch {
        this.cmEvent(h, R.RDMA_CM_EVENT_REJECTED, R.IB_CM_REJ_CONSUMER_DEFINED);
        return;
      }
      if (!this.ids.has(h)) return;
      if ('accept' in answer) {
        id.connected = true;
        id.qp!.state = R.IBV_QPS_RTS;
        end.stateValue = 'connected';
        this.cmEvent(h, R.RDMA_CM_EVENT_ESTABLISHED, 0, Buffer.from(answer.accept));
      } else {
        end.stateValue = 'closed';
        this.cmEvent(h, R.RDMA_CM_EVENT_REJECTED, R.IB_CM_REJ_CONSUMER_DEFINED, Buffer.from(answer.reject));
      }
    });
  }
  cmDisconnect(h: number): void {
    this.notBusy('cmDisconnect', h);
    const id = this.ids.get(h);
    if (!id) throw Object.assign(new Error('stale cm id'), { code: 'EBADF' });
    if (!id.connected) throw Object.assign(new Error('not connected'), { code: 'EINVAL' });
    if (this.portState !== R.IBV_PORT_ACTIVE) this.madsWhilePortDown++;
    id.connected = false;
    if (id.qp) this.qpError(id);
    id.peer?.gone_(new TransportError('initiator disconnected', 'disconnected'));
    this.later(() => this.cmEvent(h, R.RDMA_CM_EVENT_DISCONNECTED));
  }
  /** The target side drops the connection (DREQ from the target). */
  disconnectFromTarget(h: number): void {
    const id = this.ids.get(h);
    if (!id || !id.connected) return;
    id.connected = false;
    id.peer?.gone_(new TransportError('channel closed', 'closed'));
    this.later(() => this.cmEvent(h, R.RDMA_CM_EVENT_DISCONNECTED));
  }
  qpQuery(h: number): QpAttr {
    const id = this.ids.get(h)!;
    const t = id.options.get(R.RDMA_OPTION_ID * 256 + R.RDMA_OPTION_ID_ACK_TIMEOUT);
    return {
      state: id.qp?.state ?? R.IBV_QPS_RESET,
      timeout: t ? t[0]! : 0,
      retryCnt: id.param?.retryCount ?? 0,
      rnrRetry: id.param?.rnrRetryCount ?? 0,
      minRnrTimer: 0,
      maxSendWr: 0,
      maxRecvWr: 0,
      maxInlineData: 0,
    };
  }
  qpModify(h: number, attr: { state?: number }): void {
    this.notBusy('qpModify', h);
    const id = this.ids.get(h)!;
    if (attr.state === R.IBV_QPS_ERR) this.qpError(id);
  }
  private qpError(id: MockId): void {
    if (!id.qp) return;
    id.qp.state = R.IBV_QPS_ERR;
    for (const r of id.qp.recvs.splice(0))
      this.complete(id.qp.cq, r.wrId, R.IBV_WC_WR_FLUSH_ERR, R.IBV_WC_RECV, 0, id.qp.qpNum);
  }

  /* ---- verbs ---- */
  pdAlloc(): number {
    const h = this.next++;
    this.pds.add(h);
    return h;
  }
  pdDealloc(h: number): void {
    for (const m of this.mrs.values()) if (m.pd === h) throw Object.assign(new Error('pd busy'), { code: 'EBUSY' });
    this.pds.delete(h);
  }
  compChannelCreate(): { channel: number; fd: number } {
    const h = this.next++;
    const fd = this.nextFd++;
    this.compChannels.set(h, { fd, events: [] });
    return { channel: h, fd };
  }
  compChannelDestroy(h: number): void {
    for (const c of this.cqs.values())
      if (c.compChannel === h) throw Object.assign(new Error('busy'), { code: 'EBUSY' });
    this.compChannels.delete(h);
  }
  cqCreate(_ctx: number, _cqe: number, compChannel: number, compVector = 0): number {
    if (compVector < 0 || compVector >= this.numCompVectors)
      throw new TypeError(
        `compVector ${compVector} is out of range: the device has ${this.numCompVectors} completion vectors`,
      );
    this.cqVectors.push(compVector);
    const h = this.next++;
    this.cqs.set(h, { compChannel, wcs: [], armed: false });
    return h;
  }
  cqDestroy(h: number): void {
    this.notBusy('cqDestroy', h);
    for (const id of this.ids.values())
      if (id.qp?.cq === h) throw Object.assign(new Error('cq in use by a QP'), { code: 'EBUSY' });
    this.cqs.delete(h);
  }
  cqReqNotify(h: number): void {
    this.notBusy('cqReqNotify', h);
    const cq = this.cqs.get(h)!;
    cq.armed = true;
  }
  cqGetEvent(ch: number): number {
    return this.compChannels.get(ch)?.events.shift() ?? 0;
  }
  /** The spinUs of every busy poll asked for (cqPoll with spinUs > 0); the mock polls once, it cannot spin. */
  readonly busyPolls: number[] = [];
  cqPoll(h: number, out: Buffer, max: number, spinUs = 0): number {
    this.notBusy('cqPoll', h);
    if (spinUs > 0) this.busyPolls.push(spinUs);
    const cq = this.cqs.get(h);
    if (!cq) return 0;
    let n = 0;
    while (n < max && cq.wcs.length) cq.wcs.shift()!.copy(out, n++ * R.WC_RECORD_LEN);
    return n;
  }
  private complete(cqh: number, wrId: number, status: number, opcode: number, byteLen: number, qpNum: number): void {
    const cq = this.cqs.get(cqh);
    if (!cq) return;
    const r = Buffer.alloc(R.WC_RECORD_LEN);
    r.writeUInt32LE(wrId % 0x1_0000_0000, 0);
    r.writeUInt32LE(Math.floor(wrId / 0x1_0000_0000), 4);
    r.writeUInt32LE(status, 8);
    r.writeUInt32LE(opcode, 12);
    r.writeUInt32LE(byteLen, 16);
    r.writeUInt32LE(qpNum, 20);
    cq.wcs.push(r);
    if (cq.armed) {
      cq.armed = false;
      const ch = this.compChannels.get(cq.compChannel)!;
      ch.events.push(cqh);
      this.kick(ch.fd);
    }
  }
  mrReg(pd: number, buf: Buffer, access: number): MrInfo {
    if (!this.pds.has(pd)) throw Object.assign(new Error('bad pd'), { code: 'EBADF' });
    const h = this.next++;
    const addr = this.nextAddr;
    this.nextAddr += BigInt(buf.length + 8192 - (buf.length % 4096));
    const m: MockMr = { pd, buf, addr, lkey: h * 16 + 1, rkey: h * 16 + 2, access };
    this.mrs.set(h, m);
    return { mr: h, addr, lkey: m.lkey, rkey: m.rkey, length: buf.length };
  }
  mrDereg(h: number): void {
    if (!this.mrs.delete(h)) throw Object.assign(new Error('stale mr'), { code: 'EBADF' });
  }
  private local(addr: bigint, length: number, lkey: number): Buffer | undefined {
    for (const m of this.mrs.values()) {
      if (m.lkey !== lkey || addr < m.addr) continue;
      const off = Number(addr - m.addr);
      if (off + length <= m.buf.length) return m.buf.subarray(off, off + length);
    }
    return undefined;
  }
  postSendList(h: number, wrs: Buffer, count: number): void {
    if (count > R.MAX_WR_LIST || count * R.SEND_WR_LEN > wrs.length)
      throw new TypeError('count exceeds the work request buffer');
    this.sendLists.push(count);
    for (let i = 0; i < count; i++) {
      const w = readSendWr(wrs, i);
      this.postSend(h, w.wrId, w.opcode, BigInt(w.addr), w.length, w.lkey, w.flags);
    }
  }
  postRecvList(h: number, wrs: Buffer, count: number): void {
    if (count > R.MAX_WR_LIST || count * R.RECV_WR_LEN > wrs.length)
      throw new TypeError('count exceeds the work request buffer');
    for (let i = 0; i < count; i++) {
      const w = readRecvWr(wrs, i);
      this.postRecv(h, w.wrId, BigInt(w.addr), w.length, w.lkey);
    }
  }
  /** Length of every postSendList() call so far (tests check the batching). */
  readonly sendLists: number[] = [];
  /**
   * One send work request. As on a real QP, a successful unsignalled request (flags without
   * IBV_SEND_SIGNALED) completes without a work completion; a failed one always has one.
   */
  postSend(
    h: number,
    wrId: number,
    opcode: number,
    addr: bigint,
    length: number,
    lkey: number,
    flags: number = R.IBV_SEND_SIGNALED,
  ): void {
    this.notBusy('postSend', h);
    const signaled = (flags & R.IBV_SEND_SIGNALED) !== 0;
    const id = this.ids.get(h);
    const qp = id?.qp;
    if (!id || !qp) throw Object.assign(new Error('no qp'), { code: 'EBADF' });
    if (qp.state !== R.IBV_QPS_RTS)
      throw Object.assign(new Error('ibv_post_send failed: Invalid argument (EINVAL)'), { code: 'EINVAL' });
    const data = length ? this.local(addr, length, lkey) : Buffer.alloc(0);
    if (!data) {
      this.later(() => this.complete(qp.cq, wrId, R.IBV_WC_LOC_PROT_ERR, R.IBV_WC_SEND, 0, qp.qpNum));
      return;
    }
    if (this.blackHole) {
      if (!Number.isFinite(this.blackHoleDetectMs)) return; // a device that never gives up
      setTimeout(() => {
        if (id.qp) {
          this.complete(qp.cq, wrId, R.IBV_WC_RETRY_EXC_ERR, R.IBV_WC_SEND, 0, qp.qpNum);
          this.qpError(id);
        }
      }, this.blackHoleDetectMs);
      return;
    }
    const copy = Buffer.from(data);
    this.later(() => {
      if (!id.qp || id.qp.state !== R.IBV_QPS_RTS) {
        this.complete(qp.cq, wrId, R.IBV_WC_WR_FLUSH_ERR, R.IBV_WC_SEND, 0, qp.qpNum);
        return;
      }
      if (opcode === R.IBV_WR_SEND) id.peer?.deliver(copy);
      if (!signaled) return;
      this.complete(
        qp.cq,
        wrId,
        R.IBV_WC_SUCCESS,
        opcode === R.IBV_WR_SEND ? R.IBV_WC_SEND : R.IBV_WC_RDMA_WRITE,
        0,
        qp.qpNum,
      );
    });
  }
  postRecv(h: number, wrId: number, addr: bigint, length: number, lkey: number): void {
    this.notBusy('postRecv', h);
    const qp = this.ids.get(h)?.qp;
    if (!qp) throw Object.assign(new Error('no qp'), { code: 'EBADF' });
    if (qp.state === R.IBV_QPS_ERR) {
      this.later(() => this.complete(qp.cq, wrId, R.IBV_WC_WR_FLUSH_ERR, R.IBV_WC_RECV, 0, qp.qpNum));
      return;
    }
    qp.recvs.push({ wrId, addr, length, lkey });
  }
  /** @internal a SEND from the target lands in the next posted receive */
  deliverToInitiator(h: number, iu: Buffer): void {
    const id = this.ids.get(h);
    const qp = id?.qp;
    if (!id || !qp || !id.connected || this.blackHole) return;
    const r = qp.recvs.shift();
    if (!r) {
      this.qpError(id);
      return;
    } // RNR exhausted in this model
    const dst = this.local(r.addr, r.length, r.lkey);
    if (!dst || iu.length > r.length) {
      this.complete(qp.cq, r.wrId, R.IBV_WC_LOC_LEN_ERR, R.IBV_WC_RECV, 0, qp.qpNum);
      return;
    }
    iu.copy(dst);
    this.complete(qp.cq, r.wrId, R.IBV_WC_SUCCESS, R.IBV_WC_RECV, iu.length, qp.qpNum);
  }
  /** @internal target RDMA READ/WRITE against initiator memory: a bad access kills the QP */
  remoteAccess(h: number, va: bigint, rkey: number, length: number, need: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.later(() => {
        const id = this.ids.get(h);
        if (!id || !id.connected || !id.qp)
          return reject(new TransportError('RDMA on a closed channel', 'disconnected'));
        if (this.blackHole) return; // never completes
        for (const m of this.mrs.values()) {
          if (m.rkey !== rkey || va < m.addr || !(m.access & need)) continue;
          const off = Number(va - m.addr);
          if (off + length <= m.buf.length) return resolve(m.buf.subarray(off, off + length));
        }
        this.asyncEvents.push({ type: R.IBV_EVENT_QP_ACCESS_ERR, portNum: 0, qpNum: id.qp.qpNum });
        this.kick(this.asyncFd);
        reject(
          new TransportError(
            `remote access error va=0x${va.toString(16)} rkey=0x${rkey.toString(16)} len=${length}`,
            'protocol',
          ),
        );
      });
    });
  }
  rdmaObjectCounts(): RdmaObjectCounts {
    let qps = 0;
    for (const id of this.ids.values()) if (id.qp) qps++;
    return {
      channels: this.channels.size,
      ids: this.ids.size,
      qps,
      pds: this.pds.size,
      compChannels: this.compChannels.size,
      cqs: this.cqs.size,
      mrs: this.mrs.size,
    };
  }
  /** The binding as the transport takes it (only the RDMA half is implemented). */
  asBinding(): NativeBinding {
    return this as unknown as NativeBinding;
  }
}
