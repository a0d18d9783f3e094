/**
 * A test SRP target behind a link that can fail: what `srp-nbd serve
 * --test-target` exports and what the failover tests flap. While the link
 * is down, live channels are torn down and new connections are refused, as
 * with a real path loss; a "black hole" keeps channels up but delivers
 * nothing.
 */
import { lunToSam } from '../initiator/scsi-cdb.js';
import { TransportError } from '../initiator/scsi-executor.js';
import type { LoopbackPair } from '../initiator/loopback.js';
import type { ChannelTransport } from '../initiator/transport.js';
import type { Logger } from 'pino';
import { LunBackend } from '../fsm/lun-backend.js';
import type { Scheduler } from '../fsm/scheduler.js';
import { type ChannelConnector, SrpPort, type SrpPortOptions } from '../fsm/srp-port.js';
import type { TmoParams } from '../fsm/timers.js';
import { RamScsiLun } from './scsi-lun.js';
import { SrpTestTarget } from './srp-target.js';

export interface TestLunSpec {
  blockSize: 512 | 4096;
  sizeBytes: number;
  serial: string;
}

export class TestFabric implements ChannelConnector {
  readonly description = 'test-target (in-process loopback)';
  readonly target: SrpTestTarget;
  readonly luns = new Map<bigint, RamScsiLun>();
  private up = true;
  private readonly pairs = new Set<LoopbackPair>();
  private readonly pathUpListeners = new Set<() => void>();
  /** Channels opened so far (logins attempted). */
  opened = 0;

  /**
   * commandLog: commands each RAM LUN's log keeps (RamScsiLunOptions.commandLog); default 0, no log:
   * `serve --test-target` and the daemon run for long and measure the initiator's cost.
   */
  constructor(specs: TestLunSpec[], opts: { commandLog?: number } = {}) {
    specs.forEach((s, i) => {
      this.luns.set(
        lunToSam(i),
        new RamScsiLun({
          blockSize: s.blockSize,
          blocks: s.sizeBytes / s.blockSize,
          serial: s.serial,
          reportedLuns: specs.map((_, j) => lunToSam(j)),
          provisioning: { lbpme: true, lbpu: true, lbpws: true, lbprz: true },
          commandLog: opts.commandLog ?? 0,
        }),
      );
    });
    this.target = new SrpTestTarget({ luns: this.luns });
  }

  get linkUp(): boolean {
    return this.up;
  }

  async open(): Promise<ChannelTransport> {
    if (!this.up) throw new TransportError('test link is down: target unreachable', 'disconnected');
    this.opened++;
    const pair = this.target.newChannel();
    this.pairs.add(pair);
    pair.initiator.on('disconnect', () => this.pairs.delete(pair));
    return pair.initiator;
  }

  /** Link down: every channel is lost now, new connections fail until linkUp(). */
  linkDown(): void {
    this.up = false;
    for (const p of [...this.pairs]) p.disconnect('test link down');
  }

  /** Link up: connections succeed again and path-up listeners hear of it (like PORT_ACTIVE). */
  restoreLink(): void {
    this.up = true;
    for (const l of [...this.pathUpListeners]) l();
  }

  onPathUp(listener: () => void): () => void {
    this.pathUpListeners.add(listener);
    return () => this.pathUpListeners.delete(listener);
  }
}

export interface TestTargetExports {
  fabric: TestFabric;
  port: SrpPort;
  /** NBD export name ("lun0", "lun1", ...) → backend. */
  exports: Map<string, LunBackend>;
}

/**
 * Logs in to a fresh test target through the real initiator stack (SRP
 * session, SCSI layer, rport FSM, I/O gate) and returns one NBD backend per LUN.
 */
export async function startTestTarget(opts: {
  luns: TestLunSpec[];
  logger: Logger;
  tmo?: Partial<TmoParams>;
  scheduler?: Scheduler;
  queueDepth?: number;
  commandTimeoutMs?: number;
  /** see TestFabric (tests that look at what the LUNs were sent turn it on) */
  commandLog?: number;
}): Promise<TestTargetExports> {
  const fabric = new TestFabric(opts.luns, opts.commandLog !== undefined ? { commandLog: opts.commandLog } : {});
  const portOpts: SrpPortOptions = {
    name: 'test-target',
    connector: fabric,
    session: { initiatorPortId: TEST_INITIATOR_PORT_ID, targetPortId: TEST_TARGET_PORT_ID },
    logger: opts.logger,
  };
  if (opts.tmo) portOpts.tmo = opts.tmo;
  if (opts.scheduler) portOpts.scheduler = opts.scheduler;
  if (opts.queueDepth) portOpts.queueDepth = opts.queueDepth;
  if (opts.commandTimeoutMs) portOpts.commandTimeoutMs = opts.commandTimeoutMs;
  const port = await SrpPort.connect(portOpts);
  const exports = new Map<string, LunBackend>();
  for (let i = 0; i < opts.luns.length; i++) {
    const disk = await port.addLun(lunToSam(i));
    const spec = opts.luns[i]!;
    exports.set(
      `lun${i}`,
      new LunBackend(port, disk, `test target LUN ${i}, ${spec.blockSize}-byte blocks, serial ${spec.serial}`),
    );
  }
  return { fabric, port, exports };
}

/** Port identifiers of the in-process test setup (16 bytes each, as ib_srp builds them). */
export const TEST_INITIATOR_PORT_ID = Buffer.from('00000000000000010002c903000a0b0c', 'hex');
export const TEST_TARGET_PORT_ID = Buffer.from('0002c90300aabbcc0002c90300aabbcc', 'hex');
