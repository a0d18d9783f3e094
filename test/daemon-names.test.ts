/**
 * Names an operator uses: the resolver (src/daemon/names.ts) on its own, then the real daemon:
 * `status` and `detach` by export and stable name, `detach --all`, GET /luns/:name, and an
 * unknown name answered with what exists.
 */
import t from 'tap';
import { byIdName, byIdOf, deviceOf, resolveName, UnknownNameError } from '../src/daemon/names.js';
import { lunIdentity } from '../src/initiator/lun-identity.js';
import { DESIGNATOR_EUI64, DESIGNATOR_NAA } from '../src/initiator/scsi-constants.js';
import { cleanup, cli, imageDir, request, startDaemon } from './helpers/daemon.js';

t.teardown(cleanup);

const LU = 0; // association: logical unit
const designator = (type: number, hex: string) => ({
  association: LU,
  designatorType: type,
  codeSet: 1,
  piv: false,
  protocolIdentifier: 0,
  designator: Buffer.from(hex, 'hex'),
});

t.test('byIdName: NAA, else EUI-64, else serial, else export; unsafe characters replaced', async (t) => {
  const base = { blockSize: 512, blockCount: 8n };
  const naa = lunIdentity({ ...base, serial: 's1', designators: [designator(DESIGNATOR_NAA, '6001405bd0')] });
  t.equal(byIdName(naa, 'x-lun0'), 'srp-nbd-naa.6001405bd0');
  const eui = lunIdentity({ ...base, serial: 's1', designators: [designator(DESIGNATOR_EUI64, '0011223344556677')] });
  t.equal(byIdName(eui, 'x-lun0'), 'srp-nbd-eui.0011223344556677');
  t.equal(byIdName(lunIdentity({ ...base, serial: ' a b/c ', designators: [] }), 'x'), 'srp-nbd-serial.a_b_c');
  t.equal(byIdName(lunIdentity({ ...base, designators: [] }), 'x-lun0'), 'srp-nbd-export.x-lun0');
});

t.test('deviceOf and byIdOf accept the forms an operator types, nothing else', async (t) => {
  t.equal(deviceOf('/dev/nbd3'), '/dev/nbd3');
  t.equal(deviceOf('nbd12'), '/dev/nbd12');
  t.equal(deviceOf('/dev/nbd3p1'), '/dev/nbd3', 'a partition names its disk');
  t.equal(deviceOf('/dev/sda'), undefined);
  t.equal(deviceOf('nbd'), undefined);
  t.equal(byIdOf('/dev/disk/by-id/srp-nbd-naa.60-part2'), 'srp-nbd-naa.60');
  t.equal(byIdOf('srp-nbd-serial.x'), 'srp-nbd-serial.x');
  t.equal(byIdOf('/dev/disk/by-id/wwn-0x60'), undefined);
  t.equal(byIdOf('/dev/disk/by-id/srp-nbd-x/../y'), undefined);
});

t.test('resolveName: id, device, export, stable name; unknown names list what exists', async (t) => {
  const targets = [
    {
      id: 'a',
      luns: [
        { export: 'a-lun0', device: '/dev/nbd0', by_id: 'srp-nbd-naa.01' },
        { export: 'a-lun1', device: null, by_id: 'srp-nbd-naa.02' },
      ],
    },
    { id: 'nbd1', luns: [{ export: 'nbd1-lun0', device: '/dev/nbd5', by_id: null }] },
  ];
  t.same(resolveName('a', targets), { target: 'a', kind: 'target' });
  t.same(resolveName('/dev/nbd0', targets), { target: 'a', export: 'a-lun0', kind: 'device' });
  t.same(resolveName('nbd0p2', targets), { target: 'a', export: 'a-lun0', kind: 'device' });
  t.same(resolveName('a-lun1', targets), { target: 'a', export: 'a-lun1', kind: 'export' });
  t.same(resolveName('/dev/disk/by-id/srp-nbd-naa.02-part1', targets), {
    target: 'a',
    export: 'a-lun1',
    kind: 'by-id',
  });
  t.same(resolveName('nbd1', targets), { target: 'nbd1', kind: 'target' }, 'an id wins over a device form');
  t.throws(() => resolveName('/dev/nbd1', targets), UnknownNameError, 'no LUN has /dev/nbd1');
  t.throws(() => resolveName('/dev/nbd9', targets), {
    message:
      '/dev/nbd9: no such target, device, export or stable name (attached: a (/dev/nbd0 a-lun0 srp-nbd-naa.01 a-lun1 srp-nbd-naa.02), nbd1 (/dev/nbd5 nbd1-lun0))',
  });
  t.throws(() => resolveName('x', []), { message: /\(nothing is attached\)$/ });
});

