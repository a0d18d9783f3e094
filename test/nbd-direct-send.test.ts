/**
 * Replies sent straight on the socket's fd (the addon's sendv) rather than through the socket's
 * stream: the addon call itself, a connection whose sends come up short or find the socket full at
 * every turn, a peer gone mid-send, and the stream-only mode (no addon) against the same workload.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import t, { type Test } from 'tap';
import { encodeRequest } from '../src/nbd/codec.js';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import * as C from '../src/nbd/nbd-constants.js';
import { loadNative } from '../src/native/native.js';
import type { NbdServerOptions } from '../src/nbd/server.js';
import { RawClient, startServer } from './helpers/nbd.js';

const native = loadNative();
const MiB = 1 << 20;
type SendV = NonNullable<NbdServerOptions['sendv']>;

const overUnix = (path: string) => () => RawClient.connect(path);
const overTcp = (port: number) => async (): Promise<RawClient> => {
  const s = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  return RawClient.over(s);
};

const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 7 + (i >> 9)) & 0xff;
  return b;
};

t.test('sendv: one gathered send, -1 when the socket is full, EPIPE (not SIGPIPE) once the peer is gone', async (t) => {
  const [a, b] = native.socketPair();
  try {
    const parts = [Buffer.from('head'), Buffer.alloc(0), Buffer.from('-body-'), Buffer.from('tail')];
    t.equal(native.sendv(a, parts, 0, parts.length), 14);
    t.equal(native.sendv(a, parts, 2, 1), 6, 'start and count pick the buffers');
    const got = Buffer.alloc(64);
    t.equal(fs.readSync(b, got, 0, 64, null), 20);
    t.equal(got.subarray(0, 20).toString(), 'head-body-tail-body-');

    // Fill the socket: sendv never blocks, it answers -1 (EAGAIN) instead.
    const chunk = [Buffer.alloc(64 * 1024, 1)];
    let sent = 0;
    let n: number;
    while ((n = native.sendv(a, chunk, 0, 1)) > 0) sent += n;
    t.equal(n, -1, 'full socket answers -1');
    t.ok(sent > 0, `${sent} bytes taken before it filled`);

    // More buffers than IOV_MAX: one call sends at most the first IOV_MAX of them.
    let drained = 0;
    const sink = Buffer.alloc(MiB);
    while (drained < sent) drained += fs.readSync(b, sink, 0, sink.length, null);
    const many = Array.from({ length: 1500 }, () => Buffer.from('x'));
    t.equal(native.sendv(a, many, 0, many.length), 1024, 'capped at IOV_MAX buffers');

    t.throws(() => native.sendv(a, many, 1400, 200), /beyond/, 'start/count checked against the array');
    t.throws(() => native.sendv(a, ['x' as unknown as Buffer], 0, 1), /Buffers/, 'non-Buffer refused');
  } finally {
    native.close(b);
  }
  t.throws(() => native.sendv(a, [Buffer.from('late')], 0, 1), { code: 'EPIPE', syscall: 'sendmsg' });
  native.close(a);
});

/**
 * A mixed workload on one connection with many requests in flight: WRITEs of assorted sizes,
 * READs answered with simple or structured replies, FLUSHes; every reply is checked byte for byte.
 */
async function workload(t: Test, connect: () => Promise<RawClient>, structured: boolean): Promise<void> {
  const c = await connect();
  await c.go('disk', structured);
  const sizes = [512, 4096, 65536, 300 * 1024, 4096, 1024 * 1024, 512];
  // Write each region, then ask for everything back at once.
  let cookie = 1n;
  const expected = new Map<bigint, Buffer>();
  let offset = 0;
  for (const [i, n] of sizes.entries()) {
    c.request(C.NBD_CMD_WRITE, cookie++, offset, n, 0, pattern(n, i));
    offset += n;
  }
  for (let i = 0; i < sizes.length; i++) t.equal((await c.simpleReply()).error, 0);
  offset = 0;
  const burst: Buffer[] = [];
  for (const [i, n] of sizes.entries()) {
    expected.set(cookie, pattern(n, i));
    burst.push(encodeRequest(C.NBD_CMD_READ, 0, cookie++, offset, n));
    burst.push(encodeRequest(C.NBD_CMD_FLUSH, 0, cookie++, 0, 0));
    offset += n;
  }
  c.write(Buffer.concat(burst));
  let reads = 0;
  let flushes = 0;
  for (let i = 0; i < burst.length; i++) {
    // The server answers in completion order; this one completes in request order.
    const want = expected.get(cookie - BigInt(burst.length) + BigInt(i));
    if (want) {
      if (structured) {
        const ch = await c.structuredChunk();
        t.equal(ch.type, C.NBD_REPLY_TYPE_OFFSET_DATA);
        t.equal(ch.flags, C.NBD_REPLY_FLAG_DONE);
        if (!ch.data.subarray(8).equals(want)) t.fail(`READ of ${want.length} bytes came back different`);
      } else {
        const r = await c.simpleReply(want.length);
        if (!r.data.equals(want)) t.fail(`READ of ${want.length} bytes came back different`);
      }
      reads++;
    } else {
      t.equal((await c.simpleReply()).error, 0);
      flushes++;
    }
  }
  t.equal(reads, sizes.length, 'every READ answered with its data');
  t.equal(flushes, sizes.length, 'every FLUSH answered');
  c.close();
}

