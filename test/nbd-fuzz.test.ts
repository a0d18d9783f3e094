/**
 * Fuzzing the server with hostile input: more than 100,000 random and
 * mutated frames in the handshake and transmission phases, over many
 * connections, then checks that a well-behaved client is still served
 * correctly and that no connection was leaked.
 */
import * as net from 'node:net';
import t from 'tap';
import { encodeInfoRequest, encodeOption, encodeRequest } from '../src/nbd/codec.js';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import * as C from '../src/nbd/nbd-constants.js';
import { RawClient, startServer } from './helpers/nbd.js';

const MiB = 1 << 20;
const srv = await startServer({ disk: new MemoryBackend({ size: 16 * MiB, minimumBlockSize: 512 }) });
t.teardown(() => srv.close());

/** mulberry32: a small seeded PRNG so failures reproduce. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}
const rnd = prng(0x5eed);
const int = (n: number): number => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

/** A plausible request, then 0-3 random byte mutations anywhere in it. */
function mutatedRequest(): Buffer {
  const type = pick([
    C.NBD_CMD_READ,
    C.NBD_CMD_WRITE,
    C.NBD_CMD_FLUSH,
    C.NBD_CMD_TRIM,
    C.NBD_CMD_WRITE_ZEROES,
    C.NBD_CMD_CACHE,
    9,
    0xffff,
  ]);
  const length = pick([0, 512, 4096, 1000, 65536, 16 * MiB + 512]);
  const offset = pick([0, 512, 16 * MiB - 512, 16 * MiB, 2 ** 40, 777]);
  const flags = pick([0, 0, C.NBD_CMD_FLAG_FUA, C.NBD_CMD_FLAG_NO_HOLE, C.NBD_CMD_FLAG_DF, 0xffff]);
  const payload = type === C.NBD_CMD_WRITE ? Buffer.alloc(Math.min(length, 65536), int(256)) : Buffer.alloc(0);
  const frame = Buffer.concat([encodeRequest(type, flags, BigInt(int(2 ** 30)), offset, length), payload]);
  for (let m = int(4); m > 0; m--) frame[int(frame.length)] = int(256);
  return frame;
}

function mutatedOption(): Buffer {
  const opt = pick([
    C.NBD_OPT_GO,
    C.NBD_OPT_INFO,
    C.NBD_OPT_LIST,
    C.NBD_OPT_STRUCTURED_REPLY,
    C.NBD_OPT_EXPORT_NAME,
    C.NBD_OPT_ABORT,
    0x1234,
  ]);
  const data =
    opt === C.NBD_OPT_GO || opt === C.NBD_OPT_INFO
      ? encodeInfoRequest(pick(['', 'disk', 'nope']), [int(5)])
      : Buffer.alloc(int(3));
  const frame = encodeOption(opt, data);
  for (let m = int(3); m > 0; m--) frame[int(frame.length)] = int(256);
  return frame;
}

/** Sends `frames` on a fresh connection (after `preamble`), half-closes, and waits for the server to close. */
async function blast(preamble: Buffer, frames: Buffer[]): Promise<void> {
  const s = net.connect(srv.socketPath);
  s.resume(); // replies are read and discarded
  s.on('error', () => {});
  await new Promise<void>((r) => s.once('connect', r));
  s.write(Buffer.concat([preamble, ...frames]));
  s.end();
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      s.destroy();
      resolve();
    }, 15_000);
    s.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

const clientFlags = Buffer.from([0, 0, 0, C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES]);
const go = Buffer.concat([clientFlags, encodeOption(C.NBD_OPT_GO, encodeInfoRequest('disk', []))]);

t.test('100,000+ hostile frames do not crash the server', async (t) => {
  let frames = 0;
  // Transmission phase: mutated requests in batches, several connections at a time.
  while (frames < 100_000) {
    const batches = Array.from({ length: 4 }, () => Array.from({ length: 500 }, mutatedRequest));
    await Promise.all(batches.map((b) => blast(go, b)));
    frames += 2000;
  }
  // Handshake phase: mutated options, and pure garbage, on fresh connections.
  for (let i = 0; i < 1000; i++) {
    await Promise.all([
      blast(clientFlags, Array.from({ length: 10 }, mutatedOption)),
      blast(Buffer.alloc(0), [Buffer.from(Array.from({ length: 1 + int(64) }, () => int(256)))]),
      blast(
        go,
        Array.from({ length: 8 }, () => Buffer.from(Array.from({ length: 28 }, () => int(256)))),
      ),
    ]);
    frames += 19;
  }
  t.ok(frames >= 100_000, `${frames} frames sent`);
  // give the server a moment to finish closing
  for (let i = 0; i < 100 && srv.server.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(srv.server.connectionCount, 0, 'no connection leaked');
});

t.test('afterwards a good client is served correctly', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  const { size } = await c.go('disk');
  t.equal(size, 16 * MiB);
  const data = Buffer.alloc(64 * 1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  c.request(C.NBD_CMD_WRITE, 1n, MiB, data.length, 0, data);
  t.equal((await c.simpleReply()).error, 0);
  c.request(C.NBD_CMD_READ, 2n, MiB, data.length);
  const r = await c.simpleReply(data.length);
  t.equal(r.cookie, 2n);
  t.ok(r.data.equals(data), 'data written is read back intact');
  c.close();
});
