/** The transmission phase spoken by hand: every command, every refusal, framing errors, ordering. */
import { spawn } from 'node:child_process';
import type * as net from 'node:net';
import t from 'tap';
import { BackendError } from '../src/nbd/backend.js';
import { encodeRequest } from '../src/nbd/codec.js';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import * as C from '../src/nbd/nbd-constants.js';
import { RawClient, startServer } from './helpers/nbd.js';

const MiB = 1 << 20;

/** A RAM backend whose operations can be held back and failed on demand. */
class SlowBackend extends MemoryBackend {
  delays = new Map<number, number>();
  failNext: Error | undefined;
  override read(offset: number, dst: Buffer): Promise<void> | void {
    const ms = this.delays.get(offset);
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      return Promise.reject(e);
    }
    if (ms === undefined) return super.read(offset, dst);
    return new Promise((r) => setTimeout(() => r(super.read(offset, dst)), ms));
  }
}

const disk = new SlowBackend({ size: 8 * MiB, minimumBlockSize: 512 });
const srv = await startServer({ disk, ro: new MemoryBackend({ size: MiB, readOnly: true }) });
t.teardown(() => srv.close());

async function open(name = 'disk', structured = false): Promise<RawClient> {
  const c = await RawClient.connect(srv.socketPath);
  await c.go(name, structured);
  return c;
}

const pattern = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};

t.test('write, read back, flush, FUA write', async (t) => {
  const c = await open();
  const data = pattern(64 * 1024, 7);
  c.request(C.NBD_CMD_WRITE, 1n, 4096, data.length, 0, data);
  t.same(await c.simpleReply(), { error: 0, cookie: 1n, data: Buffer.alloc(0) });
  c.request(C.NBD_CMD_READ, 2n, 4096, data.length);
  const r = await c.simpleReply(data.length);
  t.equal(r.cookie, 2n);
  t.ok(r.data.equals(data), 'read returns what was written');
  c.request(C.NBD_CMD_FLUSH, 3n, 0, 0);
  t.equal((await c.simpleReply()).error, 0);
  c.request(C.NBD_CMD_WRITE, 4n, 0, 512, C.NBD_CMD_FLAG_FUA, pattern(512, 1));
  t.equal((await c.simpleReply()).error, 0);
  c.close();
});

t.test('trim and write-zeroes (with and without NO_HOLE) read back as zeroes', async (t) => {
  const c = await open();
  for (const [cmd, flags] of [
    [C.NBD_CMD_TRIM, 0],
    [C.NBD_CMD_WRITE_ZEROES, 0],
    [C.NBD_CMD_WRITE_ZEROES, C.NBD_CMD_FLAG_NO_HOLE],
  ] as const) {
    c.request(C.NBD_CMD_WRITE, 1n, MiB - 4096, 3 * MiB, 0, pattern(3 * MiB, 9));
    t.equal((await c.simpleReply()).error, 0);
    c.request(cmd, 2n, MiB - 512, 2 * MiB + 1024, flags);
    t.equal((await c.simpleReply()).error, 0, `${C.nameOfNbdCmd(cmd)} flags ${flags}`);
    c.request(C.NBD_CMD_READ, 3n, MiB - 4096, 3 * MiB);
    const r = (await c.simpleReply(3 * MiB)).data;
    const src = pattern(3 * MiB, 9);
    t.ok(r.subarray(0, 3584).equals(src.subarray(0, 3584)), 'bytes before the range kept');
    t.ok(
      r.subarray(3584, 3584 + 2 * MiB + 1024).every((b) => b === 0),
      'range reads as zeroes',
    );
    t.ok(r.subarray(3584 + 2 * MiB + 1024).equals(src.subarray(3584 + 2 * MiB + 1024)), 'bytes after kept');
  }
  c.close();
});

t.test('structured replies: READ answered by one OFFSET_DATA chunk with DONE; errors as ERROR chunks', async (t) => {
  const c = await open('disk', true);
  const data = pattern(8192, 3);
  c.request(C.NBD_CMD_WRITE, 1n, 8192, 8192, 0, data);
  t.equal((await c.simpleReply()).error, 0, 'non-READ replies stay simple');
  c.request(C.NBD_CMD_READ, 2n, 8192, 8192);
  const ch = await c.structuredChunk();
  t.equal(ch.type, C.NBD_REPLY_TYPE_OFFSET_DATA);
  t.equal(ch.flags, C.NBD_REPLY_FLAG_DONE);
  t.equal(ch.cookie, 2n);
  t.equal(Number(ch.data.readBigUInt64BE(0)), 8192);
  t.ok(ch.data.subarray(8).equals(data));
  c.request(C.NBD_CMD_READ, 3n, 8 * MiB, 512);
  const err = await c.structuredChunk();
  t.equal(err.type, C.NBD_REPLY_TYPE_ERROR);
  t.equal(err.flags, C.NBD_REPLY_FLAG_DONE);
  t.equal(err.data.readUInt32BE(0), C.NBD_EINVAL);
  t.match(err.data.toString('utf8', 6, 6 + err.data.readUInt16BE(4)), /beyond the export size/);
  c.close();
});

