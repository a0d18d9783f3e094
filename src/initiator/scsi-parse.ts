/**
 * Parsers for what a SCSI target sends back: standard INQUIRY data, VPD pages 00h/80h/83h/B0h/B2h,
 * READ CAPACITY(16) parameter data, REPORT LUNS parameter data and sense data (fixed and
 * descriptor formats).
 *
 * Contract: the input is untrusted. Every parser reads only inside the Buffer it is given, never
 * throws anything but ScsiParseError, and tolerates data truncated by the allocation length where
 * the spec allows it (then says so with `truncated`). Results hold copies, never views into the
 * caller's buffer, so they stay valid after the command's buffers are reused.
 */

import {
  ASSOCIATION_LOGICAL_UNIT,
  CACHING_MODE_PAGE,
  CACHING_RCD,
  CACHING_WCE,
  MODE_DSP_DPOFUA,
  MODE_DSP_WP,
  CODE_SET_ASCII,
  CODE_SET_UTF8,
  DESIGNATOR_NAA,
  ILLEGAL_REQUEST,
  NOT_READY,
  NO_SENSE,
  PQ_CONNECTED,
  SENSE_DESC_BLOCK_COMMANDS,
  SENSE_DESC_COMMAND_SPECIFIC,
  SENSE_DESC_CURRENT,
  SENSE_DESC_DEFERRED,
  SENSE_DESC_FIELD_REPLACEABLE_UNIT,
  SENSE_DESC_INFORMATION,
  SENSE_DESC_SENSE_KEY_SPECIFIC,
  SENSE_FIXED_CURRENT,
  SENSE_FIXED_DEFERRED,
  VPD_BLOCK_LIMITS,
  VPD_DEVICE_IDENTIFICATION,
  VPD_LOGICAL_BLOCK_PROVISIONING,
  VPD_SUPPORTED_PAGES,
  VPD_UNIT_SERIAL_NUMBER,
  nameOfSenseKey,
  nameOfVpdPage,
  scsiSenseText,
} from './scsi-constants.js';

/** Why some response data could not be parsed. */
export type ScsiParseErrorCode = 'short' | 'bad-format' | 'wrong-page' | 'overrun';

/** The only error the parsers throw. */
export class ScsiParseError extends Error {
  constructor(
    message: string,
    readonly code: ScsiParseErrorCode,
  ) {
    super(message);
    this.name = 'ScsiParseError';
  }
}

function need(buf: Uint8Array, len: number, what: string): void {
  if (buf.length < len) throw new ScsiParseError(`${what}: ${buf.length} bytes, need ${len}`, 'short');
}

/** Printable ASCII of a field: control and non-ASCII bytes become '?', surrounding spaces/NULs trimmed. */
function asciiField(buf: Uint8Array, start: number, end: number): string {
  const s = Math.min(start, buf.length);
  const e = Math.min(end, buf.length);
  let out = '';
  for (let i = s; i < e; i++) {
    const c = buf[i]!;
    out += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : c === 0 ? ' ' : '?';
  }
  return out.trim();
}

function u16(buf: Uint8Array, o: number): number {
  return (buf[o]! << 8) | buf[o + 1]!;
}

function u32(buf: Uint8Array, o: number): number {
  return ((buf[o]! << 24) >>> 0) + ((buf[o + 1]! << 16) | (buf[o + 2]! << 8) | buf[o + 3]!);
}

function u64(buf: Uint8Array, o: number): bigint {
  return (BigInt(u32(buf, o)) << 32n) | BigInt(u32(buf, o + 4));
}

/* ------------------------------------------------------------------------------------------ */
/* Standard INQUIRY data (SPC-4 6.6.2, table 144).                                             */
/* ------------------------------------------------------------------------------------------ */

export interface StandardInquiry {
  peripheralQualifier: number;
  peripheralDeviceType: number;
  /** RMB: removable medium. */
  removable: boolean;
  /** VERSION: 5 = SPC-3, 6 = SPC-4, 7 = SPC-5. */
  version: number;
  responseDataFormat: number;
  hisup: boolean;
  /** TPGS: asymmetric logical unit access support (0..3). */
  tpgs: number;
  /** PROTECT: the LU supports protection information. */
  protect: boolean;
  /** CMDQUE: command queuing supported. */
  cmdQue: boolean;
  vendor: string;
  product: string;
  revision: string;
  /** Fewer bytes than ADDITIONAL LENGTH + 5 were returned (allocation length too small). */
  truncated: boolean;
}

