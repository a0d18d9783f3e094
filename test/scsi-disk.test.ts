/**
 * ScsiDisk against RamScsiLun through a trivial in-test executor (no SRP): probe, every block
 * operation with data verification, splitting by the target's limits, unmap granularity,
 * write-zeroes both ways, each retry rule with its bound, errno mapping, TransportError
 * pass-through, REPORT LUNS.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import {
  DiskRequestError,
  ScsiDisk,
  ScsiError,
  reportLuns,
  type ScsiDiskEvent,
  type ScsiDiskOptions,
} from '../src/initiator/scsi-disk.js';
import {
  TransportError,
  type ScsiCommand,
  type ScsiExecutor,
  type ScsiResult,
  type ScsiTargetLun,
} from '../src/initiator/scsi-executor.js';
import { lunToSam } from '../src/initiator/scsi-cdb.js';
import * as c from '../src/initiator/scsi-constants.js';
import { RamScsiLun, buildSense, type RamScsiLunOptions } from '../src/testing/scsi-lun.js';

/** Carries commands to RamScsiLuns in process, the way a transport would (truncation, residual). */
class LoopExecutor implements ScsiExecutor {
  inflight = 0;
  maxInflight = 0;
  commands = 0;
  constructor(readonly luns: Map<bigint, ScsiTargetLun>) {}
  async execute(cmd: ScsiCommand): Promise<ScsiResult> {
    this.commands++;
    this.inflight++;
    this.maxInflight = Math.max(this.maxInflight, this.inflight);
    try {
      await new Promise((r) => setImmediate(r));
      const lu = this.luns.get(cmd.lun);
      if (!lu) {
        return {
          status: c.SAM_STAT_CHECK_CONDITION,
          sense: buildSense(c.ILLEGAL_REQUEST, c.ASC_LOGICAL_UNIT_NOT_SUPPORTED, 0),
          residual: 0,
        };
      }
      const r = await lu.execute(cmd.cdb, cmd.dataOut, cmd.dataInLength ?? 0);
      const res: ScsiResult = { status: r.status, residual: 0 };
      if (r.sense) res.sense = Buffer.from(r.sense);
      const want = cmd.dataInLength ?? 0;
      if (want > 0) {
        const src = r.dataIn ?? Buffer.alloc(0);
        const n = Math.min(src.length, want);
        const dst = cmd.dataIn ?? Buffer.alloc(want);
        src.copy(dst, 0, 0, n);
        res.dataIn = dst.subarray(0, n);
        res.residual = want - n;
      }
      return res;
    } finally {
      this.inflight--;
    }
  }
}

interface Rig {
  lun: RamScsiLun;
  exec: LoopExecutor;
  disk: ScsiDisk;
  sleeps: number[];
  events: ScsiDiskEvent[];
}

function rig(lunOpts: RamScsiLunOptions = {}, diskOpts: Partial<ScsiDiskOptions> = {}): Rig {
  const lun = new RamScsiLun(lunOpts);
  const exec = new LoopExecutor(new Map([[lunToSam(0), lun]]));
  const sleeps: number[] = [];
  const events: ScsiDiskEvent[] = [];
  const disk = new ScsiDisk(exec, {
    lun: lunToSam(0),
    sleep: async (ms) => {
      sleeps.push(ms);
    },
    onEvent: (e) => events.push(e),
    ...diskOpts,
  });
  return { lun, exec, disk, sleeps, events };
}

const thin = {
  lbpme: true,
  lbpu: true,
  lbpws: true,
  lbprz: true,
};

t.test('probe a thin 512-byte LUN', async (t) => {
  const { disk, lun, exec } = rig({
    blockSize: 512,
    blocks: 4096,
    vendor: 'LIO-ORG',
    product: 'ramdisk',
    serial: 'abc123',
    provisioning: thin,
    physicalBlockExponent: 3,
    limits: {
      maxTransferLength: 256,
      optimalTransferLength: 128,
      maxUnmapLbaCount: 1024,
      maxUnmapBlockDescriptorCount: 16,
      optimalUnmapGranularity: 8,
      unmapGranularityAlignment: 0,
      maxWriteSameLength: 512,
    },
  });
  const p = await disk.probe();
  t.equal(p.inquiry.vendor, 'LIO-ORG');
  t.equal(p.inquiry.product, 'ramdisk');
  t.same(p.vpdPages, [0x00, 0x80, 0x83, 0xb0, 0xb2]);
  t.equal(p.serial, 'abc123');
  t.equal(p.designators.length, 3);
  t.same(p.geometry, {
    blockSize: 512,
    blockCount: 4096n,
    sizeBytes: 4096 * 512,
    physicalBlockSize: 4096,
    alignmentOffsetBytes: 0,
    protectionType: 0,
  });
  t.match(p.limits, {
    maxTransferBlocks: 256,
    optimalTransferBlocks: 128,
    trim: 'unmap',
    maxUnmapBlocks: 1024,
    maxUnmapDescriptors: 16,
    unmapGranularityBlocks: 8,
    unmapAlignmentBlocks: 0,
    writeSame: true,
    writeSameUnmapZeroes: true,
    maxWriteSameBlocks: 512,
    lbpme: true,
    lbprz: true,
  });
  t.equal(p.identity.serial, 'abc123');
  t.equal(p.identity.blockCount, 4096n);
  t.same(
    p.identity.designators.map((d) => d.designatorType),
    [1, 3],
    'T10 vendor ID and NAA; the target port designator is not identity',
  );
  t.equal(p.identity.designators[1]!.value, lun.naa.toString('hex'));
  t.same(
    lun.log.map((e) => e.name),
    [
      'TEST_UNIT_READY',
      'INQUIRY',
      // once it is known to be a disk, together: the VPD page list, capacity, cache, WP ...
      'INQUIRY',
      'READ_CAPACITY_16',
      'MODE_SENSE_10',
      'MODE_SENSE',
      // ... then the pages it lists, together
      'INQUIRY',
      'INQUIRY',
      'INQUIRY',
      'INQUIRY',
    ],
  );
  t.equal(exec.maxInflight, 4, 'the independent reads were in flight together: 4 round trips, not 10');
  t.same(
    lun.log.slice(6).map((e) => e.cdb[2]),
    [0x80, 0x83, 0xb0, 0xb2],
    'serial, device identification, block limits, provisioning',
  );
  t.same(p.writeProtect, { writeProtected: false, source: 'mode-sense' });
  t.same(
    lun.logOf('MODE_SENSE')[0]!.cdb,
    Buffer.from('1a003f000400', 'hex'),
    'WP read as sd: MODE SENSE(6), page 3Fh, 4 bytes',
  );
});

