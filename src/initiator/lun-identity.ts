/**
 * LUN identity: what tells one logical unit from another, so that after a reconnect srp-nbd never
 * releases I/O to a different disk that happens to sit behind the same target and LUN number.
 *
 * identity = the logical unit's designators from VPD 83h (association "logical unit": NAA, EUI-64,
 * T10 vendor ID, SCSI name string, UUID, MD5, vendor specific) + unit serial number (VPD 80h).
 * Target port designators (relative target port, target port group) are left out on purpose: they
 * differ between paths to the same LU, as does the logical unit group. Vendor/product/revision are
 * kept for messages but not compared (a firmware upgrade changes the revision of the same disk).
 *
 * Capacity is recorded but is not identity: a LUN grown on the target is the same disk (its device
 * grows with it). What the comparison still refuses is a LUN that can no longer hold what was
 * attached: one that shrank below the recorded size, or whose logical block size changed.
 */

import {
  ASSOCIATION_LOGICAL_UNIT,
  CODE_SET_ASCII,
  CODE_SET_UTF8,
  DESIGNATOR_EUI64,
  DESIGNATOR_MD5_LOGICAL_UNIT,
  DESIGNATOR_NAA,
  DESIGNATOR_SCSI_NAME_STRING,
  DESIGNATOR_T10_VENDOR_ID,
  DESIGNATOR_UUID,
  DESIGNATOR_VENDOR_SPECIFIC,
} from './scsi-constants.js';
import type { Designator } from './scsi-parse.js';

/** One identifying designator, in a canonical, JSON-friendly form. */
export interface IdentityDesignator {
  designatorType: number;
  codeSet: number;
  /** DESIGNATOR bytes as lower-case hex (exact, whatever the code set). */
  value: string;
}

export interface LunIdentity {
  /** Logical-unit designators, sorted (type, code set, value), duplicates removed. */
  designators: IdentityDesignator[];
  /** Unit serial number, if the LU has VPD 80h. */
  serial?: string;
  blockSize: number;
  blockCount: bigint;
  /** Informational only, never compared. */
  vendor?: string;
  product?: string;
  revision?: string;
}

/** JSON form of a LunIdentity (blockCount as a decimal string). */
export interface LunIdentityJSON {
  designators: IdentityDesignator[];
  serial?: string;
  blockSize: number;
  blockCount: string;
  vendor?: string;
  product?: string;
  revision?: string;
}

/** A persisted identity that does not have the expected shape. */
export class LunIdentityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LunIdentityError';
  }
}

/**
 * Designator types that identify the logical unit itself: not relative target port (4), target
 * port group (5) or logical unit group (6), which describe paths and ALUA grouping.
 */
const IDENTIFYING_TYPES = new Set([
  DESIGNATOR_VENDOR_SPECIFIC,
  DESIGNATOR_T10_VENDOR_ID,
  DESIGNATOR_EUI64,
  DESIGNATOR_NAA,
  DESIGNATOR_MD5_LOGICAL_UNIT,
  DESIGNATOR_SCSI_NAME_STRING,
  DESIGNATOR_UUID,
]);

const TYPE_LABEL: Record<number, string> = {
  [DESIGNATOR_VENDOR_SPECIFIC]: 'vendor specific designator',
  [DESIGNATOR_T10_VENDOR_ID]: 'T10 vendor ID designator',
  [DESIGNATOR_EUI64]: 'EUI-64 designator',
  [DESIGNATOR_NAA]: 'NAA designator',
  [DESIGNATOR_MD5_LOGICAL_UNIT]: 'MD5 logical unit designator',
  [DESIGNATOR_SCSI_NAME_STRING]: 'SCSI name string designator',
  [DESIGNATOR_UUID]: 'UUID designator',
};

function cmpDesignator(a: IdentityDesignator, b: IdentityDesignator): number {
  return (
    a.designatorType - b.designatorType || a.codeSet - b.codeSet || (a.value < b.value ? -1 : a.value > b.value ? 1 : 0)
  );
}

function canonical(ds: readonly IdentityDesignator[]): IdentityDesignator[] {
  const sorted = [...ds].sort(cmpDesignator);
  return sorted.filter((d, i) => i === 0 || cmpDesignator(d, sorted[i - 1]!) !== 0);
}

