/**
 * Kernel NBD attach over generic netlink (family "nbd"): CONNECT, RECONFIGURE, DISCONNECT, STATUS
 * and the LINK_DEAD multicast, plus attach(): a socketpair whose one end goes to the kernel and
 * whose other end the NBD server serves in transmission-only mode.
 *
 * Messages are built and parsed here (pure functions over Buffers, golden-byte tested); the
 * native addon only opens the netlink socket, sends, receives and reports readability.
 *
 * Kernel behaviour this relies on (observed with Debian's 6.1 kernel):
 * - TIMEOUT 0: a blocked but alive server is never disconnected;
 * - DEAD_CONN_TIMEOUT: when our end dies, the kernel holds I/O that long waiting for RECONFIGURE,
 *   and multicasts LINK_DEAD; STATUS keeps saying "connected", so watch LINK_DEAD;
 * - RECONFIGURE needs the same BACKEND_IDENTIFIER (EINVAL otherwise) and is ignored before the
 *   kernel has marked the old socket dead; in-flight requests are resent to the new socket;
 * - CONNECT on a configured index fails EBUSY ("already in use").
 * DESTROY_ON_DISCONNECT is never set: the node must survive us.
 */
import { constants as osConstants } from 'node:os';
import type { Socket } from 'node:net';
import { UV_READABLE, type NativeBinding, type NativeError, isErrno } from '../native/native.js';
import { type Backend, transmissionFlags } from './backend.js';
import type { NbdConnection } from './connection.js';
import * as C from './nbd-netlink-constants.js';
import type { NbdServer } from './server.js';
import { socketFromFd } from './socket-input.js';

/* ------------------------------------------------------------------ codec */

export type NlAttr =
  | { type: number; u8: number }
  | { type: number; u16: number }
  | { type: number; u32: number }
  | { type: number; u64: bigint | number }
  | { type: number; str: string }
  | { type: number; nested: NlAttr[] };

const align4 = (n: number) => (n + 3) & ~3;

function attrPayload(a: NlAttr): Buffer {
  if ('u8' in a) return Buffer.from([a.u8]);
  if ('u16' in a) {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(a.u16);
    return b;
  }
  if ('u32' in a) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(a.u32 >>> 0);
    return b;
  }
  if ('u64' in a) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(a.u64));
    return b;
  }
  if ('str' in a) return Buffer.from(a.str + '\0', 'utf8');
  return encodeNlAttrs(a.nested);
}

/** Encodes netlink attributes (host byte order, each padded to 4 bytes). */
export function encodeNlAttrs(attrs: NlAttr[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    const p = attrPayload(a);
    const h = Buffer.alloc(align4(C.NLA_HDRLEN + p.length));
    h.writeUInt16LE(C.NLA_HDRLEN + p.length, 0);
    h.writeUInt16LE(a.type, 2);
    p.copy(h, C.NLA_HDRLEN);
    parts.push(h);
  }
  return Buffer.concat(parts);
}

