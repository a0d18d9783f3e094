/**
 * CDB builders (SPC-4 r37, SBC-3 r35) and SAM LUN encoding.
 *
 * Every builder is a pure function returning a freshly allocated Buffer; arguments are range
 * checked and a RangeError names the field that does not fit. Field layouts are cited per builder
 * (table numbers of SBC-3 r35 / SPC-4 r37).
 */

import {
  INQUIRY,
  MODE_PC_CURRENT,
  MODE_SENSE,
  MODE_SENSE_10,
  READ_16,
  REPORT_LUNS,
  SYNCHRONIZE_CACHE,
  SAI_READ_CAPACITY_16,
  SERVICE_ACTION_IN_16,
  SYNCHRONIZE_CACHE_16,
  TEST_UNIT_READY,
  UNMAP,
  WRITE_16,
  WRITE_SAME_16,
} from './scsi-constants.js';

const U32_MAX = 0xffffffff;
const U64_MAX = 0xffffffffffffffffn;

function checkU(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) {
    throw new RangeError(`${name} ${v} out of range 0..${max}`);
  }
}

function checkLba(lba: bigint): void {
  if (lba < 0n || lba > U64_MAX) throw new RangeError(`lba ${lba} out of range 0..2^64-1`);
}

/* ------------------------------------------------------------------------------------------ */
/* SAM LUN encoding (SAM-5 4.7).                                                               */
/* ------------------------------------------------------------------------------------------ */

/** Largest LUN number single-level addressing can carry (flat space addressing, 14 bits). */
export const MAX_SINGLE_LEVEL_LUN = 0x3fff;

/** A SAM LUN that is not a single-level peripheral or flat-space address. */
export class LunEncodingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LunEncodingError';
  }
}

/**
 * Encode a LUN number as an 8-byte SAM LUN (big-endian u64 as it goes on the wire).
 * 0..255 use peripheral device addressing (byte 0 = 00h, byte 1 = LUN), as Linux and LIO do;
 * 256..16383 use flat space addressing (byte 0 = 40h | LUN[13:8], byte 1 = LUN[7:0]).
 */
export function lunToSam(lun: number): bigint {
  checkU('lun', lun, MAX_SINGLE_LEVEL_LUN);
  const first = lun < 256 ? lun : 0x4000 | lun;
  return BigInt(first) << 48n;
}

/**
 * Decode an 8-byte SAM LUN back to a LUN number. Accepts single-level peripheral device addressing
 * (bus identifier 0) and flat space addressing with the second to fourth levels zero; anything
 * else (multi-level, logical unit / extended addressing) throws LunEncodingError.
 */
export function samToLun(sam: bigint): number {
  if (sam < 0n || sam > U64_MAX) throw new LunEncodingError(`SAM LUN ${sam} is not a u64`);
  if ((sam & 0xffffffffffffn) !== 0n) {
    throw new LunEncodingError(`SAM LUN 0x${sam.toString(16).padStart(16, '0')} is multi-level`);
  }
  const first = Number(sam >> 48n);
  const method = first >> 14;
  if (method === 0) {
    if ((first & 0x3f00) !== 0) {
      throw new LunEncodingError(
        `SAM LUN 0x${sam.toString(16).padStart(16, '0')} addresses bus ${(first >> 8) & 0x3f}, not a single-level LUN`,
      );
    }
    return first & 0xff;
  }
  if (method === 1) return first & 0x3fff;
  throw new LunEncodingError(
    `SAM LUN 0x${sam.toString(16).padStart(16, '0')} uses address method ${method}, not peripheral or flat`,
  );
}

/** The 8 wire bytes of a SAM LUN. */
export function samLunBytes(sam: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt.asUintN(64, sam));
  return b;
}

/* ------------------------------------------------------------------------------------------ */
/* SPC-4 commands.                                                                             */
/* ------------------------------------------------------------------------------------------ */

