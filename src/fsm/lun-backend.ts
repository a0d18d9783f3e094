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
 *
 * Read-only as Linux sd makes a disk: when the LU reports the WP bit (read at
 * probe, at every identity check and rescan) or the operator forced it, the
 * export is offered read-only and writes, trims and write-zeroes are refused
 * here with EPERM, never sent. The size follows the disk's geometry (a LUN
 * that grew). A LUN the target no longer reports is `gone`: every request
 * fails with EIO until the export is removed.
 */
import type { ScsiDisk } from '../initiator/scsi-disk.js';
import { type Backend, BackendError, type BlockSizeConstraints } from '../nbd/backend.js';
import * as C from '../nbd/nbd-constants.js';
import type { MultipathGate } from './multipath.js';
import type { SrpPort } from './srp-port.js';

/** ScsiDisk.write()'s flags, one object each rather than one per write (never changed). */
const FUA: { readonly fua: boolean } = Object.freeze({ fua: true });
const NO_FUA: { readonly fua: boolean } = Object.freeze({ fua: false });

/** Why an export is read-only: the per-target option, or the LU's WP bit. */
export type ReadOnlyReason = 'option' | 'write_protect';

export class LunBackend implements Backend {
  readonly blockSize: BlockSizeConstraints;
  readonly canFlush = true;
  readonly canFua = true;
  readonly canTrim: boolean;
  readonly canWriteZeroes = true;
  /** One LUN, one cache: SYNCHRONIZE CACHE covers writes from every connection. */
  readonly canMultiConn = true;

  /** The target no longer reports the LUN: every request fails with EIO. */
  gone = false;

  /**
   * Where requests go: the port's I/O gate (one path), or, once a second path to the LU joined,
   * the LU's multipath gate (multipath.ts), which picks a path per request. Ops already admitted
   * by the port's gate finish there.
   */
  private submit: <T>(op: (disk: ScsiDisk) => Promise<T>, bytes: number) => Promise<T>;
  multipath: MultipathGate<ScsiDisk> | undefined;

  constructor(
    private port: SrpPort,
    private diskNow: ScsiDisk,
    readonly description: string,
    /** The per-target option `read_only`. */
    private readonly forceReadOnly = false,
  ) {
    const g = diskNow.geometry;
    this.blockSize = {
      minimum: g.blockSize,
      preferred: Math.max(4096, g.physicalBlockSize),
      maximum: C.NBD_MAX_REQUEST_SIZE,
    };
    this.canTrim = diskNow.limits.trim !== 'none';
    this.submit = (op) => this.port.gate.submit(() => op(this.disk));
  }

  /** The disk whose geometry, limits and WP bit the export follows (the LU's owning path's). */
  get disk(): ScsiDisk {
    return this.diskNow;
  }

  /**
   * The LU's export continues on another path's port and disk (its first path was detached): the
   * geometry, limits and WP bit are read from there from now on.
   */
  moveTo(port: SrpPort, disk: ScsiDisk): void {
    this.port = port;
    this.diskNow = disk;
  }

  /** From now on every request goes through `gate` (the LU has several paths). */
  useMultipath(gate: MultipathGate<ScsiDisk>): void {
    this.multipath = gate;
    this.submit = (op, bytes) => gate.submit(op, bytes);
  }

  /** The largest transfer of one SCSI command to this LUN (Block Limits VPD, max_sect). */
  get maxTransferBytes(): number {
    return this.disk.limits.maxTransferBlocks * this.disk.geometry.blockSize;
  }

  /** The disk's size as last adopted (grows with the LUN; a shrink is never adopted). */
  get size(): number {
    return this.disk.geometry.sizeBytes;
  }

  get readOnly(): boolean {
    return this.readOnlyReason !== null;
  }

  /** The LU's WP bit as last read. */
  get writeProtected(): boolean {
    return this.disk.writeProtected;
  }

  get readOnlyReason(): ReadOnlyReason | null {
    if (this.forceReadOnly) return 'option';
    return this.disk.writeProtected ? 'write_protect' : null;
  }

  /** Refuses a request before it reaches the target: EIO when the LUN is gone, EPERM when read-only. */
  private refused(write: boolean): Promise<never> | undefined {
    if (this.gone)
      return Promise.reject(new BackendError(`${this.description}: the target no longer reports this LUN`, 'EIO'));
    const ro = write ? this.readOnlyReason : null;
    if (ro === null) return undefined;
    const why = ro === 'option' ? 'read_only is set for the target' : 'the LU is write protected';
    return Promise.reject(new BackendError(`${this.description}: read-only (${why})`, 'EPERM'));
  }

  read(offset: number, dst: Buffer): Promise<void> {
    const no = this.refused(false);
    if (no) return no;
    // dst is recycled memory (the NBD server's buffer pool), yet it needs no zeroing: ScsiDisk.read
    // resolves only when the target transferred every byte asked for (a residual or a short
    // transfer is EIO, and an error reply carries no data), and the session zeroes what a target
    // claims to have written into a slot but did not.
    // Resolves with dst itself (ScsiDisk.read's value), not with nothing: the NBD server and
    // MeteredBackend ignore the value, and a then() to drop it would cost a promise per read.
    return this.submit((disk) => disk.read(offset, dst.length, dst), dst.length) as Promise<unknown> as Promise<void>;
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    const flags = fua ? FUA : NO_FUA;
    return this.refused(true) ?? this.submit((disk) => disk.write(offset, data, flags), data.length);
  }

  flush(): Promise<void> {
    return this.refused(false) ?? this.submit((disk) => disk.flush(), 0);
  }

  trim(offset: number, length: number): Promise<void> {
    return this.refused(true) ?? this.submit((disk) => disk.trim(offset, length), 0);
  }

  writeZeroes(offset: number, length: number, fua: boolean, noHole: boolean): Promise<void> {
    return this.refused(true) ?? this.submit((disk) => disk.writeZeroes(offset, length, { fua, noHole }), 0);
  }
}
