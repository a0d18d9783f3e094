/**
 * Why a login (channel connect + SRP_LOGIN_REQ) failed, and what a reconnecting port does about it,
 * after ib_srp's srp_rdma_cm_rej_handler / srp_ib_cm_rej_handler and srp_connect_ch:
 *
 * - transient: retried on the reconnect cadence (every reconnect_delay while blocked). Timeouts,
 *   unreachable targets, nothing listening (a target being rebuilt), CM rejects ib_srp answers with
 *   -ECONNRESET, and SRP_LOGIN_REJs a target sends while it is being set up: LIO's ib_srpt answers
 *   SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES (0x00010001) while its port is not enabled, and
 *   SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED when no ACL names our initiator port. The latter stays
 *   transient on purpose: a target rebuilt by a script (configfs: TPG, LUNs, ACLs, enable) may
 *   enable the port before it adds the ACL, and the fix of a missing ACL is on the target, where an
 *   operator adds it without touching the initiator; the reason is in status `last_error`.
 * - stale-connection: IB_CM_REJ_STALE_CONN (the target still holds a connection with our QP
 *   number): ib_srp reports SRP_STALE_CONN; we retry at once with a new connection (new QP), at
 *   most STALE_CONNECTION_RETRIES times, then it counts as a transient failure.
 * - redirect: IB_CM_REJ_PORT_CM_REDIRECT / IB_CM_REJ_PORT_REDIRECT. ib_srp follows them on IB CM
 *   (the new DLID/GID/QPN from the ARI); through rdma_cm the ARI is not visible and ib_srp's RDMA/CM
 *   handler treats them as -ECONNRESET, and so do we: transient, with the reason saying so.
 * - hard: the target refuses what we ask for, and asking again will not change it
 *   (SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE, _UNSUPPORTED_DESCRIPTOR_FMT,
 *   _MULTI_CHANNEL_UNSUPPORTED): the port goes to fail-fast at once (md fails the member instead of
 *   waiting out fast_io_fail_tmo) and keeps trying with back-off, in case the target is changed.
 */
import { TransportError } from './scsi-executor.js';
import { SrpLoginRejectedError } from './srp-session.js';
import {
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT,
} from './srp-constants.js';

/** Immediate retries with a new connection after IB_CM_REJ_STALE_CONN. */
export const STALE_CONNECTION_RETRIES = 3;

/**
 * What a CM reject reason (enum ib_cm_rej_reason) means for a login; the transport that knows the
 * reasons sorts them (src/initiator/rdma/channel.ts cmRejectKind()).
 */
export type CmRejectKind = 'stale-connection' | 'redirect' | 'other';

/** A connect refused by the CM (RDMA_CM_EVENT_REJECTED without an SRP_LOGIN_REJ); `cmReason` is enum ib_cm_rej_reason. */
export class CmRejectedError extends TransportError {
  constructor(
    message: string,
    readonly cmReason: number,
    readonly kind: CmRejectKind,
  ) {
    super(message, 'disconnected');
    this.name = 'CmRejectedError';
  }
}

export type LoginFailureKind = 'transient' | 'stale-connection' | 'redirect' | 'hard';

/** What came back for a login that failed (LoginFailure.answer). */
export type LoginAnswer = 'rejected' | 'none' | 'local';

export interface LoginFailure {
  kind: LoginFailureKind;
  /** Retry on the cadence (transient, redirect, stale connection after its retries) or not (hard). */
  retryable: boolean;
  /**
   * What came back for the login: `rejected`, the target answered (an SRP_LOGIN_REJ or a CM
   * reject): reachable, only not ready (LIO rebuilding: port not enabled, nothing listening, no ACL
   * yet); `none`, nothing before the login's deadline (TransportError 'timeout'): the path may be a
   * black hole; `local`, it failed here (an unreachable address: the link is down). A blocked port
   * tries again sooner than a whole reconnect_delay after `rejected` (RETRY_SOON_MS in
   * src/fsm/rport.ts); `none` and `local` wait the cadence.
   */
  answer: LoginAnswer;
  /** What the failure means for the operator (status last_error). */
  message: string;
}

const HARD_SRP_REJECTS: ReadonlySet<number> = new Set([
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT,
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
]);

/** Sorts a login's error into the classes above. Never throws. */
export function classifyLoginFailure(err: unknown): LoginFailure {
  const text = err instanceof Error ? err.message : String(err);
  if (err instanceof SrpLoginRejectedError) {
    if (HARD_SRP_REJECTS.has(err.reason >>> 0)) {
      return {
        kind: 'hard',
        retryable: false,
        answer: 'rejected',
        message: `${text}; retrying will not help until the target changes`,
      };
    }
    return { kind: 'transient', retryable: true, answer: 'rejected', message: text };
  }
  if (err instanceof CmRejectedError) {
    switch (err.kind) {
      case 'stale-connection':
        return {
          kind: 'stale-connection',
          retryable: true,
          answer: 'rejected',
          message: `${text}: stale connection`,
        };
      case 'redirect':
        return {
          kind: 'redirect',
          retryable: true,
          answer: 'rejected',
          message: `${text}: the target redirects to another port, which RDMA/CM cannot follow; retrying here`,
        };
      default:
        return { kind: 'transient', retryable: true, answer: 'rejected', message: text };
    }
  }
  // No answer from the target: a timeout, an unreachable address, a local failure.
  const answer = err instanceof TransportError && err.code === 'timeout' ? 'none' : 'local';
  return { kind: 'transient', retryable: true, answer, message: text };
}
