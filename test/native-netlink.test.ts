// NBD generic netlink: golden-byte encoding, reply parsing, the client against a mock kernel
// (attach serves the socketpair end it keeps), and real calls on a host without the nbd module.
import * as net from 'node:net';
import t from 'tap';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import * as NC from '../src/nbd/nbd-constants.js';
import * as C from '../src/nbd/nbd-netlink-constants.js';
import {
  NbdModuleMissingError,
  NbdNetlink,
  NlAttrs,
  attach,
  decodeFamily,
  detach,
  decodeStatus,
  encodeConnect,
  encodeDisconnect,
  encodeGetFamily,
  encodeNlAttrs,
  encodeReconfigure,
  encodeStatus,
  parseNlError,
  parseNlMessages,
  NBD_SOCKET_SNDBUF,
  reattach,
  type NetlinkBinding,
  type NlAttr,
} from '../src/nbd/netlink.js';
import { NbdServer } from '../src/nbd/server.js';
import { tryLoadNative, UV_READABLE, type NativeError } from '../src/native/native.js';
import { silentLogger } from '../src/util/log.js';
import { ByteReader } from './helpers/byte-reader.js';

/** Hex with spaces and comments removed ("08 00 01 00 // INDEX"). */
const hex = (s: string) => Buffer.from(s.replace(/\/\/[^\n]*/g, '').replace(/\s+/g, ''), 'hex');

t.test('DISCONNECT, STATUS and GETFAMILY against hand-written bytes', async (t) => {
  t.same(
    encodeDisconnect(0x1a, 7, 3),
    hex(`
    1c000000 1a00 0500 07000000 00000000   // nlmsghdr: len 28, family 0x1a, REQUEST|ACK, seq 7
    02 01 0000                             // genl: NBD_CMD_DISCONNECT, version 1
    0800 0100 03000000                     // NBD_ATTR_INDEX 3`),
  );
  t.same(encodeStatus(0x1a, 8), hex('14000000 1a00 0500 08000000 00000000 05 01 0000'));
  t.same(
    encodeGetFamily('nbd', 1),
    hex(`
    1c000000 1000 0500 01000000 00000000   // GENL_ID_CTRL
    03 01 0000                             // CTRL_CMD_GETFAMILY
    0800 0200 6e626400                     // CTRL_ATTR_FAMILY_NAME "nbd\\0"`),
  );
});

t.test('CONNECT carries TIMEOUT 0, no client flags, backend id and the socket fd', async (t) => {
  const msg = encodeConnect(0x1a, 9, {
    index: 0,
    sockets: [5],
    sizeBytes: 1 << 20,
    blockSize: 512,
    serverFlags: 0x0d,
    deadConnTimeoutSec: 30,
    backendId: 'ab',
  });
  t.same(
    msg,
    hex(`
    7c000000 1a00 0500 09000000 00000000   // len 124
    01 01 0000                             // NBD_CMD_CONNECT
    0800 0100 00000000                     // INDEX 0
    0c00 0200 0000100000000000             // SIZE_BYTES 1 MiB
    0c00 0300 0002000000000000             // BLOCK_SIZE_BYTES 512
    0c00 0500 0d00000000000000             // SERVER_FLAGS 0x0d
    0c00 0600 0000000000000000             // CLIENT_FLAGS 0: never DESTROY_ON_DISCONNECT
    0c00 0400 0000000000000000             // TIMEOUT 0
    0c00 0800 1e00000000000000             // DEAD_CONN_TIMEOUT 30
    0700 0a00 616200 00                    // BACKEND_IDENTIFIER "ab" + pad
    1000 0700                              // SOCKETS
      0c00 0100                            //   SOCK_ITEM
        0800 0100 05000000                 //     SOCK_FD 5`),
  );
  t.equal(msg.readUInt32LE(0), msg.length);
  t.throws(() =>
    encodeConnect(1, 1, {
      sockets: [],
      sizeBytes: 1,
      blockSize: 512,
      serverFlags: 1,
      deadConnTimeoutSec: 1,
      backendId: 'x',
    }),
  );
  const noIndex = new NlAttrs(
    encodeConnect(1, 1, {
      sockets: [3, 4],
      sizeBytes: 1,
      blockSize: 512,
      serverFlags: 1,
      deadConnTimeoutSec: 1,
      backendId: 'x',
    }).subarray(20),
  );
  t.equal(noIndex.get(C.NBD_ATTR_INDEX), undefined, 'no index: the kernel picks one');
  t.same(
    noIndex.nested(C.NBD_ATTR_SOCKETS)!.list.map((i) => new NlAttrs(i.value).u32(C.NBD_SOCK_FD)),
    [3, 4],
  );
  const re = new NlAttrs(encodeReconfigure(1, 1, { index: 2, sockets: [6], backendId: 'ab' }).subarray(20));
  t.equal(re.u32(C.NBD_ATTR_INDEX), 2);
  t.equal(re.str(C.NBD_ATTR_BACKEND_IDENTIFIER), 'ab');
  t.equal(re.get(C.NBD_ATTR_TIMEOUT), undefined, 'RECONFIGURE leaves the timeout alone unless asked');
  t.equal(re.get(C.NBD_ATTR_SIZE_BYTES), undefined, 'and the size');
});

