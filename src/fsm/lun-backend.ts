/**
 * An NBD export backed by an SRP LUN: every block request goes through the
 * port's I/O gate (held while the path is blocked, failed with EIO once
 * fail-fast or lost) to the LUN's ScsiDisk on the current session.
 *
 * Each op is safe to replay: it addresses absolute blocks and, for writes,
 * keeps its payload buffer until the gate settles it, so a write is only
 * acknowledged to the NBD client once the target acknowledged it.
 */
import type { ScsiDisk } from '../initiator/scsi-disk.js';
import { type Backend, type BlockSizeConstraints, BackendError, errorCode } from '../nbd/backend.js';
import * as C from '../nbd/nbd-constants.js';
import type { SrpPort } from './srp-port.js';

/** ScsiError / DiskRequestError carry the errno name in `errno`; EioError in `code`. */
function toBackendError(err: unknown): never {
  const e = err as { errno?: unknown; message?: string };
  const code = typeof e?.errno === 'string' ? e.errno : errorCode(err);
  throw new BackendError(e?.message ?? String(err), code ?? 'EIO', { cause: err });
}

export class LunBackend implements Backend {
  readonly size: number;
  readonly readOnly = false;
  readonly blockSize: BlockSizeConstraints;
  readonly canFlush = true;
  readonly canFua = true;
  readonly canTrim: boolean;
  readonly canWriteZeroes = true;
  /** One LUN, one cache: SYNCHRONIZE CACHE covers writes from every connection. */
  readonly canMultiConn = true;

  constructor(
    private readonly port: SrpPort,
    private readonly disk: ScsiDisk,
    readonly description: string,
  ) {
    const g = disk.geometry;
    this.size = g.sizeBytes;
    this.blockSize = {
      minimum: g.blockSize,
      preferred: Math.max(4096, g.physicalBlockSize),
      maximum: C.NBD_MAX_REQUEST_SIZE,
    };
    this.canTrim = disk.limits.trim !== 'none';
  }

  read(offset: number, dst: Buffer): Promise<void> {
    // dst is recycled memory (the NBD server's buffer pool): a target that transfers less than
    // asked without saying so must not hand the client another request's data.
    dst.fill(0);
    return this.port.gate.submit(() => this.disk.read(offset, dst.length, dst)).then(() => undefined, toBackendError);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.port.gate.submit(() => this.disk.write(offset, data, { fua })).then(undefined, toBackendError);
  }

  flush(): Promise<void> {
    return this.port.gate.submit(() => this.disk.flush()).then(undefined, toBackendError);
  }

  trim(offset: number, length: number): Promise<void> {
    return this.port.gate.submit(() => this.disk.trim(offset, length)).then(undefined, toBackendError);
  }

  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.port.gate.submit(() => this.disk.writeZeroes(offset, length, { fua, noHole })).then(undefined, toBackendError);
  }
}
