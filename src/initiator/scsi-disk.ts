/**
 * ScsiDisk: the block-device layer over one SCSI logical unit.
 *
 * It probes a LU (TEST UNIT READY with becoming-ready waits, INQUIRY, the VPD pages the LU lists,
 * READ CAPACITY(16)) into a geometry, limits and identity, then maps the NBD layer's block
 * operations to SCSI commands: read/write → READ(16)/WRITE(16) (FUA), flush → SYNCHRONIZE
 * CACHE(16), trim → UNMAP or WRITE SAME(16) UNMAP, write-zeroes → WRITE SAME(16) (with UNMAP
 * when the LU reads unmapped blocks as zero) or plain zero-filled writes. Requests are split to
 * honour MAXIMUM TRANSFER LENGTH, MAXIMUM UNMAP LBA/BLOCK DESCRIPTOR COUNT, the unmap granularity
 * and MAXIMUM WRITE SAME LENGTH (the way Linux sd.c reads the Block Limits page).
 *
 * Retry rules (per command, every bound configurable): UNIT ATTENTION → retry at once and record
 * the event; BUSY / TASK SET FULL → retry with exponential back-off; NOT READY "in process of
 * becoming ready" and other transient not-ready causes → retry after a delay; ABORTED COMMAND /
 * TASK ABORTED → retry a few times. Anything else, or a bound exhausted, becomes a ScsiError with
 * the decoded sense and, in `code`, the errno name to give the NBD client. TransportError from the executor is
 * passed through untouched: the transport state machine above decides what a lost path means.
 *
 * Offsets and lengths are bytes and must be multiples of the logical block size.
 */

import {
  ABORTED_COMMAND,
  ASC_INVALID_COMMAND_OPERATION_CODE,
  ASC_INVALID_FIELD_IN_CDB,
  ASC_LBA_OUT_OF_RANGE,
  ASC_LUN_NOT_READY,
  ASC_PARAMETERS_CHANGED,
  ASC_POWER_ON_RESET,
  ASC_TARGET_OPERATING_CONDITIONS_CHANGED,
  ASC_WRITE_PROTECTED,
  ASCQ_CAPACITY_DATA_HAS_CHANGED,
  ASCQ_INQUIRY_DATA_HAS_CHANGED,
  ASCQ_REPORTED_LUNS_DATA_HAS_CHANGED,
  ASCQ_SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
  DATA_PROTECT,
  CACHING_MODE_PAGE,
  MODE_PAGE_ALL,
  MODE_PAGE_VENDOR,
  ILLEGAL_REQUEST,
  NOT_READY,
  NO_SENSE,
  READ_16,
  RECOVERED_ERROR,
  SAM_STAT_BUSY,
  SAM_STAT_CHECK_CONDITION,
  SAM_STAT_CONDITION_MET,
  SAM_STAT_GOOD,
  SAM_STAT_TASK_ABORTED,
  SAM_STAT_TASK_SET_FULL,
  TYPE_DISK,
  UNIT_ATTENTION,
  VPD_BLOCK_LIMITS,
  VPD_DEVICE_IDENTIFICATION,
  VPD_LOGICAL_BLOCK_PROVISIONING,
  VPD_SUPPORTED_PAGES,
  VPD_UNIT_SERIAL_NUMBER,
  WRITE_16,
  nameOfCdb,
  nameOfDeviceType,
  nameOfSamStatus,
} from './scsi-constants.js';
import {
  buildInquiry,
  buildRead16,
  buildModeSense6,
  buildModeSense10,
  buildReadCapacity16,
  buildReportLuns,
  buildSynchronizeCache10,
  buildSynchronizeCache16,
  buildTestUnitReady,
  buildUnmap,
  buildWrite16,
  buildWriteSame16,
  writeRw16,
  type UnmapDescriptor,
} from './scsi-cdb.js';
import type { ScsiCommand, ScsiExecutor, ScsiResult } from './scsi-executor.js';
import { lunIdentity, type LunIdentity } from './lun-identity.js';
import {
  ScsiParseError,
  parseBlockLimits,
  parseDeviceIdentification,
  findCachingPage,
  parseLogicalBlockProvisioning,
  parseModeSense6,
  parseModeSense10,
  parseReadCapacity16,
  parseReportLuns,
  parseSense,
  parseStandardInquiry,
  parseSupportedVpdPages,
  parseUnitSerialNumber,
  vpdFullLength,
  type BlockLimits,
  type Designator,
  type LogicalBlockProvisioning,
  type ReadCapacity16,
  type ScsiSense,
  type StandardInquiry,
} from './scsi-parse.js';

/**
 * The errno names (Node's `code` convention) a disk request fails with: those the NBD protocol
 * has error values for (EROFS has none: EPERM). The NBD server maps them to its numbers.
 */
export type DiskErrorCode = 'EIO' | 'EINVAL' | 'ENOSPC' | 'EPERM' | 'ENOTSUP';

/** A SCSI command that failed for good (after the retries its status allows). */
export class ScsiError extends Error {
  constructor(
    message: string,
    /** Command name, e.g. "WRITE_16". */
    readonly command: string,
    /** SAM status. */
    readonly status: number,
    /** Decoded sense data, when the target sent parseable sense. */
    readonly sense: ScsiSense | undefined,
    /** What to tell the NBD client. */
    readonly code: DiskErrorCode,
    /** Raw sense bytes as received (copy). */
    readonly senseBytes?: Buffer,
  ) {
    super(message);
    this.name = 'ScsiError';
  }
}

/** A request ScsiDisk refuses before sending anything (misaligned, out of range, not probed). */
export class DiskRequestError extends Error {
  constructor(
    message: string,
    readonly code: DiskErrorCode,
  ) {
    super(message);
    this.name = 'DiskRequestError';
  }
}