t.test(
  'RECONFIGURE that resizes: INDEX, SIZE_BYTES, BACKEND_IDENTIFIER, no sockets (hand-written bytes)',
  async (t) => {
    t.same(
      encodeReconfigure(0x1a, 9, { index: 3, backendId: 'srp-nbd:t-lun0', sizeBytes: 0x1_4000_0000 }),
      hex(`
    3c000000 1a00 0500 09000000 00000000   // nlmsghdr: len 60, family 0x1a, REQUEST|ACK, seq 9
    03 01 0000                             // genl: NBD_CMD_RECONFIGURE, version 1
    0800 0100 03000000                     // NBD_ATTR_INDEX 3
    0c00 0200 00000040 01000000            // NBD_ATTR_SIZE_BYTES 5 GiB (u64, host order)
    1300 0a00 7372702d 6e62643a 742d6c75 6e3000 00  // NBD_ATTR_BACKEND_IDENTIFIER "srp-nbd:t-lun0"`),
    );
  },
);

t.test('parsing: family reply with groups, status list, error with extended ACK, split datagrams', async (t) => {
  const fam = Buffer.concat([
    hex('01 02 0000'),
    encodeNlAttrs([
      { type: C.CTRL_ATTR_FAMILY_NAME, str: 'nbd' },
      { type: C.CTRL_ATTR_FAMILY_ID, u16: 0x1b },
      {
        type: C.CTRL_ATTR_MCAST_GROUPS,
        nested: [
          {
            type: 1,
            nested: [
              { type: C.CTRL_ATTR_MCAST_GRP_ID, u32: 9 },
              { type: C.CTRL_ATTR_MCAST_GRP_NAME, str: 'nbd_mc_group' },
            ],
          },
        ],
      },
    ]),
  ]);
  const f = decodeFamily(fam);
  t.equal(f.id, 0x1b);
  t.equal(f.groups.get('nbd_mc_group'), 9);
  const st = Buffer.concat([
    hex('05 01 0000'),
    encodeNlAttrs([
      {
        type: C.NBD_ATTR_DEVICE_LIST,
        nested: [
          {
            type: C.NBD_DEVICE_ITEM,
            nested: [
              { type: C.NBD_DEVICE_INDEX, u32: 0 },
              { type: C.NBD_DEVICE_CONNECTED, u8: 1 },
            ],
          },
          {
            type: C.NBD_DEVICE_ITEM,
            nested: [
              { type: C.NBD_DEVICE_INDEX, u32: 1 },
              { type: C.NBD_DEVICE_CONNECTED, u8: 0 },
            ],
          },
        ],
      },
    ]),
  ]);
  t.same(decodeStatus(st), [
    { index: 0, connected: true },
    { index: 1, connected: false },
  ]);
  // NLMSG_ERROR -16 (EBUSY), capped, with NLMSGERR_ATTR_MSG
  const err = hex(`
    30000000 0200 0003 05000000 00000000   // len 48, NLMSG_ERROR, flags CAPPED|ACK_TLVS, seq 5
    f0ffffff                               // error -16
    14000000 1a00 0500 05000000 00000000   // original header only
    0900 0100 6275737900 000000            // NLMSGERR_ATTR_MSG "busy"`);
  const msgs = parseNlMessages(Buffer.concat([err, err]));
  t.equal(msgs.length, 2, 'two messages in one datagram');
  t.same(parseNlError(msgs[0]!), { errno: 16, message: 'busy' });
  t.same(parseNlMessages(err.subarray(0, 30)), [], 'a cut message is not parsed');
});

