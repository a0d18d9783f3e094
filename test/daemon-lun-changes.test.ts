/**
 * Read-only LUNs and LUN changes while attached, in-process against the test target (no kernel
 * devices): the read_only option and the LU's WP bit make the export read-only and writes fail
 * with EPERM before anything is sent; a LUN that grew is resized (rescan, CAPACITY DATA HAS
 * CHANGED) and re-attached after a restart, one that shrank is refused; LUNs added and removed on
 * the target are followed (rescan, REPORTED LUNS DATA HAS CHANGED); srp_nbd_lun_changes_total.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { inProcessDaemons, type InProcessDaemons } from './helpers/in-process-daemon.js';
import { DaemonError } from '../src/daemon/daemon.js';
import { lunToSam } from '../src/initiator/scsi-cdb.js';
import {
  ASC_TARGET_OPERATING_CONDITIONS_CHANGED,
  ASCQ_REPORTED_LUNS_DATA_HAS_CHANGED,
  WRITE_16,
} from '../src/initiator/scsi-constants.js';
import { NBD_FLAG_READ_ONLY } from '../src/nbd/nbd-constants.js';
import { transmissionFlags } from '../src/nbd/backend.js';
import { LunBackend } from '../src/fsm/lun-backend.js';
import { SrpPort } from '../src/fsm/srp-port.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { TEST_INITIATOR_PORT_ID, TEST_TARGET_PORT_ID, TestFabric } from '../src/testing/test-fabric.js';

const MiB = 1024 * 1024;

const setup = (t: Parameters<typeof inProcessDaemons>[0]): InProcessDaemons => inProcessDaemons(t, 'srp-nbd-lunchg-');

/** Counts the WRITE(16)s that reach the test target (its RAM LUNs keep no command log here). */
function countWrites(fabric: TestFabric): () => number {
  let n = 0;
  fabric.target.commandHook = (_lun, cdb) => {
    if (cdb[0] === WRITE_16) n++;
    return undefined;
  };
  return () => n;
}

/** A backend call as a promise (Backend methods may answer synchronously). */
const op = (f: () => unknown): Promise<unknown> => Promise.resolve().then(f);

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('read_only option: export read-only, writes EPERM and never sent, reads work', async (t) => {
  const { make } = setup(t);
  const d = make();
  await d.start();
  const v = await d.attach({ address: 'test-target,name=ro,lun_size=1M', id: 'ro', read_only: true });
  const l = v.lun_details[0]!;
  t.match(l, { read_only: true, read_only_reason: 'option', write_protect: false, state: 'attached' });
  const b = d.nbd.lookup('ro-lun0')!.backend;
  t.ok(transmissionFlags(b) & NBD_FLAG_READ_ONLY, 'NBD_FLAG_READ_ONLY offered (handshake and CONNECT)');
  const lun = d.testFabric('ro')!.luns.get(lunToSam(0))!;
  const writes = countWrites(d.testFabric('ro')!);
  await t.rejects(
    op(() => b.write(0, Buffer.alloc(4096, 1), false)),
    { code: 'EPERM' },
  );
  await t.rejects(
    op(() => b.trim(0, 4096, false)),
    { code: 'EPERM' },
  );
  await t.rejects(
    op(() => b.writeZeroes(0, 4096, false, false)),
    { code: 'EPERM' },
  );
  t.equal(writes(), 0, 'nothing reached the target');
  lun.poke(0, Buffer.alloc(512, 7));
  const dst = Buffer.alloc(512);
  await b.read(0, dst);
  t.equal(dst[0], 7, 'reads work');
});

t.test('WP bit: read at attach, followed by rescan; DATA PROTECT from the target is EPERM', async (t) => {
  const { make } = setup(t);
  const d = make();
  await d.start();
  await d.attach({ address: 'test-target,name=wp,lun_size=1M', id: 'wp' });
  const lun = d.testFabric('wp')!.luns.get(lunToSam(0))!;
  const b = d.nbd.lookup('wp-lun0')!.backend;
  const writes = countWrites(d.testFabric('wp')!);

  // The target write-protects the LUN behind our back: its DATA PROTECT answer is EPERM, not EIO.
  lun.writeProtected = true;
  await t.rejects(
    op(() => b.write(0, Buffer.alloc(512, 1), false)),
    { code: 'EPERM' },
  );
  t.equal(writes(), 1, 'that write was sent: the WP bit was not known yet');

  const v = await d.rescan('wp');
  t.match(v.lun_details[0], { read_only: true, read_only_reason: 'write_protect', write_protect: true });
  await t.rejects(
    op(() => b.write(0, Buffer.alloc(512, 1), false)),
    { code: 'EPERM' },
  );
  t.equal(writes(), 1, 'now refused locally');
  t.match(await d.metrics(), /srp_nbd_lun_changes_total\{target="wp",change="write_protected"\} 1/);

  lun.writeProtected = false;
  const v2 = await d.rescan('wp');
  t.match(v2.lun_details[0], { read_only: false, read_only_reason: null, write_protect: false });
  await b.write(0, Buffer.alloc(512, 1), false);
  t.equal(writes(), 2);
});