/** Parse standard INQUIRY data; at least the 5-byte header must be present. */
export function parseStandardInquiry(buf: Uint8Array): StandardInquiry {
  need(buf, 5, 'standard INQUIRY data');
  const total = buf[4]! + 5;
  const d = buf.subarray(0, Math.min(total, buf.length));
  const byte = (i: number): number => (i < d.length ? d[i]! : 0);
  return {
    peripheralQualifier: d[0]! >> 5,
    peripheralDeviceType: d[0]! & 0x1f,
    removable: (d[1]! & 0x80) !== 0,
    version: d[2]!,
    responseDataFormat: d[3]! & 0x0f,
    hisup: (d[3]! & 0x10) !== 0,
    tpgs: (byte(5) >> 4) & 0x3,
    protect: (byte(5) & 0x01) !== 0,
    cmdQue: (byte(7) & 0x02) !== 0,
    vendor: asciiField(d, 8, 16),
    product: asciiField(d, 16, 32),
    revision: asciiField(d, 32, 36),
    truncated: buf.length < total,
  };
}

/** True when INQUIRY says a logical unit is actually connected at this LUN. */
export function inquiryLunPresent(inq: StandardInquiry): boolean {
  return inq.peripheralQualifier === PQ_CONNECTED;
}

/* ------------------------------------------------------------------------------------------ */
/* VPD pages.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/** The common 4-byte VPD header and the page body (bounded by PAGE LENGTH and by the buffer). */
export interface VpdPage {
  peripheralQualifier: number;
  peripheralDeviceType: number;
  pageCode: number;
  /** PAGE LENGTH as the target states it (bytes after the 4-byte header). */
  pageLength: number;
  /** Body bytes actually present (a view; parsers copy what they keep). */
  body: Uint8Array;
  /** The buffer held fewer bytes than 4 + PAGE LENGTH: ask again with a larger allocation length. */
  truncated: boolean;
}

/** Split a VPD page into header and body; throws 'wrong-page' if it is not `expectedPage`. */
export function parseVpdHeader(buf: Uint8Array, expectedPage?: number): VpdPage {
  need(buf, 4, 'VPD page header');
  const pageCode = buf[1]!;
  if (expectedPage !== undefined && pageCode !== expectedPage) {
    throw new ScsiParseError(
      `expected ${nameOfVpdPage(expectedPage)}, target returned ${nameOfVpdPage(pageCode)}`,
      'wrong-page',
    );
  }
  const pageLength = u16(buf, 2);
  const end = Math.min(buf.length, 4 + pageLength);
  return {
    peripheralQualifier: buf[0]! >> 5,
    peripheralDeviceType: buf[0]! & 0x1f,
    pageCode,
    pageLength,
    body: buf.subarray(4, end),
    truncated: buf.length < 4 + pageLength,
  };
}

/** Bytes a VPD page needs in full (4 + PAGE LENGTH), to re-ask with that allocation length. */
export function vpdFullLength(buf: Uint8Array): number {
  need(buf, 4, 'VPD page header');
  return 4 + u16(buf, 2);
}

/** Supported VPD Pages page (SPC-4 7.8.16): the list of page codes. */
export function parseSupportedVpdPages(buf: Uint8Array): { pages: number[]; truncated: boolean } {
  const p = parseVpdHeader(buf, VPD_SUPPORTED_PAGES);
  return { pages: Array.from(p.body), truncated: p.truncated };
}

/** Unit Serial Number page (SPC-4 7.8.17): PRODUCT SERIAL NUMBER, ASCII, trimmed. */
export function parseUnitSerialNumber(buf: Uint8Array): { serial: string; truncated: boolean } {
  const p = parseVpdHeader(buf, VPD_UNIT_SERIAL_NUMBER);
  return { serial: asciiField(p.body, 0, p.body.length), truncated: p.truncated };
}

/** One designation descriptor of the Device Identification page (SPC-4 7.8.6.1, table 459). */
export interface Designator {
  /** PROTOCOL IDENTIFIER (meaningful only when piv). */
  protocolIdentifier: number;
  /** CODE SET: 1 binary, 2 ASCII, 3 UTF-8. */
  codeSet: number;
  /** PIV: protocolIdentifier is valid (association target port / target device only). */
  piv: boolean;
  /** ASSOCIATION: 0 logical unit, 1 target port, 2 target device. */
  association: number;
  /** DESIGNATOR TYPE: 3 NAA, 1 T10 vendor ID, 2 EUI-64, 8 SCSI name string, ... */
  designatorType: number;
  /** DESIGNATOR bytes (a copy). */
  designator: Buffer;
}