t.test('every reply goes out through sendv when the addon is there', async (t) => {
  let calls = 0;
  let bytes = 0;
  let refused = 0;
  const counting: SendV = (fd, bufs, start, count) => {
    calls++;
    const n = native.sendv(fd, bufs, start, count);
    if (n > 0) bytes += n;
    let offered = 0;
    for (let i = start; i < start + count; i++) offered += bufs[i]!.length;
    if (n < offered) refused++; // the socket took less than offered (short send, or -1)
    return n;
  };
  const srv = await startServer({ disk: new MemoryBackend({ size: 8 * MiB }) }, { sendv: counting });
  t.teardown(() => srv.close());
  for (const connect of [overUnix(srv.socketPath), overTcp(srv.port)]) {
    for (const structured of [false, true]) await workload(t, connect, structured);
    // One READ at a time: the socket never fills, so every byte of every reply goes directly.
    const c = await connect();
    await c.go('disk');
    const before = bytes;
    for (let i = 0; i < 50; i++) {
      c.request(C.NBD_CMD_READ, BigInt(i), i * 4096, 4096);
      t.equal((await c.simpleReply(4096)).error, 0);
    }
    t.equal(bytes - before, 50 * (16 + 4096), '50 READ replies, all sent through sendv');
    c.close();
  }
  t.ok(calls >= 100, `${calls} sendv calls`);

  // A client that stops reading: the socket fills under sendv, the rest goes through the stream.
  const c = await overUnix(srv.socketPath)();
  await c.go('disk');
  c.socket.pause();
  const before = refused;
  const n = 200;
  c.write(
    Buffer.concat(Array.from({ length: n }, (_, i) => encodeRequest(C.NBD_CMD_READ, 0, BigInt(i), i * 4096, 4096))),
  );
  await new Promise((r) => setTimeout(r, 300));
  t.ok(refused > before, 'the socket itself took less than offered');
  c.socket.resume();
  // A RAM export answers READs as they come, so in request order.
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply(4096);
    if (r.error !== 0 || r.cookie !== BigInt(i)) t.fail(`reply ${i}: error ${r.error}, cookie ${r.cookie}`);
  }
  t.pass(`${n} READ replies of 4 KiB in order after the socket filled`);
  c.close();
});

t.test('short sends and a full socket at every turn: the rest leaves through the stream, in order', async (t) => {
  // Deterministic "random": every call sends a prefix of a different length, or nothing.
  let seed = 12345;
  const next = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  let short = 0;
  let full = 0;
  const stingy: SendV = (fd, bufs, start, count) => {
    const r = next() % 4;
    if (r === 0) {
      full++;
      return -1;
    }
    // Send at most a few bytes more than the first buffer, sometimes cutting inside a header.
    const first = bufs[start]!;
    const limit = r === 1 ? 1 + (next() % 15) : first.length + (next() % 40);
    const take: Buffer[] = [];
    let left = limit;
    for (let i = start; i < start + count && left > 0; i++) {
      const b = bufs[i]!.subarray(0, left);
      take.push(b);
      left -= b.length;
    }
    const n = native.sendv(fd, take, 0, take.length);
    if (n >= 0) short++;
    return n;
  };
  const srv = await startServer({ disk: new MemoryBackend({ size: 8 * MiB }) }, { sendv: stingy });
  t.teardown(() => srv.close());
  for (const structured of [false, true]) await workload(t, overUnix(srv.socketPath), structured);
  t.ok(short > 0 && full > 0, `${short} short sends, ${full} full-socket answers`);

  // Many small replies while the client is not reading: the socket fills for real.
  const c = await RawClient.connect(srv.socketPath);
  await c.go('disk');
  c.socket.pause();
  const n = 20_000;
  c.write(Buffer.concat(Array.from({ length: n }, (_, i) => encodeRequest(C.NBD_CMD_FLUSH, 0, BigInt(i), 0, 0))));
  await new Promise((r) => setTimeout(r, 300));
  c.socket.resume();
  const seen = new Set<bigint>();
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply();
    if (r.error === 0) seen.add(r.cookie);
  }
  t.equal(seen.size, n, 'every FLUSH answered once, no frame torn');
  c.close();
});

t.test('a peer that vanishes while replies are being sent: its connection ends, the server serves on', async (t) => {
  let broke = 0;
  const failing: SendV = (fd, bufs, start, count) => {
    // The first send holding a 1 MiB READ reply meets a dead peer.
    if (bufs.slice(start, start + count).some((b) => b.length === MiB) && broke++ === 0) {
      throw Object.assign(new Error('sendmsg failed: Broken pipe (EPIPE)'), {
        code: 'EPIPE',
        errno: 32,
        syscall: 'sendmsg',
      });
    }
    return native.sendv(fd, bufs, start, count);
  };
  const srv = await startServer({ disk: new MemoryBackend({ size: 8 * MiB }) }, { sendv: failing });
  t.teardown(() => srv.close());
  const victim = await RawClient.connect(srv.socketPath);
  await victim.go('disk');
  const closed = new Promise<void>((r) => victim.socket.once('close', () => r()));
  victim.request(C.NBD_CMD_READ, 1n, 0, MiB);
  await closed;
  t.equal(broke, 1, 'the send failed');
  await workload(t, overUnix(srv.socketPath), true);
  for (let i = 0; i < 100 && srv.server.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(srv.server.connectionCount, 0, 'both connections gone, nothing leaked');
});

t.test('without the addon (sendv: null) the same workload goes through the socket stream', async (t) => {
  const srv = await startServer({ disk: new MemoryBackend({ size: 8 * MiB }) }, { sendv: null });
  t.teardown(() => srv.close());
  for (const connect of [overUnix(srv.socketPath), overTcp(srv.port)]) {
    for (const structured of [false, true]) await workload(t, connect, structured);
  }
});
