/**
 * The RDMA channel transport: one RC queue pair and its rdma_cm id, through the native addon
 * (librdmacm + libibverbs), implementing ChannelTransport so the SRP session runs unchanged over
 * the loopback or over RDMA.
 *
 * Per connection, one VerbsResources (verbs-resources.ts): an rdma_cm event channel, a cm id, a PD,
 * one CQ with a completion channel, a registered send pool (IUs are copied in: "the bytes are taken
 * at call time"), a registered receive pool (IUs are handed to listeners as views, then the buffer is
 * reposted), the buffer pools given in options (registered once per connection, so registerBuffer()
 * of a view into one costs no system call) and the QP. They are created in that order on connect
 * and freed in reverse order on close, on loss and on failed connects.
 *
 * Posting: send() copies the IU into a send slot and queues a work request; the queue goes out as
 * one chained list (postSendList) in a microtask, so every IU queued by one event (an NBD read of
 * 32 requests, a completion batch of 32 responses) costs one ibv_post_send, which is one doorbell
 * system call on rxe. Sends are signalled sparingly: a QP completes its sends in order, so one
 * signalled completion frees the slots of every send posted before it. A list's last work request
 * is signalled only once SIGNAL_EVERY sends wait uncovered or the send queue is half full; the rest
 * go unsignalled, so at low depth a command costs one completion (its response), not two events.
 * Sends left uncovered are covered by the next keep-alive probe (a signalled work request, which
 * completes only after every send before it; on close too). A failed send always completes, with
 * an error. Receive buffers consumed by one poll batch are reposted as one list as well.
 *
 * Failure detection: QP async events (PORT_ERR, QP_FATAL, DEVICE_FATAL), CM
 * DISCONNECTED / DEVICE_REMOVAL, failed work completions, and the keep-alive for a silent black hole:
 * probe() (a zero-length RDMA WRITE, which fails after (retryCount + 1) × 4.096 µs × 2^ackTimeout)
 * at every tick, and a check of the oldest send covered by a signalled work request: each
 * signalled list stamps the sends it covers with one clock read, and a send (or probe) still not
 * completed that long after its covering work request was posted, beyond the RC retry bound, is a
 * dead path, whatever the device reports or fails to report. retryCount is
 * kept ≤ 6 because 7 means "retry forever" on rxe; the ACK timeout is set with rdma_set_option.
 * librdmacm does not move the QP to error on DISCONNECTED, so we call rdma_disconnect ourselves.
 * Address resolution uses a short timeout with retries (100 ms: it waits the whole timeout when no
 * neighbour entry exists yet, then succeeds).
 */
import { CmRejectedError, type CmRejectKind } from '../login-failure.js';
import { TransportError } from '../scsi-executor.js';
import {
  SRP_LOGIN_REJ,
  SRP_LOGIN_REQ,
  SRP_LOGIN_REQ_RDMA_INITIATOR_PORT_ID,
  SRP_LOGIN_REQ_RDMA_LEN,
  SRP_LOGIN_RSP,
  SRP_LOGIN_RSP_LEN,
} from '../srp-constants.js';
import { decodeLoginRsp } from '../srp-iu.js';
import type { SrpLogger } from '../srp-session.js';
import {
  Emitter,
  type ChannelEvents,
  type ChannelState,
  type ChannelTransport,
  type ConnectOptions,
  type LoginContext,
  type LoginForm,
  type MemoryRegion,
} from '../transport.js';
import {
  readU64,
  setSendWrFlags,
  writeRecvWr,
  writeSendWr,
  type AsyncEvent,
  type CmEvent,
  type NativeBinding,
  type NativeError,
} from '../../native/native.js';
import * as R from '../../native/rdma-constants.js';
import { encodeRdmaAddress, formatRdmaAddress } from '../../native/sockaddr.js';
import { batchNow } from '../../util/clock.js';
import { microtaskRunner } from '../../util/microtask.js';
import {
  rcRetryBoundMs,
  resolveTransportOptions,
  type RdmaTransportOptions,
  type ResolvedTransportOptions,
} from './options.js';
import { checkRdmaAvailable, verbsCall, VerbsResources, type PolledFd } from './verbs-resources.js';

export interface RdmaChannelEvents extends ChannelEvents {
  /** Any device async event of this channel's device (PORT_ACTIVE included), for logs and reconnect triggers. */
  asyncEvent: [ev: AsyncEvent & { name: string; device: string }];
}