/** Build the identity of a LU from what probing it returned. */
export function lunIdentity(src: {
  designators: readonly Designator[];
  serial?: string | undefined;
  blockSize: number;
  blockCount: bigint;
  vendor?: string;
  product?: string;
  revision?: string;
}): LunIdentity {
  const designators = canonical(
    src.designators
      .filter((d) => d.association === ASSOCIATION_LOGICAL_UNIT && IDENTIFYING_TYPES.has(d.designatorType))
      .map((d) => ({ designatorType: d.designatorType, codeSet: d.codeSet, value: d.designator.toString('hex') })),
  );
  const id: LunIdentity = { designators, blockSize: src.blockSize, blockCount: src.blockCount };
  if (src.serial !== undefined && src.serial !== '') id.serial = src.serial;
  if (src.vendor !== undefined) id.vendor = src.vendor;
  if (src.product !== undefined) id.product = src.product;
  if (src.revision !== undefined) id.revision = src.revision;
  return id;
}

/** Readable form of one designator: "naa.6001405…" for NAA (as Linux wwid), text for ASCII/UTF-8. */
export function designatorString(d: IdentityDesignator): string {
  const bytes = Buffer.from(d.value, 'hex');
  const text = d.codeSet === CODE_SET_ASCII || d.codeSet === CODE_SET_UTF8;
  if (d.designatorType === DESIGNATOR_NAA) return `naa.${d.value}`;
  if (d.designatorType === DESIGNATOR_EUI64) return `eui.${d.value}`;
  if (text)
    return JSON.stringify(
      bytes
        .toString('latin1')
        .replace(/[^\x20-\x7e]/g, '?')
        .trim(),
    );
  return d.value;
}

function capacityString(blocks: bigint, blockSize: number): string {
  const bytes = blocks * BigInt(blockSize);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(bytes);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const size = Number.isInteger(v) ? `${v}` : v.toFixed(2);
  return `${blocks} x ${blockSize}-byte blocks (${size} ${units[u]})`;
}

/** One line describing an identity, for logs. */
export function describeIdentity(id: LunIdentity): string {
  const parts: string[] = [];
  if (id.vendor !== undefined || id.product !== undefined) parts.push(`${id.vendor ?? ''} ${id.product ?? ''}`.trim());
  const naa = id.designators.find((d) => d.designatorType === DESIGNATOR_NAA);
  if (naa) parts.push(designatorString(naa));
  if (id.serial !== undefined) parts.push(`serial ${JSON.stringify(id.serial)}`);
  parts.push(capacityString(id.blockCount, id.blockSize));
  return parts.join(', ');
}

export interface IdentityComparison {
  /** Same logical unit, not smaller, same block size: safe to carry on. */
  same: boolean;
  /** Same logical unit, more blocks than recorded. */
  grown: boolean;
  /** One readable sentence per difference (empty when same). */
  differences: string[];
  /** Neither identity has a designator or serial: only capacity could be compared. */
  weak: boolean;
}

/**
 * Compare the identity recorded before (`a`) with the one found now (`b`). Designators are compared
 * as sets per designator type; a type present on one side only is a difference too (a LU does not
 * lose its NAA). Serial and block size must be equal; the block count may grow, not shrink.
 */
