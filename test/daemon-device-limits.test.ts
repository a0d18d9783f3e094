// The kernel device's largest request (max_sectors_kb) from the LUN's limits: nbd creates its
// devices at 128 KiB, so without it a 1 MiB request reached the target as eight commands.
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import {
  DEVICE_MAX_IO_BYTES,
  deviceMaxSectorsKb,
  limitDeviceIo,
  setDeviceIoTimeout,
} from '../src/daemon/device-limits.js';
import { lioLikeTarget, rdmaDaemon } from './helpers/rdma-daemon.js';

const DEST = '192.0.2.2:5000';
const ADDR = `id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=${DEST}`;

/** /sys/block/nbdN/queue as nbd 6.1 creates it: max_sectors_kb 128, max_hw_sectors_kb 32768. */
function fakeQueue(sysfs: string, name: string, hwKb = 32768): string {
  const q = path.join(sysfs, 'block', name, 'queue');
  fs.mkdirSync(q, { recursive: true });
  fs.writeFileSync(path.join(q, 'max_hw_sectors_kb'), `${hwKb}\n`);
  fs.writeFileSync(path.join(q, 'max_sectors_kb'), '128\n');
  fs.writeFileSync(path.join(q, 'io_timeout'), '30000\n');
  return q;
}

t.test('deviceMaxSectorsKb: the LUN limit, at most 512 KiB and the hardware limit', async (t) => {
  t.equal(DEVICE_MAX_IO_BYTES, 512 * 1024, "ib_srp's default max_sect (1024 sectors)");
  t.equal(deviceMaxSectorsKb(4 << 20, 32768, 512), 512, 'a 4 MiB LUN limit: 512 KiB');
  t.equal(deviceMaxSectorsKb(128 * 1024, 32768, 512), 128, 'max_sect=256: 128 KiB');
  t.equal(deviceMaxSectorsKb(4 << 20, 256, 512), 256, 'the device allows less');
  t.equal(deviceMaxSectorsKb(512, 32768, 4096), 4, 'never below one logical block');
  t.equal(deviceMaxSectorsKb(1 << 20, 0, 512), 512, 'an unknown hardware limit is not a limit');
});

t.test('limitDeviceIo writes max_sectors_kb; a missing device is an error', async (t) => {
  const sysfs = t.testdir({});
  const q = fakeQueue(sysfs, 'nbd3', 1024);
  t.equal(await limitDeviceIo('/dev/nbd3', 4 << 20, 512, sysfs), 512);
  t.equal(fs.readFileSync(path.join(q, 'max_sectors_kb'), 'utf8'), '512');
  await t.rejects(limitDeviceIo('/dev/nbd9', 4 << 20, 512, sysfs), { code: 'ENOENT' });
});

t.test('attach: each device gets its LUN limit; status shows it; max_sect lowers it', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('m', 2)]]));
  const sysfs = path.join(f.dir, 'sys');
  const q0 = fakeQueue(sysfs, 'nbd0');
  const q1 = fakeQueue(sysfs, 'nbd1');
  const v = await f.d.attach({ address: ADDR, id: 'm' });
  t.same(
    v.lun_details.map((l) => [l.device, l.max_io_bytes]),
    [
      ['/dev/nbd0', 512 * 1024],
      ['/dev/nbd1', 512 * 1024],
    ],
  );
  t.equal(fs.readFileSync(path.join(q0, 'max_sectors_kb'), 'utf8'), '512');
  t.equal(fs.readFileSync(path.join(q1, 'max_sectors_kb'), 'utf8'), '512');
  await f.d.detach('m');

  const v2 = await f.d.attach({ address: `${ADDR},max_sect=256`, id: 'm2' });
  t.equal(v2.lun_details[0]!.max_io_bytes, 128 * 1024, 'max_sect=256 sectors: 128 KiB requests');
  t.equal(fs.readFileSync(path.join(q0, 'max_sectors_kb'), 'utf8'), '128');
});

t.test('a device whose limit cannot be set still attaches (logged, status null)', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('x', 1)]]));
  const v = await f.d.attach({ address: ADDR, id: 'x' });
  t.equal(v.lun_details[0]!.device, '/dev/nbd0');
  t.equal(v.lun_details[0]!.max_io_bytes, null);
});

t.test('setDeviceIoTimeout writes io_timeout in ms; bad values and a missing device are errors', async (t) => {
  const sysfs = t.testdir({});
  const q = fakeQueue(sysfs, 'nbd2');
  await setDeviceIoTimeout('/dev/nbd2', 5, sysfs);
  t.equal(fs.readFileSync(path.join(q, 'io_timeout'), 'utf8'), '5000');
  await t.rejects(setDeviceIoTimeout('/dev/nbd2', 0, sysfs), RangeError);
  await t.rejects(setDeviceIoTimeout('/dev/nbd2', 1.5, sysfs), RangeError);
  await t.rejects(setDeviceIoTimeout('/dev/nbd9', 5, sysfs), { code: 'ENOENT' });
});

t.test('attach: each device gets the nbd_io_timeout request timer (default 5 s)', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('m', 1)]]));
  const sysfs = path.join(f.dir, 'sys');
  const q0 = fakeQueue(sysfs, 'nbd0');
  await f.d.attach({ address: ADDR, id: 'm' });
  t.equal(fs.readFileSync(path.join(q0, 'io_timeout'), 'utf8'), '5000', 'the default, not nbd 30 s');
  await f.d.detach('m');
  await f.d.attach({ address: ADDR, id: 'm2', nbd_io_timeout: 12 });
  t.equal(fs.readFileSync(path.join(q0, 'io_timeout'), 'utf8'), '12000', 'the option');
});
