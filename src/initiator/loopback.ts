/**
 * In-process loopback channel pair: an initiator end (ChannelTransport) and a target end
 * (TargetChannelTransport) joined by two ordered, asynchronous "wires", with fault hooks.
 *
 * Delivery is never synchronous (setImmediate or a timer), in order per direction, like SENDs on
 * an RC QP. RDMA READ/WRITE issued by the target travel on the target->initiator wire, so a WRITE
 * lands in initiator memory before a later SRP_RSP is seen, as on real hardware; their
 * completions come back on the initiator->target wire. Data moves once, when the operation
 * reaches the initiator's side, between the two sides' memory: like an HCA, which reads the
 * source of an RDMA WRITE when it executes the work request, the loopback reads it then, so the
 * target keeps it unchanged until the WRITE completes. A sent IU is copied at send time into a
 * wire buffer that is reused once the receiver's listeners have returned (as a receive buffer is
 * reposted): listeners copy what they keep.
 *
 * Faults (LoopbackFaults): per-direction delay, a drop filter for IUs, a black hole (everything
 * silently lost, RDMA operations never complete: what a link with 100 % loss looks like until
 * the RC retry count runs out), and an abrupt disconnect.
 */
import { TransportError } from './scsi-executor.js';
import {
  Emitter,
  type ChannelEvents,
  type ChannelState,
  type ChannelTransport,
  type ConnectAnswer,
  type ConnectOptions,
  type LoginForm,
  type MemoryRegion,
  type TargetChannelTransport,
} from './transport.js';

export type Direction = 'toTarget' | 'toInitiator';

export interface LoopbackOptions {
  loginForm?: LoginForm;
  /** Largest region registerBuffer() accepts; default 16 MiB. */
  maxRegionSize?: number;
  /** Initial one-way delays in ms (default 0 = next turn of the event loop). */
  delayMs?: Partial<Record<Direction, number>>;
}

export interface LoopbackFaults {
  /** One-way delay per direction in ms; may be changed at any time. */
  delayMs: Record<Direction, number>;
  /** Returns true to drop this IU (RDMA operations are not subject to it). */
  drop?: (dir: Direction, iu: Buffer) => boolean;
  /** While true, everything in both directions is silently lost and RDMA operations hang. */
  blackHole: boolean;
}

export interface LoopbackStats {
  sent: Record<Direction, number>;
  delivered: Record<Direction, number>;
  dropped: number;
  blackHoled: number;
  rdmaReads: number;
  rdmaWrites: number;
  accessErrors: number;
}

export interface LoopbackPair {
  initiator: LoopbackInitiatorEnd;
  target: LoopbackTargetEnd;
  faults: LoopbackFaults;
  stats: LoopbackStats;
  /** Abrupt loss of the channel (link down / QP fatal): both ends see 'disconnect' now. */
  disconnect(reason?: string): void;
}

/** A wire buffer holding one sent IU; reused after delivery. */
interface IuItem {
  kind: 'iu';
  buf: Buffer;
  /** buf.subarray(0, IU length), kept while the length repeats */
  view: Buffer;
}
/** An RDMA operation of the target: executed on the initiator side, completed on the target side. */
interface RdmaItem {
  kind: 'rdma';
  /** false: on its way to the initiator side; true: its completion on the way back */
  done: boolean;
  write: boolean;
  va: bigint;
  rkey: number;
  length: number;
  /** WRITE: the target's source */
  data: Buffer | undefined;
  /** READ: what was read */
  result: Buffer | undefined;
  resolve: (v: Buffer | undefined) => void;
  reject: (e: TransportError) => void;
  /** a posted WRITE (postRdmaWrite): no completion comes back, only a failure is reported */
  onError: ((e: TransportError) => void) | undefined;
}
type Item =
  IuItem | RdmaItem | { kind: 'fn'; run: () => void; subjectToBlackHole: boolean } | { kind: 'close'; by: Direction };

/** Size of the reusable wire buffers: IUs up to this size are copied into one (larger ones get their own). */
const WIRE_BUFFER_BYTES = 9 * 1024;

