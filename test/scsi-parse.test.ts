/**
 * Response and sense parsers against golden bytes written by hand from SPC-4 r37 (tables 144, 459,
 * 192, 27-29, 36) and SBC-3 r35 (tables 64, 209, 212), plus a random-input robustness run.
 */
import t from 'tap';
import {
  ScsiParseError,
  designatorText,
  findLuNaa,
  parseBlockLimits,
  parseDeviceIdentification,
  parseLogicalBlockProvisioning,
  findCachingPage,
  parseModeSense6,
  parseModeSense10,
  parseReadCapacity16,
  parseReportLuns,
  parseSense,
  parseStandardInquiry,
  parseSupportedVpdPages,
  parseUnitSerialNumber,
  parseVpdHeader,
  vpdFullLength,
} from '../src/initiator/scsi-parse.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('standard INQUIRY', async (t) => {
  /* LIO-ORG IBLOCK 4.0, SPC-4, HISUP + RDF 2, TPGS 01b, 3PC, CMDQUE. */
  const inq = hex(`00 00 06 12 1f 18 00 02
    4c 49 4f 2d 4f 52 47 20
    49 42 4c 4f 43 4b 20 20 20 20 20 20 20 20 20 20
    34 2e 30 20`);
  const p = parseStandardInquiry(inq);
  t.equal(p.peripheralQualifier, 0);
  t.equal(p.peripheralDeviceType, 0);
  t.equal(p.version, 6);
  t.equal(p.responseDataFormat, 2);
  t.equal(p.hisup, true);
  t.equal(p.tpgs, 1);
  t.equal(p.protect, false);
  t.equal(p.cmdQue, true);
  t.equal(p.vendor, 'LIO-ORG');
  t.equal(p.product, 'IBLOCK');
  t.equal(p.revision, '4.0');
  t.equal(p.truncated, false);

  const none = parseStandardInquiry(hex('7f 00 06 12 1f 00 00 00'));
  t.equal(none.peripheralQualifier, 3, 'no LUN here');
  t.equal(none.peripheralDeviceType, 0x1f);
  t.equal(none.vendor, '');
  t.equal(none.truncated, true);

  const ctrl = parseStandardInquiry(hex('00 80 05 02 1f 01 00 00 41 0a 42 00 00 00 00 00'));
  t.equal(ctrl.removable, true);
  t.equal(ctrl.protect, true);
  t.equal(ctrl.vendor, 'A?B', 'control characters are not passed through');
  t.throws(() => parseStandardInquiry(hex('00 00 06 12')), ScsiParseError);
});

t.test('VPD 00h supported pages, 80h serial', async (t) => {
  t.same(parseSupportedVpdPages(hex('00 00 00 05 00 80 83 b0 b2')), {
    pages: [0, 0x80, 0x83, 0xb0, 0xb2],
    truncated: false,
  });
  t.same(parseSupportedVpdPages(hex('00 00 00 05 00 80 83')), { pages: [0, 0x80, 0x83], truncated: true });
  t.same(parseUnitSerialNumber(hex('00 80 00 0a 20 20 53 4e 31 32 33 34 35 36')), {
    serial: 'SN123456',
    truncated: false,
  });
  t.throws(() => parseUnitSerialNumber(hex('00 83 00 00')), { code: 'wrong-page' });
  t.equal(vpdFullLength(hex('00 83 01 02')), 0x106);
  const h = parseVpdHeader(hex('00 b0 00 3c 01'));
  t.equal(h.pageLength, 0x3c);
  t.equal(h.body.length, 1);
  t.equal(h.truncated, true);
});

