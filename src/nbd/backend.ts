/**
 * The export backend interface the NBD server serves, and the errno mapping
 * of backend failures onto NBD's error set.
 *
 * Every method may complete synchronously (return undefined) or return a
 * promise; the server handles both without an extra microtask for the first.
 * Offsets and lengths have already been validated against `size`,
 * `blockSize.minimum` and the 32 MiB request limit when a method is called.
 */
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
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

/** An error a backend throws on purpose, carrying the NBD errno to report. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    message: string,
    readonly errno: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const ERRNO_BY_CODE: Record<string, number> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

const NBD_ERRNOS = new Set(Object.values(ERRNO_BY_CODE));

/**
 * Reduces any thrown value to one of the errno values NBD allows on the wire.
 * BackendError keeps its errno; Node system errors map by `code`; the rest is EIO.
 */
export function toNbdErrno(err: unknown): number {
  if (err instanceof BackendError && NBD_ERRNOS.has(err.errno)) return err.errno;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code in ERRNO_BY_CODE) return ERRNO_BY_CODE[code]!;
  return NBD_EIO;
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
