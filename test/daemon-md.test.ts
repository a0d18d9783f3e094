/**
 * md membership and re-add against a fake sysfs tree laid out as Linux 6.1 lays it out
 * (/sys/block/nbdN/holders/mdX, /sys/block/mdX/md/dev-nbdN/{state,slot}, md/{array_state,...}),
 * and the daemon's re-add policy (MdReaddPolicy) told of attach and path changes as the daemon
 * tells it. The guest scenario md-raid1 runs the same code against the real md driver.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Logger, pino } from 'pino';
import t from 'tap';
import {
  describeMembership,
  type MdDevice,
  MdReaddPolicy,
  type MdReaddTarget,
  mdMemberships,
  readdFaultyMember,
} from '../src/daemon/md.js';

interface Member {
  state: string;
  slot: string;
}

function fakeSysfs(members: Record<string, Member>, array = 'md0'): { root: string; dev: (m: string) => string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-sysfs-'));
  const md = path.join(root, 'block', array, 'md');
  fs.mkdirSync(md, { recursive: true });
  for (const [f, v] of Object.entries({
    array_state: 'clean',
    level: 'raid1',
    degraded: '0',
    sync_action: 'idle',
    sync_completed: 'none',
  })) {
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
  t.same(m0, {
    array: 'md0',
    member: 'nbd0',
    state: ['in_sync'],
    slot: 0,
    array_state: 'clean',
    level: 'raid1',
    degraded: 1,
    sync_action: 'idle',
    sync_completed: 'none',
  });
  const [m1] = await mdMemberships('nbd1', root);
  t.same(m1!.state, ['faulty']);
  t.equal(m1!.slot, null, '"none" is no slot');
  t.equal(describeMembership(m1!), 'md0 raid1 slot none faulty (array clean, 1 missing)');
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'in_sync,write_mostly\n');
  fs.writeFileSync(path.join(root, 'block', 'md0', 'md', 'sync_action'), 'recover\n');
  fs.writeFileSync(path.join(root, 'block', 'md0', 'md', 'sync_completed'), '1024 / 131072\n');
  t.equal(
    describeMembership((await mdMemberships('/dev/nbd0', root))[0]!),
    'md0 raid1 slot 0 in_sync,write_mostly (array clean, 1 missing, recover 1024 / 131072)',
  );
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
    if (
      fs.readFileSync(state, 'utf8') === 're-add' &&
      fs.readFileSync(path.join(dev('nbd0'), 'slot'), 'utf8') !== 'none\n'
    )
      writtenEarly = true;
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
  t.same(r, [
    {
      array: 'md0',
      member: 'nbd0',
      outcome: 'still-busy',
      detail: 'state faulty, slot 0',
      hint: 'mdadm /dev/md0 --re-add /dev/nbd0',
    },
  ]);
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
  t.same(r, [
    { array: 'md0', member: 'nbd0', outcome: 'refused', detail: 'EBUSY', hint: 'mdadm /dev/md0 --re-add /dev/nbd0' },
  ]);
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'faulty\n');
});

t.test('an array stopped while waiting is "gone"; someone else re-adding first is fine', async (t) => {
  const a = fakeSysfs({ nbd0: { state: 'faulty', slot: '0' } });
  setTimeout(() => fs.rmSync(path.join(a.root, 'block', 'nbd0', 'holders', 'md0')), 50);
  t.same(await readdFaultyMember('/dev/nbd0', { sysfs: a.root, waitMs: 2000, pollMs: 10 }), [
    { array: 'md0', member: 'nbd0', outcome: 'gone' },
  ]);
  const b = fakeSysfs({ nbd1: { state: 'faulty', slot: '1' } });
  setTimeout(() => fs.writeFileSync(path.join(b.dev('nbd1'), 'state'), 'in_sync\n'), 50);
  t.same(await readdFaultyMember('/dev/nbd1', { sysfs: b.root, waitMs: 2000, pollMs: 10 }), [
    { array: 'md0', member: 'nbd1', outcome: 'in-array' },
  ]);
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
  const r = await readdFaultyMember('/dev/nbd0', {
    sysfs: root,
    waitMs: 5000,
    pollMs: 200,
    signal: ac.signal,
    writeAttr: record,
  });
  t.same(r, [{ array: 'md0', member: 'nbd0', outcome: 'cancelled' }]);
  const again = await readdFaultyMember('/dev/nbd1', {
    sysfs: root,
    waitMs: 5000,
    pollMs: 10,
    signal: ac.signal,
    writeAttr: record,
  });
  t.same(
    again,
    [{ array: 'md0', member: 'nbd1', outcome: 'cancelled' }],
    'an already aborted signal: no write even with the slot free',
  );
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
  t.equal(
    fs.readFileSync(path.join(root, 'block', 'md0', 'md', 'dev-nbd0', 'state'), 'utf8'),
    'faulty\n',
    'md0 (failed before the outage) untouched',
  );
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
  t.same(
    ms.map((m) => [m.member, m.array, m.state, m.slot]),
    [['nbd0p1', 'md3', ['faulty'], null]],
  );
  const r = await readdFaultyMember('/dev/nbd0', { sysfs: root, waitMs: 100, pollMs: 10 });
  t.equal(describeMembership(ms[0]!), 'nbd0p1 in md3 raid1 slot none faulty (array ?)');
  t.same(r, [{ array: 'md3', member: 'nbd0p1', outcome: 're-added' }]);
  t.equal(fs.readFileSync(path.join(md, 'dev-nbd0p1', 'state'), 'utf8'), 're-add');
});

/* ------------------------------------------------------------------ MdReaddPolicy */