/** One generic netlink request: nlmsghdr + genlmsghdr + attributes. */
export function encodeGenlMessage(m: {
  family: number;
  cmd: number;
  version?: number;
  flags?: number;
  seq: number;
  attrs: NlAttr[];
}): Buffer {
  const attrs = encodeNlAttrs(m.attrs);
  const b = Buffer.alloc(C.NLMSG_HDRLEN + C.GENL_HDRLEN + attrs.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE(m.family, 4);
  b.writeUInt16LE(m.flags ?? C.NLM_F_REQUEST | C.NLM_F_ACK, 6);
  b.writeUInt32LE(m.seq >>> 0, 8);
  b.writeUInt32LE(0, 12);
  b[16] = m.cmd;
  b[17] = m.version ?? C.NBD_GENL_VERSION;
  attrs.copy(b, C.NLMSG_HDRLEN + C.GENL_HDRLEN);
  return b;
}

export interface NlMessage {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  /** bytes after nlmsghdr (a view) */
  payload: Buffer;
}

/** Splits a datagram into netlink messages (views into buf). Stops at a malformed header. */
export function parseNlMessages(buf: Buffer): NlMessage[] {
  const out: NlMessage[] = [];
  let off = 0;
  while (off + C.NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < C.NLMSG_HDRLEN || off + len > buf.length) break;
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      payload: buf.subarray(off + C.NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/** Attributes by type (nested flag masked off; the last of a repeated type wins in `get`). */
export class NlAttrs {
  readonly list: { type: number; value: Buffer }[] = [];
  constructor(buf: Buffer) {
    let off = 0;
    while (off + C.NLA_HDRLEN <= buf.length) {
      const len = buf.readUInt16LE(off);
      if (len < C.NLA_HDRLEN || off + len > buf.length) break;
      this.list.push({
        type: buf.readUInt16LE(off + 2) & C.NLA_TYPE_MASK,
        value: buf.subarray(off + C.NLA_HDRLEN, off + len),
      });
      off += align4(len);
    }
  }
  get(type: number): Buffer | undefined {
    for (let i = this.list.length - 1; i >= 0; i--) if (this.list[i]!.type === type) return this.list[i]!.value;
    return undefined;
  }
  u8(type: number): number | undefined {
    const v = this.get(type);
    return v && v.length >= 1 ? v[0] : undefined;
  }
  u16(type: number): number | undefined {
    const v = this.get(type);
    return v && v.length >= 2 ? v.readUInt16LE(0) : undefined;
  }
  u32(type: number): number | undefined {
    const v = this.get(type);
    return v && v.length >= 4 ? v.readUInt32LE(0) : undefined;
  }
  str(type: number): string | undefined {
    const v = this.get(type);
    if (!v) return undefined;
    const z = v.indexOf(0);
    return v.subarray(0, z < 0 ? v.length : z).toString('utf8');
  }
  nested(type: number): NlAttrs | undefined {
    const v = this.get(type);
    return v ? new NlAttrs(v) : undefined;
  }
}

/** NLMSG_ERROR payload: errno (positive; 0 = ACK) and the extended-ACK message if any. */
export function parseNlError(m: NlMessage): { errno: number; message?: string } {
  const err = m.payload.readInt32LE(0);
  const res: { errno: number; message?: string } = { errno: -err };
  if (m.flags & C.NLM_F_ACK_TLVS && m.payload.length >= 4 + C.NLMSG_HDRLEN) {
    const origLen = m.flags & C.NLM_F_CAPPED ? C.NLMSG_HDRLEN : m.payload.readUInt32LE(4);
    const tlvs = new NlAttrs(m.payload.subarray(4 + align4(origLen)));
    const msg = tlvs.str(C.NLMSGERR_ATTR_MSG);
    if (msg) res.message = msg;
  }
  return res;
}

/** CTRL_CMD_GETFAMILY for a family name. */
export function encodeGetFamily(name: string, seq: number): Buffer {
  return encodeGenlMessage({
    family: C.GENL_ID_CTRL,
    cmd: C.CTRL_CMD_GETFAMILY,
    version: 1,
    seq,
    attrs: [{ type: C.CTRL_ATTR_FAMILY_NAME, str: name }],
  });
}

/** The family id and multicast groups from a CTRL_CMD_NEWFAMILY reply payload (genl header included). */
export function decodeFamily(payload: Buffer): { id: number; groups: Map<string, number> } {
  const a = new NlAttrs(payload.subarray(C.GENL_HDRLEN));
  const id = a.u16(C.CTRL_ATTR_FAMILY_ID);
  if (id === undefined) throw new Error('generic netlink: family reply without CTRL_ATTR_FAMILY_ID');
  const groups = new Map<string, number>();
  for (const g of a.nested(C.CTRL_ATTR_MCAST_GROUPS)?.list ?? []) {
    const ga = new NlAttrs(g.value);
    const name = ga.str(C.CTRL_ATTR_MCAST_GRP_NAME);
    const gid = ga.u32(C.CTRL_ATTR_MCAST_GRP_ID);
    if (name !== undefined && gid !== undefined) groups.set(name, gid);
  }
  return { id, groups };
}

export interface NbdConnectParams {
  /** /dev/nbd<index>; omitted: the kernel picks a free one (creating it if needed) */
  index?: number;
  /** socket fds of this process handed to the kernel (one per connection) */
  sockets: number[];
  sizeBytes: bigint | number;
  blockSize: number;
  /** NBD_FLAG_* transmission flags the server offers */
  serverFlags: number;
  /** seconds; 0 (the default) never times out a blocked but alive server */
  timeoutSec?: number;
  /** seconds the kernel holds I/O for a RECONFIGURE after our socket died */
  deadConnTimeoutSec: number;
  /** matched by RECONFIGURE; names what is behind the node (e.g. the target and LUN) */
  backendId: string;
}

const sockets = (fds: number[]): NlAttr => ({
  type: C.NBD_ATTR_SOCKETS,
  nested: fds.map((fd) => ({ type: C.NBD_SOCK_ITEM, nested: [{ type: C.NBD_SOCK_FD, u32: fd }] })),
});

/** NBD_CMD_CONNECT. CLIENT_FLAGS is always 0: never DESTROY_ON_DISCONNECT or DISCONNECT_ON_CLOSE. */
export function encodeConnect(family: number, seq: number, p: NbdConnectParams): Buffer {
  if (p.sockets.length === 0) throw new RangeError('CONNECT needs at least one socket');
  const attrs: NlAttr[] = [];
  if (p.index !== undefined) attrs.push({ type: C.NBD_ATTR_INDEX, u32: p.index });
  attrs.push(
    { type: C.NBD_ATTR_SIZE_BYTES, u64: BigInt(p.sizeBytes) },
    { type: C.NBD_ATTR_BLOCK_SIZE_BYTES, u64: BigInt(p.blockSize) },
    { type: C.NBD_ATTR_SERVER_FLAGS, u64: BigInt(p.serverFlags) },
    { type: C.NBD_ATTR_CLIENT_FLAGS, u64: 0n },
    { type: C.NBD_ATTR_TIMEOUT, u64: BigInt(p.timeoutSec ?? 0) },
    { type: C.NBD_ATTR_DEAD_CONN_TIMEOUT, u64: BigInt(p.deadConnTimeoutSec) },
    { type: C.NBD_ATTR_BACKEND_IDENTIFIER, str: p.backendId },
    sockets(p.sockets),
  );
  return encodeGenlMessage({ family, cmd: C.NBD_CMD_CONNECT, seq, attrs });
}

export interface NbdReconfigureParams {
  index: number;
  /** replacement sockets for dead ones; none for a resize alone */
  sockets?: number[];
  backendId: string;
  /** new size: the kernel resizes the device when it differs (nbd_genl_size_set, Linux >= 5.3) */
  sizeBytes?: bigint | number;
  deadConnTimeoutSec?: number;
  timeoutSec?: number;
}

/**
 * NBD_CMD_RECONFIGURE: replaces the dead socket of a configured node (same backend id), and/or
 * sets its size. Server flags (NBD_FLAG_READ_ONLY) are taken only by CONNECT: a device's
 * read-only state cannot be changed while it is configured.
 */
export function encodeReconfigure(family: number, seq: number, p: NbdReconfigureParams): Buffer {
  const attrs: NlAttr[] = [{ type: C.NBD_ATTR_INDEX, u32: p.index }];
  if (p.sizeBytes !== undefined) attrs.push({ type: C.NBD_ATTR_SIZE_BYTES, u64: BigInt(p.sizeBytes) });
  if (p.timeoutSec !== undefined) attrs.push({ type: C.NBD_ATTR_TIMEOUT, u64: BigInt(p.timeoutSec) });
  if (p.deadConnTimeoutSec !== undefined)
    attrs.push({ type: C.NBD_ATTR_DEAD_CONN_TIMEOUT, u64: BigInt(p.deadConnTimeoutSec) });
  attrs.push({ type: C.NBD_ATTR_BACKEND_IDENTIFIER, str: p.backendId });
  if (p.sockets !== undefined && p.sockets.length > 0) attrs.push(sockets(p.sockets));
  return encodeGenlMessage({ family, cmd: C.NBD_CMD_RECONFIGURE, seq, attrs });
}

export function encodeDisconnect(family: number, seq: number, index: number): Buffer {
  return encodeGenlMessage({ family, cmd: C.NBD_CMD_DISCONNECT, seq, attrs: [{ type: C.NBD_ATTR_INDEX, u32: index }] });
}

export function encodeStatus(family: number, seq: number, index?: number): Buffer {
  return encodeGenlMessage({
    family,
    cmd: C.NBD_CMD_STATUS,
    seq,
    attrs: index === undefined ? [] : [{ type: C.NBD_ATTR_INDEX, u32: index }],
  });
}

export interface NbdDeviceStatus {
  index: number;
  connected: boolean;
}

/** The device list of an NBD_CMD_STATUS reply payload (genl header included). */
export function decodeStatus(payload: Buffer): NbdDeviceStatus[] {
  const a = new NlAttrs(payload.subarray(C.GENL_HDRLEN));
  const out: NbdDeviceStatus[] = [];
  for (const item of a.nested(C.NBD_ATTR_DEVICE_LIST)?.list ?? []) {
    if (item.type !== C.NBD_DEVICE_ITEM) continue;
    const d = new NlAttrs(item.value);
    const index = d.u32(C.NBD_DEVICE_INDEX);
    if (index !== undefined) out.push({ index, connected: (d.u8(C.NBD_DEVICE_CONNECTED) ?? 0) !== 0 });
  }
  return out;
}

/** NBD_ATTR_INDEX of a CONNECT reply or LINK_DEAD notification payload (genl header included). */
export function decodeIndex(payload: Buffer): number | undefined {
  return new NlAttrs(payload.subarray(C.GENL_HDRLEN)).u32(C.NBD_ATTR_INDEX);
}

/* ---------------------------------------------------------------- errors */

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v as number, k]));
export const errnoName = (e: number): string => errnoNames.get(e) ?? `errno ${e}`;

