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
import { promisify } from 'node:util';
import { lunToSam } from '../initiator/scsi-cdb.js';
import { SAM_STAT_GOOD, SYNCHRONIZE_CACHE_16, UNMAP, WRITE_16, WRITE_SAME_16 } from '../initiator/scsi-constants.js';
import type { ScsiTargetLun } from '../initiator/scsi-executor.js';
import type { RamScsiLun } from '../testing/scsi-lun.js';
import { TestFabric } from '../testing/test-fabric.js';
import type { TestTargetSpec } from './address.js';

type Reply = { status: number; sense?: Buffer; dataIn?: Buffer };

/** Image files held open by a live test target: one user per image. */
const liveImages = new Set<string>();

/** An image_dir or image file the daemon refuses to use; the message says why and what to do. */
export class TestTargetImageError extends Error {
  override readonly name = 'TestTargetImageError';
}

const openFd = promisify(fs.open);
const readFd = promisify(fs.read);
const closeFd = promisify(fs.close);

/** A RamScsiLun written through to an image file. */
export class ImageScsiLun implements ScsiTargetLun {
  private constructor(
    private readonly ram: RamScsiLun,
    private readonly fd: number,
    readonly file: string,
  ) {}

  /**
   * Opens (or creates) the image `file` for the LUN; an existing image of the right size is loaded
   * into the LUN, in 4 MiB reads that leave the event loop free between them. Only inside
   * `stateDir` (after resolving symlinks of the directory; the file itself is opened with
   * O_NOFOLLOW and created with O_EXCL), only a regular file owned by this uid, only one live user
   * per image; an image of another size is refused, never truncated.
   */
  static async open(ram: RamScsiLun, file: string, stateDir: string): Promise<ImageScsiLun> {
    const size = ram.blocks * ram.blockSize;
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const root = fs.realpathSync(stateDir);
    const dir = path.dirname(file);
    const inside = (p: string): boolean => p === root || p.startsWith(root + path.sep);
    // refuse before creating anything outside the state directory
    if (!inside(path.resolve(dir)) && !inside(fs.realpathSync(nearestExisting(dir)))) {
      throw new TestTargetImageError(
        `image_dir ${dir} is outside the state directory ${root}: put test-target images under it`,
      );
    }
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const realDir = fs.realpathSync(dir);
    if (!inside(realDir)) {
      throw new TestTargetImageError(`image_dir ${dir} resolves to ${realDir}, outside the state directory ${root}`);
    }
    const real = path.join(realDir, path.basename(file));
    if (liveImages.has(real)) throw new TestTargetImageError(`image ${real} is in use by another attached test target`);
    const { O_RDWR, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    let created = false;
    let fd: number;
    try {
      fd = await openFd(real, O_RDWR | O_NOFOLLOW);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ELOOP')
        throw new TestTargetImageError(`image ${real} is a symbolic link: refused`);
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      fd = await openFd(real, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
      created = true;
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new TestTargetImageError(`image ${real} is not a regular file`);
      if (st.uid !== (process.getuid?.() ?? st.uid))
        throw new TestTargetImageError(`image ${real} belongs to uid ${st.uid}, not to the daemon: refused`);
      if (created) {
        fs.ftruncateSync(fd, size);
        fs.fsyncSync(fd);
      } else if (st.size !== size) {
        throw new TestTargetImageError(
          `image ${real} holds ${st.size} bytes but the LUN has ${size}: refused (attach with lun_size=${st.size}, or remove the image)`,
        );
      } else {
        const chunk = Buffer.allocUnsafe(Math.min(size, 4 * 1024 * 1024));
        for (let off = 0; off < size; off += chunk.length) {
          const { bytesRead } = await readFd(fd, chunk, 0, Math.min(chunk.length, size - off), off);
          ram.poke(off / ram.blockSize, chunk.subarray(0, bytesRead));
        }
      }
    } catch (e) {
      await closeFd(fd);
      throw e;
    }
    liveImages.add(real);
    return new ImageScsiLun(ram, fd, real);
  }

  execute(cdb: Buffer, dataOut: Buffer | undefined, allocationLength: number): Reply | Promise<Reply> {
    const r = this.ram.execute(cdb, dataOut, allocationLength);
    return r instanceof Promise ? r.then((x) => this.after(cdb, dataOut, x)) : this.after(cdb, dataOut, r);
  }

  close(): void {
    liveImages.delete(this.file);
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
          for (let o = 8; o + 16 <= dataOut.length; o += 16)
            this.persist(Number(dataOut.readBigUInt64BE(o)), dataOut.readUInt32BE(o + 8));
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

/** The nearest ancestor of `p` (or `p`) that exists. */
function nearestExisting(p: string): string {
  let q = path.resolve(p);
  while (!fs.existsSync(q) && path.dirname(q) !== q) q = path.dirname(q);
  return q;
}

/**
 * A TestFabric for a test-target address; LUN serials are "<name>-<N>". Images (image_dir) must lie
 * inside `stateDir`; a failure closes every image opened so far.
 */
export async function createTestFabric(
  spec: TestTargetSpec,
  stateDir?: string,
): Promise<{ fabric: TestFabric; close: () => void }> {
  const fabric = new TestFabric(
    Array.from({ length: spec.luns }, (_, i) => ({
      blockSize: spec.blockSize,
      sizeBytes: spec.lunSize,
      serial: `${spec.name}-${i}`,
    })),
  );
  const images: ImageScsiLun[] = [];
  const close = (): void => images.forEach((i) => i.close());
  if (spec.imageDir) {
    if (stateDir === undefined) throw new TestTargetImageError('image_dir needs the daemon (its state directory)');
    try {
      for (let i = 0; i < spec.luns; i++) {
        const sam = lunToSam(i);
        const ram = fabric.luns.get(sam)!;
        const img = await ImageScsiLun.open(ram, path.join(spec.imageDir, `${spec.name}-lun${i}.img`), stateDir);
        images.push(img);
        // The target looks LUNs up in this same map.
        (fabric.target.luns as Map<bigint, ScsiTargetLun>).set(sam, img);
      }
    } catch (e) {
      close();
      throw e;
    }
  }
  return { fabric, close };
}