t.test('the WP bit: MODE SENSE(6), then page 0, then MODE SENSE(10), else assumed off (sd)', async (t) => {
  const wp = rig({ writeProtected: true });
  t.same((await wp.disk.probe()).writeProtect, { writeProtected: true, source: 'mode-sense' });
  t.equal(wp.disk.writeProtected, true);

  // A target without MODE SENSE(6): the 10-byte command after two refusals.
  const ten = rig({ writeProtected: true });
  ten.lun.injectSense(c.ILLEGAL_REQUEST, c.ASC_INVALID_COMMAND_OPERATION_CODE, 0, 2, (cdb) => cdb[0] === c.MODE_SENSE);
  t.same(await ten.disk.readWriteProtect(), { writeProtected: true, source: 'mode-sense' });
  t.same(
    ten.lun.log.map((e) => e.cdb.toString('hex')),
    ['1a003f000400', '1a0000000400', '5a083f00000000000800'],
    'page 3Fh, page 0, then MODE SENSE(10) page 3Fh for the 8-byte header',
  );

  // No MODE SENSE at all: write enabled, as sd assumes.
  const none = rig({ writeProtected: true, modeSense: false });
  t.same((await none.disk.probe()).writeProtect, { writeProtected: false, source: 'assumed' });

  // The bit followed later (identity check, rescan): adoptWriteProtect says whether it changed.
  wp.lun.writeProtected = false;
  const now = await wp.disk.readWriteProtect();
  t.equal(wp.disk.adoptWriteProtect(now), true);
  t.equal(wp.disk.writeProtected, false);
  t.equal(wp.disk.adoptWriteProtect(now), false);
});

t.test('probe a 4096-byte LUN without VPD pages', async (t) => {
  const { disk } = rig({ blockSize: 4096, blocks: 300, vpd: false });
  const p = await disk.probe();
  t.same(p.vpdPages, []);
  t.equal(p.serial, undefined);
  t.same(p.identity.designators, []);
  t.equal(p.geometry.blockSize, 4096);
  t.equal(p.geometry.sizeBytes, 300 * 4096);
  t.equal(p.limits.trim, 'none');
  t.equal(p.limits.maxTransferBlocks, (4 * 1024 * 1024) / 4096, 'default cap when nobody states a limit');
  t.equal(p.limits.writeSameUnmapZeroes, false);
});

t.test('probe of a LUN that is not there fails', async (t) => {
  const lun = new RamScsiLun();
  const exec = new LoopExecutor(new Map([[lunToSam(0), lun]]));
  const disk = new ScsiDisk(exec, { lun: lunToSam(7) });
  await t.rejects(disk.probe(), { name: 'ScsiError', code: 'EINVAL', sense: { key: c.ILLEGAL_REQUEST, asc: 0x25 } });
  await t.rejects(disk.read(0, 512), DiskRequestError, 'block ops need a probe');
});

t.test('read and write with data verification, FUA, caller buffer', async (t) => {
  for (const blockSize of [512, 4096] as const) {
    const { disk, lun } = rig({ blockSize, blocks: 256 });
    await disk.probe();
    const data = randomBytes(blockSize * 37);
    await disk.write(blockSize * 11, data);
    t.same(lun.peek(11, 37), data, `${blockSize}: LUN holds what was written`);
    t.same(await disk.read(blockSize * 11, data.length), data, `${blockSize}: read back`);
    const w = lun.logOf('WRITE_16');
    t.same(
      w.map((e) => [e.lba, e.blocks, e.fua]),
      [[11n, 37, false]],
    );

    await disk.write(0, data.subarray(0, blockSize), { fua: true });
    t.equal(lun.logOf('WRITE_16').at(-1)!.fua, true, 'FUA bit sent');

    const dst = Buffer.alloc(blockSize * 40, 0xee);
    const got = await disk.read(blockSize * 11, blockSize * 37, dst);
    t.equal(got.buffer, dst.buffer, 'read lands in the caller buffer');
    t.same(dst.subarray(0, data.length), data);
    t.equal(dst[data.length], 0xee, 'nothing written past the request');
  }
});