/** Text form of a designator: text code sets as text, binary as lower-case hex. */
export function designatorText(d: Designator): string {
  if (d.codeSet === CODE_SET_ASCII || d.codeSet === CODE_SET_UTF8) {
    return asciiField(d.designator, 0, d.designator.length);
  }
  return d.designator.toString('hex');
}

/**
 * Device Identification page (SPC-4 7.8.6). A descriptor whose DESIGNATOR LENGTH runs past PAGE
 * LENGTH is malformed ('overrun'); if the buffer was merely truncated, only complete descriptors
 * are returned and `truncated` is set.
 */
export function parseDeviceIdentification(buf: Uint8Array): { designators: Designator[]; truncated: boolean } {
  const p = parseVpdHeader(buf, VPD_DEVICE_IDENTIFICATION);
  const designators: Designator[] = [];
  let o = 0;
  while (o < p.pageLength) {
    if (o + 4 > p.pageLength) {
      throw new ScsiParseError(`designation descriptor header at ${4 + o} runs past PAGE LENGTH`, 'overrun');
    }
    if (o + 4 > p.body.length) break; /* truncated by the allocation length */
    const len = p.body[o + 3]!;
    if (o + 4 + len > p.pageLength) {
      throw new ScsiParseError(
        `designation descriptor at ${4 + o} (length ${len}) runs past PAGE LENGTH ${p.pageLength}`,
        'overrun',
      );
    }
    if (o + 4 + len > p.body.length) break;
    const b0 = p.body[o]!;
    const b1 = p.body[o + 1]!;
    designators.push({
      protocolIdentifier: b0 >> 4,
      codeSet: b0 & 0x0f,
      piv: (b1 & 0x80) !== 0,
      association: (b1 >> 4) & 0x3,
      designatorType: b1 & 0x0f,
      designator: Buffer.from(p.body.subarray(o + 4, o + 4 + len)),
    });
    o += 4 + len;
  }
  return { designators, truncated: p.truncated };
}

/** The NAA designator of the logical unit, if any (what Linux shows as wwid "naa.<hex>"). */
export function findLuNaa(designators: readonly Designator[]): Designator | undefined {
  return designators.find((d) => d.association === ASSOCIATION_LOGICAL_UNIT && d.designatorType === DESIGNATOR_NAA);
}

/** Block Limits page (SBC-3 6.5.3, table 209). Counts are in logical blocks; 0 means "not reported". */
export interface BlockLimits {
  /** WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 is refused. */
  wsnz: boolean;
  maxCompareAndWriteLength: number;
  optimalTransferLengthGranularity: number;
  /** MAXIMUM TRANSFER LENGTH: largest READ/WRITE in blocks, 0 = no limit reported. */
  maxTransferLength: number;
  optimalTransferLength: number;
  maxPrefetchLength: number;
  /** MAXIMUM UNMAP LBA COUNT: total blocks one UNMAP may name; 0 = UNMAP unsupported, FFFFFFFFh = no limit. */
  maxUnmapLbaCount: number;
  /** MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT; 0 = UNMAP unsupported, FFFFFFFFh = no limit. */
  maxUnmapBlockDescriptorCount: number;
  /** OPTIMAL UNMAP GRANULARITY in blocks (0 = not reported). */
  optimalUnmapGranularity: number;
  /** UNMAP GRANULARITY ALIGNMENT, only meaningful when ugavalid. */
  unmapGranularityAlignment: number;
  ugavalid: boolean;
  /** MAXIMUM WRITE SAME LENGTH in blocks, 0 = not reported. */
  maxWriteSameLength: bigint;
  /** The page was shorter than the SBC-3 layout (old SBC-2 targets): missing fields are 0. */
  short: boolean;
  truncated: boolean;
}

