/** `srp-nbd discover test-target,…`: logs in to an in-process test target and lists its LUNs. */
import { SrpPort } from '../fsm/srp-port.js';
import { samToLun } from '../initiator/scsi-cdb.js';
import { reportLuns } from '../initiator/scsi-disk.js';
import { describeIdentity } from '../initiator/lun-identity.js';
import { TEST_INITIATOR_PORT_ID, TEST_TARGET_PORT_ID } from '../testing/test-fabric.js';
import { silentLogger } from '../util/log.js';
import type { TestTargetSpec } from '../daemon/address.js';
import { createTestFabric } from '../daemon/test-target.js';

export async function discoverTestTarget(spec: TestTargetSpec): Promise<{ lun: number; size: number; block_size: number; identity: string }[]> {
  // Discovery never writes: no image files are opened.
  const { fabric, close } = createTestFabric({ ...spec, imageDir: undefined } as TestTargetSpec);
  const port = await SrpPort.connect({
    name: 'discover',
    connector: fabric,
    session: { initiatorPortId: TEST_INITIATOR_PORT_ID, targetPortId: TEST_TARGET_PORT_ID },
    logger: silentLogger(),
  });
  try {
    const out = [];
    for (const sam of await reportLuns(port.executor)) {
      const disk = await port.addLun(sam);
      out.push({ lun: samToLun(sam), size: disk.geometry.sizeBytes, block_size: disk.geometry.blockSize, identity: describeIdentity(disk.probeResult!.identity) });
    }
    return out;
  } finally {
    await port.close();
    close();
  }
}