t.test('requests are split by MAXIMUM TRANSFER LENGTH, granularity and the transport cap', async (t) => {
  const { disk, lun, exec } = rig(
    { blocks: 1024, limits: { maxTransferLength: 16, optimalTransferLengthGranularity: 6 } },
    { maxInflightPerRequest: 3 },
  );
  const p = await disk.probe();
  t.equal(p.limits.maxTransferBlocks, 12, '16 rounded down to the 6-block granularity');
  const data = randomBytes(512 * 100);
  lun.clearLog();
  exec.maxInflight = 0; // the probe's own reads went out together
  await disk.write(512 * 3, data);
  const w = lun.logOf('WRITE_16');
  t.same(
    w.map((e) => [Number(e.lba), e.blocks]),
    [
      [3, 12],
      [15, 12],
      [27, 12],
      [39, 12],
      [51, 12],
      [63, 12],
      [75, 12],
      [87, 12],
      [99, 4],
    ],
  );
  t.ok(exec.maxInflight > 1 && exec.maxInflight <= 3, `chunks run concurrently, at most 3 (saw ${exec.maxInflight})`);
  t.same(lun.peek(3, 100), data);
  t.same(await disk.read(512 * 3, data.length), data);
  t.ok(lun.logOf('READ_16').every((e) => e.blocks! <= 12));

  const capped = rig({ blocks: 1024 }, { maxTransferBytes: 8192 });
  await capped.disk.probe();
  t.equal(capped.disk.limits.maxTransferBlocks, 16, 'transport cap in bytes');
  await capped.disk.write(0, randomBytes(512 * 40));
  t.same(
    capped.lun.logOf('WRITE_16').map((e) => e.blocks),
    [16, 16, 8],
  );
});

t.test('a failing chunk fails the request after all chunks settled', async (t) => {
  const { disk, lun } = rig({ blocks: 1024, limits: { maxTransferLength: 8 } });
  await disk.probe();
  let reads = 0;
  lun.injectFault({
    status: c.SAM_STAT_CHECK_CONDITION,
    sense: buildSense(c.MEDIUM_ERROR, 0x11, 0, { info: 20n }),
    match: (cdb) => cdb[0] === c.READ_16 && ++reads === 3,
  });
  const err = await disk.read(0, 512 * 64).catch((e: unknown) => e);
  t.type(err, ScsiError);
  t.match(err, { code: 'EIO', command: 'READ_16', sense: { key: c.MEDIUM_ERROR, asc: 0x11, info: 20n } });
  t.match((err as Error).message, /Unrecovered read error/);
  t.equal(lun.logOf('READ_16').length, 8, 'every chunk was issued and completed');
});

t.test('misaligned and out-of-range requests are refused before anything is sent', async (t) => {
  const { disk, lun } = rig({ blocks: 64 });
  await disk.probe();
  lun.clearLog();
  await t.rejects(disk.read(1, 512), { name: 'DiskRequestError', code: 'EINVAL' });
  await t.rejects(disk.read(0, 100), {
    name: 'DiskRequestError',
    code: 'EINVAL',
    message: /not aligned to the 512-byte block size/,
  });
  await t.rejects(disk.write(512 * 63, Buffer.alloc(1024)), {
    name: 'DiskRequestError',
    code: 'ENOSPC',
    message: /beyond the end/,
  });
  await t.rejects(disk.read(512 * 64, 512), { name: 'DiskRequestError', code: 'EINVAL' });
  await t.rejects(disk.writeZeroes(512 * 60, 512 * 8), { name: 'DiskRequestError', code: 'ENOSPC' });
  await t.rejects(disk.trim(-512, 512), { name: 'DiskRequestError', code: 'EINVAL' });
  await t.rejects(disk.read(0, 1024, Buffer.alloc(512)), {
    name: 'DiskRequestError',
    code: 'EINVAL',
    message: /destination/,
  });
  t.equal(lun.log.length, 0);
  await disk.write(0, Buffer.alloc(0));
  t.equal(lun.log.length, 0, 'an empty write sends nothing');
});

t.test('flush', async (t) => {
  const { disk, lun } = rig();
  await disk.probe();
  await disk.flush();
  t.same(
    lun.logOf('SYNCHRONIZE_CACHE_16').map((e) => [e.lba, e.blocks]),
    [[0n, 0]],
  );
  lun.injectSense(c.ILLEGAL_REQUEST, c.ASC_INVALID_COMMAND_OPERATION_CODE, 0);
  await disk.flush();
  t.pass('a LU without SYNCHRONIZE CACHE counts as flushed');
  lun.injectSense(c.HARDWARE_ERROR, 0x44, 0);
  await t.rejects(disk.flush(), { name: 'ScsiError', code: 'EIO' });
});