/** Parse the Block Limits VPD page; fields beyond the returned bytes read as 0 (not reported). */
export function parseBlockLimits(buf: Uint8Array): BlockLimits {
  const p = parseVpdHeader(buf, VPD_BLOCK_LIMITS);
  /* Re-base the body onto a zero-filled page so absent fields are 0 without out-of-bounds reads. */
  const full = new Uint8Array(4 + 0x3c);
  full.set(p.body.subarray(0, 0x3c), 4);
  return {
    wsnz: (full[4]! & 0x01) !== 0,
    maxCompareAndWriteLength: full[5]!,
    optimalTransferLengthGranularity: u16(full, 6),
    maxTransferLength: u32(full, 8),
    optimalTransferLength: u32(full, 12),
    maxPrefetchLength: u32(full, 16),
    maxUnmapLbaCount: u32(full, 20),
    maxUnmapBlockDescriptorCount: u32(full, 24),
    optimalUnmapGranularity: u32(full, 28),
    ugavalid: (full[32]! & 0x80) !== 0,
    unmapGranularityAlignment: u32(full, 32) & 0x7fffffff,
    maxWriteSameLength: u64(full, 36),
    short: p.body.length < 0x3c,
    truncated: p.truncated,
  };
}

/** Logical Block Provisioning page (SBC-3 6.5.4, table 212). */
export interface LogicalBlockProvisioning {
  thresholdExponent: number;
  /** LBPU: UNMAP supported. */
  lbpu: boolean;
  /** LBPWS: WRITE SAME(16) with UNMAP supported. */
  lbpws: boolean;
  /** LBPWS10: WRITE SAME(10) with UNMAP supported. */
  lbpws10: boolean;
  /** LBPRZ (SBC-4: 3 bits, 001b = unmapped blocks read as zero; SBC-3: 1 bit). Non-zero means zeroes. */
  lbprz: number;
  /** ANC_SUP: ANCHOR bit supported. */
  ancSup: boolean;
  /** DP: a provisioning group descriptor is present. */
  dp: boolean;
  /** PROVISIONING TYPE: 0 not reported / full, 1 resource provisioned, 2 thin provisioned. */
  provisioningType: number;
}

/** Parse the Logical Block Provisioning VPD page (needs bytes 4..6). */
export function parseLogicalBlockProvisioning(buf: Uint8Array): LogicalBlockProvisioning {
  const p = parseVpdHeader(buf, VPD_LOGICAL_BLOCK_PROVISIONING);
  need(p.body, 2, 'Logical Block Provisioning VPD page body');
  const b5 = p.body[1]!;
  return {
    thresholdExponent: p.body[0]!,
    lbpu: (b5 & 0x80) !== 0,
    lbpws: (b5 & 0x40) !== 0,
    lbpws10: (b5 & 0x20) !== 0,
    lbprz: (b5 >> 2) & 0x7,
    ancSup: (b5 & 0x02) !== 0,
    dp: (b5 & 0x01) !== 0,
    provisioningType: p.body.length > 2 ? p.body[2]! & 0x07 : 0,
  };
}

/* ------------------------------------------------------------------------------------------ */
/* READ CAPACITY(16) parameter data (SBC-3 5.16.2, table 64).                                  */
/* ------------------------------------------------------------------------------------------ */

export interface ReadCapacity16 {
  /** RETURNED LOGICAL BLOCK ADDRESS: the last LBA. */
  lastLba: bigint;
  /** LOGICAL BLOCK LENGTH IN BYTES. */
  blockLength: number;
  /** Number of logical blocks (lastLba + 1). */
  blockCount: bigint;
  /** PROT_EN and P_TYPE (protection type = P_TYPE + 1 when enabled, else 0). */
  protectionType: number;
  /** P_I_EXPONENT. */
  piExponent: number;
  /** LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT. */
  physicalBlockExponent: number;
  /** LBPME: logical block provisioning management enabled (thin provisioned). */
  lbpme: boolean;
  /** LBPRZ: unmapped blocks read as zeroes. */
  lbprz: boolean;
  /** LOWEST ALIGNED LOGICAL BLOCK ADDRESS. */
  lowestAlignedLba: number;
}

