/**
 * RamScsiLun: a RAM-backed SBC direct-access logical unit for tests.
 *
 * It implements the target side of every command the SCSI layer sends (TEST UNIT READY, INQUIRY
 * standard + VPD 00h/80h/83h/B0h/B2h, READ CAPACITY(16), REPORT LUNS, READ(16), WRITE(16),
 * SYNCHRONIZE CACHE(16), UNMAP, WRITE SAME(16) with UNMAP/NDOB) with the sense data SBC-3/SPC-4
 * require for bad CDBs, and it enforces the limits it advertises (a READ longer than MAXIMUM
 * TRANSFER LENGTH fails, an UNMAP with too many descriptors fails), so a caller that ignores them
 * is caught. Fault injection: the next N (matching) commands return a chosen status/sense, unit
 * attentions can be queued, the identity (serial, NAA, capacity) can change, and the LUN can be
 * write protected. Every command is logged in `log` for tests to assert what an initiator sent
 * (commandLog bounds or turns off the log: a LUN serving a benchmark keeps nothing per command).
 * READ(16) data is a view of the LUN's memory, as a target serving from its own memory hands it to
 * the RDMA WRITE: the view is valid until the LUN is written.
 *
 * Not a product: no persistence, no reservations, no protection information.
 */

import type { ScsiTargetLun } from '../initiator/scsi-executor.js';
import {
  ASC_INVALID_COMMAND_OPERATION_CODE,
  ASC_INVALID_FIELD_IN_CDB,
  ASC_INVALID_FIELD_IN_PARAMETER_LIST,
  ASC_LBA_OUT_OF_RANGE,
  ASC_PARAMETERS_CHANGED,
  ASC_PARAMETER_LIST_LENGTH_ERROR,
  ASC_TARGET_OPERATING_CONDITIONS_CHANGED,
  ASC_WRITE_PROTECTED,
  ASCQ_CAPACITY_DATA_HAS_CHANGED,
  ASCQ_INQUIRY_DATA_HAS_CHANGED,
  ASSOCIATION_LOGICAL_UNIT,
  ASSOCIATION_TARGET_PORT,
  CODE_SET_ASCII,
  CODE_SET_BINARY,
  DATA_PROTECT,
  DESIGNATOR_NAA,
  DESIGNATOR_RELATIVE_TARGET_PORT,
  DESIGNATOR_T10_VENDOR_ID,
  ILLEGAL_REQUEST,
  INQUIRY,
  MODE_SENSE,
  MODE_SENSE_10,
  READ_16,
  REPORT_LUNS,
  SAI_READ_CAPACITY_16,
  SAM_STAT_CHECK_CONDITION,
  SAM_STAT_GOOD,
  SCSI_PROTOCOL_SRP,
  SENSE_DESC_CURRENT,
  SENSE_DESC_INFORMATION,
  SENSE_DESC_SENSE_KEY_SPECIFIC,
  SENSE_FIXED_CURRENT,
  SERVICE_ACTION_IN_16,
  SYNCHRONIZE_CACHE,
  SYNCHRONIZE_CACHE_16,
  TEST_UNIT_READY,
  TYPE_DISK,
  UNIT_ATTENTION,
  UNMAP,
  VPD_BLOCK_LIMITS,
  VPD_DEVICE_IDENTIFICATION,
  VPD_LOGICAL_BLOCK_PROVISIONING,
  VPD_SUPPORTED_PAGES,
  VPD_UNIT_SERIAL_NUMBER,
  WRITE_16,
  WRITE_SAME_16,
  nameOfCdb,
} from '../initiator/scsi-constants.js';

/* ------------------------------------------------------------------------------------------ */
/* Sense data builder (also useful to other test targets).                                     */
/* ------------------------------------------------------------------------------------------ */

export interface SenseOptions {
  /** Descriptor format (72h) instead of fixed (70h). */
  descriptor?: boolean;
  /** INFORMATION field (e.g. the offending LBA), VALID set. */
  info?: bigint;
  /** SENSE KEY SPECIFIC field pointer for ILLEGAL REQUEST: byte of the CDB (or parameter list). */
  fieldPointer?: { byte: number; inCdb: boolean };
}

