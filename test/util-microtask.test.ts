// microtaskRunner(): queueMicrotask() without an AsyncResource per call, same order, same uncaught errors.
import t from 'tap';
import { microtaskRunner } from '../src/util/microtask.js';

t.test('runs after the synchronous code, in FIFO order with other microtasks', async (t) => {
  const seen: string[] = [];
  const run = microtaskRunner(() => seen.push('runner'));
  queueMicrotask(() => seen.push('before'));
  run();
  queueMicrotask(() => seen.push('after'));
  seen.push('sync');
  await new Promise(setImmediate);
  t.same(seen, ['sync', 'before', 'runner', 'after']);
});

t.test('each call queues one run', async (t) => {
  let n = 0;
  const run = microtaskRunner(() => n++);
  run();
  run();
  t.equal(n, 0, 'nothing runs synchronously');
  await new Promise(setImmediate);
  t.equal(n, 2);
});

t.test('an exception is an uncaught exception, not an unhandled rejection', async (t) => {
  const boom = new Error('boom');
  const caught = new Promise<unknown>((resolve) => {
    const listeners = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    process.once('uncaughtException', (err) => {
      for (const l of listeners) process.on('uncaughtException', l);
      resolve(err);
    });
  });
  let rejections = 0;
  const onRejection = (): void => {
    rejections++;
  };
  process.on('unhandledRejection', onRejection);
  microtaskRunner(() => {
    throw boom;
  })();
  t.equal(await caught, boom, 'the very error reaches uncaughtException');
  await new Promise(setImmediate);
  process.off('unhandledRejection', onRejection);
  t.equal(rejections, 0, 'no unhandled rejection');
});