/** A failed NBD netlink operation, with what to do about it in the message. */
export class NbdNetlinkError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly errno: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'NbdNetlinkError';
  }
}

function explain(op: string, errno: number, index: number | undefined, ext?: string): NbdNetlinkError {
  const dev = index === undefined ? 'the NBD device' : `/dev/nbd${index}`;
  const code = errnoName(errno);
  const tail = ext ? ` (kernel: ${ext})` : '';
  let msg: string;
  switch (code) {
    case 'EPERM':
    case 'EACCES':
      msg = `${op} of ${dev} refused: NBD netlink needs CAP_SYS_ADMIN, run srp-nbd as root`;
      break;
    case 'EBUSY':
      msg =
        `${op} refused: ${dev} is already in use (configured by another process or still attached); ` +
        'choose another index, or detach it first; a restarted daemon takes its node back with RECONFIGURE';
      break;
    case 'EINVAL':
      msg =
        op === 'NBD_CMD_RECONFIGURE'
          ? `${op} of ${dev} refused (EINVAL): the node is not connected or its backend identifier differs`
          : `${op} of ${dev} refused (EINVAL): invalid parameters`;
      break;
    case 'ENOENT':
    case 'ENODEV':
      msg = `${op}: ${dev} does not exist (${code})`;
      break;
    default:
      msg = `${op} of ${dev} failed: ${code}`;
  }
  return new NbdNetlinkError(msg + tail, code, errno);
}

