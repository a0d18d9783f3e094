/**
 * RamScsiLun, the target side: response data and sense bytes compared with golden bytes written
 * by hand from SPC-4 / SBC-3, enforcement of the limits it advertises, fault injection.
 */
import t from 'tap';
import {
  buildInquiry,
  buildRead16,
  buildReadCapacity16,
  buildReportLuns,
  buildTestUnitReady,
  buildUnmap,
  buildWrite16,
  buildWriteSame16,
} from '../src/initiator/scsi-cdb.js';
import * as c from '../src/initiator/scsi-constants.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

type Reply = { status: number; sense?: Buffer; dataIn?: Buffer };
const run = async (lun: RamScsiLun, cdb: Buffer, dataOut?: Buffer, alloc = 0): Promise<Reply> =>
  lun.execute(cdb, dataOut, alloc);

t.test('standard INQUIRY, READ CAPACITY(16), VPD B0h/B2h as the spec lays them out', async (t) => {
  const lun = new RamScsiLun({
    blockSize: 4096,
    blocks: 2048,
    vendor: 'LIO-ORG',
    product: 'ramdisk',
    revision: '4.0',
    serial: 'SN1',
    provisioning: { lbpme: true, lbpu: true, lbpws: true, lbprz: true },
    limits: {
      maxTransferLength: 0x800,
      optimalTransferLengthGranularity: 8,
      maxUnmapLbaCount: 0x400000,
      maxUnmapBlockDescriptorCount: 1,
      optimalUnmapGranularity: 8,
      unmapGranularityAlignment: 2,
      maxWriteSameLength: 0x400000,
    },
  });
  const inq = await run(lun, buildInquiry(96), undefined, 96);
  t.same(
    inq.dataIn,
    hex(`00 00 06 12 1f 00 00 02
    4c 49 4f 2d 4f 52 47 20
    72 61 6d 64 69 73 6b 20 20 20 20 20 20 20 20 20
    34 2e 30 20`),
  );
  const cap = await run(lun, buildReadCapacity16(), undefined, 32);
  t.same(cap.dataIn, hex('00 00 00 00 00 00 07 ff 00 00 10 00 00 00 c0 00 00000000000000000000000000000000'));
  const b0 = await run(lun, buildInquiry(255, 0xb0), undefined, 255);
  t.same(
    b0.dataIn,
    hex(`00 b0 00 3c
    01 00 00 08  00 00 08 00  00 00 00 00  00 00 00 00
    00 40 00 00  00 00 00 01  00 00 00 08  80 00 00 02
    00 00 00 00 00 40 00 00
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00`),
  );
  t.same((await run(lun, buildInquiry(255, 0xb2), undefined, 255)).dataIn, hex('00 b2 00 04 00 c4 02 00'));
  t.same((await run(lun, buildInquiry(255, 0x00), undefined, 255)).dataIn, hex('00 00 00 05 00 80 83 b0 b2'));
  t.same((await run(lun, buildInquiry(255, 0x80), undefined, 255)).dataIn, hex('00 80 00 03 53 4e 31'));
  const vpd83 = (await run(lun, buildInquiry(255, 0x83), undefined, 255)).dataIn!;
  /* PAGE LENGTH = NAA (4 + 16) + T10 vendor ID (4 + 8 + "ramdisk:SN1" 11) + relative port (4 + 4) = 51. */
  t.same(vpd83.subarray(0, 8), hex('00 83 00 33 01 03 00 10'), 'header and NAA designator header');
  t.same(vpd83.subarray(8, 24), lun.naa);
  t.same(vpd83.subarray(-8), hex('41 94 00 04 00 00 00 01'), 'relative target port 1 over SRP');
  t.equal((await run(lun, buildInquiry(10, 0x83), undefined, 10)).dataIn!.length, 10, 'cut to the allocation length');
  t.equal((await run(lun, buildInquiry(5), undefined, 5)).dataIn!.length, 5);
});