t.test('VPD 83h device identification', async (t) => {
  const page = hex(`00 83 00 2c
    01 03 00 10  60 01 40 5a bc de f0 12 34 56 78 9a bc de f0 01
    02 01 00 0c  4c 49 4f 2d 4f 52 47 20 61 62 63 64
    41 94 00 04  00 00 00 01`);
  const { designators, truncated } = parseDeviceIdentification(page);
  t.equal(truncated, false);
  t.equal(designators.length, 3);
  const [naa, t10, rtp] = designators as [(typeof designators)[0], (typeof designators)[0], (typeof designators)[0]];
  t.match(naa, { codeSet: 1, association: 0, designatorType: 3, piv: false, protocolIdentifier: 0 });
  t.equal(naa.designator.toString('hex'), '6001405abcdef0123456789abcdef001');
  t.equal(designatorText(naa), '6001405abcdef0123456789abcdef001');
  t.match(t10, { codeSet: 2, association: 0, designatorType: 1 });
  t.equal(designatorText(t10), 'LIO-ORG abcd');
  t.match(rtp, { codeSet: 1, association: 1, designatorType: 4, piv: true, protocolIdentifier: 4 });
  t.equal(rtp.designator.readUInt32BE(0), 1);
  t.equal(findLuNaa(designators), naa);
  const copy = Buffer.from(page);
  page.fill(0, 8, 24);
  t.equal(naa.designator.toString('hex'), '6001405abcdef0123456789abcdef001', 'designators are copies');
  copy.copy(page);

  const cut = parseDeviceIdentification(page.subarray(0, 30));
  t.equal(cut.truncated, true);
  t.equal(cut.designators.length, 1, 'only the complete descriptor');

  /* Second descriptor claims 0x20 bytes, past PAGE LENGTH 0x18. */
  t.throws(
    () =>
      parseDeviceIdentification(
        hex('00 83 00 18 01 03 00 08 11 22 33 44 55 66 77 88 02 01 00 20 41 42 43 44 45 46 47 48'),
      ),
    { name: 'ScsiParseError', code: 'overrun' },
  );
  t.throws(() => parseDeviceIdentification(hex('00 83 00 02 01 03')), { code: 'overrun' });
  t.same(parseDeviceIdentification(hex('00 83 00 00')).designators, []);
});

t.test('VPD B0h block limits', async (t) => {
  const page = hex(`00 b0 00 3c
    01 00 00 08  00 00 08 00  00 00 01 00  00 00 00 00
    00 40 00 00  00 00 00 01  00 00 00 08  80 00 00 02
    00 00 00 00 00 40 00 00
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00`);
  t.equal(page.length, 64);
  t.same(parseBlockLimits(page), {
    wsnz: true,
    maxCompareAndWriteLength: 0,
    optimalTransferLengthGranularity: 8,
    maxTransferLength: 0x800,
    optimalTransferLength: 0x100,
    maxPrefetchLength: 0,
    maxUnmapLbaCount: 0x400000,
    maxUnmapBlockDescriptorCount: 1,
    optimalUnmapGranularity: 8,
    ugavalid: true,
    unmapGranularityAlignment: 2,
    maxWriteSameLength: 0x400000n,
    short: false,
    truncated: false,
  });
  /* SBC-2 era page: 0x0c bytes only. */
  const old = parseBlockLimits(hex('00 b0 00 0c 00 00 00 01 00 00 01 00 00 00 00 80'));
  t.equal(old.maxTransferLength, 0x100);
  t.equal(old.optimalTransferLength, 0x80);
  t.equal(old.maxUnmapLbaCount, 0);
  t.equal(old.maxWriteSameLength, 0n);
  t.equal(old.short, true);
});

t.test('VPD B2h logical block provisioning', async (t) => {
  t.same(parseLogicalBlockProvisioning(hex('00 b2 00 04 00 e6 02 00')), {
    thresholdExponent: 0,
    lbpu: true,
    lbpws: true,
    lbpws10: true,
    lbprz: 1,
    ancSup: true,
    dp: false,
    provisioningType: 2,
  });
  const p = parseLogicalBlockProvisioning(hex('00 b2 00 04 09 80 00 00'));
  t.match(p, { thresholdExponent: 9, lbpu: true, lbpws: false, lbprz: 0, ancSup: false });
  t.throws(() => parseLogicalBlockProvisioning(hex('00 b2 00 04 00')), { code: 'short' });
});

