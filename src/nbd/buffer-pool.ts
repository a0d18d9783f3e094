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

/** Marks this pool leaves on the ArrayBuffers it creates. */
const OWNER = Symbol('BufferPool owner');
const IDLE = Symbol('BufferPool idle');

/**
 * An ArrayBuffer of a pool: which pool made it and whether it sits in the pool's free list. Own
 * properties of the buffer, read with one inline-cached load each: the data path acquires and
 * releases a buffer per request, and WeakSet lookups there showed in the daemon's CPU profile.
 */
interface PooledArrayBuffer extends ArrayBuffer {
  [OWNER]?: BufferPool;
  [IDLE]?: boolean;
}

export class BufferPool {
  /**
   * Idle buffers per size class. Each is a view from offset 0 of a pooled ArrayBuffer, kept as
   * it was released, so a request of the same length (the common case: every 4K read's reply)
   * gets the very Buffer object back instead of a new view.
   */
  private readonly free = new Map<number, Buffer[]>();
  private cachedBytes = 0;

  /** @param maxCachedBytes upper bound on idle memory kept for reuse */
  constructor(private readonly maxCachedBytes = 256 * 1024 * 1024) {}

  acquire(n: number): Buffer {
    if (n < MIN_POOLED) return Buffer.allocUnsafe(n);
    const cls = sizeClass(n);
    const idle = this.free.get(cls)?.pop();
    if (idle) {
      const ab = idle.buffer as PooledArrayBuffer;
      ab[IDLE] = false;
      this.cachedBytes -= cls;
      return idle.length === n ? idle : Buffer.from(ab, 0, n);
    }
    const fresh: PooledArrayBuffer = new ArrayBuffer(cls);
    fresh[OWNER] = this;
    fresh[IDLE] = false;
    return Buffer.from(fresh, 0, n);
  }

  release(buf: Buffer): void {
    const ab = buf.buffer as PooledArrayBuffer;
    // Buffers from Buffer.allocUnsafe (small sizes) are not ours: left to the GC.
    if (ab[OWNER] !== this || ab[IDLE] === true) return;
    const cls = ab.byteLength;
    if (this.cachedBytes + cls > this.maxCachedBytes) return;
    let list = this.free.get(cls);
    if (!list) this.free.set(cls, (list = []));
    list.push(buf.byteOffset === 0 ? buf : Buffer.from(ab, 0, cls));
    ab[IDLE] = true;
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
  // n >= MIN_POOLED here: 2 ** ceil(log2(n)) without floating point
  return n <= MiB ? 2 ** (32 - Math.clz32(n - 1)) : Math.ceil(n / MiB) * MiB;
}
