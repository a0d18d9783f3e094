/**
 * What the daemon keeps for each attached target (daemon.ts): its port and LUNs, the LUNs that
 * are further paths of LUs exported through another target, and the LU groups (multipath) they
 * belong to. Plain records; the daemon owns and changes them, views.ts reads them.
 */
import type { Logger } from 'pino';
import type { LunBackend } from '../fsm/lun-backend.js';
import type { MultipathGate } from '../fsm/multipath.js';
import { RPORT_STATES, type RportState } from '../fsm/rport.js';
import type { ChannelConnector, SrpPort } from '../fsm/srp-port.js';
import type { LunIdentity } from '../initiator/lun-identity.js';
import type { ScsiDisk } from '../initiator/scsi-disk.js';
import type { NbdAttachment } from '../nbd/netlink.js';
import type { TestFabric } from '../testing/test-fabric.js';
import type { AnyAddress } from './address.js';
import type { AddTargetTuning } from './add-target-options.js';
import type { TargetOptions, TargetOverrides } from './config.js';
import type { MdMembership, MdReaddPolicy } from './md.js';
import type { LunChange, MeteredBackend } from './metrics.js';
import type { PersistedLun } from './state.js';

/** Lifecycle of a target inside the daemon (the rport state says how its path is). */
export type TargetStatus = 'connecting' | 'attached' | 'failed';

export interface LunRuntime {
  sam: bigint;
  number: number;
  exportName: string;
  backendId: string;
  device: string | null;
  deviceNote?: string;
  identity: LunIdentity;
  lunBackend: LunBackend;
  backend: MeteredBackend;
  /** the kernel device's max_sectors_kb as the daemon set it (device-limits.ts) */
  deviceMaxIoKb?: number;
  attachment?: NbdAttachment;
  /** md membership of the device as last read (refreshed asynchronously by status and metrics). */
  md: MdMembership[];
  /** 'removed': the target no longer reports the LUN; its export fails I/O with EIO until detach. */
  state: 'attached' | 'removed';
  /** A capacity change that was not followed (the LUN shrank). */
  capacityNote?: string;
  /** The LU this LUN's export is the device of (LUNs with a logical unit key). */
  lu?: LuGroup;
}

/**
 * A LUN of a target that is another path to an LU exported through another target's LUN: no
 * export or device of its own; its disk is a path of the LU's multipath gate.
 */
export interface PathLun {
  sam: bigint;
  number: number;
  identity: LunIdentity;
  disk: ScsiDisk;
  lu: LuGroup;
}

/**
 * One logical unit (logicalUnitKey: designators + serial) and its paths. The export, backend and
 * device live in `lun`, a LunRuntime of `owner` (the first path; handed to the next path when
 * the owner is detached). The multipath gate exists once a second path joined (or the operator
 * failed the only one).
 */
export interface LuGroup {
  key: string;
  owner: TargetRuntime;
  lun: LunRuntime;
  /** Every target with a path to the LU, the owner included, in attach order. */
  paths: TargetRuntime[];
  gate?: MultipathGate<ScsiDisk>;
}

export interface TargetStats {
  stateSince: number;
  timeInState: Record<RportState, number>;
  reconnectAttempts: number;
  reconnects: number;
  failedReconnectsTotal: number;
}

export interface TargetRuntime {
  id: string;
  address: AnyAddress;
  addressText: string;
  overrides: TargetOverrides;
  /** the options in force: defaults, overrides, then the address's tuning (queue_size, retry_count) */
  options: TargetOptions;
  /** the add_target tuning options of the address (add-target-options.ts) */
  tuning: AddTargetTuning;
  attachedAt: string;
  status: TargetStatus;
  error?: string;
  connectorDescription?: string;
  /** the connector of the last connect (its loginContext() is what the target saw) */
  connector?: ChannelConnector;
  /** the initiator port id of a connector that does not report one (the test target's) */
  fixedInitiatorPortId?: Buffer;
  port?: SrpPort;
  closeTransport?: () => void;
  luns: LunRuntime[];
  /** LUNs that are further paths of LUs exported through another target (multipath). */
  pathLuns: PathLun[];
  /** LUNs as persisted: the export names, devices and identities a (re-)attach must reproduce. */
  persisted: PersistedLun[];
  stats: TargetStats;
  restoreTimer?: NodeJS.Timeout;
  restoreAttempt: number;
  removed: boolean;
  /** The connect in flight (attach, restore or reconnect): never two at once. */
  connecting?: Promise<void>;
  /** When to re-add the target's devices to md arrays that failed them (told of attach and path changes). */
  md: MdReaddPolicy;
  /** LUN changes followed (rescan, unit attentions), one after the other. */
  lunWork: Promise<unknown>;
  /** The LU behind the target's devices was running at the last path state change (md policy). */
  mdUp: boolean;
  /** ... and it failed I/O (no path running or blocked) since it stopped running. */
  mdFailed: boolean;
  /** LUN changes seen, by kind (srp_nbd_lun_changes_total). */
  lunChanges: Partial<Record<LunChange, number>>;
  /** The in-process test target behind a test address (tests reach its LUNs through testFabric()). */
  fabric?: TestFabric;
  log: Logger;
}

export const emptyTimes = (): Record<RportState, number> =>
  Object.fromEntries(RPORT_STATES.map((s) => [s, 0])) as Record<RportState, number>;

/** A LUN found at login, before it is exported or joins an LU as a path. */
export interface FoundLun {
  sam: bigint;
  number: number;
  disk: ScsiDisk;
  identity: LunIdentity;
  /** The persisted LUN it continues (its own, or a not yet connected path's of the same LU). */
  before?: PersistedLun;
}
