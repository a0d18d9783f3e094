/**
 * LUN identity guard for the FSM: after a reconnect the LUN must be the same
 * disk before held I/O is released to it. What makes up an identity and how
 * two are compared lives in the SCSI layer (initiator/lun-identity.ts); this
 * module only turns a difference into the error the rport driver recognises.
 */
import { type LunIdentity, sameIdentity } from '../initiator/lun-identity.js';

export type { LunIdentity };

/** verifyIdentity() hooks throw this for "a different disk"; any other error counts as a failed reconnect. */
export class IdentityMismatchError extends Error {
  constructor(readonly differences: readonly string[]) {
    super(`LUN identity changed: ${differences.join('; ')}`);
    this.name = 'IdentityMismatchError';
  }
}

/** Throws IdentityMismatchError when `found` is not the `expected` disk. */
export function assertSameLun(expected: LunIdentity, found: LunIdentity): void {
  const cmp = sameIdentity(expected, found);
  if (!cmp.same) throw new IdentityMismatchError(cmp.differences);
}