const silent: SrpLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** wr_id spaces: send slots below WR_RECV, receive slots from WR_RECV, keep-alive probes from WR_PROBE */
const WR_SPACE = 0x10_0000;
const WR_RECV = WR_SPACE;
const WR_PROBE = 2 * WR_SPACE;
/** A list's last send is signalled once this many sends are posted without a signalled one behind them. */
const SIGNAL_EVERY = 16;
/** Busy polling: after consecutive misses, at most this many posts go without a spin. */
const BUSY_POLL_MAX_SKIP = 32;
/** completions read per cqPoll() */
const POLL_BATCH = 64;
/** connect() without a timeout gives up after this long */
const CONNECT_TIMEOUT_MS = 5000;
/** RDMA READs in flight at most in either direction (responder resources, initiator depth), if the device allows */
const MAX_RDMA_READ_DEPTH = 16;
/** close(): how long IUs already posted may take to go out before the DREQ, and the DREQ to be answered */
const CLOSE_DRAIN_MS = 1000;
const CLOSE_DISCONNECT_MS = 1000;
/** What IB_CM_REJ_INVALID_SERVICE_ID means for a login */
const NO_LISTENER = ': invalid service ID, no SRP target listening there';

/**
 * A CM reject reason as a login sees it (src/initiator/login-failure.ts), after ib_srp's CM reject
 * handlers: STALE_CONN is retried with a new connection; the redirects (port, DLID/GID) carry their
 * target in the ARI, which rdma_cm does not pass on.
 */
export function cmRejectKind(reason: number): CmRejectKind {
  switch (reason) {
    case R.IB_CM_REJ_STALE_CONN:
      return 'stale-connection';
    case R.IB_CM_REJ_PORT_CM_REDIRECT:
    case R.IB_CM_REJ_PORT_REDIRECT:
      return 'redirect';
    default:
      return 'other';
  }
}

/** A keep-alive probe in flight. */
interface Probe {
  resolve: (ms: number) => void;
  reject: (e: Error) => void;
  t0: number;
  /** sendsPosted when it was posted: its completion completes every send before it */
  covers: number;
}

/* ------------------------------------------------------------ transport */

export class RdmaChannelTransport extends Emitter<RdmaChannelEvents> implements ChannelTransport {
  readonly loginForm: LoginForm = 'rdma-cm';
  private stateValue: ChannelState = 'idle';
  private readonly o: ResolvedTransportOptions;
  private keepaliveTimer: ReturnType<typeof setInterval> | undefined;
  private keepaliveInFlight = false;
  /** One check per probe, the RC retry bound after it was posted (idle: no tick is due then). */
  private probeCheck: ReturnType<typeof setTimeout> | undefined;
  private readonly log: SrpLogger;
  private readonly poolBufs: Buffer[];
  private maxRegion: number;
  /** the event channel, cm id, device, PD, CQ, QP and registered memory: created and freed as one */
  private readonly res: VerbsResources;
  private freeSlots: number[] = [];
  /** Send slots posted and not yet completed, in posting order (a ring of sendQueueDepth). */
  private readonly posted: Int32Array;
  /**
   * When the signalled work request covering each entry of `posted` was posted (batchNow(): one
   * clock read per list at most); unset for the `uncovered` entries at the ring's tail.
   */
  private readonly postedAt: Float64Array;
  /** Entries at the tail of `posted` no signalled work request covers yet (they cannot complete). */
  private uncovered = 0;
  /** Sends posted and completed since connect (a probe completes the sends posted before it). */
  private sendsPosted = 0;
  private sendsCompleted = 0;
  /** A send not completed after this many ms is overdue: the path is dead. */
  private readonly overdueMs: number;
  private postedHead = 0;
  private postedCount = 0;
  /** Send work requests queued by send() for the next postSendList (one per free slot at most). */
  private readonly sendWrs: Buffer;
  private queuedSends = 0;
  private flushQueued = false;
  /** Busy polling: posts still to go without a spin, and the skip after the next miss (doubling). */
  private busyPollSkip = 0;
  private busyPollBackoff = 0;
  /** Queues flushSends() as a microtask (one per batch of sends). */
  private readonly flushSendsSoon = microtaskRunner(() => this.flushSends());
  /** Per receive slot, the view its last IU was delivered in (recvView); reset at connect. */
  private recvViews: (Buffer | undefined)[] = [];
  /** Receive slots consumed by a poll batch, reposted as one list. */
  private readonly recvWrs: Buffer;
  private queuedRecvs = 0;
  /** Pool base addresses as Numbers (exact below 2^53), so posting does no bigint arithmetic. */
  private sendBase = 0;
  private recvBase = 0;
  private readonly probeWr = Buffer.alloc(R.SEND_WR_LEN);
  private readonly wcBuf = Buffer.alloc(POLL_BATCH * R.WC_RECORD_LEN);
  private cmWaiter: ((ev: CmEvent) => void) | undefined;
  private login: LoginContext | undefined;
  /** Login request sent → the target's answer (accept or reject), ms; see ChannelTransport.loginAnswerMs. */
  private answerMs: number | undefined;
  private probeSeq = 0;
  private readonly probes = new Map<number, Probe>();
  private closing = false;
  private disconnectedFired = false;
  private releasing: Promise<void> = Promise.resolve();
  private drainWaiter: (() => void) | undefined;
  /** counters for status and tests */
  readonly stats = {
    sends: 0,
    /** ibv_post_send calls for IUs (one per list); sends / sendPosts is the batching achieved */
    sendPosts: 0,
    /** sends posted signalled (each costs a completion) */
    signalledSends: 0,
    recvs: 0,
    recvPosts: 0,
    completions: 0,
    pollBatches: 0,
    /** busy polls after a post (busyPollUs) that found a completion, and that gave up */
    busyPollHits: 0,
    busyPollMisses: 0,
    probes: 0,
    resolveAttempts: 0,
    connectMs: 0,
  };

