/**
 * An in-process daemon whose RDMA targets are SRP test targets behind the mock RDMA binding and
 * whose kernel NBD driver is the mock one: the daemon's real attach path (RDMA/CM connector, port
 * ids, login, REPORT LUNS, identity, devices) without root, RDMA hardware or the nbd module.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pino } from 'pino';
import { parseConfig } from '../../src/daemon/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { createRdmaConnector } from '../../src/initiator/rdma/index.js';
import type { LoopbackTargetEnd } from '../../src/initiator/loopback.js';
import { lunToSam } from '../../src/initiator/scsi-cdb.js';
import { MockNbdKernel } from '../../src/testing/mock-nbd-kernel.js';
import { MockRdmaBinding } from '../../src/testing/mock-rdma-binding.js';
import { RamScsiLun } from '../../src/testing/scsi-lun.js';
import { SrpTestTarget } from '../../src/testing/srp-target.js';

/** An ib_srpt-like target: `luns` RAM LUNs with serials `${name}-l<N>`, REPORT LUNS newest first. */
export function lioLikeTarget(name: string, luns: number, blocks = 4096): SrpTestTarget {
  const list: [bigint, RamScsiLun][] = [];
  for (let i = 0; i < luns; i++) list.push([lunToSam(i), new RamScsiLun({ blocks, serial: `${name}-l${i}` })]);
  const target = new SrpTestTarget({ luns: list });
  target.reportLunsNewestFirst = true;
  return target;
}

export interface RdmaDaemonFixture {
  d: Daemon;
  m: MockRdmaBinding;
  kernel: MockNbdKernel;
  /** the target behind each dest address ("192.0.2.2:5000"); none listens at any other */
  targets: Map<string, SrpTestTarget>;
  dir: string;
}

/**
 * A started daemon (config: `defaults` merged in; device auto) whose RDMA connects reach
 * `targets` by dest address; its sysfs root is `dir`/sys (empty unless the test lays out files).
 * Torn down with the test.
 */
export async function rdmaDaemon(
  t: { teardown: (fn: () => Promise<void>) => void },
  targets: Map<string, SrpTestTarget>,
  defaults: Record<string, unknown> = {},
  extra: Record<string, unknown> = {},
): Promise<RdmaDaemonFixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-rdma-daemon-'));
  const config = parseConfig({
    control_socket: path.join(dir, 'control.sock'),
    nbd_socket: path.join(dir, 'nbd.sock'),
    state_dir: path.join(dir, 'state'),
    defaults: { reconnect_delay: 1, keepalive_interval: 0, ...defaults },
    ...extra,
  });
  const m = new MockRdmaBinding();
  const kernel = new MockNbdKernel();
  m.onConnect = (end) => targets.get(end.dest)?.accept(end as unknown as LoopbackTargetEnd);
  const d = new Daemon({
    config,
    logger: pino({ level: 'silent' }),
    nbdKernel: () => Promise.resolve(kernel),
    // the mock kernel's devices live in a sysfs tree of the test's own (dir/sys), never in /sys
    sysfs: path.join(dir, 'sys'),
    loadRdma: () =>
      Promise.resolve({
        createRdmaConnector: (addr, opts) =>
          createRdmaConnector(addr, {
            ...opts,
            binding: m.asBinding(),
            transport: { ...opts.transport, sendQueueDepth: 32, recvQueueDepth: 32 },
          }),
      }),
  });
  await d.start();
  t.teardown(async () => {
    await d.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { d, m, kernel, targets, dir };
}