/* ------------------------------------------------------------ mock kernel */

interface Sent {
  cmd: number;
  attrs: NlAttrs;
  seq: number;
}

/** A fake nbd family behind the NetlinkBinding surface; socket calls go to `real` when given. */
class MockKernel implements NetlinkBinding {
  readonly family = 0x1b;
  readonly group = 4;
  present = true;
  answer: (s: Sent) => { errno?: number; ext?: string; reply?: NlAttr[] } = () => ({});
  sent: Sent[] = [];
  kept: number[] = [];
  private nextFd = 1000;
  private readonly queues = new Map<number, Buffer[]>();
  private readonly pollers = new Map<number, { fd: number; cb: (err: NativeError | null, events: number) => void }>();
  /** netlinkSend queues no answer (the request waits) */
  hold = false;
  private nextPoll = 1;
  members = new Map<number, number>();
  closed: number[] = [];
  constructor(private readonly real?: NetlinkBinding) {}

  netlinkOpen(): number {
    const fd = this.nextFd++;
    this.queues.set(fd, []);
    return fd;
  }
  /** SOL_SOCKET options set, in order (they go to `real` too, on the real socketpair's fds) */
  sockopts: { fd: number; name: number; value: number }[] = [];
  /** SO_SNDBUFFORCE fails with EPERM, as without CAP_NET_ADMIN */
  noForce = false;
  setsockoptInt(fd: number, level: number, name: number, value: number): void {
    if (level === C.SOL_NETLINK && name === C.NETLINK_ADD_MEMBERSHIP) this.members.set(fd, value);
    if (level !== C.SOL_SOCKET) return;
    if (this.noForce && name === C.SO_SNDBUFFORCE)
      throw Object.assign(new Error('setsockopt: Operation not permitted'), { code: 'EPERM' });
    this.real?.setsockoptInt(fd, level, name, value);
    this.sockopts.push({ fd, name, value });
  }
  socketPair(): [number, number] {
    return this.real ? this.real.socketPair() : [this.nextFd++, this.nextFd++];
  }
  close(fd: number): void {
    this.closed.push(fd);
    if (this.queues.has(fd)) {
      this.queues.delete(fd);
      return;
    }
    // the kernel end of the socketpair: keep it open, the test plays the kernel on it
    this.kept.push(fd);
  }
  pollStart(fd: number, _ev: number, cb: (err: NativeError | null, events: number) => void): number {
    const id = this.nextPoll++;
    this.pollers.set(id, { fd, cb });
    if (this.queues.get(fd)?.length) setImmediate(() => cb(null, UV_READABLE));
    return id;
  }
  /** Every poll fails as the addon reports it (POLLERR is UV_EBADF); the pollers stay until pollStop(). */
  failPolls(): void {
    const err = Object.assign(new Error('uv_poll failed: Bad file descriptor (EBADF)'), {
      errno: 9,
      code: 'EBADF',
      syscall: 'uv_poll',
    });
    for (const p of this.pollers.values()) setImmediate(() => p.cb(err, 0));
  }
  pollStop(id: number): void {
    this.pollers.delete(id);
  }
  pollRef(): void {}
  get pollerCount(): number {
    return this.pollers.size;
  }
  private push(fd: number, b: Buffer): void {
    this.queues.get(fd)?.push(b);
    for (const p of this.pollers.values()) if (p.fd === fd) setImmediate(() => p.cb(null, UV_READABLE));
  }
  private msg(type: number, flags: number, seq: number, body: Buffer): Buffer {
    const b = Buffer.alloc(16 + body.length);
    b.writeUInt32LE(b.length, 0);
    b.writeUInt16LE(type, 4);
    b.writeUInt16LE(flags, 6);
    b.writeUInt32LE(seq, 8);
    body.copy(b, 16);
    return b;
  }
  private ack(fd: number, seq: number, errno: number, ext?: string): void {
    const e = Buffer.alloc(4 + 16);
    e.writeInt32LE(-errno, 0);
    e.writeUInt32LE(16, 4);
    const tlv = ext ? encodeNlAttrs([{ type: C.NLMSGERR_ATTR_MSG, str: ext }]) : Buffer.alloc(0);
    this.push(fd, this.msg(C.NLMSG_ERROR, C.NLM_F_CAPPED | (ext ? C.NLM_F_ACK_TLVS : 0), seq, Buffer.concat([e, tlv])));
  }
  netlinkSend(fd: number, m: Buffer): number {
    if (this.hold) return m.length;
    const [h] = parseNlMessages(m);
    const seq = h!.seq;
    if (h!.type === C.GENL_ID_CTRL) {
      if (!this.present) {
        this.ack(fd, seq, 2);
        return m.length;
      }
      const body = Buffer.concat([
        Buffer.from([1, 2, 0, 0]),
        encodeNlAttrs([
          { type: C.CTRL_ATTR_FAMILY_ID, u16: this.family },
          {
            type: C.CTRL_ATTR_MCAST_GROUPS,
            nested: [
              {
                type: 1,
                nested: [
                  { type: C.CTRL_ATTR_MCAST_GRP_NAME, str: 'nbd_mc_group' },
                  { type: C.CTRL_ATTR_MCAST_GRP_ID, u32: this.group },
                ],
              },
            ],
          },
        ]),
      ]);
      this.push(fd, this.msg(C.GENL_ID_CTRL, 0, seq, body));
      this.ack(fd, seq, 0);
      return m.length;
    }
    const s: Sent = { cmd: h!.payload[0]!, attrs: new NlAttrs(h!.payload.subarray(4)), seq };
    this.sent.push(s);
    const a = this.answer(s);
    if (a.reply)
      this.push(
        fd,
        this.msg(this.family, 0, seq, Buffer.concat([Buffer.from([s.cmd, 1, 0, 0]), encodeNlAttrs(a.reply)])),
      );
    this.ack(fd, seq, a.errno ?? 0, a.ext);
    return m.length;
  }
  netlinkRecv(fd: number, buf: Buffer): number {
    const q = this.queues.get(fd);
    const d = q?.shift();
    if (!d) return -1;
    d.copy(buf);
    return d.length;
  }
  linkDead(index: number): void {
    for (const [fd, g] of this.members) {
      if (g !== this.group) continue;
      this.push(
        fd,
        this.msg(
          this.family,
          0,
          0,
          Buffer.concat([
            Buffer.from([C.NBD_CMD_LINK_DEAD, 1, 0, 0]),
            encodeNlAttrs([{ type: C.NBD_ATTR_INDEX, u32: index }]),
          ]),
        ),
      );
    }
  }
}