t.test('SrpPort: WP read at attach; a WP change and growth found by the identity check', async (t) => {
  const fabric = new TestFabric([{ blockSize: 512, sizeBytes: MiB, serial: 'p-0' }]);
  const lun = fabric.luns.get(lunToSam(0))!;
  lun.writeProtected = true;
  const events: unknown[] = [];
  const port = await SrpPort.connect({
    name: 'p',
    connector: fabric,
    session: { initiatorPortId: TEST_INITIATOR_PORT_ID, targetPortId: TEST_TARGET_PORT_ID },
    tmo: { reconnectDelay: 1 },
    logger: pino({ level: 'silent' }),
    onLunEvent: (sam, ev) => events.push([sam, ev]),
  });
  t.teardown(() => port.close());
  const disk = await port.addLun(lunToSam(0));
  const b = new LunBackend(port, disk, 'p LUN 0');
  t.equal(b.readOnlyReason, 'write_protect', 'read-only from the start');
  t.ok(transmissionFlags(b) & NBD_FLAG_READ_ONLY);
  const writes = countWrites(fabric);
  await t.rejects(
    op(() => b.write(0, Buffer.alloc(512), false)),
    { code: 'EPERM' },
  );
  t.equal(writes(), 0, 'never sent');

  // Across a reconnect the LU lost its WP bit and grew: same disk, both adopted and reported.
  fabric.linkDown();
  lun.writeProtected = false;
  lun.changeIdentity({ blocks: 4096, unitAttention: false });
  fabric.restoreLink();
  await waitFor('the reconnect', () => port.state === 'running' && port.logins === 2, 10000);
  t.equal(b.readOnly, false);
  t.equal(b.size, 2 * MiB);
  t.same(events, [
    [lunToSam(0), { type: 'write-protect', writeProtected: false }],
    [lunToSam(0), { type: 'grown', from: 2048n, to: 4096n }],
  ]);
  t.equal(port.identityOf(lunToSam(0))!.blockCount, 4096n, 'later checks compare with the new size');
});

t.test('a LUN that grew: rescan and CAPACITY DATA HAS CHANGED resize the export; shrink refused', async (t) => {
  const { make } = setup(t);
  const d = make();
  await d.start();
  await d.attach({ address: 'test-target,name=g,lun_size=1M', id: 'g' });
  const lun = d.testFabric('g')!.luns.get(lunToSam(0))!;
  const b = d.nbd.lookup('g-lun0')!.backend;
  t.equal(b.size, MiB);
  lun.poke(5, Buffer.alloc(512, 9));

  lun.changeIdentity({ blocks: 4096, unitAttention: false });
  const v = await d.rescan('g');
  t.equal(v.lun_details[0]!.size, 2 * MiB, 'rescan: the export grew');
  t.equal(b.size, 2 * MiB);
  await b.write(2 * MiB - 4096, Buffer.alloc(4096, 3), false);
  const dst = Buffer.alloc(512);
  await b.read(5 * 512, dst);
  t.equal(dst[0], 9, 'data intact');

  // The unit attention alone (the next command sees it) re-reads the capacity.
  lun.changeIdentity({ blocks: 8192 });
  await b.read(0, Buffer.alloc(512));
  await waitFor('the export to follow the UA', () => b.size === 4 * MiB);
  t.match(await d.metrics(), /srp_nbd_lun_changes_total\{target="g",change="grown"\} 2/);

  // Shrunk: not followed, said in status.
  lun.changeIdentity({ blocks: 2048, unitAttention: false });
  const s = await d.rescan('g');
  t.equal(s.lun_details[0]!.size, 4 * MiB, 'a shrink is not followed');
  t.match(s.lun_details[0]!.capacity_note, /fewer than the 8192 attached: not followed/);
  t.match(await d.metrics(), /srp_nbd_lun_changes_total\{target="g",change="shrunk"\} 1/);
});

