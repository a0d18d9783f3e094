/**
 * An NBD export backed by an SRP LUN: every block request goes through the
 * port's I/O gate (held while the path is blocked, failed with EIO once
 * fail-fast or lost) to the LUN's ScsiDisk on the current session.
 *
 * Each op is safe to replay: it addresses absolute blocks and, for writes,
 * keeps its payload buffer until the gate settles it, so a write is only
 * acknowledged to the NBD client once the target acknowledged it.
 *
 * Failures reach the NBD server as they are: ScsiError and DiskRequestError
 * name their errno in `code`, and so does the gate's EioError, which is what
 * the server maps to an NBD error number (see backend.ts).
 */
import type { ScsiDisk } from '../initiator/scsi-disk.js';
import type { Backend, BlockSizeConstraints } from '../nbd/backend.js';
import * as C from '../nbd/nbd-constants.js';
import type { SrpPort } from './srp-port.js';

const nothing = (): void => undefined;

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
    // dst is recycled memory (the NBD server's buffer pool), yet it needs no zeroing: ScsiDisk.read
    // resolves only when the target transferred every byte asked for (a residual or a short
    // transfer is EIO, and an error reply carries no data), and the session zeroes what a target
    // claims to have written into a slot but did not.
    return this.port.gate.submit(() => this.disk.read(offset, dst.length, dst)).then(nothing);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.port.gate.submit(() => this.disk.write(offset, data, { fua }));
  }

  flush(): Promise<void> {
    return this.port.gate.submit(() => this.disk.flush());
  }

  trim(offset: number, length: number): Promise<void> {
    return this.port.gate.submit(() => this.disk.trim(offset, length));
  }

  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.port.gate.submit(() => this.disk.writeZeroes(offset, length, { fua, noHole }));
  }
}