t.test('NbdNetlink against a mock kernel: clear errors per errno', async (t) => {
  const k = new MockKernel();
  k.present = false;
  await t.rejects(NbdNetlink.open(k), { name: 'NbdModuleMissingError', message: /modprobe nbd/ });
  t.equal(k.pollerCount, 0, 'no poller left behind');
  k.present = true;
  const nl = await NbdNetlink.open(k);
  t.equal(nl.familyId, 0x1b);
  t.equal(nl.mcastGroup, 4);
  const p = {
    index: 2,
    sockets: [7],
    sizeBytes: 4096,
    blockSize: 512,
    serverFlags: 1,
    deadConnTimeoutSec: 30,
    backendId: 'x',
  };
  k.answer = () => ({ errno: 16 });
  await t.rejects(nl.connect(p), { code: 'EBUSY', message: /\/dev\/nbd2 is already in use/ });
  k.answer = () => ({ errno: 1 });
  await t.rejects(nl.connect(p), { code: 'EPERM', message: /CAP_SYS_ADMIN, run srp-nbd as root/ });
  k.answer = () => ({ errno: 22, ext: 'bad backend' });
  await t.rejects(nl.reconfigure({ index: 2, sockets: [7], backendId: 'y' }), {
    code: 'EINVAL',
    message: /backend identifier differs.*kernel: bad backend/,
  });
  k.answer = (s) =>
    s.cmd === C.NBD_CMD_STATUS
      ? {
          reply: [
            {
              type: C.NBD_ATTR_DEVICE_LIST,
              nested: [
                {
                  type: C.NBD_DEVICE_ITEM,
                  nested: [
                    { type: C.NBD_DEVICE_INDEX, u32: 2 },
                    { type: C.NBD_DEVICE_CONNECTED, u8: 1 },
                  ],
                },
              ],
            },
          ],
        }
      : {};
  t.same(await nl.status(2), [{ index: 2, connected: true }]);
  await nl.disconnect(2);
  t.equal(k.sent.at(-1)!.cmd, C.NBD_CMD_DISCONNECT);
  // concurrent requests are serialised and each gets its own answer
  k.answer = (s) =>
    s.cmd === C.NBD_CMD_CONNECT ? { reply: [{ type: C.NBD_ATTR_INDEX, u32: s.attrs.u32(C.NBD_ATTR_INDEX)! }] } : {};
  const idx = await Promise.all([nl.connect({ ...p, index: 5 }), nl.connect({ ...p, index: 6 })]);
  t.same(idx, [5, 6]);
  const seen: number[] = [];
  const stop = nl.watchLinkDead((i) => seen.push(i));
  k.linkDead(3);
  await new Promise((r) => setTimeout(r, 20));
  t.same(seen, [3], 'LINK_DEAD multicast reaches the watcher');
  stop();
  nl.close();
  t.equal(k.pollerCount, 0, 'pollers released');
});