export function sameIdentity(a: LunIdentity, b: LunIdentity): IdentityComparison {
  const differences: string[] = [];
  const types = [...new Set([...a.designators, ...b.designators].map((d) => d.designatorType))].sort((x, y) => x - y);
  for (const type of types) {
    const label = TYPE_LABEL[type] ?? `designator type ${type}`;
    const ka = a.designators.filter((d) => d.designatorType === type);
    const kb = b.designators.filter((d) => d.designatorType === type);
    const key = (d: IdentityDesignator): string => `${d.codeSet}:${d.value}`;
    const sa = new Set(ka.map(key));
    const sb = new Set(kb.map(key));
    const gone = ka.filter((d) => !sb.has(key(d)));
    const added = kb.filter((d) => !sa.has(key(d)));
    const list = (ds: IdentityDesignator[]): string => ds.map(designatorString).join(', ');
    if (gone.length > 0 && added.length > 0) differences.push(`${label} changed: ${list(gone)} -> ${list(added)}`);
    else if (gone.length > 0) differences.push(`${label} ${list(gone)} is gone`);
    else if (added.length > 0) differences.push(`${label} ${list(added)} appeared`);
  }
  if (a.serial !== b.serial) {
    const s = (v: string | undefined): string => (v === undefined ? '(none)' : JSON.stringify(v));
    differences.push(`serial number changed: ${s(a.serial)} -> ${s(b.serial)}`);
  }
  if (a.blockSize !== b.blockSize) differences.push(`logical block size changed: ${a.blockSize} -> ${b.blockSize}`);
  else if (b.blockCount < a.blockCount) {
    differences.push(
      `capacity shrank below the attached size: ${capacityString(a.blockCount, a.blockSize)} -> ${capacityString(b.blockCount, b.blockSize)}`,
    );
  }
  const weak =
    a.designators.length === 0 && a.serial === undefined && b.designators.length === 0 && b.serial === undefined;
  const same = differences.length === 0;
  return { same, grown: same && b.blockCount > a.blockCount, differences, weak };
}

/** JSON-serializable form (for persistence). */
export function identityToJSON(id: LunIdentity): LunIdentityJSON {
  const j: LunIdentityJSON = {
    designators: id.designators.map((d) => ({ ...d })),
    blockSize: id.blockSize,
    blockCount: id.blockCount.toString(),
  };
  if (id.serial !== undefined) j.serial = id.serial;
  if (id.vendor !== undefined) j.vendor = id.vendor;
  if (id.product !== undefined) j.product = id.product;
  if (id.revision !== undefined) j.revision = id.revision;
  return j;
}

/** Parse and validate a persisted identity (e.g. JSON.parse output); throws LunIdentityError. */
export function identityFromJSON(json: unknown): LunIdentity {
  const fail = (why: string): never => {
    throw new LunIdentityError(`invalid LUN identity: ${why}`);
  };
  if (typeof json !== 'object' || json === null) return fail('not an object');
  const o = json as Record<string, unknown>;
  if (!Array.isArray(o.designators)) return fail('designators is not an array');
  const designators = o.designators.map((d: unknown, i: number): IdentityDesignator => {
    if (typeof d !== 'object' || d === null) return fail(`designators[${i}] is not an object`);
    const r = d as Record<string, unknown>;
    const small = (v: unknown, max: number): v is number =>
      typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;
    if (!small(r.designatorType, 15)) return fail(`designators[${i}].designatorType`);
    if (!small(r.codeSet, 15)) return fail(`designators[${i}].codeSet`);
    if (typeof r.value !== 'string' || !/^([0-9a-f]{2}){0,255}$/.test(r.value))
      return fail(`designators[${i}].value is not lower-case hex`);
    return { designatorType: r.designatorType, codeSet: r.codeSet, value: r.value };
  });
  if (typeof o.blockSize !== 'number' || !Number.isInteger(o.blockSize) || o.blockSize <= 0) return fail('blockSize');
  if (typeof o.blockCount !== 'string' || !/^[0-9]{1,20}$/.test(o.blockCount))
    return fail('blockCount is not a decimal string');
  const id: LunIdentity = {
    designators: canonical(designators),
    blockSize: o.blockSize,
    blockCount: BigInt(o.blockCount),
  };
  for (const k of ['serial', 'vendor', 'product', 'revision'] as const) {
    const v = o[k];
    if (v === undefined) continue;
    if (typeof v !== 'string') return fail(`${k} is not a string`);
    id[k] = v;
  }
  return id;
}

/**
 * What names the logical unit itself, whatever path or size: its identifying designators (NAA,
 * EUI-64, ...) and unit serial number, as one string; undefined when it has neither (then two
 * paths to it cannot be told from two disks). Capacity is left out: a grown LU is the same LU.
 */
export function logicalUnitKey(id: LunIdentity): string | undefined {
  if (id.designators.length === 0 && id.serial === undefined) return undefined;
  return JSON.stringify([id.designators.map((d) => [d.designatorType, d.codeSet, d.value]), id.serial ?? null]);
}
