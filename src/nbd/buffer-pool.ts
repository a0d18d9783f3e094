/**
 * A pool of buffers in power-of-two size classes, so the data path does not
 * allocate (and the GC does not sweep) a fresh buffer per request.
 *
 * acquire(n) returns a Buffer of exactly n bytes that is a view on a pooled
 * ArrayBuffer; release() hands it back. A released buffer must not be used
 * again by the caller. Sizes below 4 KiB fall through to Buffer.allocUnsafe,
 * whose own slab serves them; from 4 KiB (a 4K read's reply with its header)
 * Node would allocate a fresh ArrayBuffer per request, which the GC then sweeps.
 */
const MIN_POOLED = 4 * 1024;

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Every ArrayBuffer this pool created: only those are ever taken back. */
  private readonly mine = new WeakSet<ArrayBuffer>();
  /** ArrayBuffers sitting in `free`: a second release of the same buffer is ignored. */
  private readonly idle = new WeakSet<ArrayBuffer>();
  private cachedBytes = 0;

  /** @param maxCachedBytes upper bound on idle memory kept for reuse */
  constructor(private readonly maxCachedBytes = 256 * 1024 * 1024) {}

  acquire(n: number): Buffer {
    if (n < MIN_POOLED) return Buffer.allocUnsafe(n);
    const cls = sizeClass(n);
    const ab = this.free.get(cls)?.pop();
    if (ab) {
      this.idle.delete(ab);
      this.cachedBytes -= cls;
      return Buffer.from(ab, 0, n);
    }
    const fresh = new ArrayBuffer(cls);
    this.mine.add(fresh);
    return Buffer.from(fresh, 0, n);
  }

  release(buf: Buffer): void {
    const ab = buf.buffer;
    // Buffers from Buffer.allocUnsafe (small sizes) are not ours: left to the GC.
    if (!(ab instanceof ArrayBuffer) || !this.mine.has(ab) || this.idle.has(ab)) return;
    const cls = ab.byteLength;
    if (this.cachedBytes + cls > this.maxCachedBytes) return;
    let list = this.free.get(cls);
    if (!list) this.free.set(cls, (list = []));
    list.push(ab);
    this.idle.add(ab);
    this.cachedBytes += cls;
  }

  /** Idle bytes held for reuse. */
  get idleBytes(): number {
    return this.cachedBytes;
  }
}

/** Powers of two up to 1 MiB, whole MiB above (a 32 MiB READ plus its header must not take 64 MiB). */
function sizeClass(n: number): number {
  const MiB = 1024 * 1024;
  return n <= MiB ? 2 ** Math.ceil(Math.log2(n)) : Math.ceil(n / MiB) * MiB;
}
