/**
 * The native addon's whole surface, typed (native/src/*.cc), and its loader.
 *
 * The addon only makes system calls; protocol logic, retries, timers and state live in
 * TypeScript. Every function is non-blocking, returns plain values and throws a NativeError
 * (errno/code/syscall) on failure. Objects are small integer handles; fds are watched with
 * pollStart() and read with the matching "get" call until it reports nothing more. Classes that
 * use the addon take a NativeBinding as a parameter, so the same tests run against the real addon
 * and against MockRdmaBinding (src/testing/mock-rdma-binding.ts).
 */
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RECV_WR_LEN, SEND_WR_LEN } from './rdma-constants.js';

/**
 * Error thrown by the addon for a failed system call. Like Node's own system errors it names the
 * errno in `code`, which is what callers compare (isErrno()); `errno` is the number, for messages.
 */
export interface NativeError extends Error {
  /** errno name, e.g. 'ENODEV' (or 'EBADF' for a stale handle) */
  code: string;
  /** errno number (positive, unlike Node's), absent for a stale handle */
  errno?: number;
  syscall?: string;
}

export interface CmEvent {
  /** RDMA_CM_EVENT_* */
  event: number;
  /** handle of the cm id the event is for (0 if unknown) */
  id: number;
  /** event status: negative errno for *_ERROR events, the CM reject reason for REJECTED */
  status: number;
  /** CM private data (REP / REJ / DREQ), copied; null when there is none */
  privateData: Buffer | null;
}

/** struct ucred of a unix socket's peer (SO_PEERCRED). */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export interface AsyncEvent {
  /** IBV_EVENT_* */
  type: number;
  /** for port events */
  portNum: number;
  /** for QP events */
  qpNum: number;
}

export interface CmIdInfo {
  /** device context handle (0 before the address is resolved) */
  context: number;
  device: string | null;
  port: number;
  qpNum: number;
  /** the local IP address the id is bound to ("192.0.2.1", "fe80::1%eth0"); null before address resolution */
  srcAddr: string | null;
}

export interface DeviceAttr {
  device: string;
  maxQpWr: number;
  maxSge: number;
  maxCqe: number;
  maxMrSize: bigint;
  maxQpRdAtom: number;
  maxQpInitRdAtom: number;
  physPortCnt: number;
  nodeGuid: bigint;
  /** the device's async event fd (non-blocking); watch it and call getAsyncEvent() */
  asyncFd: number;
}

export interface PortAttr {
  state: number;
  activeMtu: number;
  lid: number;
  linkLayer: number;
  pkeyTblLen: number;
}

export interface ConnParam {
  /** SRP_LOGIN_REQ (≤ 255 bytes; the IB CM REQ carries up to 92 for RDMA/CM) */
  privateData?: Buffer;
  /** RDMA READs the peer may have outstanding against us (target data-out) */
  responderResources?: number;
  /** RDMA READs we may have outstanding */
  initiatorDepth?: number;
  /** transport retries, 0..7; 7 means forever on rxe: callers keep it ≤ 6 */
  retryCount?: number;
  /** RNR retries, 0..7 (7 = forever) */
  rnrRetryCount?: number;
}

export interface QpInit {
  pd: number;
  sendCq: number;
  recvCq: number;
  maxSendWr?: number;
  maxRecvWr?: number;
  maxSendSge?: number;
  maxRecvSge?: number;
  maxInlineData?: number;
}

export interface QpCaps {
  qpNum: number;
  maxSendWr: number;
  maxRecvWr: number;
  maxInlineData: number;
}

export interface QpAttr {
  state: number;
  timeout: number;
  retryCnt: number;
  rnrRetry: number;
  minRnrTimer: number;
  maxSendWr: number;
  maxRecvWr: number;
  maxInlineData: number;
}

export interface MrInfo {
  mr: number;
  /** virtual address of the registered Buffer's first byte */
  addr: bigint;
  lkey: number;
  rkey: number;
  length: number;
}

export interface RdmaObjectCounts {
  channels: number;
  ids: number;
  qps: number;
  pds: number;
  compChannels: number;
  cqs: number;
  mrs: number;
}

/** pollStart() events, libuv's enum uv_poll_event. */
export const UV_READABLE = 1;
export const UV_WRITABLE = 2;

