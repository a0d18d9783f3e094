/**
 * Target addressing compatible with ib_srp's add_target string (drivers/infiniband/ulp/srp/ib_srp.c
 * srp_parse_options()), so lines produced by srp_daemon / ibsrpdm and existing scripts work as is:
 *
 *   id_ext=<hex>,ioc_guid=<hex>,dgid=<32 hex>,pkey=<hex>,service_id=<hex>[,option...]   (IB CM)
 *   id_ext=<hex>,ioc_guid=<hex>,[src=<IP>,]dest=<IPv4>:<port>|[<IPv6>]:<port>[,option...] (RDMA/CM)
 *
 * Options are separated by ',' or newlines; empty ones are skipped; a repeated option overrides
 * the earlier one (as in the kernel). Numbers follow the kernel's parsers: 64-bit identifiers are
 * hex (kstrtoull base 16, optional 0x), integer options accept decimal, 0x-hex or 0-octal
 * (match_int base 0), and the value ranges are the kernel's. Every error names the option.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { SRP_REV10_IB_IO_CLASS, SRP_REV16A_IB_IO_CLASS } from './srp-constants.js';

export interface SocketAddress {
  family: 4 | 6;
  address: string;
  /** IPv6 zone (e.g. "%eth0" without the %), if given */
  scopeId?: string;
  /** undefined only for src= */
  port?: number;
}

export interface SrpTargetAddress {
  /** 'ib-cm' for dgid/pkey/service_id addressing, 'rdma-cm' when dest= is given */
  transport: 'ib-cm' | 'rdma-cm';
  idExt: bigint;
  iocGuid: bigint;
  /** IB CM: destination port GID (16 bytes), P_Key, CM service ID */
  dgid?: Buffer;
  pkey?: number;
  serviceId?: bigint;
  /** RDMA/CM: destination and optional source address */
  dest?: SocketAddress;
  src?: SocketAddress;
  initiatorExt?: bigint;
  maxSect?: number;
  maxCmdPerLun?: number;
  targetCanQueue?: number;
  ioClass?: number;
  cmdSgEntries?: number;
  allowExtSg?: boolean;
  sgTablesize?: number;
  compVector?: number;
  tlRetryCount?: number;
  queueSize?: number;
  maxItIuSize?: number;
  chCount?: number;
}

/** A malformed add_target string; `option` is the offending option name (or the whole string). */
export class TargetAddressError extends Error {
  constructor(
    message: string,
    readonly option: string,
  ) {
    super(message);
    this.name = 'TargetAddressError';
  }
}

const U64_MAX = (1n << 64n) - 1n;
const INT_MAX = 0x7fffffff;
/** include/linux/scatterlist.h SG_MAX_SEGMENTS */
const SG_MAX_SEGMENTS = 2048;

/** kstrtoull(s, 16): optional 0x, hex digits only, fits 64 bits. */
function parseHex64(opt: string, v: string): bigint {
  const m = /^(?:0x)?([0-9a-f]+)$/i.exec(v);
  if (!m) throw new TargetAddressError(`invalid ${opt} parameter '${v}': expected a hexadecimal number`, opt);
  const n = BigInt('0x' + m[1]);
  if (n > U64_MAX) throw new TargetAddressError(`invalid ${opt} parameter '${v}': more than 64 bits`, opt);
  return n;
}