type Flags = Partial<Pick<MdReaddTarget, 'readdEnabled' | 'active' | 'running'>>;

/** A target for the policy: enabled, attached, running, and a logger whose messages land in an array. */
function policyTarget(devices: MdDevice[], flags: Flags = {}): { target: MdReaddTarget; messages: () => string[] } {
  const out: string[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void out.push(s) }) as Logger;
  const yes = (): boolean => true;
  const target = { log, readdEnabled: yes, active: yes, running: yes, devices: () => devices, ...flags };
  return { target, messages: () => out.map((s) => (JSON.parse(s) as { msg: string }).msg) };
}

const settle = (ms = 150): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** The policy's snapshot of what was faulty when the path went down (sysfs is read asynchronously). */
const snapshotTaken = (p: MdReaddPolicy): Promise<unknown> =>
  (p as unknown as { faultyBefore: Promise<unknown> }).faultyBefore;
/** Polls `cond` every 20 ms for up to 5 s (a loaded machine delays the asynchronous sysfs work). */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 250 && !cond(); i++) await settle(20);
}
const stateOf = (dev: (n: string) => string, n = 'nbd0'): string => fs.readFileSync(path.join(dev(n), 'state'), 'utf8');

t.test('policy: a member md failed during a fail-fast outage is re-added when the path returns', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '0' } });
  const { target, messages } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root });
  t.teardown(() => p.cancel());
  p.onPathDown();
  await snapshotTaken(p); // the policy notes what is faulty as the path goes down
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'faulty\n'); // EIO in fail-fast: md fails the member
  fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n');
  p.onPathReturned('fail-fast');
  await until(() => messages().length >= 2); // the re-add and its log line
  t.equal(stateOf(dev), 're-add');
  t.equal(p.readds, 1);
  t.type(p.lastReaddMs, 'number', 'the time from the return to the re-add is kept');
  t.match(messages(), [
    'md: the device is faulty in an array; re-adding it now that the path is back',
    /^md: re-added \/dev\/nbd0 to \/dev\/md0; /,
  ]);
});

t.test('policy: a return from blocked re-adds nothing (no I/O failed: md failed it for another reason)', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '0' } });
  const { target } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root });
  t.teardown(() => p.cancel());
  p.onPathDown();
  await snapshotTaken(p);
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'faulty\n');
  fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n');
  p.onPathReturned('blocked');
  await settle();
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'faulty\n', 'nothing written');
  t.equal(p.readds, 0);
});

t.test('policy: a member already faulty when the path went down is left alone, with a warning', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: 'none' } });
  const { target, messages } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root });
  t.teardown(() => p.cancel());
  p.onPathDown();
  p.onPathReturned('lost');
  await settle();
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'faulty\n', 'nothing written');
  t.same(messages(), [
    'md: /dev/nbd0 was already faulty in /dev/md0 before the path went down ' +
      '(mdadm --fail? medium errors?); not re-adding it',
  ]);
});

