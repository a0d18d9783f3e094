/**
 * One NBD client connection: the fixed-newstyle handshake (Handshake,
 * handshake.ts) and then the transmission phase, or the transmission phase
 * alone (what the kernel NBD driver speaks on a socketpair after netlink
 * CONNECT).
 *
 * Input is parsed as it arrives, without concatenating chunks; in the
 * transmission phase RequestFramer (request-framer.ts) turns it into
 * requests and WRITE payloads, each payload copied once, straight into its
 * destination (the backend's writeTarget() or a pooled buffer). Requests
 * run concurrently and complete out of order.
 * Replies are queued and leave together once the input at hand has been
 * parsed (or at the end of the tick, for completions of asynchronous
 * backends); small ones are assembled in one slab, and a small READ that
 * the backend completes synchronously is read straight into it.
 *
 * Errors the protocol can answer (bad range, alignment, flags, unknown
 * command, backend failure) are answered and logged once per kind; errors
 * that break framing (wrong magic, oversized option) end the connection
 * cleanly after in-flight requests have been answered. Nothing a client
 * sends can throw out of this class.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { NativeBinding } from '../native/native.js';
import { type Backend, toNbdErrno, transmissionFlags } from './backend.js';
import { BufferPool } from './buffer-pool.js';
import type { InputSink } from './socket-input.js';
import {
  type NbdRequest,
  encodeStructuredError,
  writeSimpleReply,
  writeStructuredReply,
  writeU64,
} from './codec.js';
import { type ExportRegistry, Handshake, type HandshakeOutcome, type NegotiatedExport } from './handshake.js';
import * as C from './nbd-constants.js';
import { RequestFramer } from './request-framer.js';

export interface ConnectionOptions {
  logger: Logger;
  pool: BufferPool;
  /** Most requests in flight before the connection stops reading (default 256). */
  maxInFlight?: number;
  /** Reply bytes queued in the socket before the connection stops reading (default 64 MiB). */
  maxQueuedReplyBytes?: number;
  /** READ and WRITE bytes in flight before the connection stops reading (default 64 MiB). */
  maxInFlightBytes?: number;
  /** A client still negotiating after this long is disconnected (default 30 s; 0 = never). */
  handshakeTimeoutMs?: number;
  /**
   * The addon's gathered send (NativeBinding.sendv): when given, replies are sent with one
   * system call on the socket's fd while nothing is queued in the socket, instead of through
   * the socket's stream machinery.
   */
  sendv?: NativeBinding['sendv'];
}

export interface ConnectionStats {
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
}

/**
 * A connection's byte source: a socket delivering 'data' events, or a
 * function that builds a socket reading through the connection (InputSink).
 */
export type SocketSource = Socket | ((sink: InputSink) => Socket);

const STAGING_SIZE = 256 * 1024;
/** READs at least this long are sent from the backend's own memory when it offers it (readView). */
const READ_VIEW_MIN = 64 * 1024;
/** Size of the slab small replies are assembled in (a larger reply gets a slab of its own size). */
const SLAB_SIZE = 256 * 1024;
/** READs up to this length are read straight into the reply slab (see readInline). */
const SLAB_READ_MAX = 16 * 1024;
/** Queued reply bytes at which replies are written without waiting for the end of the input. */
const FLUSH_BYTES = 1024 * 1024;

const NBD_CMD_FLAGS_KNOWN =
  C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_DF | C.NBD_CMD_FLAG_REQ_ONE | C.NBD_CMD_FLAG_FAST_ZERO;

/** A validation failure: the NBD errno and the reason logged for it. */
interface Refusal {
  errno: number;
  reason: string;
}

