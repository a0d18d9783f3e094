// batchNow(): one clock reading per batch of synchronous work, a fresh one after the microtask queue drains.
import t from 'tap';
import { batchNow } from '../src/util/clock.js';

const spin = (ms: number): void => {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    /* let real time pass within the batch */
  }
};

t.test('the same reading within a batch, a new one in the next', async (t) => {
  await new Promise(setImmediate);
  const a = batchNow();
  spin(3);
  t.equal(batchNow(), a, 'later calls in the same batch share the first reading');
  t.ok(performance.now() - a >= 3, 'although real time went on');
  await new Promise(setImmediate);
  const b = batchNow();
  t.ok(b >= a + 3, `the next batch reads the clock again (${a} -> ${b})`);
});

t.test('work queued after the first read (an await) gets a fresh reading', async (t) => {
  await new Promise(setImmediate);
  const a = batchNow();
  spin(2);
  // The expiry was queued as a microtask at the first read, so it runs before this continuation.
  await Promise.resolve();
  t.ok(batchNow() > a, 'a continuation queued after the first read reads the clock again');
});
