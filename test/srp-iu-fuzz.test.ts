// Fuzz test of the SRP IU decoders: >= 100,000 mutated and random inputs from a seeded PRNG; and the
// data path's in-place codec against the general one (same bytes, same acceptance, same fields).
// Contract under test: a decoder of untrusted input either returns a value whose views lie inside
// the input, or throws SrpDecodeError, and nothing else (no RangeError, no TypeError).
import t from 'tap';
import {
  SrpCmdReader,
  SrpDecodeError,
  SrpRspReader,
  cmdInPlaceLength,
  decodeCmd,
  decodeIu,
  decodeLoginReqRdma,
  decodeRsp,
  encodeAerReq,
  encodeCmd,
  encodeCmdInPlace,
  encodeCredReq,
  encodeLoginRej,
  encodeLoginReq,
  encodeLoginReqRdma,
  encodeLoginRsp,
  encodeRsp,
  encodeRspInPlace,
  encodeTLogout,
  encodeTskMgmt,
  encodeILogout,
  encodeCredRsp,
  encodeAerRsp,
  type SrpCmd,
  type SrpCmdFields,
  type SrpDataDesc,
  type SrpDirectBufParts,
  type SrpRsp,
  type SrpRspFields,
} from '../src/initiator/srp-iu.js';
import {
  SRP_DATA_DESC_DIRECT,
  SRP_DATA_DESC_IMM,
  SRP_DATA_DESC_INDIRECT,
  SRP_NO_DATA_DESC,
} from '../src/initiator/srp-constants.js';