/** The nbd module is not loaded (generic netlink family "nbd" unknown). */
export class NbdModuleMissingError extends NbdNetlinkError {
  constructor(options?: { cause?: unknown }) {
    super(
      "the kernel NBD driver is not available (generic netlink family 'nbd' not found): run `modprobe nbd`",
      'ENOENT',
      2,
      options,
    );
    this.name = 'NbdModuleMissingError';
  }
}

/* ---------------------------------------------------------------- socket */

/** What NbdNetlink needs from the addon. */
export type NetlinkBinding = Pick<
  NativeBinding,
  | 'netlinkOpen'
  | 'netlinkSend'
  | 'netlinkRecv'
  | 'setsockoptInt'
  | 'close'
  | 'pollStart'
  | 'pollStop'
  | 'pollRef'
  | 'socketPair'
> &
  Partial<Pick<NativeBinding, 'netlinkSendAsync'>>;

const RECV_BUF = 65536;

/** One non-blocking generic netlink socket: request/ACK with a timeout, notifications to a callback. */
class GenlSocket {
  readonly fd: number;
  private seq = Math.floor(Math.random() * 0x7fff_ffff);
  private readonly rx = Buffer.alloc(RECV_BUF);
  private poller = 0;
  private pending:
    | {
        seq: number;
        replies: NlMessage[];
        resolve: (r: NlMessage[]) => void;
        reject: (e: Error) => void;
        timer: NodeJS.Timeout | undefined;
      }
    | undefined;
  /** A send still in the kernel (netlinkSendAsync): the fd is closed only after it. */
  private sending: Promise<void> | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  onNotification: ((m: NlMessage) => void) | undefined;