/** The errno name for a final SCSI status / sense (in the spirit of scsi_io_completion_action()). */
export function errnoForScsi(status: number, sense: ScsiSense | undefined): DiskErrorCode {
  if (status !== SAM_STAT_CHECK_CONDITION || !sense) return 'EIO';
  switch (sense.key) {
    case ILLEGAL_REQUEST:
      if (sense.asc === ASC_LBA_OUT_OF_RANGE) return 'ENOSPC';
      if (sense.asc === ASC_INVALID_COMMAND_OPERATION_CODE) return 'ENOTSUP';
      return 'EINVAL';
    case DATA_PROTECT:
      if (sense.asc === ASC_WRITE_PROTECTED && sense.ascq === ASCQ_SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
        return 'ENOSPC';
      return 'EPERM';
    default:
      return 'EIO';
  }
}

/** Bounds of the retry rules. A bound of 0 disables that retry. */
export interface ScsiRetryPolicy {
  /** Immediate retries after UNIT ATTENTION. */
  unitAttentionRetries: number;
  /** Retries after BUSY or TASK SET FULL. */
  busyRetries: number;
  /** First back-off after BUSY / TASK SET FULL, doubled each time up to busyBackoffMaxMs. */
  busyBackoffMs: number;
  busyBackoffMaxMs: number;
  /** Retries while NOT READY with a transient cause (becoming ready, operation in progress, ALUA transition). */
  notReadyRetries: number;
  notReadyDelayMs: number;
  /** Retries after ABORTED COMMAND, TASK ABORTED or a CHECK CONDITION with NO SENSE. */
  abortedRetries: number;
}

export const DEFAULT_RETRY_POLICY: Readonly<ScsiRetryPolicy> = {
  unitAttentionRetries: 8,
  busyRetries: 12,
  busyBackoffMs: 5,
  busyBackoffMaxMs: 1000,
  notReadyRetries: 30,
  notReadyDelayMs: 1000,
  abortedRetries: 3,
};

/** Transfer size used when neither the target nor the transport states a limit. */
export const DEFAULT_MAX_TRANSFER_BYTES = 4 * 1024 * 1024;
/** WRITE SAME(16) length used when the target reports none (Linux sd.c SD_MAX_WS16_BLOCKS). */
export const DEFAULT_MAX_WRITE_SAME_BLOCKS = 0x7fffff;
/** Size of the zero buffer written when WRITE SAME cannot be used. */
const ZERO_CHUNK_BYTES = 1024 * 1024;

/** Sense-derived events reported to the owner (metrics, logs, identity re-check). */
export type ScsiDiskEvent =
  | {
      type: 'unit-attention';
      /** What the UA announces, for the owner to act on (e.g. re-check the identity). */
      what: 'capacity-changed' | 'inquiry-changed' | 'luns-changed' | 'reset' | 'parameters-changed' | 'other';
      command: string;
      sense: ScsiSense;
    }
  | { type: 'retry'; command: string; reason: string; attempt: number; delayMs: number }
  | {
      type: 'trim-disabled' | 'write-same-disabled' | 'write-same-unmap-disabled' | 'fua-disabled';
      command: string;
      reason: string;
    };

export interface ScsiDiskOptions {
  /** SAM LUN (8-byte big-endian as on the wire). */
  lun: bigint;
  /** Per-command timeout handed to the executor. */
  timeoutMs?: number;
  retry?: Partial<ScsiRetryPolicy>;
  /** Largest data transfer the transport takes in one command (bytes). */
  maxTransferBytes?: number;
  /** Chunks of one request in flight at once (default 8). */
  maxInflightPerRequest?: number;
  /** Injected for tests; default setTimeout. */
  sleep?: (ms: number) => Promise<void>;
  onEvent?: (event: ScsiDiskEvent) => void;
}

export interface DiskGeometry {
  blockSize: number;
  blockCount: bigint;
  /** blockCount * blockSize (below 2^53: checked by probe). */
  sizeBytes: number;
  physicalBlockSize: number;
  /** LOWEST ALIGNED LOGICAL BLOCK ADDRESS in bytes. */
  alignmentOffsetBytes: number;
  /** 0 none, else protection type 1..3 (reads/writes use RDPROTECT/WRPROTECT 0). */
  protectionType: number;
}

/** What ScsiDisk will do, derived from the Block Limits / LBP pages and the transport cap. */
export interface DiskLimits {
  /** Blocks per READ/WRITE command. */
  maxTransferBlocks: number;
  optimalTransferBlocks: number;
  optimalTransferGranularityBlocks: number;
  /** How trim is done: UNMAP, WRITE SAME(16) with UNMAP, or not at all. */
  trim: 'unmap' | 'write-same-unmap' | 'none';
  /** Blocks per UNMAP command (MAXIMUM UNMAP LBA COUNT; Infinity when unlimited). */
  maxUnmapBlocks: number;
  /** Descriptors per UNMAP command. */
  maxUnmapDescriptors: number;
  unmapGranularityBlocks: number;
  unmapAlignmentBlocks: number;
  /** WRITE SAME(16) is used for zeroes until the LU refuses it once. */
  writeSame: boolean;
  /** WRITE SAME(16) UNMAP may be used for zeroes (LBPME + LBPWS + LBPRZ). */
  writeSameUnmapZeroes: boolean;
  maxWriteSameBlocks: number;
  lbpme: boolean;
  lbprz: boolean;
  /**
   * How a write with FUA is made durable (Linux sd: FUA only with DPOFUA, and only needed with a
   * write cache): 'fua' the FUA bit; 'sync-cache' the write, then SYNCHRONIZE CACHE of its range;
   * 'write-through' nothing more (WCE 0: every write completes on the medium).
   */
  fua: 'fua' | 'sync-cache' | 'write-through';
}

/** The LU's write cache, from MODE SENSE(10) caching page; assumed volatile when it cannot be read. */
export interface CacheInfo {
  writeCacheEnabled: boolean;
  dpoFua: boolean;
  /** 'mode-sense' read from the LU; 'assumed' (MODE SENSE refused or unparsable: WCE 1, no DPOFUA). */
  source: 'mode-sense' | 'assumed';
}

/**
 * The WP bit of the mode parameter header (DEVICE-SPECIFIC PARAMETER bit 7), read as Linux sd
 * reads it (sd_read_write_protect_flag()); 'assumed' when no MODE SENSE answered ("Test WP
 * failed, assume Write Enabled").
 */
export interface WriteProtectInfo {
  writeProtected: boolean;
  source: 'mode-sense' | 'assumed';
}

export interface ProbeResult {
  inquiry: StandardInquiry;
  vpdPages: number[];
  serial?: string;
  designators: Designator[];
  blockLimits?: BlockLimits;
  provisioning?: LogicalBlockProvisioning;
  capacity: ReadCapacity16;
  geometry: DiskGeometry;
  limits: DiskLimits;
  cache: CacheInfo;
  writeProtect: WriteProtectInfo;
  identity: LunIdentity;
}

const defaultSleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** NOT READY ASCQs (ASC 04h) that go away by themselves (Linux scsi_check_sense() retries these). */
const TRANSIENT_NOT_READY = new Set([0x01, 0x05, 0x06, 0x07, 0x08, 0x0a, 0x14, 0x1a, 0x1b, 0x1d]);

/** A result that completes the command without the retry rules: GOOD or CONDITION MET. */
function completed(res: ScsiResult): boolean {
  return res.status === SAM_STAT_GOOD || res.status === SAM_STAT_CONDITION_MET;
}

/** A READ(16) of `want` bytes into `slot` must have brought them all (copied there if they landed elsewhere). */
function checkRead(lba: number, want: number, slot: Buffer, res: ScsiResult): void {
  const got = res.dataIn;
  if (!got || got.length < want || res.residual > 0) {
    throw new ScsiError(
      `READ_16 at LBA ${lba} returned ${got?.length ?? 0} of ${want} bytes (residual ${res.residual})`,
      'READ_16',
      res.status,
      undefined,
      'EIO',
    );
  }
  if (got.buffer !== slot.buffer || got.byteOffset !== slot.byteOffset) got.copy(slot, 0, 0, want);
}

/**
 * A READ(16) / WRITE(16) of the data path: the command handed to the executor with its own CDB
 * buffer, and its completion callbacks, created once and reused from request to request.
 */
interface RwRequest {
  readonly cmd: ScsiCommand;
  /** cmd.cdb (16 bytes, written in place) */
  readonly cdb: Buffer;
  lba: number;
  readonly onRead: (res: ScsiResult) => Buffer | Promise<Buffer>;
  readonly onReadCompleted: (res: ScsiResult) => Buffer;
  readonly onWrite: (res: ScsiResult) => void | Promise<void>;
  readonly onWriteCompleted: () => void;
  readonly onError: (err: unknown) => never;
}

interface RunOptions {
  dataOut?: Buffer;
  dataInLength?: number;
  dataIn?: Buffer;
}

export class ScsiDisk {
  readonly lun: bigint;
  private readonly exec: ScsiExecutor;
  private readonly policy: ScsiRetryPolicy;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly opts: ScsiDiskOptions;
  private probed?: ProbeResult;
  /** The LU refused a FUA bit it announced: FUA stays emulated whatever MODE SENSE says later. */
  private fuaRefused = false;
  /** SYNCHRONIZE CACHE(16) works; false once the LU called it an invalid opcode. */
  private syncCache16 = true;
  private geo?: DiskGeometry;
  private lim?: DiskLimits;
  private zeroBuf?: Buffer;
  /** free data-path requests */
  private readonly requests: RwRequest[] = [];
  /** Set by a CAPACITY DATA HAS CHANGED unit attention, cleared by refreshCapacity(). */
  capacityChanged = false;
  /** Every unit attention seen, oldest first (bounded to the last 64). */
  readonly unitAttentions: ScsiSense[] = [];

  constructor(executor: ScsiExecutor, opts: ScsiDiskOptions) {
    this.exec = executor;
    this.lun = opts.lun;
    this.opts = opts;
    this.policy = { ...DEFAULT_RETRY_POLICY, ...opts.retry };
    this.sleep = opts.sleep ?? defaultSleep;
  }

  /* ---------------------------------------------------------------------------------------- */
  /* Command execution with the retry rules.                                                  */
  /* ---------------------------------------------------------------------------------------- */

  /**
   * Execute one CDB with the retry rules. Resolves with the result of a GOOD (or CONDITION MET, or
   * RECOVERED ERROR) completion; rejects with ScsiError, or with the executor's TransportError
   * untouched.
   */
  command(cdb: Buffer, o: RunOptions = {}): Promise<ScsiResult> {
    const cmd: ScsiCommand = { lun: this.lun, cdb };
    if (o.dataOut) cmd.dataOut = o.dataOut;
    if (o.dataInLength !== undefined) cmd.dataInLength = o.dataInLength;
    if (o.dataIn) cmd.dataIn = o.dataIn;
    if (this.opts.timeoutMs !== undefined) cmd.timeoutMs = this.opts.timeoutMs;
    return this.exec.execute(cmd).then((res) => (completed(res) ? res : this.retry(cmd, res)));
  }

  /**
   * The retry rules, from a first result that did not complete the command: executes cmd again
   * while its status allows, as command() describes.
   */
  private async retry(cmd: ScsiCommand, first: ScsiResult): Promise<ScsiResult> {
    const name = nameOfCdb(cmd.cdb);
    let ua = 0;
    let busy = 0;
    let notReady = 0;
    let aborted = 0;
    for (let res = first; ; res = await this.exec.execute(cmd)) {
      const st = res.status;
      if (completed(res)) return res;
      if (st === SAM_STAT_BUSY || st === SAM_STAT_TASK_SET_FULL) {
        if (busy >= this.policy.busyRetries)
          throw this.fail(name, res, undefined, `still ${nameOfSamStatus(st)} after ${busy} retries`);
        const delay = Math.min(this.policy.busyBackoffMs * 2 ** busy, this.policy.busyBackoffMaxMs);
        busy++;
        this.emit({ type: 'retry', command: name, reason: nameOfSamStatus(st), attempt: busy, delayMs: delay });
        await this.sleep(delay);
        continue;
      }
      if (st === SAM_STAT_TASK_ABORTED) {
        if (aborted >= this.policy.abortedRetries)
          throw this.fail(name, res, undefined, `still aborted after ${aborted} retries`);
        aborted++;
        this.emit({ type: 'retry', command: name, reason: nameOfSamStatus(st), attempt: aborted, delayMs: 0 });
        continue;
      }
      if (st !== SAM_STAT_CHECK_CONDITION) throw this.fail(name, res, undefined);

      let sense: ScsiSense;
      try {
        if (!res.sense || res.sense.length === 0) throw new ScsiParseError('no sense data', 'short');
        sense = parseSense(res.sense);
      } catch (e) {
        if (!(e instanceof ScsiParseError)) throw e;
        throw this.fail(name, res, undefined, `CHECK CONDITION with unusable sense (${e.message})`);
      }
      switch (sense.key) {
        case RECOVERED_ERROR:
          return res; /* the command completed; the target recovered */
        case UNIT_ATTENTION:
          this.recordUnitAttention(name, sense);
          if (ua >= this.policy.unitAttentionRetries)
            throw this.fail(name, res, sense, `still UNIT ATTENTION after ${ua} retries`);
          ua++;
          this.emit({ type: 'retry', command: name, reason: sense.text, attempt: ua, delayMs: 0 });
          continue;
        case NOT_READY:
          if (sense.asc === ASC_LUN_NOT_READY && TRANSIENT_NOT_READY.has(sense.ascq)) {
            if (notReady >= this.policy.notReadyRetries)
              throw this.fail(name, res, sense, `still not ready after ${notReady} retries`);
            notReady++;
            this.emit({
              type: 'retry',
              command: name,
              reason: sense.text,
              attempt: notReady,
              delayMs: this.policy.notReadyDelayMs,
            });
            await this.sleep(this.policy.notReadyDelayMs);
            continue;
          }
          throw this.fail(name, res, sense);
        case ABORTED_COMMAND:
        case NO_SENSE:
          if (aborted >= this.policy.abortedRetries) throw this.fail(name, res, sense, `failed ${aborted + 1} times`);
          aborted++;
          this.emit({ type: 'retry', command: name, reason: sense.text, attempt: aborted, delayMs: 0 });
          continue;
        default:
          throw this.fail(name, res, sense);
      }
    }
  }

  private fail(name: string, res: ScsiResult, sense: ScsiSense | undefined, why?: string): ScsiError {
    const what = sense ? sense.text : nameOfSamStatus(res.status);
    const info = sense?.info !== undefined ? ` at 0x${sense.info.toString(16)}` : '';
    const msg = `${name} on LUN 0x${this.lun.toString(16).padStart(16, '0')} failed: ${what}${info}${why ? ` (${why})` : ''}`;
    return new ScsiError(
      msg,
      name,
      res.status,
      sense,
      errnoForScsi(res.status, sense),
      res.sense ? Buffer.from(res.sense) : undefined,
    );
  }

  private emit(e: ScsiDiskEvent): void {
    this.opts.onEvent?.(e);
  }

  private recordUnitAttention(command: string, sense: ScsiSense): void {
    this.unitAttentions.push(sense);
    if (this.unitAttentions.length > 64) this.unitAttentions.shift();
    let what: Extract<ScsiDiskEvent, { type: 'unit-attention' }>['what'] = 'other';
    if (sense.asc === ASC_PARAMETERS_CHANGED && sense.ascq === ASCQ_CAPACITY_DATA_HAS_CHANGED) {
      what = 'capacity-changed';
      this.capacityChanged = true;
    } else if (sense.asc === ASC_PARAMETERS_CHANGED) what = 'parameters-changed';
    else if (sense.asc === ASC_POWER_ON_RESET) what = 'reset';
    else if (sense.asc === ASC_TARGET_OPERATING_CONDITIONS_CHANGED && sense.ascq === ASCQ_INQUIRY_DATA_HAS_CHANGED)
      what = 'inquiry-changed';
    else if (
      sense.asc === ASC_TARGET_OPERATING_CONDITIONS_CHANGED &&
      sense.ascq === ASCQ_REPORTED_LUNS_DATA_HAS_CHANGED
    )
      what = 'luns-changed';
    this.emit({ type: 'unit-attention', what, command, sense });
  }

  /* ---------------------------------------------------------------------------------------- */
  /* Probe.                                                                                   */
  /* ---------------------------------------------------------------------------------------- */

  /**
   * Probe the LU: wait until it is ready, read its INQUIRY data, the VPD pages it lists and its
   * capacity, and derive geometry, limits and identity. Must succeed before any block operation;
   * may be called again (after a reconnect) to re-read everything.
   */
  async probe(): Promise<ProbeResult> {
    await this.command(buildTestUnitReady());
    const inqRes = await this.command(buildInquiry(96), { dataInLength: 96 });
    const inquiry = this.parse(() => parseStandardInquiry(inqRes.dataIn ?? Buffer.alloc(0)), 'INQUIRY');
    const lunHex = `0x${this.lun.toString(16).padStart(16, '0')}`;
    if (inquiry.peripheralQualifier !== 0) {
      throw new DiskRequestError(
        `no logical unit at LUN ${lunHex} (peripheral qualifier ${inquiry.peripheralQualifier})`,
        'EIO',
      );
    }
    if (inquiry.peripheralDeviceType !== TYPE_DISK) {
      throw new DiskRequestError(
        `LUN ${lunHex} is ${nameOfDeviceType(inquiry.peripheralDeviceType)}, not TYPE_DISK`,
        'EIO',
      );
    }

    // Once the LU is known to be a disk, the rest is independent reads: they go out together
    // (each is a round trip to the target; a reconnect's identity check waits for all of them).
    const [vpdList, capacity, cache, writeProtect] = await Promise.all([
      this.optionalVpd(VPD_SUPPORTED_PAGES, (b) => parseSupportedVpdPages(b).pages),
      this.readCapacity(),
      this.readCache(),
      this.readWriteProtect(),
    ]);
    const vpdPages = vpdList ?? [];
    const has = (p: number): boolean => vpdPages.includes(p);
    const [serial, designators, blockLimits, provisioning] = await Promise.all([
      has(VPD_UNIT_SERIAL_NUMBER)
        ? this.optionalVpd(VPD_UNIT_SERIAL_NUMBER, (b) => parseUnitSerialNumber(b).serial)
        : undefined,
      has(VPD_DEVICE_IDENTIFICATION)
        ? this.optionalVpd(VPD_DEVICE_IDENTIFICATION, (b) => parseDeviceIdentification(b).designators).then(
            (d) => d ?? [],
          )
        : [],
      has(VPD_BLOCK_LIMITS) ? this.optionalVpd(VPD_BLOCK_LIMITS, parseBlockLimits) : undefined,
      has(VPD_LOGICAL_BLOCK_PROVISIONING)
        ? this.optionalVpd(VPD_LOGICAL_BLOCK_PROVISIONING, parseLogicalBlockProvisioning)
        : undefined,
    ]);
    const geometry = this.geometryFrom(capacity);
    const limits = this.limitsFrom(geometry, capacity, cache, blockLimits, provisioning);
    const identity = lunIdentity({
      designators,
      serial,
      blockSize: capacity.blockLength,
      blockCount: capacity.blockCount,
      vendor: inquiry.vendor,
      product: inquiry.product,
      revision: inquiry.revision,
    });
    const result: ProbeResult = {
      inquiry,
      vpdPages,
      designators,
      capacity,
      geometry,
      limits,
      cache,
      writeProtect,
      identity,
    };
    if (serial !== undefined) result.serial = serial;
    if (blockLimits) result.blockLimits = blockLimits;
    if (provisioning) result.provisioning = provisioning;
    this.probed = result;
    this.geo = geometry;
    this.lim = limits;
    this.capacityChanged = false;
    return result;
  }

  /** Re-read the capacity (after CAPACITY DATA HAS CHANGED); returns the new geometry. */
  async refreshCapacity(): Promise<DiskGeometry> {
    return this.adoptCapacity(await this.readCapacity());
  }

  /** READ CAPACITY(16) now, without adopting it (the owner decides: a LU that shrank is not followed). */
  readCapacityNow(): Promise<ReadCapacity16> {
    return this.readCapacity();
  }

  /**
   * Takes a capacity read later (readCapacityNow(), or a probe after a reconnect): block operations
   * are checked against it from now on. The logical block size must be the one probed.
   */
  adoptCapacity(capacity: ReadCapacity16): DiskGeometry {
    if (this.geo && capacity.blockLength !== this.geo.blockSize)
      throw new DiskRequestError(
        `logical block size changed from ${this.geo.blockSize} to ${capacity.blockLength}: not followed`,
        'EIO',
      );
    this.geo = this.geometryFrom(capacity);
    this.capacityChanged = false;
    if (this.probed) {
      this.probed.capacity = capacity;
      this.probed.geometry = this.geo;
      this.probed.identity = {
        ...this.probed.identity,
        blockSize: capacity.blockLength,
        blockCount: capacity.blockCount,
      };
    }
    return this.geo;
  }

  get geometry(): DiskGeometry {
    if (!this.geo) throw new DiskRequestError('ScsiDisk used before probe()', 'EIO');
    return this.geo;
  }

  get limits(): DiskLimits {
    if (!this.lim) throw new DiskRequestError('ScsiDisk used before probe()', 'EIO');
    return this.lim;
  }

  /** The WP bit as last read (probe, identity check or rescan); false before probe(). */
  get writeProtected(): boolean {
    return this.probed?.writeProtect.writeProtected ?? false;
  }

  /** Takes the WP bit read by a later probe or readWriteProtect(); returns whether it changed. */
  adoptWriteProtect(wp: WriteProtectInfo): boolean {
    if (!this.probed) return false;
    const before = this.probed.writeProtect.writeProtected;
    this.probed.writeProtect = wp;
    return before !== wp.writeProtected;
  }

  /** The last probe result (identity, INQUIRY, VPD), if probed. */
  get probeResult(): ProbeResult | undefined {
    return this.probed;
  }

  private parse<T>(f: () => T, what: string): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof ScsiParseError)
        throw new DiskRequestError(`${what} data from the target is malformed: ${e.message}`, 'EIO');
      throw e;
    }
  }

  private async readCapacity(): Promise<ReadCapacity16> {
    const res = await this.command(buildReadCapacity16(32), { dataInLength: 32 });
    const cap = this.parse(() => parseReadCapacity16(res.dataIn ?? Buffer.alloc(0)), 'READ CAPACITY(16)');
    const bs = cap.blockLength;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1)) !== 0) {
      throw new DiskRequestError(`unsupported logical block length ${bs}`, 'EIO');
    }
    return cap;
  }

  /**
   * MODE SENSE(10) for the caching page: whether writes may sit in a volatile cache (WCE) and
   * whether the FUA bit is supported (DPOFUA). Unreadable: assume a write cache without FUA, the
   * safe guess (every FUA write is followed by SYNCHRONIZE CACHE).
   */
  private async readCache(): Promise<CacheInfo> {
    const assumed: CacheInfo = { writeCacheEnabled: true, dpoFua: false, source: 'assumed' };
    let res: ScsiResult;
    try {
      res = await this.command(buildModeSense10(CACHING_MODE_PAGE, 64), { dataInLength: 64 });
    } catch (e) {
      if (e instanceof ScsiError && e.sense?.key === ILLEGAL_REQUEST) return assumed;
      throw e;
    }
    try {
      const ms = parseModeSense10(res.dataIn ?? Buffer.alloc(0));
      const page = findCachingPage(ms);
      if (!page) return { ...assumed, dpoFua: ms.dpoFua };
      return { writeCacheEnabled: page.writeCacheEnabled, dpoFua: ms.dpoFua, source: 'mode-sense' };
    } catch (e) {
      if (e instanceof ScsiParseError) return assumed;
      throw e;
    }
  }

  /**
   * The WP bit as Linux sd reads it (sd_read_write_protect_flag()): MODE SENSE(6) for all pages
   * with 4 bytes (the header only: some devices hang when asked for more), then page 0, then
   * MODE SENSE(10) for targets without the 6-byte command. Whatever fails, the LU is taken as
   * write enabled, as sd does; transport errors are passed on.
   */
  async readWriteProtect(): Promise<WriteProtectInfo> {
    const tries: [Buffer, number, (b: Buffer) => { writeProtected: boolean }][] = [
      [buildModeSense6(MODE_PAGE_ALL, 4), 4, parseModeSense6],
      [buildModeSense6(MODE_PAGE_VENDOR, 4), 4, parseModeSense6],
      [buildModeSense10(MODE_PAGE_ALL, 8), 8, parseModeSense10],
    ];
    for (const [cdb, alloc, parse] of tries) {
      let res: ScsiResult;
      try {
        res = await this.command(cdb, { dataInLength: alloc });
      } catch (e) {
        if (e instanceof ScsiError) continue;
        throw e;
      }
      try {
        return { writeProtected: parse(res.dataIn ?? Buffer.alloc(0)).writeProtected, source: 'mode-sense' };
      } catch (e) {
        if (!(e instanceof ScsiParseError)) throw e;
      }
    }
    return { writeProtected: false, source: 'assumed' };
  }

  /**
   * Read a VPD page, asking again with the full length when the first answer was cut short.
   * ILLEGAL REQUEST (page not supported after all) yields undefined; malformed data too (the
   * page is then treated as absent, which only costs features, never correctness).
   */
  private async optionalVpd<T>(page: number, parse: (b: Buffer) => T): Promise<T | undefined> {
    let alloc = 255;
    for (let attempt = 0; attempt < 2; attempt++) {
      let res: ScsiResult;
      try {
        res = await this.command(buildInquiry(alloc, page), { dataInLength: alloc });
      } catch (e) {
        if (e instanceof ScsiError && e.sense?.key === ILLEGAL_REQUEST) return undefined;
        throw e;
      }
      const data = res.dataIn ?? Buffer.alloc(0);
      try {
        const full = vpdFullLength(data);
        if (full > data.length && data.length >= alloc && attempt === 0 && full <= 0xffff) {
          alloc = full;
          continue;
        }
        return parse(data);
      } catch (e) {
        if (e instanceof ScsiParseError) return undefined;
        throw e;
      }
    }
    return undefined;
  }

  private geometryFrom(cap: ReadCapacity16): DiskGeometry {
    const size = cap.blockCount * BigInt(cap.blockLength);
    if (size > BigInt(Number.MAX_SAFE_INTEGER))
      throw new DiskRequestError(`capacity ${size} bytes is beyond 2^53`, 'EIO');
    return {
      blockSize: cap.blockLength,
      blockCount: cap.blockCount,
      sizeBytes: Number(size),
      physicalBlockSize: cap.blockLength * 2 ** cap.physicalBlockExponent,
      alignmentOffsetBytes: cap.lowestAlignedLba * cap.blockLength,
      protectionType: cap.protectionType,
    };
  }

  private limitsFrom(
    g: DiskGeometry,
    cap: ReadCapacity16,
    cache: CacheInfo,
    bl?: BlockLimits,
    lbp?: LogicalBlockProvisioning,
  ): DiskLimits {
    const bs = g.blockSize;
    const caps = [0xffffffff, Math.floor((this.opts.maxTransferBytes ?? DEFAULT_MAX_TRANSFER_BYTES) / bs)];
    if (bl && bl.maxTransferLength > 0) caps.push(bl.maxTransferLength);
    let maxTransferBlocks = Math.max(1, Math.min(...caps));
    const gran = bl?.optimalTransferLengthGranularity ?? 0;
    if (gran > 1 && maxTransferBlocks >= gran) maxTransferBlocks -= maxTransferBlocks % gran;

    const lbpme = cap.lbpme;
    // VPD B2 LBPRZ: xx1b = unmapped blocks read as zeroes; 010b = a provisioning pattern, not zeroes.
    const lbprz = cap.lbprz || (lbp !== undefined && (lbp.lbprz & 1) === 1);
    const maxUnmapLba = bl?.maxUnmapLbaCount ?? 0;
    const maxUnmapDesc = bl?.maxUnmapBlockDescriptorCount ?? 0;
    const canUnmap = maxUnmapLba > 0 && maxUnmapDesc > 0 && (lbp ? lbp.lbpu : true);
    const canWsUnmap = lbp?.lbpws ?? false;
    const trim: DiskLimits['trim'] = !lbpme ? 'none' : canUnmap ? 'unmap' : canWsUnmap ? 'write-same-unmap' : 'none';
    const granularity = Math.max(1, bl?.optimalUnmapGranularity ?? 0);
    const wsLen = bl?.maxWriteSameLength ?? 0n;
    return {
      maxTransferBlocks,
      optimalTransferBlocks: bl?.optimalTransferLength ?? 0,
      optimalTransferGranularityBlocks: gran,
      trim,
      maxUnmapBlocks: maxUnmapLba === 0xffffffff ? Infinity : maxUnmapLba,
      /* One parameter list holds at most (65535 - 8) / 16 descriptors. */
      maxUnmapDescriptors: Math.min(maxUnmapDesc, 4095),
      unmapGranularityBlocks: granularity,
      unmapAlignmentBlocks: bl?.ugavalid ? bl.unmapGranularityAlignment % granularity : 0,
      writeSame: true,
      writeSameUnmapZeroes: lbpme && canWsUnmap && lbprz,
      maxWriteSameBlocks:
        wsLen > 0n ? Number(wsLen > 0xffffffffn ? 0xffffffffn : wsLen) : DEFAULT_MAX_WRITE_SAME_BLOCKS,
      lbpme,
      lbprz,
      fua: fuaMethod(cache, false),
    };
  }

  /**
   * Takes the caching mode read by a later probe of the same LU (after a reconnect the identity
   * check probes it again): a LU restarted with its write cache enabled must get FUA writes made
   * durable from now on. Returns whether the FUA method changed.
   */
  adoptCache(cache: CacheInfo): boolean {
    if (!this.probed || !this.lim) return false;
    const before = this.lim.fua;
    this.probed.cache = cache;
    this.lim.fua = fuaMethod(cache, this.fuaRefused);
    return this.lim.fua !== before;
  }

  /* ---------------------------------------------------------------------------------------- */
  /* Block operations.                                                                        */
  /* ---------------------------------------------------------------------------------------- */

  /** Validate a byte range; returns its first LBA (the block count is length / block size). */
  private firstLba(op: string, offset: number, length: number, beyondEnd: DiskErrorCode): number {
    const g = this.geometry;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new DiskRequestError(`${op}: bad offset ${offset} / length ${length}`, 'EINVAL');
    }
    if (offset % g.blockSize !== 0 || length % g.blockSize !== 0) {
      const why = `not aligned to the ${g.blockSize}-byte block size`;
      throw new DiskRequestError(`${op}: offset ${offset} / length ${length} ${why}`, 'EINVAL');
    }
    if (offset + length > g.sizeBytes) {
      throw new DiskRequestError(
        `${op}: ${offset}+${length} is beyond the end of the disk (${g.sizeBytes} bytes)`,
        beyondEnd,
      );
    }
    return offset / g.blockSize;
  }

  /** Validate a byte range; returns [first LBA, block count]. */
  private range(op: string, offset: number, length: number, beyondEnd: DiskErrorCode): [number, number] {
    return [this.firstLba(op, offset, length, beyondEnd), length / this.geometry.blockSize];
  }

  /** Split [lba, lba+n) into pieces of at most `max` blocks (max is clamped to >= 1). */
  private static split(lba: number, n: number, max: number): [number, number][] {
    max = Math.max(1, Math.floor(max));
    const out: [number, number][] = [];
    for (let done = 0; done < n; done += max) out.push([lba + done, Math.min(max, n - done)]);
    return out;
  }

  /**
   * Run the chunk functions with bounded concurrency; wait for all to settle (so no buffer is
   * written after we return) and throw the first failure in chunk order.
   */
  private async runChunks(fns: (() => Promise<void>)[]): Promise<void> {
    const limit = Math.max(1, this.opts.maxInflightPerRequest ?? 8);
    if (fns.length === 1) return fns[0]!();
    const errors: unknown[] = new Array(fns.length);
    let failed = false;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < fns.length) {
        const i = next++;
        try {
          await fns[i]!();
        } catch (e) {
          errors[i] = e;
          failed = true;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, fns.length) }, worker));
    if (failed) throw errors.find((e) => e !== undefined);
  }

  /**
   * Read `length` bytes at `offset` into `dst` (or a new buffer) with READ(16), split by the
   * maximum transfer length. Resolves with the filled buffer (dst.subarray(0, length) when given).
   * A read that fits one command is the data path: a reused request, its CDB written in place,
   * one promise on top of the executor's.
   */
  read(offset: number, length: number, dst?: Buffer): Promise<Buffer> {
    let lba: number;
    try {
      lba = this.firstLba('read', offset, length, 'EINVAL');
      if (dst && dst.length < length) {
        throw new DiskRequestError(`read: destination of ${dst.length} bytes for ${length}`, 'EINVAL');
      }
    } catch (e) {
      return Promise.reject(e);
    }
    const out = dst ? (dst.length === length ? dst : dst.subarray(0, length)) : Buffer.allocUnsafe(length);
    const n = length / this.geometry.blockSize;
    if (n === 0 || n > this.limits.maxTransferBlocks) return this.readChunks(lba, n, out);
    const rq = this.takeRequest();
    writeRw16(rq.cdb, READ_16, lba, n);
    rq.lba = lba;
    rq.cmd.dataInLength = length;
    rq.cmd.dataIn = out;
    return this.exec.execute(rq.cmd).then(rq.onRead, rq.onError);
  }

  private async readChunks(lba: number, n: number, out: Buffer): Promise<Buffer> {
    const bs = this.geometry.blockSize;
    await this.runChunks(
      ScsiDisk.split(lba, n, this.limits.maxTransferBlocks).map(([l, c]) => async () => {
        const at = (l - lba) * bs;
        const want = c * bs;
        const slot = out.subarray(at, at + want);
        checkRead(l, want, slot, await this.command(buildRead16(BigInt(l), c), { dataInLength: want, dataIn: slot }));
      }),
    );
    return out;
  }

  /** A READ(16) of the data path answered: retried per the rules unless it completed, checked. */
  private readDone(rq: RwRequest, res: ScsiResult): Buffer | Promise<Buffer> {
    if (!completed(res)) return this.retry(rq.cmd, res).then(rq.onReadCompleted, rq.onError);
    return this.readCompleted(rq, res);
  }

  private readCompleted(rq: RwRequest, res: ScsiResult): Buffer {
    const out = rq.cmd.dataIn!;
    const lba = rq.lba;
    this.releaseRequest(rq);
    checkRead(lba, out.length, out, res);
    return out;
  }

  /**
   * Write `data` at `offset` with WRITE(16), split by the maximum transfer length. With `fua` the
   * data is durable on return, the way limits.fua says. A write that fits one command and needs
   * no FUA handling is the data path, as in read().
   */
  write(offset: number, data: Buffer, flags?: { fua?: boolean }): Promise<void> {
    let lba: number;
    try {
      lba = this.firstLba('write', offset, data.length, 'ENOSPC');
    } catch (e) {
      return Promise.reject(e);
    }
    const n = data.length / this.geometry.blockSize;
    const fua = flags?.fua ?? false;
    if (n === 0 || n > this.limits.maxTransferBlocks || (fua && this.limits.fua !== 'write-through')) {
      return this.writeChunks(lba, n, data, fua);
    }
    const rq = this.takeRequest();
    writeRw16(rq.cdb, WRITE_16, lba, n);
    rq.cmd.dataOut = data;
    return this.exec.execute(rq.cmd).then(rq.onWrite, rq.onError);
  }

  private async writeChunks(lba: number, n: number, data: Buffer, fua: boolean): Promise<void> {
    const bs = this.geometry.blockSize;
    await this.runChunks(
      ScsiDisk.split(lba, n, this.limits.maxTransferBlocks).map(([l, c]) => async () => {
        const at = (l - lba) * bs;
        await this.writeBlocks(l, c, data.subarray(at, at + c * bs), fua);
      }),
    );
    if (fua && this.limits.fua === 'sync-cache') await this.syncRange(lba, n);
  }

  /** A WRITE(16) of the data path answered: retried per the rules unless it completed. */
  private writeDone(rq: RwRequest, res: ScsiResult): void | Promise<void> {
    if (!completed(res)) return this.retry(rq.cmd, res).then(rq.onWriteCompleted, rq.onError);
    this.releaseRequest(rq);
  }

  /** A free data-path request (the pool grows to the number of requests in flight at once). */
  private takeRequest(): RwRequest {
    const rq = this.requests.pop();
    if (rq) return rq;
    const cmd: ScsiCommand = {
      lun: this.lun,
      cdb: Buffer.alloc(16),
      dataOut: undefined,
      dataInLength: undefined,
      dataIn: undefined,
      timeoutMs: this.opts.timeoutMs,
    };
    const created: RwRequest = {
      cmd,
      cdb: cmd.cdb,
      lba: 0,
      onRead: (res) => this.readDone(created, res),
      onReadCompleted: (res) => this.readCompleted(created, res),
      onWrite: (res) => this.writeDone(created, res),
      onWriteCompleted: () => this.releaseRequest(created),
      onError: (err) => {
        this.releaseRequest(created);
        throw err;
      },
    };
    return created;
  }

  /** The executor has settled the request's command: nothing refers to its CDB any more. */
  private releaseRequest(rq: RwRequest): void {
    rq.cmd.dataOut = undefined;
    rq.cmd.dataInLength = undefined;
    rq.cmd.dataIn = undefined;
    this.requests.push(rq);
  }

  /**
   * One WRITE(16). With `fua` and limits.fua 'fua' the FUA bit is set; a LU that refuses the bit
   * although it announced DPOFUA (INVALID FIELD IN CDB: nothing was written) gets the write again
   * without it, and FUA is emulated with SYNCHRONIZE CACHE from then on (the caller syncs after
   * its chunks, looking at limits.fua then).
   */
  private async writeBlocks(lba: number, blocks: number, data: Buffer, fua: boolean): Promise<void> {
    const withFua = fua && this.limits.fua === 'fua';
    try {
      await this.command(buildWrite16(BigInt(lba), blocks, { fua: withFua }), { dataOut: data });
    } catch (e) {
      if (!(withFua && e instanceof ScsiError && isUnsupported(e))) throw e;
      this.fuaRefused = true;
      if (this.limits.fua === 'fua') {
        this.limits.fua = 'sync-cache';
        this.emit({
          type: 'fua-disabled',
          command: 'WRITE_16',
          reason: 'the LU refused the FUA bit; emulated with SYNCHRONIZE CACHE',
        });
      }
      await this.command(buildWrite16(BigInt(lba), blocks), { dataOut: data });
    }
  }

  /** SYNCHRONIZE CACHE of a block range (see synchronizeCache()). */
  private async syncRange(lba: number, n: number): Promise<void> {
    await this.runChunks(
      ScsiDisk.split(lba, n, 0xffffffff).map(
        ([l, c]) =>
          () =>
            this.synchronizeCache(l, c),
      ),
    );
  }

  /**
   * Flush the LU's volatile cache with SYNCHRONIZE CACHE(16) over the whole medium. A LU without
   * a cache may refuse the command (INVALID COMMAND OPERATION CODE / INVALID FIELD IN CDB): that
   * is success, as in Linux sd_sync_cache().
   */
  async flush(): Promise<void> {
    await this.synchronizeCache(0, 0);
  }

  /**
   * SYNCHRONIZE CACHE of [lba, lba + blocks) (blocks 0: to the end). SYNCHRONIZE CACHE(16) first;
   * a LU that does not know it (INVALID COMMAND OPERATION CODE) gets SYNCHRONIZE CACHE(10) of the
   * whole cache from then on, the command Linux sd sends; a LU that refuses both has no cache to
   * flush (sd_sync_cache()).
   */
  private async synchronizeCache(lba: number, blocks: number): Promise<void> {
    if (this.syncCache16) {
      try {
        await this.command(buildSynchronizeCache16(BigInt(lba), blocks));
        return;
      } catch (e) {
        if (!(e instanceof ScsiError && isUnsupported(e))) throw e;
        if (e.sense?.asc !== ASC_INVALID_COMMAND_OPERATION_CODE) return; // known command, field refused: no cache
        this.syncCache16 = false;
      }
    }
    try {
      await this.command(buildSynchronizeCache10());
    } catch (e) {
      if (!(e instanceof ScsiError && isUnsupported(e))) throw e;
    }
  }

  /** [first, end) rounded inwards to whole unmap granules. */
  private granuleRange(lba: number, n: number): [number, number] {
    const g = this.limits.unmapGranularityBlocks;
    const a = this.limits.unmapAlignmentBlocks;
    const start = lba + ((((a - lba) % g) + g) % g);
    const end = lba + n;
    const last = end - ((((end - a) % g) + g) % g);
    return [start, Math.max(start, last)];
  }

  /**
   * Discard a range. Advisory: only whole unmap granules are unmapped, a LU without thin
   * provisioning makes this a no-op, and a LU that refuses the command (ILLEGAL REQUEST) gets
   * trim disabled instead of an error. Other failures (write protect, medium, transport) do throw.
   */
  async trim(offset: number, length: number): Promise<void> {
    const [lba, n] = this.range('trim', offset, length, 'EINVAL');
    const lim = this.limits;
    if (lim.trim === 'none' || n === 0) return;
    const [start, end] = this.granuleRange(lba, n);
    if (start >= end) return;
    const g = lim.unmapGranularityBlocks;
    /* Per-command/per-descriptor block counts, kept to whole granules where possible. */
    const roundG = (x: number): number => (x >= g ? x - (x % g) : x);
    try {
      if (lim.trim === 'unmap') {
        const perDesc = roundG(Math.min(0xffffffff, lim.maxUnmapBlocks));
        const perCmd = roundG(Math.min(lim.maxUnmapBlocks, perDesc * lim.maxUnmapDescriptors));
        const cmds = ScsiDisk.split(start, end - start, perCmd);
        await this.runChunks(
          cmds.map(([l, c]) => async () => {
            const descs: UnmapDescriptor[] = ScsiDisk.split(l, c, perDesc).map(([dl, dc]) => ({
              lba: BigInt(dl),
              blocks: dc,
            }));
            const { cdb, parameterList } = buildUnmap(descs);
            await this.command(cdb, { dataOut: parameterList });
          }),
        );
      } else {
        const block = this.zeroes(this.geometry.blockSize);
        await this.runChunks(
          ScsiDisk.split(start, end - start, roundG(lim.maxWriteSameBlocks)).map(([l, c]) => async () => {
            await this.command(buildWriteSame16(BigInt(l), c, { unmap: true }), { dataOut: block });
          }),
        );
      }
    } catch (e) {
      if (e instanceof ScsiError && isUnsupported(e)) {
        lim.trim = 'none';
        this.emit({ type: 'trim-disabled', command: e.command, reason: e.message });
        return;
      }
      throw e;
    }
  }

  /**
   * Make a range read as zeroes. Tries, in order: WRITE SAME(16) with UNMAP (only when !noHole
   * and the LU reads unmapped blocks as zero), WRITE SAME(16) of a zero block, plain WRITE(16) of
   * zero buffers; a method the LU refuses with ILLEGAL REQUEST is disabled for later requests.
   * With fua, the range is synchronized afterwards (WRITE SAME has no FUA bit).
   */
  async writeZeroes(offset: number, length: number, flags: { noHole?: boolean; fua?: boolean } = {}): Promise<void> {
    const [lba, n] = this.range('write-zeroes', offset, length, 'ENOSPC');
    if (n === 0) return;
    const lim = this.limits;
    const bs = this.geometry.blockSize;
    let done = false;
    if (!flags.noHole && lim.writeSameUnmapZeroes) {
      done = await this.tryWriteSame(lba, n, true);
      if (!done) {
        lim.writeSameUnmapZeroes = false;
        this.emit({ type: 'write-same-unmap-disabled', command: 'WRITE_SAME_16', reason: 'refused by the LU' });
      }
    }
    if (!done && lim.writeSame) {
      done = await this.tryWriteSame(lba, n, false);
      if (!done) {
        lim.writeSame = false;
        this.emit({ type: 'write-same-disabled', command: 'WRITE_SAME_16', reason: 'refused by the LU' });
      }
    }
    if (!done) {
      const zero = this.zeroes(Math.min(ZERO_CHUNK_BYTES, lim.maxTransferBlocks * bs));
      const per = zero.length / bs;
      await this.runChunks(
        ScsiDisk.split(lba, n, per).map(([l, c]) => async () => {
          await this.writeBlocks(l, c, zero.subarray(0, c * bs), flags.fua ?? false);
        }),
      );
      if (flags.fua && lim.fua === 'sync-cache') await this.syncRange(lba, n);
      return;
    }
    if (flags.fua && lim.fua !== 'write-through') await this.syncRange(lba, n);
  }

  /** WRITE SAME(16) a zero block over the range; false if the LU refuses the command form. */
  private async tryWriteSame(lba: number, n: number, unmap: boolean): Promise<boolean> {
    const block = this.zeroes(this.geometry.blockSize);
    try {
      await this.runChunks(
        ScsiDisk.split(lba, n, this.limits.maxWriteSameBlocks).map(([l, c]) => async () => {
          await this.command(buildWriteSame16(BigInt(l), c, { unmap }), { dataOut: block });
        }),
      );
      return true;
    } catch (e) {
      if (e instanceof ScsiError && isUnsupported(e)) return false;
      throw e;
    }
  }

  /** A shared all-zero buffer of at least `len` bytes (never written to). */
  private zeroes(len: number): Buffer {
    if (!this.zeroBuf || this.zeroBuf.length < len) this.zeroBuf = Buffer.alloc(len);
    return this.zeroBuf.subarray(0, len);
  }
}