const real = tryLoadNative();

/**
 * The mock kernel answering from "a worker thread" (later, never inline), as the addon's
 * netlinkSendAsync does; a DISCONNECT can be held until `disconnectGate` resolves, as the real
 * kernel holds it while it waits to send NBD_CMD_DISC on a socket nobody reads.
 */
class AsyncMockKernel extends MockKernel {
  disconnectGate: Promise<void> | undefined;
  async netlinkSendAsync(fd: number, m: Buffer): Promise<number> {
    await new Promise((r) => setImmediate(r));
    const [h] = parseNlMessages(m);
    if (h!.type === this.family && h!.payload[0] === C.NBD_CMD_DISCONNECT && this.disconnectGate)
      await this.disconnectGate;
    return this.netlinkSend(fd, m);
  }
}

/**
 * A RAM export lun0 attached as /dev/nbd<index> through an AsyncMockKernel: the kernel, the
 * server, the netlink client, the attachment and the kernel end of the socketpair, as a socket.
 */
async function attachedThroughAsyncKernel(index: number) {
  const k = new AsyncMockKernel(real!);
  const server = new NbdServer({ logger: silentLogger() });
  server.addExport('lun0', new MemoryBackend({ size: 1 << 20 }));
  const nl = await NbdNetlink.open(k);
  k.answer = (s) => (s.cmd === C.NBD_CMD_CONNECT ? { reply: [{ type: C.NBD_ATTR_INDEX, u32: index }] } : {});
  const att = await attach(nl, k, { server, exportName: 'lun0' });
  const c = k.sent.filter((s) => s.cmd === C.NBD_CMD_CONNECT).at(-1)!;
  const fd = c.attrs.nested(C.NBD_ATTR_SOCKETS)!.nested(C.NBD_SOCK_ITEM)!.u32(C.NBD_SOCK_FD)!;
  return { k, server, nl, att, kernelEnd: new net.Socket({ fd, readable: true, writable: true }) };
}

t.test("a failed poll fails the waiting request with the addon's error; the next request polls again", async (t) => {
  const k = new AsyncMockKernel();
  const nl = await NbdNetlink.open(k);
  k.hold = true;
  const status = nl.status(2);
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  t.equal(k.pollerCount, 1, 'the request waits on a poller');
  k.failPolls();
  await t.rejects(status, { code: 'EBADF', message: /NBD_CMD_STATUS .*EBADF/ });
  t.equal(k.pollerCount, 0, 'the failed poller is released');
  k.hold = false;
  k.answer = () => ({ reply: [{ type: C.NBD_ATTR_DEVICE_LIST, nested: [] }] });
  t.same(await nl.status(2), []);
  nl.close();
  t.equal(k.pollerCount, 0);
});

t.test(
  'netlinkSendAsync: a generic netlink request from a worker thread, its answer read on the loop',
  { skip: real ? false : 'native addon not built' },
  async (t) => {
    const fd = real!.netlinkOpen(C.NETLINK_GENERIC);
    const msg = encodeGetFamily('nlctrl', 42);
    t.equal(await real!.netlinkSendAsync(fd, msg), msg.length, 'sent whole');
    const rx = Buffer.alloc(65536);
    let n = -1;
    for (let i = 0; i < 100 && n < 0; i++) {
      n = real!.netlinkRecv(fd, rx);
      if (n < 0) await new Promise((r) => setTimeout(r, 10));
    }
    const replies = parseNlMessages(rx.subarray(0, n));
    t.equal(replies[0]?.seq, 42, 'the kernel answered that request');
    t.equal(decodeFamily(replies[0]!.payload)?.id, C.GENL_ID_CTRL, 'nlctrl is the controller family');
    real!.close(fd);
    await t.rejects(
      real!.netlinkSendAsync(1_000_000, msg),
      { code: 'EBADF', syscall: 'sendto(AF_NETLINK)' },
      'errors reject with errno, code and syscall',
    );
  },
);

