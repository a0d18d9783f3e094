/**
 * The reply side of an NBD connection: replies are assembled and written
 * here, with back-pressure on the connection that produces them.
 *
 * Reply headers and READs up to 16 KiB go in a per-connection slab, reused
 * once the kernel has taken everything; larger READs and handshake replies
 * are queued as buffers of their own. Everything queued leaves together
 * once the input at hand has been parsed (between startBatch() and
 * endBatch()), or at the end of the tick for replies produced outside it
 * (completions of asynchronous backends): one `sendv` system call straight
 * on the socket's fd while nothing waits in the socket's stream, else
 * through the stream. What the socket does not take goes to the stream,
 * and replies keep going there until it is empty, so the wire order holds.
 *
 * Back-pressure: when more than `maxQueuedBytes` wait in the stream the
 * writer calls `onFull()` (the connection stops reading); hasRoom() says
 * when it may read again.
 */
import type { Socket } from 'node:net';
import type { NativeBinding } from '../native/native.js';
import type { BufferPool } from './buffer-pool.js';
import { type NbdRequest, encodeStructuredError, writeSimpleReply, writeStructuredReply, writeU64 } from './codec.js';
import * as C from './nbd-constants.js';

/** Size of the slab small replies are assembled in (a larger reply gets a slab of its own size). */
const SLAB_SIZE = 256 * 1024;
/** Queued reply bytes at which replies are written without waiting for the end of the input. */
const FLUSH_BYTES = 1024 * 1024;

/**
 * One request from dispatch to its reply: the request's fields, the
 * buffers it holds and the handlers its backend's promise settles. Records
 * are reused (the connection keeps the spare ones): keeping a request in
 * flight copies no header object and creates no closure.
 */
export class InFlight {
  type = 0;
  flags = 0;
  cookieHi = 0;
  cookieLo = 0;
  offset = 0;
  length = 0;
  /** READ and WRITE bytes counted against the in-flight byte limit; 0 for other commands. */
  bytes = 0;
  /** WRITE: the payload, and whether it came from the pool (else from the backend's writeTarget). */
  payload: Buffer | undefined = undefined;
  payloadPooled = false;
  /** READ: room for the reply header followed by the data, answered from this buffer. */
  reply: Buffer | undefined = undefined;
  /** READ: the backend's own view of the data (readView), sent behind a header in the slab. */
  view: Buffer | undefined = undefined;
  /** Handlers for the backend's promise; bound to this record once, when it is created. */
  onResolve: () => void = noop;
  onReject: (err: unknown) => void = noop;

  /** Takes the request's fields; the buffers are set by whoever dispatches it. */
  load(r: NbdRequest): this {
    this.type = r.type;
    this.flags = r.flags;
    this.cookieHi = r.cookieHi;
    this.cookieLo = r.cookieLo;
    this.offset = r.offset;
    this.length = r.length;
    return this;
  }

  /** Drops the buffers, so a spare record holds no memory. */
  clear(): void {
    this.payload = undefined;
    this.reply = undefined;
    this.view = undefined;
  }
}

function noop(): void {}

/** What a reply header needs of its request. */
type ReplyTo = Pick<NbdRequest, 'type' | 'cookieHi' | 'cookieLo' | 'offset' | 'length'>;

export interface ReplyWriterOptions {
  pool: BufferPool;
  /** The addon's gathered send; without it every reply goes through the socket's stream. */
  sendv: NativeBinding['sendv'] | undefined;
  /** Reply bytes queued in the socket's stream above which onFull() is called. */
  maxQueuedBytes: number;
  /** Called when the stream holds more than maxQueuedBytes: the producer should stop. */
  onFull: () => void;
}

export class ReplyWriter {
  /** Whether replies are structured (NBD_OPT_STRUCTURED_REPLY negotiated). */
  structured = false;
  /** Set once the socket has closed: queued replies are dropped. */
  socketClosed = false;

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
  /** The slab bytes reserveInline() set aside: [inlineAt, inlineAt + inlineLen). */
  private inlineAt = 0;
  private inlineLen = 0;
  /** True between startBatch() and endBatch(): replies leave at endBatch(), not by a nextTick. */
  private batching = false;
  private flushScheduled = false;
  private readonly flushTick = (): void => {
    this.flushScheduled = false;
    this.flush();
  };
  /** The socket's fd when replies may bypass its stream (opts.sendv), else -1. */
  private readonly fd: number;

  constructor(
    private readonly socket: Socket,
    private readonly opts: ReplyWriterOptions,
  ) {
    this.fd = opts.sendv ? socketFd(socket) : -1;
  }

  /** Replies produced from here to endBatch() leave together at endBatch(). */
  startBatch(): void {
    this.batching = true;
  }

  endBatch(): void {
    this.batching = false;
    this.flush();
  }