t.test('the daemon: status, detach by export and stable name, GET /luns/:name, detach --all', async (t) => {
  await startDaemon();
  for (const name of ['a', 'b', 'c']) {
    const r = await cli(['attach', `test-target,name=${name},luns=2,lun_size=4M,image_dir=${imageDir}`]);
    t.equal(r.code, 0, r.stderr);
  }
  const st = JSON.parse((await cli(['status', 'test-a-lun1', '--json'])).stdout);
  t.equal(st.id, 'test-a', 'status by export name');
  const byId = st.lun_details[1].by_id as string;
  t.match(byId, /^srp-nbd-naa\.[0-9a-f]{32}$/, 'the test target has a NAA designator');
  const viaById = JSON.parse((await cli(['status', `/dev/disk/by-id/${byId}`, '--json'])).stdout);
  t.equal(viaById.id, 'test-a', 'status by stable name');

  const lun = await request({ method: 'GET', path: `/luns/${encodeURIComponent('test-b-lun1')}` });
  t.equal(lun.status, 200, lun.body);
  const lv = JSON.parse(lun.body);
  t.match(lv, { target: 'test-b', lun: 1, export: 'test-b-lun1', device: null, serial: 'b-1' });
  t.equal(lv.by_id_path, `/dev/disk/by-id/${lv.by_id}`);
  const notLun = await request({ method: 'GET', path: '/luns/test-b' });
  t.equal(notLun.status, 404);
  t.match(JSON.parse(notLun.body).message, /test-b is a target, not a LUN: .*test-b-lun0, test-b-lun1/);
  const unknown = await request({ method: 'GET', path: `/luns/${encodeURIComponent('/dev/nbd7')}` });
  t.equal(unknown.status, 404);
  t.match(
    JSON.parse(unknown.body).message,
    /^\/dev\/nbd7: no such target, device, export or stable name \(attached: test-a/,
  );

  const det = await cli(['detach', 'test-b-lun0', '--json']);
  t.equal(det.code, 0, det.stderr);
  t.match(JSON.parse(det.stdout), { detached: [{ detached: 'test-b', exports: ['test-b-lun0', 'test-b-lun1'] }] });
  const detText = await cli(['detach', `/dev/disk/by-id/${byId}-part1`]);
  t.equal(detText.code, 0, detText.stderr);
  t.equal(detText.stdout, `test-a: detached [/dev/disk/by-id/${byId}-part1]\n`, 'names the target and what was given');
  const gone = await cli(['detach', '/dev/nbd3']);
  t.equal(gone.code, 1);
  t.match(
    gone.stderr,
    /^srp-nbd detach: \/dev\/nbd3: no such target, device, export or stable name \(attached: test-c \(test-c-lun0/,
  );
  const both = await cli(['detach', '--all', 'test-c']);
  t.equal(both.code, 2, 'NAMEs and --all together are a usage error');
  const all = await cli(['detach', '--all']);
  t.equal(all.code, 0, all.stderr);
  t.equal(all.stdout, 'test-c: detached\n');
  t.same(JSON.parse((await cli(['list', '--json'])).stdout), []);
  const none = await cli(['detach', '--all']);
  t.equal(none.stdout, 'no targets attached\n');
});