  constructor(private readonly b: NetlinkBinding) {
    this.fd = b.netlinkOpen(C.NETLINK_GENERIC);
    for (const opt of [C.NETLINK_EXT_ACK, C.NETLINK_CAP_ACK]) {
      try {
        b.setsockoptInt(this.fd, C.SOL_NETLINK, opt, 1);
      } catch {
        /* older kernels: plain errors only */
      }
    }
  }

  /** Keeps a poller running (for multicast listeners). */
  listen(): void {
    if (!this.poller) this.poller = this.b.pollStart(this.fd, UV_READABLE, (err) => this.onPoll(err));
  }

  /**
   * Sends one request (built for a sequence number) and resolves with its replies once ACKed.
   * The timeout counts from the end of the send: the kernel runs its handler inside sendmsg and
   * has queued its answer by the time the send returns, and fds named in the request (an NBD
   * socket) stay the caller's to close only once the kernel is done with them. A send the kernel
   * keeps (it waits for something) keeps the request, and the ones behind it, waiting.
   */
  request(build: (seq: number) => Buffer, timeoutMs = 5000): Promise<NlMessage[]> {
    const run = () =>
      new Promise<NlMessage[]>((resolve, reject) => {
        const seq = (this.seq = (this.seq + 1) >>> 0);
        const pending = {
          seq,
          replies: [] as NlMessage[],
          resolve,
          reject,
          timer: undefined as NodeJS.Timeout | undefined,
        };
        this.pending = pending;
        const sent = (): void => {
          if (this.pending !== pending) return; // answered already
          pending.timer = setTimeout(
            () => this.settle(new Error(`netlink request got no answer within ${timeoutMs} ms`)),
            timeoutMs,
          );
        };
        try {
          const message = build(seq);
          if (this.b.netlinkSendAsync) {
            // Off the event loop, a handler that waits for an NBD socket this process serves
            // (DISCONNECT does) does not stop the loop that serves it.
            const send = this.b.netlinkSendAsync(this.fd, message).then(sent, (err: Error) => {
              if (this.pending === pending) this.settle(err);
            });
            this.sending = send;
            void send.finally(() => {
              if (this.sending === send) this.sending = undefined;
            });
          } else {
            this.b.netlinkSend(this.fd, message);
            sent();
            this.drain();
          }
        } catch (err) {
          this.settle(err as Error);
          return;
        }
        if (this.pending && !this.poller)
          this.poller = this.b.pollStart(this.fd, UV_READABLE, (err) => this.onPoll(err));
      });
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private settle(result: NlMessage[] | Error): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    if (!this.onNotification && this.poller) {
      this.b.pollStop(this.poller);
      this.poller = 0;
    }
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
  }

  /** Readable: drain. A failed poll (stopped by the addon) is freed and fails the pending request. */
  private onPoll(err: NativeError | null): void {
    if (!err) return this.drain();
    this.b.pollStop(this.poller);
    this.poller = 0;
    this.settle(err);
  }