t.test('refusals carry the errno the protocol prescribes and the connection goes on', async (t) => {
  const c = await open();
  const cases: [string, () => void, number][] = [
    ['read beyond the end', () => c.request(C.NBD_CMD_READ, 10n, 8 * MiB - 512, 1024), C.NBD_EINVAL],
    ['write beyond the end', () => c.request(C.NBD_CMD_WRITE, 11n, 8 * MiB, 512, 0, Buffer.alloc(512)), C.NBD_ENOSPC],
    ['write-zeroes beyond the end', () => c.request(C.NBD_CMD_WRITE_ZEROES, 12n, 8 * MiB, 512), C.NBD_ENOSPC],
    ['trim beyond the end', () => c.request(C.NBD_CMD_TRIM, 13n, 8 * MiB, 512), C.NBD_EINVAL],
    ['offset past 2^63', () => c.request(C.NBD_CMD_READ, 14n, 0xfffffffffffffe00n, 512), C.NBD_EINVAL],
    ['unaligned offset', () => c.request(C.NBD_CMD_READ, 15n, 100, 512), C.NBD_EINVAL],
    ['unaligned length', () => c.request(C.NBD_CMD_WRITE, 16n, 0, 100, 0, Buffer.alloc(100)), C.NBD_EINVAL],
    ['read longer than 32 MiB', () => c.request(C.NBD_CMD_READ, 17n, 0, 32 * MiB + 512), C.NBD_EINVAL],
    ['zero-length read', () => c.request(C.NBD_CMD_READ, 18n, 0, 0), C.NBD_EINVAL],
    ['unknown command', () => c.request(99, 19n, 0, 512), C.NBD_EINVAL],
    ['NBD_CMD_CACHE not negotiated', () => c.request(C.NBD_CMD_CACHE, 20n, 0, 512), C.NBD_EINVAL],
    ['unknown flag', () => c.request(C.NBD_CMD_READ, 21n, 0, 512, 0x4000), C.NBD_EINVAL],
    [
      'NO_HOLE on a write',
      () => c.request(C.NBD_CMD_WRITE, 22n, 0, 512, C.NBD_CMD_FLAG_NO_HOLE, Buffer.alloc(512)),
      C.NBD_EINVAL,
    ],
    ['DF not negotiated', () => c.request(C.NBD_CMD_READ, 23n, 0, 512, C.NBD_CMD_FLAG_DF), C.NBD_EINVAL],
    ['flush with a length', () => c.request(C.NBD_CMD_FLUSH, 24n, 0, 512), C.NBD_EINVAL],
  ];
  for (const [name, send, errno] of cases) {
    send();
    const r = await c.simpleReply();
    t.equal(r.error, errno, name);
  }
  // the connection still works, and the refused writes changed nothing
  c.request(C.NBD_CMD_READ, 30n, 0, 512);
  const r = await c.simpleReply(512);
  t.equal(r.error, 0);
  t.equal(r.cookie, 30n);
  c.close();
});

t.test('a refused oversized WRITE has its payload skipped, keeping framing', async (t) => {
  const c = await open();
  c.request(C.NBD_CMD_READ, 1n, 0, 4096);
  const before = (await c.simpleReply(4096)).data;
  const big = 32 * MiB + 4096;
  c.request(C.NBD_CMD_WRITE, 2n, 0, big, 0, Buffer.alloc(big, 0xee));
  t.equal((await c.simpleReply()).error, C.NBD_EINVAL);
  c.request(C.NBD_CMD_READ, 3n, 0, 4096);
  const r = await c.simpleReply(4096);
  t.equal(r.cookie, 3n, 'the next request is parsed correctly');
  t.ok(r.data.equals(before), 'no byte of the refused payload reached the disk');
  c.close();
});

t.test('read-only export: writes, trims and zeroes fail with EPERM', async (t) => {
  const c = await open('ro');
  c.request(C.NBD_CMD_WRITE, 1n, 0, 512, 0, Buffer.alloc(512, 1));
  t.equal((await c.simpleReply()).error, C.NBD_EPERM);
  c.request(C.NBD_CMD_TRIM, 2n, 0, 512);
  t.equal((await c.simpleReply()).error, C.NBD_EPERM);
  c.request(C.NBD_CMD_WRITE_ZEROES, 4n, 0, 512);
  t.equal((await c.simpleReply()).error, C.NBD_EPERM);
  c.request(C.NBD_CMD_READ, 3n, 0, 512);
  const r = await c.simpleReply(512);
  t.ok(r.data.every((b) => b === 0));
  c.close();
});