/** How FUA is honoured for a caching mode (Linux sd rules); a refused FUA bit stays emulated. */
function fuaMethod(cache: CacheInfo, fuaRefused: boolean): DiskLimits['fua'] {
  if (!cache.writeCacheEnabled) return 'write-through';
  return cache.dpoFua && !fuaRefused ? 'fua' : 'sync-cache';
}

/** ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE or INVALID FIELD IN CDB: the LU does not do this. */
function isUnsupported(e: ScsiError): boolean {
  const s = e.sense;
  return (
    s !== undefined &&
    s.key === ILLEGAL_REQUEST &&
    (s.asc === ASC_INVALID_COMMAND_OPERATION_CODE || s.asc === ASC_INVALID_FIELD_IN_CDB)
  );
}

/**
 * REPORT LUNS through an executor (addressed to `lun`, LUN 0 by default), asking again with the
 * full length when the list did not fit. Returns the SAM LUNs; failures as in ScsiDisk.command().
 */
export async function reportLuns(
  executor: ScsiExecutor,
  opts: {
    lun?: bigint;
    timeoutMs?: number;
    retry?: Partial<ScsiRetryPolicy>;
    sleep?: (ms: number) => Promise<void>;
  } = {},
): Promise<bigint[]> {
  const disk = new ScsiDisk(executor, { ...opts, lun: opts.lun ?? 0n });
  let alloc = 8 + 8 * 256;
  for (let attempt = 0; ; attempt++) {
    const res = await disk.command(buildReportLuns(alloc), { dataInLength: alloc });
    let parsed;
    try {
      parsed = parseReportLuns(res.dataIn ?? Buffer.alloc(0));
    } catch (e) {
      if (e instanceof ScsiParseError) throw new DiskRequestError(`REPORT LUNS data is malformed: ${e.message}`, 'EIO');
      throw e;
    }
    if (!parsed.truncated || attempt > 0 || 8 + parsed.listLength > 0xffffffff) return parsed.luns;
    alloc = 8 + parsed.listLength;
  }
}