/** Everything the addon exports. */
export interface NativeBinding {
  /* fd readiness (uv_poll) */
  /**
   * Watches fd for events (UV_READABLE, UV_WRITABLE); returns a poller id. cb runs on the event loop:
   * cb(null, events) when the fd is ready; cb(err, 0) once when the poll fails (err.code e.g.
   * 'EBADF', syscall 'uv_poll'), after which the poll is stopped (pollStop() still frees it).
   */
  pollStart(fd: number, events: number, cb: (err: NativeError | null, events: number) => void): number;
  /** Stops and frees a poller; idempotent; the fd stays open. */
  pollStop(poller: number): void;
  /** Whether the poller keeps the event loop alive. */
  pollRef(poller: number, ref: boolean): void;
  pollCount(): number;

  /* plain system calls */
  socketPair(): [number, number];
  close(fd: number): void;
  setsockoptInt(fd: number, level: number, name: number, value: number): void;
  /** getsockopt(SO_PEERCRED): who connected this unix socket (at connect() time). */
  getPeerCred(fd: number): PeerCred;
  /** socket(AF_NETLINK, SOCK_RAW|SOCK_NONBLOCK|SOCK_CLOEXEC, protocol) + bind */
  netlinkOpen(protocol: number): number;
  netlinkSend(fd: number, message: Buffer): number;
  /**
   * netlinkSend on a libuv worker thread: the kernel's handler (which may wait for an NBD socket
   * this process serves) runs while the event loop goes on. Resolves with the bytes sent.
   */
  netlinkSendAsync(fd: number, message: Buffer): Promise<number>;
  /** Length of the next datagram (may exceed buffer.length: truncated), or -1 when none is queued. */
  netlinkRecv(fd: number, buffer: Buffer): number;
  /**
   * One sendmsg(MSG_DONTWAIT|MSG_NOSIGNAL) of buffers[start, start+count) (at most IOV_MAX):
   * bytes sent, or -1 when the socket buffer is full.
   */
  sendv(fd: number, buffers: Buffer[], start: number, count: number): number;
  /**
   * flock(fd, LOCK_EX|LOCK_NB): true when this open file now holds the lock, false when another
   * one does. The lock ends with the file's last close or the process.
   */
  flockExclusive(fd: number): boolean;

  /* the process itself (native/src/proc.cc) */
  /** prctl(option, value, 0, 0, 0): its result; throws (errno) on failure. */
  prctlSet(option: number, value: number): number;
  /** mlockall(flags): MCL_CURRENT 1, MCL_FUTURE 2, MCL_ONFAULT 4. */
  mlockall(flags: number): void;
  munlockall(): void;
  /** mlock(address, length). */
  mlock(address: bigint, length: bigint): void;
  /** One datagram to a unix socket (path, or '@name' in the abstract namespace): sd_notify. */
  unixDgramSend(path: string, message: Buffer): number;

  /* verbs: devices */
  /** Names of the RDMA devices; throws ENOSYS when the kernel has no RDMA support. */
  getDeviceList(): string[];
  ctxQuery(ctx: number): DeviceAttr;
  portQuery(ctx: number, port: number): PortAttr;
  /**
   * GID `index` of a port (ibv_query_gid), 16 bytes. Index 0 is the port's default GID: its interface
   * id (bytes 8..15) is the port GUID, the second half of ib_srp's initiator port id.
   */
  portGid(ctx: number, port: number, index: number): Buffer;
  /** Next async event of the device, or null. */
  getAsyncEvent(ctx: number): AsyncEvent | null;

  /* rdma_cm */
  cmCreateChannel(): { channel: number; fd: number };
  cmDestroyChannel(channel: number): void;
  cmCreateId(channel: number, portSpace: number): number;
  /** Destroys the id and its QP if it still has one. */
  cmDestroyId(id: number): void;
  /** src and dst are raw sockaddr bytes (sockaddr.ts). */
  cmResolveAddr(id: number, src: Buffer | null, dst: Buffer, timeoutMs: number): void;
  cmResolveRoute(id: number, timeoutMs: number): void;
  cmSetOption(id: number, level: number, name: number, value: Buffer): void;
  /** Next CM event on the channel (already acknowledged), or null. */
  cmGetEvent(channel: number): CmEvent | null;
  cmConnect(id: number, param: ConnParam): void;
  cmDisconnect(id: number): void;
  cmIdInfo(id: number): CmIdInfo;
  cmCreateQp(id: number, init: QpInit): QpCaps;
  cmDestroyQp(id: number): void;
  /**
   * rdma_destroy_qp on a worker thread (it can block for seconds: docs/failover.md, "Soft-RoCE: a
   * QP destroyed while its link is down"). Until the promise settles, any call with the id or a CQ
   * of the QP is an EBUSY error. Rejected with the ibv_destroy_qp error (the QP then stays with
   * the id); an id without a QP resolves at once.
   */
  cmDestroyQpAsync(id: number): Promise<void>;
  qpQuery(id: number): QpAttr;
  qpModify(
    id: number,
    attr: Partial<Pick<QpAttr, 'state' | 'timeout' | 'retryCnt' | 'rnrRetry' | 'minRnrTimer'>>,
  ): void;