export class NbdConnection implements InputSink {
  readonly stats: ConnectionStats = { requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
  /** Resolves once the socket is closed and every request has completed. */
  readonly closed: Promise<void>;

  /** The option haggling while it lasts; undefined in the transmission phase. */
  private handshake: Handshake | undefined;
  private backend: Backend | undefined;
  private exportName = '';
  private transmissionFlags = 0;
  private structuredReplies = false;
  private readonly framer = new RequestFramer();
  /** The WRITE whose payload the framer is receiving, the payload and whether it came from the pool. */
  private readonly payloadReq: NbdRequest = { magic: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
  private payload: Buffer | undefined;
  private payloadPooled = false;

  private inFlight = 0;
  /** Input is no longer parsed (stopReading); only moves from false to true. */
  private stopped = false;
  private paused = false;
  /** Replies waiting to be written, in wire order; flushed by flush(). */
  private out: Buffer[] = [];
  /** Pooled buffers among `out`, released once written. */
  private outPooled: Buffer[] = [];
  /** Bytes in `out` and the slab not yet written. */
  private outBytes = 0;
  /** Small replies are assembled here; [slabStart, slabPos) is not yet in `out`. */
  private slab: Buffer = Buffer.allocUnsafe(SLAB_SIZE);
  private slabStart = 0;
  private slabPos = 0;
  /** True while onInput runs: replies are flushed when it returns, not by a nextTick. */
  private parsing = false;
  private flushScheduled = false;
  /** Whether small READs go into the slab; off once the backend has answered one asynchronously. */
  private inlineReads = true;
  private draining = false;
  private socketClosed = false;
  private finishing = false;
  private resolveClosed!: () => void;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private readonly logged = new Map<string, number>();
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  private inFlightBytes = 0;
  /** Input received but not parsed because the connection paused itself (see onInput). */
  private backlog: Buffer | undefined;
  private readonly maxQueuedReplyBytes: number;

  private readonly socket: Socket;
  /** The socket's fd when replies may bypass its stream (opts.sendv), else -1. */
  private readonly fd: number;
  /** Where reads land while headers are parsed (onread mode); payloads may be read elsewhere. */
  private readonly staging = Buffer.allocUnsafe(STAGING_SIZE);

  private constructor(
    source: SocketSource,
    registry: ExportRegistry | undefined,
    private readonly opts: ConnectionOptions,
    fixedExport: NegotiatedExport | undefined,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.maxInFlight = opts.maxInFlight ?? 256;
    this.maxInFlightBytes = opts.maxInFlightBytes ?? 64 * 1024 * 1024;
    this.maxQueuedReplyBytes = opts.maxQueuedReplyBytes ?? 64 * 1024 * 1024;
    const socket = typeof source === 'function' ? source(this) : source;
    this.socket = socket;
    this.fd = opts.sendv ? socketFd(socket) : -1;
    if (typeof source !== 'function') socket.on('data', (chunk: Buffer) => this.onInput(chunk));
    socket.setNoDelay?.(true);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // A peer that hangs up while replies are queued is routine, not a problem worth a warning.
      if (err.code === 'EPIPE' || err.code === 'ECONNRESET') opts.logger.debug({ err }, 'peer closed the connection');
      else this.logOnce('socket', 'socket error', err);
    });
    socket.on('end', () => {
      this.noteTruncation();
      this.stopReading();
    });
    socket.on('close', () => this.onSocketClose());
    socket.on('drain', () => this.maybeResume());
    if (fixedExport) {
      this.enterTransmission(fixedExport);
    } else {
      this.handshake = new Handshake(registry!, opts.logger, (buf) => this.send(buf, false));
      this.socket.write(this.handshake.greeting());
      const ms = opts.handshakeTimeoutMs ?? 30_000;
      if (ms > 0) {
        this.handshakeTimer = setTimeout(() => this.fatal('handshake-timeout', `no export chosen within ${ms} ms`), ms);
        this.handshakeTimer.unref();
      }
    }
    socket.resume();
  }

  /** Serves a socket from the first byte: greeting, option haggling, then transmission. */
  static handshake(socket: SocketSource, registry: ExportRegistry, opts: ConnectionOptions): NbdConnection {
    return new NbdConnection(socket, registry, opts, undefined);
  }

  /** Serves the transmission phase only, on a socket whose handshake happened elsewhere (kernel NBD). */
  static transmission(socket: SocketSource, name: string, backend: Backend, opts: ConnectionOptions): NbdConnection {
    const negotiated = { name, backend, transmissionFlags: transmissionFlags(backend), structuredReplies: false };
    return new NbdConnection(socket, undefined, opts, negotiated);
  }

  /** The export this connection is serving, once chosen. */
  get export(): string | undefined {
    return this.backend ? this.exportName : undefined;
  }

  /** Ends the connection: stops reading, lets in-flight requests answer, then closes. */
  close(): void {
    this.stopReading();
  }

