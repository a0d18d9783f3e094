/**
 * The export backend interface the NBD server serves, and how backends fail.
 *
 * Every method may complete synchronously (return undefined) or return a
 * promise; the server handles both without an extra microtask for the first.
 * Offsets and lengths have already been validated against `size`,
 * `blockSize.minimum` and the 32 MiB request limit when a method is called.
 *
 * A failure is an Error whose `code` names the errno, as on Node's system
 * errors ('EIO', 'ENOSPC', ...): a Node fs error as it is, a BackendError,
 * or any error of this project that carries one (ScsiError, EioError). The
 * connection turns the code into an NBD error number once, when it writes
 * the reply (nbdErrno() in codec.ts); anything without a known code is EIO.
 */
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from './nbd-constants.js';

export type MaybePromise = void | Promise<void>;

export interface BlockSizeConstraints {
  /** Every offset and length must be a multiple of this (a power of two, 1..65536). */
  minimum: number;
  /** Requests of this size and alignment perform best. */
  preferred: number;
  /** Largest READ/WRITE payload the export accepts. */
  maximum: number;
}

export interface Backend {
  /** Export size in bytes (an integer below 2^53). */
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: BlockSizeConstraints;
  /** Human-readable description sent with NBD_INFO_DESCRIPTION. */
  readonly description: string;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  /** Whether several connections see each other's writes consistently (NBD_FLAG_CAN_MULTI_CONN). */
  readonly canMultiConn: boolean;

  /** Fills `dst` (dst.length bytes) from `offset`. */
  read(offset: number, dst: Buffer): MaybePromise;
  /**
   * Writes `data` at `offset`; with `fua` the data is durable when this completes.
   * `data` may be a buffer earlier returned by writeTarget() for the same range.
   */
  write(offset: number, data: Buffer, fua: boolean): MaybePromise;
  /** Makes every completed write durable. */
  flush(): MaybePromise;
  /** Advisory discard; afterwards the range reads as anything (this project's backends: zeroes). */
  trim(offset: number, length: number, fua: boolean): MaybePromise;
  /** Writes zeroes; with noHole the range must stay allocated. */
  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): MaybePromise;
  /**
   * Optional zero-copy hook: a buffer the server may read a WRITE payload
   * straight into before calling write() with it. Return undefined to make
   * the server use a buffer of its own.
   */
  writeTarget?(offset: number, length: number): Buffer | undefined;
  /**
   * Optional zero-copy hook for large reads: a view of the data to send as
   * it is, or undefined to have read() fill a buffer instead. The server
   * queues the view on the socket at once; a write racing with the read
   * (a concurrent request, whose ordering NBD leaves undefined) may show
   * through, nothing else can.
   */
  readView?(offset: number, length: number): Buffer | undefined;
  /** Releases resources; the server calls it when the export is removed. */
  close?(): MaybePromise;
}

/** An error a backend throws on purpose; `code` names the errno, e.g. 'EINVAL'. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    message: string,
    readonly code: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The errno name a thrown value carries in `code`, or undefined. */
export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Checks that n is a power of two in [lo, hi]. */
export function isPowerOfTwoIn(n: number, lo: number, hi: number): boolean {
  return Number.isInteger(n) && n >= lo && n <= hi && (n & (n - 1)) === 0;
}

/**
 * The transmission flags an export is advertised with: in the handshake and
 * in the kernel's NBD_ATTR_SERVER_FLAGS. Write features are not offered on a
 * read-only export.
 */
export function transmissionFlags(b: Backend): number {
  let f = NBD_FLAG_HAS_FLAGS;
  if (b.readOnly) f |= NBD_FLAG_READ_ONLY;
  if (b.canFlush) f |= NBD_FLAG_SEND_FLUSH;
  if (b.canFua && !b.readOnly) f |= NBD_FLAG_SEND_FUA;
  if (b.canTrim && !b.readOnly) f |= NBD_FLAG_SEND_TRIM;
  if (b.canWriteZeroes && !b.readOnly) f |= NBD_FLAG_SEND_WRITE_ZEROES;
  if (b.canMultiConn) f |= NBD_FLAG_CAN_MULTI_CONN;
  return f;
}