t.test('trim honours unmap granularity, alignment, LBA and descriptor counts', async (t) => {
  const { disk, lun } = rig({
    blocks: 256,
    provisioning: thin,
    limits: {
      maxUnmapLbaCount: 16,
      maxUnmapBlockDescriptorCount: 1,
      optimalUnmapGranularity: 8,
      unmapGranularityAlignment: 2,
    },
  });
  await disk.probe();
  await disk.write(0, randomBytes(512 * 256));
  t.equal(lun.mappedCount(), 256);
  lun.clearLog();
  await disk.trim(0, 512 * 40);
  const cmds = lun.logOf('UNMAP');
  t.same(
    cmds.map((e) => e.descriptors!.map((d) => [Number(d.lba), d.blocks])),
    [[[2, 16]], [[18, 16]]],
    'blocks 2..34: whole granules aligned at 2, 16 per command, 1 descriptor each',
  );
  t.ok(cmds.every((e) => e.status === c.SAM_STAT_GOOD));
  for (let b = 0; b < 40; b++)
    t.equal(lun.isMapped(b), b < 2 || b >= 34, `block ${b} ${b < 2 || b >= 34 ? 'kept' : 'unmapped'}`);
  t.same(await disk.read(512 * 2, 512 * 32), Buffer.alloc(512 * 32), 'unmapped blocks read as zeroes (LBPRZ)');

  lun.clearLog();
  await disk.trim(512 * 40, 512 * 5);
  t.equal(lun.log.length, 0, 'a range holding no whole granule sends nothing');
});

t.test('trim through WRITE SAME(16) UNMAP, on a thick LUN, and when the LU refuses', async (t) => {
  const ws = rig({
    blocks: 128,
    provisioning: { lbpme: true, lbpws: true, lbprz: true },
    limits: { maxWriteSameLength: 32 },
  });
  await ws.disk.probe();
  t.equal(ws.disk.limits.trim, 'write-same-unmap');
  await ws.disk.write(0, randomBytes(512 * 128));
  ws.lun.clearLog();
  await ws.disk.trim(0, 512 * 80);
  t.same(
    ws.lun.logOf('WRITE_SAME_16').map((e) => [Number(e.lba), e.blocks, e.unmap]),
    [
      [0, 32, true],
      [32, 32, true],
      [64, 16, true],
    ],
  );
  t.equal(ws.lun.mappedCount(), 48);

  const thick = rig({ blocks: 128 });
  await thick.disk.probe();
  thick.lun.clearLog();
  await thick.disk.trim(0, 512 * 128);
  t.equal(thick.lun.log.length, 0, 'no thin provisioning: trim is a no-op');

  /* The LU advertises UNMAP, then refuses it (INVALID COMMAND OPERATION CODE). */
  const liar = rig({
    blocks: 128,
    provisioning: thin,
    limits: { maxUnmapLbaCount: 64, maxUnmapBlockDescriptorCount: 1 },
  });
  await liar.disk.probe();
  t.equal(liar.disk.limits.trim, 'unmap');
  liar.lun.injectSense(c.ILLEGAL_REQUEST, c.ASC_INVALID_COMMAND_OPERATION_CODE, 0, 1, (cdb) => cdb[0] === c.UNMAP);
  await liar.disk.trim(0, 512 * 64);
  t.equal(liar.disk.limits.trim, 'none', 'trim disabled after the refusal');
  t.ok(liar.events.some((e) => e.type === 'trim-disabled'));
  liar.lun.clearLog();
  await liar.disk.trim(0, 512 * 64);
  t.equal(liar.lun.log.length, 0);

  const wp = rig({
    blocks: 128,
    provisioning: thin,
    limits: { maxUnmapLbaCount: 64, maxUnmapBlockDescriptorCount: 1 },
    writeProtected: true,
  });
  await wp.disk.probe();
  await t.rejects(wp.disk.trim(0, 512 * 8), { name: 'ScsiError', code: 'EPERM' }, 'write protect is not swallowed');
});