t.test('READ CAPACITY(16)', async (t) => {
  const rc = parseReadCapacity16(
    hex(`00 00 00 00 00 1f ff ff  00 00 02 00  00 03 c0 00
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00`),
  );
  t.equal(rc.lastLba, 0x1fffffn);
  t.equal(rc.blockCount, 0x200000n);
  t.equal(rc.blockLength, 512);
  t.equal(rc.physicalBlockExponent, 3);
  t.equal(rc.lbpme, true);
  t.equal(rc.lbprz, true);
  t.equal(rc.lowestAlignedLba, 0);
  t.equal(rc.protectionType, 0);
  const prot = parseReadCapacity16(hex('ff ff ff ff ff ff ff fe 00 00 10 00 03 20 80 07'));
  t.equal(prot.lastLba, 0xfffffffffffffffen);
  t.equal(prot.blockLength, 4096);
  t.equal(prot.protectionType, 2, 'P_TYPE 001b + PROT_EN = type 2');
  t.equal(prot.piExponent, 2);
  t.equal(prot.lbpme, true);
  t.equal(prot.lbprz, false);
  t.equal(prot.lowestAlignedLba, 7);
  t.throws(() => parseReadCapacity16(hex('00 00 00 00 00 1f ff ff 00 00 02 00')), { code: 'short' });
});

t.test('REPORT LUNS', async (t) => {
  const data = hex(`00 00 00 18 00 00 00 00
    00 00 00 00 00 00 00 00
    00 01 00 00 00 00 00 00
    41 00 00 00 00 00 00 00`);
  t.same(parseReportLuns(data), {
    luns: [0n, 0x0001000000000000n, 0x4100000000000000n],
    listLength: 24,
    truncated: false,
  });
  t.same(parseReportLuns(data.subarray(0, 20)), { luns: [0n], listLength: 24, truncated: true });
  t.throws(() => parseReportLuns(hex('00 00 00 09 00 00 00 00')), { code: 'bad-format' });
  t.throws(() => parseReportLuns(hex('00 00 00 08')), { code: 'short' });
});

t.test('fixed-format sense', async (t) => {
  const inval = parseSense(hex('70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 02'));
  t.match(inval, { format: 'fixed', responseCode: 0x70, deferred: false, key: 5, asc: 0x24, ascq: 0 });
  t.equal(inval.info, undefined, 'VALID = 0: no information');
  t.same(inval.senseKeySpecific, { raw: 0xc00002, fieldPointer: { inCdb: true, byte: 2 } });
  t.equal(inval.text, 'ILLEGAL_REQUEST: Invalid field in CDB (24h/00h)');

  const med = parseSense(hex('f1 00 03 00 12 34 56 0a 00 00 00 00 11 00 00 00 00 00'));
  t.match(med, { responseCode: 0x71, deferred: true, key: 3, asc: 0x11, ascq: 0, info: 0x123456n });
  t.equal(med.text, 'MEDIUM_ERROR: Unrecovered read error (11h/00h)');

  const ua = parseSense(hex('70 00 06 00 00 00 00 0a 00 00 00 00 2a 09 00 00 00 00'));
  t.match(ua, { key: 6, asc: 0x2a, ascq: 0x09 });
  t.match(ua.text, /Capacity data has changed/);

  const nr = parseSense(hex('70 00 02 00 00 00 00 0a 00 00 00 00 04 01 00 80 80 00'));
  t.match(nr, { key: 2, asc: 4, ascq: 1 });
  t.same(nr.senseKeySpecific, { raw: 0x808000, progress: 0x8000 });

  const ili = parseSense(hex('70 00 25 00 00 00 00 0a 00 00 00 07 00 00 05 00 00 00'));
  t.match(ili, { ili: true, eom: false, key: 5, commandSpecific: 7n, fru: 5 });

  /* Only 8 bytes, ADDITIONAL SENSE LENGTH 0: ASC/ASCQ absent read as 0. */
  t.match(parseSense(hex('70 00 06 00 00 00 00 00')), { key: 6, asc: 0, ascq: 0 });
  /* ADDITIONAL SENSE LENGTH 4 hides ASC even though bytes follow. */
  t.match(parseSense(hex('70 00 06 00 00 00 00 04 00 00 00 00 29 00 00 00 00 00')), { asc: 0, ascq: 0 });
  t.match(parseSense(hex('70 00 0b')), { key: 0x0b });
  t.throws(() => parseSense(hex('70 00')), { code: 'short' });
});

