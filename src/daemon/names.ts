/**
 * Names an operator uses for a target or one of its LUNs, resolved to the target (and LUN):
 *
 *   - the target id (`test-a`, `srp-<id_ext>-<dest>`);
 *   - a kernel device, `/dev/nbdN` or `nbdN` (a partition, `/dev/nbd0p1`, names its disk);
 *   - an export name (`test-a-lun0`);
 *   - a stable name, `/dev/disk/by-id/srp-nbd-…` or `srp-nbd-…` (with `-partN`, its disk).
 *
 * The stable name is derived from the LUN's identity (byIdName): the NAA designator, else EUI-64,
 * else the unit serial number, else the export name; the udev rule (packaging/60-srp-nbd.rules)
 * links /dev/disk/by-id/<name> to the device through `srp-nbd udev-info`.
 */
import { DESIGNATOR_EUI64, DESIGNATOR_NAA } from '../initiator/scsi-constants.js';
import type { LunIdentity } from '../initiator/lun-identity.js';

export const BY_ID_DIR = '/dev/disk/by-id';
const PREFIX = 'srp-nbd-';

/** What the resolver needs to know of one target. */
export interface NamedTarget {
  id: string;
  luns: { export: string; device: string | null; by_id: string | null }[];
}

/** A name resolved: the target, and the LUN when the name is a LUN's (device, export, stable name). */
export interface Resolved {
  target: string;
  export?: string;
  /** Which kind of name it was. */
  kind: 'target' | 'device' | 'export' | 'by-id';
}

/** The name matches nothing: the message lists what exists. */
export class UnknownNameError extends Error {
  override readonly name = 'UnknownNameError';
}

/** Characters kept in a stable name (like udev's allowed set for links); anything else becomes '_'. */
const sanitize = (s: string): string => s.trim().replace(/[^A-Za-z0-9._-]/g, '_');

/**
 * The stable name of a LUN (without /dev/disk/by-id/): srp-nbd-naa.<hex>, srp-nbd-eui.<hex>,
 * srp-nbd-serial.<serial> or srp-nbd-export.<export>, first that the identity has.
 */
export function byIdName(identity: LunIdentity, exportName: string): string {
  const naa = identity.designators.find((d) => d.designatorType === DESIGNATOR_NAA);
  if (naa) return `${PREFIX}naa.${naa.value}`;
  const eui = identity.designators.find((d) => d.designatorType === DESIGNATOR_EUI64);
  if (eui) return `${PREFIX}eui.${eui.value}`;
  if (identity.serial !== undefined && sanitize(identity.serial) !== '')
    return `${PREFIX}serial.${sanitize(identity.serial)}`;
  return `${PREFIX}export.${sanitize(exportName)}`;
}

/** `/dev/nbd3`, `nbd3`, `/dev/nbd3p1`, `nbd3p1` -> `/dev/nbd3`; anything else undefined. */
export function deviceOf(name: string): string | undefined {
  const m = /^(?:\/dev\/)?(nbd\d+)(?:p\d+)?$/.exec(name);
  return m ? `/dev/${m[1]}` : undefined;
}

/** `/dev/disk/by-id/srp-nbd-x-part2`, `srp-nbd-x` -> `srp-nbd-x`; anything else undefined. */
export function byIdOf(name: string): string | undefined {
  const base = name.startsWith(`${BY_ID_DIR}/`) ? name.slice(BY_ID_DIR.length + 1) : name;
  if (!base.startsWith(PREFIX) || base.includes('/')) return undefined;
  return base.replace(/-part\d+$/, '');
}

/** Resolves `name` among `targets`; throws UnknownNameError listing the ids, devices and exports. */
export function resolveName(name: string, targets: readonly NamedTarget[]): Resolved {
  const exact = targets.find((t) => t.id === name);
  if (exact) return { target: exact.id, kind: 'target' };
  const device = deviceOf(name);
  const byId = byIdOf(name);
  for (const t of targets) {
    for (const l of t.luns) {
      if (device !== undefined && l.device === device) return { target: t.id, export: l.export, kind: 'device' };
      if (l.export === name) return { target: t.id, export: l.export, kind: 'export' };
      if (byId !== undefined && l.by_id === byId) return { target: t.id, export: l.export, kind: 'by-id' };
    }
  }
  throw new UnknownNameError(`${name}: no such target, device, export or stable name (${describeKnown(targets)})`);
}

/** "targets: a (/dev/nbd0 a-lun0 srp-nbd-naa.…), b (…)" or "nothing is attached". */
export function describeKnown(targets: readonly NamedTarget[]): string {
  if (targets.length === 0) return 'nothing is attached';
  const parts = targets.map((t) => {
    const names = t.luns.flatMap((l) => [l.device, l.export, l.by_id].filter((x): x is string => x !== null));
    return names.length > 0 ? `${t.id} (${names.join(' ')})` : t.id;
  });
  return `attached: ${parts.join(', ')}`;
}