  /**
   * Ends the connection at once: the socket is destroyed and replies still to come are dropped
   * (`closed` still waits for the backend to finish them). For a peer that must not wait for
   * us, such as the kernel blocked sending on a device being disconnected.
   */
  abort(): void {
    this.stopReading();
    this.socket.destroy();
  }

  /* ---------------------------------------------------------------- input */

  /** InputSink: the next read lands in the WRITE payload itself when much of it is still to come. */
  nextReadBuffer(): Buffer {
    return this.framer.directTarget() ?? this.staging;
  }

  /** InputSink: bytes from the socket, consumed synchronously. */
  onInput(chunk: Buffer): void {
    let pos = 0;
    this.parsing = true;
    try {
      while (pos < chunk.length && !this.stopped) {
        if (this.paused) {
          // Over a limit: the rest waits (reading is stopped, so the bytes stay where they are)
          // until requests complete; a hostile burst of headers cannot make us allocate more.
          this.backlog = chunk.subarray(pos);
          return;
        }
        const hs = this.handshake;
        if (hs) {
          pos = hs.consume(chunk, pos);
          if (hs.outcome) this.onHandshakeOutcome(hs.outcome);
          continue;
        }
        pos = this.framer.consume(chunk, pos);
        const frame = this.framer.completed;
        if (frame === 'request') this.onRequest(this.framer.request);
        else if (frame === 'payload') this.onPayload();
      }
    } catch (err) {
      // A bug, never a client's doing: stop this connection, keep the server.
      this.fatal('internal', 'internal error while parsing input', err);
    } finally {
      this.parsing = false;
      this.flush();
    }
  }

  private onHandshakeOutcome(outcome: HandshakeOutcome): void {
    switch (outcome.kind) {
      case 'export':
        return this.enterTransmission(outcome.negotiated);
      case 'abort':
        return this.stopReading();
      case 'fatal':
        return this.fatal(outcome.problem, outcome.message);
    }
  }

