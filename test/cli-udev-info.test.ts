/**
 * `srp-nbd udev-info nbdN` against the real daemon, with a fake sysfs: the device's export comes
 * from /sys/block/nbdN/backend (srp-nbd:<export>), the properties from the daemon's GET /luns;
 * another nbd user's device, or one srp-nbd does not know, gets no properties; and the rule file
 * uses what udev-info prints.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { cleanup, cli, dir, imageDir, startDaemon } from './helpers/daemon.js';

t.teardown(cleanup);

const sysfs = path.join(dir, 'sys');
function fakeDevice(dev: string, backend?: string): void {
  fs.mkdirSync(path.join(sysfs, 'block', dev), { recursive: true });
  if (backend !== undefined) fs.writeFileSync(path.join(sysfs, 'block', dev, 'backend'), `${backend}\n`);
}

t.test('udev-info prints the stable name and ID_* properties of an srp-nbd device', async (t) => {
  await startDaemon();
  const a = await cli(['attach', `test-target,name=u,luns=2,lun_size=4M,image_dir=${imageDir}`]);
  t.equal(a.code, 0, a.stderr);
  const st = JSON.parse((await cli(['status', 'test-u', '--json'])).stdout);
  const byId = st.lun_details[1].by_id as string;

  fakeDevice('nbd7', 'srp-nbd:test-u-lun1');
  const r = await cli(['udev-info', 'nbd7', '--sysfs', sysfs]);
  t.equal(r.code, 0, r.stderr);
  const props = Object.fromEntries(
    r.stdout
      .trim()
      .split('\n')
      .map((l) => l.split('=', 2) as [string, string]),
  );
  t.equal(props.SRP_NBD_BY_ID, byId);
  t.match(byId, /^srp-nbd-naa\.[0-9a-f]{32}$/);
  t.equal(props.SRP_NBD_TARGET, 'test-u');
  t.equal(props.SRP_NBD_EXPORT, 'test-u-lun1');
  t.equal(props.ID_SERIAL, byId.replace('srp-nbd-', ''));
  t.equal(props.ID_SERIAL_SHORT, 'u-1');
  t.equal(props.ID_WWN, `0x${byId.replace('srp-nbd-naa.', '')}`);
  t.equal(props.ID_MODEL, 'RAM_LUN', 'spaces replaced');
  for (const line of r.stdout.trim().split('\n')) t.match(line, /^[A-Z_]+=[A-Za-z0-9._:-]+$/, 'udev-safe');

  fakeDevice('nbd8', 'qemu-nbd:/some/file');
  const other = await cli(['udev-info', '/dev/nbd8', '--sysfs', sysfs]);
  t.same([other.code, other.stdout], [0, ''], "another nbd user's device: nothing");
  fakeDevice('nbd9');
  const unknown = await cli(['udev-info', 'nbd9', '--sysfs', sysfs]);
  t.same([unknown.code, unknown.stdout], [0, ''], 'no backend attribute, device unknown to the daemon: nothing');
  fakeDevice('nbd6', 'srp-nbd:gone-lun0');
  const gone = await cli(['udev-info', 'nbd6', '--sysfs', sysfs]);
  t.equal(gone.code, 1, 'an srp-nbd backend the daemon does not know: an error udev logs');
  t.match(gone.stderr, /gone-lun0: no such target, device, export or stable name/);
  const bad = await cli(['udev-info', 'sda', '--sysfs', sysfs]);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /give one device, nbdN or \/dev\/nbdN/);
});

t.test('udev-info retries a daemon it cannot reach for --wait seconds, then fails', async (t) => {
  const start = Date.now();
  const r = await cli(['udev-info', 'nbd7', '--sysfs', sysfs, '--wait', '1', '--socket', path.join(dir, 'none.sock')], {
    socket: false,
  });
  t.equal(r.code, 1);
  t.match(r.stderr, /cannot reach the daemon/);
  t.ok(Date.now() - start >= 1000, 'it retried for a second');
  t.equal((await cli(['udev-info', 'nbd7', '--wait', 'x'])).code, 2);
});

t.test('the rule imports udev-info and links by-id names for disks and partitions', async (t) => {
  const rules = fs.readFileSync(new URL('../../packaging/60-srp-nbd.rules', import.meta.url), 'utf8');
  t.match(rules, /IMPORT\{program\}="\/usr\/local\/bin\/srp-nbd udev-info %k"/);
  t.match(rules, /SYMLINK\+="disk\/by-id\/\$env\{SRP_NBD_BY_ID\}"/);
  t.match(rules, /SYMLINK\+="disk\/by-id\/\$env\{SRP_NBD_BY_ID\}-part%n"/);
  t.match(rules, /ATTR\{size\}=="0", GOTO="srp_nbd_end"/, 'a detached device loses its name');
});