  /** Whether the stream has drained to half the limit, so the producer may go on. */
  hasRoom(): boolean {
    return this.socket.writableLength <= this.opts.maxQueuedBytes / 2;
  }

  /** Bytes in front of a READ's data: a simple reply, or a structured OFFSET_DATA chunk header and offset. */
  readHeaderSize(): number {
    return this.structured ? C.NBD_STRUCTURED_REPLY_SIZE + 8 : C.NBD_SIMPLE_REPLY_SIZE;
  }

  /** Answers a request that succeeded; a READ's data is in `rec.reply` after its header, or in `rec.view`. */
  replyOk(rec: InFlight): void {
    if (rec.type === C.NBD_CMD_READ) {
      if (rec.view) {
        // The header goes in the slab; header and data leave in the same writev.
        const at = this.reserve(this.readHeaderSize());
        this.writeReadHeader(this.slab, at, rec);
        this.send(rec.view, false);
      } else {
        this.writeReadHeader(rec.reply!, 0, rec);
        this.send(rec.reply!, true);
      }
      return;
    }
    const at = this.reserve(C.NBD_SIMPLE_REPLY_SIZE);
    writeSimpleReply(this.slab, at, 0, rec.cookieHi, rec.cookieLo);
  }

  /** Answers a request with an NBD error number; `message` goes with it in a structured reply. */
  replyError(r: ReplyTo, errno: number, message: string): void {
    // With structured replies a READ must be answered by a chunk; other commands may use a simple reply.
    if (this.structured && r.type === C.NBD_CMD_READ) {
      this.send(encodeStructuredError(C.NBD_REPLY_FLAG_DONE, r.cookieHi, r.cookieLo, errno, message), false);
      return;
    }
    const at = this.reserve(C.NBD_SIMPLE_REPLY_SIZE);
    writeSimpleReply(this.slab, at, errno, r.cookieHi, r.cookieLo);
  }

  /**
   * Sets aside slab room for a READ of `length` bytes and its header, queued
   * behind every reply before; returns where the data goes. Follow with
   * commitInline() once the data is there, cancelInline() if there is none,
   * or detachInline() if it will come later.
   */
  reserveInline(length: number): Buffer {
    const header = this.readHeaderSize();
    const n = header + length;
    const at = this.reserve(n);
    this.inlineAt = at;
    this.inlineLen = n;
    return this.slab.subarray(at + header, at + n);
  }

  /** The data is in: writes the header in front of it. */
  commitInline(r: ReplyTo): void {
    this.writeReadHeader(this.slab, this.inlineAt, r);
  }

  /** Gives the reserved room back. */
  cancelInline(): void {
    this.unreserve(this.inlineAt, this.inlineLen);
  }

  /**
   * The data will come later: returns the reserved bytes (header room and
   * data), which now belong to the caller, and moves on to a fresh slab.
   */
  detachInline(): Buffer {
    const reply = this.slab.subarray(this.inlineAt, this.inlineAt + this.inlineLen);
    this.unreserve(this.inlineAt, this.inlineLen);
    this.sealSlab();
    this.slab = Buffer.allocUnsafe(SLAB_SIZE);
    this.slabStart = this.slabPos = 0;
    return reply;
  }

  /** Queues a reply buffer; a pooled one goes back to the pool once written. */
  send(buf: Buffer, pooled: boolean): void {
    this.sealSlab();
    this.out.push(buf);
    if (pooled) this.outPooled.push(buf);
    this.outBytes += buf.length;
    // Large replies gain nothing from waiting, and the flow control must see them.
    if (this.outBytes >= FLUSH_BYTES) this.flush();
    else this.scheduleFlush();
  }

  /** Writes every queued reply: straight on the fd (sendv), the rest through the stream. */
  flush(): void {
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
    else if (this.socket.writableLength > this.opts.maxQueuedBytes) this.opts.onFull();
  }

  private writeReadHeader(buf: Buffer, at: number, r: ReplyTo): void {
    if (this.structured) {
      writeStructuredReply(
        buf,
        at,
        C.NBD_REPLY_FLAG_DONE,
        C.NBD_REPLY_TYPE_OFFSET_DATA,
        r.cookieHi,
        r.cookieLo,
        8 + r.length,
      );
      writeU64(buf, at + C.NBD_STRUCTURED_REPLY_SIZE, r.offset);
    } else {
      writeSimpleReply(buf, at, 0, r.cookieHi, r.cookieLo);
    }
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

  /** Replies from outside a batch (asynchronous completions) leave at the end of the tick. */
  private scheduleFlush(): void {
    if (this.batching || this.flushScheduled) return;
    this.flushScheduled = true;
    process.nextTick(this.flushTick);
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
}

/** The fd under a net.Socket (a Pipe or TCP handle), or -1. */
function socketFd(socket: Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}