/** TEST UNIT READY (SPC-4 6.47): six zero bytes. */
export function buildTestUnitReady(): Buffer {
  const cdb = Buffer.alloc(6);
  cdb[0] = TEST_UNIT_READY;
  return cdb;
}

/**
 * INQUIRY (SPC-4 6.6, table 142). Without `page` asks for standard INQUIRY data (EVPD 0, page
 * code 0); with `page` asks for that VPD page (EVPD 1). allocationLength 0..65535.
 */
export function buildInquiry(allocationLength: number, page?: number): Buffer {
  checkU('allocationLength', allocationLength, 0xffff);
  const cdb = Buffer.alloc(6);
  cdb[0] = INQUIRY;
  if (page !== undefined) {
    checkU('page', page, 0xff);
    cdb[1] = 0x01; /* EVPD */
    cdb[2] = page;
  }
  cdb.writeUInt16BE(allocationLength, 3);
  return cdb;
}

/**
 * MODE SENSE(6) (SPC-4 6.11, table 151): byte 1 DBD bit 3; byte 2 PC (bits 7-6) and PAGE CODE
 * (5-0); byte 3 SUBPAGE CODE; byte 4 ALLOCATION LENGTH. What Linux sd sends to read the WP bit
 * (sd_read_write_protect_flag(): page 3Fh, 4 bytes). DBD clear by default, as sd sends it.
 */
export function buildModeSense6(
  page: number,
  allocationLength: number,
  opts: { subpage?: number; pc?: number; dbd?: boolean } = {},
): Buffer {
  checkU('page', page, 0x3f);
  checkU('allocationLength', allocationLength, 0xff);
  const pc = opts.pc ?? MODE_PC_CURRENT;
  checkU('pc', pc, 3);
  const cdb = Buffer.alloc(6);
  cdb[0] = MODE_SENSE;
  cdb[1] = opts.dbd === true ? 0x08 : 0;
  cdb[2] = (pc << 6) | page;
  cdb[3] = opts.subpage ?? 0;
  cdb[4] = allocationLength;
  return cdb;
}

/**
 * MODE SENSE(10) (SPC-4 6.12, table 154): byte 1 LLBAA bit 4, DBD bit 3; byte 2 PC (bits 7-6) and
 * PAGE CODE (5-0); byte 3 SUBPAGE CODE; 7..8 ALLOCATION LENGTH. DBD set by default: no block
 * descriptors, only the mode pages.
 */
export function buildModeSense10(
  page: number,
  allocationLength: number,
  opts: { subpage?: number; pc?: number; dbd?: boolean } = {},
): Buffer {
  checkU('page', page, 0x3f);
  checkU('allocationLength', allocationLength, 0xffff);
  const pc = opts.pc ?? MODE_PC_CURRENT;
  checkU('pc', pc, 3);
  const cdb = Buffer.alloc(10);
  cdb[0] = MODE_SENSE_10;
  cdb[1] = opts.dbd === false ? 0 : 0x08;
  cdb[2] = (pc << 6) | page;
  cdb[3] = opts.subpage ?? 0;
  cdb.writeUInt16BE(allocationLength, 7);
  return cdb;
}

/**
 * REPORT LUNS (SPC-4 6.33, table 190). selectReport 0 = all LUNs except well-known ones.
 * allocationLength must be at least 16 (SPC-4), at most 2^32-1.
 */
export function buildReportLuns(allocationLength: number, selectReport = 0): Buffer {
  checkU('allocationLength', allocationLength, U32_MAX);
  if (allocationLength < 16) throw new RangeError(`allocationLength ${allocationLength} below 16`);
  checkU('selectReport', selectReport, 0xff);
  const cdb = Buffer.alloc(12);
  cdb[0] = REPORT_LUNS;
  cdb[2] = selectReport;
  cdb.writeUInt32BE(allocationLength, 6);
  return cdb;
}

/* ------------------------------------------------------------------------------------------ */
/* SBC-3 commands.                                                                             */
/* ------------------------------------------------------------------------------------------ */