/** Parse READ CAPACITY(16) data; the first 16 bytes must be present, the rest is reserved. */
export function parseReadCapacity16(buf: Uint8Array): ReadCapacity16 {
  need(buf, 16, 'READ CAPACITY(16) data');
  const lastLba = u64(buf, 0);
  const b12 = buf[12]!;
  return {
    lastLba,
    blockLength: u32(buf, 8),
    blockCount: lastLba + 1n,
    protectionType: b12 & 0x01 ? ((b12 >> 1) & 0x7) + 1 : 0,
    piExponent: buf[13]! >> 4,
    physicalBlockExponent: buf[13]! & 0x0f,
    lbpme: (buf[14]! & 0x80) !== 0,
    lbprz: (buf[14]! & 0x40) !== 0,
    lowestAlignedLba: u16(buf, 14) & 0x3fff,
  };
}

/* ------------------------------------------------------------------------------------------ */
/* MODE SENSE(10) parameter data (SPC-4 7.5.5, table 443) and the caching mode page (SBC-3 6.4.5). */
/* ------------------------------------------------------------------------------------------ */

export interface ModePage {
  page: number;
  subpage: number;
  /** The page's parameters after its header (2 bytes, or 4 with SPF), as far as they were sent. */
  data: Buffer;
}

export interface ModeSense10 {
  /** MODE DATA LENGTH: bytes that follow it. */
  modeDataLength: number;
  /** DEVICE-SPECIFIC PARAMETER, WP bit. */
  writeProtected: boolean;
  /** DEVICE-SPECIFIC PARAMETER, DPOFUA bit: the LU supports the DPO and FUA bits. */
  dpoFua: boolean;
  pages: ModePage[];
  /** The data stops before MODE DATA LENGTH says (allocation length too small). */
  truncated: boolean;
}

/** Parse MODE SENSE(10) data: the 8-byte header, BLOCK DESCRIPTOR LENGTH bytes skipped, then pages. */
export function parseModeSense10(buf: Uint8Array): ModeSense10 {
  need(buf, 8, 'MODE SENSE(10) header');
  const modeDataLength = u16(buf, 0);
  const dsp = buf[3]!;
  const end = Math.min(buf.length, 2 + modeDataLength);
  return {
    modeDataLength,
    writeProtected: (dsp & MODE_DSP_WP) !== 0,
    dpoFua: (dsp & MODE_DSP_DPOFUA) !== 0,
    pages: modePages(buf, 8 + u16(buf, 6), end),
    truncated: buf.length < 2 + modeDataLength,
  };
}

/** The mode pages in buf[start, end) (a page cut by `end` keeps what was sent). */
function modePages(buf: Uint8Array, start: number, end: number): ModePage[] {
  const pages: ModePage[] = [];
  let off = start;
  while (off + 2 <= end) {
    const b0 = buf[off]!;
    const spf = (b0 & 0x40) !== 0;
    if (spf && off + 4 > end) break;
    const hdr = spf ? 4 : 2;
    const len = spf ? u16(buf, off + 2) : buf[off + 1]!;
    pages.push({
      page: b0 & 0x3f,
      subpage: spf ? buf[off + 1]! : 0,
      data: Buffer.from(buf.subarray(off + hdr, Math.min(end, off + hdr + len))),
    });
    off += hdr + len;
  }
  return pages;
}

/**
 * Parse MODE SENSE(6) data (SPC-4 7.5.5, table 443): the 4-byte header (MODE DATA LENGTH, MEDIUM
 * TYPE, DEVICE-SPECIFIC PARAMETER, BLOCK DESCRIPTOR LENGTH), block descriptors skipped, then pages.
 * The result has the MODE SENSE(10) shape.
 */
export function parseModeSense6(buf: Uint8Array): ModeSense10 {
  need(buf, 4, 'MODE SENSE(6) header');
  const modeDataLength = buf[0]!;
  const dsp = buf[2]!;
  const end = Math.min(buf.length, 1 + modeDataLength);
  return {
    modeDataLength,
    writeProtected: (dsp & MODE_DSP_WP) !== 0,
    dpoFua: (dsp & MODE_DSP_DPOFUA) !== 0,
    pages: modePages(buf, 4 + buf[3]!, end),
    truncated: buf.length < 1 + modeDataLength,
  };
}

export interface CachingPage {
  /** WCE: the LU may complete a write before the data is on the medium (a volatile write cache). */
  writeCacheEnabled: boolean;
  /** RCD: read cache disabled. */
  readCacheDisabled: boolean;
}

