/**
 * Options of the RDMA channel transport: what can be set, the defaults, the bounds and their check.
 * The daemon's per-target options ack_timeout and retry_count take their bounds and defaults from
 * here (src/daemon/config.ts), so they are stated once.
 */
import type { SrpLogger } from '../srp-session.js';
import { MAX_FINITE_RETRY_COUNT } from '../../native/rdma-constants.js';
import type { RdmaAddress } from '../../native/sockaddr.js';

/** Local ACK timeout exponent, 4.096 µs × 2^n: the 5-bit QP attribute; 14 is 67 ms. */
export const ACK_TIMEOUT = { min: 0, max: 31, default: 14 } as const;

/** Transport retry count: at most 6, since rxe takes 7 as "retry forever" (a dead path would never be noticed). */
export const RETRY_COUNT = { min: 0, max: MAX_FINITE_RETRY_COUNT, default: MAX_FINITE_RETRY_COUNT } as const;

/** The longest busy poll one post may buy, in µs. */
export const BUSY_POLL_MAX_US = 10_000;

/** IBA's unit of the local ACK timeout: 4.096 µs, in ms. */
const ACK_TIMEOUT_UNIT_MS = 4.096e-3;

/**
 * How long an RC send may go unacknowledged before the QP gives up on it: (retry_count + 1) ×
 * 4.096 µs × 2^ack_timeout, in ms (469.76 ms with the defaults 14 and 6). A completion overdue
 * beyond it means the path is dead even if the device has not said so yet.
 */
export function rcRetryBoundMs(ackTimeout: number, retryCount: number): number {
  return (retryCount + 1) * ACK_TIMEOUT_UNIT_MS * 2 ** ackTimeout;
}

export interface RdmaTransportOptions {
  dst: RdmaAddress;
  /** local address to bind (selects the device/port), optional */
  src?: RdmaAddress;
  /** per attempt, default 100 ms */
  resolveTimeoutMs?: number;
  /** address resolution attempts, default 10 */
  resolveAttempts?: number;
  /** default 1000 ms */
  routeTimeoutMs?: number;
  /** local ACK timeout exponent: 4.096 µs × 2^n; default 14 (67 ms) */
  ackTimeout?: number;
  /** transport retry count 0..6, default 6 (7 = forever on rxe, refused) */
  retryCount?: number;
  /** RNR retry count 0..7, default 7 */
  rnrRetryCount?: number;
  /** send slots (IUs in flight), default 128 */
  sendQueueDepth?: number;
  /** posted receive buffers, default 128 */
  recvQueueDepth?: number;
  /** largest IU we send, default 8448 */
  maxSendIuLen?: number;
  /** receive buffer size (≥ the target's max_ti_iu_len; ib_srpt answers our max_it_iu_len, 8260), default 8448 */
  recvIuLen?: number;
  /** largest region registerBuffer() accepts, default 16 MiB (capped by the device) */
  maxRegionSize?: number;
  /** buffers to register once per connection; views into them register without a system call */
  pools?: Buffer[];
  /**
   * Keep-alive: every this many ms while connected (0 = off, the default), a zero-length RDMA WRITE
   * when none is in flight, and a check that no send (probe included) has waited for its completion
   * longer than rcRetryBoundMs(). A failed probe or an overdue send (black hole, idle or under load)
   * is a channel loss ('disconnect'), noticed at most rcRetryBoundMs() + this interval after it began.
   */
  keepaliveIntervalMs?: number;
  /**
   * The login's initiator port id, computed once the source port is known (after address
   * resolution): ib_srp's is initiator_ext ‖ the interface id of that port's GID 0. When given, it
   * replaces the id in the SRP_LOGIN_REQ handed to connect(). (connector.ts builds it.)
   */
  initiatorPortId?: (local: RdmaLocalPort) => Buffer;
  /** Completion vector of the channel's CQ (ib_srp comp_vector), default 0. */
  compVector?: number;
  /**
   * Busy polling: after posting IUs, poll the CQ for up to this many µs for the first completion
   * instead of sleeping until the completion event (0 = off, the default; at most BUSY_POLL_MAX_US).
   */
  busyPollUs?: number;
  logger?: SrpLogger;
}

/** The local end a channel resolved to: what ib_srp takes its initiator port id from. */
export interface RdmaLocalPort {
  device: string;
  port: number;
  /** GID index 0 of the port (16 bytes); its interface id (bytes 8..15) is the port GUID */
  gid: Buffer;
  /** the local IP address of the connection, when known */
  source: string | undefined;
}

/** The options with every default applied (pools and logger are taken as given). */
export type ResolvedTransportOptions = Required<
  Omit<RdmaTransportOptions, 'src' | 'logger' | 'pools' | 'initiatorPortId'>
> &
  Pick<RdmaTransportOptions, 'src' | 'initiatorPortId'>;

/** Applies the defaults and checks the bounds; throws RangeError naming the option. */
export function resolveTransportOptions(options: RdmaTransportOptions): ResolvedTransportOptions {
  const retry = options.retryCount ?? RETRY_COUNT.default;
  if (!Number.isInteger(retry) || retry < RETRY_COUNT.min || retry > RETRY_COUNT.max) {
    throw new RangeError(
      `retryCount ${retry} must be ${RETRY_COUNT.min}..${RETRY_COUNT.max} ` +
        '(7 means retry forever: a dead path would never be noticed)',
    );
  }
  const ack = options.ackTimeout ?? ACK_TIMEOUT.default;
  if (!Number.isInteger(ack) || ack < ACK_TIMEOUT.min || ack > ACK_TIMEOUT.max) {
    throw new RangeError(`ackTimeout ${ack} must be ${ACK_TIMEOUT.min}..${ACK_TIMEOUT.max}`);
  }
  const o: ResolvedTransportOptions = {
    dst: options.dst,
    src: options.src,
    resolveTimeoutMs: options.resolveTimeoutMs ?? 100,
    resolveAttempts: options.resolveAttempts ?? 10,
    routeTimeoutMs: options.routeTimeoutMs ?? 1000,
    ackTimeout: ack,
    retryCount: retry,
    rnrRetryCount: options.rnrRetryCount ?? 7,
    sendQueueDepth: options.sendQueueDepth ?? 128,
    recvQueueDepth: options.recvQueueDepth ?? 128,
    maxSendIuLen: options.maxSendIuLen ?? 8448,
    recvIuLen: options.recvIuLen ?? 8448,
    maxRegionSize: options.maxRegionSize ?? 16 << 20,
    keepaliveIntervalMs: options.keepaliveIntervalMs ?? 0,
    initiatorPortId: options.initiatorPortId,
    compVector: options.compVector ?? 0,
    busyPollUs: options.busyPollUs ?? 0,
  };
  if (!Number.isInteger(o.compVector) || o.compVector < 0)
    throw new RangeError(`compVector ${o.compVector} must be an integer >= 0`);
  if (!Number.isInteger(o.busyPollUs) || o.busyPollUs < 0 || o.busyPollUs > BUSY_POLL_MAX_US)
    throw new RangeError(`busyPollUs ${o.busyPollUs} must be an integer 0..${BUSY_POLL_MAX_US}`);
  if (!(o.keepaliveIntervalMs >= 0)) throw new RangeError(`keepaliveIntervalMs ${o.keepaliveIntervalMs} must be >= 0`);
  return o;
}
