/**
 * `srp-nbd discover ADDRESS`: logs in to one target, lists its LUNs (REPORT LUNS, then each LUN's
 * size, block size and identity as the daemon records them), logs out. Local: no daemon needed,
 * nothing is attached or written.
 *
 * Exit status like the other commands: 0 listed, 1 the target could not be reached or refused the
 * login (the message names the SRP_LOGIN_REJ reason), 2 usage error.
 */
import { parseArgs } from 'node:util';
import { type AnyAddress, parseAnyAddress, TEST_TARGET_PREFIX, type TestTargetSpec } from '../daemon/address.js';
import { TARGET_OPTIONS } from '../daemon/config.js';
import { createTestFabric } from '../daemon/test-target.js';
import { type ChannelConnector, SrpPort } from '../fsm/srp-port.js';
import { describeIdentity } from '../initiator/lun-identity.js';
import { samToLun } from '../initiator/scsi-cdb.js';
import { reportLuns } from '../initiator/scsi-disk.js';
import type { SrpTargetAddress } from '../initiator/target-address.js';
import { TEST_INITIATOR_PORT_ID, TEST_TARGET_PORT_ID } from '../testing/test-fabric.js';
import { createLogger, silentLogger } from '../util/log.js';
import { formatTable } from './control.js';
import { UsageError } from './usage-error.js';

export const DISCOVER_USAGE = `usage: srp-nbd discover [--json] [ADDRESS]

Logs in to the target at ADDRESS, lists its LUNs (number, size, block size, identity as the daemon
records it) and logs out; no daemon needed, nothing is attached or written.
  id_ext=…,ioc_guid=…,dest=IP:PORT[,src=IP]   an RDMA/CM target (ib_srp add_target string)
  test-target[,…]                             the in-process test target
  (no ADDRESS)   InfiniBand discovery (DM MADs over umad) and IB CM addresses (dgid=…) are not
                 supported yet: use srp_daemon -o -n -c | srp-nbd attach -

  --json   {address, transport, via, luns: [{lun, size, block_size, identity}]}
Exit status: 0 listed, 1 unreachable or login rejected (the reason named), 2 usage error.
Set SRP_NBD_LOG=debug to see the login.
`;

export interface DiscoveredLun {
  lun: number;
  /** bytes */
  size: number;
  block_size: number;
  /** describeIdentity(): vendor, product, NAA/EUI designators, serial */
  identity: string;
}

export async function discover(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(DISCOVER_USAGE);
    return 0;
  }
  if (positionals.length === 0) {
    throw new Error(
      'InfiniBand discovery (DM MADs over umad) is not supported yet: run `srp_daemon -o -n -c` and pipe its output to `srp-nbd attach -`; an RDMA/CM target is discovered by its address: srp-nbd discover id_ext=…,ioc_guid=…,dest=IP:PORT',
    );
  }
  if (positionals.length > 1) throw new UsageError('give at most one ADDRESS');
  const text = positionals[0]!;
  let a: AnyAddress;
  try {
    a = parseAnyAddress(text);
  } catch (e) {
    throw new UsageError(`address '${text}': ${(e as Error).message}`);
  }
  let found: { transport: string; via: string; luns: DiscoveredLun[] };
  try {
    found = a.kind === 'test' ? await discoverTestTarget(a.spec) : await discoverRdmaTarget(a.addr);
  } catch (e) {
    throw new Error(`${text}: ${(e as Error).message}`, { cause: e });
  }
  if (values.json) {
    process.stdout.write(JSON.stringify({ address: text, ...found }, null, 2) + '\n');
    return 0;
  }
  const rows = found.luns.map((l) => [
    String(l.lun),
    `${(l.size / 1048576).toFixed(0)} MiB`,
    String(l.block_size),
    l.identity,
  ]);
  process.stdout.write(formatTable([['LUN', 'SIZE', 'BLOCK', 'IDENTITY'], ...rows]) + '\n');
  return 0;
}

/** The login's logger: silent unless SRP_NBD_LOG asks for a level (the table is the output). */
const logger = () => (process.env.SRP_NBD_LOG ? createLogger() : silentLogger());

/** Logs in through `connector`, probes every reported LUN, logs out (also on failure); LUNs in number order. */
async function listLuns(
  connector: ChannelConnector,
  ids: { initiatorPortId: Buffer; targetPortId: Buffer },
): Promise<DiscoveredLun[]> {
  const commandTimeoutMs = TARGET_OPTIONS.command_timeout.default * 1000;
  const port = await SrpPort.connect({
    name: 'discover',
    connector,
    session: {
      ...ids,
      queueSize: TARGET_OPTIONS.queue_size.default,
      immediateData: TARGET_OPTIONS.immediate_data.default,
      commandTimeoutMs,
    },
    commandTimeoutMs,
    logger: logger(),
  });
  try {
    const out: DiscoveredLun[] = [];
    for (const sam of await reportLuns(port.executor)) {
      const disk = await port.addLun(sam);
      out.push({
        lun: samToLun(sam),
        size: disk.geometry.sizeBytes,
        block_size: disk.geometry.blockSize,
        identity: describeIdentity(disk.probeResult!.identity),
      });
    }
    // in LUN order (LIO reports its LUNs newest first)
    return out.sort((a, b) => a.lun - b.lun);
  } finally {
    await port.close();
  }
}

/** The in-process test target (no image files are opened: discovery never writes). */
export async function discoverTestTarget(
  spec: TestTargetSpec,
): Promise<{ transport: string; via: string; luns: DiscoveredLun[] }> {
  const { fabric, close } = await createTestFabric({ ...spec, imageDir: undefined } as TestTargetSpec);
  try {
    return {
      transport: TEST_TARGET_PREFIX,
      via: fabric.description,
      luns: await listLuns(fabric, { initiatorPortId: TEST_INITIATOR_PORT_ID, targetPortId: TEST_TARGET_PORT_ID }),
    };
  } finally {
    close();
  }
}

/**
 * An RDMA/CM target through the daemon's connector (src/initiator/rdma/), with the
 * default transport options and no keep-alive (the session lives for a few commands).
 */
export async function discoverRdmaTarget(
  addr: SrpTargetAddress,
): Promise<{ transport: string; via: string; luns: DiscoveredLun[] }> {
  if (addr.transport !== 'rdma-cm') {
    throw new Error(
      'discovery over IB CM (dgid/pkey/service_id) is not supported yet; give the RDMA/CM address (dest=IP:PORT)',
    );
  }
  const { createRdmaConnector } = await import('../initiator/rdma/index.js');
  const made = await createRdmaConnector(addr, {
    ackTimeout: TARGET_OPTIONS.ack_timeout.default,
    retryCount: TARGET_OPTIONS.retry_count.default,
    keepaliveIntervalMs: 0,
    logger: logger(),
  });
  try {
    return { transport: 'rdma-cm', via: made.connector.description, luns: await listLuns(made.connector, made) };
  } finally {
    made.close();
  }
}