/** match_int(): base 0 (decimal, 0x hex, leading-0 octal), optional sign, must fit an int. */
function parseInt0(opt: string, v: string): number {
  const m = /^([+-]?)(0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$/i.exec(v);
  if (!m) throw new TargetAddressError(`bad ${opt} parameter '${v}': expected an integer`, opt);
  const body = m[2]!;
  let n: number;
  if (/^0x/i.test(body)) n = parseInt(body.slice(2), 16);
  else if (body.length > 1 && body[0] === '0') n = parseInt(body, 8);
  else n = parseInt(body, 10);
  if (m[1] === '-') n = -n;
  if (n > INT_MAX || n < -INT_MAX - 1) throw new TargetAddressError(`bad ${opt} parameter '${v}': out of range`, opt);
  return n;
}

function ranged(opt: string, v: string, min: number, max = INT_MAX, hint?: string): number {
  const n = parseInt0(opt, v);
  if (n < min || n > max) {
    throw new TargetAddressError(
      `bad ${opt} parameter '${v}'${hint ? ` (${hint})` : max === INT_MAX ? ` (must be >= ${min})` : ` (must be ${min}..${max})`}`,
      opt,
    );
  }
  return n;
}

/** srp_parse_in(): "1.2.3.4:5" or "[1::2%3]:5"; the port is required for dest=. */
function parseInet(opt: string, v: string, needPort: boolean): SocketAddress {
  const bad = (why: string) => new TargetAddressError(`bad ${opt} parameter '${v}': ${why}`, opt);
  let host = v;
  let portStr: string | undefined;
  const colon = v.lastIndexOf(':');
  if (colon >= 0 && !v.slice(colon).includes(']')) {
    host = v.slice(0, colon);
    portStr = v.slice(colon + 1);
  }
  let port: number | undefined;
  if (portStr !== undefined) {
    if (!/^[0-9]+$/.test(portStr) || Number(portStr) > 65535) throw bad(`invalid port '${portStr}'`);
    port = Number(portStr);
  }
  if (needPort && port === undefined) throw bad('missing :port');
  if (isIPv4(host)) return { family: 4, address: host, ...(port !== undefined ? { port } : {}) };
  if (host.startsWith('[') && host.endsWith(']')) {
    const inner = host.slice(1, -1);
    const pct = inner.indexOf('%');
    const addr = pct >= 0 ? inner.slice(0, pct) : inner;
    const scope = pct >= 0 ? inner.slice(pct + 1) : undefined;
    if (scope !== undefined && scope === '') throw bad('empty IPv6 scope');
    if (isIPv6(addr)) {
      return {
        family: 6,
        address: addr,
        ...(scope !== undefined ? { scopeId: scope } : {}),
        ...(port !== undefined ? { port } : {}),
      };
    }
  }
  throw bad('expected IPv4:port or [IPv6]:port');
}

type Setter = (a: SrpTargetAddress, opt: string, v: string) => void;

/** The options ib_srp accepts, in srp_opt_tokens order. */
const OPTIONS: Readonly<Record<string, Setter>> = {
  id_ext: (a, o, v) => {
    a.idExt = parseHex64(o, v);
  },
  ioc_guid: (a, o, v) => {
    a.iocGuid = parseHex64(o, v);
  },
  dgid: (a, o, v) => {
    if (!/^[0-9a-f]{32}$/i.test(v))
      throw new TargetAddressError(`bad dest GID parameter '${v}': expected 32 hex digits`, o);
    a.dgid = Buffer.from(v, 'hex');
  },
  pkey: (a, o, v) => {
    if (!/^(?:0x)?[0-9a-f]+$/i.test(v) || parseInt(v.replace(/^0x/i, ''), 16) > 0xffff) {
      throw new TargetAddressError(`bad P_Key parameter '${v}': expected a 16-bit hexadecimal number`, o);
    }
    a.pkey = parseInt(v.replace(/^0x/i, ''), 16);
  },
  service_id: (a, o, v) => {
    a.serviceId = parseHex64(o, v);
  },
  max_sect: (a, o, v) => {
    a.maxSect = ranged(o, v, 1);
  },
  max_cmd_per_lun: (a, o, v) => {
    a.maxCmdPerLun = ranged(o, v, 1);
  },
  target_can_queue: (a, o, v) => {
    a.targetCanQueue = ranged(o, v, 1);
  },
  io_class: (a, o, v) => {
    if (!/^(?:0x)?[0-9a-f]+$/i.test(v)) throw new TargetAddressError(`bad IO class parameter '${v}'`, o);
    const n = parseInt(v.replace(/^0x/i, ''), 16);
    if (n !== SRP_REV10_IB_IO_CLASS && n !== SRP_REV16A_IB_IO_CLASS) {
      throw new TargetAddressError(`unknown IO class parameter value ${v} (use ff00 or 100)`, o);
    }
    a.ioClass = n;
  },
  initiator_ext: (a, o, v) => {
    a.initiatorExt = parseHex64(o, v);
  },
  cmd_sg_entries: (a, o, v) => {
    a.cmdSgEntries = ranged(o, v, 1, 255);
  },
  allow_ext_sg: (a, o, v) => {
    a.allowExtSg = parseInt0(o, v) !== 0;
  },
  sg_tablesize: (a, o, v) => {
    a.sgTablesize = ranged(o, v, 1, SG_MAX_SEGMENTS);
  },
  comp_vector: (a, o, v) => {
    a.compVector = ranged(o, v, 0);
  },
  tl_retry_count: (a, o, v) => {
    a.tlRetryCount = ranged(o, v, 2, 7, 'must be a number between 2 and 7');
  },
  queue_size: (a, o, v) => {
    a.queueSize = ranged(o, v, 1);
  },
  src: (a, o, v) => {
    a.src = parseInet(o, v, false);
  },
  dest: (a, o, v) => {
    a.dest = parseInet(o, v, true);
  },
  max_it_iu_size: (a, o, v) => {
    a.maxItIuSize = ranged(o, v, 0);
  },
  ch_count: (a, o, v) => {
    a.chCount = ranged(o, v, 1);
  },
};

/** Parses an add_target string. Throws TargetAddressError naming the offending option. */
export function parseTargetAddress(input: string): SrpTargetAddress {
  const a: Partial<SrpTargetAddress> & { transport?: SrpTargetAddress['transport'] } = {};
  const seen = new Set<string>();
  for (const part of input.split(/[,\n]/)) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? undefined : part.slice(eq + 1);
    const set = Object.prototype.hasOwnProperty.call(OPTIONS, name) ? OPTIONS[name] : undefined;
    if (!set) throw new TargetAddressError(`unknown parameter '${name}' in target address`, name);
    if (value === undefined || value === '')
      throw new TargetAddressError(`missing value for ${name} in target address`, name);
    set(a as SrpTargetAddress, name, value);
    seen.add(name);
  }
  const ibSet = ['id_ext', 'ioc_guid', 'dgid', 'pkey', 'service_id'];
  const cmSet = ['id_ext', 'ioc_guid', 'dest'];
  const missing = (set: string[]) => set.filter((o) => !seen.has(o));
  if (missing(cmSet).length === 0) a.transport = 'rdma-cm';
  else if (missing(ibSet).length === 0) a.transport = 'ib-cm';
  else {
    const closer = seen.has('dest') || !['dgid', 'pkey', 'service_id'].some((o) => seen.has(o)) ? cmSet : ibSet;
    const names = missing(closer);
    throw new TargetAddressError(
      `target address is missing ${names.join(', ')} (need id_ext, ioc_guid and either dgid, pkey, service_id for IB CM or dest for RDMA/CM)`,
      names[0]!,
    );
  }
  return a as SrpTargetAddress;
}

