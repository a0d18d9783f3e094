/**
 * A file export: positional reads and writes on an open descriptor, FLUSH
 * and FUA as fdatasync. TRIM is not offered (Node has no hole punching);
 * WRITE_ZEROES writes zero blocks.
 */
import { promises as fsp } from 'node:fs';
import * as fs from 'node:fs';
import { type Backend, type BlockSizeConstraints, BackendError, isPowerOfTwoIn } from './backend.js';
import { NBD_MAX_REQUEST_SIZE } from './nbd-constants.js';

const ZERO_CHUNK = Buffer.alloc(1 << 20);

export interface FileBackendOptions {
  readOnly?: boolean;
  minimumBlockSize?: number;
}

export class FileBackend implements Backend {
  readonly blockSize: BlockSizeConstraints;
  readonly canFlush = true;
  readonly canFua = true;
  readonly canTrim = false;
  readonly canWriteZeroes = true;
  readonly canMultiConn = true;

  private constructor(
    private readonly fd: number,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    minimum: number,
  ) {
    this.blockSize = { minimum, preferred: Math.max(4096, minimum), maximum: NBD_MAX_REQUEST_SIZE };
  }

  get description(): string {
    return `file ${this.path}`;
  }

  /** Opens an existing regular file; its current size is the export size. */
  static async open(path: string, opts: FileBackendOptions = {}): Promise<FileBackend> {
    const minimum = opts.minimumBlockSize ?? 1;
    if (!isPowerOfTwoIn(minimum, 1, 65536)) {
      throw new BackendError(`minimum block size ${minimum} is not a power of two in 1..65536`, 'EINVAL');
    }
    const readOnly = opts.readOnly ?? false;
    const st = await fsp.stat(path);
    if (!st.isFile()) throw new BackendError(`${path} is not a regular file`, 'EINVAL');
    if (st.size % minimum !== 0) {
      throw new BackendError(`size of ${path} (${st.size}) is not a multiple of the block size ${minimum}`, 'EINVAL');
    }
    // A raw descriptor: the callback API avoids a promise per request.
    const fd = await new Promise<number>((resolve, reject) =>
      fs.open(path, readOnly ? 'r' : 'r+', (err, fd) => (err ? reject(err) : resolve(fd))),
    );
    return new FileBackend(fd, path, st.size, readOnly, minimum);
  }

  read(offset: number, dst: Buffer): Promise<void> {
    return this.io(fs.read, dst, offset);
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.io(fs.write, data, offset);
    if (fua) await this.flush();
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  trim(): void {
    throw new BackendError('TRIM is not supported by the file backend', 'ENOTSUP');
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    for (let done = 0; done < length;) {
      const n = Math.min(ZERO_CHUNK.length, length - done);
      await this.io(fs.write, ZERO_CHUNK.subarray(0, n), offset + done);
      done += n;
    }
    if (fua) await this.flush();
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** Runs fs.read or fs.write until the whole buffer is transferred (short transfers are retried). */
  private io(op: typeof fs.read | typeof fs.write, buf: Buffer, offset: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = 0;
      const step = (): void => {
        (op as typeof fs.read)(this.fd, buf, done, buf.length - done, offset + done, (err, n) => {
          if (err) return reject(err);
          if (n === 0) {
            const what = op === fs.read ? 'read' : 'write';
            return reject(new BackendError(`short ${what} at ${offset + done} in ${this.path}`, 'EIO'));
          }
          done += n;
          if (done < buf.length) step();
          else resolve();
        });
      };
      step();
    });
  }
}