/**
 * One direction of the wire: a FIFO with a per-item due time. An item sent without delay behind
 * nothing delayed is due at once (due 0), so the clock is only read when delays are in play.
 */
class Wire {
  /** items[head, tail) are on the wire; the arrays keep their room when the wire runs empty */
  private readonly items: (Item | undefined)[] = [];
  private readonly dues: number[] = [];
  private head = 0;
  private tail = 0;
  private timer: NodeJS.Timeout | NodeJS.Immediate | undefined;
  private lastDue = 0;
  /** bumped by clear(): a delivery that cleared the wire ends the current fire() */
  private epoch = 0;
  private readonly fireFn = (): void => this.fire();
  constructor(private readonly deliver: (item: Item) => void) {}
  push(item: Item, delayMs: number): void {
    const due = delayMs === 0 && this.lastDue === 0 ? 0 : Math.max(Date.now() + delayMs, this.lastDue);
    this.lastDue = due;
    this.items[this.tail] = item;
    this.dues[this.tail] = due;
    this.tail++;
    this.arm();
  }
  /** Calls fn for every item not delivered yet, in order. */
  forEachPending(fn: (item: Item) => void): void {
    for (let i = this.head; i < this.tail; i++) fn(this.items[i]!);
  }
  clear(): void {
    this.epoch++;
    this.items.length = 0;
    this.dues.length = 0;
    this.head = this.tail = 0;
    this.lastDue = 0;
    this.disarm();
  }
  private disarm(): void {
    if (this.timer) {
      clearTimeout(this.timer as NodeJS.Timeout);
      clearImmediate(this.timer as NodeJS.Immediate);
      this.timer = undefined;
    }
  }
  private arm(): void {
    if (this.timer || this.head === this.tail) return;
    const due = this.dues[this.head]!;
    const wait = due === 0 ? 0 : due - Date.now();
    this.timer = wait > 0 ? setTimeout(this.fireFn, wait) : setImmediate(this.fireFn);
  }
  private fire(): void {
    this.timer = undefined;
    let now = 0;
    const epoch = this.epoch;
    // what is due now; items pushed meanwhile wait for the next turn
    const end = this.tail;
    while (this.head < end) {
      const due = this.dues[this.head]!;
      if (due !== 0 && due > (now ||= Date.now())) break;
      const item = this.items[this.head]!;
      this.items[this.head] = undefined;
      this.head++;
      this.deliver(item);
      if (this.epoch !== epoch) return; // cleared (the channel ended)
    }
    if (this.head === this.tail) {
      this.head = this.tail = 0;
      this.lastDue = 0;
    } else if (this.head > 1024 && this.head * 2 > this.tail) {
      // a wire that never runs empty (steady traffic with a delay): drop the delivered prefix
      const n = this.tail - this.head;
      this.items.copyWithin(0, this.head, this.tail);
      this.dues.copyWithin(0, this.head, this.tail);
      this.items.fill(undefined, n, this.tail);
      this.head = 0;
      this.tail = n;
    }
    this.arm();
  }
}

interface Region {
  buf: Buffer;
  va: bigint;
  /** va as a Number (loopback addresses stay far below 2^53) */
  vaNum: number;
}

const noop = (): void => {};