/** Build current sense data (SPC-4 4.5.2 descriptor / 4.5.3 fixed format). */
export function buildSense(key: number, asc: number, ascq: number, opts: SenseOptions = {}): Buffer {
  const sks = opts.fieldPointer
    ? [0x80 | (opts.fieldPointer.inCdb ? 0x40 : 0), (opts.fieldPointer.byte >> 8) & 0xff, opts.fieldPointer.byte & 0xff]
    : undefined;
  if (opts.descriptor) {
    const descs: number[] = [];
    if (opts.info !== undefined) {
      const info = Buffer.alloc(8);
      info.writeBigUInt64BE(BigInt.asUintN(64, opts.info));
      descs.push(SENSE_DESC_INFORMATION, 0x0a, 0x80, 0x00, ...info);
    }
    if (sks) descs.push(SENSE_DESC_SENSE_KEY_SPECIFIC, 0x06, 0x00, 0x00, ...sks, 0x00);
    return Buffer.from([SENSE_DESC_CURRENT, key & 0x0f, asc, ascq, 0, 0, 0, descs.length, ...descs]);
  }
  const b = Buffer.alloc(18);
  b[0] = SENSE_FIXED_CURRENT;
  b[2] = key & 0x0f;
  if (opts.info !== undefined && opts.info <= 0xffffffffn) {
    b[0] |= 0x80; /* VALID: INFORMATION fits in 4 bytes */
    b.writeUInt32BE(Number(opts.info), 3);
  }
  b[7] = 10;
  b[12] = asc;
  b[13] = ascq;
  if (sks) b.set(sks, 15);
  return b;
}

/** REPORT LUNS parameter data for a list of SAM LUNs (SPC-4 table 192), cut to allocationLength. */
export function buildReportLunsData(luns: readonly bigint[], allocationLength = Infinity): Buffer {
  const b = Buffer.alloc(8 + 8 * luns.length);
  b.writeUInt32BE(8 * luns.length, 0);
  luns.forEach((l, i) => b.writeBigUInt64BE(BigInt.asUintN(64, l), 8 + 8 * i));
  return b.subarray(0, Math.min(b.length, allocationLength));
}

/* ------------------------------------------------------------------------------------------ */
/* Configuration.                                                                              */
/* ------------------------------------------------------------------------------------------ */

/** Block Limits the LUN advertises (VPD B0h) and enforces; counts in logical blocks, 0 = none. */
export interface RamLunLimits {
  maxTransferLength: number;
  optimalTransferLengthGranularity: number;
  optimalTransferLength: number;
  maxUnmapLbaCount: number;
  maxUnmapBlockDescriptorCount: number;
  optimalUnmapGranularity: number;
  /** Undefined: UGAVALID = 0. */
  unmapGranularityAlignment: number | undefined;
  maxWriteSameLength: number;
}

/** Logical block provisioning (VPD B2h, READ CAPACITY(16) LBPME/LBPRZ). */
export interface RamLunProvisioning {
  lbpme: boolean;
  lbpu: boolean;
  lbpws: boolean;
  lbpws10: boolean;
  lbprz: boolean;
  ancSup: boolean;
}

export interface RamScsiLunOptions {
  blockSize?: 512 | 4096;
  /** Capacity in logical blocks (default 2048). */
  blocks?: number;
  vendor?: string;
  product?: string;
  revision?: string;
  serial?: string;
  /** NAA designator bytes (8 or 16), default a registered extended (6h) NAA derived from the serial. */
  naa?: Buffer;
  /** LUNs REPORT LUNS lists (SAM format), default [LUN 0]. */
  reportedLuns?: bigint[];
  limits?: Partial<RamLunLimits>;
  /** Provisioning; omitted = fully provisioned, no UNMAP. */
  provisioning?: Partial<RamLunProvisioning>;
  physicalBlockExponent?: number;
  /** Answer EVPD INQUIRY (default true); false emulates an old target without VPD pages. */
  vpd?: boolean;
  /** Include the Block Limits page (default true). */
  blockLimitsPage?: boolean;
  /** Support WRITE SAME(16) (default true). */
  writeSame?: boolean;
  /** Support NDOB in WRITE SAME(16) (default false). */
  ndob?: boolean;
  /** WSNZ: refuse WRITE SAME with 0 blocks (default true). */
  wsnz?: boolean;
  /** Return descriptor-format sense data (default fixed). */
  descriptorSense?: boolean;
  /** What unmapped blocks read as when LBPRZ = 0 (default 0xA5: garbage that is not zero). */
  unmappedPattern?: number;
  writeProtected?: boolean;
  /** Answer MODE SENSE(6) and (10) with the caching page (default true); false: INVALID COMMAND OPERATION CODE. */
  modeSense?: boolean;
  /** Caching page WCE: a volatile write cache (default true). */
  writeCache?: boolean;
  /**
   * DPOFUA in the mode parameter header (default true). false makes the LU refuse WRITE(16) with
   * the FUA bit (INVALID FIELD IN CDB), as LIO does for a backstore without a write cache.
   */
  dpoFua?: boolean;
  /** Know SYNCHRONIZE CACHE(16) (default true); false: INVALID COMMAND OPERATION CODE, only (10). */
  syncCache16?: boolean;
  /**
   * Commands the log keeps at least (the most recent; it holds up to twice as many), default all;
   * 0: no log, nothing recorded per command.
   */
  commandLog?: number;
}