  constructor(
    private readonly b: NativeBinding,
    options: RdmaTransportOptions,
  ) {
    super();
    this.o = resolveTransportOptions(options);
    this.maxRegion = this.o.maxRegionSize;
    this.poolBufs = options.pools ?? [];
    this.posted = new Int32Array(this.o.sendQueueDepth);
    this.postedAt = new Float64Array(this.o.sendQueueDepth);
    this.overdueMs = rcRetryBoundMs(this.o.ackTimeout, this.o.retryCount);
    this.sendWrs = Buffer.alloc(Math.min(this.o.sendQueueDepth, R.MAX_WR_LIST) * R.SEND_WR_LEN);
    this.recvWrs = Buffer.alloc(Math.min(this.o.recvQueueDepth, R.MAX_WR_LIST) * R.RECV_WR_LEN);
    this.log = options.logger ?? silent;
    this.res = new VerbsResources(b, this.log, {
      cmEvents: () => this.guarded('CM event', () => this.drainCm()),
      completions: () => this.guarded('completion', () => this.onCompletionEvent()),
      asyncEvent: (ev) => this.guarded('device event', () => this.onAsync(ev)),
      pollFailed: (fd, err) => this.onPollFailed(fd, err),
    });
  }

  get state(): ChannelState {
    return this.stateValue;
  }

  /**
   * Runs one event handler. A handler that throws is a bug, but one that must cost this channel
   * (a path failure the rport recovers from), never the daemon and every export with it: the
   * error is logged and the channel is lost.
   */
  private guarded(what: string, handler: () => void): void {
    try {
      handler();
    } catch (err) {
      this.log.error({ err, device: this.device }, `rdma: ${what} handler failed: losing the channel`);
      this.lost(`internal error in the ${what} handler: ${(err as Error).message}`, err as Error);
    }
  }
  get maxRegionSize(): number {
    return this.maxRegion;
  }
  /** Device, port and QP number once connected (for logs and status). */
  get info(): { device: string; port: number; qpNum: number; dst: string } {
    return { device: this.device, port: this.port, qpNum: this.res.qpNum, dst: formatRdmaAddress(this.o.dst) };
  }
  /** The verbs device context and port this channel uses (known once the address is resolved). */
  get deviceHandle(): { ctx: number; port: number; asyncFd: number; device: string } | undefined {
    const d = this.res.device;
    return d ? { ctx: d.ctx, port: d.port, asyncFd: d.attr.asyncFd, device: d.name } : undefined;
  }
  private get device(): string {
    return this.res.device?.name ?? '';
  }
  private get port(): number {
    return this.res.device?.port ?? 0;
  }

  /* ---------------------------------------------------------- connect */

