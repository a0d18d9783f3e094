/**
 * LUN identity guard: after a reconnect the LUN must be the same disk (VPD page 0x83 designators,
 * unit serial number from VPD 0x80, capacity) before held I/O is released to it. Never write to
 * the wrong disk.
 */

/** What identifies a LUN; gathered by the SCSI layer at first login and after every reconnect. */
export interface LunIdentity {
  /** VPD 0x83 designation descriptors, each as lowercase hex of the whole descriptor (order not significant). */
  designators: readonly string[];
  /** VPD 0x80 product serial number, trimmed ('' if the LUN has none). */
  serial: string;
  /** READ CAPACITY(16): number of logical blocks. */
  numBlocks: bigint;
  /** READ CAPACITY(16): logical block length in bytes. */
  blockSize: number;
}

/** verifyIdentity() hooks throw this for "a different disk"; any other error counts as a failed reconnect. */
export class IdentityMismatchError extends Error {
  constructor(readonly differences: readonly string[]) {
    super(`LUN identity changed: ${differences.join('; ')}`);
    this.name = 'IdentityMismatchError';
  }
}

/** Every difference between the identity recorded at first login and the one found now; empty = same disk. */
export function diffLunIdentity(expected: LunIdentity, found: LunIdentity): string[] {
  const out: string[] = [];
  const norm = (d: readonly string[]) => [...new Set(d.map((x) => x.toLowerCase()))].sort();
  const a = norm(expected.designators);
  const b = norm(found.designators);
  if (a.length !== b.length || a.some((x, i) => x !== b[i])) {
    out.push(`VPD 0x83 designators [${a.join(', ')}] != [${b.join(', ')}]`);
  }
  if (expected.serial !== found.serial) out.push(`serial ${JSON.stringify(expected.serial)} != ${JSON.stringify(found.serial)}`);
  if (expected.numBlocks !== found.numBlocks || expected.blockSize !== found.blockSize) {
    out.push(`capacity ${expected.numBlocks} x ${expected.blockSize} B != ${found.numBlocks} x ${found.blockSize} B`);
  }
  return out;
}

/** Throws IdentityMismatchError when `found` is not the `expected` disk. */
export function assertSameLun(expected: LunIdentity, found: LunIdentity): void {
  const d = diffLunIdentity(expected, found);
  if (d.length > 0) throw new IdentityMismatchError(d);
}
