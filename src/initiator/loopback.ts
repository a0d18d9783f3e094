/**
 * In-process loopback channel pair: an initiator end (ChannelTransport) and a target end
 * (TargetChannelTransport) joined by two ordered, asynchronous "wires", with fault hooks.
 *
 * Delivery is never synchronous (setImmediate or a timer), in order per direction, like SENDs on
 * an RC QP. RDMA READ/WRITE issued by the target travel on the target->initiator wire, so a WRITE
 * lands in initiator memory before a later SRP_RSP is seen, as on real hardware; their
 * completions come back on the initiator->target wire.
 *
 * Faults (LoopbackFaults): per-direction delay, a drop filter for IUs, a black hole (everything
 * silently lost, RDMA operations never complete: what a link with 100 % loss looks like until
 * the RC retry count runs out), and an abrupt disconnect.
 */
import { TransportError } from './scsi-executor.js';
import {
  Emitter, type ChannelEvents, type ChannelState, type ChannelTransport, type ConnectAnswer, type LoginForm,
  type MemoryRegion, type TargetChannelTransport,
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

type Item =
  | { kind: 'iu'; data: Buffer }
  | { kind: 'fn'; run: () => void; subjectToBlackHole: boolean }
  | { kind: 'close'; by: Direction };

/** One direction of the wire: FIFO with a per-item due time. */
class Wire {
  private readonly q: { due: number; item: Item }[] = [];
  private timer: NodeJS.Timeout | NodeJS.Immediate | undefined;
  private lastDue = 0;
  constructor(private readonly deliver: (item: Item) => void) {}
  push(item: Item, delayMs: number): void {
    const due = Math.max(Date.now() + delayMs, this.lastDue);
    this.lastDue = due;
    this.q.push({ due, item });
    this.arm();
  }
  clear(): void {
    this.q.length = 0;
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
    if (this.timer || this.q.length === 0) return;
    const wait = this.q[0]!.due - Date.now();
    const fire = () => {
      this.timer = undefined;
      const now = Date.now();
      while (this.q.length && this.q[0]!.due <= now) this.deliver(this.q.shift()!.item);
      this.arm();
    };
    this.timer = wait > 0 ? setTimeout(fire, wait) : setImmediate(fire);
  }
}

interface Region {
  buf: Buffer;
  va: bigint;
}

class Link {
  state: ChannelState = 'idle';
  readonly faults: LoopbackFaults;
  readonly stats: LoopbackStats = {
    sent: { toTarget: 0, toInitiator: 0 }, delivered: { toTarget: 0, toInitiator: 0 },
    dropped: 0, blackHoled: 0, rdmaReads: 0, rdmaWrites: 0, accessErrors: 0,
  };
  readonly regions = new Map<number, Region>();
  private nextRkey = 0x1000;
  private nextVa = 0x7f00_0000_0000n;
  readonly toTarget = new Wire((i) => this.deliver('toTarget', i));
  readonly toInitiator = new Wire((i) => this.deliver('toInitiator', i));
  /** rejecters of RDMA operations and connect attempts that are still in flight */
  readonly pending = new Set<(e: TransportError) => void>();
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
  push(dir: Direction, item: Item): void {
    if (item.kind === 'iu') {
      this.stats.sent[dir]++;
      if (this.faults.drop?.(dir, item.data)) {
        this.stats.dropped++;
        return;
      }
    }
    this.wire(dir).push(item, this.faults.delayMs[dir]);
  }
  private deliver(dir: Direction, item: Item): void {
    if (this.state === 'closed') return;
    if (this.faults.blackHole && (item.kind !== 'fn' || item.subjectToBlackHole)) {
      this.stats.blackHoled++;
      return;
    }
    switch (item.kind) {
      case 'iu':
        this.stats.delivered[dir]++;
        (dir === 'toTarget' ? this.target : this.initiator).deliverIu(item.data);
        return;
      case 'fn':
        item.run();
        return;
      case 'close':
        this.teardown(new TransportError('channel closed by peer', 'disconnected'), item.by);
        return;
    }
  }

  register(buf: Buffer): MemoryRegion {
    const rkey = this.nextRkey++;
    const va = this.nextVa;
    // leave an unregistered gap after each region so an off-by-one access is caught
    this.nextVa += BigInt(buf.length + 8192 - (buf.length % 4096));
    this.regions.set(rkey, { buf, va });
    return { va, rkey, length: buf.length };
  }
  /** Resolves (va, rkey, length) to a view of initiator memory, or undefined on an access error. */
  resolve(va: bigint, rkey: number, length: number): Buffer | undefined {
    const r = this.regions.get(rkey);
    if (!r || va < r.va || length < 0) return undefined;
    const start = Number(va - r.va);
    if (start + length > r.buf.length) return undefined;
    return r.buf.subarray(start, start + length);
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
    const t = setTimeout(() => this.teardown(new TransportError('channel closed by peer', 'disconnected'), by),
      200 + this.faults.delayMs[by]);
    t.unref?.();
  }

  /** Ends the channel now. `closedBy` is the direction of the end that closed (its own reason is 'closed'). */
  teardown(reason: TransportError, closedBy: Direction | undefined): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.toTarget.clear();
    this.toInitiator.clear();
    for (const rej of [...this.pending]) rej(reason);
    this.pending.clear();
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
  connect(loginReq: Buffer, opts: { timeoutMs?: number } = {}): Promise<Buffer> {
    const link = this.link;
    if (link.state !== 'idle') return Promise.reject(new TransportError(`connect in state ${link.state}`, 'closed'));
    link.state = 'connecting';
    const req = Buffer.from(loginReq);
    return new Promise<Buffer>((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 5000;
      let done = false;
      const finish = (err: TransportError | undefined, rsp?: Buffer) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        link.pending.delete(onLoss);
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
        kind: 'fn', subjectToBlackHole: true, run: () => {
          const handler = link.target.connectHandler;
          if (!handler) {
            link.push('toInitiator', { kind: 'fn', subjectToBlackHole: true, run: () => {
              link.state = 'closed';
              finish(new TransportError('connection refused: no listener', 'disconnected'));
            } });
            return;
          }
          Promise.resolve()
            .then(() => handler(req))
            .then((answer) => {
              link.push('toInitiator', { kind: 'fn', subjectToBlackHole: true, run: () => {
                if (done) return;
                if ('accept' in answer) {
                  link.state = 'connected';
                  finish(undefined, Buffer.from(answer.accept));
                } else {
                  link.state = 'closed';
                  finish(undefined, Buffer.from(answer.reject));
                }
              } });
            }, (err: unknown) => {
              link.push('toInitiator', { kind: 'fn', subjectToBlackHole: true, run: () => {
                link.state = 'closed';
                finish(new TransportError('connection refused by target', 'disconnected', { cause: err }));
              } });
            });
        },
      });
    });
  }
  send(iu: Buffer): void {
    if (this.link.state !== 'connected') throw new TransportError(`send on a ${this.link.state} channel`, 'disconnected');
    this.link.push('toTarget', { kind: 'iu', data: Buffer.from(iu) });
  }
  registerBuffer(buf: Buffer): MemoryRegion {
    if (buf.length > this.maxRegionSize) throw new RangeError(`region of ${buf.length} bytes exceeds ${this.maxRegionSize}`);
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
    if (this.link.state !== 'connected') throw new TransportError(`send on a ${this.link.state} channel`, 'disconnected');
    this.link.push('toInitiator', { kind: 'iu', data: Buffer.from(iu) });
  }
  rdmaRead(va: bigint, rkey: number, length: number): Promise<Buffer> {
    return this.rdma((resolve, reject) => {
      const src = this.link.resolve(va, rkey, length);
      if (!src) return reject(this.link.accessError(`RDMA READ va=0x${va.toString(16)} rkey=0x${rkey.toString(16)} len=${length}`));
      this.link.stats.rdmaReads++;
      const copy = Buffer.from(src);
      this.link.push('toTarget', { kind: 'fn', subjectToBlackHole: true, run: () => resolve(copy) });
    });
  }
  rdmaWrite(va: bigint, rkey: number, data: Buffer): Promise<void> {
    const copy = Buffer.from(data);
    return this.rdma<void>((resolve, reject) => {
      const dst = this.link.resolve(va, rkey, copy.length);
      if (!dst) return reject(this.link.accessError(`RDMA WRITE va=0x${va.toString(16)} rkey=0x${rkey.toString(16)} len=${copy.length}`));
      this.link.stats.rdmaWrites++;
      copy.copy(dst);
      this.link.push('toTarget', { kind: 'fn', subjectToBlackHole: true, run: () => resolve() });
    });
  }
  /** Runs op when it reaches the initiator side of the wire; settles on the way back. */
  private rdma<T>(op: (resolve: (v: T) => void, reject: (e: TransportError) => void) => void): Promise<T> {
    const link = this.link;
    if (link.state !== 'connected') return Promise.reject(new TransportError(`RDMA on a ${link.state} channel`, 'disconnected'));
    return new Promise<T>((resolve, reject) => {
      const onLoss = (e: TransportError) => reject(e);
      link.pending.add(onLoss);
      const settle = {
        ok: (v: T) => { link.pending.delete(onLoss); resolve(v); },
        fail: (e: TransportError) => { link.pending.delete(onLoss); reject(e); },
      };
      link.push('toInitiator', { kind: 'fn', subjectToBlackHole: true, run: () => op(settle.ok, settle.fail) });
    });
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
