/**
 * md membership and re-add against a fake sysfs tree laid out as Linux 6.1 lays it out
 * (/sys/block/nbdN/holders/mdX, /sys/block/mdX/md/dev-nbdN/{state,slot}, md/{array_state,...}).
 * The guest scenario md-raid1 runs the same code against the real md driver.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { describeMembership, mdMemberships, readdFaultyMember } from '../src/daemon/md.js';

interface Member {
  state: string;
  slot: string;
}

function fakeSysfs(members: Record<string, Member>, array = 'md0'): { root: string; dev: (m: string) => string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-sysfs-'));
  const md = path.join(root, 'block', array, 'md');
  fs.mkdirSync(md, { recursive: true });
  for (const [f, v] of Object.entries({ array_state: 'clean', level: 'raid1', degraded: '0', sync_action: 'idle', sync_completed: 'none' })) {
    fs.writeFileSync(path.join(md, f), `${v}\n`);
  }
  for (const [name, m] of Object.entries(members)) {
    fs.mkdirSync(path.join(root, 'block', name, 'holders'), { recursive: true });
    fs.writeFileSync(path.join(root, 'block', name, 'holders', array), ''); // a symlink in real sysfs
    fs.mkdirSync(path.join(md, `dev-${name}`));
    fs.writeFileSync(path.join(md, `dev-${name}`, 'state'), `${m.state}\n`);
    fs.writeFileSync(path.join(md, `dev-${name}`, 'slot'), `${m.slot}\n`);
  }
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  return { root, dev: (m) => path.join(md, `dev-${m}`) };
}

t.test('membership is read from holders and md/dev-X', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '0' }, nbd1: { state: 'faulty', slot: 'none' } });
  fs.writeFileSync(path.join(root, 'block', 'md0', 'md', 'degraded'), '1\n');
  const [m0] = await mdMemberships('/dev/nbd0', root);
  t.same(m0, { array: 'md0', member: 'nbd0', state: ['in_sync'], slot: 0, array_state: 'clean', level: 'raid1', degraded: 1, sync_action: 'idle', sync_completed: 'none' });
  const [m1] = await mdMemberships('nbd1', root);
  t.same(m1!.state, ['faulty']);
  t.equal(m1!.slot, null, '"none" is no slot');
  t.equal(describeMembership(m1!), 'md0 raid1 slot none faulty (array clean, 1 missing)');
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'in_sync,write_mostly\n');
  fs.writeFileSync(path.join(root, 'block', 'md0', 'md', 'sync_action'), 'recover\n');
  fs.writeFileSync(path.join(root, 'block', 'md0', 'md', 'sync_completed'), '1024 / 131072\n');
  t.equal(describeMembership((await mdMemberships('/dev/nbd0', root))[0]!), 'md0 raid1 slot 0 in_sync,write_mostly (array clean, 1 missing, recover 1024 / 131072)');
  t.same(await mdMemberships('/dev/nbd7', root), [], 'a device without holders is in no array');
  fs.mkdirSync(path.join(root, 'block', 'nbd2', 'holders'), { recursive: true });
  fs.writeFileSync(path.join(root, 'block', 'nbd2', 'holders', 'dm-0'), '');
  t.same(await mdMemberships('/dev/nbd2', root), [], 'a device-mapper holder is not an md array');
});

t.test('a member in sync is never touched', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '1' } });
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 200, pollMs: 10 });
  t.same(r, [{ array: 'md0', member: 'nbd0', outcome: 'in-array' }]);
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'in_sync\n', 'nothing written');
});

t.test('a faulty member is re-added once md has released its slot', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: '0' } });
  const state = path.join(dev('nbd0'), 'state');
  // md releases the slot a little later (the last failed I/O has to complete first).
  setTimeout(() => fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n'), 150);
  let writtenEarly = false;
  const watch = setInterval(() => {
    if (fs.readFileSync(state, 'utf8') === 're-add' && fs.readFileSync(path.join(dev('nbd0'), 'slot'), 'utf8') !== 'none\n') writtenEarly = true;
  }, 5);
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 5000, pollMs: 20 });
  clearInterval(watch);
  t.same(r, [{ array: 'md0', member: 'nbd0', outcome: 're-added' }]);
  t.equal(fs.readFileSync(state, 'utf8'), 're-add', '"re-add" written to md/dev-nbd0/state');
  t.notOk(writtenEarly, 'not written while md still had the member in its slot');
});

t.test('a member md does not release in time is reported with the mdadm command', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: '0' } });
  const started = Date.now();
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 120, pollMs: 20 });
  t.ok(Date.now() - started >= 100, 'waited for md');
  t.same(r, [{ array: 'md0', member: 'nbd0', outcome: 'still-busy', detail: 'state faulty, slot 0', hint: 'mdadm /dev/md0 --re-add /dev/nbd0' }]);
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'faulty\n', 'nothing written');
});

t.test('md refusing the re-add is reported, not thrown', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: 'none' } });
  const writes: string[] = [];
  const ebusy = (file: string, text: string): void => {
    writes.push(`${path.relative(root, file)}=${text}`);
    throw Object.assign(new Error('Device or resource busy'), { code: 'EBUSY' }); // md: no saved slot
  };
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 100, pollMs: 10, writeAttr: ebusy });
  t.same(writes, ['block/md0/md/dev-nbd0/state=re-add'], 'one attempt, at the member state attribute');
  t.same(r, [{ array: 'md0', member: 'nbd0', outcome: 'refused', detail: 'EBUSY', hint: 'mdadm /dev/md0 --re-add /dev/nbd0' }]);
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'faulty\n');
});

t.test('an array stopped while waiting is "gone"; someone else re-adding first is fine', async (t) => {
  const a = fakeSysfs({ nbd0: { state: 'faulty', slot: '0' } });
  setTimeout(() => fs.rmSync(path.join(a.root, 'block', 'nbd0', 'holders', 'md0')), 50);
  t.same(await readdFaultyMember('/dev/nbd0', { sysfs: a.root, waitMs: 2000, pollMs: 10 }), [{ array: 'md0', member: 'nbd0', outcome: 'gone' }]);
  const b = fakeSysfs({ nbd1: { state: 'faulty', slot: '1' } });
  setTimeout(() => fs.writeFileSync(path.join(b.dev('nbd1'), 'state'), 'in_sync\n'), 50);
  t.same(await readdFaultyMember('/dev/nbd1', { sysfs: b.root, waitMs: 2000, pollMs: 10 }), [{ array: 'md0', member: 'nbd1', outcome: 'in-array' }]);
});

t.test('a cancelled re-add writes nothing, even when md has released the slot meanwhile', async (t) => {
  // The path went down again (or the target was detached, or the daemon stops) while waiting for
  // md: filling the slot now would hand md a device that cannot do I/O.
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: '0' }, nbd1: { state: 'faulty', slot: 'none' } });
  const ac = new AbortController();
  const writes: string[] = [];
  const record = (file: string, text: string): void => {
    writes.push(`${path.relative(root, file)}=${text}`);
  };
  setTimeout(() => {
    fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n'); // md releases the slot ...
    ac.abort(); // ... just as the path is lost again
  }, 50);
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 5000, pollMs: 200, signal: ac.signal, writeAttr: record });
  t.same(r, [{ array: 'md0', member: 'nbd0', outcome: 'cancelled' }]);
  const again = await readdFaultyMember('/dev/nbd1', { sysfs: root, waitMs: 5000, pollMs: 10, signal: ac.signal, writeAttr: record });
  t.same(again, [{ array: 'md0', member: 'nbd1', outcome: 'cancelled' }], 'an already aborted signal: no write even with the slot free');
  t.same(writes, [], 'nothing written');
});

t.test('arrays: only the named arrays are re-added', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-sysfs-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  for (const array of ['md0', 'md1']) {
    const dev = path.join(root, 'block', array, 'md', 'dev-nbd0');
    fs.mkdirSync(dev, { recursive: true });
    fs.writeFileSync(path.join(dev, 'state'), 'faulty\n');
    fs.writeFileSync(path.join(dev, 'slot'), 'none\n');
    fs.mkdirSync(path.join(root, 'block', 'nbd0', 'holders'), { recursive: true });
    fs.writeFileSync(path.join(root, 'block', 'nbd0', 'holders', array), '');
  }
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 100, pollMs: 10, arrays: ['md1'] });
  t.same(r, [{ array: 'md1', member: 'nbd0', outcome: 're-added' }]);
  t.equal(fs.readFileSync(path.join(root, 'block', 'md0', 'md', 'dev-nbd0', 'state'), 'utf8'), 'faulty\n', 'md0 (failed before the outage) untouched');
  t.equal(fs.readFileSync(path.join(root, 'block', 'md1', 'md', 'dev-nbd0', 'state'), 'utf8'), 're-add');
});

t.test('a partition of the device (nbd0p1) in an array is found and re-added by its own name', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-sysfs-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const md = path.join(root, 'block', 'md3', 'md');
  fs.mkdirSync(path.join(md, 'dev-nbd0p1'), { recursive: true });
  fs.writeFileSync(path.join(md, 'dev-nbd0p1', 'state'), 'faulty\n');
  fs.writeFileSync(path.join(md, 'dev-nbd0p1', 'slot'), 'none\n');
  fs.writeFileSync(path.join(md, 'level'), 'raid1\n');
  fs.mkdirSync(path.join(root, 'block', 'nbd0', 'holders'), { recursive: true }); // the disk itself: no holder
  fs.mkdirSync(path.join(root, 'block', 'nbd0', 'nbd0p1', 'holders'), { recursive: true });
  fs.writeFileSync(path.join(root, 'block', 'nbd0', 'nbd0p1', 'holders', 'md3'), '');
  fs.mkdirSync(path.join(root, 'block', 'nbd0', 'nbd0p2', 'holders'), { recursive: true }); // a partition in no array
  fs.mkdirSync(path.join(root, 'block', 'nbd0', 'power')); // not a partition
  const ms = await mdMemberships('/dev/nbd0', root);
  t.same(ms.map((m) => [m.member, m.array, m.state, m.slot]), [['nbd0p1', 'md3', ['faulty'], null]]);
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 100, pollMs: 10 });
  t.equal(describeMembership(ms[0]!), 'nbd0p1 in md3 raid1 slot none faulty (array ?)');
  t.same(r, [{ array: 'md3', member: 'nbd0p1', outcome: 're-added' }]);
  t.equal(fs.readFileSync(path.join(md, 'dev-nbd0p1', 'state'), 'utf8'), 're-add');
});