  async connect(loginReq: Buffer, opts: ConnectOptions = {}): Promise<Buffer> {
    if (this.stateValue !== 'idle') throw new TransportError(`connect in state ${this.stateValue}`, 'closed');
    this.stateValue = 'connecting';
    const t0 = Date.now();
    const deadline = t0 + (opts.timeoutMs ?? CONNECT_TIMEOUT_MS);
    const dst = formatRdmaAddress(this.o.dst);
    const res = this.res;
    try {
      checkRdmaAvailable(this.b);
      res.openEventChannel();
      await this.resolve(deadline, dst);
      res.allocate(this.o, this.poolBufs);
      loginReq = this.fillInitiatorPortId(loginReq);
      const attr = res.device!.attr;
      this.maxRegion = Math.min(this.o.maxRegionSize, Number(attr.maxMrSize));
      this.freeSlots = Array.from({ length: this.o.sendQueueDepth }, (_, i) => this.o.sendQueueDepth - 1 - i);
      this.postedHead = this.postedCount = this.queuedSends = this.queuedRecvs = 0;
      this.uncovered = this.sendsPosted = this.sendsCompleted = 0;
      this.sendBase = Number(res.sendPool!.addr);
      this.recvBase = Number(res.recvPool!.addr);
      this.recvViews = new Array<Buffer | undefined>(this.o.recvQueueDepth).fill(undefined);
      for (let i = 0; i < this.o.recvQueueDepth; i++) this.queueRecv(i);
      this.flushRecvs();
      this.b.cqReqNotify(res.cq);
      this.b.cmSetOption(res.cmId, R.RDMA_OPTION_ID, R.RDMA_OPTION_ID_ACK_TIMEOUT, Buffer.from([this.o.ackTimeout]));
      // The REQ is a CM MAD; sent through a port that is not ACTIVE it breaks the device's CM on rxe
      // (see ParkedIds). The address may still resolve from a cached neighbour: stop here instead.
      if (res.portDown()) {
        throw new TransportError(
          `local port ${this.device}/${this.port} is not active: login to ${dst} not sent`,
          'disconnected',
        );
      }
      res.connect({
        privateData: loginReq,
        responderResources: Math.min(attr.maxQpRdAtom, MAX_RDMA_READ_DEPTH),
        initiatorDepth: Math.min(attr.maxQpInitRdAtom, MAX_RDMA_READ_DEPTH),
        retryCount: this.o.retryCount,
        rnrRetryCount: this.o.rnrRetryCount,
      });
      const sent = Date.now();
      const wait = opts.answerTimeoutMs;
      const ev =
        wait !== undefined && sent + wait < deadline
          ? await this.nextCmEvent(sent + wait, `no answer to the login request from ${dst}`, `within ${wait} ms`)
          : await this.nextCmEvent(deadline, `no answer to the login request from ${dst}`);
      if (ev.event === R.RDMA_CM_EVENT_ESTABLISHED || ev.event === R.RDMA_CM_EVENT_REJECTED) {
        this.answerMs = Date.now() - sent;
      }
      switch (ev.event) {
        case R.RDMA_CM_EVENT_ESTABLISHED: {
          const rsp = Buffer.from(ev.privateData ?? Buffer.alloc(0));
          this.checkLoginRsp(rsp);
          this.stateValue = 'connected';
          this.stats.connectMs = Date.now() - t0;
          this.startKeepalive();
          this.log.info(
            { dst, device: this.device, port: this.port, qpNum: res.qpNum, ms: this.stats.connectMs },
            'rdma: connected',
          );
          return rsp;
        }
        case R.RDMA_CM_EVENT_REJECTED:
          if (ev.privateData && ev.privateData[0] === SRP_LOGIN_REJ) {
            const rej = Buffer.from(ev.privateData);
            this.release();
            this.stateValue = 'closed';
            return rej;
          }
          throw new CmRejectedError(
            `connection to ${dst} rejected (CM reject reason ${ev.status}` +
              `${ev.status === R.IB_CM_REJ_INVALID_SERVICE_ID ? NO_LISTENER : ''})`,
            ev.status,
            cmRejectKind(ev.status),
          );
        case R.RDMA_CM_EVENT_UNREACHABLE:
          throw new TransportError(`target ${dst} unreachable (no answer to the CM REQ)`, 'disconnected');
        default:
          throw new TransportError(
            `connect to ${dst} failed: ${R.nameOfCmEvent(ev.event)} (status ${ev.status})`,
            'disconnected',
          );
      }
    } catch (err) {
      this.release();
      this.stateValue = 'closed';
      if (err instanceof TransportError) throw err;
      throw new TransportError(`connect to ${dst} failed: ${(err as Error).message}`, 'disconnected', { cause: err });
    }
  }

  /** Address then route resolution; a failed address resolution is retried with a fresh cm id. */
  private async resolve(deadline: number, dst: string): Promise<void> {
    const res = this.res;
    const dstAddr = encodeRdmaAddress(this.o.dst);
    const srcAddr = this.o.src ? encodeRdmaAddress(this.o.src) : null;
    let last = '';
    for (let attempt = 1; ; attempt++) {
      this.stats.resolveAttempts++;
      res.createCmId();
      verbsCall(() => this.b.cmResolveAddr(res.cmId, srcAddr, dstAddr, this.o.resolveTimeoutMs), 'rdma_resolve_addr');
      const ev = await this.nextCmEvent(deadline, `address of ${dst} not resolved`);
      if (ev.event === R.RDMA_CM_EVENT_ADDR_RESOLVED) break;
      last = `${R.nameOfCmEvent(ev.event)} status ${ev.status}`;
      res.destroyCmId();
      if (attempt >= this.o.resolveAttempts) {
        throw new TransportError(
          `target ${dst} unreachable: address resolution failed ${attempt} times (${last}); ` +
            'check the route and that the local RDMA port is up',
          'disconnected',
        );
      }
    }
    verbsCall(() => this.b.cmResolveRoute(res.cmId, this.o.routeTimeoutMs), 'rdma_resolve_route');
    const ev = await this.nextCmEvent(deadline, `route to ${dst} not resolved`);
    if (ev.event !== R.RDMA_CM_EVENT_ROUTE_RESOLVED) {
      throw new TransportError(
        `target ${dst} unreachable: ${R.nameOfCmEvent(ev.event)} (status ${ev.status})`,
        'disconnected',
      );
    }
  }

  get loginAnswerMs(): number | undefined {
    return this.answerMs;
  }

  /**
   * What the target saw of this channel's login (once the address is resolved): the initiator port
   * id sent and the local address it came from. For login reject messages and status.
   */
  loginContext(): LoginContext | undefined {
    return this.login;
  }

