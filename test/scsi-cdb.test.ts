/**
 * CDB builders and SAM LUN encoding against golden bytes written by hand from the T10 tables
 * (SPC-4 r37 tables 142, 190; SBC-3 r35 tables 50, 63, 78, 94-96, 100, 112).
 */
import t from 'tap';
import {
  LunEncodingError,
  buildInquiry,
  buildRead16,
  buildReadCapacity16,
  buildReportLuns,
  buildModeSense6,
  buildModeSense10,
  buildSynchronizeCache10,
  buildSynchronizeCache16,
  buildTestUnitReady,
  buildUnmap,
  buildWrite16,
  buildWriteSame16,
  lunToSam,
  samLunBytes,
  samToLun,
} from '../src/initiator/scsi-cdb.js';
import * as c from '../src/initiator/scsi-constants.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('constants match scsi_proto.h', async (t) => {
  t.equal(c.TEST_UNIT_READY, 0x00);
  t.equal(c.INQUIRY, 0x12);
  t.equal(c.UNMAP, 0x42);
  t.equal(c.READ_16, 0x88);
  t.equal(c.WRITE_16, 0x8a);
  t.equal(c.SYNCHRONIZE_CACHE_16, 0x91);
  t.equal(c.WRITE_SAME_16, 0x93);
  t.equal(c.SERVICE_ACTION_IN_16, 0x9e);
  t.equal(c.SAI_READ_CAPACITY_16, 0x10);
  t.equal(c.REPORT_LUNS, 0xa0);
  t.equal(c.SAM_STAT_TASK_SET_FULL, 0x28);
  t.equal(c.SAM_STAT_BUSY, 0x08);
  t.equal(c.UNIT_ATTENTION, 0x06);
  t.equal(c.ABORTED_COMMAND, 0x0b);
});

t.test('names for logs', async (t) => {
  t.equal(c.nameOfScsiOpcode(c.WRITE_SAME_16), 'WRITE_SAME_16');
  t.equal(c.nameOfScsiOpcode(0xee), 'OPCODE_<0xee>');
  t.equal(c.nameOfCdb(buildReadCapacity16()), 'READ_CAPACITY_16');
  t.equal(c.nameOfCdb(buildRead16(0n, 1)), 'READ_16');
  t.equal(c.nameOfCdb(Buffer.alloc(0)), 'EMPTY_CDB');
  t.equal(c.nameOfSamStatus(0x28), 'SAM_STAT_TASK_SET_FULL');
  t.equal(c.nameOfSamStatus(0x66), 'SAM_STAT_<0x66>');
  t.equal(c.nameOfSenseKey(7), 'DATA_PROTECT');
  t.equal(c.nameOfDeviceType(0), 'TYPE_DISK');
  t.equal(c.nameOfDesignatorType(3), 'DESIGNATOR_NAA');
  t.equal(c.nameOfVpdPage(0xb0), 'VPD_BLOCK_LIMITS');
  t.equal(c.scsiSenseText(0x2a, 0x09), 'Capacity data has changed');
  t.equal(c.scsiSenseText(0x21, 0x00), 'Logical block address out of range');
  t.equal(c.scsiSenseText(0x77, 0x05), 'ASC 77h ASCQ 05h');
});

t.test('TEST UNIT READY', async (t) => {
  t.same(buildTestUnitReady(), hex('00 00 00 00 00 00'));
});

t.test('INQUIRY standard and EVPD', async (t) => {
  t.same(buildInquiry(96), hex('12 00 00 00 60 00'));
  t.same(buildInquiry(0x1000, 0x83), hex('12 01 83 10 00 00'));
  t.same(buildInquiry(255, 0x00), hex('12 01 00 00 ff 00'));
  t.same(buildInquiry(64, 0xb0), hex('12 01 b0 00 40 00'));
  t.same(buildInquiry(64, 0xb2), hex('12 01 b2 00 40 00'));
  t.same(buildInquiry(252, 0x80), hex('12 01 80 00 fc 00'));
  t.throws(() => buildInquiry(0x10000), RangeError);
  t.throws(() => buildInquiry(16, 0x100), RangeError);
});

t.test('REPORT LUNS', async (t) => {
  t.same(buildReportLuns(0x1008), hex('a0 00 00 00 00 00 00 00 10 08 00 00'));
  t.same(buildReportLuns(16, 2), hex('a0 00 02 00 00 00 00 00 00 10 00 00'));
  t.throws(() => buildReportLuns(15), RangeError);
});

t.test('READ CAPACITY(16)', async (t) => {
  t.same(buildReadCapacity16(), hex('9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00'));
  t.same(buildReadCapacity16(0x100), hex('9e 10 00 00 00 00 00 00 00 00 00 00 01 00 00 00'));
});

t.test('READ(16) / WRITE(16) with FUA and DPO', async (t) => {
  t.same(buildRead16(0x0102030405060708n, 0x100), hex('88 00 01 02 03 04 05 06 07 08 00 00 01 00 00 00'));
  t.same(buildWrite16(0x12345678n, 8, { fua: true }), hex('8a 08 00 00 00 00 12 34 56 78 00 00 00 08 00 00'));
  t.same(buildRead16(0n, 1, { fua: true, dpo: true }), hex('88 18 00 00 00 00 00 00 00 00 00 00 00 01 00 00'));
  t.same(buildWrite16(0xffffffffffffffffn, 0xffffffff), hex('8a 00 ff ff ff ff ff ff ff ff ff ff ff ff 00 00'));
  t.throws(() => buildRead16(-1n, 1), RangeError);
  t.throws(() => buildRead16(1n << 64n, 1), RangeError);
  t.throws(() => buildWrite16(0n, 0x100000000), RangeError);
  t.throws(() => buildWrite16(0n, 1.5), RangeError);
});

