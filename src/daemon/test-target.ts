/**
 * The daemon's in-process test target: a TestFabric whose RAM LUNs may be kept in image files.
 *
 * With an image, every write the LUN acknowledges (WRITE(16), WRITE SAME(16), UNMAP) has been
 * copied to the file with pwrite() before the reply is sent, and SYNCHRONIZE CACHE calls
 * fdatasync(); a daemon killed with -9 loses nothing it acknowledged (the page cache survives a
 * process). Serials are derived from the target name, so the LUN identity is the same at restart.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { lunToSam } from '../initiator/scsi-cdb.js';
import { SAM_STAT_GOOD, SYNCHRONIZE_CACHE_16, UNMAP, WRITE_16, WRITE_SAME_16 } from '../initiator/scsi-constants.js';
import type { ScsiTargetLun } from '../initiator/scsi-executor.js';
import type { RamScsiLun } from '../testing/scsi-lun.js';
import { TestFabric } from '../testing/test-fabric.js';
import type { TestTargetSpec } from './address.js';

type Reply = { status: number; sense?: Buffer; dataIn?: Buffer };

/** A RamScsiLun written through to an image file. */
export class ImageScsiLun implements ScsiTargetLun {
  private constructor(
    private readonly ram: RamScsiLun,
    private readonly fd: number,
    readonly file: string,
  ) {}

  /** Opens (or creates) the image; an existing image of the right size is loaded into the LUN. */
  static open(ram: RamScsiLun, file: string): ImageScsiLun {
    const size = ram.blocks * ram.blockSize;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    const st = fs.fstatSync(fd);
    if (st.size === size) {
      const chunk = Buffer.alloc(Math.min(size, 4 * 1024 * 1024));
      for (let off = 0; off < size; off += chunk.length) {
        const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
        ram.poke(off / ram.blockSize, chunk.subarray(0, n));
      }
    } else {
      fs.ftruncateSync(fd, 0);
      fs.ftruncateSync(fd, size);
      fs.fsyncSync(fd);
    }
    return new ImageScsiLun(ram, fd, file);
  }

  execute(cdb: Buffer, dataOut: Buffer | undefined, allocationLength: number): Reply | Promise<Reply> {
    const r = this.ram.execute(cdb, dataOut, allocationLength);
    return r instanceof Promise ? r.then((x) => this.after(cdb, dataOut, x)) : this.after(cdb, dataOut, r);
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  private after(cdb: Buffer, dataOut: Buffer | undefined, reply: Reply): Reply {
    if (reply.status !== SAM_STAT_GOOD) return reply;
    switch (cdb[0]) {
      case WRITE_16:
      case WRITE_SAME_16: {
        const lba = Number(cdb.readBigUInt64BE(2));
        const n = cdb.readUInt32BE(10);
        this.persist(lba, n === 0 ? this.ram.blocks - lba : n);
        break;
      }
      case UNMAP:
        if (dataOut && dataOut.length >= 8) {
          for (let o = 8; o + 16 <= dataOut.length; o += 16) this.persist(Number(dataOut.readBigUInt64BE(o)), dataOut.readUInt32BE(o + 8));
        }
        break;
      case SYNCHRONIZE_CACHE_16:
        fs.fdatasyncSync(this.fd);
        break;
      default:
        break;
    }
    return reply;
  }

  private persist(lba: number, blocks: number): void {
    if (blocks <= 0) return;
    const buf = this.ram.peek(lba, blocks);
    fs.writeSync(this.fd, buf, 0, buf.length, lba * this.ram.blockSize);
  }
}

/** A TestFabric for a test-target address; LUN serials are "<name>-<N>". */
export function createTestFabric(spec: TestTargetSpec): { fabric: TestFabric; close: () => void } {
  const fabric = new TestFabric(
    Array.from({ length: spec.luns }, (_, i) => ({ blockSize: spec.blockSize, sizeBytes: spec.lunSize, serial: `${spec.name}-${i}` })),
  );
  const images: ImageScsiLun[] = [];
  if (spec.imageDir) {
    for (let i = 0; i < spec.luns; i++) {
      const sam = lunToSam(i);
      const ram = fabric.luns.get(sam)!;
      const img = ImageScsiLun.open(ram, path.join(spec.imageDir, `${spec.name}-lun${i}.img`));
      images.push(img);
      // The target looks LUNs up in this same map.
      (fabric.target.luns as Map<bigint, ScsiTargetLun>).set(sam, img);
    }
  }
  return { fabric, close: () => images.forEach((i) => i.close()) };
}