  /* verbs: resources */
  pdAlloc(ctx: number): number;
  pdDealloc(pd: number): void;
  compChannelCreate(ctx: number): { channel: number; fd: number };
  compChannelDestroy(channel: number): void;
  /** compVector: the completion vector (ib_srp comp_vector), default 0; below the device's count. */
  cqCreate(ctx: number, cqe: number, compChannel: number, compVector?: number): number;
  cqDestroy(cq: number): void;
  cqReqNotify(cq: number, solicitedOnly?: boolean): void;
  /** The cq handle of the next completion event (acknowledged), or 0. */
  cqGetEvent(compChannel: number): number;
  /** Polls up to max completions into out as WC_RECORD_LEN-byte records; returns how many. */
  /** spinUs > 0: poll an empty CQ again until a completion arrives or spinUs have passed */
  cqPoll(cq: number, out: Buffer, max: number, spinUs?: number): number;
  /** Registers buf (kept alive until mrDereg). */
  mrReg(pd: number, buf: Buffer, access: number): MrInfo;
  mrDereg(mr: number): void;
  /** One work request; length 0 posts no SGE (zero-length RDMA WRITE = keep-alive probe). */
  postSend(
    id: number,
    wrId: number,
    opcode: number,
    addr: bigint,
    length: number,
    lkey: number,
    flags: number,
    remoteAddr: bigint,
    rkey: number,
  ): void;
  postRecv(id: number, wrId: number, addr: bigint, length: number, lkey: number): void;
  /**
   * Posts the first count records of wrs (SEND_WR_LEN bytes each, written by writeSendWr) as one
   * chained list: one ibv_post_send, so one doorbell for the lot.
   */
  postSendList(id: number, wrs: Buffer, count: number): void;
  /** Posts the first count records of wrs (RECV_WR_LEN bytes each, written by writeRecvWr) as one list. */
  postRecvList(id: number, wrs: Buffer, count: number): void;
  rdmaObjectCounts(): RdmaObjectCounts;
}

/** One decoded completion (see cqPoll). */
export interface WorkCompletion {
  wrId: number;
  status: number;
  opcode: number;
  byteLen: number;
  qpNum: number;
  vendorErr: number;
  wcFlags: number;
}

const U32 = 0x1_0000_0000;

/**
 * Stores a u32 little-endian with plain byte stores (the value taken modulo 2^32). The work request
 * writers below run for every IU sent and received; Buffer#writeUInt32LE checks its arguments on
 * each call, which there cost as much as the stores. Each writer checks its record's bounds once.
 */
function put32le(buf: Buffer, off: number, v: number): void {
  buf[off] = v;
  buf[off + 1] = v >>> 8;
  buf[off + 2] = v >>> 16;
  buf[off + 3] = v >>> 24;
}

/** Writes a u64 given as a Number (addresses and wr_ids stay below 2^53) little-endian at off. */
function writeU64(buf: Buffer, value: number, off: number): void {
  put32le(buf, off, value % U32);
  put32le(buf, off + 4, Math.floor(value / U32));
}

function checkRecord(buf: Buffer, o: number, len: number): void {
  if (!(o >= 0 && o + len <= buf.length)) {
    throw new RangeError(`work request record at ${o} (${len} bytes) is outside a buffer of ${buf.length}`);
  }
}

/** Reads a u64 written by writeU64 (or the addon) as a Number. */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * U32;
}

/**
 * Fills send work request record i of a postSendList() buffer. Numbers, not bigints: user-space
 * addresses are below 2^47, so a Number holds them exactly, and the I/O path allocates nothing.
 * length 0 posts no SGE (the keep-alive probe's zero-length RDMA WRITE).
 */
export function writeSendWr(
  buf: Buffer,
  i: number,
  wrId: number,
  opcode: number,
  flags: number,
  addr: number,
  length: number,
  lkey: number,
  remoteAddr = 0,
  rkey = 0,
): void {
  const o = i * SEND_WR_LEN;
  checkRecord(buf, o, SEND_WR_LEN);
  writeU64(buf, wrId, o);
  writeU64(buf, addr, o + 8);
  writeU64(buf, remoteAddr, o + 16);
  put32le(buf, o + 24, length);
  put32le(buf, o + 28, lkey);
  put32le(buf, o + 32, rkey);
  put32le(buf, o + 36, opcode);
  put32le(buf, o + 40, flags);
  put32le(buf, o + 44, 0);
}