  /** Puts the initiator port id of the resolved source port into the login (options.initiatorPortId). */
  private fillInitiatorPortId(loginReq: Buffer): Buffer {
    const d = this.res.device!;
    let source: string | undefined;
    try {
      source = this.b.cmIdInfo(this.res.cmId).srcAddr ?? undefined;
    } catch {
      source = undefined;
    }
    const rdmaForm = loginReq.length >= SRP_LOGIN_REQ_RDMA_LEN && loginReq[11] === SRP_LOGIN_REQ;
    let req = loginReq;
    if (this.o.initiatorPortId && rdmaForm) {
      const gid = verbsCall(() => this.b.portGid(d.ctx, d.port, 0), 'ibv_query_gid');
      const id = this.o.initiatorPortId({ device: d.name, port: d.port, gid, source });
      if (id.length !== 16) throw new RangeError(`initiator port id of ${id.length} bytes, not 16`);
      req = Buffer.from(loginReq);
      id.copy(req, SRP_LOGIN_REQ_RDMA_INITIATOR_PORT_ID);
    }
    this.login = {
      initiatorPortId: rdmaForm
        ? Buffer.from(req.subarray(SRP_LOGIN_REQ_RDMA_INITIATOR_PORT_ID, SRP_LOGIN_REQ_RDMA_INITIATOR_PORT_ID + 16))
        : undefined,
      source,
      destination: formatRdmaAddress(this.o.dst),
      device: d.name,
      port: d.port,
    };
    return req;
  }

  private checkLoginRsp(rsp: Buffer): void {
    if (rsp.length < SRP_LOGIN_RSP_LEN || rsp[0] !== SRP_LOGIN_RSP) return; // the session judges what it got
    const { maxTiIuLen } = decodeLoginRsp(rsp);
    if (maxTiIuLen > this.o.recvIuLen) {
      throw new TransportError(
        `target max_ti_iu_len ${maxTiIuLen} exceeds the receive buffers (${this.o.recvIuLen}): ` + 'raise recvIuLen',
        'protocol',
      );
    }
  }

  /* ---------------------------------------------------------- CM events */

