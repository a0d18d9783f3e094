// The daemon as a drop-in for ib_srp, in process (mock RDMA binding, mock kernel NBD): devices in
// LUN order whatever order REPORT LUNS uses (LIO: newest first).
import t from 'tap';
import { DaemonError, sortLuns } from '../src/daemon/daemon.js';
import { SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL } from '../src/initiator/srp-constants.js';
import { lunToSam } from '../src/initiator/scsi-cdb.js';
import { lioLikeTarget, rdmaDaemon } from './helpers/rdma-daemon.js';

const DEST = '192.0.2.2:5000';
const ADDR = `id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=${DEST}`;

t.test('sortLuns: by LUN number', async (t) => {
  t.same(sortLuns([lunToSam(2), lunToSam(0), lunToSam(10), lunToSam(1)]), [0, 1, 2, 10].map(lunToSam));
  t.same(sortLuns([lunToSam(300), lunToSam(2)]), [lunToSam(2), lunToSam(300)], 'flat addressing above 255');
});

t.test('LUN order: REPORT LUNS newest first; devices in LUN order', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('a', 3)]]));
  const v = await f.d.attach({ address: ADDR, id: 'a' });
  t.same(
    v.lun_details.map((l) => [l.lun, l.export, l.device]),
    [
      [0, 'a-lun0', '/dev/nbd0'],
      [1, 'a-lun1', '/dev/nbd1'],
      [2, 'a-lun2', '/dev/nbd2'],
    ],
  );
  t.equal(f.kernel.describe(), '/dev/nbd0=a-lun0 /dev/nbd1=a-lun1 /dev/nbd2=a-lun2');
});

t.test('LUN order with device=/dev/nbdN: N, N+1, ... in LUN order', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('b', 3)]]));
  await f.d.attach({ address: ADDR, id: 'b', device: '/dev/nbd5' });
  t.equal(f.kernel.describe(), '/dev/nbd5=b-lun0 /dev/nbd6=b-lun1 /dev/nbd7=b-lun2');
});

const GUID = '02005efffe000001'; // MockRdmaBinding.portGuid: interface id of the mock port's GID 0

t.test("initiator port id: ib_srp's (initiator_ext ‖ port GUID) by default, shown in status", async (t) => {
  const target = lioLikeTarget('c', 1);
  const f = await rdmaDaemon(t, new Map([[DEST, target]]));
  const v = await f.d.attach({ address: `${ADDR},initiator_ext=42`, id: 'c', device: 'none' });
  t.equal(target.lastInitiatorPortId, '0000000000000042' + GUID, 'the target sees initiator_ext ‖ port GUID');
  t.equal(v.initiator_port_id, '0x0000000000000042' + GUID, 'status shows it');
  t.equal(v.options.initiator_id, 'port');
  t.equal(v.last_error, null);
});

t.test('initiator port id: rev. 10 layout with io_class=ff00', async (t) => {
  const target = lioLikeTarget('r', 1);
  const f = await rdmaDaemon(t, new Map([[DEST, target]]));
  const v = await f.d.attach({ address: `${ADDR},initiator_ext=42,io_class=ff00`, id: 'r', device: 'none' });
  t.equal(target.lastInitiatorPortId, GUID + '0000000000000042', 'port GUID ‖ initiator_ext');
  t.equal(v.initiator_port_id, '0x' + GUID + '0000000000000042');
});

t.test('initiator_id=host: one fixed id of this host, not the port GUID', async (t) => {
  const target = lioLikeTarget('h', 1);
  const f = await rdmaDaemon(t, new Map([[DEST, target]]));
  const v = await f.d.attach({ address: ADDR, id: 'h', device: 'none', initiator_id: 'host' });
  t.equal(target.lastInitiatorPortId!.slice(0, 16), '0000000000000000');
  t.not(target.lastInitiatorPortId!.slice(16), GUID);
  t.equal(v.initiator_port_id, '0x' + target.lastInitiatorPortId);
  await f.d.detach('h');
  const again = await f.d.attach({ address: ADDR, id: 'h2', device: 'none', initiator_id: 'host' });
  t.equal(again.initiator_port_id, v.initiator_port_id, 'stable');
});

