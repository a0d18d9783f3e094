/**
 * One NBD client connection: the handshake and then the transmission
 * phase, or the transmission phase alone (what the kernel NBD driver speaks
 * on a socketpair after netlink CONNECT).
 *
 * The work is shared with three helpers, split the way nbdkit's server
 * splits it: Handshake (handshake.ts) does the option haggling,
 * RequestFramer (request-framer.ts) turns the transmission phase's bytes
 * into requests and WRITE payloads, ReplyWriter (reply-writer.ts)
 * assembles and sends replies. The connection keeps the lifecycle, flow
 * control, and validate() and dispatch(): each request is checked against
 * the export, run on the backend and, while it is in flight, held in one
 * reused InFlight record. Requests run concurrently and complete out of
 * order; a small READ that the backend completes synchronously is read
 * straight into the reply slab.
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
import { type Backend, type MaybePromise, errorCode, transmissionFlags } from './backend.js';
import type { BufferPool } from './buffer-pool.js';
import { type NbdRequest, nbdErrno } from './codec.js';
import { type ExportRegistry, Handshake, type HandshakeOutcome, type NegotiatedExport } from './handshake.js';
import * as C from './nbd-constants.js';
import { InFlight, ReplyWriter } from './reply-writer.js';
import { RequestFramer } from './request-framer.js';
import type { InputSink } from './socket-input.js';

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

/** Size of the buffer reads land in while headers are parsed (onread mode). */
const STAGING_SIZE = 256 * 1024;
/** READs at least this long are sent from the backend's own memory when it offers it (readView). */
const READ_VIEW_MIN = 64 * 1024;
/** READs up to this length are read straight into the reply slab (see readInline). */
const SLAB_READ_MAX = 16 * 1024;

const NBD_CMD_FLAGS_KNOWN =
  C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_DF | C.NBD_CMD_FLAG_REQ_ONE | C.NBD_CMD_FLAG_FAST_ZERO;

/** A validation failure: the errno name to answer with and the reason logged for it. */
interface Refusal {
  code: 'EINVAL' | 'EPERM' | 'ENOSPC';
  reason: string;
}

