/**
 * NBD protocol constants, named as in the NBD protocol document
 * (nbd/doc/proto.md) and the kernel's include/uapi/linux/nbd.h.
 * Generic netlink constants are in nbd-netlink-constants.ts.
 */

/* Handshake magics. */
export const NBDMAGIC = 0x4e42444d41474943n; /* "NBDMAGIC" */
export const IHAVEOPT = 0x49484156454f5054n; /* "IHAVEOPT" */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;

/* Handshake flags (server, 16 bits). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

/* Client flags (32 bits). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/* Transmission flags (16 bits). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/* Options. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

/* Option reply types. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

/* NBD_REP_INFO types. */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/* Transmission phase. */
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Fixed sizes of the transmission-phase headers. */
export const NBD_REQUEST_SIZE = 28;
export const NBD_SIMPLE_REPLY_SIZE = 16;
export const NBD_STRUCTURED_REPLY_SIZE = 20;

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/* Structured reply chunk flags and types. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

/* Error values carried on the wire (Linux errno numbers, fixed by the protocol). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** Largest request payload this server accepts (the protocol's customary 32 MiB). */
export const NBD_MAX_REQUEST_SIZE = 32 * 1024 * 1024;
/** Largest option payload accepted during the handshake. */
export const NBD_MAX_OPTION_SIZE = 64 * 1024;
/** Longest export name or description (the protocol's limit on strings). */
export const NBD_MAX_STRING = 4096;

import * as self from './nbd-constants.js';

/** Builds value → name from this module's exports whose names start with `prefix`. */
function nameTable(prefix: string, exclude: string[] = []): Map<number, string> {
  const m = new Map<number, string>();
  for (const [k, v] of Object.entries(self)) {
    if (k.startsWith(prefix) && typeof v === 'number' && !exclude.some((e) => k.startsWith(e))) m.set(v, k);
  }
  return m;
}

let cmdNames: Map<number, string> | undefined;
let optNames: Map<number, string> | undefined;
let repNames: Map<number, string> | undefined;

/** Name of an NBD command for logs, e.g. "NBD_CMD_WRITE" or "NBD_CMD_<99>". */
export function nameOfNbdCmd(type: number): string {
  cmdNames ??= nameTable('NBD_CMD_', ['NBD_CMD_FLAG_']);
  return cmdNames.get(type) ?? `NBD_CMD_<${type}>`;
}

/** Name of an NBD option for logs. */
export function nameOfNbdOpt(opt: number): string {
  optNames ??= nameTable('NBD_OPT_');
  return optNames.get(opt) ?? `NBD_OPT_<${opt}>`;
}

/** Name of an option reply type for logs. */
export function nameOfNbdRep(rep: number): string {
  repNames ??= nameTable('NBD_REP_', ['NBD_REP_FLAG_']);
  return repNames.get(rep) ?? `NBD_REP_<${rep >>> 0}>`;
}