/** One command as the LUN saw it. */
export interface RamLunLogEntry {
  name: string;
  cdb: Buffer;
  lba?: bigint;
  blocks?: number;
  fua?: boolean;
  unmap?: boolean;
  ndob?: boolean;
  /** UNMAP descriptors. */
  descriptors?: { lba: bigint; blocks: number }[];
  status: number;
  /** Sense key / ASC / ASCQ when CHECK CONDITION. */
  sense?: [number, number, number];
  /** The reply came from fault injection. */
  injected?: boolean;
}

/** An injected reply. */
export interface InjectedFault {
  status: number;
  sense?: Buffer;
  /** Only commands this accepts consume the fault (default: every command). */
  match?: (cdb: Buffer) => boolean;
  /** Answer after this many ms. */
  delayMs?: number;
}

type Reply = { status: number; sense?: Buffer; dataIn?: Buffer };
/** A WRITE(16)'s answer: one object for all (frozen: nobody may change it). */
const GOOD_WRITE: Reply = Object.freeze({ status: SAM_STAT_GOOD });

class CheckCondition {
  constructor(
    readonly key: number,
    readonly asc: number,
    readonly ascq: number,
    readonly info?: bigint,
    readonly fieldPointer?: { byte: number; inCdb: boolean },
  ) {}
}

function padAscii(s: string, len: number): Buffer {
  const b = Buffer.alloc(len, 0x20);
  b.write(s.slice(0, len), 'latin1');
  return b;
}