t.test(
  'detach: a DISCONNECT answered at once leaves the connection alone until it is closed',
  { skip: real ? false : 'native addon not built' },
  async (t) => {
    const { k, server, nl, att, kernelEnd } = await attachedThroughAsyncKernel(2);
    let aborted = 0;
    await detach(nl, att, 200, () => aborted++);
    t.equal(k.sent.at(-1)!.cmd, C.NBD_CMD_DISCONNECT);
    t.equal(aborted, 0, 'nothing aborted');
    // the connection still answers (the kernel would send NBD_CMD_DISC next)
    const rd = new ByteReader(kernelEnd);
    const req = Buffer.alloc(28);
    req.writeUInt32BE(NC.NBD_REQUEST_MAGIC, 0);
    req.writeUInt16BE(NC.NBD_CMD_READ, 6);
    req.writeUInt32BE(512, 24);
    kernelEnd.write(req);
    t.equal((await rd.read(16 + 512)).readUInt32BE(4), 0, 'READ answered after the DISCONNECT');
    kernelEnd.destroy();
    await att.connection.closed;
    nl.close();
    await server.close();
  },
);

t.test(
  'detach: a DISCONNECT the kernel cannot finish while our end is open: the connection is closed under it after the grace',
  { skip: real ? false : 'native addon not built' },
  async (t) => {
    const { k, server, nl, att, kernelEnd } = await attachedThroughAsyncKernel(3);
    // The kernel's DISC send waits until our end goes away (EOF on its end).
    k.disconnectGate = new Promise<void>((r) => kernelEnd.once('end', () => r()));
    kernelEnd.resume();
    let aborted = 0;
    const t0 = Date.now();
    await detach(nl, att, 200, () => aborted++);
    t.equal(aborted, 1, 'told once that the connection is being closed');
    t.ok(Date.now() - t0 >= 190, `answered after the grace (${Date.now() - t0} ms)`);
    t.equal(k.sent.at(-1)!.cmd, C.NBD_CMD_DISCONNECT);
    await att.connection.closed;
    kernelEnd.destroy();
    nl.close();
    await server.close();
  },
);