  private drain(): void {
    for (;;) {
      let n: number;
      try {
        n = this.b.netlinkRecv(this.fd, this.rx);
      } catch (err) {
        // ENOBUFS: multicast overrun; the request/ACK path still works
        if ((err as NativeError).code === 'ENOBUFS') continue;
        this.settle(err as Error);
        return;
      }
      if (n < 0) return;
      for (const m of parseNlMessages(this.rx.subarray(0, Math.min(n, this.rx.length)))) {
        const p = this.pending;
        if (p && m.seq === p.seq && m.seq !== 0) {
          if (m.type === C.NLMSG_ERROR) {
            const e = parseNlError(m);
            if (e.errno === 0) this.settle(p.replies);
            else {
              // Shaped like a NativeError: the errno's name in `code`, its number in `errno`.
              const code = errnoName(e.errno);
              this.settle(Object.assign(new Error(e.message ?? code), { code, errno: e.errno, extAck: e.message }));
            }
          } else if (m.type === C.NLMSG_DONE) this.settle(p.replies);
          else p.replies.push({ ...m, payload: Buffer.from(m.payload) });
        } else if (m.seq === 0 && this.onNotification) {
          this.onNotification(m);
        }
      }
    }
  }

  close(): void {
    if (this.poller) this.b.pollStop(this.poller);
    this.poller = 0;
    this.settle(new Error('netlink socket closed'));
    // A worker still in sendto on this fd: closing now could hand the number to another socket.
    if (this.sending) void this.sending.finally(() => this.b.close(this.fd));
    else this.b.close(this.fd);
  }
}

/** NBD generic netlink client. open() resolves the family and fails clearly without the module. */
export class NbdNetlink {
  private constructor(
    private readonly b: NetlinkBinding,
    private readonly sock: GenlSocket,
    readonly familyId: number,
    readonly mcastGroup: number | undefined,
  ) {}

  static async open(binding: NetlinkBinding): Promise<NbdNetlink> {
    const sock = new GenlSocket(binding);
    try {
      const replies = await sock.request((seq) => encodeGetFamily(C.NBD_GENL_FAMILY_NAME, seq));
      const fam = replies[0] ? decodeFamily(replies[0].payload) : undefined;
      if (!fam) throw new NbdModuleMissingError();
      return new NbdNetlink(binding, sock, fam.id, fam.groups.get(C.NBD_GENL_MCAST_GROUP_NAME));
    } catch (err) {
      sock.close();
      if (err instanceof NbdNetlinkError) throw err;
      if (isErrno(err, 'ENOENT')) throw new NbdModuleMissingError({ cause: err });
      throw new NbdNetlinkError(`generic netlink family lookup failed: ${(err as Error).message}`, 'EIO', 5, {
        cause: err,
      });
    }
  }

  private async call(op: string, index: number | undefined, build: (seq: number) => Buffer): Promise<NlMessage[]> {
    try {
      return await this.sock.request(build);
    } catch (err) {
      const e = err as { errno?: number; extAck?: string };
      if (typeof e.errno === 'number' && e.errno > 0) throw explain(op, e.errno, index, e.extAck);
      throw new NbdNetlinkError(`${op} failed: ${(err as Error).message}`, 'EIO', 5, { cause: err });
    }
  }

  /** NBD_CMD_CONNECT; resolves with the index the kernel used. */
  async connect(p: NbdConnectParams): Promise<number> {
    const replies = await this.call('NBD_CMD_CONNECT', p.index, (seq) => encodeConnect(this.familyId, seq, p));
    const idx = replies.map((m) => decodeIndex(m.payload)).find((i) => i !== undefined) ?? p.index;
    if (idx === undefined)
      throw new NbdNetlinkError('NBD_CMD_CONNECT: the kernel did not say which device it used', 'EIO', 5);
    return idx;
  }

  async reconfigure(p: NbdReconfigureParams): Promise<void> {
    await this.call('NBD_CMD_RECONFIGURE', p.index, (seq) => encodeReconfigure(this.familyId, seq, p));
  }

  /** Resizes a configured /dev/nbd<index> (NBD_CMD_RECONFIGURE with NBD_ATTR_SIZE_BYTES, no sockets). */
  async resize(index: number, backendId: string, sizeBytes: bigint | number): Promise<void> {
    await this.call('NBD_CMD_RECONFIGURE', index, (seq) =>
      encodeReconfigure(this.familyId, seq, { index, backendId, sizeBytes }),
    );
  }