  private nextCmEvent(deadline: number, what: string, by = 'before the connect timeout'): Promise<CmEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => {
          this.cmWaiter = undefined;
          reject(new TransportError(`${what} ${by}`, 'timeout'));
        },
        Math.max(0, deadline - Date.now()),
      );
      this.cmWaiter = (ev) => {
        clearTimeout(timer);
        this.cmWaiter = undefined;
        resolve(ev);
      };
    });
  }

  private drainCm(): void {
    for (;;) {
      const channel = this.res.eventChannel;
      if (!channel) return;
      let ev: CmEvent | null;
      try {
        ev = this.b.cmGetEvent(channel);
      } catch (err) {
        this.emit('error', err as Error);
        return;
      }
      if (!ev) return;
      if (ev.id !== this.res.cmId && ev.id !== 0) continue; // a destroyed resolve attempt
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
      case R.IBV_EVENT_QP_FATAL:
      case R.IBV_EVENT_QP_REQ_ERR:
      case R.IBV_EVENT_QP_ACCESS_ERR:
        if (ev.qpNum === this.res.qpNum) this.lost(`queue pair ${this.res.qpNum} failed: ${name}`);
        return;
      case R.IBV_EVENT_DEVICE_FATAL:
        this.lost(`device ${this.device} failed: ${name}`);
        return;
      default:
        return;
    }
  }

  /**
   * A poll of the channel's fds failed (the addon stopped it). The Error goes out on 'error'. Without
   * CM events or completions the channel cannot work or close cleanly: it is lost. Without device async
   * events it still works (failed completions and keep-alive still notice a loss).
   */
  private onPollFailed(fd: PolledFd, err: NativeError): void {
    this.log.warn({ err, fd, device: this.device }, 'rdma: poll failed');
    this.emit('error', err);
    if (fd !== 'device async events') this.lost(`${fd} poll failed: ${err.message}`, err);
  }

  /* ---------------------------------------------------------- completions */

  private onCompletionEvent(): void {
    const res = this.res;
    if (!res.compChannel) return;
    while (this.b.cqGetEvent(res.compChannel) !== 0) {
      /* acknowledged in the addon */
    }
    this.pollAll();
    if (!res.cq) return;
    this.b.cqReqNotify(res.cq);
    this.pollAll(); // completions that arrived between the last poll and re-arming
  }

  /**
   * Reads and handles completions until the CQ is empty, then reposts the receives they freed.
   * With spinUs the first poll waits up to that long for a completion (busyPoll). Returns how many
   * completions the first poll found.
   */
  private pollAll(spinUs = 0): number {
    const res = this.res;
    let first = -1;
    while (res.cq) {
      const n = this.b.cqPoll(res.cq, this.wcBuf, POLL_BATCH, first < 0 ? spinUs : 0);
      if (first < 0) first = n;
      if (n === 0) break;
      this.stats.pollBatches++;
      for (let i = 0; i < n && res.cq; i++) this.onWc(i);
      if (n < POLL_BATCH) break;
    }
    if (this.queuedRecvs) this.flushRecvs();
    return Math.max(first, 0);
  }

  /** One completion record of wcBuf (layout: cqPoll in native/src/rdma.cc), read in place. */
  private onWc(i: number): void {
    const o = i * R.WC_RECORD_LEN;
    const wrId = readU64(this.wcBuf, o);
    const status = this.wcBuf.readUInt32LE(o + 8);
    this.stats.completions++;
    if (wrId >= WR_PROBE) {
      const p = this.probes.get(wrId);
      this.probes.delete(wrId);
      if (status === R.IBV_WC_SUCCESS) {
        if (p) this.completeSendsUpTo(p.covers);
        p?.resolve(performance.now() - p.t0);
        if (this.drainWaiter && this.freeSlots.length === this.o.sendQueueDepth) this.drainWaiter();
      } else {
        const e = new TransportError(`keep-alive probe failed: ${R.describeWcStatus(status)}`, 'disconnected');
        p?.reject(e);
        this.lost(e.message);
      }
      return;
    }
    if (status !== R.IBV_WC_SUCCESS) {
      if (wrId < WR_RECV) this.completeSends(wrId);
      if (this.closing || this.stateValue !== 'connected') return; // flushed while going away
      this.lost(
        `${wrId >= WR_RECV ? 'receive' : 'send'} failed: ${R.describeWcStatus(status)} ` +
          `(vendor error 0x${this.wcBuf.readUInt32LE(o + 24).toString(16)})`,
      );
      return;
    }
    if (wrId >= WR_RECV) {
      const slot = wrId - WR_RECV;
      const off = slot * this.o.recvIuLen;
      this.stats.recvs++;
      if (this.stateValue === 'connected' || this.stateValue === 'connecting') {
        this.emit('iu', this.recvView(slot, off, this.wcBuf.readUInt32LE(o + 16)));
      }
      if (this.stateValue === 'connected' && !this.closing) this.queueRecv(slot);
      return;
    }
    this.completeSends(wrId);
    if (this.drainWaiter && this.freeSlots.length === this.o.sendQueueDepth) this.drainWaiter();
  }

  /**
   * A send completed (signalled, or failed): it and every send posted before it are done, since a
   * QP completes its sends in order. Their slots are free again.
   */
  private completeSends(slot: number): void {
    while (this.postedCount > 0) if (this.completeOldestSend() === slot) return;
  }

  /** A probe completed: every send posted before it (`covers` sends since connect) is done. */
  private completeSendsUpTo(covers: number): void {
    while (this.postedCount > 0 && this.sendsCompleted < covers) this.completeOldestSend();
  }

  /** Frees the oldest posted send's slot; returns the slot. */
  private completeOldestSend(): number {
    const s = this.posted[this.postedHead]!;
    this.postedHead = (this.postedHead + 1) % this.posted.length;
    this.postedCount--;
    this.sendsCompleted++;
    if (this.uncovered > this.postedCount) this.uncovered = this.postedCount; // a failed send completed
    this.freeSlots.push(s);
    return s;
  }

  /**
   * The received IU of a receive slot: a view of the receive pool, kept per slot and made again
   * only when the length differs (responses of a kind have one length), so a completion allocates
   * no Buffer. The view is the slot's memory either way: it is the IU until the slot is reposted.
   */
  private recvView(slot: number, off: number, len: number): Buffer {
    const v = this.recvViews[slot];
    if (v !== undefined && v.length === len) return v;
    return (this.recvViews[slot] = this.res.recvPool!.buf.subarray(off, off + len));
  }

  private queueRecv(slot: number): void {
    const len = this.o.recvIuLen;
    writeRecvWr(
      this.recvWrs,
      this.queuedRecvs++,
      WR_RECV + slot,
      this.recvBase + slot * len,
      len,
      this.res.recvPool!.lkey,
    );
  }

  private flushRecvs(): void {
    const n = this.queuedRecvs;
    this.queuedRecvs = 0;
    // A completion later in the same poll may have lost the channel: its QP and id are gone, and
    // the receives queued before it have nothing left to be posted on.
    if (this.stateValue === 'closed') return;
    try {
      this.b.postRecvList(this.res.cmId, this.recvWrs, n);
      this.stats.recvPosts++;
    } catch (err) {
      if (this.stateValue === 'connected') this.lost(`ibv_post_recv failed: ${(err as Error).message}`);
      else throw err;
    }
  }

  /* ---------------------------------------------------------- data path */

  send(iu: Buffer): void {
    if (this.stateValue !== 'connected' || this.closing) {
      throw new TransportError(`send on a ${this.closing ? 'closing' : this.stateValue} channel`, 'disconnected');
    }
    if (iu.length > this.o.maxSendIuLen) {
      throw new TransportError(`IU of ${iu.length} bytes exceeds the send buffer (${this.o.maxSendIuLen})`, 'protocol');
    }
    const slot = this.freeSlots.pop();
    if (slot === undefined) {
      throw new TransportError(`send queue full (${this.o.sendQueueDepth} IUs in flight)`, 'protocol');
    }
    const p = this.res.sendPool!;
    const off = slot * this.o.maxSendIuLen;
    iu.copy(p.buf, off);
    writeSendWr(this.sendWrs, this.queuedSends++, slot, R.IBV_WR_SEND, 0, this.sendBase + off, iu.length, p.lkey);
    this.stats.sends++;
    if (!this.flushQueued) {
      this.flushQueued = true;
      this.flushSendsSoon();
    }
  }

  /**
   * Posts the IUs queued since the last flush as one list; its last work request is signalled once
   * SIGNAL_EVERY sends wait uncovered or the send queue is half full (or closing), else none is. A
   * failed post loses the channel: the session sees 'disconnect' and its commands fail as
   * transport errors.
   */
  private flushSends(): void {
    this.flushQueued = false;
    const n = this.queuedSends;
    this.queuedSends = 0;
    if (n === 0 || this.stateValue !== 'connected') return;
    const depth = this.posted.length;
    for (let i = 0; i < n; i++) {
      this.posted[(this.postedHead + this.postedCount) % depth] = this.sendWrs.readUInt32LE(i * R.SEND_WR_LEN);
      this.postedCount++;
    }
    this.sendsPosted += n;
    this.uncovered += n;
    if (this.uncovered >= SIGNAL_EVERY || this.postedCount * 2 >= depth || this.closing) {
      setSendWrFlags(this.sendWrs, n - 1, R.IBV_SEND_SIGNALED);
      this.stats.signalledSends++;
      this.cover(this.o.keepaliveIntervalMs ? batchNow() : 0);
    }
    try {
      this.b.postSendList(this.res.cmId, this.sendWrs, n);
      this.stats.sendPosts++;
    } catch (err) {
      this.lost(`ibv_post_send failed: ${(err as Error).message}`, err as Error);
      return;
    }
    if (this.o.busyPollUs > 0) this.busyPoll();
  }

  /**
   * Busy polling: polls the CQ for up to busyPollUs for the first completion (the addon spins on
   * ibv_poll_cq, which reads the CQ in user memory) and handles what it finds at once, instead of
   * sleeping until the completion event wakes the event loop: a response that comes within the
   * budget costs no wake-up. The completion event still fires for it; its poll then finds nothing.
   * After a miss the next 1, 2, 4 … BUSY_POLL_MAX_SKIP posts do not spin; a hit spins at every post
   * again, so CPU is spent only while responses keep coming within the budget.
   */
  private busyPoll(): void {
    if (!this.res.cq) return;
    if (this.busyPollSkip > 0) {
      this.busyPollSkip--;
      return;
    }
    if (this.pollAll(this.o.busyPollUs) === 0) {
      // the target answers slower than the budget (large I/O, a busy target): spin less often
      this.stats.busyPollMisses++;
      this.busyPollBackoff = Math.min(BUSY_POLL_MAX_SKIP, this.busyPollBackoff * 2 || 1);
      this.busyPollSkip = this.busyPollBackoff;
      return;
    }
    this.busyPollBackoff = 0;
    this.stats.busyPollHits++;
  }

  /** A signalled work request posted at `now` covers the uncovered sends before it: stamps them. */
  private cover(now: number): void {
    const depth = this.posted.length;
    for (let i = this.postedCount - this.uncovered; i < this.postedCount; i++) {
      this.postedAt[(this.postedHead + i) % depth] = now;
    }
    this.uncovered = 0;
  }

  /**
   * Keep-alive: a zero-length RDMA WRITE (no SGE, remote address 0, rkey 0), signalled, so it also
   * completes every send posted unsignalled before it. Resolves with the round trip in ms; when
   * the path is a black hole it fails after the QP's retries and the channel is lost.
   */
  probe(): Promise<number> {
    if (this.stateValue !== 'connected' || this.closing) {
      return Promise.reject(new TransportError(`probe on a ${this.stateValue} channel`, 'disconnected'));
    }
    return this.postProbe();
  }

  private postProbe(): Promise<number> {
    const wrId = WR_PROBE + (this.probeSeq = (this.probeSeq + 1) % WR_SPACE);
    return new Promise((resolve, reject) => {
      const t0 = performance.now();
      this.probes.set(wrId, { resolve, reject, t0, covers: this.sendsPosted });
      if (this.uncovered > 0) this.cover(t0);
      try {
        writeSendWr(this.probeWr, 0, wrId, R.IBV_WR_RDMA_WRITE, R.IBV_SEND_SIGNALED, 0, 0, 0);
        this.b.postSendList(this.res.cmId, this.probeWr, 1);
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
      if (this.stateValue !== 'connected' || this.closing) return;
      if (this.overdue()) return;
      if (this.keepaliveInFlight) return;
      this.keepaliveInFlight = true;
      // a failed probe has already declared the channel lost (lost() -> 'disconnect')
      this.probe()
        .catch(() => undefined)
        .finally(() => {
          this.keepaliveInFlight = false;
        });
      // without it a probe posted into a black hole would be judged only at the next tick
      clearTimeout(this.probeCheck);
      this.probeCheck = setTimeout(
        () => {
          if (this.stateValue === 'connected' && !this.closing) this.overdue();
        },
        Math.ceil(this.overdueMs) + 1,
      );
      this.probeCheck.unref?.();
    }, this.o.keepaliveIntervalMs);
    this.keepaliveTimer.unref?.();
  }

  /**
   * Under load as when idle: the oldest send not completed (or the probe) waited longer than the
   * RC retry bound since the signalled work request covering it was posted (an uncovered send
   * cannot complete yet: the next probe covers it). Completions already in the CQ are taken first,
   * so a late timer tick (a busy event loop) is not taken for a dead path. Declares the channel
   * lost and returns true if so.
   */
  private overdue(): boolean {
    this.pollAll();
    if (this.stateValue !== 'connected') return true;
    const now = performance.now();
    let oldest = this.postedCount > this.uncovered ? this.postedAt[this.postedHead]! : now;
    for (const p of this.probes.values()) oldest = Math.min(oldest, p.t0);
    const waited = now - oldest;
    if (waited <= this.overdueMs) return false;
    this.lost(
      `path dead: a send waited ${Math.round(waited)} ms for its completion, beyond the RC retry bound ` +
        `of ${this.overdueMs.toFixed(1)} ms (retry_count ${this.o.retryCount}, ack_timeout ${this.o.ackTimeout})`,
    );
    return true;
  }

  registerBuffer(buf: Buffer): MemoryRegion {
    if (buf.length > this.maxRegion) throw new RangeError(`region of ${buf.length} bytes exceeds ${this.maxRegion}`);
    if (!this.res.pd) throw new TransportError(`registerBuffer on a ${this.stateValue} channel`, 'disconnected');
    return this.res.register(buf);
  }

  deregisterBuffer(region: MemoryRegion): void {
    this.res.deregister(region);
  }

  /** Live registrations outside the pools (tests check that nothing leaks). */
  get registeredRegions(): number {
    return this.res.registeredRegions;
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
        this.b.cmDisconnect(this.res.cmId);
      } catch {
        this.finishClose();
        return;
      }
      const t = setTimeout(() => this.finishClose(), CLOSE_DISCONNECT_MS);
      t.unref?.();
    };
    if (this.freeSlots.length === this.o.sendQueueDepth) disconnect();
    else {
      this.drainWaiter = disconnect;
      // sends posted unsignalled complete with a signalled work request behind them
      if (this.uncovered > 0) this.postProbe().catch(() => undefined);
      const t = setTimeout(disconnect, CLOSE_DRAIN_MS);
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
  private lost(reason: string, cause?: Error): void {
    if (this.stateValue === 'closed') return;
    const wasConnecting = this.stateValue === 'connecting';
    this.log.warn({ reason, device: this.device, qpNum: this.res.qpNum }, 'rdma: channel lost');
    if (wasConnecting) {
      // connect() owns the cleanup; make its wait fail now
      this.cmWaiter?.({ event: R.RDMA_CM_EVENT_CONNECT_ERROR, id: this.res.cmId, status: 0, privateData: null });
      return;
    }
    if (this.res.cmId && !this.res.portDown()) {
      try {
        this.b.cmDisconnect(this.res.cmId);
      } catch {
        /* already disconnected */
      }
    }
    // the QP destroy can block for seconds (rxe): on a worker thread, the other channels go on
    this.release(true);
    this.stateValue = 'closed';
    this.fireDisconnect(new TransportError(reason, 'disconnected', cause ? { cause } : undefined));
  }

  private fireDisconnect(reason: TransportError): void {
    for (const [, p] of this.probes) p.reject(reason);
    this.probes.clear();
    if (this.disconnectedFired) return;
    this.disconnectedFired = true;
    this.emit('disconnect', reason);
  }

  /**
   * Stops the channel's timers and waits, and frees its resources (VerbsResources.free, or with
   * inBackground VerbsResources.freeAsync: the QP destroyed on a worker thread, see released());
   * safe to call again.
   */
  private release(inBackground = false): void {
    if (this.keepaliveTimer) {
      clearInterval(this.keepaliveTimer);
      this.keepaliveTimer = undefined;
    }
    clearTimeout(this.probeCheck);
    this.cmWaiter = undefined;
    if (inBackground) {
      this.releasing = this.res
        .freeAsync()
        .catch((err: unknown) => this.log.error({ err, device: this.device }, 'rdma: releasing a lost channel failed'));
    } else this.res.free();
  }

  /** Resolves once the channel's resources are released (a lost channel's are, in the background). */
  released(): Promise<void> {
    return this.releasing;
  }
}