t.test(
  'attach: CONNECT with the kernel end of a socketpair, our end served (mock kernel, real socketpair)',
  { skip: real ? false : 'native addon not built' },
  async (t) => {
    const k = new MockKernel(real!);
    const server = new NbdServer({ logger: silentLogger() });
    const disk = new MemoryBackend({ size: 1 << 20 });
    disk.write(4096, Buffer.alloc(512, 0xab));
    server.addExport('lun0', disk);
    const nl = await NbdNetlink.open(k);
    k.answer = (s) => (s.cmd === C.NBD_CMD_CONNECT ? { reply: [{ type: C.NBD_ATTR_INDEX, u32: 4 }] } : {});
    const att = await attach(nl, k, { server, exportName: 'lun0' });
    t.equal(att.device, '/dev/nbd4');
    const c = k.sent.find((s) => s.cmd === C.NBD_CMD_CONNECT)!;
    t.equal(c.attrs.u32(C.NBD_ATTR_INDEX), undefined);
    t.equal(c.attrs.get(C.NBD_ATTR_TIMEOUT)!.readBigUInt64LE(0), 0n, 'TIMEOUT 0');
    t.equal(c.attrs.get(C.NBD_ATTR_CLIENT_FLAGS)!.readBigUInt64LE(0), 0n, 'no DESTROY_ON_DISCONNECT');
    t.equal(c.attrs.get(C.NBD_ATTR_DEAD_CONN_TIMEOUT)!.readBigUInt64LE(0), 30n);
    t.equal(c.attrs.get(C.NBD_ATTR_SIZE_BYTES)!.readBigUInt64LE(0), 1n << 20n);
    t.equal(c.attrs.str(C.NBD_ATTR_BACKEND_IDENTIFIER), 'srp-nbd:lun0');
    const flags = Number(c.attrs.get(C.NBD_ATTR_SERVER_FLAGS)!.readBigUInt64LE(0));
    t.ok(flags & NC.NBD_FLAG_HAS_FLAGS && flags & NC.NBD_FLAG_SEND_FLUSH);
    const fd = c.attrs.nested(C.NBD_ATTR_SOCKETS)!.nested(C.NBD_SOCK_ITEM)!.u32(C.NBD_SOCK_FD)!;
    t.same(k.kept, [fd], 'attach closes its copy of the kernel end');
    // both ends' send buffers sized for whole large requests and replies (the real setsockopt took them)
    t.equal(k.sockopts.length, 2);
    t.equal(k.sockopts[0]!.fd, fd, 'the kernel end first');
    t.not(k.sockopts[1]!.fd, fd, 'then ours');
    for (const o of k.sockopts) t.same([o.name, o.value], [C.SO_SNDBUFFORCE, NBD_SOCKET_SNDBUF]);

    // play the kernel: one READ on the kernel end gets the data back
    const ks = new net.Socket({ fd, readable: true, writable: true });
    const rd = new ByteReader(ks);
    const req = Buffer.alloc(28);
    req.writeUInt32BE(NC.NBD_REQUEST_MAGIC, 0);
    req.writeUInt16BE(NC.NBD_CMD_READ, 6);
    req.writeUInt32BE(0x1234, 12);
    req.writeBigUInt64BE(4096n, 16);
    req.writeUInt32BE(512, 24);
    ks.write(req);
    const rep = await rd.read(16 + 512);
    t.equal(rep.readUInt32BE(0), NC.NBD_SIMPLE_REPLY_MAGIC);
    t.equal(rep.readUInt32BE(4), 0, 'no error');
    t.same(rep.subarray(16), Buffer.alloc(512, 0xab));

    // the kernel's end dies; a new socketpair replaces it with RECONFIGURE
    ks.destroy();
    await att.connection.closed;
    const again = await reattach(nl, k, { server, exportName: 'lun0', index: 4 });
    const r = k.sent.at(-1)!;
    t.equal(r.cmd, C.NBD_CMD_RECONFIGURE);
    t.equal(r.attrs.u32(C.NBD_ATTR_INDEX), 4);
    t.equal(r.attrs.str(C.NBD_ATTR_BACKEND_IDENTIFIER), 'srp-nbd:lun0');
    const fd2 = r.attrs.nested(C.NBD_ATTR_SOCKETS)!.nested(C.NBD_SOCK_ITEM)!.u32(C.NBD_SOCK_FD)!;
    new net.Socket({ fd: fd2 }).destroy();
    await again.connection.closed;

    // without CAP_NET_ADMIN the buffers are sized as far as net.core.wmem_max allows
    k.noForce = true;
    k.sockopts.length = 0;
    const capped = await reattach(nl, k, { server, exportName: 'lun0', index: 4 });
    t.same(
      k.sockopts.map((o) => [o.name, o.value]),
      [
        [C.SO_SNDBUF, NBD_SOCKET_SNDBUF],
        [C.SO_SNDBUF, NBD_SOCKET_SNDBUF],
      ],
    );
    const fd3 = k.sent.at(-1)!.attrs.nested(C.NBD_ATTR_SOCKETS)!.nested(C.NBD_SOCK_ITEM)!.u32(C.NBD_SOCK_FD)!;
    new net.Socket({ fd: fd3 }).destroy();
    await capped.connection.closed;
    k.noForce = false;

    // a refused CONNECT closes both ends and the served connection
    k.answer = () => ({ errno: 16 });
    await t.rejects(attach(nl, k, { server, exportName: 'lun0', index: 4 }), { code: 'EBUSY' });
    t.equal(k.kept.length, 4, 'the refused kernel end was closed too (kept only by the mock)');
    real!.close(k.kept.at(-1)!);
    nl.close();
    await server.close();
  },
);

t.test('real kernel on this host', { skip: real ? false : 'native addon not built' }, async (t) => {
  let nl: NbdNetlink | undefined;
  try {
    nl = await NbdNetlink.open(real!);
  } catch (err) {
    t.type(err, NbdModuleMissingError);
    t.match((err as Error).message, /modprobe nbd/, 'no nbd module: the error says what to do');
    t.equal(real!.pollCount(), 0);
    return;
  }
  // the module is loaded here (guest): STATUS answers
  t.ok(Array.isArray(await nl.status()));
  nl.close();
});