/** The caching mode page (08h) from MODE SENSE data; undefined if absent or cut before byte 2. */
export function findCachingPage(ms: ModeSense10): CachingPage | undefined {
  const p = ms.pages.find((x) => x.page === CACHING_MODE_PAGE && x.subpage === 0);
  if (!p || p.data.length < 1) return undefined;
  const b2 = p.data[0]!; // page byte 2 = first parameter byte
  return { writeCacheEnabled: (b2 & CACHING_WCE) !== 0, readCacheDisabled: (b2 & CACHING_RCD) !== 0 };
}

/* ------------------------------------------------------------------------------------------ */
/* REPORT LUNS parameter data (SPC-4 6.33.2, table 192).                                       */
/* ------------------------------------------------------------------------------------------ */

/** The 8-byte SAM LUNs listed, and whether the list was cut by the allocation length. */
export interface ReportLuns {
  luns: bigint[];
  /** LUN LIST LENGTH as stated (bytes). */
  listLength: number;
  /** Fewer LUNs present than LUN LIST LENGTH announces: ask again with 8 + listLength bytes. */
  truncated: boolean;
}

export function parseReportLuns(buf: Uint8Array): ReportLuns {
  need(buf, 8, 'REPORT LUNS data');
  const listLength = u32(buf, 0);
  if (listLength % 8 !== 0) {
    throw new ScsiParseError(`LUN LIST LENGTH ${listLength} is not a multiple of 8`, 'bad-format');
  }
  const avail = Math.min(listLength, buf.length - 8);
  const n = Math.floor(avail / 8);
  const luns: bigint[] = [];
  for (let i = 0; i < n; i++) luns.push(u64(buf, 8 + i * 8));
  return { luns, listLength, truncated: n * 8 < listLength };
}

/* ------------------------------------------------------------------------------------------ */
/* Sense data (SPC-4 4.5).                                                                     */
/* ------------------------------------------------------------------------------------------ */

/** SENSE KEY SPECIFIC field (SPC-4 4.5.2.4), decoded according to the sense key. */
export interface SenseKeySpecific {
  /** The 3 raw bytes as a 24-bit number (SKSV included). */
  raw: number;
  /** ILLEGAL REQUEST: which CDB or parameter list byte (and bit) is wrong. */
  fieldPointer?: { inCdb: boolean; bitPointer?: number; byte: number };
  /** NOT READY / NO SENSE: PROGRESS INDICATION, fraction of 65536 done. */
  progress?: number;
}

/** Sense data in one shape, whichever format the target used. */
export interface ScsiSense {
  format: 'fixed' | 'descriptor';
  responseCode: number;
  /** Deferred error (response codes 71h/73h): reports a failure of an earlier command. */
  deferred: boolean;
  key: number;
  asc: number;
  ascq: number;
  /** INFORMATION (fixed with VALID = 1, or the information descriptor with VALID = 1): e.g. the failing LBA. */
  info?: bigint;
  commandSpecific?: bigint;
  senseKeySpecific?: SenseKeySpecific;
  fru?: number;
  filemark: boolean;
  eom: boolean;
  ili: boolean;
  /** Descriptors of descriptor-format sense (copies), in order. */
  descriptors: { type: number; data: Buffer }[];
  /** "UNIT_ATTENTION: Capacity data has changed (2Ah/09h)". */
  text: string;
}

function decodeSks(b: Uint8Array, key: number): SenseKeySpecific | undefined {
  if ((b[0]! & 0x80) === 0) return undefined; /* SKSV = 0 */
  const raw = (b[0]! << 16) | (b[1]! << 8) | b[2]!;
  const sks: SenseKeySpecific = { raw };
  if (key === ILLEGAL_REQUEST) {
    sks.fieldPointer = {
      inCdb: (b[0]! & 0x40) !== 0,
      byte: u16(b, 1),
      ...((b[0]! & 0x08) !== 0 ? { bitPointer: b[0]! & 0x07 } : {}),
    };
  } else if (key === NOT_READY || key === NO_SENSE) {
    sks.progress = u16(b, 1);
  }
  return sks;
}

function senseText(key: number, asc: number, ascq: number): string {
  const h = (n: number): string => n.toString(16).padStart(2, '0').toUpperCase();
  return `${nameOfSenseKey(key)}: ${scsiSenseText(asc, ascq)} (${h(asc)}h/${h(ascq)}h)`;
}

/**
 * Parse sense data of either format. Like Linux scsi_normalize_sense(), fields past the bytes
 * present (or past ADDITIONAL SENSE LENGTH) read as 0; at least the bytes holding the sense key
 * must be there. Response codes other than 70h..73h throw 'bad-format'.
 */