/** xorshift32: small, seeded, reproducible. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
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
      solNot: 0,
      tag: 2n,
      lun: 0n,
      taskAttr: 0,
      cdb: Buffer.alloc(16, 0x28),
      dataOut: { format: 'none' },
      dataIn: { format: 'direct', buf: { va: 0x1000n, key: 7, len: 512 } },
    }),
    encodeCmd({
      solNot: 0,
      tag: 2n,
      lun: 0n,
      taskAttr: 0,
      cdb: Buffer.alloc(32, 0x7f),
      dataOut: {
        format: 'indirect',
        table: { va: 1n, key: 2, len: 48 },
        totalLen: 3000,
        descs: [
          { va: 1n, key: 2, len: 1000 },
          { va: 2n, key: 2, len: 1000 },
          { va: 3n, key: 2, len: 1000 },
        ],
      },
      dataIn: { format: 'direct', buf: { va: 0x1000n, key: 7, len: 512 } },
    }),
    encodeCmd(
      {
        solNot: 0,
        tag: 2n,
        lun: 0n,
        taskAttr: 0,
        cdb: Buffer.alloc(16, 0x2a),
        dataOut: { format: 'imm', data: Buffer.alloc(100, 9) },
        dataIn: { format: 'none' },
      },
      { immDataOffset: 68 },
    ),
    encodeRsp({
      solNot: 0,
      reqLimDelta: 1,
      tag: 2n,
      flags: 0x20,
      status: 2,
      dataOutResCnt: 0,
      dataInResCnt: 5,
      sense: Buffer.alloc(18, 0x70),
      responseData: Buffer.alloc(4),
    }),
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
      case 0: {
        // flip a few random bytes
        b = Buffer.from(src);
        const n = 1 + (rnd() % 4);
        for (let i = 0; i < n && b.length; i++) b[rnd() % b.length] = rnd() & 0xff;
        return b;
      }
      case 1: // truncate
        return Buffer.from(src.subarray(0, rnd() % (src.length + 1)));
      case 2: {
        // extend with random tail
        const tail = Buffer.alloc(rnd() % 64);
        for (let i = 0; i < tail.length; i++) tail[i] = rnd() & 0xff;
        return Buffer.concat([src, tail]);
      }
      case 3: {
        // plant a big 32-bit value at a random aligned offset (length fields)
        b = Buffer.from(src);
        if (b.length >= 4) b.writeUInt32BE(rnd() >>> 0, (rnd() % (b.length - 3)) & ~3);
        return b;
      }
      case 4: {
        // random descriptor formats / counts / add_cdb_len in an SRP_CMD-shaped IU
        b = Buffer.from(src);
        if (b.length > 31) {
          b[5] = rnd() & 0xff;
          b[6] = rnd() & 0xff;
          b[7] = rnd() & 0xff;
          b[31] = rnd() & 0xff;
        }
        return b;
      }
      case 5: {
        // pure random bytes with a plausible opcode
        b = Buffer.alloc(rnd() % 128);
        for (let i = 0; i < b.length; i++) b[i] = rnd() & 0xff;
        if (b.length) b[0] = corpus[rnd() % corpus.length]![0]!;
        return b;
      }
      case 6: {
        // flip single bits
        b = Buffer.from(src);
        if (b.length) {
          const i = rnd() % b.length;
          b[i] = b[i]! ^ (1 << (rnd() % 8));
        }
        return b;
      }
      default: {
        // pure random
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
      const m = rdma
        ? decodeLoginReqRdma(buf, pad, input.length)
        : decodeIu(buf, pad, input.length, ctxs[i % ctxs.length]);
      // every returned view must be inside the input
      for (const v of Object.values(m)) {
        if (
          Buffer.isBuffer(v) &&
          (v.byteOffset < buf.byteOffset + pad || v.byteOffset + v.length > buf.byteOffset + pad + input.length)
        ) {
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

t.test('the data-path codec (in place) matches encodeCmd/decodeCmd and encodeRsp/decodeRsp', async (t) => {
  const rnd = prng(SEED ^ 0x0dd5eed);
  const bytes = (n: number, fill?: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = fill ?? rnd() & 0xff;
    return b;
  };
  const u32 = () => rnd() >>> 0;
  const big = (hi: number, lo: number) => (BigInt(hi) << 32n) | BigInt(lo);
  const ctxs = [{}, { immDataOffset: 0 }, { immDataOffset: 68 }, { immDataOffset: 80 }];
  const json = (x: unknown) => JSON.stringify(x, (_k, v) => (typeof v === 'bigint' ? v.toString(16) : v));
  const same = (what: string, a: unknown, b: unknown, i: number) => {
    if (json(a) !== json(b)) mismatches.push(`${what} at ${i}: ${json(a)} vs ${json(b)}`);
  };
  /** The decoder's value, or the message of the SrpDecodeError it threw (anything else fails the test). */
  const attempt = <T>(decode: () => T): T | string => {
    try {
      return decode();
    } catch (e) {
      if (!(e instanceof SrpDecodeError)) throw e;
      return e.message;
    }
  };
  const mismatches: string[] = [];
  const reader = new SrpCmdReader();
  const rspReader = new SrpRspReader();
  const N = 20_000;
  let encodedCmds = 0;
  let readCmds = 0;
  let refusedCmds = 0;
  let readRsps = 0;
  let refusedRsps = 0;
  for (let i = 0; i < N; i++) {
    // an SRP_CMD in place (into a dirty buffer) is encodeCmd's, byte for byte
    const cdb = bytes(1 + (rnd() % 32));
    const outFmt = [SRP_NO_DATA_DESC, SRP_DATA_DESC_DIRECT, SRP_DATA_DESC_IMM][rnd() % 3]!;
    const inFmt = outFmt === SRP_DATA_DESC_IMM || rnd() % 2 ? SRP_NO_DATA_DESC : SRP_DATA_DESC_DIRECT;
    const imm = outFmt === SRP_DATA_DESC_IMM ? bytes(rnd() % 300) : undefined;
    const f: SrpCmdFields = {
      tagHi: u32(),
      tagLo: u32(),
      lunHi: u32(),
      lunLo: u32(),
      taskAttr: rnd() & 7,
      cdb,
      outFmt,
      out: { vaHi: u32(), vaLo: u32(), key: u32(), len: u32() },
      immData: imm,
      inFmt,
      in: { vaHi: u32(), vaLo: u32(), key: u32(), len: u32() },
    };
    const desc = (fmt: number, d: SrpDirectBufParts): SrpDataDesc =>
      fmt === SRP_DATA_DESC_DIRECT
        ? { format: 'direct', buf: { va: big(d.vaHi, d.vaLo), key: d.key, len: d.len } }
        : { format: 'none' };
    const m: SrpCmd = {
      solNot: 0,
      tag: big(f.tagHi, f.tagLo),
      lun: big(f.lunHi, f.lunLo),
      taskAttr: f.taskAttr,
      cdb,
      dataOut: imm ? { format: 'imm', data: imm } : desc(outFmt, f.out),
      dataIn: desc(inFmt, f.in),
    };
    const dirty = bytes(512);
    const len = encodeCmdInPlace(dirty, f, 80);
    const want = encodeCmd(m, { immDataOffset: 80 });
    if (len !== cmdInPlaceLength(f, 80) || !dirty.subarray(0, len).equals(want)) {
      mismatches.push(`encodeCmdInPlace at ${i}: ${dirty.subarray(0, len).toString('hex')} vs ${want.toString('hex')}`);
    }
    encodedCmds++;

    // reading an SRP_CMD in place accepts and refuses what decodeCmd does, with the same fields
    const input = Buffer.from(want.subarray(0, rnd() % 4 === 0 ? rnd() % (want.length + 1) : want.length));
    if (input.length > 7 && rnd() % 2) input[5 + (rnd() % 3)] = rnd() & 0xff;
    if (input.length > 31 && rnd() % 4 === 0) input[31] = rnd() & 0xff;
    if (input.length > 0 && rnd() % 8 === 0) input[0] = rnd() & 0xff;
    const ctx = ctxs[rnd() % ctxs.length]!;
    const expected = attempt(() => decodeCmd(input, 0, undefined, ctx));
    const got = attempt(() => reader.read(input, ctx));
    if (typeof expected === 'string' || typeof got === 'string') {
      same('SrpCmdReader refusal', got, expected, i);
      refusedCmds++;
    } else {
      const r = got;
      const view = (fmt: number, d: SrpDirectBufParts, cnt: number): unknown =>
        fmt === SRP_DATA_DESC_DIRECT
          ? { format: 'direct', buf: { va: big(d.vaHi, d.vaLo), key: d.key, len: d.len } }
          : fmt === SRP_DATA_DESC_IMM
            ? { format: 'imm', data: input.toString('hex', r.immOffset, r.immOffset + r.immLen) }
            : fmt === SRP_DATA_DESC_INDIRECT
              ? { format: 'indirect', count: cnt }
              : { format: 'none' };
      const norm = (d: SrpDataDesc): unknown =>
        d.format === 'imm'
          ? { format: 'imm', data: d.data.toString('hex') }
          : d.format === 'indirect'
            ? { format: 'indirect', count: d.descs.length }
            : d;
      same(
        'SrpCmdReader fields',
        {
          solNot: r.solNot,
          tag: big(r.tagHi, r.tagLo),
          lun: big(r.lunHi, r.lunLo),
          taskAttr: r.taskAttr,
          cdb: input.subarray(r.cdbOffset, r.cdbOffset + r.cdbLen).toString('hex'),
          dataOut: view(r.outFmt, r.out, r.outCnt),
          dataIn: view(r.inFmt, r.in, r.inCnt),
        },
        {
          solNot: expected.solNot,
          tag: expected.tag,
          lun: expected.lun,
          taskAttr: expected.taskAttr,
          cdb: expected.cdb.toString('hex'),
          dataOut: norm(expected.dataOut),
          dataIn: norm(expected.dataIn),
        },
        i,
      );
      readCmds++;
    }

    // an SRP_RSP in place is encodeRsp's; reading one in place matches decodeRsp
    const rf: SrpRspFields = {
      solNot: rnd() & 0xff,
      reqLimDelta: u32() | 0,
      tagHi: u32(),
      tagLo: u32(),
      flags: rnd() & 0xff,
      status: rnd() & 0xff,
      dataOutResCnt: u32(),
      dataInResCnt: u32(),
      responseData: rnd() % 3 === 0 ? bytes(4) : undefined,
      sense: rnd() % 2 ? bytes(rnd() % 40) : undefined,
    };
    const rsp = encodeRsp({ ...rf, tag: big(rf.tagHi, rf.tagLo) } as SrpRsp);
    const rdirty = bytes(128);
    const rlen = encodeRspInPlace(rdirty, rf);
    if (!rdirty.subarray(0, rlen).equals(rsp)) {
      mismatches.push(`encodeRspInPlace at ${i}: ${rdirty.toString('hex', 0, rlen)} vs ${rsp.toString('hex')}`);
    }
    const rin = Buffer.from(rsp.subarray(0, rnd() % 4 === 0 ? rnd() % (rsp.length + 1) : rsp.length));
    if (rin.length > 35 && rnd() % 3 === 0) rin.writeUInt32BE(rnd() % 64, rnd() % 2 ? 28 : 32);
    if (rin.length > 18 && rnd() % 4 === 0) rin[18] = rnd() & 0xff;
    const rexp = attempt(() => decodeRsp(rin));
    const rgot = attempt(() => rspReader.read(rin));
    if (typeof rexp === 'string' || typeof rgot === 'string') {
      same('SrpRspReader refusal', rgot, rexp, i);
      refusedRsps++;
    } else {
      const g = rgot;
      same(
        'SrpRspReader fields',
        {
          solNot: g.solNot,
          reqLimDelta: g.reqLimDelta,
          tag: big(g.tagHi, g.tagLo),
          flags: g.flags,
          status: g.status,
          dataOutResCnt: g.dataOutResCnt,
          dataInResCnt: g.dataInResCnt,
          responseData: g.flags & 1 ? rin.subarray(g.respOffset, g.respOffset + g.respLen).toString('hex') : undefined,
          sense: g.flags & 2 ? rin.subarray(g.senseOffset, g.senseOffset + g.senseLen).toString('hex') : undefined,
        },
        { ...rexp, responseData: rexp.responseData?.toString('hex'), sense: rexp.sense?.toString('hex') },
        i,
      );
      readRsps++;
    }
    if (mismatches.length > 5) break;
  }
  t.same(mismatches, [], 'no difference');
  t.equal(encodedCmds, N);
  t.ok(readCmds > 1000 && refusedCmds > 1000, `SRP_CMD: ${readCmds} read, ${refusedCmds} refused alike`);
  t.ok(readRsps > 1000 && refusedRsps > 1000, `SRP_RSP: ${readRsps} read, ${refusedRsps} refused alike`);
});