  private enterTransmission(negotiated: NegotiatedExport): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshake = undefined;
    this.exportName = negotiated.name;
    this.backend = negotiated.backend;
    this.transmissionFlags = negotiated.transmissionFlags;
    this.structuredReplies = negotiated.structuredReplies;
    this.opts.logger.debug({ export: negotiated.name, structured: negotiated.structuredReplies }, 'transmission phase');
  }

  /* --------------------------------------------------------- transmission */

  private onRequest(r: NbdRequest): void {
    if (r.magic !== C.NBD_REQUEST_MAGIC) {
      return this.fatal('request-magic', `wrong request magic 0x${r.magic.toString(16)}`);
    }
    this.stats.requests++;
    if (r.type === C.NBD_CMD_DISC) return this.stopReading();
    const refusal = this.validate(r);
    if (r.type === C.NBD_CMD_WRITE) {
      if (refusal) {
        // The payload still follows: skip it so framing holds.
        this.refuse(r, refusal);
        this.framer.skipPayload(r.length);
        return;
      }
      const target = this.backend!.writeTarget?.(r.offset, r.length);
      this.payloadPooled = target === undefined;
      this.payload = target ?? this.opts.pool.acquire(r.length);
      Object.assign(this.payloadReq, r);
      this.framer.receivePayload(this.payload);
      return;
    }
    if (refusal) return this.refuse(r, refusal);
    if (r.type === C.NBD_CMD_READ && r.length <= SLAB_READ_MAX && this.inlineReads) return this.readInline(r);
    this.dispatch(r, undefined, false);
  }

  private onPayload(): void {
    const payload = this.payload!;
    this.payload = undefined;
    this.dispatch(this.payloadReq, payload, this.payloadPooled);
  }

  /**
   * Checks a request against the export and the protocol; returns why it is
   * refused, or undefined. Pure: no I/O, no state change (nbdkit's validate_request).
   */
  private validate(r: NbdRequest): Refusal | undefined {
    const b = this.backend!;
    const name = C.nameOfNbdCmd(r.type);
    if ((r.flags & ~NBD_CMD_FLAGS_KNOWN) !== 0) return { errno: C.NBD_EINVAL, reason: `${name}: unknown flags 0x${r.flags.toString(16)}` };
    if ((r.flags & C.NBD_CMD_FLAG_NO_HOLE) && r.type !== C.NBD_CMD_WRITE_ZEROES) {
      return { errno: C.NBD_EINVAL, reason: `${name}: NO_HOLE is only valid on NBD_CMD_WRITE_ZEROES` };
    }
    // DF, REQ_ONE and FAST_ZERO belong to features this server does not advertise.
    if (r.flags & (C.NBD_CMD_FLAG_DF | C.NBD_CMD_FLAG_REQ_ONE | C.NBD_CMD_FLAG_FAST_ZERO)) {
      return { errno: C.NBD_EINVAL, reason: `${name}: flag 0x${r.flags.toString(16)} not negotiated` };
    }
    if ((r.flags & C.NBD_CMD_FLAG_FUA) && !(this.transmissionFlags & C.NBD_FLAG_SEND_FUA)) {
      return { errno: C.NBD_EINVAL, reason: `${name}: FUA not negotiated` };
    }
    switch (r.type) {
      case C.NBD_CMD_READ:
      case C.NBD_CMD_WRITE:
        if (r.length > b.blockSize.maximum) {
          return { errno: C.NBD_EINVAL, reason: `${name}: length ${r.length} exceeds the maximum ${b.blockSize.maximum}` };
        }
        break;
      case C.NBD_CMD_FLUSH:
        if (!b.canFlush) return { errno: C.NBD_EINVAL, reason: `${name}: not supported by this export` };
        if (r.offset !== 0 || r.length !== 0) return { errno: C.NBD_EINVAL, reason: `${name}: offset and length must be 0` };
        return undefined;
      case C.NBD_CMD_TRIM:
        if (!b.canTrim) return { errno: C.NBD_EINVAL, reason: `${name}: not supported by this export` };
        break;
      case C.NBD_CMD_WRITE_ZEROES:
        if (!b.canWriteZeroes) return { errno: C.NBD_EINVAL, reason: `${name}: not supported by this export` };
        break;
      default:
        return { errno: C.NBD_EINVAL, reason: `unknown command ${name}` };
    }
    if (r.type !== C.NBD_CMD_READ && b.readOnly) return { errno: C.NBD_EPERM, reason: `${name}: export is read-only` };
    if (r.length === 0) return { errno: C.NBD_EINVAL, reason: `${name}: zero length` };
    if (r.offset + r.length > b.size) {
      const errno = r.type === C.NBD_CMD_WRITE || r.type === C.NBD_CMD_WRITE_ZEROES ? C.NBD_ENOSPC : C.NBD_EINVAL;
      return { errno, reason: `${name}: offset ${r.offset} + length ${r.length} is beyond the export size ${b.size}` };
    }
    const min = b.blockSize.minimum;
    if (r.offset % min !== 0 || r.length % min !== 0) {
      return { errno: C.NBD_EINVAL, reason: `${name}: offset ${r.offset} or length ${r.length} not aligned to ${min}` };
    }
    return undefined;
  }

  private refuse(r: NbdRequest, refusal: Refusal): void {
    this.stats.errors++;
    this.logOnce(`refuse-${r.type}-${refusal.errno}`, refusal.reason);
    this.replyError(r.type, r.cookieHi, r.cookieLo, refusal.errno, refusal.reason);
  }

  /**
   * Runs a validated request against the backend and answers it when it
   * completes. `r` may be a reused header object: it is copied only when the
   * backend answers later.
   */
  private dispatch(r: NbdRequest, payload: Buffer | undefined, pooled: boolean): void {
    const b = this.backend!;
    const fua = (r.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    let reply: Buffer | undefined;
    let view: Buffer | undefined;
    let result: void | Promise<void> = undefined;
    const bytes = r.type === C.NBD_CMD_READ || r.type === C.NBD_CMD_WRITE ? r.length : 0;
    this.begin(bytes);
    try {
      switch (r.type) {
        case C.NBD_CMD_READ: {
          const dataOffset = this.readHeaderSize();
          view = r.length >= READ_VIEW_MIN ? b.readView?.(r.offset, r.length) : undefined;
          if (!view) {
            reply = this.opts.pool.acquire(dataOffset + r.length);
            result = b.read(r.offset, reply.subarray(dataOffset));
          }
          break;
        }
        case C.NBD_CMD_WRITE:
          result = b.write(r.offset, payload!, fua);
          break;
        case C.NBD_CMD_FLUSH:
          result = b.flush();
          break;
        case C.NBD_CMD_TRIM:
          result = b.trim(r.offset, r.length, fua);
          break;
        case C.NBD_CMD_WRITE_ZEROES:
          result = b.writeZeroes(r.offset, r.length, fua, (r.flags & C.NBD_CMD_FLAG_NO_HOLE) !== 0);
          break;
      }
    } catch (err) {
      result = Promise.reject(err);
    }
    if (isPromise(result)) this.completeLater(r, bytes, result, payload, pooled, reply, view);
    else this.complete(r, bytes, payload, pooled, reply, view, undefined);
  }

  /** Counts a request in flight; over a limit, the connection stops reading. */
  private begin(bytes: number): void {
    this.inFlight++;
    this.inFlightBytes += bytes;
    if (this.inFlight >= this.maxInFlight || this.inFlightBytes >= this.maxInFlightBytes) this.pause();
  }

  /** Completes a request when the backend's promise settles; `r` is copied (the caller may reuse it). */
  private completeLater(
    r: NbdRequest,
    bytes: number,
    result: Promise<void>,
    payload: Buffer | undefined,
    pooled: boolean,
    reply: Buffer | undefined,
    view: Buffer | undefined,
  ): void {
    const req = { ...r };
    result.then(
      () => this.complete(req, bytes, payload, pooled, reply, view, undefined),
      (err: unknown) => this.complete(req, bytes, payload, pooled, reply, view, err ?? new Error('backend failed')),
    );
  }

  /** Accounts for a finished request and answers it: with its data, or with the backend's error (`err`). */
  private complete(
    r: NbdRequest,
    bytes: number,
    payload: Buffer | undefined,
    pooled: boolean,
    reply: Buffer | undefined,
    view: Buffer | undefined,
    err: unknown,
  ): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    if (payload && pooled) this.opts.pool.release(payload);
    if (err === undefined) this.replyOk(r, reply, view);
    else {
      if (reply) this.opts.pool.release(reply);
      this.backendFailed(r, err);
    }
    this.afterCompletion();
  }

  /**
   * A small READ read by the backend straight into the reply slab, behind
   * its header: nothing is allocated and no completion is queued. Should the
   * backend answer later (a promise), the bytes it will fill stay its own:
   * the connection moves on to a fresh slab, and its later READs take the
   * ordinary path through a buffer of their own.
   */
  private readInline(r: NbdRequest): void {
    const header = this.readHeaderSize();
    const n = header + r.length;
    const at = this.reserve(n);
    const reply = this.slab.subarray(at, at + n);
    let result: void | Promise<void>;
    try {
      result = this.backend!.read(r.offset, reply.subarray(header));
    } catch (err) {
      this.unreserve(at, n);
      this.backendFailed(r, err);
      return;
    }
    if (!isPromise(result)) {
      this.writeReadHeader(reply, 0, r);
      this.stats.bytesRead += r.length;
      return;
    }
    this.unreserve(at, n);
    this.sealSlab();
    this.slab = Buffer.allocUnsafe(SLAB_SIZE);
    this.slabStart = this.slabPos = 0;
    this.inlineReads = false;
    this.begin(r.length);
    // Not from the pool: the pool's release() leaves it to the GC.
    this.completeLater(r, r.length, result, undefined, false, reply, undefined);
  }

  private backendFailed(r: NbdRequest, err: unknown): void {
    this.stats.errors++;
    const errno = toNbdErrno(err);
    this.logOnce(`backend-${r.type}-${errno}`, `${C.nameOfNbdCmd(r.type)} at ${r.offset} failed`, err);
    this.replyError(r.type, r.cookieHi, r.cookieLo, errno, err instanceof Error ? err.message : String(err));
  }

  /** Bytes in front of a READ's data: a simple reply, or a structured OFFSET_DATA chunk header and offset. */
  private readHeaderSize(): number {
    return this.structuredReplies ? C.NBD_STRUCTURED_REPLY_SIZE + 8 : C.NBD_SIMPLE_REPLY_SIZE;
  }

  private writeReadHeader(buf: Buffer, at: number, r: NbdRequest): void {
    if (this.structuredReplies) {
      writeStructuredReply(buf, at, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_OFFSET_DATA, r.cookieHi, r.cookieLo, 8 + r.length);
      writeU64(buf, at + C.NBD_STRUCTURED_REPLY_SIZE, r.offset);
    } else {
      writeSimpleReply(buf, at, 0, r.cookieHi, r.cookieLo);
    }
  }

  /** Answers a completed request; a READ's data is in `reply` after its header, or in `view`. */
  private replyOk(r: NbdRequest, reply: Buffer | undefined, view: Buffer | undefined): void {
    if (r.type === C.NBD_CMD_READ) {
      this.stats.bytesRead += r.length;
      if (view) {
        // The header goes in the slab; header and data leave in the same writev.
        const at = this.reserve(this.readHeaderSize());
        this.writeReadHeader(this.slab, at, r);
        this.send(view, false);
      } else {
        this.writeReadHeader(reply!, 0, r);
        this.send(reply!, true);
      }
      return;
    }
    if (r.type === C.NBD_CMD_WRITE) this.stats.bytesWritten += r.length;
    const at = this.reserve(C.NBD_SIMPLE_REPLY_SIZE);
    writeSimpleReply(this.slab, at, 0, r.cookieHi, r.cookieLo);
  }

  private replyError(type: number, cookieHi: number, cookieLo: number, errno: number, message: string): void {
    // With structured replies a READ must be answered by a chunk; other commands may use a simple reply.
    if (this.structuredReplies && type === C.NBD_CMD_READ) {
      this.send(encodeStructuredError(C.NBD_REPLY_FLAG_DONE, cookieHi, cookieLo, errno, message), false);
      return;
    }
    const at = this.reserve(C.NBD_SIMPLE_REPLY_SIZE);
    writeSimpleReply(this.slab, at, errno, cookieHi, cookieLo);
  }

  /* --------------------------------------------------------------- output */

  /** Queues a reply buffer; a pooled one goes back to the pool once written. */
  private send(buf: Buffer, pooled: boolean): void {
    this.sealSlab();
    this.out.push(buf);
    if (pooled) this.outPooled.push(buf);
    this.outBytes += buf.length;
    // Large replies gain nothing from waiting, and the flow control must see them.
    if (this.outBytes >= FLUSH_BYTES) this.flush();
    else this.scheduleFlush();
  }

  /**
   * Room for `n` reply bytes in the slab, queued behind every reply before;
   * returns where they go. It may move to a new slab: read `this.slab` after
   * calling it, never before.
   */
  private reserve(n: number): number {
    if (this.outBytes >= FLUSH_BYTES) this.flush();
    if (this.slabPos + n > this.slab.length) {
      this.sealSlab();
      // The slab's earlier bytes may still be queued here or in the socket: those stay with the old one.
      if (this.out.length > 0 || this.socket.writableLength > 0 || n > this.slab.length) {
        this.slab = Buffer.allocUnsafe(Math.max(SLAB_SIZE, n));
      }
      this.slabStart = this.slabPos = 0;
    }
    const at = this.slabPos;
    this.slabPos += n;
    this.outBytes += n;
    this.scheduleFlush();
    return at;
  }

  /** Gives back the last `n` reserved slab bytes, at `at`. */
  private unreserve(at: number, n: number): void {
    this.slabPos = at;
    this.outBytes -= n;
  }

  /** Moves the slab bytes written since the last seal into `out`, keeping wire order. */
  private sealSlab(): void {
    if (this.slabPos === this.slabStart) return;
    this.out.push(this.slab.subarray(this.slabStart, this.slabPos));
    this.slabStart = this.slabPos;
  }

  /** Replies from outside onInput (asynchronous completions) leave at the end of the tick. */
  private scheduleFlush(): void {
    if (this.parsing || this.flushScheduled) return;
    this.flushScheduled = true;
    process.nextTick(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Writes every queued reply: one write, or one writev when there are several buffers. */
  private flush(): void {
    this.sealSlab();
    const out = this.out;
    if (out.length === 0) return;
    const pooled = this.outPooled;
    this.out = [];
    this.outPooled = [];
    this.outBytes = 0;
    const release = (): void => {
      for (const buf of pooled) this.opts.pool.release(buf);
    };
    if (this.socketClosed || this.socket.destroyed) return release();
    let first = 0;
    if (this.fd >= 0 && this.socket.writableLength === 0) {
      try {
        first = this.sendDirect(out);
      } catch (err) {
        release();
        this.socket.destroy(err as Error);
        return;
      }
    }
    if (first === out.length) {
      release(); // all in the kernel
    } else {
      // The rest through the stream; pooled buffers go back once it has written them.
      const done = pooled.length === 0 ? undefined : release;
      if (out.length - first === 1) {
        this.socket.write(out[first]!, done);
      } else {
        this.socket.cork();
        for (let i = first; i < out.length - 1; i++) this.socket.write(out[i]!);
        this.socket.write(out[out.length - 1]!, done);
        this.socket.uncork();
      }
    }
    // Written through at once (the usual case): the slab can be filled again from the start.
    if (this.socket.writableLength === 0) this.slabStart = this.slabPos = 0;
    else if (this.socket.writableLength > this.maxQueuedReplyBytes) this.pause();
  }

  /**
   * Sends `out` straight on the fd until done or the socket buffer is full; returns the index
   * of the first buffer not wholly sent (`out[i]` is trimmed to its unsent part).
   */
  private sendDirect(out: Buffer[]): number {
    let i = 0;
    while (i < out.length) {
      let n = this.opts.sendv!(this.fd, out, i, out.length - i);
      if (n < 0) break;
      while (i < out.length && n >= out[i]!.length) n -= out[i++]!.length;
      if (n > 0) {
        out[i] = out[i]!.subarray(n);
        break;
      }
    }
    return i;
  }

  private pause(): void {
    if (this.paused || this.socketClosed) return;
    this.paused = true;
    this.socket.pause();
  }

  private maybeResume(): void {
    if (!this.paused || this.draining) return;
    if (
      this.inFlight < this.maxInFlight / 2 &&
      this.inFlightBytes < this.maxInFlightBytes / 2 &&
      this.socket.writableLength <= this.maxQueuedReplyBytes / 2
    ) {
      this.paused = false;
      const backlog = this.backlog;
      this.backlog = undefined;
      if (backlog) this.onInput(backlog); // may pause again
      if (!this.paused && !this.draining) this.socket.resume();
    }
  }

  private afterCompletion(): void {
    if (this.inFlight > 0) this.maybeResume();
    else if (this.socketClosed) this.resolveClosed();
    else if (this.draining) this.finish();
    else this.maybeResume();
  }

  /* ------------------------------------------------------------ lifecycle */

  /** Stops parsing input; closes once in-flight requests have been answered. Status only moves down. */
  private stopReading(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.draining = true;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    // An unfinished payload may be the socket's current read buffer: left to the GC, never pooled.
    this.payload = undefined;
    this.framer.abandon();
    this.socket.pause();
    if (this.inFlight === 0) this.finish();
  }

  /** An unrecoverable framing or protocol error: logged, then a clean disconnect. */
  private fatal(kind: string, message: string, err?: unknown): void {
    this.stats.errors++;
    this.logOnce(kind, `${message}; disconnecting`, err);
    this.stopReading();
  }

  private finish(): void {
    if (this.socketClosed || this.finishing) return;
    this.finishing = true;
    this.flush();
    // end() flushes queued replies first. Input is read (and ignored) until the peer's EOF,
    // so the close is orderly; a peer that never closes is cut off after a grace period.
    this.socket.end();
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), 10_000).unref();
  }

  private onSocketClose(): void {
    if (this.socketClosed) return;
    this.socketClosed = true;
    this.draining = true;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (!this.stopped) {
      this.noteTruncation();
      this.stopped = true;
      this.payload = undefined;
      this.framer.abandon();
    }
    for (const [kind, count] of this.logged) {
      if (count > 1) this.opts.logger.warn({ kind, count }, 'repeated connection errors');
    }
    if (this.inFlight === 0) this.resolveClosed();
  }

  private noteTruncation(): void {
    const partial = this.handshake ? (this.handshake.midFrame ? 'frame' : undefined) : this.framer.partial;
    if (partial) {
      const what = partial === 'payload' ? 'WRITE payload' : 'frame';
      this.logOnce('truncated', `client vanished in the middle of a ${what}`);
    }
  }

  /** Logs the first occurrence of each kind of problem on this connection; later ones are counted. */
  private logOnce(kind: string, message: string, err?: unknown): void {
    const n = (this.logged.get(kind) ?? 0) + 1;
    this.logged.set(kind, n);
    if (n === 1) this.opts.logger.warn({ kind, export: this.export, err }, message);
  }
}

/** The fd under a net.Socket (a Pipe or TCP handle), or -1. */
function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

function isPromise(x: void | Promise<void>): x is Promise<void> {
  return x !== undefined && typeof (x as Promise<void>).then === 'function';
}
