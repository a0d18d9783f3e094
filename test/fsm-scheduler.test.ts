import t from 'tap';
import { RealScheduler, settle, VirtualScheduler } from '../src/fsm/scheduler.js';

t.test('virtual: timers fire in due order, ties in arming order, only when time reaches them', async (t) => {
  const s = new VirtualScheduler();
  const log: string[] = [];
  s.setTimer(30, () => log.push(`c@${s.now()}`), 'c');
  s.setTimer(10, () => log.push(`a@${s.now()}`), 'a');
  s.setTimer(10, () => log.push(`b@${s.now()}`), 'b');
  t.same(s.pendingLabels(), ['a', 'b', 'c']);
  t.equal(s.nextDue(), 10);
  s.advance(9);
  t.same(log, [], 'nothing due before 10 ms');
  t.equal(s.now(), 9);
  s.advance(1);
  t.same(log, ['a@10', 'b@10']);
  s.advance(100);
  t.same(log, ['a@10', 'b@10', 'c@30']);
  t.equal(s.now(), 110, 'time ends at the end of the window');
  t.equal(s.pending, 0);
});

t.test('virtual: cancel, re-arming from a callback, onFire trace', async (t) => {
  const s = new VirtualScheduler();
  const log: string[] = [];
  const fired: string[] = [];
  s.onFire = (label, at) => fired.push(`${label}@${at}`);
  const h = s.setTimer(5, () => log.push('cancelled'), 'x');
  s.cancel(h);
  s.cancel(h); // twice is a no-op
  s.setTimer(
    5,
    () => {
      log.push(`first@${s.now()}`);
      s.setTimer(5, () => log.push(`chained@${s.now()}`), 'chained');
      s.setTimer(100, () => log.push('late'), 'late');
    },
    'first',
  );
  s.advance(10);
  t.same(log, ['first@5', 'chained@10'], 'a timer armed by a callback fires within the same advance when due');
  t.same(fired, ['first@5', 'chained@10']);
  t.equal(s.pending, 1);
  t.throws(() => s.setTimer(-1, () => {}));
  t.throws(() => s.advance(-1));
});

t.test('virtual: advanceAsync lets promises settle between timers', async (t) => {
  const s = new VirtualScheduler();
  const log: string[] = [];
  let resolveP!: () => void;
  const p = new Promise<void>((r) => (resolveP = r));
  p.then(() => p).then(() => log.push(`promise@${s.now()}`));
  s.setTimer(10, () => resolveP(), 'resolve');
  s.setTimer(11, () => log.push(`timer@${s.now()}`), 'next');
  await s.advanceAsync(20);
  t.same(log, ['promise@10', 'timer@11']);
  await settle();
});

t.test('real: setTimer/cancel over setTimeout, monotonic now()', async (t) => {
  const s = new RealScheduler();
  const t0 = s.now();
  const order: number[] = [];
  const done = new Promise<void>((resolve) => {
    s.setTimer(20, () => {
      order.push(2);
      resolve();
    });
  });
  s.setTimer(5, () => order.push(1));
  const h = s.setTimer(10, () => order.push(99));
  s.cancel(h);
  t.equal(s.pending, 2);
  await done;
  t.same(order, [1, 2]);
  t.ok(s.now() - t0 >= 19, 'about 20 ms passed');
  t.equal(s.pending, 0);
});
