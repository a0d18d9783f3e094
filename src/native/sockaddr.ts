/**
 * sockaddr encoders for rdma_resolve_addr (raw bytes, host layout of x86-64/aarch64 Linux):
 * sockaddr_in (16 bytes), sockaddr_in6 (28), and sockaddr_ib (48, <infiniband/ib.h>) for
 * InfiniBand GID + service ID addressing (AF_IB). Pure functions; tested with golden bytes.
 */
import * as net from 'node:net';
import { AF_IB, AF_INET, AF_INET6 } from './rdma-constants.js';

export const SOCKADDR_IN_LEN = 16;
export const SOCKADDR_IN6_LEN = 28;
export const SOCKADDR_IB_LEN = 48;

/** Where to connect: an IP address and port (RDMA/CM over RoCE/iWARP/IPoIB), or an IB GID and service ID. */
export type RdmaAddress =
  { family: 'ip'; host: string; port: number } | { family: 'ib'; gid: Buffer; serviceId: bigint; pkey?: number };

function ipv6Bytes(host: string): Buffer {
  const [head, tail = ''] = host.split('::') as [string, string?];
  const part = (s: string | undefined) => (s ? s.split(':') : []);
  let h = part(head);
  let t = part(tail);
  // embedded IPv4 (::ffff:1.2.3.4)
  const fix = (a: string[]) => {
    const last = a[a.length - 1];
    if (last && net.isIPv4(last)) {
      const o = last.split('.').map(Number);
      a.splice(a.length - 1, 1, ((o[0]! << 8) | o[1]!).toString(16), ((o[2]! << 8) | o[3]!).toString(16));
    }
    return a;
  };
  h = fix(h);
  t = fix(t);
  const groups = host.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

/** sockaddr_in / sockaddr_in6 for an IP literal; scope id from a "%N" suffix (numeric only). */
export function encodeSockaddrIp(host: string, port: number): Buffer {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`port ${port} out of range`);
  if (net.isIPv4(host)) {
    const b = Buffer.alloc(SOCKADDR_IN_LEN);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    host.split('.').forEach((o, i) => (b[4 + i] = Number(o)));
    return b;
  }
  const [addr, scope] = host.replace(/^\[|\]$/g, '').split('%') as [string, string?];
  if (!net.isIPv6(addr)) throw new TypeError(`not an IP address: '${host}' (RDMA/CM needs a numeric address)`);
  const b = Buffer.alloc(SOCKADDR_IN6_LEN);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  ipv6Bytes(addr).copy(b, 8);
  if (scope !== undefined) {
    if (!/^\d+$/.test(scope)) throw new TypeError(`IPv6 scope must be an interface index, got '${scope}'`);
    b.writeUInt32LE(Number(scope), 24);
  }
  return b;
}

/**
 * sockaddr_ib: sib_family, sib_pkey (be16), sib_flowinfo (be32), sib_addr (GID, 16), sib_sid (be64),
 * sib_sid_mask (be64, all ones: match the whole service ID), sib_scope_id (u64).
 */
export function encodeSockaddrIb(gid: Buffer, serviceId: bigint, pkey = 0xffff): Buffer {
  if (gid.length !== 16) throw new RangeError('GID must be 16 bytes');
  const b = Buffer.alloc(SOCKADDR_IB_LEN);
  b.writeUInt16LE(AF_IB, 0);
  b.writeUInt16BE(pkey, 2);
  gid.copy(b, 8);
  b.writeBigUInt64BE(BigInt.asUintN(64, serviceId), 24);
  b.writeBigUInt64BE(0xffff_ffff_ffff_ffffn, 32);
  return b;
}

export function encodeRdmaAddress(a: RdmaAddress): Buffer {
  return a.family === 'ip' ? encodeSockaddrIp(a.host, a.port) : encodeSockaddrIb(a.gid, a.serviceId, a.pkey);
}

export function formatRdmaAddress(a: RdmaAddress): string {
  if (a.family === 'ip') return net.isIPv6(a.host) ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
  return `gid ${a.gid.toString('hex').replace(/(.{4})(?!$)/g, '$1:')} service_id 0x${a.serviceId.toString(16)}`;
}