t.test('write zeroes: WRITE SAME(16) UNMAP, plain WRITE SAME, zero buffers', async (t) => {
  const a = rig({ blocks: 256, provisioning: thin, limits: { maxWriteSameLength: 64 } });
  await a.disk.probe();
  await a.disk.write(0, randomBytes(512 * 256));
  a.lun.clearLog();
  await a.disk.writeZeroes(512 * 10, 512 * 100);
  t.same(
    a.lun.logOf('WRITE_SAME_16').map((e) => [Number(e.lba), e.blocks, e.unmap]),
    [
      [10, 64, true],
      [74, 36, true],
    ],
  );
  t.same(await a.disk.read(512 * 10, 512 * 100), Buffer.alloc(512 * 100));
  t.equal(a.lun.isMapped(50), false, 'hole punched');
  t.equal(a.lun.isMapped(9), true);
  t.equal(a.lun.isMapped(110), true);

  await a.disk.write(512 * 10, randomBytes(512 * 100));
  a.lun.clearLog();
  await a.disk.writeZeroes(512 * 10, 512 * 100, { noHole: true, fua: true });
  t.same(
    a.lun.logOf('WRITE_SAME_16').map((e) => [Number(e.lba), e.blocks, e.unmap]),
    [
      [10, 64, false],
      [74, 36, false],
    ],
    'NO_HOLE: no UNMAP bit',
  );
  t.same(
    a.lun.logOf('SYNCHRONIZE_CACHE_16').map((e) => [Number(e.lba), e.blocks]),
    [[10, 100]],
    'FUA: the range is synchronized',
  );
  t.same(await a.disk.read(512 * 10, 512 * 100), Buffer.alloc(512 * 100));
  t.equal(a.lun.isMapped(50), true, 'no hole');

  /* Unmapped blocks read as garbage: zeroes must never rely on UNMAP. */
  const b = rig({ blocks: 64, provisioning: { lbpme: true, lbpu: true, lbpws: true, lbprz: false } });
  await b.disk.probe();
  t.equal(b.disk.limits.writeSameUnmapZeroes, false);
  await b.disk.writeZeroes(0, 512 * 64);
  t.same(
    b.lun.logOf('WRITE_SAME_16').map((e) => e.unmap),
    [false],
  );
  t.same(await b.disk.read(0, 512 * 64), Buffer.alloc(512 * 64));

  /* No WRITE SAME at all: one refusal, then zero-filled writes. */
  const d = rig({ blocks: 4096, writeSame: false, limits: { maxTransferLength: 1024 } });
  await d.disk.probe();
  await d.disk.write(0, randomBytes(512 * 4096));
  d.lun.clearLog();
  await d.disk.writeZeroes(512 * 100, 512 * 3000, { fua: true });
  t.equal(d.lun.logOf('WRITE_SAME_16').length, 1);
  t.same(
    d.lun.logOf('WRITE_16').map((e) => [Number(e.lba), e.blocks, e.fua]),
    [
      [100, 1024, true],
      [1124, 1024, true],
      [2148, 952, true],
    ],
  );
  t.same(await d.disk.read(512 * 100, 512 * 3000), Buffer.alloc(512 * 3000));
  t.equal(d.disk.limits.writeSame, false);
  t.ok(d.events.some((e) => e.type === 'write-same-disabled'));
  d.lun.clearLog();
  await d.disk.writeZeroes(0, 512 * 8);
  t.same(
    d.lun.log.map((e) => e.name),
    ['WRITE_16'],
    'WRITE SAME not tried again',
  );
  t.same(d.lun.peek(0, 8), Buffer.alloc(512 * 8));
});

t.test('UNIT ATTENTION is retried and recorded; capacity change is noticed', async (t) => {
  const { disk, lun, events } = rig({ blocks: 64 });
  await disk.probe();
  await disk.write(0, Buffer.alloc(512, 1));
  lun.changeIdentity({ blocks: 128 });
  const got = await disk.read(0, 512);
  t.same(got, Buffer.alloc(512, 1));
  t.same(
    lun.logOf('READ_16').map((e) => e.status),
    [c.SAM_STAT_CHECK_CONDITION, c.SAM_STAT_GOOD],
  );
  t.equal(disk.capacityChanged, true);
  t.match(
    events.find((e) => e.type === 'unit-attention'),
    { what: 'capacity-changed', command: 'READ_16', sense: { asc: 0x2a, ascq: 0x09 } },
  );
  t.equal(disk.unitAttentions.length, 1);
  const g = await disk.refreshCapacity();
  t.equal(g.blockCount, 128n);
  t.equal(disk.capacityChanged, false);
  t.equal(disk.probeResult!.identity.blockCount, 128n);
  await disk.write(512 * 100, Buffer.alloc(512, 2));
  t.same(lun.peek(100, 1), Buffer.alloc(512, 2), 'the new space is usable');

  lun.queueUnitAttention(c.ASC_POWER_ON_RESET, 0);
  lun.queueUnitAttention(c.ASC_TARGET_OPERATING_CONDITIONS_CHANGED, c.ASCQ_INQUIRY_DATA_HAS_CHANGED);
  await disk.flush();
  t.same(
    events.filter((e) => e.type === 'unit-attention').map((e) => (e as { what: string }).what),
    ['capacity-changed', 'reset', 'inquiry-changed'],
  );
});

t.test('UNIT ATTENTION retries are bounded', async (t) => {
  const { disk, lun } = rig({}, { retry: { unitAttentionRetries: 3 } });
  await disk.probe();
  lun.clearLog();
  lun.injectSense(c.UNIT_ATTENTION, 0x29, 0, 10);
  await t.rejects(disk.read(0, 512), {
    name: 'ScsiError',
    code: 'EIO',
    message: /still UNIT ATTENTION after 3 retries/,
  });
  t.equal(lun.logOf('READ_16').length, 4, '1 try + 3 retries');
});

t.test('BUSY and TASK SET FULL: exponential back-off, bounded', async (t) => {
  const { disk, lun, sleeps } = rig({}, { retry: { busyRetries: 6, busyBackoffMs: 10, busyBackoffMaxMs: 50 } });
  await disk.probe();
  lun.injectFault({ status: c.SAM_STAT_BUSY }, 2);
  lun.injectFault({ status: c.SAM_STAT_TASK_SET_FULL }, 2);
  const data = randomBytes(512);
  await disk.write(0, data);
  t.same(lun.peek(0, 1), data);
  t.same(sleeps, [10, 20, 40, 50]);
  t.same(
    lun.logOf('WRITE_16').map((e) => e.status),
    [8, 8, 0x28, 0x28, 0],
  );

  sleeps.length = 0;
  lun.clearLog();
  lun.injectFault({ status: c.SAM_STAT_TASK_SET_FULL }, 20);
  await t.rejects(disk.write(0, data), {
    name: 'ScsiError',
    code: 'EIO',
    status: c.SAM_STAT_TASK_SET_FULL,
    message: /SAM_STAT_TASK_SET_FULL.*after 6 retries/,
  });
  t.equal(lun.logOf('WRITE_16').length, 7);
  t.same(sleeps, [10, 20, 40, 50, 50, 50]);
});