t.test('restart: a LUN that grew is re-attached, one that shrank is refused naming why', async (t) => {
  const { dir, make } = setup(t);
  const d = make();
  await d.start();
  await d.attach({ address: 'test-target,name=r,lun_size=2M', id: 'r' });
  await d.close();
  const file = path.join(dir, 'state', 'state.json');
  const state = JSON.parse(fs.readFileSync(file, 'utf8'));
  // as if the LUN had 1 MiB when it was attached: it grew while the daemon was away
  state.targets[0].luns[0].identity.blockCount = '2048';
  fs.writeFileSync(file, JSON.stringify(state));
  const d2 = make();
  await d2.start();
  const v = await d2.status('r');
  t.equal(v.status, 'attached', v.error ?? '');
  t.equal(v.lun_details[0]!.size, 2 * MiB);
  await d2.close();

  state.targets[0].luns[0].identity.blockCount = '8192'; // it had 4 MiB: it shrank
  fs.writeFileSync(file, JSON.stringify(state));
  const d3 = make();
  await d3.start();
  const f = await d3.status('r');
  t.equal(f.status, 'failed');
  t.match(f.error, /LUN 0 \(export r-lun0\): capacity shrank below the attached size: 8192 x 512-byte blocks/);
});

t.test('LUNs added and removed on the target: rescan and REPORTED LUNS DATA HAS CHANGED', async (t) => {
  const { make } = setup(t);
  const d = make();
  await d.start();
  await d.attach({ address: 'test-target,name=m,luns=2,lun_size=1M', id: 'm' });
  const fabric = d.testFabric('m')!;
  fabric.luns.set(lunToSam(3), new RamScsiLun({ blocks: 2048, serial: 'm-3' }));
  fabric.luns.set(lunToSam(2), new RamScsiLun({ blocks: 4096, serial: 'm-2' }));
  fabric.luns.delete(lunToSam(1));
  const v = await d.rescan('m');
  t.same(
    v.lun_details.map((l) => [l.lun, l.export, l.state, l.size]),
    [
      [0, 'm-lun0', 'attached', MiB],
      [1, 'm-lun1', 'removed', MiB],
      [2, 'm-lun2', 'attached', 2 * MiB],
      [3, 'm-lun3', 'attached', MiB],
    ],
    'new LUNs in LUN order; the vanished one kept, removed',
  );
  await t.rejects(
    op(() => d.nbd.lookup('m-lun1')!.backend.read(0, Buffer.alloc(512))),
    { code: 'EIO' },
  );
  await d.nbd.lookup('m-lun2')!.backend.write(0, Buffer.alloc(512, 4), false);
  t.equal(fabric.luns.get(lunToSam(2))!.peek(0, 1)[0], 4, 'a new LUN takes I/O');
  const m = await d.metrics();
  t.match(m, /srp_nbd_lun_changes_total\{target="m",change="added"\} 2/);
  t.match(m, /srp_nbd_lun_changes_total\{target="m",change="removed"\} 1/);

  // The unit attention alone: a LUN added, then REPORTED LUNS DATA HAS CHANGED on the next command.
  fabric.luns.set(lunToSam(4), new RamScsiLun({ blocks: 2048, serial: 'm-4' }));
  fabric.luns
    .get(lunToSam(0))!
    .queueUnitAttention(ASC_TARGET_OPERATING_CONDITIONS_CHANGED, ASCQ_REPORTED_LUNS_DATA_HAS_CHANGED);
  await d.nbd.lookup('m-lun0')!.backend.read(0, Buffer.alloc(512));
  await waitFor('LUN 4 to be exported', () => d.nbd.lookup('m-lun4') !== undefined);
  const s = await d.status('m');
  t.same(
    s.luns.map((l) => l.export),
    ['m-lun0', 'm-lun1', 'm-lun2', 'm-lun3', 'm-lun4'],
  );
});

t.test('rescan of a target that is not attached: 404/409 with the reason', async (t) => {
  const { make } = setup(t);
  const d = make();
  await d.start();
  const e = await d.rescan('nope').catch((x: unknown) => x);
  t.type(e, DaemonError);
  t.equal((e as DaemonError).status, 404);
});