/** Promise executor handing out resolve/reject without a closure per RDMA operation. */
let capturedResolve: ((v: Buffer | undefined) => void) | undefined;
let capturedReject: ((e: TransportError) => void) | undefined;
function capture(resolve: (v: Buffer | undefined) => void, reject: (e: TransportError) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

class Link {
  state: ChannelState = 'idle';
  readonly faults: LoopbackFaults;
  readonly stats: LoopbackStats = {
    sent: { toTarget: 0, toInitiator: 0 },
    delivered: { toTarget: 0, toInitiator: 0 },
    dropped: 0,
    blackHoled: 0,
    rdmaReads: 0,
    rdmaWrites: 0,
    accessErrors: 0,
  };
  readonly regions = new Map<number, Region>();
  private nextRkey = 0x1000;
  private nextVa = 0x7f00_0000_0000n;
  readonly toTarget = new Wire((i) => this.deliver('toTarget', i));
  readonly toInitiator = new Wire((i) => this.deliver('toInitiator', i));
  /** rejecters of connect attempts that are still in flight */
  readonly pending = new Set<(e: TransportError) => void>();
  /** RDMA operations not completed yet */
  readonly pendingRdma = new Set<RdmaItem>();
  /**
   * Wire buffers free for the next IU, one list per direction: the IUs of one direction mostly
   * have one length (SRP_CMD one way, SRP_RSP the other), so a buffer's view of it is reused.
   */
  private readonly freeIus: Record<Direction, IuItem[]> = { toTarget: [], toInitiator: [] };
  /** posted WRITE records free for the next one */
  private readonly freePosted: RdmaItem[] = [];
  /** posted WRITEs a black hole swallowed: they fail when the channel ends */
  private readonly swallowedPosted: RdmaItem[] = [];
  initiator!: LoopbackInitiatorEnd;
  target!: LoopbackTargetEnd;

  constructor(opts: LoopbackOptions) {
    this.faults = {
      delayMs: { toTarget: opts.delayMs?.toTarget ?? 0, toInitiator: opts.delayMs?.toInitiator ?? 0 },
      blackHole: false,
    };
  }

  wire(dir: Direction): Wire {
    return dir === 'toTarget' ? this.toTarget : this.toInitiator;
  }
  /** Sends a copy of iu (taken now) in direction dir. */
  pushIu(dir: Direction, iu: Buffer): void {
    const len = iu.length;
    let item: IuItem;
    if (len <= WIRE_BUFFER_BYTES) {
      const free = this.freeIus[dir].pop();
      if (free) {
        item = free;
        if (item.view.length !== len) item.view = item.buf.subarray(0, len);
      } else {
        const buf = Buffer.allocUnsafe(WIRE_BUFFER_BYTES);
        item = { kind: 'iu', buf, view: buf.subarray(0, len) };
      }
    } else {
      const buf = Buffer.allocUnsafe(len);
      item = { kind: 'iu', buf, view: buf };
    }
    item.buf.set(iu, 0); // as iu.copy(item.buf), without Buffer#copy's argument checks
    this.push(dir, item);
  }
  push(dir: Direction, item: Item): void {
    if (item.kind === 'iu') {
      this.stats.sent[dir]++;
      if (this.faults.drop?.(dir, item.view)) {
        this.stats.dropped++;
        this.recycle(dir, item);
        return;
      }
    }
    this.wire(dir).push(item, this.faults.delayMs[dir]);
  }
  private recycle(dir: Direction, item: IuItem): void {
    if (item.buf.length === WIRE_BUFFER_BYTES) this.freeIus[dir].push(item);
  }
  private deliver(dir: Direction, item: Item): void {
    if (this.state === 'closed') return;
    if (this.faults.blackHole && (item.kind !== 'fn' || item.subjectToBlackHole)) {
      this.stats.blackHoled++;
      if (item.kind === 'iu') this.recycle(dir, item);
      else if (item.kind === 'rdma' && item.onError) this.swallowedPosted.push(item);
      return;
    }
    switch (item.kind) {
      case 'iu':
        this.stats.delivered[dir]++;
        (dir === 'toTarget' ? this.target : this.initiator).deliverIu(item.view);
        // like a reposted receive buffer: the listeners have had it
        this.recycle(dir, item);
        return;
      case 'rdma':
        if (item.done) {
          this.pendingRdma.delete(item);
          item.resolve(item.result);
        } else {
          this.executeRdma(item);
        }
        return;
      case 'fn':
        item.run();
        return;
      case 'close':
        this.teardown(new TransportError('channel closed by peer', 'disconnected'), item.by);
        return;
    }
  }

  /** A target's RDMA READ or WRITE in flight; settles when its completion is back on the target side. */
  rdma(
    write: boolean,
    va: bigint,
    rkey: number,
    length: number,
    data: Buffer | undefined,
  ): Promise<Buffer | undefined> {
    if (this.state !== 'connected') {
      return Promise.reject(new TransportError(`RDMA on a ${this.state} channel`, 'disconnected'));
    }
    const promise = new Promise<Buffer | undefined>(capture);
    const item: RdmaItem = {
      kind: 'rdma',
      done: false,
      write,
      va,
      rkey,
      length,
      data,
      result: undefined,
      resolve: capturedResolve!,
      reject: capturedReject!,
      onError: undefined,
    };
    this.pendingRdma.add(item);
    this.push('toInitiator', item);
    return promise;
  }

  /**
   * A target's RDMA WRITE whose completion nobody waits for: it travels and moves its data as
   * rdma() does, but no completion comes back; onError hears of an access error or of the
   * channel's loss before it was executed (where rdma()'s promise would reject).
   */
  postWrite(va: bigint, rkey: number, data: Buffer, onError: (e: TransportError) => void): void {
    if (this.state !== 'connected') {
      const err = new TransportError(`RDMA on a ${this.state} channel`, 'disconnected');
      queueMicrotask(() => onError(err));
      return;
    }
    let item = this.freePosted.pop();
    if (item) {
      item.va = va;
      item.rkey = rkey;
      item.length = data.length;
      item.data = data;
      item.onError = onError;
    } else {
      item = {
        kind: 'rdma',
        done: false,
        write: true,
        va,
        rkey,
        length: data.length,
        data,
        result: undefined,
        resolve: noop,
        reject: noop,
        onError,
      };
    }
    this.push('toInitiator', item);
  }

  /** A posted WRITE is over (executed or failed): its record serves the next one. */
  private releasePosted(item: RdmaItem): void {
    item.data = undefined;
    item.onError = undefined;
    this.freePosted.push(item);
  }

  /** The operation reaches the initiator side: the data moves (once), the completion goes back. */
  private executeRdma(item: RdmaItem): void {
    const r = this.regions.get(item.rkey);
    const start = r && item.va >= r.va ? Number(item.va) - r.vaNum : -1;
    if (!r || start < 0 || item.length < 0 || start + item.length > r.buf.length) {
      const op = item.write ? 'WRITE' : 'READ';
      const what = `RDMA ${op} va=0x${item.va.toString(16)} rkey=0x${item.rkey.toString(16)} len=${item.length}`;
      const onError = item.onError;
      if (onError) {
        this.releasePosted(item);
        onError(this.accessError(what));
        return;
      }
      this.pendingRdma.delete(item);
      item.reject(this.accessError(what));
      return;
    }
    if (item.write) {
      this.stats.rdmaWrites++;
      const data = item.data!;
      r.buf.set(data.length === item.length ? data : data.subarray(0, item.length), start);
      item.data = undefined;
      if (item.onError) {
        this.releasePosted(item);
        return;
      }
    } else {
      this.stats.rdmaReads++;
      const result = Buffer.allocUnsafe(item.length);
      r.buf.copy(result, 0, start, start + item.length);
      item.result = result;
    }
    item.done = true;
    this.push('toTarget', item);
  }

  register(buf: Buffer): MemoryRegion {
    const rkey = this.nextRkey++;
    const va = this.nextVa;
    // leave an unregistered gap after each region so an off-by-one access is caught
    this.nextVa += BigInt(buf.length + 8192 - (buf.length % 4096));
    this.regions.set(rkey, { buf, va, vaNum: Number(va) });
    return { va, rkey, length: buf.length };
  }
  accessError(what: string): TransportError {
    this.stats.accessErrors++;
    const err = new TransportError(`remote access error: ${what}`, 'protocol');
    // as on RC hardware, a remote access error moves the QP to error: the channel is lost
    this.teardown(err, undefined);
    return err;
  }

  /**
   * Like rdma_disconnect(): the closing side learns of the disconnect promptly even when its
   * DREQ is lost (black hole); the wire only gets a bounded chance to flush earlier sends.
   */
  closeFallback(by: Direction): void {
    const t = setTimeout(
      () => this.teardown(new TransportError('channel closed by peer', 'disconnected'), by),
      200 + this.faults.delayMs[by],
    );
    t.unref?.();
  }

  /** Ends the channel now. `closedBy` is the direction of the end that closed (its own reason is 'closed'). */
  teardown(reason: TransportError, closedBy: Direction | undefined): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    // posted WRITEs not executed yet fail as rdma()'s promises do
    const posted = this.swallowedPosted.splice(0);
    this.toInitiator.forEachPending((i) => {
      if (i.kind === 'rdma' && i.onError) posted.push(i);
    });
    this.toTarget.clear();
    this.toInitiator.clear();
    for (const rej of [...this.pending]) rej(reason);
    this.pending.clear();
    for (const op of [...this.pendingRdma]) op.reject(reason);
    this.pendingRdma.clear();
    for (const op of posted) op.onError!(reason);
    const mine = new TransportError('channel closed', 'closed');
    this.initiator.fireDisconnect(closedBy === 'toTarget' ? mine : reason);
    this.target.fireDisconnect(closedBy === 'toInitiator' ? mine : reason);
  }
}

