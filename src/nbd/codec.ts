/**
 * NBD wire codec: pure functions over a Buffer and an offset, no I/O.
 *
 * Handshake messages are small and built as fresh Buffers. Transmission
 * headers are written into caller-provided buffers so the server can place
 * a reply header directly in front of its payload (one buffer, one write).
 * The 64-bit cookie ("handle") is carried as two unsigned 32-bit halves to
 * avoid BigInt on the hot path.
 */
import {
  IHAVEOPT,
  NBDMAGIC,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_REPLY_MAGIC,
  NBD_REPLY_TYPE_ERROR,
  NBD_REQUEST_MAGIC,
  NBD_REQUEST_SIZE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_SIZE,
} from './nbd-constants.js';

/** Size of the server's opening greeting: NBDMAGIC, IHAVEOPT, handshake flags. */
export const NBD_GREETING_SIZE = 18;
/** Size of a client option header: IHAVEOPT, option, length. */
export const NBD_OPTION_HEADER_SIZE = 16;
/** Size of an option reply header: magic, option, reply type, length. */
export const NBD_OPTION_REPLY_HEADER_SIZE = 20;
/** Size of the NBD_OPT_EXPORT_NAME reply without the 124 zero bytes. */
export const NBD_EXPORT_NAME_REPLY_SIZE = 10;
/** Zero padding after the NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const NBD_EXPORT_NAME_ZEROES = 124;

/** A malformed message: the caller decides whether it is answered or fatal. */
export class NbdDecodeError extends Error {
  override readonly name = 'NbdDecodeError';
}

/** The server's greeting (newstyle): NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(NBD_GREETING_SIZE);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

/** Decodes a client option header; the caller checks `magic === IHAVEOPT`. */
export function decodeOptionHeader(buf: Buffer, off = 0): OptionHeader {
  if (buf.length - off < NBD_OPTION_HEADER_SIZE) throw new NbdDecodeError('short option header');
  return {
    magic: buf.readBigUInt64BE(off),
    option: buf.readUInt32BE(off + 8),
    length: buf.readUInt32BE(off + 12),
  };
}

/** Encodes a client option (used by tests and the in-process client). */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(NBD_OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, NBD_OPTION_HEADER_SIZE);
  return b;
}

/** One option reply: magic, the option it answers, reply type, payload. */
export function encodeOptionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(NBD_OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD_OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, NBD_OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const len = NBD_EXPORT_NAME_REPLY_SIZE + (noZeroes ? 0 : NBD_EXPORT_NAME_ZEROES);
  const b = Buffer.alloc(len);
  writeU64(b, 0, size);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** NBD_REP_SERVER payload: name length, name, then an optional description (details). */
export function encodeRepServer(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

/** NBD_INFO_EXPORT: type, size, transmission flags (12 bytes). */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeU64(b, 2, size);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: type then the UTF-8 string. */
export function encodeInfoString(type: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, s: string): Buffer {
  const str = Buffer.from(s, 'utf8');
  const b = Buffer.allocUnsafe(2 + str.length);
  b.writeUInt16BE(type, 0);
  str.copy(b, 2);
  return b;
}

/** NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum (14 bytes). */
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export interface InfoRequest {
  name: string;
  /** Information types the client asked for (NBD_INFO_*), in order. */
  requests: number[];
}

/**
 * Decodes the payload of NBD_OPT_INFO / NBD_OPT_GO:
 * u32 name length, name, u16 count, count × u16 info types.
 * Throws NbdDecodeError when the lengths do not add up exactly.
 */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  if (data.length < 6) throw new NbdDecodeError(`option payload of ${data.length} bytes is shorter than 6`);
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) throw new NbdDecodeError(`export name length ${nameLen} exceeds the option payload`);
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  const expected = 6 + nameLen + 2 * count;
  if (data.length !== expected) {
    throw new NbdDecodeError(`option payload is ${data.length} bytes, ${expected} expected for ${count} info requests`);
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, requests };
}

/** Encodes an NBD_OPT_INFO / NBD_OPT_GO payload (client side; tests). */
export function encodeInfoRequest(name: string, requests: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(6 + n.length + 2 * requests.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(requests.length, 4 + n.length);
  requests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + 2 * i));
  return b;
}

