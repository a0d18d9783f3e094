/**
 * The fixed-newstyle handshake, server side: the greeting, the client's
 * flags, then options until one of them chooses an export
 * (NBD_OPT_EXPORT_NAME or NBD_OPT_GO), the client gives up (NBD_OPT_ABORT)
 * or breaks the protocol.
 *
 * Driven by its caller like the request framer: consume() takes bytes up
 * to the end of the next frame and answers what it can through `send`;
 * `outcome` is set once the handshake is over. Errors the protocol can
 * answer (unknown export, malformed NBD_OPT_INFO, unsupported option) are
 * answered and the client may go on; the others end the handshake with a
 * `fatal` outcome for the connection to log and act on.
 */
import type { Logger } from 'pino';
import { type Backend, transmissionFlags } from './backend.js';
import {
  NbdDecodeError,
  NBD_OPTION_HEADER_SIZE,
  decodeInfoRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeRepServer,
} from './codec.js';
import * as C from './nbd-constants.js';
import { boundedField } from '../util/log.js';

/** Where the server finds exports by name. */
export interface ExportRegistry {
  /** The export for a name; "" means the default export. */
  lookup(name: string): { name: string; backend: Backend } | undefined;
  /** Every export, for NBD_OPT_LIST. */
  list(): { name: string; backend: Backend }[];
}

/** What the handshake settled on: the export and how to speak to the client during transmission. */
export interface NegotiatedExport {
  name: string;
  backend: Backend;
  /** The transmission flags the client was told (see transmissionFlags()). */
  transmissionFlags: number;
  /** NBD_OPT_STRUCTURED_REPLY was negotiated. */
  structuredReplies: boolean;
}

export type HandshakeOutcome =
  | { kind: 'export'; negotiated: NegotiatedExport }
  /** NBD_OPT_ABORT, acknowledged: the connection closes. */
  | { kind: 'abort' }
  /** A protocol error that ends the connection; `problem` names its kind for the log. */
  | { kind: 'fatal'; problem: string; message: string };

/** Options a client may send before it must have chosen an export. */
const MAX_OPTIONS = 64;

export class Handshake {
  /** Set once the handshake is over; consume() must not be called after that. */
  outcome: HandshakeOutcome | undefined;

  private phase: 'client-flags' | 'option-header' | 'option-data' = 'client-flags';
  /* Frame assembly: `fill` collects exactly `fillNeed` bytes. */
  private fill: Buffer = Buffer.allocUnsafe(NBD_OPTION_HEADER_SIZE);
  private fillPos = 0;
  private fillNeed = 4;
  private noZeroes = false;
  private structuredReplies = false;
  private optionCount = 0;
  private optionCode = 0;

  constructor(
    private readonly registry: ExportRegistry,
    private readonly logger: Logger,
    /** Queues handshake bytes for the client. */
    private readonly send: (buf: Buffer) => void,
  ) {}

  /** The server's first message, sent before any input. */
  greeting(): Buffer {
    return encodeGreeting(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES);
  }

  /** Whether the input stopped in the middle of a frame (for the log when a client vanishes). */
  get midFrame(): boolean {
    return this.fillPos > 0;
  }

  /** Consumes bytes from `chunk` at `pos` up to the end of the next frame or of the chunk; returns where it stopped. */
  consume(chunk: Buffer, pos: number): number {
    const n = Math.min(this.fillNeed - this.fillPos, chunk.length - pos);
    chunk.copy(this.fill, this.fillPos, pos, pos + n);
    this.fillPos += n;
    if (this.fillPos === this.fillNeed) {
      this.fillPos = 0;
      this.onFrame(this.fill.subarray(0, this.fillNeed));
    }
    return pos + n;
  }

  private expect(n: number): void {
    if (this.fill.length < n) this.fill = Buffer.allocUnsafe(n);
    this.fillPos = 0;
    this.fillNeed = n;
  }

  private onFrame(frame: Buffer): void {
    switch (this.phase) {
      case 'client-flags': {
        const flags = frame.readUInt32BE(0);
        const known = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES;
        if ((flags & ~known) !== 0) return this.fatal('client-flags', `unknown client flags 0x${flags.toString(16)}`);
        this.noZeroes = (flags & C.NBD_FLAG_C_NO_ZEROES) !== 0;
        this.phase = 'option-header';
        this.expect(NBD_OPTION_HEADER_SIZE);
        return;
      }
      case 'option-header': {
        const h = decodeOptionHeader(frame);
        if (h.magic !== C.IHAVEOPT) return this.fatal('option-magic', `wrong option magic 0x${h.magic.toString(16)}`);
        if (++this.optionCount > MAX_OPTIONS) return this.fatal('option-count', `more than ${MAX_OPTIONS} options`);
        this.optionCode = h.option;
        if (h.length > C.NBD_MAX_OPTION_SIZE) {
          this.optionReply(C.NBD_REP_ERR_TOO_BIG, `option of ${h.length} bytes exceeds ${C.NBD_MAX_OPTION_SIZE}`);
          return this.fatal('option-size', `${C.nameOfNbdOpt(h.option)} with ${h.length} bytes of data`);
        }
        if (h.length === 0) return this.onOption(Buffer.alloc(0));
        this.phase = 'option-data';
        this.expect(h.length);
        return;
      }
      case 'option-data':
        return this.onOption(Buffer.from(frame)); // copied: the fill buffer is reused
    }
  }