  async disconnect(index: number): Promise<void> {
    await this.call('NBD_CMD_DISCONNECT', index, (seq) => encodeDisconnect(this.familyId, seq, index));
  }

  async status(index?: number): Promise<NbdDeviceStatus[]> {
    const replies = await this.call('NBD_CMD_STATUS', index, (seq) => encodeStatus(this.familyId, seq, index));
    return replies.flatMap((m) => decodeStatus(m.payload));
  }

  /**
   * Calls fn(index) for every LINK_DEAD multicast (the kernel saw our end of a socket die).
   * Returns a function that stops watching. The watcher does not keep the process alive.
   */
  watchLinkDead(fn: (index: number) => void): () => void {
    if (this.mcastGroup === undefined)
      throw new NbdNetlinkError(
        `NBD multicast group '${C.NBD_GENL_MCAST_GROUP_NAME}' not offered by the kernel`,
        'ENOENT',
        2,
      );
    const s = new GenlSocket(this.b);
    this.b.setsockoptInt(s.fd, C.SOL_NETLINK, C.NETLINK_ADD_MEMBERSHIP, this.mcastGroup);
    s.onNotification = (m) => {
      if (m.type !== this.familyId || m.payload.length < C.GENL_HDRLEN || m.payload[0] !== C.NBD_CMD_LINK_DEAD) return;
      const idx = decodeIndex(m.payload);
      if (idx !== undefined) fn(idx);
    };
    s.listen();
    return () => s.close();
  }

  close(): void {
    this.sock.close();
  }
}

/* ---------------------------------------------------------------- attach */

export interface AttachOptions {
  server: NbdServer;
  exportName: string;
  /** /dev/nbd<index>, or any free one */
  index?: number;
  /** default: the export's minimum block size clamped to 512..4096 */
  blockSize?: number;
  /** default 30 s */
  deadConnTimeoutSec?: number;
  /** default: "srp-nbd:<exportName>" */
  backendId?: string;
}

export interface NbdAttachment {
  index: number;
  device: string;
  backendId: string;
  connection: NbdConnection;
}

function blockSizeFor(b: Backend, want?: number): number {
  const bs = want ?? Math.min(4096, Math.max(512, b.blockSize.minimum));
  if (bs < 512 || bs > 4096 || (bs & (bs - 1)) !== 0)
    throw new RangeError(`NBD block size ${bs} must be a power of two in 512..4096`);
  return bs;
}

/**
 * The send buffer of each end of a device's socketpair (the kernel doubles it for its accounting).
 * On an AF_UNIX stream the sender's buffer bounds the bytes queued for the reader: at the default
 * (net.core.wmem_default, 208 KiB) a 1 MiB WRITE's payload reaches us, and a 1 MiB READ's reply
 * reaches the kernel, in many pieces, each a wake-up and a system call on both sides. 2 MiB holds
 * several requests of the largest size the daemon gives a device (max_sectors_kb: 512 KiB,
 * device-limits.ts) with their headers, so one read takes a request whole.
 */
export const NBD_SOCKET_SNDBUF = 2 << 20;

/** Sets a socket's send buffer beyond net.core.wmem_max when allowed (CAP_NET_ADMIN), else up to it. */
function sizeSendBuffer(b: NetlinkBinding, fd: number, bytes: number): void {
  try {
    b.setsockoptInt(fd, C.SOL_SOCKET, C.SO_SNDBUFFORCE, bytes);
  } catch {
    b.setsockoptInt(fd, C.SOL_SOCKET, C.SO_SNDBUF, bytes);
  }
}