/* ------------------------------------------------------------------------------------------ */
/* The LUN.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

export class RamScsiLun implements ScsiTargetLun {
  /** execute() copies what it keeps of dataOut before it returns (a delayed fault ignores it). */
  readonly readsDataOutOnlyDuringExecute = true;
  readonly blockSize: number;
  blocks: number;
  vendor: string;
  product: string;
  revision: string;
  serial: string;
  naa: Buffer;
  reportedLuns: bigint[];
  readonly limits: RamLunLimits;
  readonly provisioning: RamLunProvisioning;
  readonly physicalBlockExponent: number;
  readonly vpd: boolean;
  readonly blockLimitsPage: boolean;
  readonly writeSame: boolean;
  readonly ndob: boolean;
  readonly wsnz: boolean;
  descriptorSense: boolean;
  readonly unmappedPattern: number;
  writeProtected: boolean;
  readonly modeSense: boolean;
  writeCache: boolean;
  dpoFua: boolean;
  readonly syncCache16: boolean;

  /** Every command executed, oldest first (the most recent commandLog of them). */
  readonly log: RamLunLogEntry[] = [];
  readonly commandLog: number;
  /** what dispatch() fills in when nothing is logged */
  private readonly scratchEntry: RamLunLogEntry = { name: '', cdb: Buffer.alloc(0), status: SAM_STAT_GOOD };

  private data: Buffer;
  /** 1 per mapped block. */
  private mapped: Uint8Array;
  private faults: { fault: InjectedFault; left: number }[] = [];
  private unitAttentions: [number, number][] = [];

  constructor(opts: RamScsiLunOptions = {}) {
    this.blockSize = opts.blockSize ?? 512;
    if (this.blockSize !== 512 && this.blockSize !== 4096) throw new RangeError(`blockSize ${this.blockSize}`);
    this.blocks = opts.blocks ?? 2048;
    this.vendor = opts.vendor ?? 'SRPNBD';
    this.product = opts.product ?? 'RAM LUN';
    this.revision = opts.revision ?? '0001';
    this.serial = opts.serial ?? 'ramlun0001';
    this.naa = opts.naa ?? RamScsiLun.naaFromSerial(this.serial);
    this.reportedLuns = opts.reportedLuns ?? [0n];
    this.limits = {
      maxTransferLength: 0,
      optimalTransferLengthGranularity: 0,
      optimalTransferLength: 0,
      maxUnmapLbaCount: 0,
      maxUnmapBlockDescriptorCount: 0,
      optimalUnmapGranularity: 0,
      unmapGranularityAlignment: undefined,
      maxWriteSameLength: 0,
      ...opts.limits,
    };
    this.provisioning = {
      lbpme: false,
      lbpu: false,
      lbpws: false,
      lbpws10: false,
      lbprz: false,
      ancSup: false,
      ...opts.provisioning,
    };
    this.physicalBlockExponent = opts.physicalBlockExponent ?? 0;
    this.vpd = opts.vpd ?? true;
    this.blockLimitsPage = opts.blockLimitsPage ?? true;
    this.writeSame = opts.writeSame ?? true;
    this.ndob = opts.ndob ?? false;
    this.wsnz = opts.wsnz ?? true;
    this.descriptorSense = opts.descriptorSense ?? false;
    this.unmappedPattern = opts.unmappedPattern ?? 0xa5;
    this.writeProtected = opts.writeProtected ?? false;
    this.modeSense = opts.modeSense ?? true;
    this.writeCache = opts.writeCache ?? true;
    this.dpoFua = opts.dpoFua ?? true;
    this.syncCache16 = opts.syncCache16 ?? true;
    this.commandLog = opts.commandLog ?? Infinity;
    if (!(this.commandLog >= 0)) throw new RangeError(`commandLog ${this.commandLog}`);
    this.data = Buffer.alloc(this.blocks * this.blockSize);
    this.mapped = new Uint8Array(this.blocks);
    if (this.provisioning.lbpme) {
      /* A thin LUN starts fully unmapped. */
      this.data.fill(this.unmappedFill());
    } else {
      this.mapped.fill(1);
    }
  }

  /** NAA 6h (IEEE registered extended) designator derived from a serial, 16 bytes. */
  static naaFromSerial(serial: string): Buffer {
    const b = Buffer.alloc(16);
    b[0] = 0x60; /* NAA 6, IEEE company id 0x0014_05 (LIO's) follows */
    b[1] = 0x01;
    b[2] = 0x40;
    b[3] = 0x50;
    let h = 0x811c9dc5;
    for (let i = 0; i < serial.length; i++) {
      h = Math.imul(h ^ serial.charCodeAt(i), 0x01000193) >>> 0;
      b[4 + (i % 12)] ^= h & 0xff;
    }
    return b;
  }

  /* ---------------------------------------------------------------------------------------- */
  /* Test controls.                                                                            */
  /* ---------------------------------------------------------------------------------------- */

  /** The next `count` commands (that `fault.match` accepts) get this reply instead of running. */
  injectFault(fault: InjectedFault, count = 1): void {
    this.faults.push({ fault, left: count });
  }

  /** The next `count` (matching) commands fail with CHECK CONDITION and this sense. */
  injectSense(key: number, asc: number, ascq: number, count = 1, match?: (cdb: Buffer) => boolean): void {
    const sense = buildSense(key, asc, ascq, { descriptor: this.descriptorSense });
    this.injectFault({ status: SAM_STAT_CHECK_CONDITION, sense, ...(match ? { match } : {}) }, count);
  }

  /** Drop every injected fault not yet consumed. */
  clearFaults(): void {
    this.faults = [];
  }

  /** Injected faults not yet consumed. */
  pendingFaults(): number {
    return this.faults.reduce((n, f) => n + f.left, 0);
  }

  /** Queue a UNIT ATTENTION, reported to the next command other than INQUIRY / REPORT LUNS (SAM-5 5.14). */
  queueUnitAttention(asc: number, ascq: number): void {
    this.unitAttentions.push([asc, ascq]);
  }

  /**
   * Change what identifies the LUN. A capacity change keeps the data that still fits and queues
   * CAPACITY DATA HAS CHANGED; a serial/NAA change queues INQUIRY DATA HAS CHANGED (unless
   * unitAttention is false).
   */
  changeIdentity(change: { serial?: string; naa?: Buffer; blocks?: number; unitAttention?: boolean }): void {
    const ua = change.unitAttention ?? true;
    if (change.serial !== undefined || change.naa !== undefined) {
      if (change.serial !== undefined) this.serial = change.serial;
      if (change.naa !== undefined) this.naa = change.naa;
      if (ua) this.queueUnitAttention(ASC_TARGET_OPERATING_CONDITIONS_CHANGED, ASCQ_INQUIRY_DATA_HAS_CHANGED);
    }
    if (change.blocks !== undefined && change.blocks !== this.blocks) {
      const data = Buffer.alloc(change.blocks * this.blockSize, this.provisioning.lbpme ? this.unmappedFill() : 0);
      this.data.copy(data, 0, 0, Math.min(this.data.length, data.length));
      const mapped = new Uint8Array(change.blocks).fill(this.provisioning.lbpme ? 0 : 1);
      mapped.set(this.mapped.subarray(0, Math.min(this.blocks, change.blocks)));
      this.data = data;
      this.mapped = mapped;
      this.blocks = change.blocks;
      if (ua) this.queueUnitAttention(ASC_PARAMETERS_CHANGED, ASCQ_CAPACITY_DATA_HAS_CHANGED);
    }
  }

  /** A copy of blocks [lba, lba + blocks) as a READ would return them. */
  peek(lba: number, blocks: number): Buffer {
    return Buffer.from(this.data.subarray(lba * this.blockSize, (lba + blocks) * this.blockSize));
  }

  /** Write blocks directly (maps them). */
  poke(lba: number, data: Buffer): void {
    data.copy(this.data, lba * this.blockSize);
    this.mapped.fill(1, lba, lba + Math.ceil(data.length / this.blockSize));
  }

  isMapped(lba: number): boolean {
    return this.mapped[lba] === 1;
  }

  mappedCount(): number {
    let n = 0;
    for (const m of this.mapped) n += m;
    return n;
  }

  clearLog(): void {
    this.log.length = 0;
  }

  /** Log entries for commands with this name (e.g. "READ_16"). */
  logOf(name: string): RamLunLogEntry[] {
    return this.log.filter((e) => e.name === name);
  }

  /* ---------------------------------------------------------------------------------------- */
  /* ScsiTargetLun.                                                                            */
  /* ---------------------------------------------------------------------------------------- */

  execute(cdb: Buffer, dataOut: Buffer | undefined, allocationLength: number): Reply | Promise<Reply> {
    let entry = this.scratchEntry;
    if (this.commandLog > 0) {
      entry = { name: nameOfCdb(cdb), cdb: Buffer.from(cdb), status: SAM_STAT_GOOD };
      this.log.push(entry);
      if (this.log.length >= 2 * this.commandLog) this.log.splice(0, this.log.length - this.commandLog);
    }

    const fi = this.faults.length === 0 ? -1 : this.faults.findIndex((f) => !f.fault.match || f.fault.match(cdb));
    if (fi >= 0) {
      const f = this.faults[fi]!;
      if (--f.left === 0) this.faults.splice(fi, 1);
      entry.status = f.fault.status;
      entry.injected = true;
      const fs = f.fault.sense;
      if (fs && (fs[0]! & 0x7f) >= 0x72 && fs.length >= 4) entry.sense = [fs[1]! & 0xf, fs[2]!, fs[3]!];
      else if (fs && fs.length >= 14) entry.sense = [fs[2]! & 0xf, fs[12]!, fs[13]!];
      const reply: Reply = { status: f.fault.status, ...(f.fault.sense ? { sense: Buffer.from(f.fault.sense) } : {}) };
      if (f.fault.delayMs) return new Promise((res) => setTimeout(() => res(reply), f.fault.delayMs));
      return reply;
    }

    let reply: Reply;
    try {
      const op = cdb.length > 0 ? cdb[0]! : -1;
      if (this.unitAttentions.length > 0 && op !== INQUIRY && op !== REPORT_LUNS) {
        const [asc, ascq] = this.unitAttentions.shift()!;
        throw new CheckCondition(UNIT_ATTENTION, asc, ascq);
      }
      reply = this.dispatch(op, cdb, dataOut, entry);
      if (reply.dataIn && reply.dataIn.length > allocationLength) {
        reply.dataIn = reply.dataIn.subarray(0, allocationLength);
      }
    } catch (e) {
      if (!(e instanceof CheckCondition)) throw e;
      entry.status = SAM_STAT_CHECK_CONDITION;
      entry.sense = [e.key, e.asc, e.ascq];
      reply = {
        status: SAM_STAT_CHECK_CONDITION,
        sense: buildSense(e.key, e.asc, e.ascq, {
          descriptor: this.descriptorSense,
          ...(e.info !== undefined ? { info: e.info } : {}),
          ...(e.fieldPointer ? { fieldPointer: e.fieldPointer } : {}),
        }),
      };
    }
    return reply;
  }

  /**
   * MODE SENSE(6) and (10): header with WP and DPOFUA, no block descriptors, and the caching page
   * (08h) when asked for it or for all pages (3Fh); page 00h is the header alone. PC must be
   * current (0), changeable (1) or default (2) values.
   */
  private modeSenseReply(cdb: Buffer): Reply {
    const six = cdb[0] === MODE_SENSE;
    this.needCdb(cdb, six ? 6 : 10);
    const pc = cdb[2]! >> 6;
    const page = cdb[2]! & 0x3f;
    if (pc === 3 || (page !== 0x08 && page !== 0x3f && page !== 0x00) || cdb[3] !== 0) throw invalidField(2); // saved values: none
    const caching = Buffer.alloc(page === 0x00 ? 0 : 20); // SBC-3 table 174: page 08h, PAGE LENGTH 12h
    if (caching.length > 0) {
      caching[0] = 0x08;
      caching[1] = 0x12;
      if (pc !== 1 && this.writeCache) caching[2] = 0x04; // WCE (changeable-values mask: none)
    }
    const hdr = six ? 4 : 8;
    const data = Buffer.alloc(hdr + caching.length);
    const dsp = (this.writeProtected ? 0x80 : 0) | (this.dpoFua ? 0x10 : 0);
    if (six) {
      data[0] = data.length - 1;
      data[2] = dsp;
    } else {
      data.writeUInt16BE(data.length - 2, 0);
      data[3] = dsp;
    }
    caching.copy(data, hdr);
    const alloc = six ? cdb[4]! : cdb.readUInt16BE(7);
    return { status: SAM_STAT_GOOD, dataIn: data.subarray(0, Math.min(alloc, data.length)) };
  }

  private dispatch(op: number, cdb: Buffer, dataOut: Buffer | undefined, entry: RamLunLogEntry): Reply {
    switch (op) {
      case TEST_UNIT_READY:
        this.needCdb(cdb, 6);
        return { status: SAM_STAT_GOOD };
      case INQUIRY:
        return this.inquiry(cdb);
      case SERVICE_ACTION_IN_16:
        this.needCdb(cdb, 16);
        if ((cdb[1]! & 0x1f) !== SAI_READ_CAPACITY_16) throw invalidField(1);
        return { status: SAM_STAT_GOOD, dataIn: this.readCapacity16() };
      case REPORT_LUNS: {
        this.needCdb(cdb, 12);
        const alloc = cdb.readUInt32BE(6);
        if (alloc < 16) throw invalidField(6);
        return { status: SAM_STAT_GOOD, dataIn: buildReportLunsData(this.reportedLuns) };
      }
      case READ_16:
      case WRITE_16: {
        this.needCdb(cdb, 16);
        // the LBA as two 32-bit halves: no bigint per command unless it is logged or out of range
        // (plain loads: the CDB's 16 bytes were checked just above)
        const lbaHi = u32At(cdb, 2);
        const lbaLo = u32At(cdb, 6);
        const n = u32At(cdb, 10);
        if (entry !== this.scratchEntry) {
          entry.lba = (BigInt(lbaHi) << 32n) | BigInt(lbaLo);
          entry.blocks = n;
          entry.fua = (cdb[1]! & 0x08) !== 0;
        }
        if ((cdb[1]! & 0xe0) !== 0) throw invalidField(1); /* no protection information */
        if ((cdb[1]! & 0x18) !== 0 && !this.dpoFua) throw invalidField(1); /* DPO/FUA not supported */
        const start =
          lbaHi < 0x200000 && lbaHi * 0x100000000 + lbaLo + n <= this.blocks
            ? lbaHi * 0x100000000 + lbaLo
            : this.checkRange((BigInt(lbaHi) << 32n) | BigInt(lbaLo), n);
        if (this.limits.maxTransferLength > 0 && n > this.limits.maxTransferLength) throw invalidField(10);
        const len = n * this.blockSize;
        if (op === READ_16) {
          const at = start * this.blockSize;
          return { status: SAM_STAT_GOOD, dataIn: this.data.subarray(at, at + len) };
        }
        this.checkWritable();
        if (!dataOut || dataOut.length < len) throw invalidField(10);
        // TypedArray#set: Buffer#copy's argument checks are the cost of a small copy
        this.data.set(dataOut.length === len ? dataOut : dataOut.subarray(0, len), start * this.blockSize);
        this.mapped.fill(1, start, start + n);
        return GOOD_WRITE;
      }
      case SYNCHRONIZE_CACHE: {
        this.needCdb(cdb, 10);
        const lba = cdb.readUInt32BE(2);
        const n = cdb.readUInt16BE(7);
        Object.assign(entry, { lba: BigInt(lba), blocks: n });
        this.checkRange(BigInt(lba), n);
        return { status: SAM_STAT_GOOD };
      }
      case SYNCHRONIZE_CACHE_16: {
        if (!this.syncCache16)
          throw new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, 0, undefined, {
            byte: 0,
            inCdb: true,
          });
        this.needCdb(cdb, 16);
        const lba = cdb.readBigUInt64BE(2);
        const n = cdb.readUInt32BE(10);
        Object.assign(entry, { lba, blocks: n });
        this.checkRange(lba, n);
        return { status: SAM_STAT_GOOD };
      }
      case MODE_SENSE:
      case MODE_SENSE_10:
        if (!this.modeSense)
          throw new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, 0, undefined, {
            byte: 0,
            inCdb: true,
          });
        return this.modeSenseReply(cdb);
      case UNMAP:
        return this.unmap(cdb, dataOut, entry);
      case WRITE_SAME_16:
        return this.writeSame16(cdb, dataOut, entry);
      default:
        throw new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, 0, undefined, {
          byte: 0,
          inCdb: true,
        });
    }
  }

  private needCdb(cdb: Buffer, len: number): void {
    if (cdb.length < len) throw new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0);
  }

  private unmappedFill(): number {
    return this.provisioning.lbprz ? 0 : this.unmappedPattern;
  }

  /** Range check [lba, lba + n); returns lba as a number. LBA OUT OF RANGE names the first bad LBA. */
  private checkRange(lba: bigint, n: number): number {
    if (lba + BigInt(n) > BigInt(this.blocks)) {
      throw new CheckCondition(
        ILLEGAL_REQUEST,
        ASC_LBA_OUT_OF_RANGE,
        0,
        lba >= BigInt(this.blocks) ? lba : BigInt(this.blocks),
      );
    }
    return Number(lba);
  }

  private checkWritable(): void {
    if (this.writeProtected) throw new CheckCondition(DATA_PROTECT, ASC_WRITE_PROTECTED, 0);
  }

  private inquiry(cdb: Buffer): Reply {
    this.needCdb(cdb, 6);
    const evpd = (cdb[1]! & 0x01) !== 0;
    const page = cdb[2]!;
    if (!evpd) {
      if (page !== 0) throw invalidField(2);
      const b = Buffer.alloc(36);
      b[0] = TYPE_DISK; /* qualifier 000b: connected */
      b[2] = 0x06; /* SPC-4 */
      b[3] = 0x12; /* HISUP, RESPONSE DATA FORMAT 2 */
      b[4] = 36 - 5;
      b[7] = 0x02; /* CMDQUE */
      padAscii(this.vendor, 8).copy(b, 8);
      padAscii(this.product, 16).copy(b, 16);
      padAscii(this.revision, 4).copy(b, 32);
      return { status: SAM_STAT_GOOD, dataIn: b };
    }
    if (!this.vpd || !this.supportedPages().includes(page)) throw invalidField(2);
    let body: Buffer;
    switch (page) {
      case VPD_SUPPORTED_PAGES:
        body = Buffer.from(this.supportedPages());
        break;
      case VPD_UNIT_SERIAL_NUMBER:
        body = Buffer.from(this.serial, 'latin1');
        break;
      case VPD_DEVICE_IDENTIFICATION:
        body = this.deviceIdentification();
        break;
      case VPD_BLOCK_LIMITS:
        body = this.blockLimits();
        break;
      default: /* VPD_LOGICAL_BLOCK_PROVISIONING */
        body = this.lbpPage();
        break;
    }
    const head = Buffer.from([TYPE_DISK, page, (body.length >> 8) & 0xff, body.length & 0xff]);
    return { status: SAM_STAT_GOOD, dataIn: Buffer.concat([head, body]) };
  }

  private supportedPages(): number[] {
    const p = [VPD_SUPPORTED_PAGES, VPD_UNIT_SERIAL_NUMBER, VPD_DEVICE_IDENTIFICATION];
    if (this.blockLimitsPage) p.push(VPD_BLOCK_LIMITS);
    if (this.provisioning.lbpme) p.push(VPD_LOGICAL_BLOCK_PROVISIONING);
    return p;
  }

  private deviceIdentification(): Buffer {
    const desc = (b0: number, b1: number, d: Buffer): Buffer => Buffer.concat([Buffer.from([b0, b1, 0, d.length]), d]);
    const t10 = Buffer.concat([padAscii(this.vendor, 8), Buffer.from(`${this.product}:${this.serial}`, 'latin1')]);
    return Buffer.concat([
      desc(CODE_SET_BINARY, (ASSOCIATION_LOGICAL_UNIT << 4) | DESIGNATOR_NAA, this.naa),
      desc(CODE_SET_ASCII, (ASSOCIATION_LOGICAL_UNIT << 4) | DESIGNATOR_T10_VENDOR_ID, t10),
      desc(
        (SCSI_PROTOCOL_SRP << 4) | CODE_SET_BINARY,
        0x80 | (ASSOCIATION_TARGET_PORT << 4) | DESIGNATOR_RELATIVE_TARGET_PORT,
        Buffer.from([0, 0, 0, 1]),
      ),
    ]);
  }

  private blockLimits(): Buffer {
    const l = this.limits;
    const b = Buffer.alloc(0x3c);
    b[0] = this.wsnz ? 0x01 : 0;
    b.writeUInt16BE(l.optimalTransferLengthGranularity, 2);
    b.writeUInt32BE(l.maxTransferLength, 4);
    b.writeUInt32BE(l.optimalTransferLength, 8);
    b.writeUInt32BE(l.maxUnmapLbaCount, 16);
    b.writeUInt32BE(l.maxUnmapBlockDescriptorCount, 20);
    b.writeUInt32BE(l.optimalUnmapGranularity, 24);
    if (l.unmapGranularityAlignment !== undefined)
      b.writeUInt32BE((0x80000000 | l.unmapGranularityAlignment) >>> 0, 28);
    b.writeBigUInt64BE(BigInt(l.maxWriteSameLength), 32);
    return b;
  }

  private lbpPage(): Buffer {
    const p = this.provisioning;
    const b = Buffer.alloc(4);
    b[1] =
      (p.lbpu ? 0x80 : 0) |
      (p.lbpws ? 0x40 : 0) |
      (p.lbpws10 ? 0x20 : 0) |
      (p.lbprz ? 0x04 : 0) |
      (p.ancSup ? 0x02 : 0);
    b[2] = p.lbpme ? 0x02 : 0; /* PROVISIONING TYPE: thin */
    return b;
  }

  private readCapacity16(): Buffer {
    const b = Buffer.alloc(32);
    b.writeBigUInt64BE(BigInt(this.blocks - 1), 0);
    b.writeUInt32BE(this.blockSize, 8);
    b[13] = this.physicalBlockExponent & 0x0f;
    b[14] = (this.provisioning.lbpme ? 0x80 : 0) | (this.provisioning.lbprz ? 0x40 : 0);
    return b;
  }

  private unmap(cdb: Buffer, dataOut: Buffer | undefined, entry: RamLunLogEntry): Reply {
    this.needCdb(cdb, 10);
    if (!this.provisioning.lbpme || !this.provisioning.lbpu) {
      throw new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, 0);
    }
    if ((cdb[1]! & 0x01) !== 0 && !this.provisioning.ancSup) throw invalidField(1);
    const pll = cdb.readUInt16BE(7);
    entry.descriptors = [];
    if (pll === 0) return { status: SAM_STAT_GOOD };
    if (pll < 8 || !dataOut || dataOut.length < pll) {
      throw new CheckCondition(ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH_ERROR, 0);
    }
    const bddl = dataOut.readUInt16BE(2);
    if (8 + bddl > pll) throw new CheckCondition(ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH_ERROR, 0);
    const count = Math.floor(bddl / 16);
    const l = this.limits;
    if (l.maxUnmapBlockDescriptorCount !== 0xffffffff && count > l.maxUnmapBlockDescriptorCount) {
      throw invalidParam(2);
    }
    let total = 0;
    for (let i = 0; i < count; i++) {
      const d = { lba: dataOut.readBigUInt64BE(8 + 16 * i), blocks: dataOut.readUInt32BE(16 + 16 * i) };
      entry.descriptors.push(d);
      total += d.blocks;
    }
    if (l.maxUnmapLbaCount !== 0xffffffff && total > l.maxUnmapLbaCount) throw invalidParam(8);
    for (const d of entry.descriptors) this.checkRange(d.lba, d.blocks);
    this.checkWritable();
    /* Only whole granules are unmapped (SBC-3 4.7.3.4 lets a device skip partial ones). */
    const g = Math.max(1, l.optimalUnmapGranularity);
    const a = l.unmapGranularityAlignment ?? 0;
    for (const d of entry.descriptors) {
      const start = Number(d.lba);
      const end = start + d.blocks;
      let s = start + ((((a - start) % g) + g) % g);
      for (; s + g <= end; s += g) this.unmapBlocks(s, g);
    }
    return { status: SAM_STAT_GOOD };
  }

  private unmapBlocks(lba: number, n: number): void {
    this.mapped.fill(0, lba, lba + n);
    this.data.fill(this.unmappedFill(), lba * this.blockSize, (lba + n) * this.blockSize);
  }

  private writeSame16(cdb: Buffer, dataOut: Buffer | undefined, entry: RamLunLogEntry): Reply {
    if (!this.writeSame) throw new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_COMMAND_OPERATION_CODE, 0);
    this.needCdb(cdb, 16);
    const unmap = (cdb[1]! & 0x08) !== 0;
    const ndob = (cdb[1]! & 0x01) !== 0;
    const lba = cdb.readBigUInt64BE(2);
    let n = cdb.readUInt32BE(10);
    Object.assign(entry, { lba, blocks: n, unmap, ndob });
    if ((cdb[1]! & 0xe6) !== 0) throw invalidField(1); /* WRPROTECT, obsolete PBDATA/LBDATA */
    if ((cdb[1]! & 0x10) !== 0 && !this.provisioning.ancSup) throw invalidField(1);
    if (unmap && !(this.provisioning.lbpme && this.provisioning.lbpws)) throw invalidField(1);
    if (ndob && !this.ndob) throw invalidField(1);
    if (n === 0) {
      if (this.wsnz) throw invalidField(10);
      n = Math.max(0, this.blocks - Number(lba));
    }
    if (this.limits.maxWriteSameLength > 0 && n > this.limits.maxWriteSameLength) throw invalidField(10);
    const start = this.checkRange(lba, n);
    let block: Buffer;
    if (ndob) {
      block = Buffer.alloc(this.blockSize);
    } else {
      if (!dataOut || dataOut.length < this.blockSize) throw invalidField(10);
      block = dataOut.subarray(0, this.blockSize);
    }
    this.checkWritable();
    const zero = block.every((x) => x === 0);
    if (unmap && zero && this.provisioning.lbprz) {
      this.unmapBlocks(start, n);
    } else {
      for (let i = 0; i < n; i++) block.copy(this.data, (start + i) * this.blockSize);
      this.mapped.fill(1, start, start + n);
    }
    return { status: SAM_STAT_GOOD };
  }
}

/** A big-endian u32 of b at [at, at + 4), which the caller has checked is inside b. */
function u32At(b: Buffer, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

function invalidField(byte: number): CheckCondition {
  return new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB, 0, undefined, { byte, inCdb: true });
}

function invalidParam(byte: number): CheckCondition {
  return new CheckCondition(ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_PARAMETER_LIST, 0, undefined, { byte, inCdb: false });
}
