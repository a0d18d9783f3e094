// The addon's fd poller (uv_poll): readiness as cb(null, events); a poll that fails is stopped and
// reported once as cb(err) with errno, code and syscall, and pollStop() still frees it.
import * as fs from 'node:fs';
import t from 'tap';
import { tryLoadNative, UV_READABLE, type NativeError } from '../src/native/native.js';

const real = tryLoadNative();

const skip = real ? false : 'native addon not built';

t.test('poller on a socketpair: readable, then a failed poll', { skip }, async (t) => {
  const b = real!;
  const n0 = b.pollCount();
  const [a, peer] = b.socketPair();
  t.teardown(() => b.close(a));
  const calls: { err: NativeError | null; events: number }[] = [];
  let wake: () => void = () => {};
  const poller = b.pollStart(a, UV_READABLE, (err, events) => {
    calls.push({ err, events });
    wake();
  });
  const next = () =>
    new Promise<void>((r) => {
      wake = r;
    });

  fs.writeSync(peer, Buffer.from('x'));
  await next();
  t.same(calls[0], { err: null, events: UV_READABLE }, 'readable: cb(null, UV_READABLE)');
  b.pollStop(poller);
  t.equal(b.pollCount(), n0);
  fs.readSync(a, Buffer.alloc(1));

  // a peer closed with data it never read leaves ECONNRESET on our end: poll reports POLLERR,
  // which libuv passes on as UV_EBADF
  calls.length = 0;
  const p2 = b.pollStart(a, UV_READABLE, (err, events) => {
    calls.push({ err, events });
    wake();
  });
  fs.writeSync(a, Buffer.from('unread'));
  const failed = next();
  b.close(peer);
  await failed;
  t.equal(calls.length, 1);
  t.match(
    calls[0],
    { err: { code: 'EBADF', errno: 9, syscall: 'uv_poll', message: /uv_poll failed/ }, events: 0 },
    'cb(err, 0): an Error with errno, code and syscall',
  );
  t.type(calls[0]!.err, Error);
  await new Promise((r) => setTimeout(r, 50));
  t.equal(calls.length, 1, 'reported once: the poll is stopped');
  t.equal(b.pollCount(), n0 + 1, 'the poller is kept until pollStop()');
  b.pollStop(p2);
  t.equal(b.pollCount(), n0);
});