export function parseSense(buf: Uint8Array): ScsiSense {
  need(buf, 1, 'sense data');
  const responseCode = buf[0]! & 0x7f;
  switch (responseCode) {
    case SENSE_FIXED_CURRENT:
    case SENSE_FIXED_DEFERRED:
      return parseFixedSense(buf, responseCode);
    case SENSE_DESC_CURRENT:
    case SENSE_DESC_DEFERRED:
      return parseDescriptorSense(buf, responseCode);
    default:
      throw new ScsiParseError(`sense RESPONSE CODE 0x${responseCode.toString(16)} is not 70h..73h`, 'bad-format');
  }
}

function parseFixedSense(buf: Uint8Array, responseCode: number): ScsiSense {
  need(buf, 3, 'fixed-format sense data');
  /* Bytes present and announced: 8 + ADDITIONAL SENSE LENGTH, bounded by the buffer. */
  const len = buf.length > 7 ? Math.min(buf.length, 8 + buf[7]!) : buf.length;
  const d = new Uint8Array(18);
  d.set(buf.subarray(0, Math.min(len, 18)));
  const key = d[2]! & 0x0f;
  const valid = (d[0]! & 0x80) !== 0;
  const sense: ScsiSense = {
    format: 'fixed',
    responseCode,
    deferred: responseCode === SENSE_FIXED_DEFERRED,
    key,
    asc: d[12]!,
    ascq: d[13]!,
    filemark: (d[2]! & 0x80) !== 0,
    eom: (d[2]! & 0x40) !== 0,
    ili: (d[2]! & 0x20) !== 0,
    descriptors: [],
    text: senseText(key, d[12]!, d[13]!),
  };
  if (valid && len >= 7) sense.info = BigInt(u32(d, 3));
  if (len >= 12) {
    const cs = u32(d, 8);
    if (cs !== 0) sense.commandSpecific = BigInt(cs);
  }
  if (len >= 15 && d[14] !== 0) sense.fru = d[14]!;
  if (len >= 18) {
    const sks = decodeSks(d.subarray(15, 18), key);
    if (sks) sense.senseKeySpecific = sks;
  }
  return sense;
}

function parseDescriptorSense(buf: Uint8Array, responseCode: number): ScsiSense {
  need(buf, 2, 'descriptor-format sense data');
  const key = buf[1]! & 0x0f;
  const asc = buf.length > 2 ? buf[2]! : 0;
  const ascq = buf.length > 3 ? buf[3]! : 0;
  const sense: ScsiSense = {
    format: 'descriptor',
    responseCode,
    deferred: responseCode === SENSE_DESC_DEFERRED,
    key,
    asc,
    ascq,
    filemark: false,
    eom: false,
    ili: false,
    descriptors: [],
    text: senseText(key, asc, ascq),
  };
  if (buf.length <= 8) return sense;
  const end = Math.min(buf.length, 8 + buf[7]!);
  let o = 8;
  /* A descriptor cut short by the buffer/length ends the walk: what is complete is kept. */
  while (o + 2 <= end) {
    const type = buf[o]!;
    const alen = buf[o + 1]!;
    if (o + 2 + alen > end) break;
    const body = buf.subarray(o, o + 2 + alen);
    sense.descriptors.push({ type, data: Buffer.from(body) });
    switch (type) {
      case SENSE_DESC_INFORMATION:
        if (alen >= 0x0a && (body[2]! & 0x80) !== 0) sense.info = u64(body, 4);
        break;
      case SENSE_DESC_COMMAND_SPECIFIC:
        if (alen >= 0x0a) sense.commandSpecific = u64(body, 4);
        break;
      case SENSE_DESC_SENSE_KEY_SPECIFIC:
        if (alen >= 0x06) {
          const sks = decodeSks(body.subarray(4, 7), key);
          if (sks) sense.senseKeySpecific = sks;
        }
        break;
      case SENSE_DESC_FIELD_REPLACEABLE_UNIT:
        if (alen >= 0x02 && body[3] !== 0) sense.fru = body[3]!;
        break;
      case SENSE_DESC_BLOCK_COMMANDS:
        if (alen >= 0x02) sense.ili = (body[3]! & 0x20) !== 0;
        break;
      default:
        break;
    }
    o += 2 + alen;
  }
  return sense;
}
