// The daemon as a drop-in for ib_srp, in process (mock RDMA binding, mock kernel NBD): devices in
// LUN order whatever order REPORT LUNS uses (LIO: newest first).
import t from 'tap';
import { sortLuns } from '../src/daemon/daemon.js';
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