/** Sets the send flags of record i of a postSendList() buffer. */
export function setSendWrFlags(buf: Buffer, i: number, flags: number): void {
  checkRecord(buf, i * SEND_WR_LEN, SEND_WR_LEN);
  put32le(buf, i * SEND_WR_LEN + 40, flags);
}

/** Fills receive work request record i of a postRecvList() buffer. */
export function writeRecvWr(buf: Buffer, i: number, wrId: number, addr: number, length: number, lkey: number): void {
  const o = i * RECV_WR_LEN;
  checkRecord(buf, o, RECV_WR_LEN);
  writeU64(buf, wrId, o);
  writeU64(buf, addr, o + 8);
  put32le(buf, o + 16, length);
  put32le(buf, o + 20, lkey);
}

/** One decoded send work request record (tests and the mock binding). */
export interface SendWr {
  wrId: number;
  opcode: number;
  flags: number;
  addr: number;
  length: number;
  lkey: number;
  remoteAddr: number;
  rkey: number;
}

export function readSendWr(buf: Buffer, i: number): SendWr {
  const o = i * SEND_WR_LEN;
  return {
    wrId: readU64(buf, o),
    addr: readU64(buf, o + 8),
    remoteAddr: readU64(buf, o + 16),
    length: buf.readUInt32LE(o + 24),
    lkey: buf.readUInt32LE(o + 28),
    rkey: buf.readUInt32LE(o + 32),
    opcode: buf.readUInt32LE(o + 36),
    flags: buf.readUInt32LE(o + 40),
  };
}

export function readRecvWr(buf: Buffer, i: number): { wrId: number; addr: number; length: number; lkey: number } {
  const o = i * RECV_WR_LEN;
  return {
    wrId: readU64(buf, o),
    addr: readU64(buf, o + 8),
    length: buf.readUInt32LE(o + 16),
    lkey: buf.readUInt32LE(o + 20),
  };
}

/** Decodes record i of a cqPoll() output buffer. */
export function readWc(buf: Buffer, i: number): WorkCompletion {
  const o = i * 32;
  return {
    wrId: buf.readUInt32LE(o) + buf.readUInt32LE(o + 4) * 0x1_0000_0000,
    status: buf.readUInt32LE(o + 8),
    opcode: buf.readUInt32LE(o + 12),
    byteLen: buf.readUInt32LE(o + 16),
    qpNum: buf.readUInt32LE(o + 20),
    vendorErr: buf.readUInt32LE(o + 24),
    wcFlags: buf.readUInt32LE(o + 28),
  };
}

/** The addon could not be loaded (not built, or built for another Node). */
export class NativeAddonMissingError extends Error {
  constructor(
    readonly tried: string[],
    options?: { cause?: unknown },
  ) {
    super(
      'srp-nbd native addon is not built or cannot be loaded: run `npm run build:native` ' +
        '(needs g++, make, python3 and the Debian packages libibverbs-dev librdmacm-dev). Tried: ' +
        tried.join(', '),
      options,
    );
    this.name = 'NativeAddonMissingError';
  }
}

const ADDON_FILE = path.join('native', 'build', 'Release', 'srp_nbd_native.node');

/** Where the addon may be: the package root is found by walking up from this file. */
function candidates(): string[] {
  const out: string[] = [];
  if (process.env.SRP_NBD_NATIVE) out.push(process.env.SRP_NBD_NATIVE);
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) out.push(path.join(dir, ADDON_FILE));
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return out;
}

let cached: NativeBinding | undefined;

/** Loads the addon once; throws NativeAddonMissingError with what to do when it is missing. */
export function loadNative(): NativeBinding {
  if (cached) return cached;
  const tried = candidates();
  const require = createRequire(import.meta.url);
  let lastErr: unknown;
  for (const file of tried) {
    if (!fs.existsSync(file)) continue;
    try {
      cached = require(file) as NativeBinding;
      return cached;
    } catch (err) {
      lastErr = err;
    }
  }
  throw new NativeAddonMissingError(tried, { cause: lastErr });
}

/** The addon, or undefined when it cannot be loaded (for tests that skip). */
export function tryLoadNative(): NativeBinding | undefined {
  try {
    return loadNative();
  } catch {
    return undefined;
  }
}

/** True when err is a NativeError with this errno name. */
export function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NativeError).code === code;
}
