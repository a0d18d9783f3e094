/**
 * The transmission phase's input: turns the client's byte stream into
 * request headers and WRITE payloads, without concatenating chunks.
 *
 * A header whole in a chunk is decoded in place; one split across reads is
 * assembled in a fixed 28-byte buffer. Each header is decoded into the same
 * `request` object. After a WRITE header the connection says where the
 * payload goes (receivePayload) or that it is to be skipped (skipPayload);
 * the payload is then copied once into its destination, or not at all
 * while at least 64 KiB of it are still to come: the socket reads straight
 * into it (directTarget()).
 *
 * The framer is driven by its caller, one frame at a time: consume() takes
 * bytes up to the end of the next frame and `completed` says what it
 * finished, so the caller decides between two frames whether to go on (it
 * may have paused or stopped). It never throws on client input: a wrong
 * magic is the caller's to judge.
 */
import { type NbdRequest, decodeRequest } from './codec.js';
import { NBD_REQUEST_SIZE } from './nbd-constants.js';

/** Payload bytes still expected above which reads go straight into the payload. */
const DIRECT_READ_MIN = 64 * 1024;

/** What the last consume() finished: a request header, a WRITE payload, or nothing yet. */
export type Frame = 'request' | 'payload' | undefined;

export class RequestFramer {
  /** The last request header decoded; the same object every time. */
  readonly request: NbdRequest = { magic: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
  completed: Frame = undefined;

  private state: 'header' | 'payload' | 'discard' | 'stopped' = 'header';
  /** A header split across reads is assembled here; headerPos bytes are in. */
  private readonly headerBuf = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  private headerPos = 0;
  /** The WRITE payload being received and how much of it is in. */
  private payload: Buffer | undefined;
  private payloadPos = 0;
  private discardLeft = 0;

  /**
   * Consumes bytes from `chunk` at `pos` up to the end of the next frame (or
   * of the chunk); returns the new position and sets `completed`.
   */
  consume(chunk: Buffer, pos: number): number {
    this.completed = undefined;
    switch (this.state) {
      case 'header':
        // Fast path: a whole header in the chunk is decoded in place.
        if (this.headerPos === 0 && chunk.length - pos >= NBD_REQUEST_SIZE) {
          decodeRequest(chunk, pos, this.request);
          this.completed = 'request';
          return pos + NBD_REQUEST_SIZE;
        }
        return this.collectHeader(chunk, pos);
      case 'payload': {
        const dst = this.payload!;
        const n = Math.min(dst.length - this.payloadPos, chunk.length - pos);
        // Skipped when the socket read straight into the payload (see directTarget).
        if (chunk.buffer !== dst.buffer || chunk.byteOffset + pos !== dst.byteOffset + this.payloadPos) {
          chunk.copy(dst, this.payloadPos, pos, pos + n);
        }
        this.payloadPos += n;
        if (this.payloadPos === dst.length) {
          this.payload = undefined;
          this.payloadPos = 0;
          this.state = 'header';
          this.completed = 'payload';
        }
        return pos + n;
      }
      case 'discard': {
        const n = Math.min(this.discardLeft, chunk.length - pos);
        this.discardLeft -= n;
        if (this.discardLeft === 0) this.state = 'header';
        return pos + n;
      }
      case 'stopped':
        return chunk.length;
    }
  }

  /** Copies header bytes split across reads into headerBuf; decodes the header once it is whole. */
  private collectHeader(chunk: Buffer, pos: number): number {
    const n = Math.min(NBD_REQUEST_SIZE - this.headerPos, chunk.length - pos);
    chunk.copy(this.headerBuf, this.headerPos, pos, pos + n);
    this.headerPos += n;
    if (this.headerPos === NBD_REQUEST_SIZE) {
      this.headerPos = 0;
      decodeRequest(this.headerBuf, 0, this.request);
      this.completed = 'request';
    }
    return pos + n;
  }

  /** After a WRITE header: its payload goes into `dst` (exactly the request's length). */
  receivePayload(dst: Buffer): void {
    this.payload = dst;
    this.payloadPos = 0;
    this.state = 'payload';
  }

  /** After a refused WRITE header: its `length` payload bytes are read and dropped, so framing holds. */
  skipPayload(length: number): void {
    this.discardLeft = length;
    if (length > 0) this.state = 'discard';
  }

  /** Where the next socket read may land: the rest of the WRITE payload while 64 KiB or more of it are to come. */
  directTarget(): Buffer | undefined {
    if (this.state !== 'payload') return undefined;
    const left = this.payload!.length - this.payloadPos;
    return left >= DIRECT_READ_MIN ? this.payload!.subarray(this.payloadPos) : undefined;
  }

  /** What the input stopped in the middle of, if anything (for the log when a client vanishes). */
  get partial(): 'payload' | 'frame' | undefined {
    if (this.state === 'payload') return 'payload';
    return this.state === 'discard' || this.headerPos > 0 || this.payloadPos > 0 ? 'frame' : undefined;
  }

  /**
   * Stops framing: later input is ignored, and the payload being received is
   * forgotten (it may be the socket's current read buffer: left to the GC).
   */
  abandon(): void {
    this.payload = undefined;
    this.state = 'stopped';
  }
}