/** Makes a socketpair and serves our end in transmission-only mode; the caller hands the other to the kernel. */
function servePair(
  b: NetlinkBinding,
  server: NbdServer,
  exportName: string,
): { kernelFd: number; connection: NbdConnection; socket: () => Socket | undefined } {
  const [kernelFd, ourFd] = b.socketPair();
  let sock: Socket | undefined;
  try {
    sizeSendBuffer(b, kernelFd, NBD_SOCKET_SNDBUF);
    sizeSendBuffer(b, ourFd, NBD_SOCKET_SNDBUF);
    const connection = server.serveTransmission((sink) => (sock = socketFromFd(ourFd, sink)), exportName);
    return { kernelFd, connection, socket: () => sock };
  } catch (err) {
    b.close(kernelFd);
    if (!sock) b.close(ourFd);
    throw err;
  }
}

/**
 * Attaches an export of `server` as /dev/nbdN: socketpair, our end served in transmission-only
 * mode, the other end given to the kernel with NBD_CMD_CONNECT (TIMEOUT 0, DEAD_CONN_TIMEOUT,
 * BACKEND_IDENTIFIER). The kernel keeps its own reference to the socket, so our copy of its fd is
 * closed afterwards.
 */
export async function attach(nl: NbdNetlink, b: NetlinkBinding, opts: AttachOptions): Promise<NbdAttachment> {
  const found = opts.server.lookup(opts.exportName);
  if (!found) throw new Error(`attach: no export named '${opts.exportName}'`);
  const backendId = opts.backendId ?? `srp-nbd:${found.name}`;
  const blockSize = blockSizeFor(found.backend, opts.blockSize);
  const { kernelFd, connection } = servePair(b, opts.server, found.name);
  try {
    const index = await nl.connect({
      ...(opts.index !== undefined ? { index: opts.index } : {}),
      sockets: [kernelFd],
      sizeBytes: found.backend.size,
      blockSize,
      serverFlags: transmissionFlags(found.backend),
      timeoutSec: 0,
      deadConnTimeoutSec: opts.deadConnTimeoutSec ?? 30,
      backendId,
    });
    return { index, device: `/dev/nbd${index}`, backendId, connection };
  } catch (err) {
    connection.close();
    throw err;
  } finally {
    b.close(kernelFd);
  }
}

/**
 * NBD_CMD_DISCONNECT for an attached device. The kernel's handler first sends NBD_CMD_DISC on the
 * device's socket, behind any request it is still sending there; when our connection has stopped
 * reading (over its in-flight limits, e.g. with writes held by a path outage), that send waits
 * for us. After `graceMs` without an answer our end is closed (`onAbort` is told first): the
 * kernel's send fails, it fails the device's outstanding requests and the disconnect completes.
 */
export async function detach(nl: NbdNetlink, att: NbdAttachment, graceMs = 1000, onAbort?: () => void): Promise<void> {
  const done = nl.disconnect(att.index);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), graceMs)));
  try {
    if ((await Promise.race([done, late])) === 'late') {
      onAbort?.();
      att.connection.abort();
      await done;
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Takes an existing /dev/nbd<index> back after a restart (or a dead socket) with
 * NBD_CMD_RECONFIGURE and a fresh socketpair. Wait for LINK_DEAD first: a RECONFIGURE before the
 * kernel marked the old socket dead is accepted but ignored (6.1).
 */
export async function reattach(
  nl: NbdNetlink,
  b: NetlinkBinding,
  opts: AttachOptions & { index: number },
): Promise<NbdAttachment> {
  const found = opts.server.lookup(opts.exportName);
  if (!found) throw new Error(`reattach: no export named '${opts.exportName}'`);
  const backendId = opts.backendId ?? `srp-nbd:${found.name}`;
  const { kernelFd, connection } = servePair(b, opts.server, found.name);
  try {
    await nl.reconfigure({
      index: opts.index,
      sockets: [kernelFd],
      backendId,
      // the export's size now: a LUN that grew while the daemon was away (no-op when unchanged)
      sizeBytes: found.backend.size,
      ...(opts.deadConnTimeoutSec !== undefined ? { deadConnTimeoutSec: opts.deadConnTimeoutSec } : {}),
    });
    return { index: opts.index, device: `/dev/nbd${opts.index}`, backendId, connection };
  } catch (err) {
    connection.close();
    throw err;
  } finally {
    b.close(kernelFd);
  }
}