t.test('a login refused for a missing ACL names the id, the source and the ACL to add', async (t) => {
  const target = lioLikeTarget('n', 1);
  target.acls = new Set(['0000000000000000' + GUID]);
  const f = await rdmaDaemon(t, new Map([[DEST, target]]));
  const err = (await f.d.attach({ address: `${ADDR},initiator_ext=7`, id: 'n' }).catch((e: unknown) => e)) as Error;
  t.type(err, DaemonError);
  t.equal((err as DaemonError).status, 502);
  t.match(
    err.message,
    /^target n: attach failed: SRP login rejected: SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED \(0x00010006\)/,
  );
  t.match(err.message, `it saw initiator port id 0x0000000000000007${GUID} from 192.0.2.1 to ${DEST}`);
  t.match(err.message, `targetcli /srpt/ib.<target port GID>/acls create ib.0000000000000007${GUID}`);
  t.match(err.message, `acls/0x0000000000000007${GUID}`);
  t.same(f.d.list(), [], 'nothing attached');
  // with the ACL's initiator the same target admits the login
  const ok = await f.d.attach({ address: ADDR, id: 'n', device: 'none' });
  t.equal(ok.status, 'attached');
});

t.test('other reject reasons: code, name and a hint', async (t) => {
  const target = lioLikeTarget('u', 1);
  target.rejectLogin = SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL;
  const f = await rdmaDaemon(t, new Map([[DEST, target]]));
  const err = (await f.d.attach({ address: ADDR, id: 'u' }).catch((e: unknown) => e)) as Error;
  t.match(err.message, /SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL \(0x00010003\).*check id_ext, ioc_guid and io_class/);
  t.match(err.message, `(initiator port id 0x0000000000000000${GUID} from 192.0.2.1 to ${DEST})`);
});

t.test(
  'multipath off: the same LU attached a second time (another src=, another id) is refused, naming who has it',
  async (t) => {
    const target = lioLikeTarget('d', 2);
    const f = await rdmaDaemon(t, new Map([[DEST, target]]));
    await f.d.attach({ address: ADDR, id: 'first' });
    const err = (await f.d
      .attach({ address: `${ADDR},src=192.0.2.1`, id: 'second', multipath: false })
      .catch((e: unknown) => e)) as DaemonError;
    t.type(err, DaemonError);
    t.equal(err.status, 409);
    t.match(
      err.message,
      /^target second: LUN 0 \(.*serial "d-l0".*\) is already attached as target first LUN 0 \(\/dev\/nbd0\)/,
    );
    t.match(err.message, /LUN 1 \(.*serial "d-l1".*\) is already attached as target first LUN 1 \(\/dev\/nbd1\)/);
    t.equal(f.kernel.describe(), '/dev/nbd0=first-lun0 /dev/nbd1=first-lun1', 'no second device');
    t.same(
      f.d.list().map((x) => x.id),
      ['first'],
    );
    // another LU behind another target is fine; after detach the LU can be attached again
    await f.d.detach('first');
    const again = await f.d.attach({ address: `${ADDR},src=192.0.2.1`, id: 'second' });
    t.equal(again.status, 'attached');
  },
);

t.test('multipath off: a duplicate on device=none names the export', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('e', 1)]]), { device: 'none' });
  await f.d.attach({ address: ADDR, id: 'one' });
  const err = (await f.d
    .attach({ address: `${ADDR},initiator_ext=1`, id: 'two', multipath: false })
    .catch((e: unknown) => e)) as Error;
  t.match(err.message, /already attached as target one LUN 0 \(export one-lun0\)/);
});
