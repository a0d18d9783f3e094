/**
 * The NBD server's buffer pool: reply and payload buffers of 4 KiB and more are reused (a 4K read's
 * reply, 4 KiB + the reply header, must not cost a fresh ArrayBuffer and its collection per request);
 * smaller ones come from Node's own slab.
 */
import t from 'tap';
import { BufferPool } from '../src/nbd/buffer-pool.js';

t.test('a 4K read reply is pooled and reused after release', async (t) => {
  const pool = new BufferPool();
  const a = pool.acquire(4096 + 16);
  t.equal(a.length, 4112);
  t.equal(a.buffer.byteLength, 8192, 'power-of-two size class');
  pool.release(a);
  t.equal(pool.idleBytes, 8192);
  const b = pool.acquire(4100);
  t.equal(b.buffer, a.buffer, 'the same ArrayBuffer again');
  t.equal(b.length, 4100);
  t.equal(pool.idleBytes, 0);
  pool.release(b);
  const c = pool.acquire(4100);
  t.equal(c, b, 'the same length again: the very Buffer released, no new view');
  pool.release(c.subarray(100));
  t.equal(pool.idleBytes, 8192, 'a view at an offset releases its whole ArrayBuffer');
  const d = pool.acquire(8192);
  t.equal(d.buffer, a.buffer);
  t.equal(d.byteOffset, 0, 'handed out from the start');
  t.equal(d.length, 8192);
});

t.test('below 4 KiB: Node slab buffers, never taken into the pool', async (t) => {
  const pool = new BufferPool();
  const small = pool.acquire(512);
  t.equal(small.length, 512);
  pool.release(small);
  t.equal(pool.idleBytes, 0, 'a slab buffer is left to the GC');
  pool.release(Buffer.alloc(65536));
  t.equal(pool.idleBytes, 0, 'a buffer the pool did not make is not taken');
});

t.test('double release is ignored; idle memory is bounded', async (t) => {
  const pool = new BufferPool(16384);
  const a = pool.acquire(8192);
  pool.release(a);
  pool.release(a);
  t.equal(pool.idleBytes, 8192, 'released once');
  const x = pool.acquire(8192);
  const y = pool.acquire(8192);
  const z = pool.acquire(8192);
  t.not(x.buffer, y.buffer);
  pool.release(x);
  pool.release(y);
  pool.release(z);
  t.equal(pool.idleBytes, 16384, 'the third is dropped: at most maxCachedBytes kept');
});

t.test('size classes: powers of two up to 1 MiB, whole MiB above', async (t) => {
  const pool = new BufferPool();
  t.equal(pool.acquire(1024 * 1024 + 16).buffer.byteLength, 2 * 1024 * 1024);
  t.equal(pool.acquire(32 * 1024 * 1024 + 16).buffer.byteLength, 33 * 1024 * 1024);
  t.equal(pool.acquire(300 * 1024).buffer.byteLength, 512 * 1024);
});
