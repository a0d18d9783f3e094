/**
 * LUN identity: which designators count, comparison with readable differences, JSON round trip,
 * and end to end through ScsiDisk.probe() against a RamScsiLun whose identity changes.
 */
import t from 'tap';
import {
  LunIdentityError,
  describeIdentity,
  identityFromJSON,
  identityToJSON,
  logicalUnitKey,
  lunIdentity,
  sameIdentity,
} from '../src/initiator/lun-identity.js';
import type { Designator } from '../src/initiator/scsi-parse.js';
import { ScsiDisk } from '../src/initiator/scsi-disk.js';
import type { ScsiExecutor } from '../src/initiator/scsi-executor.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';

const naa = (hex: string): Designator => ({
  protocolIdentifier: 0,
  codeSet: 1,
  piv: false,
  association: 0,
  designatorType: 3,
  designator: Buffer.from(hex, 'hex'),
});
const t10 = (text: string): Designator => ({
  protocolIdentifier: 0,
  codeSet: 2,
  piv: false,
  association: 0,
  designatorType: 1,
  designator: Buffer.from(text, 'latin1'),
});
const port = (n: number): Designator => ({
  protocolIdentifier: 4,
  codeSet: 1,
  piv: true,
  association: 1,
  designatorType: 4,
  designator: Buffer.from([0, 0, 0, n]),
});
const tpg = (n: number): Designator => ({
  protocolIdentifier: 0,
  codeSet: 1,
  piv: false,
  association: 1,
  designatorType: 5,
  designator: Buffer.from([0, 0, 0, n]),
});

const NAA1 = '6001405abcdef0123456789abcdef001';
const NAA2 = '6001405abcdef0123456789abcdef002';

const base = {
  designators: [port(1), naa(NAA1), t10('LIO-ORG abc'), naa(NAA1)],
  serial: 'abc',
  blockSize: 512,
  blockCount: 2048n,
  vendor: 'LIO-ORG',
  product: 'IBLOCK',
  revision: '4.0',
};

t.test('only logical-unit designators count, canonical order', async (t) => {
  const id = lunIdentity(base);
  t.same(id.designators, [
    { designatorType: 1, codeSet: 2, value: Buffer.from('LIO-ORG abc').toString('hex') },
    { designatorType: 3, codeSet: 1, value: NAA1 },
  ]);
  t.equal(id.serial, 'abc');
  t.equal(describeIdentity(id), `LIO-ORG IBLOCK, naa.${NAA1}, serial "abc", 2048 x 512-byte blocks (1 MiB)`);
  t.equal(lunIdentity({ ...base, serial: '' }).serial, undefined, 'an empty serial is no serial');
});

t.test('the same LU through another port, after a firmware upgrade, is the same', async (t) => {
  const a = lunIdentity(base);
  const b = lunIdentity({ ...base, designators: [tpg(2), t10('LIO-ORG abc'), naa(NAA1), port(2)], revision: '5.0' });
  t.same(sameIdentity(a, b), { same: true, grown: false, differences: [], weak: false });
});

t.test('differences are spelled out', async (t) => {
  const a = lunIdentity(base);
  t.same(sameIdentity(a, lunIdentity({ ...base, serial: 'xyz' })).differences, [
    'serial number changed: "abc" -> "xyz"',
  ]);
  t.same(sameIdentity(a, lunIdentity({ ...base, designators: [naa(NAA2), t10('LIO-ORG abc')] })).differences, [
    `NAA designator changed: naa.${NAA1} -> naa.${NAA2}`,
  ]);
  t.same(sameIdentity(a, lunIdentity({ ...base, designators: [t10('LIO-ORG abc')] })).differences, [
    `NAA designator naa.${NAA1} is gone`,
  ]);
  t.same(sameIdentity(lunIdentity({ ...base, designators: [naa(NAA1)] }), a).differences, [
    'T10 vendor ID designator "LIO-ORG abc" appeared',
  ]);
  const grown = sameIdentity(a, lunIdentity({ ...base, blockCount: 4096n }));
  t.same(grown, { same: true, grown: true, differences: [], weak: false }, 'a LUN that grew is the same disk');
  t.same(sameIdentity(a, lunIdentity({ ...base, blockCount: 1024n })).differences, [
    'capacity shrank below the attached size: 2048 x 512-byte blocks (1 MiB) -> 1024 x 512-byte blocks (512 KiB)',
  ]);
  const r = sameIdentity(a, lunIdentity({ ...base, blockSize: 4096, blockCount: 256n, serial: undefined }));
  t.equal(r.same, false);
  t.same(r.differences, ['serial number changed: "abc" -> (none)', 'logical block size changed: 512 -> 4096']);
});

