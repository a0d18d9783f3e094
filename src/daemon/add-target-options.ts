/**
 * The tuning options of an ib_srp add_target string (as srp_daemon rules and scripts write them),
 * each honoured with its ib_srp meaning or refused, never accepted and ignored:
 *
 *   max_sect=N          largest transfer of one SCSI command: N × 512 bytes (requests are split)
 *   queue_size=N        SCSI commands outstanding per target (our queue_size, 1..4096)
 *   target_can_queue=N  ... at most N (min with queue_size)
 *   max_cmd_per_lun=N   SCSI commands outstanding per LUN
 *   tl_retry_count=N    RC transport retry count (our retry_count); 7 ("retry forever" on rxe) refused
 *   max_it_iu_size=N    caps the max_it_iu_len requested at login (0: no cap, as in ib_srp)
 *   cmd_sg_entries=N    data descriptors an SRP_CMD carries at most
 *   sg_tablesize=N      scatter-gather entries per command at most: the descriptor limit is
 *                       min(cmd_sg_entries, sg_tablesize)
 *   allow_ext_sg=0      honoured (descriptors always travel inside the SRP_CMD); 1 refused:
 *                       external indirect descriptor tables are not implemented
 *   comp_vector=N       completion vector of the channel's CQ (must exist on the device)
 *   ch_count=1          one RDMA channel per target; more refused until multichannel exists
 *
 * Refusals name the option and why: at attach (400, CLI exit 2) and in the configuration (exit 2).
 * docs/operations.md has the same table.
 */
import { SRP_CMD_LEN, SRP_DEF_SG_TABLESIZE, SRP_DIRECT_BUF_LEN } from '../initiator/srp-constants.js';
import type { SrpTargetAddress } from '../initiator/target-address.js';
import { RETRY_COUNT } from '../initiator/rdma/options.js';

/** What the address's tuning options ask for, in our terms (undefined: not given). */
export interface AddTargetTuning {
  /** bytes of one SCSI command's transfer at most (max_sect × 512) */
  maxTransferBytes?: number;
  /** commands outstanding per target (queue_size) */
  queueSize?: number;
  /** commands outstanding per target at most (target_can_queue) */
  targetCanQueue?: number;
  /** commands outstanding per LUN (max_cmd_per_lun) */
  maxCmdPerLun?: number;
  /** RC retry count (tl_retry_count) */
  retryCount?: number;
  /** cap of the requested max_it_iu_len (max_it_iu_size > 0) */
  maxItIuSize?: number;
  /** descriptors per SRP_CMD (min of cmd_sg_entries, default 12, and sg_tablesize) */
  cmdSgEntries?: number;
  /** CQ completion vector (comp_vector) */
  compVector?: number;
}

/** An add_target option we cannot honour, and why. */
export interface AddTargetRefusal {
  option: string;
  message: string;
}

/** Largest queue_size we run (the per-target option's bound). */
export const MAX_QUEUE_SIZE = 4096;
/** The smallest IU that carries an SRP_CMD with one direct descriptor. */
const MIN_IT_IU = SRP_CMD_LEN + SRP_DIRECT_BUF_LEN;

/** Maps the address's tuning options; `refused` lists every one we cannot honour (then do not attach). */
export function addTargetTuning(a: SrpTargetAddress): { tuning: AddTargetTuning; refused: AddTargetRefusal[] } {
  const t: AddTargetTuning = {};
  const refused: AddTargetRefusal[] = [];
  const refuse = (option: string, why: string) => refused.push({ option, message: `${option}: ${why}` });
  if (a.maxSect !== undefined) t.maxTransferBytes = a.maxSect * 512;
  if (a.queueSize !== undefined) {
    if (a.queueSize > MAX_QUEUE_SIZE)
      refuse('queue_size', `${a.queueSize} commands outstanding is more than srp-nbd runs (at most ${MAX_QUEUE_SIZE})`);
    else t.queueSize = a.queueSize;
  }
  if (a.targetCanQueue !== undefined) t.targetCanQueue = a.targetCanQueue;
  if (a.maxCmdPerLun !== undefined) t.maxCmdPerLun = a.maxCmdPerLun;
  if (a.tlRetryCount !== undefined) {
    if (a.tlRetryCount > RETRY_COUNT.max)
      refuse(
        'tl_retry_count',
        `${a.tlRetryCount} means "retry forever" on soft-RoCE (rxe): a dead path would never be noticed; use 2..${RETRY_COUNT.max}`,
      );
    else t.retryCount = a.tlRetryCount;
  }
  if (a.maxItIuSize !== undefined && a.maxItIuSize > 0) {
    if (a.maxItIuSize < MIN_IT_IU)
      refuse(
        'max_it_iu_size',
        `${a.maxItIuSize} bytes cannot carry an SRP_CMD with a data descriptor (at least ${MIN_IT_IU}; 0 for no limit)`,
      );
    else t.maxItIuSize = a.maxItIuSize;
  }
  if (a.cmdSgEntries !== undefined || a.sgTablesize !== undefined)
    t.cmdSgEntries = Math.min(a.cmdSgEntries ?? SRP_DEF_SG_TABLESIZE, a.sgTablesize ?? Infinity);
  if (a.allowExtSg === true)
    refuse(
      'allow_ext_sg',
      'external indirect descriptor tables are not implemented: an SRP_CMD carries at most cmd_sg_entries descriptors (allow_ext_sg=0 is what srp-nbd does)',
    );
  if (a.compVector !== undefined) t.compVector = a.compVector;
  if (a.chCount !== undefined && a.chCount > 1)
    refuse(
      'ch_count',
      `${a.chCount} channels: srp-nbd logs in one RDMA channel per target (multichannel is not implemented); use ch_count=1`,
    );
  return { tuning: t, refused };
}

/** The options a target spec may also set that an address option sets too. */
const SAME_AS: Readonly<Record<string, { key: 'queue_size' | 'retry_count'; of: keyof AddTargetTuning }>> = {
  queue_size: { key: 'queue_size', of: 'queueSize' },
  tl_retry_count: { key: 'retry_count', of: 'retryCount' },
};

/**
 * An address option that contradicts the target's own option (queue_size=32 in the address,
 * queue_size 64 in the target's spec). `overrides` are the target's explicit options, not the
 * defaults (which the address overrides).
 */
export function addTargetConflicts(a: SrpTargetAddress, overrides: Record<string, unknown>): AddTargetRefusal[] {
  const { tuning } = addTargetTuning(a);
  const out: AddTargetRefusal[] = [];
  for (const [option, { key, of }] of Object.entries(SAME_AS)) {
    const mine = overrides[key];
    const theirs = tuning[of];
    if (mine !== undefined && theirs !== undefined && mine !== theirs)
      out.push({
        option,
        message: `${option}=${theirs} in the address contradicts ${key} ${JSON.stringify(mine)} of the target: give one`,
      });
  }
  return out;
}

/** The target's options with the address's tuning applied: queue_size and retry_count as the address says. */
export function applyTuning<O extends { queue_size: number; retry_count: number }>(o: O, t: AddTargetTuning): O {
  const out = { ...o };
  if (t.queueSize !== undefined) out.queue_size = t.queueSize;
  if (t.targetCanQueue !== undefined) out.queue_size = Math.min(out.queue_size, t.targetCanQueue);
  if (t.retryCount !== undefined) out.retry_count = t.retryCount;
  return out;
}
