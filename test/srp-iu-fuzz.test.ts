// Fuzz test of the SRP IU decoders: >= 100,000 mutated and random inputs from a seeded PRNG.
// Contract under test: a decoder of untrusted input either returns a value whose views lie inside
// the input, or throws SrpDecodeError, and nothing else (no RangeError, no TypeError).
import t from 'tap';
import {
  SrpDecodeError, decodeIu, decodeLoginReqRdma, encodeAerReq, encodeCmd, encodeCredReq, encodeLoginRej,
  encodeLoginReq, encodeLoginReqRdma, encodeLoginRsp, encodeRsp, encodeTLogout, encodeTskMgmt, encodeILogout,
  encodeCredRsp, encodeAerRsp,
} from '../src/initiator/srp-iu.js';

/** xorshift32: small, seeded, reproducible. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

const SEED = 0x5eed_1234;
const ITERATIONS = 120_000;

t.test(`decoders survive ${ITERATIONS} mutated inputs (seed ${SEED.toString(16)})`, async (t) => {
  const rnd = prng(SEED);
  const ports = { initiatorPortId: Buffer.alloc(16, 1), targetPortId: Buffer.alloc(16, 2) };
  const login = { tag: 1n, reqItIuLen: 8276, reqBufFmt: 6, reqFlags: 0x80, immDataOffset: 68, ...ports };
  const corpus: Buffer[] = [
    encodeLoginReq(login),
    encodeLoginRsp({ reqLimDelta: 64, tag: 1n, maxItIuLen: 8276, maxTiIuLen: 1024, bufFmt: 6, rspFlags: 0x80 }),
    encodeLoginRej({ reason: 0x10001, tag: 1n, bufFmt: 6 }),
    encodeILogout({ tag: 3n }),
    encodeTLogout({ solNot: 0, reason: 2, tag: 3n }),
    encodeTskMgmt({ solNot: 0, tag: 9n, lun: 1n << 48n, func: 1, taskTag: 4n }),
    encodeCmd({
      solNot: 0, tag: 2n, lun: 0n, taskAttr: 0, cdb: Buffer.alloc(16, 0x28), dataOut: { format: 'none' },
      dataIn: { format: 'direct', buf: { va: 0x1000n, key: 7, len: 512 } },
    }),
    encodeCmd({
      solNot: 0, tag: 2n, lun: 0n, taskAttr: 0, cdb: Buffer.alloc(32, 0x7f),
      dataOut: { format: 'indirect', table: { va: 1n, key: 2, len: 48 }, totalLen: 3000, descs: [
        { va: 1n, key: 2, len: 1000 }, { va: 2n, key: 2, len: 1000 }, { va: 3n, key: 2, len: 1000 }] },
      dataIn: { format: 'direct', buf: { va: 0x1000n, key: 7, len: 512 } },
    }),
    encodeCmd({
      solNot: 0, tag: 2n, lun: 0n, taskAttr: 0, cdb: Buffer.alloc(16, 0x2a), dataOut: { format: 'imm', data: Buffer.alloc(100, 9) },
      dataIn: { format: 'none' },
    }, { immDataOffset: 68 }),
    encodeRsp({ solNot: 0, reqLimDelta: 1, tag: 2n, flags: 0x20, status: 2, dataOutResCnt: 0, dataInResCnt: 5,
      sense: Buffer.alloc(18, 0x70), responseData: Buffer.alloc(4) }),
    encodeCredReq({ solNot: 0, reqLimDelta: 3, tag: 5n }),
    encodeCredRsp({ tag: 5n }),
    encodeAerReq({ solNot: 0, reqLimDelta: 0, tag: 6n, lun: 0n, sense: Buffer.alloc(18, 0x70) }),
    encodeAerRsp({ tag: 6n }),
  ];
  const rdmaSeed = encodeLoginReqRdma(login);
  const ctxs = [{}, { immDataOffset: 0 }, { immDataOffset: 68 }, { immDataOffset: 80 }];

  function mutate(src: Buffer): Buffer {
    const kind = rnd() % 8;
    let b: Buffer;
    switch (kind) {
      case 0: { // flip a few random bytes
        b = Buffer.from(src);
        const n = 1 + (rnd() % 4);
        for (let i = 0; i < n && b.length; i++) b[rnd() % b.length] = rnd() & 0xff;
        return b;
      }
      case 1: // truncate
        return Buffer.from(src.subarray(0, rnd() % (src.length + 1)));
      case 2: { // extend with random tail
        const tail = Buffer.alloc(rnd() % 64);
        for (let i = 0; i < tail.length; i++) tail[i] = rnd() & 0xff;
        return Buffer.concat([src, tail]);
      }
      case 3: { // plant a big 32-bit value at a random aligned offset (length fields)
        b = Buffer.from(src);
        if (b.length >= 4) b.writeUInt32BE(rnd() >>> 0, (rnd() % (b.length - 3)) & ~3);
        return b;
      }
      case 4: { // random descriptor formats / counts / add_cdb_len in an SRP_CMD-shaped IU
        b = Buffer.from(src);
        if (b.length > 31) { b[5] = rnd() & 0xff; b[6] = rnd() & 0xff; b[7] = rnd() & 0xff; b[31] = rnd() & 0xff; }
        return b;
      }
      case 5: { // pure random bytes with a plausible opcode
        b = Buffer.alloc(rnd() % 128);
        for (let i = 0; i < b.length; i++) b[i] = rnd() & 0xff;
        if (b.length) b[0] = corpus[rnd() % corpus.length]![0]!;
        return b;
      }
      case 6: { // flip single bits
        b = Buffer.from(src);
        if (b.length) { const i = rnd() % b.length; b[i] = b[i]! ^ (1 << (rnd() % 8)); }
        return b;
      }
      default: { // pure random
        b = Buffer.alloc(rnd() % 96);
        for (let i = 0; i < b.length; i++) b[i] = rnd() & 0xff;
        return b;
      }
    }
  }

  let ok = 0;
  let decodeErrors = 0;
  const unexpected: string[] = [];
  const start = Date.now();
  for (let i = 0; i < ITERATIONS; i++) {
    const rdma = i % 10 === 0;
    const input = mutate(rdma ? rdmaSeed : corpus[i % corpus.length]!);
    // sometimes decode from inside a larger buffer
    const pad = rnd() % 3 === 0 ? rnd() % 8 : 0;
    const buf = pad ? Buffer.concat([Buffer.alloc(pad, 0xee), input, Buffer.alloc(rnd() % 4, 0xdd)]) : input;
    try {
      const m = rdma ? decodeLoginReqRdma(buf, pad, input.length) : decodeIu(buf, pad, input.length, ctxs[i % ctxs.length]);
      // every returned view must be inside the input
      for (const v of Object.values(m)) {
        if (Buffer.isBuffer(v) && (v.byteOffset < buf.byteOffset + pad || v.byteOffset + v.length > buf.byteOffset + pad + input.length)) {
          unexpected.push(`view outside input at iteration ${i}`);
        }
      }
      ok++;
    } catch (e) {
      if (e instanceof SrpDecodeError) decodeErrors++;
      else if (unexpected.length < 5) unexpected.push(`iteration ${i}: ${String(e)} input ${input.toString('hex')}`);
      else unexpected.push('…');
    }
  }
  const ms = Date.now() - start;
  t.same(unexpected, [], 'only SrpDecodeError escapes');
  t.equal(ok + decodeErrors, ITERATIONS);
  t.ok(ok > 1000, `some mutated inputs still decode (${ok})`);
  t.ok(decodeErrors > 1000, `many inputs rejected (${decodeErrors})`);
  t.ok(ms < 30_000, `finished in ${ms} ms`);
  t.comment(`${ITERATIONS} inputs in ${ms} ms: ${ok} decoded, ${decodeErrors} SrpDecodeError`);
});