/**
 * What both ends share: state, graceful close in their own direction (sent
 * IUs are delivered first), IU delivery and the one-time disconnect event.
 */
abstract class LoopbackEnd extends Emitter<ChannelEvents> {
  private disconnected = false;
  constructor(
    protected readonly link: Link,
    /** The direction this end sends in. */
    private readonly outbound: Direction,
  ) {
    super();
  }
  get state(): ChannelState {
    return this.link.state;
  }
  close(): void {
    if (this.link.state === 'closed') return;
    if (this.link.state !== 'connected') {
      this.link.teardown(new TransportError('channel closed', 'closed'), this.outbound);
      return;
    }
    this.link.push(this.outbound, { kind: 'close', by: this.outbound });
    this.link.closeFallback(this.outbound);
  }
  /** @internal */
  deliverIu(iu: Buffer): void {
    this.emit('iu', iu);
  }
  /** @internal */
  fireDisconnect(reason: TransportError): void {
    if (this.disconnected) return;
    this.disconnected = true;
    this.emit('disconnect', reason);
  }
}

/** Initiator end of a loopback pair. */
export class LoopbackInitiatorEnd extends LoopbackEnd implements ChannelTransport {
  readonly loginForm: LoginForm;
  readonly maxRegionSize: number;
  constructor(link: Link, opts: LoopbackOptions) {
    super(link, 'toTarget');
    this.loginForm = opts.loginForm ?? 'ib-cm';
    this.maxRegionSize = opts.maxRegionSize ?? 16 << 20;
  }
  /** Login request sent → its answer, ms (nothing is resolved first here: the request goes at once). */
  loginAnswerMs: number | undefined;
  connect(loginReq: Buffer, opts: ConnectOptions = {}): Promise<Buffer> {
    const link = this.link;
    if (link.state !== 'idle') return Promise.reject(new TransportError(`connect in state ${link.state}`, 'closed'));
    link.state = 'connecting';
    const req = Buffer.from(loginReq);
    return new Promise<Buffer>((resolve, reject) => {
      const timeoutMs = Math.min(opts.timeoutMs ?? 5000, opts.answerTimeoutMs ?? Infinity);
      const sent = performance.now();
      let done = false;
      const finish = (err: TransportError | undefined, rsp?: Buffer) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        link.pending.delete(onLoss);
        if (rsp) this.loginAnswerMs = performance.now() - sent;
        if (err) reject(err);
        else resolve(rsp!);
      };
      const onLoss = (e: TransportError) => finish(e);
      link.pending.add(onLoss);
      const timer = setTimeout(() => {
        finish(new TransportError(`no answer to the login request within ${timeoutMs} ms`, 'timeout'));
        link.teardown(new TransportError('connect timed out', 'timeout'), undefined);
      }, timeoutMs);
      // the request travels to the target; the answer travels back
      link.push('toTarget', {
        kind: 'fn',
        subjectToBlackHole: true,
        run: () => {
          const handler = link.target.connectHandler;
          if (!handler) {
            link.push('toInitiator', {
              kind: 'fn',
              subjectToBlackHole: true,
              run: () => {
                link.state = 'closed';
                finish(new TransportError('connection refused: no listener', 'disconnected'));
              },
            });
            return;
          }
          Promise.resolve()
            .then(() => handler(req))
            .then(
              (answer) => {
                link.push('toInitiator', {
                  kind: 'fn',
                  subjectToBlackHole: true,
                  run: () => {
                    if (done) return;
                    if ('accept' in answer) {
                      link.state = 'connected';
                      finish(undefined, Buffer.from(answer.accept));
                    } else {
                      link.state = 'closed';
                      finish(undefined, Buffer.from(answer.reject));
                    }
                  },
                });
              },
              (err: unknown) => {
                link.push('toInitiator', {
                  kind: 'fn',
                  subjectToBlackHole: true,
                  run: () => {
                    link.state = 'closed';
                    finish(new TransportError('connection refused by target', 'disconnected', { cause: err }));
                  },
                });
              },
            );
        },
      });
    });
  }
  send(iu: Buffer): void {
    if (this.link.state !== 'connected')
      throw new TransportError(`send on a ${this.link.state} channel`, 'disconnected');
    this.link.pushIu('toTarget', iu);
  }
  registerBuffer(buf: Buffer): MemoryRegion {
    if (buf.length > this.maxRegionSize)
      throw new RangeError(`region of ${buf.length} bytes exceeds ${this.maxRegionSize}`);
    return this.link.register(buf);
  }
  deregisterBuffer(mr: MemoryRegion): void {
    this.link.regions.delete(mr.rkey);
  }
  /** Number of currently registered regions (tests check that nothing leaks). */
  get registeredRegions(): number {
    return this.link.regions.size;
  }
}