t.test('backend failures are reported with their errno', async (t) => {
  const c = await open();
  disk.failNext = new BackendError('medium error', 'EIO');
  c.request(C.NBD_CMD_READ, 1n, 0, 512);
  t.equal((await c.simpleReply()).error, C.NBD_EIO);
  c.request(C.NBD_CMD_READ, 2n, 0, 512);
  t.equal((await c.simpleReply(512)).error, 0);
  c.close();
});

t.test('ENOTSUP from the backend is answered EINVAL: NBD_ENOTSUP is for FAST_ZERO, never negotiated', async (t) => {
  const c = await open();
  disk.failNext = new BackendError('not supported here', 'ENOTSUP');
  c.request(C.NBD_CMD_READ, 0x0102030405060708n, 0, 512);
  const golden = Buffer.from('67446698' + '00000016' + '0102030405060708', 'hex');
  t.same(await c.reader.read(16), golden, 'simple reply, error 22');
  disk.failNext = Object.assign(new Error('operation not supported'), { code: 'EOPNOTSUPP' });
  c.request(C.NBD_CMD_READ, 2n, 0, 512);
  t.equal((await c.simpleReply()).error, C.NBD_EINVAL, 'a Node-style error with EOPNOTSUPP too');
  c.close();

  const s = await open('disk', true);
  disk.failNext = new BackendError('nope', 'ENOTSUP');
  s.request(C.NBD_CMD_READ, 3n, 0, 512);
  // magic, flags DONE, type ERROR, cookie, length 10; error 22, message length 4, "nope"
  const chunk = '668e33ef' + '0001' + '8001' + '0000000000000003' + '0000000a' + '00000016' + '0004' + '6e6f7065';
  t.same(await s.reader.read(20 + 10), Buffer.from(chunk, 'hex'), 'structured error chunk, error 22, the message');
  s.close();
});

t.test('many requests in flight complete out of order, each answered once', async (t) => {
  const c = await open();
  disk.delays.set(0, 150);
  disk.delays.set(4096, 50);
  c.request(C.NBD_CMD_READ, 100n, 0, 512);
  c.request(C.NBD_CMD_READ, 101n, 4096, 512);
  for (let i = 0; i < 64; i++) c.request(C.NBD_CMD_READ, 200n + BigInt(i), 8192 + i * 512, 512);
  const order: bigint[] = [];
  for (let i = 0; i < 66; i++) order.push((await c.simpleReply(512)).cookie);
  disk.delays.clear();
  t.equal(new Set(order).size, 66, 'every request answered exactly once');
  t.equal(order[64], 101n, 'the 50 ms read finished second to last');
  t.equal(order[65], 100n, 'the 150 ms read finished last');
  c.close();
});

t.test('a small READ the backend answers later carries its data, and so do the ones after it', async (t) => {
  const at = 6 * MiB; // a block no other test writes; the one after it stays zero
  const c = await open();
  const data = pattern(4096, 21);
  c.request(C.NBD_CMD_WRITE, 1n, at, 4096, 0, data);
  t.equal((await c.simpleReply()).error, 0);
  c.close();
  const d = await open(); // a fresh connection: its first small READ is tried in the reply slab
  disk.delays.set(at, 30);
  d.request(C.NBD_CMD_READ, 2n, at, 4096);
  d.request(C.NBD_CMD_READ, 3n, at + 4096, 512);
  d.request(C.NBD_CMD_READ, 4n, at, 4096);
  const replies = new Map<bigint, Buffer>();
  // Replies may come in any order: the header says whose data follows.
  for (let i = 0; i < 3; i++) {
    const h = await d.reader.read(16);
    t.equal(h.readUInt32BE(0), C.NBD_SIMPLE_REPLY_MAGIC);
    const cookie = h.readBigUInt64BE(8);
    replies.set(cookie, await d.reader.read(cookie === 3n ? 512 : 4096));
  }
  disk.delays.clear();
  t.ok(replies.get(2n)!.equals(data), 'the delayed READ');
  t.ok(replies.get(4n)!.equals(data), 'a later READ of the same block');
  t.ok(replies.get(3n)!.equals(Buffer.alloc(512)), 'an untouched block reads as zeroes');
  d.close();
});