t.test('sense for bad CDBs (fixed format, golden bytes)', async (t) => {
  const lun = new RamScsiLun({ blocks: 2048, limits: { maxTransferLength: 64 } });
  const cases: [string, Buffer, string][] = [
    ['unknown opcode', hex('ee 00 00 00 00 00 00 00 00 00'), '70 00 05 00 00 00 00 0a 00 00 00 00 20 00 00 c0 00 00'],
    ['READ past the end', buildRead16(2047n, 2), 'f0 00 05 00 00 08 00 0a 00 00 00 00 21 00 00 00 00 00'],
    ['READ starting past the end', buildRead16(5000n, 1), 'f0 00 05 00 00 13 88 0a 00 00 00 00 21 00 00 00 00 00'],
    [
      'READ above MAXIMUM TRANSFER LENGTH',
      buildRead16(0n, 65),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 0a',
    ],
    [
      'INQUIRY page code without EVPD',
      hex('12 00 83 00 ff 00'),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 02',
    ],
    ['INQUIRY unsupported VPD page', buildInquiry(255, 0xb1), '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 02'],
    ['VPD B2h on a thick LUN', buildInquiry(255, 0xb2), '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 02'],
    [
      'REPORT LUNS allocation below 16',
      hex('a0 00 00 00 00 00 00 00 00 08 00 00'),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 06',
    ],
    [
      'UNMAP on a thick LUN',
      buildUnmap([{ lba: 0n, blocks: 1 }]).cdb,
      '70 00 05 00 00 00 00 0a 00 00 00 00 20 00 00 00 00 00',
    ],
    [
      'WRITE SAME UNMAP without LBPWS',
      buildWriteSame16(0n, 1, { unmap: true }),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 01',
    ],
    [
      'WRITE SAME NDOB unsupported',
      buildWriteSame16(0n, 1, { ndob: true }),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 01',
    ],
    ['WRITE SAME 0 blocks with WSNZ', buildWriteSame16(0n, 0), '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 0a'],
    [
      'SERVICE ACTION IN(16) unknown action',
      hex('9e 11 00 00 00 00 00 00 00 00 00 00 00 20 00 00'),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 01',
    ],
    [
      'READ(16) with RDPROTECT',
      hex('88 20 00 00 00 00 00 00 00 00 00 00 00 01 00 00'),
      '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 01',
    ],
  ];
  for (const [what, cdb, sense] of cases) {
    const r = await run(lun, cdb, Buffer.alloc(512), 255);
    t.equal(r.status, c.SAM_STAT_CHECK_CONDITION, what);
    t.same(r.sense, hex(sense), what);
    t.equal(r.dataIn, undefined, `${what}: no data`);
  }
});

t.test('descriptor-format sense', async (t) => {
  const lun = new RamScsiLun({ blocks: 2048, descriptorSense: true });
  const r = await run(lun, buildRead16(2047n, 2), undefined, 1024);
  t.same(r.sense, hex('72 05 21 00 00 00 00 0c 00 0a 80 00 00 00 00 00 00 00 08 00'));
  const f = await run(lun, hex('12 00 83 00 ff 00'), undefined, 255);
  t.same(f.sense, hex('72 05 24 00 00 00 00 08 02 06 00 00 c0 00 02 00'));
});

t.test('UNMAP parameter list checks and granules', async (t) => {
  const lun = new RamScsiLun({
    blocks: 128,
    provisioning: { lbpme: true, lbpu: true, lbprz: true },
    limits: { maxUnmapLbaCount: 32, maxUnmapBlockDescriptorCount: 2, optimalUnmapGranularity: 4 },
  });
  t.equal(lun.mappedCount(), 0, 'a thin LUN starts unmapped');
  await run(lun, buildWrite16(0n, 128), Buffer.alloc(128 * 512, 7));
  t.equal(lun.mappedCount(), 128);

  const three = buildUnmap([
    { lba: 0n, blocks: 1 },
    { lba: 8n, blocks: 1 },
    { lba: 16n, blocks: 1 },
  ]);
  t.same(
    (await run(lun, three.cdb, three.parameterList)).sense,
    hex('70 00 05 00 00 00 00 0a 00 00 00 00 26 00 00 80 00 02'),
    'too many descriptors',
  );
  const many = buildUnmap([
    { lba: 0n, blocks: 20 },
    { lba: 40n, blocks: 20 },
  ]);
  t.same(
    (await run(lun, many.cdb, many.parameterList)).sense,
    hex('70 00 05 00 00 00 00 0a 00 00 00 00 26 00 00 80 00 08'),
    'too many LBAs',
  );
  const past = buildUnmap([{ lba: 126n, blocks: 4 }]);
  t.match((await run(lun, past.cdb, past.parameterList)).sense!.subarray(12, 14), hex('21 00'), 'LBA out of range');
  const ok = buildUnmap([{ lba: 1n, blocks: 10 }]);
  t.same(
    (await run(lun, ok.cdb, Buffer.from(ok.parameterList).subarray(0, 6))).sense!.subarray(12, 14),
    hex('1a 00'),
    'short parameter list',
  );
  t.equal(lun.mappedCount(), 128, 'refused UNMAPs change nothing');

  t.equal((await run(lun, ok.cdb, ok.parameterList)).status, c.SAM_STAT_GOOD);
  t.same(
    [...Array(12).keys()].map((b) => lun.isMapped(b)),
    [true, true, true, true, false, false, false, false, true, true, true, true],
    'only the whole granule 4..7 of 1..10',
  );
  t.same(lun.peek(4, 4), Buffer.alloc(2048), 'LBPRZ: reads zero');
  t.same(lun.logOf('UNMAP').at(-1)!.descriptors, [{ lba: 1n, blocks: 10 }]);
});