export class NbdConnection implements InputSink {
  readonly stats: ConnectionStats = { requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
  /** Resolves once the socket is closed and every request has completed. */
  readonly closed: Promise<void>;

  /** The option haggling while it lasts; undefined in the transmission phase. */
  private handshake: Handshake | undefined;
  private readonly framer = new RequestFramer();
  private readonly writer: ReplyWriter;
  private backend: Backend | undefined;
  private exportName = '';
  private transmissionFlags = 0;

  /** The WRITE whose payload is being received. */
  private pendingWrite: InFlight | undefined;
  /** Records of finished requests, reused by the next ones. */
  private readonly spare: InFlight[] = [];
  private inFlight = 0;
  private inFlightBytes = 0;
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  /** Whether small READs go into the reply slab; off once the backend has answered one asynchronously. */
  private inlineReads = true;

  /** Input is no longer parsed (stopReading); only moves from false to true. */
  private stopped = false;
  private paused = false;
  /** Input received but not parsed because the connection paused itself (see onInput). */
  private backlog: Buffer | undefined;
  private draining = false;
  private socketClosed = false;
  private finishing = false;
  private resolveClosed!: () => void;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private readonly logged = new Map<string, number>();

  private readonly socket: Socket;
  /** Where reads land unless the framer has a payload to read into (onread mode). */
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
    const socket = typeof source === 'function' ? source(this) : source;
    this.socket = socket;
    this.writer = new ReplyWriter(socket, {
      pool: opts.pool,
      sendv: opts.sendv,
      maxQueuedBytes: opts.maxQueuedReplyBytes ?? 64 * 1024 * 1024,
      onFull: () => this.pause(),
    });
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
      this.handshake = new Handshake(registry!, opts.logger, (buf) => this.writer.send(buf, false));
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
    this.writer.startBatch();
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
      this.writer.endBatch();
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
    this.writer.structured = negotiated.structuredReplies;
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
      const rec = this.record(r);
      const target = this.backend!.writeTarget?.(r.offset, r.length);
      rec.payloadPooled = target === undefined;
      rec.payload = target ?? this.opts.pool.acquire(r.length);
      this.pendingWrite = rec;
      this.framer.receivePayload(rec.payload);
      return;
    }
    if (refusal) return this.refuse(r, refusal);
    if (r.type === C.NBD_CMD_READ && r.length <= SLAB_READ_MAX && this.inlineReads) return this.readInline(r);
    this.dispatch(this.record(r));
  }

  private onPayload(): void {
    const rec = this.pendingWrite!;
    this.pendingWrite = undefined;
    this.dispatch(rec);
  }

  /**
   * Checks a request against the export and the protocol; returns why it is
   * refused, or undefined. Pure: no I/O, no state change (nbdkit's validate_request).
   */
  private validate(r: NbdRequest): Refusal | undefined {
    const b = this.backend!;
    const name = C.nameOfNbdCmd(r.type);
    if ((r.flags & ~NBD_CMD_FLAGS_KNOWN) !== 0) {
      return { code: 'EINVAL', reason: `${name}: unknown flags 0x${r.flags.toString(16)}` };
    }
    if (r.flags & C.NBD_CMD_FLAG_NO_HOLE && r.type !== C.NBD_CMD_WRITE_ZEROES) {
      return { code: 'EINVAL', reason: `${name}: NO_HOLE is only valid on NBD_CMD_WRITE_ZEROES` };
    }
    // DF, REQ_ONE and FAST_ZERO belong to features this server does not advertise.
    if (r.flags & (C.NBD_CMD_FLAG_DF | C.NBD_CMD_FLAG_REQ_ONE | C.NBD_CMD_FLAG_FAST_ZERO)) {
      return { code: 'EINVAL', reason: `${name}: flag 0x${r.flags.toString(16)} not negotiated` };
    }
    if (r.flags & C.NBD_CMD_FLAG_FUA && !(this.transmissionFlags & C.NBD_FLAG_SEND_FUA)) {
      return { code: 'EINVAL', reason: `${name}: FUA not negotiated` };
    }
    switch (r.type) {
      case C.NBD_CMD_READ:
      case C.NBD_CMD_WRITE:
        if (r.length > b.blockSize.maximum) {
          const max = b.blockSize.maximum;
          return { code: 'EINVAL', reason: `${name}: length ${r.length} exceeds the maximum ${max}` };
        }
        break;
      case C.NBD_CMD_FLUSH:
        if (!b.canFlush) return { code: 'EINVAL', reason: `${name}: not supported by this export` };
        if (r.offset !== 0 || r.length !== 0) {
          return { code: 'EINVAL', reason: `${name}: offset and length must be 0` };
        }
        return undefined;
      case C.NBD_CMD_TRIM:
        if (!b.canTrim) return { code: 'EINVAL', reason: `${name}: not supported by this export` };
        break;
      case C.NBD_CMD_WRITE_ZEROES:
        if (!b.canWriteZeroes) return { code: 'EINVAL', reason: `${name}: not supported by this export` };
        break;
      default:
        return { code: 'EINVAL', reason: `unknown command ${name}` };
    }
    if (r.type !== C.NBD_CMD_READ && b.readOnly) return { code: 'EPERM', reason: `${name}: export is read-only` };
    if (r.length === 0) return { code: 'EINVAL', reason: `${name}: zero length` };
    if (r.offset + r.length > b.size) {
      const code = r.type === C.NBD_CMD_WRITE || r.type === C.NBD_CMD_WRITE_ZEROES ? 'ENOSPC' : 'EINVAL';
      return { code, reason: `${name}: offset ${r.offset} + length ${r.length} is beyond the export size ${b.size}` };
    }
    const min = b.blockSize.minimum;
    if (r.offset % min !== 0 || r.length % min !== 0) {
      return { code: 'EINVAL', reason: `${name}: offset ${r.offset} or length ${r.length} not aligned to ${min}` };
    }
    return undefined;
  }

  private refuse(r: NbdRequest, refusal: Refusal): void {
    this.stats.errors++;
    const errno = nbdErrno(refusal.code, r.flags);
    this.logOnce(`refuse-${r.type}-${errno}`, refusal.reason);
    this.writer.replyError(r, errno, refusal.reason);
  }

  /** A record for a request about to be dispatched, with the request's fields. */
  private record(r: NbdRequest): InFlight {
    let rec = this.spare.pop();
    if (!rec) {
      const fresh = new InFlight();
      fresh.onResolve = () => this.complete(fresh, undefined);
      fresh.onReject = (err: unknown) => this.complete(fresh, err ?? new Error('backend failed'));
      rec = fresh;
    }
    return rec.load(r);
  }

  /** Runs a validated request against the backend and answers it when it completes. */
  private dispatch(rec: InFlight): void {
    const b = this.backend!;
    const fua = (rec.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    let result: MaybePromise = undefined;
    rec.bytes = rec.type === C.NBD_CMD_READ || rec.type === C.NBD_CMD_WRITE ? rec.length : 0;
    this.begin(rec.bytes);
    try {
      switch (rec.type) {
        case C.NBD_CMD_READ: {
          const dataOffset = this.writer.readHeaderSize();
          rec.view = rec.length >= READ_VIEW_MIN ? b.readView?.(rec.offset, rec.length) : undefined;
          if (!rec.view) {
            rec.reply = this.opts.pool.acquire(dataOffset + rec.length);
            result = b.read(rec.offset, rec.reply.subarray(dataOffset));
          }
          break;
        }
        case C.NBD_CMD_WRITE:
          result = b.write(rec.offset, rec.payload!, fua);
          break;
        case C.NBD_CMD_FLUSH:
          result = b.flush();
          break;
        case C.NBD_CMD_TRIM:
          result = b.trim(rec.offset, rec.length, fua);
          break;
        case C.NBD_CMD_WRITE_ZEROES:
          result = b.writeZeroes(rec.offset, rec.length, fua, (rec.flags & C.NBD_CMD_FLAG_NO_HOLE) !== 0);
          break;
      }
    } catch (err) {
      result = Promise.reject(err);
    }
    if (isPromise(result)) result.then(rec.onResolve, rec.onReject);
    else this.complete(rec, undefined);
  }

  /** Counts a request in flight; over a limit, the connection stops reading. */
  private begin(bytes: number): void {
    this.inFlight++;
    this.inFlightBytes += bytes;
    if (this.inFlight >= this.maxInFlight || this.inFlightBytes >= this.maxInFlightBytes) this.pause();
  }

  /** Accounts for a finished request and answers it: with its data, or with the backend's error (`err`). */
  private complete(rec: InFlight, err: unknown): void {
    this.inFlight--;
    this.inFlightBytes -= rec.bytes;
    if (rec.payload && rec.payloadPooled) this.opts.pool.release(rec.payload);
    if (err === undefined) {
      if (rec.type === C.NBD_CMD_READ) this.stats.bytesRead += rec.length;
      else if (rec.type === C.NBD_CMD_WRITE) this.stats.bytesWritten += rec.length;
      this.writer.replyOk(rec);
    } else {
      if (rec.reply) this.opts.pool.release(rec.reply);
      this.backendFailed(rec, err);
    }
    rec.clear();
    this.spare.push(rec);
    this.afterCompletion();
  }

  /**
   * A small READ read by the backend straight into the reply slab, behind
   * its header: nothing is allocated and no completion is queued. Should the
   * backend answer later (a promise), the bytes it will fill stay its own:
   * the writer moves on to a fresh slab, and later READs take the ordinary
   * path through a buffer of their own.
   */
  private readInline(r: NbdRequest): void {
    const dst = this.writer.reserveInline(r.length);
    let result: MaybePromise;
    try {
      result = this.backend!.read(r.offset, dst);
    } catch (err) {
      this.writer.cancelInline();
      this.backendFailed(r, err);
      return;
    }
    if (!isPromise(result)) {
      this.writer.commitInline(r);
      this.stats.bytesRead += r.length;
      return;
    }
    const rec = this.record(r);
    // Not from the pool: the pool's release() leaves it to the GC.
    rec.reply = this.writer.detachInline();
    rec.bytes = r.length;
    this.inlineReads = false;
    this.begin(r.length);
    result.then(rec.onResolve, rec.onReject);
  }

  private backendFailed(r: NbdRequest | InFlight, err: unknown): void {
    this.stats.errors++;
    const errno = nbdErrno(errorCode(err), r.flags);
    this.logOnce(`backend-${r.type}-${errno}`, `${C.nameOfNbdCmd(r.type)} at ${r.offset} failed`, err);
    this.writer.replyError(r, errno, err instanceof Error ? err.message : String(err));
  }

  /* --------------------------------------------------------- flow control */

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
      this.writer.hasRoom()
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
    this.dropPendingWrite();
    this.socket.pause();
    if (this.inFlight === 0) this.finish();
  }

  /** An unfinished WRITE payload may be the socket's current read buffer: left to the GC, never pooled. */
  private dropPendingWrite(): void {
    this.framer.abandon();
    const rec = this.pendingWrite;
    if (!rec) return;
    this.pendingWrite = undefined;
    rec.clear();
    this.spare.push(rec);
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
    this.writer.flush();
    // end() flushes queued replies first. Input is read (and ignored) until the peer's EOF,
    // so the close is orderly; a peer that never closes is cut off after a grace period.
    this.socket.end();
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), 10_000).unref();
  }

  private onSocketClose(): void {
    if (this.socketClosed) return;
    this.socketClosed = true;
    this.writer.socketClosed = true;
    this.draining = true;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (!this.stopped) {
      this.noteTruncation();
      this.stopped = true;
      this.dropPendingWrite();
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

function isPromise(x: MaybePromise): x is Promise<void> {
  return x !== undefined && typeof (x as Promise<void>).then === 'function';
}