/** READ CAPACITY(16) (SBC-3 5.16, table 63): SERVICE ACTION IN(16) / 10h. */
export function buildReadCapacity16(allocationLength = 32): Buffer {
  checkU('allocationLength', allocationLength, U32_MAX);
  const cdb = Buffer.alloc(16);
  cdb[0] = SERVICE_ACTION_IN_16;
  cdb[1] = SAI_READ_CAPACITY_16;
  cdb.writeUInt32BE(allocationLength, 10);
  return cdb;
}

export interface RwFlags {
  /** Force Unit Access: complete only when the data is on non-volatile medium. */
  fua?: boolean;
  /** Disable Page Out: hint that the data need not be cached. */
  dpo?: boolean;
}

function rw16(opcode: number, lba: bigint, blocks: number, flags: RwFlags): Buffer {
  checkLba(lba);
  checkU('blocks', blocks, U32_MAX);
  const cdb = Buffer.alloc(16);
  cdb[0] = opcode;
  cdb[1] = (flags.dpo ? 0x10 : 0) | (flags.fua ? 0x08 : 0);
  cdb.writeBigUInt64BE(lba, 2);
  cdb.writeUInt32BE(blocks, 10);
  return cdb;
}

/**
 * READ(16) / WRITE(16) written in place into a caller's 16-byte CDB buffer (the data path reuses
 * one per request): the layout of buildRead16() / buildWrite16(), the LBA a safe integer written
 * as two 32-bit halves (no bigint).
 */
export function writeRw16(
  cdb: Buffer,
  opcode: typeof READ_16 | typeof WRITE_16,
  lba: number,
  blocks: number,
  flags?: RwFlags,
): Buffer {
  if (cdb.length !== 16) throw new RangeError(`CDB buffer of ${cdb.length} bytes, READ(16)/WRITE(16) need 16`);
  checkU('lba', lba, Number.MAX_SAFE_INTEGER);
  checkU('blocks', blocks, U32_MAX);
  cdb[0] = opcode;
  cdb[1] = flags ? (flags.dpo ? 0x10 : 0) | (flags.fua ? 0x08 : 0) : 0;
  cdb.writeUInt32BE(Math.floor(lba / 0x100000000), 2);
  cdb.writeUInt32BE(lba >>> 0, 6);
  cdb.writeUInt32BE(blocks, 10);
  cdb[14] = 0; // GROUP NUMBER
  cdb[15] = 0; // CONTROL
  return cdb;
}

/** READ(16) (SBC-3 5.13, table 50): byte 1 RDPROTECT=0, DPO bit 4, FUA bit 3; LBA 2..9; length 10..13. */
export function buildRead16(lba: bigint, blocks: number, flags: RwFlags = {}): Buffer {
  return rw16(READ_16, lba, blocks, flags);
}

/** WRITE(16) (SBC-3 5.40, table 100): byte 1 WRPROTECT=0, DPO bit 4, FUA bit 3; LBA 2..9; length 10..13. */
export function buildWrite16(lba: bigint, blocks: number, flags: RwFlags = {}): Buffer {
  return rw16(WRITE_16, lba, blocks, flags);
}

/**
 * SYNCHRONIZE CACHE(16) (SBC-3 5.23, table 78): IMMED bit 1; LBA 2..9; NUMBER OF LOGICAL BLOCKS
 * 10..13 (0 = from lba to the end of the medium). Defaults flush the whole cache.
 */
export function buildSynchronizeCache16(lba = 0n, blocks = 0, immed = false): Buffer {
  checkLba(lba);
  checkU('blocks', blocks, U32_MAX);
  const cdb = Buffer.alloc(16);
  cdb[0] = SYNCHRONIZE_CACHE_16;
  cdb[1] = immed ? 0x02 : 0;
  cdb.writeBigUInt64BE(lba, 2);
  cdb.writeUInt32BE(blocks, 10);
  return cdb;
}