t.test('NBD_CMD_DISC: in-flight requests are answered, then the server closes', async (t) => {
  const c = await open();
  disk.delays.set(0, 100);
  c.request(C.NBD_CMD_READ, 1n, 0, 512);
  c.request(C.NBD_CMD_DISC, 2n, 0, 0);
  const r = await c.simpleReply(512);
  disk.delays.clear();
  t.equal(r.cookie, 1n);
  t.ok(await c.reader.closed());
});

t.test('wrong request magic: clean disconnect after answering what was in flight', async (t) => {
  const c = await open();
  c.request(C.NBD_CMD_READ, 1n, 0, 512);
  c.write(Buffer.alloc(28, 0x55));
  t.equal((await c.simpleReply(512)).cookie, 1n);
  t.ok(await c.reader.closed());
});

t.test('a burst of huge READs from a client that never reads replies stays within the memory budget', async (t) => {
  const c = await open();
  c.socket.pause(); // never read a reply
  const before = process.memoryUsage().arrayBuffers;
  const burst = Buffer.concat(
    Array.from({ length: 200 }, (_, i) => encodeRequest(C.NBD_CMD_READ, 0, BigInt(i), 0, 8 * MiB)),
  );
  c.write(burst); // 1.6 GB of reads asked for in 5.6 KB
  await new Promise((r) => setTimeout(r, 1500));
  const grown = process.memoryUsage().arrayBuffers - before;
  t.ok(grown < 300 * MiB, `buffers grew by ${(grown / MiB).toFixed(0)} MiB, not 1.6 GB`);
  c.close();
});

t.test('replies held back by a client that stops reading come out intact once it reads again', async (t) => {
  const c = await open();
  c.socket.pause();
  // 40,000 replies: far more than the socket takes at once or one reply slab holds.
  const n = 40_000;
  c.write(Buffer.concat(Array.from({ length: n }, (_, i) => encodeRequest(C.NBD_CMD_FLUSH, 0, BigInt(i), 0, 0))));
  await new Promise((r) => setTimeout(r, 500));
  c.socket.resume();
  const cookies = new Set<bigint>();
  let errors = 0;
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply(); // throws on a bad magic
    if (r.error !== 0) errors++;
    cookies.add(r.cookie);
  }
  t.equal(errors, 0);
  t.equal(cookies.size, n, 'every request answered exactly once');
  t.ok(
    [...cookies].every((k) => k < BigInt(n)),
    'no cookie that was never sent',
  );
  c.close();
});

t.test('a client vanishing mid-payload disturbs nobody else', async (t) => {
  const other = await open();
  const c = await open();
  c.request(C.NBD_CMD_WRITE, 1n, 0, MiB, 0, Buffer.alloc(1000));
  await new Promise((r) => setTimeout(r, 20));
  c.close();
  other.request(C.NBD_CMD_READ, 5n, 0, 512);
  t.equal((await other.simpleReply(512)).error, 0);
  other.close();
});

t.test('headers and payloads split at every offset are reassembled', async (t) => {
  const c = await open();
  const data = pattern(1024, 5);
  const frame = Buffer.concat([
    Buffer.from('25609513000000010000000000000001000000000000200000000400', 'hex'),
    data,
    Buffer.from('25609513000000000000000000000002000000000000200000000400', 'hex'),
  ]);
  for (let cut = 1; cut < frame.length; cut += 37) {
    c.write(frame.subarray(0, cut));
    await new Promise((r) => setImmediate(r));
    c.write(frame.subarray(cut));
    t.equal((await c.simpleReply()).cookie, 1n);
    const r = await c.simpleReply(1024);
    t.equal(r.cookie, 2n);
    t.ok(r.data.equals(data), `cut at ${cut}`);
  }
  c.close();
});

t.test('transmission-only mode on an inherited socketpair fd (as after kernel NBD CONNECT)', async (t) => {
  const child = spawn(process.execPath, [new URL('./helpers/fd-server.js', import.meta.url).pathname], {
    stdio: ['ignore', 'pipe', 'inherit', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  const c = RawClient.over(child.stdio[3] as net.Socket);
  const data = pattern(4096, 11);
  c.request(C.NBD_CMD_WRITE, 7n, 4096, 4096, 0, data);
  t.equal((await c.simpleReply()).error, 0, 'no handshake: the first bytes are a request');
  c.request(C.NBD_CMD_READ, 8n, 4096, 4096);
  t.ok((await c.simpleReply(4096)).data.equals(data));
  c.request(C.NBD_CMD_DISC, 9n, 0, 0);
  const code = await new Promise((r) => child.on('exit', r));
  t.equal(code, 0);
  t.equal(out, 'closed 3 requests\n');
});