t.test('BUSY back-off really waits with the default sleep', async (t) => {
  const lun = new RamScsiLun();
  const disk = new ScsiDisk(new LoopExecutor(new Map([[0n, lun]])), { lun: 0n, retry: { busyBackoffMs: 20 } });
  await disk.probe();
  lun.injectFault({ status: c.SAM_STAT_BUSY }, 2);
  const t0 = Date.now();
  await disk.read(0, 512);
  t.ok(Date.now() - t0 >= 55, `waited ${Date.now() - t0} ms for 20 + 40`);
});

t.test('NOT READY becoming ready: waits during probe, bounded; other NOT READY fails', async (t) => {
  const { disk, lun, sleeps } = rig({}, { retry: { notReadyRetries: 5, notReadyDelayMs: 250 } });
  lun.injectSense(c.NOT_READY, c.ASC_LUN_NOT_READY, c.ASCQ_BECOMING_READY, 3);
  await disk.probe();
  t.same(sleeps, [250, 250, 250]);
  t.same(
    lun.logOf('TEST_UNIT_READY').map((e) => e.status),
    [2, 2, 2, 0],
  );

  lun.injectSense(c.NOT_READY, c.ASC_LUN_NOT_READY, c.ASCQ_BECOMING_READY, 10);
  await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EIO', message: /still not ready after 5 retries/ });
  t.equal(lun.pendingFaults(), 4, '1 try + 5 retries consumed 6 of 10');
  lun.clearFaults();

  lun.clearLog();
  lun.injectSense(c.NOT_READY, c.ASC_MEDIUM_NOT_PRESENT, 0, 5);
  await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EIO', sense: { key: c.NOT_READY, asc: 0x3a } });
  t.equal(lun.logOf('READ_16').length, 1, 'medium not present is not retried');
  t.equal(lun.pendingFaults(), 4, 'the other 4 are still waiting');
});

t.test('ABORTED COMMAND / TASK ABORTED retried a few times; RECOVERED ERROR is success', async (t) => {
  const { disk, lun } = rig({}, { retry: { abortedRetries: 2 } });
  await disk.probe();
  lun.injectSense(c.ABORTED_COMMAND, 0x47, 0, 1);
  lun.injectFault({ status: c.SAM_STAT_TASK_ABORTED }, 1);
  await disk.read(0, 512);
  t.equal(lun.logOf('READ_16').length, 3);
  lun.injectSense(c.ABORTED_COMMAND, 0x47, 0, 3);
  await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EIO', sense: { key: c.ABORTED_COMMAND } });

  lun.clearLog();
  lun.injectFault({ status: c.SAM_STAT_CHECK_CONDITION, sense: buildSense(c.RECOVERED_ERROR, 0x17, 1) });
  await disk.flush();
  t.equal(lun.log.length, 1, 'not retried');
});

t.test('errno mapping of final errors', async (t) => {
  for (const descriptorSense of [false, true]) {
    const { disk, lun } = rig({ blocks: 64, descriptorSense });
    await disk.probe();
    const fmt = descriptorSense ? 'descriptor' : 'fixed';
    /* The LU shrinks behind our back (no UA): the target itself reports LBA OUT OF RANGE. */
    lun.changeIdentity({ blocks: 32, unitAttention: false });
    const oor = await disk.write(512 * 40, Buffer.alloc(512)).catch((e: unknown) => e);
    t.match(
      oor,
      { name: 'ScsiError', code: 'ENOSPC', sense: { format: fmt, key: c.ILLEGAL_REQUEST, asc: 0x21, info: 40n } },
      `${fmt}: LBA out of range`,
    );
    t.match(
      (oor as Error).message,
      /WRITE_16 on LUN 0x0000000000000000 failed: ILLEGAL_REQUEST: Logical block address out of range \(21h\/00h\) at 0x28/,
    );

    lun.writeProtected = true;
    await t.rejects(
      disk.write(0, Buffer.alloc(512)),
      { name: 'ScsiError', code: 'EPERM', sense: { key: c.DATA_PROTECT, asc: 0x27 } },
      `${fmt}: write protected`,
    );
    lun.writeProtected = false;

    lun.injectSense(c.DATA_PROTECT, c.ASC_WRITE_PROTECTED, c.ASCQ_SPACE_ALLOCATION_FAILED_WRITE_PROTECT);
    await t.rejects(
      disk.write(0, Buffer.alloc(512)),
      { name: 'ScsiError', code: 'ENOSPC' },
      `${fmt}: thin pool out of space`,
    );
    lun.injectSense(c.ILLEGAL_REQUEST, c.ASC_INVALID_FIELD_IN_CDB, 0);
    await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EINVAL' }, `${fmt}: invalid field in CDB`);
    lun.injectSense(c.ILLEGAL_REQUEST, c.ASC_INVALID_COMMAND_OPERATION_CODE, 0);
    await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'ENOTSUP' }, `${fmt}: invalid opcode`);
    lun.injectSense(c.MEDIUM_ERROR, 0x11, 0);
    await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EIO' }, `${fmt}: medium error`);
  }
  const { disk, lun } = rig();
  await disk.probe();
  lun.injectFault({ status: c.SAM_STAT_RESERVATION_CONFLICT });
  await t.rejects(disk.read(0, 512), {
    name: 'ScsiError',
    code: 'EIO',
    status: 0x18,
    message: /SAM_STAT_RESERVATION_CONFLICT/,
  });
  lun.injectFault({ status: c.SAM_STAT_CHECK_CONDITION });
  await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EIO', message: /unusable sense/ });
  lun.injectFault({ status: c.SAM_STAT_CHECK_CONDITION, sense: Buffer.from([0x00, 0x01, 0x02]) });
  await t.rejects(disk.read(0, 512), { name: 'ScsiError', code: 'EIO', message: /unusable sense/ });
});