/**
 * SYNCHRONIZE CACHE(10) (SBC-3 5.22, table 77): IMMED bit 1; LBA 2..5; NUMBER OF LOGICAL BLOCKS
 * 7..8 (0 = to the end of the medium). For LUs without the 16-byte form (Linux sd uses this one).
 */
export function buildSynchronizeCache10(lba = 0, blocks = 0, immed = false): Buffer {
  checkU('lba', lba, 0xffffffff);
  checkU('blocks', blocks, 0xffff);
  const cdb = Buffer.alloc(10);
  cdb[0] = SYNCHRONIZE_CACHE;
  cdb[1] = immed ? 0x02 : 0;
  cdb.writeUInt32BE(lba, 2);
  cdb.writeUInt16BE(blocks, 7);
  return cdb;
}

export interface WriteSameFlags {
  /** UNMAP bit: the device server may unmap the blocks if they then read back as the data. */
  unmap?: boolean;
  /** ANCHOR bit (only with unmap). */
  anchor?: boolean;
  /** NDOB (SBC-3 r35): no Data-Out buffer, the data is zeroes; the command carries no data. */
  ndob?: boolean;
}

/**
 * WRITE SAME(16) (SBC-3 5.43, table 112): byte 1 WRPROTECT=0, ANCHOR bit 4, UNMAP bit 3, NDOB
 * bit 0; LBA 2..9; NUMBER OF LOGICAL BLOCKS 10..13 (0 = to the end of the medium unless WSNZ).
 */
export function buildWriteSame16(lba: bigint, blocks: number, flags: WriteSameFlags = {}): Buffer {
  checkLba(lba);
  checkU('blocks', blocks, U32_MAX);
  const cdb = Buffer.alloc(16);
  cdb[0] = WRITE_SAME_16;
  cdb[1] = (flags.anchor ? 0x10 : 0) | (flags.unmap ? 0x08 : 0) | (flags.ndob ? 0x01 : 0);
  cdb.writeBigUInt64BE(lba, 2);
  cdb.writeUInt32BE(blocks, 10);
  return cdb;
}

/** One UNMAP block descriptor: a range of logical blocks. */
export interface UnmapDescriptor {
  lba: bigint;
  blocks: number;
}

/** Bytes of the UNMAP parameter list header and of one block descriptor (SBC-3 tables 95, 96). */
export const UNMAP_HEADER_LEN = 8;
export const UNMAP_DESCRIPTOR_LEN = 16;

/**
 * UNMAP (SBC-3 5.28, table 94): ANCHOR bit 0 of byte 1; PARAMETER LIST LENGTH 7..8. Returns the
 * CDB and its parameter list (data-out): header with UNMAP DATA LENGTH (n - 1) and UNMAP BLOCK
 * DESCRIPTOR DATA LENGTH (n - 7), then 16-byte descriptors (LBA 0..7, NUMBER OF BLOCKS 8..11).
 */
export function buildUnmap(
  descriptors: readonly UnmapDescriptor[],
  anchor = false,
): { cdb: Buffer; parameterList: Buffer } {
  const len = UNMAP_HEADER_LEN + UNMAP_DESCRIPTOR_LEN * descriptors.length;
  if (len > 0xffff) throw new RangeError(`${descriptors.length} UNMAP descriptors do not fit in one parameter list`);
  const pl = Buffer.alloc(len);
  pl.writeUInt16BE(len - 2, 0);
  pl.writeUInt16BE(len - UNMAP_HEADER_LEN, 2);
  descriptors.forEach((d, i) => {
    checkLba(d.lba);
    checkU('descriptor blocks', d.blocks, U32_MAX);
    const o = UNMAP_HEADER_LEN + i * UNMAP_DESCRIPTOR_LEN;
    pl.writeBigUInt64BE(d.lba, o);
    pl.writeUInt32BE(d.blocks, o + 8);
  });
  const cdb = Buffer.alloc(10);
  cdb[0] = UNMAP;
  cdb[1] = anchor ? 0x01 : 0;
  cdb.writeUInt16BE(len, 7);
  return { cdb, parameterList: pl };
}