/** A transmission-phase request header. `offset` is exact up to 2^53; larger is reported as Infinity. */
export interface NbdRequest {
  magic: number;
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

/** Decodes a 28-byte request header into `out` (reused by the server to avoid allocation). */
export function decodeRequest(buf: Buffer, off: number, out: NbdRequest): NbdRequest {
  out.magic = buf.readUInt32BE(off);
  out.flags = buf.readUInt16BE(off + 4);
  out.type = buf.readUInt16BE(off + 6);
  out.cookieHi = buf.readUInt32BE(off + 8);
  out.cookieLo = buf.readUInt32BE(off + 12);
  out.offset = readU64(buf, off + 16);
  out.length = buf.readUInt32BE(off + 24);
  return out;
}

/** Encodes a request header (client side; tests and fuzzing). */
export function encodeRequest(
  type: number,
  flags: number,
  cookie: bigint,
  offset: bigint | number,
  length: number,
  magic = NBD_REQUEST_MAGIC,
): Buffer {
  const b = Buffer.allocUnsafe(NBD_REQUEST_SIZE);
  b.writeUInt32BE(magic >>> 0, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

/**
 * The NBD error number for an errno name (an error's `code`, e.g. 'ENOSPC') failing a request
 * with command flags `flags`: the one place where errors become NBD numbers (as nbdkit's
 * nbd_errno()). NBD_ENOTSUP is only for a request that set NBD_CMD_FLAG_FAST_ZERO, which asks
 * for it (this server negotiates no fast zero, so in practice never); otherwise the protocol
 * wants EINVAL. A missing or unknown code is EIO.
 */
export function nbdErrno(code: string | undefined, flags: number): number {
  switch (code) {
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NBD_EPERM;
    case 'EIO':
      return NBD_EIO;
    case 'ENOMEM':
      return NBD_ENOMEM;
    case 'EINVAL':
      return NBD_EINVAL;
    case 'ENOSPC':
    case 'EFBIG':
    case 'EDQUOT':
      return NBD_ENOSPC;
    case 'EOVERFLOW':
      return NBD_EOVERFLOW;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return flags & NBD_CMD_FLAG_FAST_ZERO ? NBD_ENOTSUP : NBD_EINVAL;
    case 'ESHUTDOWN':
      return NBD_ESHUTDOWN;
    default:
      return NBD_EIO;
  }
}

/** Writes a 16-byte simple reply header at `off`. */
export function writeSimpleReply(buf: Buffer, off: number, error: number, cookieHi: number, cookieLo: number): void {
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, off);
  buf.writeUInt32BE(error, off + 4);
  buf.writeUInt32BE(cookieHi, off + 8);
  buf.writeUInt32BE(cookieLo, off + 12);
}

/** Writes a 20-byte structured reply chunk header at `off`; `length` is the chunk payload length. */
export function writeStructuredReply(
  buf: Buffer,
  off: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, off);
  buf.writeUInt16BE(flags, off + 4);
  buf.writeUInt16BE(type, off + 6);
  buf.writeUInt32BE(cookieHi, off + 8);
  buf.writeUInt32BE(cookieLo, off + 12);
  buf.writeUInt32BE(length, off + 16);
}

/**
 * A whole NBD_REPLY_TYPE_ERROR chunk: header, u32 error, u16 message length, message.
 * The message is truncated to keep the chunk small (it is for humans only).
 */
export function encodeStructuredError(
  flags: number,
  cookieHi: number,
  cookieLo: number,
  error: number,
  message: string,
): Buffer {
  const msg = Buffer.from(message.slice(0, 200), 'utf8');
  const b = Buffer.allocUnsafe(NBD_STRUCTURED_REPLY_SIZE + 6 + msg.length);
  writeStructuredReply(b, 0, flags, NBD_REPLY_TYPE_ERROR, cookieHi, cookieLo, 6 + msg.length);
  b.writeUInt32BE(error, NBD_STRUCTURED_REPLY_SIZE);
  b.writeUInt16BE(msg.length, NBD_STRUCTURED_REPLY_SIZE + 4);
  msg.copy(b, NBD_STRUCTURED_REPLY_SIZE + 6);
  return b;
}

/** Size of a simple reply header, re-exported for the server's buffer layout. */
export { NBD_SIMPLE_REPLY_SIZE, NBD_STRUCTURED_REPLY_SIZE, NBD_REQUEST_SIZE };

const TWO_32 = 2 ** 32;
/** Largest high word for which hi·2^32 + lo is still exact in a double. */
const MAX_SAFE_HI = 0x1fffff;

/** Reads a big-endian u64; values above 2^53 − 1 come back as Infinity (always out of range here). */
export function readU64(buf: Buffer, off: number): number {
  const hi = buf.readUInt32BE(off);
  const lo = buf.readUInt32BE(off + 4);
  return hi > MAX_SAFE_HI ? Infinity : hi * TWO_32 + lo;
}

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeU64(buf: Buffer, off: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), off);
  buf.writeUInt32BE(value % TWO_32, off + 4);
}