t.test('TransportError passes through untouched', async (t) => {
  const lun = new RamScsiLun();
  const inner = new LoopExecutor(new Map([[0n, lun]]));
  let fail: TransportError | undefined;
  const exec: ScsiExecutor = {
    execute: (cmd) => (fail ? Promise.reject(fail) : inner.execute(cmd)),
  };
  const disk = new ScsiDisk(exec, { lun: 0n });
  await disk.probe();
  fail = new TransportError('channel lost', 'disconnected');
  const err = await disk.read(0, 512).catch((e: unknown) => e);
  t.equal(err, fail, 'the same object');
  fail = new TransportError('aborted', 'timeout');
  t.equal(await disk.write(0, Buffer.alloc(512 * 4)).catch((e: unknown) => e), fail);
});

t.test('short data-in is an error, not silent garbage', async (t) => {
  const lun = new RamScsiLun();
  const inner = new LoopExecutor(new Map([[0n, lun]]));
  let short = false;
  const exec: ScsiExecutor = {
    async execute(cmd) {
      const r = await inner.execute(cmd);
      if (short && cmd.cdb[0] === c.READ_16 && r.dataIn)
        return { ...r, dataIn: r.dataIn.subarray(0, 100), residual: r.dataIn.length - 100 };
      return r;
    },
  };
  const disk = new ScsiDisk(exec, { lun: 0n });
  await disk.probe();
  short = true;
  await t.rejects(disk.read(0, 1024), { name: 'ScsiError', code: 'EIO', message: /returned 100 of 1024 bytes/ });
});

t.test('REPORT LUNS, with a second ask when the list does not fit', async (t) => {
  const many = Array.from({ length: 300 }, (_, i) => lunToSam(i));
  const lun = new RamScsiLun({ reportedLuns: many });
  const exec = new LoopExecutor(new Map([[0n, lun]]));
  const luns = await reportLuns(exec);
  t.equal(luns.length, 300);
  t.equal(luns[299], lunToSam(299));
  t.same(
    lun.logOf('REPORT_LUNS').map((e) => e.cdb.readUInt32BE(6)),
    [8 + 8 * 256, 8 + 8 * 300],
  );

  const few = new RamScsiLun({ reportedLuns: [0n, lunToSam(1), lunToSam(300)] });
  few.queueUnitAttention(c.ASC_TARGET_OPERATING_CONDITIONS_CHANGED, c.ASCQ_REPORTED_LUNS_DATA_HAS_CHANGED);
  t.same(await reportLuns(new LoopExecutor(new Map([[0n, few]]))), [0n, 0x0001000000000000n, 0x412c000000000000n]);
});

t.test('FUA follows the caching mode page: the bit, SYNCHRONIZE CACHE, or nothing (Linux sd rules)', async (t) => {
  const data = randomBytes(512 * 8);
  const ops = (lun: RamScsiLun): string[] =>
    lun.log
      .slice(-3)
      .map(
        (e) => `${e.name}${e.fua ? '+FUA' : ''}${e.name === 'SYNCHRONIZE_CACHE_16' ? `(${e.lba},${e.blocks})` : ''}`,
      );

  const native = rig({ writeCache: true, dpoFua: true });
  const p = await native.disk.probe();
  t.same(p.cache, { writeCacheEnabled: true, dpoFua: true, source: 'mode-sense' });
  t.equal(p.limits.fua, 'fua');
  await native.disk.write(512 * 4, data, { fua: true });
  t.same(ops(native.lun).slice(-1), ['WRITE_16+FUA'], 'DPOFUA: the FUA bit, no extra command');

  // LIO rd_mcp / fileio without a write cache: WCE 0, DPOFUA 0, and a FUA bit is refused.
  const through = rig({ writeCache: false, dpoFua: false });
  t.equal((await through.disk.probe()).limits.fua, 'write-through');
  await through.disk.write(512 * 4, data, { fua: true });
  t.same(ops(through.lun).slice(-1), ['WRITE_16'], 'no write cache: a plain write is already durable');
  t.same(through.lun.peek(4, 8), data, 'the data is there');

  const cached = rig({ writeCache: true, dpoFua: false });
  t.equal((await cached.disk.probe()).limits.fua, 'sync-cache');
  await cached.disk.write(512 * 4, data, { fua: true });
  t.same(
    ops(cached.lun).slice(-2),
    ['WRITE_16', 'SYNCHRONIZE_CACHE_16(4,8)'],
    'write cache without DPOFUA: write, then sync that range',
  );
  await cached.disk.write(512 * 4, data);
  t.same(ops(cached.lun).slice(-1), ['WRITE_16'], 'no FUA asked: no sync');

  const old = rig({ modeSense: false, dpoFua: false });
  const po = await old.disk.probe();
  t.same(
    po.cache,
    { writeCacheEnabled: true, dpoFua: false, source: 'assumed' },
    'no MODE SENSE: assume a volatile cache',
  );
  await old.disk.write(0, data, { fua: true });
  t.same(ops(old.lun).slice(-2), ['WRITE_16', 'SYNCHRONIZE_CACHE_16(0,8)']);
});

