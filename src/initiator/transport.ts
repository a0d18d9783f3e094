/**
 * Channel transport: one RDMA channel (an RC queue pair plus its connection manager id) as the
 * SRP session and the test SRP target see it. Implementations: the in-process loopback pair
 * (loopback.ts) and, later, the librdmacm/libibverbs one through the native addon.
 *
 * The model follows what the hardware does, so code tested over the loopback behaves the same
 * over RDMA:
 * - login travels in connection-manager private data: connect() carries SRP_LOGIN_REQ (the 64-byte
 *   srp_login_req for IB CM, the 56-byte srp_login_req_rdma for RDMA/CM) and returns the target's
 *   SRP_LOGIN_RSP (REP / ESTABLISHED) or SRP_LOGIN_REJ (REJ) bytes;
 * - IUs are SENDs, delivered in order, asynchronously;
 * - data moves by the target's RDMA READ (data-out) and RDMA WRITE (data-in) against memory the
 *   initiator registered; an access outside a registered region is a remote access error that
 *   kills the channel, as it moves a real QP to the error state;
 * - a disconnect (link down, DREQ, QP error) is an event, after which nothing is delivered.
 */
import { TransportError } from './scsi-executor.js';

/** A registered memory region as the peer addresses it (the contents of an srp_direct_buf). */
export interface MemoryRegion {
  va: bigint;
  rkey: number;
  length: number;
}

export type ChannelState = 'idle' | 'connecting' | 'connected' | 'closed';

/** How the connection manager carries SRP_LOGIN_REQ: IB CM (64 bytes) or RDMA/CM (56 bytes). */
export type LoginForm = 'ib-cm' | 'rdma-cm';

export interface ChannelEvents {
  /** An IU arrived. The buffer belongs to the listener only during the call (receive buffers are reposted). */
  iu: [iu: Buffer];
  /** The channel is gone (peer disconnect, link loss, QP error, or close() completed). Emitted once. */
  disconnect: [reason: TransportError];
  /** Something went wrong that did not (yet) disconnect the channel, for logs and counters. */
  error: [err: Error];
}

/**
 * Minimal typed event emitter (no dependency on node:events typing of the day). Each event's
 * listeners are kept as an array replaced, never changed, by on() and off(): an emit() calls the
 * listeners there were when it began (a listener added meanwhile is not called, one removed
 * meanwhile still is) without copying them per event.
 */
export class Emitter<E extends { [K in keyof E]: unknown[] }> {
  // eslint-disable-next-line @typescript-eslint/no-unsafe-function-type
  private readonly handlers = new Map<keyof E, readonly Function[]>();
  on<K extends keyof E>(ev: K, fn: (...args: E[K]) => void): this {
    const list = this.handlers.get(ev);
    if (!list) this.handlers.set(ev, [fn]);
    else if (!list.includes(fn)) this.handlers.set(ev, [...list, fn]);
    return this;
  }
  off<K extends keyof E>(ev: K, fn: (...args: E[K]) => void): this {
    const list = this.handlers.get(ev);
    const i = list ? list.indexOf(fn) : -1;
    if (i >= 0) this.handlers.set(ev, [...list!.slice(0, i), ...list!.slice(i + 1)]);
    return this;
  }
  /** Calls every listener; a throwing listener is reported on 'error' (or rethrown if it is the error listener). */
  protected emit<K extends keyof E>(ev: K, ...args: E[K]): void {
    const list = this.handlers.get(ev);
    if (!list) return;
    for (let i = 0; i < list.length; i++) {
      try {
        (list[i] as (...a: E[K]) => void)(...args);
      } catch (err) {
        if (ev === 'error') throw err;
        this.emit('error' as K, ...([err instanceof Error ? err : new Error(String(err))] as unknown as E[K]));
      }
    }
  }
}

/** connect()'s deadlines. */
export interface ConnectOptions {
  /** The whole connect (address and route resolution, resources, the login's answer); default 5000 ms. */
  timeoutMs?: number;
  /**
   * Optional, at most timeoutMs: how long to wait for the target's answer once the login request is
   * sent. A login unanswered by then fails with a TransportError 'timeout' (no answer).
   */
  answerTimeoutMs?: number;
}