t.test('SYNCHRONIZE CACHE(16)', async (t) => {
  t.same(buildSynchronizeCache16(), hex('91 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00'));
  t.same(buildSynchronizeCache16(0x10n, 0x20, true), hex('91 02 00 00 00 00 00 00 00 10 00 00 00 20 00 00'));
});

t.test('WRITE SAME(16) plain, UNMAP, NDOB, ANCHOR', async (t) => {
  t.same(buildWriteSame16(0x800n, 0x800), hex('93 00 00 00 00 00 00 00 08 00 00 00 08 00 00 00'));
  t.same(buildWriteSame16(0x800n, 0x800, { unmap: true }), hex('93 08 00 00 00 00 00 00 08 00 00 00 08 00 00 00'));
  t.same(buildWriteSame16(1n, 2, { ndob: true }), hex('93 01 00 00 00 00 00 00 00 01 00 00 00 02 00 00'));
  t.same(
    buildWriteSame16(0n, 1, { unmap: true, anchor: true }),
    hex('93 18 00 00 00 00 00 00 00 00 00 00 00 01 00 00'),
  );
});

t.test('UNMAP CDB and parameter list', async (t) => {
  const { cdb, parameterList } = buildUnmap([
    { lba: 0x1000n, blocks: 0x80 },
    { lba: 0x2000n, blocks: 0x10 },
  ]);
  t.same(cdb, hex('42 00 00 00 00 00 00 00 28 00'));
  t.same(
    parameterList,
    hex(`00 26 00 20 00 00 00 00
         00 00 00 00 00 00 10 00  00 00 00 80  00 00 00 00
         00 00 00 00 00 00 20 00  00 00 00 10  00 00 00 00`),
  );
  const one = buildUnmap([{ lba: 0xffffffffffn, blocks: 0xffffffff }], true);
  t.same(one.cdb, hex('42 01 00 00 00 00 00 00 18 00'));
  t.same(one.parameterList, hex('00 16 00 10 00 00 00 00 00 00 00 ff ff ff ff ff ff ff ff ff 00 00 00 00'));
  const none = buildUnmap([]);
  t.same(none.cdb, hex('42 00 00 00 00 00 00 00 08 00'));
  t.same(none.parameterList, hex('00 06 00 00 00 00 00 00'));
  t.throws(() => buildUnmap(new Array(4096).fill({ lba: 0n, blocks: 1 })), RangeError);
});

t.test('SAM LUN encoding: peripheral and flat space', async (t) => {
  t.equal(lunToSam(0), 0n);
  t.equal(lunToSam(5), 0x0005000000000000n);
  t.equal(lunToSam(255), 0x00ff000000000000n);
  t.equal(lunToSam(256), 0x4100000000000000n);
  t.equal(lunToSam(300), 0x412c000000000000n);
  t.equal(lunToSam(0x3fff), 0x7fff000000000000n);
  t.same(samLunBytes(lunToSam(300)), hex('41 2c 00 00 00 00 00 00'));
  t.throws(() => lunToSam(0x4000), RangeError);
  t.throws(() => lunToSam(-1), RangeError);
  for (const n of [0, 1, 17, 255, 256, 1000, 0x3fff]) t.equal(samToLun(lunToSam(n)), n, `round trip ${n}`);
  t.equal(samToLun(0x4005000000000000n), 5, 'flat space LUN 5 decodes too');
  t.throws(() => samToLun(0x0001000100000000n), LunEncodingError, 'multi-level');
  t.throws(() => samToLun(0x0105000000000000n), LunEncodingError, 'bus 1');
  t.throws(() => samToLun(0x8005000000000000n), LunEncodingError, 'logical unit addressing');
  t.throws(() => samToLun(0xc005000000000000n), LunEncodingError, 'extended addressing');
  t.throws(() => samToLun(-1n), LunEncodingError);
});

t.test('MODE SENSE(6) (SPC-4 table 151)', async (t) => {
  t.same(buildModeSense6(0x3f, 4), hex('1a 00 3f 00 04 00'), 'what sd sends for the WP bit: all pages, 4 bytes');
  t.same(buildModeSense6(0x00, 4), hex('1a 00 00 00 04 00'), "sd's second try: page 0");
  t.same(buildModeSense6(0x08, 0xff, { pc: 2, dbd: true, subpage: 0x01 }), hex('1a 08 88 01 ff 00'));
  t.throws(() => buildModeSense6(0x40, 4));
  t.throws(() => buildModeSense6(0x3f, 0x100));
});

t.test('MODE SENSE(10) (SPC-4 table 154)', async (t) => {
  t.same(buildModeSense10(0x08, 64), hex('5a 08 08 00 00 00 00 00 40 00'), 'caching page, current values, DBD');
  t.same(buildModeSense10(0x3f, 0x1234, { pc: 2, dbd: false, subpage: 0xff }), hex('5a 00 bf ff 00 00 00 12 34 00'));
  t.throws(() => buildModeSense10(0x40, 8));
  t.throws(() => buildModeSense10(8, 0x10000));
});

t.test('SYNCHRONIZE CACHE(10) (SBC-3 table 77)', async (t) => {
  t.same(buildSynchronizeCache10(), hex('35 00 00 00 00 00 00 00 00 00'));
  t.same(buildSynchronizeCache10(0x01020304, 0x0506, true), hex('35 02 01 02 03 04 00 05 06 00'));
  t.throws(() => buildSynchronizeCache10(0, 0x10000));
});