t.test(
  'a LU that announces DPOFUA but refuses the FUA bit: rewritten without it, synced, FUA emulated from then on',
  async (t) => {
    const r = rig({ writeCache: true, dpoFua: true });
    await r.disk.probe();
    r.lun.dpoFua = false; // e.g. the backstore changed behind the target
    const data = randomBytes(512 * 2);
    await r.disk.write(512 * 10, data, { fua: true });
    t.same(r.lun.peek(10, 2), data);
    t.same(r.events.filter((e) => e.type === 'fua-disabled').length, 1, 'reported once');
    t.equal(r.disk.limits.fua, 'sync-cache');
    const names = r.lun.log.slice(-3).map((e) => e.name);
    t.same(names, ['WRITE_16', 'WRITE_16', 'SYNCHRONIZE_CACHE_16'], 'refused write, write again, sync');
    t.ok(r.lun.log.at(-3)!.sense, 'the first write was refused with sense');
    await r.disk.write(512 * 12, data, { fua: true });
    t.same(
      r.lun.log.slice(-2).map((e) => `${e.name}${e.fua ? '+FUA' : ''}`),
      ['WRITE_16', 'SYNCHRONIZE_CACHE_16'],
      'no FUA bit any more',
    );
  },
);

t.test('write-zeroes with FUA over a write-through LU sends no SYNCHRONIZE CACHE', async (t) => {
  const r = rig({ writeCache: false, dpoFua: false, writeSame: true });
  await r.disk.probe();
  await r.disk.writeZeroes(0, 512 * 64, { fua: true, noHole: true });
  t.equal(r.lun.logOf('SYNCHRONIZE_CACHE_16').length, 0);
  t.ok(r.lun.logOf('WRITE_SAME_16').length > 0);
});

t.test(
  'a LU without SYNCHRONIZE CACHE(16) gets SYNCHRONIZE CACHE(10) of the whole cache, for flush and emulated FUA',
  async (t) => {
    const r = rig({ writeCache: true, dpoFua: false, syncCache16: false });
    await r.disk.probe();
    await r.disk.flush();
    t.same(
      r.lun.log.slice(-2).map((e) => [e.name, Boolean(e.sense)]),
      [
        ['SYNCHRONIZE_CACHE_16', true],
        ['SYNCHRONIZE_CACHE', false],
      ],
      'refused opcode, then the 10-byte form',
    );
    const data = randomBytes(512 * 4);
    await r.disk.write(512 * 8, data, { fua: true });
    t.same(
      r.lun.log.slice(-2).map((e) => e.name),
      ['WRITE_16', 'SYNCHRONIZE_CACHE'],
      'no second try of the 16-byte form',
    );
    t.same([r.lun.log.at(-1)!.lba, r.lun.log.at(-1)!.blocks], [0n, 0], 'the whole cache');
    t.same(r.lun.peek(8, 4), data);
    await r.disk.flush();
    t.equal(r.lun.logOf('SYNCHRONIZE_CACHE_16').length, 1, 'asked once');
  },
);

t.test(
  'adoptCache: a later probe of the same LU changes how FUA is honoured; a refused FUA bit stays emulated',
  async (t) => {
    const r = rig({ writeCache: false, dpoFua: true });
    await r.disk.probe();
    t.equal(r.disk.limits.fua, 'write-through');
    r.lun.writeCache = true; // e.g. the target restarted with its write cache on
    const later = await new ScsiDisk(r.exec, { lun: lunToSam(0) }).probe();
    t.equal(r.disk.adoptCache(later.cache), true, 'changed');
    t.equal(r.disk.limits.fua, 'fua');
    const data = randomBytes(512);
    await r.disk.write(0, data, { fua: true });
    t.equal(r.lun.log.at(-1)!.fua, true, 'FUA bit sent now');
    t.equal(r.disk.adoptCache(later.cache), false, 'same mode: unchanged');

    r.lun.dpoFua = false; // refuses the bit it still announces below
    await r.disk.write(0, data, { fua: true });
    t.equal(r.disk.limits.fua, 'sync-cache');
    t.equal(
      r.disk.adoptCache({ writeCacheEnabled: true, dpoFua: true, source: 'mode-sense' }),
      false,
      'announcing DPOFUA again does not bring the refused bit back',
    );
    t.equal(r.disk.limits.fua, 'sync-cache');
    t.equal(r.disk.adoptCache({ writeCacheEnabled: false, dpoFua: true, source: 'mode-sense' }), true);
    t.equal(r.disk.limits.fua, 'write-through');
  },
);
