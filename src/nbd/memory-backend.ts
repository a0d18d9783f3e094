/**
 * A RAM export: sparse 1 MiB pages allocated on first write, so a large
 * export costs only what is written. Reads of untouched pages return zeroes,
 * TRIM drops whole pages and zeroes partial ones, and WRITE payloads are
 * received straight into the page (writeTarget) when they fit in one page.
 */
import { type Backend, type BlockSizeConstraints, BackendError, isPowerOfTwoIn } from './backend.js';
import { NBD_MAX_REQUEST_SIZE } from './nbd-constants.js';

const PAGE_SHIFT = 20;
const PAGE_SIZE = 1 << PAGE_SHIFT;
/** What an unallocated page reads as; only ever sent, never written. */
const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);

export interface MemoryBackendOptions {
  size: number;
  readOnly?: boolean;
  /** Minimum block size to advertise and enforce (default 1). */
  minimumBlockSize?: number;
  description?: string;
}

export class MemoryBackend implements Backend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: BlockSizeConstraints;
  readonly description: string;
  readonly canFlush = true;
  readonly canFua = true;
  readonly canTrim = true;
  readonly canWriteZeroes = true;
  readonly canMultiConn = true;
  private readonly pages: (Buffer | undefined)[];

  constructor(opts: MemoryBackendOptions) {
    if (!Number.isSafeInteger(opts.size) || opts.size < 0) {
      throw new BackendError(`memory export size ${opts.size} is not a non-negative integer`, 'EINVAL');
    }
    const minimum = opts.minimumBlockSize ?? 1;
    if (!isPowerOfTwoIn(minimum, 1, 65536)) {
      throw new BackendError(`minimum block size ${minimum} is not a power of two in 1..65536`, 'EINVAL');
    }
    if (opts.size % minimum !== 0) {
      throw new BackendError(
        `memory export size ${opts.size} is not a multiple of the block size ${minimum}`,
        'EINVAL',
      );
    }
    this.size = opts.size;
    this.readOnly = opts.readOnly ?? false;
    this.blockSize = { minimum, preferred: Math.max(4096, minimum), maximum: NBD_MAX_REQUEST_SIZE };
    this.description = opts.description ?? `RAM export of ${opts.size} bytes`;
    this.pages = new Array<Buffer | undefined>(Math.ceil(opts.size / PAGE_SIZE));
  }

  /** Bytes of RAM currently allocated to pages. */
  get allocatedBytes(): number {
    let n = 0;
    for (const p of this.pages) if (p) n += PAGE_SIZE;
    return n;
  }

  read(offset: number, dst: Buffer): void {
    let done = 0;
    while (done < dst.length) {
      const pos = offset + done;
      const index = Math.floor(pos / PAGE_SIZE);
      const inPage = pos % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - inPage, dst.length - done);
      const page = this.pages[index];
      if (page) page.copy(dst, done, inPage, inPage + n);
      else dst.fill(0, done, done + n);
      done += n;
    }
  }

  readView(offset: number, length: number): Buffer | undefined {
    const inPage = offset % PAGE_SIZE;
    if (inPage + length > PAGE_SIZE) return undefined;
    const page = this.pages[Math.floor(offset / PAGE_SIZE)];
    return (page ?? ZERO_PAGE).subarray(inPage, inPage + length);
  }

  writeTarget(offset: number, length: number): Buffer | undefined {
    const inPage = offset % PAGE_SIZE;
    if (inPage + length > PAGE_SIZE) return undefined;
    return this.page(Math.floor(offset / PAGE_SIZE)).subarray(inPage, inPage + length);
  }

  write(offset: number, data: Buffer): void {
    const inPage = offset % PAGE_SIZE;
    const page = this.pages[Math.floor(offset / PAGE_SIZE)];
    // Already in place: the payload was received through writeTarget().
    if (page && data.buffer === page.buffer && data.byteOffset === page.byteOffset + inPage) return;
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const at = pos % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - at, data.length - done);
      data.copy(this.page(Math.floor(pos / PAGE_SIZE)), at, done, done + n);
      done += n;
    }
  }

  flush(): void {}

  trim(offset: number, length: number): void {
    this.zero(offset, length, false);
  }

  writeZeroes(offset: number, length: number, _fua: boolean, noHole: boolean): void {
    this.zero(offset, length, noHole);
  }

  /** Zeroes a range; whole pages are dropped unless `keepAllocated`. */
  private zero(offset: number, length: number, keepAllocated: boolean): void {
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const index = Math.floor(pos / PAGE_SIZE);
      const at = pos % PAGE_SIZE;
      const n = Math.min(PAGE_SIZE - at, end - pos);
      const page = this.pages[index];
      if (n === PAGE_SIZE && !keepAllocated) this.pages[index] = undefined;
      else if (page) page.fill(0, at, at + n);
      else if (keepAllocated) this.page(index);
      pos += n;
    }
  }

  private page(index: number): Buffer {
    let p = this.pages[index];
    if (!p) {
      // The last page may extend past the export end; the server never addresses that tail.
      p = Buffer.alloc(PAGE_SIZE);
      this.pages[index] = p;
    }
    return p;
  }
}