t.test('descriptor-format sense', async (t) => {
  const oor = parseSense(hex('72 05 21 00 00 00 00 0c 00 0a 80 00 00 00 00 00 00 00 10 00'));
  t.match(oor, {
    format: 'descriptor',
    responseCode: 0x72,
    deferred: false,
    key: 5,
    asc: 0x21,
    ascq: 0,
    info: 0x1000n,
  });
  t.equal(oor.descriptors.length, 1);
  t.equal(oor.text, 'ILLEGAL_REQUEST: Logical block address out of range (21h/00h)');

  const d = parseSense(hex('73 0b 47 00 00 00 00 08 02 06 00 00 80 00 05 00'));
  t.match(d, { deferred: true, key: 0x0b, asc: 0x47 });
  t.same(d.senseKeySpecific, { raw: 0x800005 });

  const fp = parseSense(
    hex(`72 05 26 00 00 00 00 14
    02 06 00 00 8a 00 10 00
    01 0a 00 00 00 00 00 00 00 00 00 2a`),
  );
  t.same(fp.senseKeySpecific, { raw: 0x8a0010, fieldPointer: { inCdb: false, byte: 0x10, bitPointer: 2 } });
  t.equal(fp.commandSpecific, 0x2an);

  const ili = parseSense(hex('72 05 24 00 00 00 00 04 05 02 00 20'));
  t.equal(ili.ili, true, 'block commands descriptor ILI');

  /* Information descriptor cut short by ADDITIONAL SENSE LENGTH: ignored, no throw. */
  const cut = parseSense(hex('72 02 04 01 00 00 00 06 00 0a 80 00 00 00 00 00 00 00 10 00'));
  t.match(cut, { key: 2, asc: 4, ascq: 1 });
  t.equal(cut.info, undefined);
  t.equal(cut.descriptors.length, 0);
  /* VALID = 0 in the information descriptor. */
  t.equal(parseSense(hex('72 05 21 00 00 00 00 0c 00 0a 00 00 00 00 00 00 00 00 10 00')).info, undefined);
  t.match(parseSense(hex('72 06')), { key: 6, asc: 0, ascq: 0 });
});

t.test('bad sense', async (t) => {
  t.throws(() => parseSense(Buffer.alloc(0)), { name: 'ScsiParseError', code: 'short' });
  t.throws(() => parseSense(hex('00 00 05 00')), { code: 'bad-format' });
  t.throws(() => parseSense(hex('7f 00 05 00')), { code: 'bad-format' });
});

t.test('random and mutated input never escapes as anything but ScsiParseError', async (t) => {
  let seed = 0x1234567;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const parsers = [
    parseStandardInquiry,
    parseSupportedVpdPages,
    parseUnitSerialNumber,
    parseDeviceIdentification,
    parseBlockLimits,
    parseLogicalBlockProvisioning,
    parseReadCapacity16,
    parseReportLuns,
    parseSense,
    parseModeSense10,
    (b: Buffer) => findCachingPage(parseModeSense10(b)),
  ];
  const seeds = [
    hex('00 83 00 0c 01 03 00 08 11 22 33 44 55 66 77 88'),
    hex('72 05 21 00 00 00 00 0c 00 0a 80 00 00 00 00 00 00 00 10 00'),
    hex('70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 c0 00 02'),
    hex('00 b2 00 04 00 e6 02 00'),
    hex('00 1a 00 10 00 00 00 00 08 12 04 00 00 00 00 00 00 00 00 00 00 00 00 00'),
    hex('00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00'),
  ];
  let others = 0;
  let runs = 0;
  for (let i = 0; i < 20000; i++) {
    let b: Buffer;
    if (i % 2 === 0) {
      b = Buffer.alloc(rnd(80));
      for (let j = 0; j < b.length; j++) b[j] = rnd(256);
    } else {
      const s = seeds[rnd(seeds.length)]!;
      b = Buffer.from(s.subarray(0, rnd(s.length + 1)));
      for (let k = rnd(4); k >= 0 && b.length > 0; k--) b[rnd(b.length)] = rnd(256);
    }
    for (const p of parsers) {
      runs++;
      try {
        p(b);
      } catch (e) {
        if (!(e instanceof ScsiParseError)) others++;
      }
    }
  }
  t.equal(others, 0, `${runs} parser runs, no foreign exception`);
});