t.test('WRITE SAME(16): data, UNMAP, NDOB, whole medium', async (t) => {
  const lun = new RamScsiLun({
    blocks: 64,
    ndob: true,
    wsnz: false,
    provisioning: { lbpme: true, lbpws: true, lbprz: false },
  });
  const pattern = Buffer.alloc(512, 0x3c);
  t.equal((await run(lun, buildWriteSame16(4n, 8), pattern)).status, 0);
  t.same(lun.peek(4, 8), Buffer.alloc(8 * 512, 0x3c));
  t.equal(lun.peek(3, 1)[0], 0xa5, 'unmapped and LBPRZ=0: garbage, not zero');
  await run(lun, buildWriteSame16(4n, 2, { unmap: true }), Buffer.alloc(512));
  t.same(lun.peek(4, 2), Buffer.alloc(1024), 'LBPRZ=0: WRITE SAME UNMAP still reads back zeroes');
  t.equal(lun.isMapped(4), true);
  await run(lun, buildWriteSame16(6n, 2, { ndob: true }));
  t.same(lun.peek(6, 2), Buffer.alloc(1024), 'NDOB writes zeroes without data-out');
  await run(lun, buildWriteSame16(60n, 0), pattern);
  t.same(lun.peek(60, 4), Buffer.alloc(4 * 512, 0x3c), '0 blocks without WSNZ: to the end of the medium');
  t.equal(lun.mappedCount(), 12);
});

t.test('write protect, unit attentions, fault injection', async (t) => {
  const lun = new RamScsiLun({ blocks: 64, writeProtected: true });
  t.same(
    (await run(lun, buildWrite16(0n, 1), Buffer.alloc(512))).sense,
    hex('70 00 07 00 00 00 00 0a 00 00 00 00 27 00 00 00 00 00'),
  );
  t.equal((await run(lun, buildRead16(0n, 1), undefined, 512)).status, 0, 'reads still work');

  lun.queueUnitAttention(0x29, 0x00);
  t.equal((await run(lun, buildInquiry(36), undefined, 36)).status, 0, 'INQUIRY does not report the UA');
  t.equal((await run(lun, buildReportLuns(16), undefined, 16)).status, 0, 'nor REPORT LUNS');
  t.same((await run(lun, buildTestUnitReady())).sense, hex('70 00 06 00 00 00 00 0a 00 00 00 00 29 00 00 00 00 00'));
  t.equal((await run(lun, buildTestUnitReady())).status, 0, 'reported once');

  lun.injectSense(c.NOT_READY, 0x04, 0x01, 2, (cdb) => cdb[0] === c.READ_16);
  t.equal((await run(lun, buildTestUnitReady())).status, 0, 'TUR does not match');
  t.equal((await run(lun, buildRead16(0n, 1), undefined, 512)).status, 2);
  t.equal((await run(lun, buildRead16(0n, 1), undefined, 512)).status, 2);
  t.equal((await run(lun, buildRead16(0n, 1), undefined, 512)).status, 0);
  t.same(
    lun
      .logOf('READ_16')
      .slice(-3)
      .map((e) => [e.injected ?? false, e.sense]),
    [
      [true, [2, 4, 1]],
      [true, [2, 4, 1]],
      [false, undefined],
    ],
  );

  lun.injectFault({ status: c.SAM_STAT_BUSY, delayMs: 30 });
  const t0 = Date.now();
  const p = lun.execute(buildTestUnitReady(), undefined, 0);
  t.ok(p instanceof Promise, 'a delayed reply is a promise');
  t.same(await p, { status: c.SAM_STAT_BUSY });
  t.ok(Date.now() - t0 >= 25);
  t.equal(lun.pendingFaults(), 0);
});