t.test('an identity with nothing but capacity is weak', async (t) => {
  const a = lunIdentity({ designators: [port(1)], blockSize: 512, blockCount: 100n });
  const r = sameIdentity(a, lunIdentity({ designators: [], blockSize: 512, blockCount: 100n }));
  t.same(r, { same: true, grown: false, differences: [], weak: true });
  t.equal(sameIdentity(lunIdentity(base), lunIdentity(base)).weak, false);
});

t.test('JSON round trip and validation', async (t) => {
  const a = lunIdentity(base);
  const json = JSON.parse(JSON.stringify(identityToJSON(a))) as unknown;
  t.same(json, {
    designators: a.designators,
    serial: 'abc',
    blockSize: 512,
    blockCount: '2048',
    vendor: 'LIO-ORG',
    product: 'IBLOCK',
    revision: '4.0',
  });
  const back = identityFromJSON(json);
  t.same(back, a);
  t.equal(sameIdentity(a, back).same, true);
  const big = lunIdentity({ designators: [], blockSize: 4096, blockCount: 0xffffffffffffn });
  t.equal(identityFromJSON(JSON.parse(JSON.stringify(identityToJSON(big)))).blockCount, 0xffffffffffffn);

  const good = identityToJSON(a);
  const bad: unknown[] = [
    null,
    'x',
    { ...good, designators: 'no' },
    { ...good, designators: [{ designatorType: 3, codeSet: 1, value: 'XYZ' }] },
    { ...good, designators: [{ designatorType: 16, codeSet: 1, value: '00' }] },
    { ...good, designators: [null] },
    { ...good, blockSize: 0 },
    { ...good, blockCount: 2048 },
    { ...good, blockCount: '-1' },
    { ...good, serial: 5 },
  ];
  for (const b of bad) t.throws(() => identityFromJSON(b), LunIdentityError, JSON.stringify(b));
});

t.test('end to end: probe, identity change on the LU, probe again', async (t) => {
  const lun = new RamScsiLun({ serial: 'disk-A', blocks: 1024 });
  const exec: ScsiExecutor = {
    async execute(cmd) {
      const r = await lun.execute(cmd.cdb, cmd.dataOut, cmd.dataInLength ?? 0);
      return { ...r, residual: 0 };
    },
  };
  const disk = new ScsiDisk(exec, { lun: 0n, sleep: async () => {} });
  const first = (await disk.probe()).identity;
  t.equal(sameIdentity(first, (await disk.probe()).identity).same, true, 'probing twice: same');

  lun.changeIdentity({ serial: 'disk-B', naa: RamScsiLun.naaFromSerial('disk-B') });
  const second = (await disk.probe()).identity;
  const r = sameIdentity(first, second);
  t.equal(r.same, false);
  t.equal(r.differences.length, 3, r.differences.join('; '));
  t.match(
    r.differences[0],
    /^T10 vendor ID designator changed: "SRPNBD {2}RAM LUN:disk-A" -> "SRPNBD {2}RAM LUN:disk-B"$/,
  );
  t.match(r.differences[1], /^NAA designator changed: naa\.[0-9a-f]{32} -> naa\.[0-9a-f]{32}$/);
  t.equal(r.differences[2], 'serial number changed: "disk-A" -> "disk-B"');

  lun.changeIdentity({ serial: 'disk-A', naa: RamScsiLun.naaFromSerial('disk-A'), blocks: 2048 });
  const third = (await disk.probe()).identity;
  t.same(sameIdentity(first, third), { same: true, grown: true, differences: [], weak: false }, 'grown: same disk');
  lun.changeIdentity({ blocks: 512 });
  t.same(sameIdentity(first, (await disk.probe()).identity).differences, [
    'capacity shrank below the attached size: 1024 x 512-byte blocks (512 KiB) -> 512 x 512-byte blocks (256 KiB)',
  ]);
});

t.test('logicalUnitKey: designators and serial, not the path, the size or the revision', async (t) => {
  const a = logicalUnitKey(lunIdentity(base));
  t.type(a, 'string');
  const samePathless = lunIdentity({
    ...base,
    designators: [tpg(2), naa(NAA1), t10('LIO-ORG abc'), port(2)],
    blockCount: 4096n,
    revision: '5.0',
  });
  t.equal(logicalUnitKey(samePathless), a, 'another port, grown, new firmware: the same LU');
  t.not(logicalUnitKey(lunIdentity({ ...base, designators: [naa(NAA2), t10('LIO-ORG abc')] })), a, 'other NAA');
  t.not(logicalUnitKey(lunIdentity({ ...base, serial: 'abd' })), a, 'other serial');
  t.equal(logicalUnitKey(lunIdentity({ ...base, designators: [port(1)], serial: '' })), undefined, 'nothing names it');
});