t.test('MODE SENSE(6) data: the 4-byte header, WP and DPOFUA (SPC-4 table 443, SBC-3 table 171)', async (t) => {
  // LIO's answer to sd's MODE SENSE(6) for all pages, cut to 4 bytes: a write-protected LUN
  // (DEVICE-SPECIFIC PARAMETER 90h: WP, DPOFUA) with an 8-byte block descriptor not sent.
  const wp = parseModeSense6(hex('2b 00 90 08'));
  t.equal(wp.writeProtected, true);
  t.equal(wp.dpoFua, true);
  t.equal(wp.modeDataLength, 0x2b);
  t.equal(wp.truncated, true);
  t.same(wp.pages, []);
  const rw = parseModeSense6(hex('03 00 00 00'));
  t.equal(rw.writeProtected, false);
  t.equal(rw.truncated, false);
  // A block descriptor skipped, then the caching page.
  const full = parseModeSense6(
    hex(`17 00 80 08  00 00 00 00 00 00 02 00
                                   08 0a 04 00 00 00 00 00 00 00 00 00`),
  );
  t.equal(full.writeProtected, true);
  t.same(findCachingPage(full), { writeCacheEnabled: true, readCacheDisabled: false });
  t.throws(() => parseModeSense6(hex('03 00 80')), { code: 'short' });
});

t.test('MODE SENSE(10) data and the caching page (SPC-4 table 443, SBC-3 table 174)', async (t) => {
  // LIO's answer for page 08h with DBD: header (MODE DATA LENGTH 26, DPOFUA), caching page, WCE set.
  const lio = hex(`00 1a 00 10 00 00 00 00
                   08 12 04 00 ff ff 00 00 ff ff ff ff 00 00 00 00 00 00 00 00`);
  const ms = parseModeSense10(lio);
  t.equal(ms.modeDataLength, 26);
  t.equal(ms.dpoFua, true);
  t.equal(ms.writeProtected, false);
  t.equal(ms.truncated, false);
  t.same(
    ms.pages.map((p) => [p.page, p.subpage, p.data.length]),
    [[8, 0, 18]],
  );
  t.same(findCachingPage(ms), { writeCacheEnabled: true, readCacheDisabled: false });

  // WP, no DPOFUA, an 8-byte block descriptor to skip, RCD without WCE, then a subpage-format page.
  const other = hex(`00 28 00 80 00 00 00 08  00 00 00 00 00 00 02 00
                     08 12 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
                     4a 01 00 02 aa bb`);
  const o = parseModeSense10(other);
  t.equal(o.writeProtected, true);
  t.equal(o.dpoFua, false);
  t.same(
    o.pages.map((p) => [p.page, p.subpage, p.data.toString('hex')]),
    [
      [8, 0, '010000000000000000000000000000000000'],
      [0x0a, 1, 'aabb'],
    ],
  );
  t.same(findCachingPage(o), { writeCacheEnabled: false, readCacheDisabled: true });

  // Cut by the allocation length: what arrived is used, and it says so.
  const cut = parseModeSense10(lio.subarray(0, 11));
  t.equal(cut.truncated, true);
  t.same(findCachingPage(cut), { writeCacheEnabled: true, readCacheDisabled: false });
  t.equal(findCachingPage(parseModeSense10(lio.subarray(0, 10))), undefined, 'page cut before its byte 2');
  t.equal(findCachingPage(parseModeSense10(hex('00 06 00 00 00 00 00 00'))), undefined, 'no pages');
  t.throws(() => parseModeSense10(hex('00 06 00 00')), { code: 'short' });
});