const hex16 = (n: bigint) => n.toString(16).padStart(16, '0');
function inet(s: SocketAddress): string {
  const host = s.family === 6 ? `[${s.address}${s.scopeId ? '%' + s.scopeId : ''}]` : s.address;
  return s.port !== undefined ? `${host}:${s.port}` : host;
}

/** Canonical add_target string (srp_daemon style), accepted by parseTargetAddress and ib_srp. */
export function formatTargetAddress(a: SrpTargetAddress): string {
  const parts = [`id_ext=${hex16(a.idExt)}`, `ioc_guid=${hex16(a.iocGuid)}`];
  if (a.dgid) parts.push(`dgid=${a.dgid.toString('hex')}`);
  if (a.pkey !== undefined) parts.push(`pkey=${a.pkey.toString(16).padStart(4, '0')}`);
  if (a.serviceId !== undefined) parts.push(`service_id=${hex16(a.serviceId)}`);
  if (a.src) parts.push(`src=${inet(a.src)}`);
  if (a.dest) parts.push(`dest=${inet(a.dest)}`);
  const num: [keyof SrpTargetAddress, string][] = [
    ['maxSect', 'max_sect'],
    ['maxCmdPerLun', 'max_cmd_per_lun'],
    ['targetCanQueue', 'target_can_queue'],
    ['cmdSgEntries', 'cmd_sg_entries'],
    ['sgTablesize', 'sg_tablesize'],
    ['compVector', 'comp_vector'],
    ['tlRetryCount', 'tl_retry_count'],
    ['queueSize', 'queue_size'],
    ['maxItIuSize', 'max_it_iu_size'],
    ['chCount', 'ch_count'],
  ];
  if (a.initiatorExt !== undefined) parts.push(`initiator_ext=${hex16(a.initiatorExt)}`);
  if (a.ioClass !== undefined) parts.push(`io_class=${a.ioClass.toString(16)}`);
  if (a.allowExtSg !== undefined) parts.push(`allow_ext_sg=${a.allowExtSg ? 1 : 0}`);
  for (const [k, name] of num) if (a[k] !== undefined) parts.push(`${name}=${a[k] as number}`);
  return parts.join(',');
}

/**
 * The 16-byte SRP port identifiers of a login, exactly as ib_srp's srp_send_req() lays them out.
 *
 * SRP r16a (io_class 0x0100, SRP_REV16A_IB_IO_CLASS, the default):
 *   initiator port id = initiator_ext ‖ port GUID   (the interface id of the source port's GID 0)
 *   target port id    = id_ext ‖ ioc_guid
 * SRP rev. 10 (io_class 0xff00, SRP_REV10_IB_IO_CLASS) puts the halves the other way round:
 *   initiator port id = port GUID ‖ initiator_ext
 *   target port id    = ioc_guid ‖ id_ext
 * `portGuid` is the 64-bit second half ib_srp takes from the source GID (or, with initiator_id=host,
 * the fixed per-host id); every 64-bit value is written big-endian.
 */
export function srpPortIds(
  a: Pick<SrpTargetAddress, 'idExt' | 'iocGuid' | 'initiatorExt' | 'ioClass'>,
  portGuid: bigint,
): { initiatorPortId: Buffer; targetPortId: Buffer } {
  const rev10 = (a.ioClass ?? SRP_REV16A_IB_IO_CLASS) === SRP_REV10_IB_IO_CLASS;
  const pair = (ext: bigint, guid: bigint) => {
    const b = Buffer.alloc(16);
    b.writeBigUInt64BE(rev10 ? guid : ext, 0);
    b.writeBigUInt64BE(rev10 ? ext : guid, 8);
    return b;
  };
  return { initiatorPortId: pair(a.initiatorExt ?? 0n, portGuid), targetPortId: pair(a.idExt, a.iocGuid) };
}