/** Target end of a loopback pair. */
export class LoopbackTargetEnd extends LoopbackEnd implements TargetChannelTransport {
  /** @internal */
  connectHandler: ((loginReq: Buffer) => ConnectAnswer | Promise<ConnectAnswer>) | undefined;
  constructor(link: Link) {
    super(link, 'toInitiator');
  }
  /** Installs the listener that answers the initiator's connect (CM REQ carrying SRP_LOGIN_REQ). */
  onConnect(handler: (loginReq: Buffer) => ConnectAnswer | Promise<ConnectAnswer>): void {
    this.connectHandler = handler;
  }
  send(iu: Buffer): void {
    if (this.link.state !== 'connected')
      throw new TransportError(`send on a ${this.link.state} channel`, 'disconnected');
    this.link.pushIu('toInitiator', iu);
  }
  rdmaRead(va: bigint, rkey: number, length: number): Promise<Buffer> {
    return this.link.rdma(false, va, rkey, length, undefined) as Promise<Buffer>;
  }
  /** The source is read when the WRITE reaches the initiator side: keep it unchanged until the promise settles. */
  rdmaWrite(va: bigint, rkey: number, data: Buffer): Promise<void> {
    return this.link.rdma(true, va, rkey, data.length, data) as Promise<unknown> as Promise<void>;
  }
  /**
   * An RDMA WRITE without a completion to wait for (TargetChannelTransport.postRdmaWrite): no
   * promise, no completion travelling back. The source is read when the WRITE reaches the
   * initiator side, before any IU sent after it. An rdmaWrite replaced on the instance (fault
   * injection) still sees every WRITE.
   */
  postRdmaWrite(va: bigint, rkey: number, data: Buffer, onError: (err: TransportError) => void): void {
    if (this.rdmaWrite !== LoopbackTargetEnd.prototype.rdmaWrite) {
      this.rdmaWrite(va, rkey, data).catch(onError);
      return;
    }
    this.link.postWrite(va, rkey, data, onError);
  }
}

/** Creates a connected-on-demand loopback channel: the initiator end connects, the target end answers. */
export function createLoopbackPair(opts: LoopbackOptions = {}): LoopbackPair {
  const link = new Link(opts);
  link.initiator = new LoopbackInitiatorEnd(link, opts);
  link.target = new LoopbackTargetEnd(link);
  return {
    initiator: link.initiator,
    target: link.target,
    faults: link.faults,
    stats: link.stats,
    disconnect: (reason = 'link down') => link.teardown(new TransportError(reason, 'disconnected'), undefined),
  };
}