  private nextOption(): void {
    this.phase = 'option-header';
    this.expect(NBD_OPTION_HEADER_SIZE);
  }

  private onOption(data: Buffer): void {
    const opt = this.optionCode;
    switch (opt) {
      case C.NBD_OPT_EXPORT_NAME: {
        const name = data.toString('utf8');
        const found = this.registry.lookup(name);
        if (!found)
          return this.fatal('unknown-export', `NBD_OPT_EXPORT_NAME for unknown export '${boundedField(name)}'`);
        const negotiated = this.negotiated(found.name, found.backend);
        this.send(encodeExportNameReply(found.backend.size, negotiated.transmissionFlags, this.noZeroes));
        this.outcome = { kind: 'export', negotiated };
        return;
      }
      case C.NBD_OPT_ABORT:
        this.optionReply(C.NBD_REP_ACK);
        this.outcome = { kind: 'abort' };
        return;
      case C.NBD_OPT_LIST:
        if (data.length !== 0) this.optionReply(C.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST carries no data');
        else {
          for (const e of this.registry.list()) this.optionReply(C.NBD_REP_SERVER, encodeRepServer(e.name));
          this.optionReply(C.NBD_REP_ACK);
        }
        return this.nextOption();
      case C.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.optionReply(C.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY carries no data');
        } else if (this.structuredReplies) {
          this.optionReply(C.NBD_REP_ERR_INVALID, 'structured replies already negotiated');
        } else {
          this.structuredReplies = true;
          this.optionReply(C.NBD_REP_ACK);
        }
        return this.nextOption();
      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO:
        return this.onInfoOrGo(opt, data);
      default:
        this.logger.debug({ option: C.nameOfNbdOpt(opt) }, 'unsupported option refused');
        this.optionReply(C.NBD_REP_ERR_UNSUP, `${C.nameOfNbdOpt(opt)} is not supported`);
        return this.nextOption();
    }
  }

  private onInfoOrGo(opt: number, data: Buffer): void {
    let request;
    try {
      request = decodeInfoRequest(data);
    } catch (err) {
      if (!(err instanceof NbdDecodeError)) throw err;
      this.optionReply(C.NBD_REP_ERR_INVALID, err.message);
      return this.nextOption();
    }
    const found = this.registry.lookup(request.name);
    if (!found) {
      this.optionReply(C.NBD_REP_ERR_UNKNOWN, `unknown export '${boundedField(request.name)}'`);
      return this.nextOption();
    }
    const b = found.backend;
    this.optionReply(C.NBD_REP_INFO, encodeInfoExport(b.size, transmissionFlags(b)));
    for (const type of new Set(request.requests)) {
      if (type === C.NBD_INFO_NAME) this.optionReply(C.NBD_REP_INFO, encodeInfoString(C.NBD_INFO_NAME, found.name));
      else if (type === C.NBD_INFO_DESCRIPTION && b.description) {
        this.optionReply(C.NBD_REP_INFO, encodeInfoString(C.NBD_INFO_DESCRIPTION, b.description));
      }
    }
    // Sent whether asked or not: clients must honour the constraints they were told.
    const bs = b.blockSize;
    this.optionReply(C.NBD_REP_INFO, encodeInfoBlockSize(bs.minimum, bs.preferred, bs.maximum));
    this.optionReply(C.NBD_REP_ACK);
    if (opt === C.NBD_OPT_GO) this.outcome = { kind: 'export', negotiated: this.negotiated(found.name, b) };
    else this.nextOption();
  }

  private negotiated(name: string, backend: Backend): NegotiatedExport {
    return { name, backend, transmissionFlags: transmissionFlags(backend), structuredReplies: this.structuredReplies };
  }

  private optionReply(type: number, data?: Buffer | string): void {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.send(encodeOptionReply(this.optionCode, type, payload));
  }

  private fatal(problem: string, message: string): void {
    this.outcome = { kind: 'fatal', problem, message };
  }
}