t.test('policy: the watch re-adds a member as soon as md releases it after the path came back', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '0' } });
  const { target } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root, pollMs: 20 });
  t.teardown(() => p.cancel());
  p.onPathDown();
  await snapshotTaken(p);
  p.onPathReturned('fail-fast');
  await settle(60);
  t.equal(p.readds, 0, 'nothing faulty yet');
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'faulty\n'); // md's error handling catches up
  await settle(60);
  t.equal(stateOf(dev), 'faulty\n', 'not written while md holds the slot');
  const released = performance.now();
  fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n'); // md releases the member
  await until(() => p.readds === 1);
  const after = performance.now() - released;
  t.equal(stateOf(dev), 're-add');
  t.ok(p.lastReaddMs! >= 120, `timed from the return (${p.lastReaddMs} ms)`);
  t.ok(after < 2000, `written ${after.toFixed(0)} ms after md released it (poll 20 ms; slack for a loaded machine)`);
});

t.test('policy: the watch ends after watchMs; a member failed later is left to the next return', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '0' } });
  const { target } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root, watchMs: 100, pollMs: 20 });
  t.teardown(() => p.cancel());
  p.onPathDown();
  await snapshotTaken(p);
  p.onPathReturned('fail-fast');
  t.ok(p.watching, 'watching after the return');
  await until(() => !p.watching);
  t.notOk(p.watching, 'the watch stopped');
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'faulty\n');
  fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n');
  await settle(100);
  t.equal(stateOf(dev), 'faulty\n', 'nothing written after the watch');
  t.equal(p.readds, 0);
  t.equal(p.lastReaddMs, undefined);
});

t.test('policy: at attach each faulty member is re-added; not with md_readd off, nor unconnected', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: 'none' }, nbd1: { state: 'faulty', slot: 'none' } });
  const nbd0 = { device: '/dev/nbd0', connected: true };
  const off = new MdReaddPolicy(policyTarget([nbd0], { readdEnabled: () => false }).target, { sysfs: root });
  off.onAttached();
  const gone = new MdReaddPolicy(policyTarget([nbd0], { active: () => false }).target, { sysfs: root });
  gone.onAttached();
  const devices = [
    { ...nbd0, connected: false },
    { device: '/dev/nbd1', connected: true },
  ];
  const p = new MdReaddPolicy(policyTarget(devices).target, { sysfs: root });
  p.onAttached();
  await until(() => p.readds === 1);
  await settle(); // and the others had as long
  const nbd0State = fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8');
  t.equal(nbd0State, 'faulty\n', 'md_readd off, detached, unconnected: untouched');
  t.equal(fs.readFileSync(path.join(dev('nbd1'), 'state'), 'utf8'), 're-add');
  t.same([off.readds, gone.readds, p.readds], [0, 0, 1]);
});

t.test('policy: cancel() while md still holds the slot writes nothing', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'faulty', slot: '0' } });
  const { target, messages } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root });
  p.onAttached();
  await settle(50);
  fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n'); // md releases the slot ...
  p.cancel(); // ... as the target is detached
  await settle(400);
  t.equal(fs.readFileSync(path.join(dev('nbd0'), 'state'), 'utf8'), 'faulty\n', 'nothing written');
  t.equal(p.readds, 0);
  t.match(messages().at(-1), /^md: re-add of \/dev\/nbd0 to \/dev\/md0 cancelled/);
});

t.test('policy: the path lost again while a re-add waits for md: re-added when it returns', async (t) => {
  const { root, dev } = fakeSysfs({ nbd0: { state: 'in_sync', slot: '0' } });
  const { target, messages } = policyTarget([{ device: '/dev/nbd0', connected: true }]);
  const p = new MdReaddPolicy(target, { sysfs: root });
  t.teardown(() => p.cancel());
  p.onPathDown();
  await snapshotTaken(p);
  fs.writeFileSync(path.join(dev('nbd0'), 'state'), 'faulty\n'); // md failed it but still holds its slot
  p.onPathReturned('fail-fast');
  await settle(50); // the re-add waits for md to release the slot
  p.onPathDown(); // the path drops again meanwhile
  await settle(50);
  fs.writeFileSync(path.join(dev('nbd0'), 'slot'), 'none\n');
  p.onPathReturned('fail-fast');
  await until(() => stateOf(dev) === 're-add');
  t.equal(stateOf(dev), 're-add', 'not taken for "faulty before the outage"');
  t.notOk(messages().some((m) => /already faulty/.test(m)));
});