/** Initiator side of one channel. */
export interface ChannelTransport {
  readonly state: ChannelState;
  /** Which login request encoding this transport's connection manager carries. */
  readonly loginForm: LoginForm;
  /** Largest buffer registerBuffer() accepts (bigger transfers are split into indirect descriptors). */
  readonly maxRegionSize: number;
  /**
   * Connects, carrying loginReq as CM private data. Resolves with the target's reply bytes
   * (SRP_LOGIN_RSP: state becomes 'connected'; SRP_LOGIN_REJ: state becomes 'closed').
   * Rejects with TransportError ('timeout' when nothing answers within timeoutMs, 'disconnected'
   * when refused or lost).
   */
  connect(loginReq: Buffer, opts?: ConnectOptions): Promise<Buffer>;
  /** Posts one IU. The bytes are taken at call time. Throws TransportError when not connected. */
  send(iu: Buffer): void;
  /** Makes buf reachable by the peer's RDMA until deregistered. The caller keeps buf alive. */
  registerBuffer(buf: Buffer): MemoryRegion;
  /** After this returns, a peer access to the region fails (and kills the channel). */
  deregisterBuffer(mr: MemoryRegion): void;
  /** Graceful: IUs already sent are delivered first, then the channel disconnects ('closed'). */
  close(): void;
  /**
   * Optional: what the target saw of the last connect (the initiator port id actually sent, the
   * local address), known once connect() has resolved the local port; for login errors and status.
   */
  loginContext?(): LoginContext | undefined;
  /**
   * Optional: how long the target took to answer the login (from the request's send to its accept
   * or reject, in ms) once it has; undefined before an answer. Reconnect attempts size their wait
   * for an answer from it (src/fsm/login-deadline.ts).
   */
  readonly loginAnswerMs?: number | undefined;
  on<K extends keyof ChannelEvents>(ev: K, fn: (...args: ChannelEvents[K]) => void): this;
  off<K extends keyof ChannelEvents>(ev: K, fn: (...args: ChannelEvents[K]) => void): this;
}

/** A login as the target saw it. */
export interface LoginContext {
  /** the 16-byte initiator port id of the SRP_LOGIN_REQ sent (undefined if not known) */
  initiatorPortId: Buffer | undefined;
  /** local (source) address of the connection, e.g. "192.0.2.1" */
  source: string | undefined;
  /** the target's address, e.g. "192.0.2.2:5000" */
  destination?: string;
  /** local RDMA device and port */
  device?: string;
  port?: number;
}

/** What the target side answers to a connect request. */
export type ConnectAnswer = { accept: Buffer } | { reject: Buffer };

/** Target side of one channel: the SRP target's view (RDMA operations are the target's). */
export interface TargetChannelTransport {
  readonly state: ChannelState;
  send(iu: Buffer): void;
  /** RDMA READ of initiator memory (data-out). Rejects with TransportError on access error or loss. */
  rdmaRead(va: bigint, rkey: number, length: number): Promise<Buffer>;
  /** RDMA WRITE into initiator memory (data-in); ordered before any later send() on this channel. */
  rdmaWrite(va: bigint, rkey: number, data: Buffer): Promise<void>;
  /**
   * Optional: an RDMA WRITE whose completion the caller does not wait for (data-in followed by the
   * SRP_RSP, as ib_srpt chains them): ordered like rdmaWrite(), `data` read no later than the
   * next send() is delivered; onError hears of a failure where rdmaWrite() would reject.
   */
  postRdmaWrite?(va: bigint, rkey: number, data: Buffer, onError: (err: TransportError) => void): void;
  close(): void;
  on<K extends keyof ChannelEvents>(ev: K, fn: (...args: ChannelEvents[K]) => void): this;
  off<K extends keyof ChannelEvents>(ev: K, fn: (...args: ChannelEvents[K]) => void): this;
}
