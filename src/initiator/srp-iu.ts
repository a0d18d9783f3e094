/**
 * SRP information unit codec (T10 SRP r16a layouts as in Linux include/scsi/srp.h, SRP-2 immediate
 * data as in ib_srp/ib_srpt).
 *
 * Pure functions over (Buffer, offset): encoders write into a caller buffer (or a fresh one) and
 * return the written view; decoders read [offset, offset + length) and never look outside it.
 * Decoders accept trailing bytes after the fixed part (receive buffers and IB CM private data are
 * padded) but never trust a length field that points past the end. Decoders return subarray views
 * of the input for variable data (CDB, sense, immediate data): copy anything kept after the
 * receive buffer is reused. On malformed input they throw SrpDecodeError and nothing else.
 *
 * Tags are opaque 64-bit values echoed by the peer; they are carried as bigint read big-endian.
 * req_lim_delta is a signed 32-bit field (the spec allows a target to take credits back).
 */
import {
  SRP_AER_REQ,
  SRP_AER_REQ_LEN,
  SRP_AER_RSP,
  SRP_AER_RSP_LEN,
  SRP_CMD,
  SRP_CMD_LEN,
  SRP_CRED_REQ,
  SRP_CRED_REQ_LEN,
  SRP_CRED_RSP,
  SRP_CRED_RSP_LEN,
  SRP_DATA_DESC_DIRECT,
  SRP_DATA_DESC_IMM,
  SRP_DATA_DESC_INDIRECT,
  SRP_DIRECT_BUF_LEN,
  SRP_IMM_BUF_LEN,
  SRP_INDIRECT_BUF_LEN,
  SRP_I_LOGOUT,
  SRP_I_LOGOUT_LEN,
  SRP_LOGIN_REJ,
  SRP_LOGIN_REJ_LEN,
  SRP_LOGIN_REQ,
  SRP_LOGIN_REQ_LEN,
  SRP_LOGIN_REQ_RDMA_LEN,
  SRP_LOGIN_RSP,
  SRP_LOGIN_RSP_LEN,
  SRP_MAX_ADD_CDB_LEN,
  SRP_NO_DATA_DESC,
  SRP_RSP,
  SRP_RSP_FLAG_RSPVALID,
  SRP_RSP_FLAG_SNSVALID,
  SRP_RSP_LEN,
  SRP_TSK_MGMT,
  SRP_TSK_MGMT_LEN,
  SRP_T_LOGOUT,
  SRP_T_LOGOUT_LEN,
  nameOfSrpOpcode,
} from './srp-constants.js';

/** The only exception a decoder throws: the input is not a valid IU of the expected kind. */
export class SrpDecodeError extends Error {
  constructor(
    message: string,
    /** opcode byte of the offending IU, if one could be read */
    readonly opcode: number | undefined,
  ) {
    super(message);
    this.name = 'SrpDecodeError';
  }
}

/* ------------------------------------------------------------------ types */

export interface SrpLoginReq {
  tag: bigint;
  reqItIuLen: number;
  reqBufFmt: number;
  reqFlags: number;
  /** SRP-2: where immediate data starts inside an SRP_CMD (0 when not requested) */
  immDataOffset: number;
  initiatorPortId: Buffer; // 16 bytes
  targetPortId: Buffer; // 16 bytes
}
export interface SrpLoginRsp {
  reqLimDelta: number;
  tag: bigint;
  maxItIuLen: number;
  maxTiIuLen: number;
  bufFmt: number;
  rspFlags: number;
}
export interface SrpLoginRej {
  reason: number;
  tag: bigint;
  bufFmt: number;
}
export interface SrpILogout {
  tag: bigint;
}
export interface SrpTLogout {
  solNot: number;
  reason: number;
  tag: bigint;
}
export interface SrpTskMgmt {
  solNot: number;
  tag: bigint;
  lun: bigint;
  func: number;
  taskTag: bigint;
}
/** struct srp_direct_buf: one registered memory segment. */
export interface SrpDirectBuf {
  va: bigint;
  key: number;
  len: number;
}
/** A data buffer descriptor of an SRP_CMD (one per direction). */
export type SrpDataDesc =
  | { format: 'none' }
  | { format: 'direct'; buf: SrpDirectBuf }
  /**
   * table describes the whole descriptor table in initiator memory (len = 16 × total count);
   * descs are the ones carried inside the IU (may be fewer: "external" table).
   */
  | { format: 'indirect'; table: SrpDirectBuf; totalLen: number; descs: SrpDirectBuf[] }
  /** SRP-2 immediate data (data-out only): the bytes travel inside the IU at immDataOffset. */
  | { format: 'imm'; data: Buffer };

export interface SrpCmd {
  solNot: number;
  tag: bigint;
  lun: bigint;
  taskAttr: number;
  /** up to 16 + SRP_MAX_ADD_CDB_LEN bytes; shorter CDBs are zero padded to 16 */
  cdb: Buffer;
  dataOut: SrpDataDesc;
  dataIn: SrpDataDesc;
}
export interface SrpRsp {
  solNot: number;
  reqLimDelta: number;
  tag: bigint;
  /** residual flags (DOOVER/DOUNDER/DIOVER/DIUNDER); RSPVALID/SNSVALID follow the data given */
  flags: number;
  status: number;
  dataOutResCnt: number;
  dataInResCnt: number;
  responseData?: Buffer;
  sense?: Buffer;
}
export interface SrpCredReq {
  solNot: number;
  reqLimDelta: number;
  tag: bigint;
}
export interface SrpCredRsp {
  tag: bigint;
}
export interface SrpAerReq {
  solNot: number;
  reqLimDelta: number;
  tag: bigint;
  lun: bigint;
  sense: Buffer;
}
export interface SrpAerRsp {
  tag: bigint;
}

/** Any decoded IU, discriminated by its opcode name. */
export type SrpIu =
  | ({ type: 'SRP_LOGIN_REQ' } & SrpLoginReq)
  | ({ type: 'SRP_LOGIN_RSP' } & SrpLoginRsp)
  | ({ type: 'SRP_LOGIN_REJ' } & SrpLoginRej)
  | ({ type: 'SRP_I_LOGOUT' } & SrpILogout)
  | ({ type: 'SRP_T_LOGOUT' } & SrpTLogout)
  | ({ type: 'SRP_TSK_MGMT' } & SrpTskMgmt)
  | ({ type: 'SRP_CMD' } & SrpCmd)
  | ({ type: 'SRP_RSP' } & SrpRsp)
  | ({ type: 'SRP_CRED_REQ' } & SrpCredReq)
  | ({ type: 'SRP_CRED_RSP' } & SrpCredRsp)
  | ({ type: 'SRP_AER_REQ' } & SrpAerReq)
  | ({ type: 'SRP_AER_RSP' } & SrpAerRsp);

/** Negotiated per-channel parameters some IUs need to be (de)coded. */
export interface SrpCodecContext {
  /** SRP-2 immediate data offset granted at login; required for SRP_DATA_DESC_IMM. */
  immDataOffset?: number;
}

/* ---------------------------------------------------------------- helpers */

function out(len: number, buf: Buffer | undefined, offset: number): Buffer {
  if (!buf) return Buffer.alloc(len);
  if (offset < 0 || offset + len > buf.length)
    throw new RangeError(`encode: ${len} bytes do not fit at offset ${offset}`);
  const view = buf.subarray(offset, offset + len);
  view.fill(0);
  return view;
}
function portId(b: Buffer, what: string): Buffer {
  if (b.length !== 16) throw new RangeError(`${what} must be 16 bytes, got ${b.length}`);
  return b;
}
function u32(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`${what} out of range: ${v}`);
  return v;
}
/** Checks the view length and opcode; returns the bounded view. */
function view(buf: Buffer, offset: number, length: number | undefined, opcode: number, min: number): Buffer {
  if (!Number.isInteger(offset) || offset < 0 || offset > buf.length) {
    throw new SrpDecodeError(`${nameOfSrpOpcode(opcode)}: offset ${offset} outside buffer of ${buf.length}`, undefined);
  }
  const len = length ?? buf.length - offset;
  if (!Number.isInteger(len) || len < 0 || offset + len > buf.length) {
    throw new SrpDecodeError(
      `${nameOfSrpOpcode(opcode)}: length ${len} at ${offset} exceeds buffer of ${buf.length}`,
      undefined,
    );
  }
  const v = buf.subarray(offset, offset + len);
  if (v.length < 1) throw new SrpDecodeError(`${nameOfSrpOpcode(opcode)}: empty IU`, undefined);
  if (v[0] !== opcode) {
    throw new SrpDecodeError(`expected ${nameOfSrpOpcode(opcode)}, got ${nameOfSrpOpcode(v[0]!)}`, v[0]);
  }
  if (v.length < min) {
    throw new SrpDecodeError(`${nameOfSrpOpcode(opcode)}: ${v.length} bytes, needs at least ${min}`, opcode);
  }
  return v;
}

/* ------------------------------------------------------------ LOGIN_REQ */

/** struct srp_login_req (64 bytes, IB CM REQ private data). */
export function encodeLoginReq(m: SrpLoginReq, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_LOGIN_REQ_LEN, buf, offset);
  b[0] = SRP_LOGIN_REQ;
  b.writeBigUInt64BE(m.tag, 8);
  b.writeUInt32BE(u32(m.reqItIuLen, 'req_it_iu_len'), 16);
  b.writeUInt16BE(m.reqBufFmt, 24);
  b[26] = m.reqFlags;
  b.writeUInt16BE(m.immDataOffset, 28);
  portId(m.initiatorPortId, 'initiator_port_id').copy(b, 32);
  portId(m.targetPortId, 'target_port_id').copy(b, 48);
  return b;
}
export function decodeLoginReq(buf: Buffer, offset = 0, length?: number): SrpLoginReq {
  const b = view(buf, offset, length, SRP_LOGIN_REQ, SRP_LOGIN_REQ_LEN);
  return {
    tag: b.readBigUInt64BE(8),
    reqItIuLen: b.readUInt32BE(16),
    reqBufFmt: b.readUInt16BE(24),
    reqFlags: b[26]!,
    immDataOffset: b.readUInt16BE(28),
    initiatorPortId: b.subarray(32, 48),
    targetPortId: b.subarray(48, 64),
  };
}

/**
 * struct srp_login_req_rdma (56 bytes, RDMA/CM private data). Same content, reserved bytes removed
 * and fields reordered: tag, req_buf_fmt, req_flags, opcode, req_it_iu_len, port ids, imm offset.
 * Note the opcode is at byte 11, not byte 0.
 */
export function encodeLoginReqRdma(m: SrpLoginReq, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_LOGIN_REQ_RDMA_LEN, buf, offset);
  b.writeBigUInt64BE(m.tag, 0);
  b.writeUInt16BE(m.reqBufFmt, 8);
  b[10] = m.reqFlags;
  b[11] = SRP_LOGIN_REQ;
  b.writeUInt32BE(u32(m.reqItIuLen, 'req_it_iu_len'), 12);
  portId(m.initiatorPortId, 'initiator_port_id').copy(b, 16);
  portId(m.targetPortId, 'target_port_id').copy(b, 32);
  b.writeUInt16BE(m.immDataOffset, 48);
  return b;
}
export function decodeLoginReqRdma(buf: Buffer, offset = 0, length?: number): SrpLoginReq {
  if (offset < 0 || offset > buf.length)
    throw new SrpDecodeError(`srp_login_req_rdma: bad offset ${offset}`, undefined);
  const len = length ?? buf.length - offset;
  if (len < 0 || offset + len > buf.length)
    throw new SrpDecodeError(`srp_login_req_rdma: length ${len} exceeds buffer`, undefined);
  if (len < SRP_LOGIN_REQ_RDMA_LEN) {
    throw new SrpDecodeError(
      `srp_login_req_rdma: ${len} bytes, needs ${SRP_LOGIN_REQ_RDMA_LEN}`,
      len > 11 ? buf[offset + 11] : undefined,
    );
  }
  const b = buf.subarray(offset, offset + len);
  if (b[11] !== SRP_LOGIN_REQ) {
    throw new SrpDecodeError(`srp_login_req_rdma: opcode byte is ${nameOfSrpOpcode(b[11]!)}`, b[11]);
  }
  return {
    tag: b.readBigUInt64BE(0),
    reqBufFmt: b.readUInt16BE(8),
    reqFlags: b[10]!,
    reqItIuLen: b.readUInt32BE(12),
    initiatorPortId: b.subarray(16, 32),
    targetPortId: b.subarray(32, 48),
    immDataOffset: b.readUInt16BE(48),
  };
}

/* ------------------------------------------------------- LOGIN_RSP / REJ */

export function encodeLoginRsp(m: SrpLoginRsp, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_LOGIN_RSP_LEN, buf, offset);
  b[0] = SRP_LOGIN_RSP;
  b.writeInt32BE(m.reqLimDelta, 4);
  b.writeBigUInt64BE(m.tag, 8);
  b.writeUInt32BE(u32(m.maxItIuLen, 'max_it_iu_len'), 16);
  b.writeUInt32BE(u32(m.maxTiIuLen, 'max_ti_iu_len'), 20);
  b.writeUInt16BE(m.bufFmt, 24);
  b[26] = m.rspFlags;
  return b;
}
export function decodeLoginRsp(buf: Buffer, offset = 0, length?: number): SrpLoginRsp {
  const b = view(buf, offset, length, SRP_LOGIN_RSP, SRP_LOGIN_RSP_LEN);
  return {
    reqLimDelta: b.readInt32BE(4),
    tag: b.readBigUInt64BE(8),
    maxItIuLen: b.readUInt32BE(16),
    maxTiIuLen: b.readUInt32BE(20),
    bufFmt: b.readUInt16BE(24),
    rspFlags: b[26]!,
  };
}

export function encodeLoginRej(m: SrpLoginRej, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_LOGIN_REJ_LEN, buf, offset);
  b[0] = SRP_LOGIN_REJ;
  b.writeUInt32BE(u32(m.reason, 'reason'), 4);
  b.writeBigUInt64BE(m.tag, 8);
  b.writeUInt16BE(m.bufFmt, 24);
  return b;
}
export function decodeLoginRej(buf: Buffer, offset = 0, length?: number): SrpLoginRej {
  const b = view(buf, offset, length, SRP_LOGIN_REJ, SRP_LOGIN_REJ_LEN);
  return { reason: b.readUInt32BE(4), tag: b.readBigUInt64BE(8), bufFmt: b.readUInt16BE(24) };
}

/* ------------------------------------------------------------- LOGOUTS */

export function encodeILogout(m: SrpILogout, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_I_LOGOUT_LEN, buf, offset);
  b[0] = SRP_I_LOGOUT;
  b.writeBigUInt64BE(m.tag, 8);
  return b;
}
export function decodeILogout(buf: Buffer, offset = 0, length?: number): SrpILogout {
  const b = view(buf, offset, length, SRP_I_LOGOUT, SRP_I_LOGOUT_LEN);
  return { tag: b.readBigUInt64BE(8) };
}

export function encodeTLogout(m: SrpTLogout, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_T_LOGOUT_LEN, buf, offset);
  b[0] = SRP_T_LOGOUT;
  b[1] = m.solNot;
  b.writeUInt32BE(u32(m.reason, 'reason'), 4);
  b.writeBigUInt64BE(m.tag, 8);
  return b;
}
export function decodeTLogout(buf: Buffer, offset = 0, length?: number): SrpTLogout {
  const b = view(buf, offset, length, SRP_T_LOGOUT, SRP_T_LOGOUT_LEN);
  return { solNot: b[1]!, reason: b.readUInt32BE(4), tag: b.readBigUInt64BE(8) };
}

/* ------------------------------------------------------------ TSK_MGMT */

export function encodeTskMgmt(m: SrpTskMgmt, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_TSK_MGMT_LEN, buf, offset);
  b[0] = SRP_TSK_MGMT;
  b[1] = m.solNot;
  b.writeBigUInt64BE(m.tag, 8);
  b.writeBigUInt64BE(m.lun, 20);
  b[30] = m.func;
  b.writeBigUInt64BE(m.taskTag, 32);
  return b;
}
export function decodeTskMgmt(buf: Buffer, offset = 0, length?: number): SrpTskMgmt {
  const b = view(buf, offset, length, SRP_TSK_MGMT, SRP_TSK_MGMT_LEN);
  return {
    solNot: b[1]!,
    tag: b.readBigUInt64BE(8),
    lun: b.readBigUInt64BE(20),
    func: b[30]!,
    taskTag: b.readBigUInt64BE(32),
  };
}

/* ----------------------------------------------------------------- CMD */

function descFormat(d: SrpDataDesc): number {
  switch (d.format) {
    case 'none':
      return SRP_NO_DATA_DESC;
    case 'direct':
      return SRP_DATA_DESC_DIRECT;
    case 'indirect':
      return SRP_DATA_DESC_INDIRECT;
    case 'imm':
      return SRP_DATA_DESC_IMM;
  }
}
/** Bytes the descriptor itself occupies in the IU (immediate data bytes excluded). */
function descLen(d: SrpDataDesc): number {
  switch (d.format) {
    case 'none':
      return 0;
    case 'direct':
      return SRP_DIRECT_BUF_LEN;
    case 'indirect':
      return SRP_INDIRECT_BUF_LEN + SRP_DIRECT_BUF_LEN * d.descs.length;
    case 'imm':
      return SRP_IMM_BUF_LEN;
  }
}
function writeDirect(b: Buffer, at: number, d: SrpDirectBuf): void {
  b.writeBigUInt64BE(d.va, at);
  b.writeUInt32BE(u32(d.key, 'rkey'), at + 8);
  b.writeUInt32BE(u32(d.len, 'len'), at + 12);
}
function readDirect(b: Buffer, at: number): SrpDirectBuf {
  return { va: b.readBigUInt64BE(at), key: b.readUInt32BE(at + 8), len: b.readUInt32BE(at + 12) };
}
function writeDesc(b: Buffer, at: number, d: SrpDataDesc): void {
  switch (d.format) {
    case 'none':
      return;
    case 'direct':
      writeDirect(b, at, d.buf);
      return;
    case 'indirect':
      writeDirect(b, at, d.table);
      b.writeUInt32BE(u32(d.totalLen, 'total len'), at + 16);
      d.descs.forEach((x, i) => writeDirect(b, at + SRP_INDIRECT_BUF_LEN + i * SRP_DIRECT_BUF_LEN, x));
      return;
    case 'imm':
      b.writeUInt32BE(d.data.length, at);
      return;
  }
}

/** Additional CDB length as carried in byte 31 (a multiple of 4 bytes, bits 7:2). */
function addCdbLenFor(cdbLen: number): number {
  return cdbLen > 16 ? (cdbLen - 16 + 3) & ~3 : 0;
}

/** Length of the encoded SRP_CMD (including immediate data). */
export function cmdLength(m: SrpCmd, ctx: SrpCodecContext = {}): number {
  const descEnd = SRP_CMD_LEN + addCdbLenFor(m.cdb.length) + descLen(m.dataOut) + descLen(m.dataIn);
  if (m.dataOut.format === 'imm') return immOffset(ctx, descEnd) + m.dataOut.data.length;
  return descEnd;
}
function immOffset(ctx: SrpCodecContext, descEnd: number): number {
  const off = ctx.immDataOffset;
  if (off === undefined) throw new RangeError('immediate data needs the negotiated immDataOffset');
  if (off < descEnd) throw new RangeError(`immDataOffset ${off} overlaps descriptors ending at ${descEnd}`);
  return off;
}

/**
 * struct srp_cmd: fixed 48 bytes, additional CDB, then the data-out descriptor, then the data-in
 * descriptor (buf_fmt: data-out format in the high nibble). Immediate data sits at the
 * negotiated imm_data_offset. Descriptor counts follow ib_srp: set for indirect, 0 otherwise.
 */
export function encodeCmd(m: SrpCmd, ctx: SrpCodecContext = {}, buf?: Buffer, offset = 0): Buffer {
  if (m.cdb.length < 1 || m.cdb.length > 16 + SRP_MAX_ADD_CDB_LEN) throw new RangeError(`CDB length ${m.cdb.length}`);
  if (m.dataIn.format === 'imm') throw new RangeError('immediate data is data-out only');
  const total = cmdLength(m, ctx);
  const b = out(total, buf, offset);
  const addCdb = addCdbLenFor(m.cdb.length);
  b[0] = SRP_CMD;
  b[1] = m.solNot;
  b[5] = (descFormat(m.dataOut) << 4) | descFormat(m.dataIn);
  b[6] = m.dataOut.format === 'indirect' ? m.dataOut.descs.length : 0;
  b[7] = m.dataIn.format === 'indirect' ? m.dataIn.descs.length : 0;
  b.writeBigUInt64BE(m.tag, 8);
  b.writeBigUInt64BE(m.lun, 20);
  b[29] = m.taskAttr & 0x7;
  b[31] = addCdb;
  m.cdb.copy(b, 32);
  let at = SRP_CMD_LEN + addCdb;
  writeDesc(b, at, m.dataOut);
  at += descLen(m.dataOut);
  writeDesc(b, at, m.dataIn);
  if (m.dataOut.format === 'imm') m.dataOut.data.copy(b, ctx.immDataOffset!);
  return b;
}

/* --------------------------------------------------- CMD, data-path form */

/** An srp_direct_buf with its 64-bit address as two 32-bit halves (no bigint on the data path). */
export interface SrpDirectBufParts {
  vaHi: number;
  vaLo: number;
  key: number;
  len: number;
}

/**
 * What encodeCmdInPlace() writes: an SRP_CMD with at most one direct descriptor per direction, or
 * SRP-2 immediate data for data-out. 64-bit fields (tag, LUN) as 32-bit halves. The session keeps
 * one of these and fills it per command, so nothing is allocated.
 */
export interface SrpCmdFields {
  tagHi: number;
  tagLo: number;
  lunHi: number;
  lunLo: number;
  taskAttr: number;
  /** 1..32 bytes; shorter than 16 is zero padded */
  cdb: Buffer;
  /** SRP_NO_DATA_DESC, SRP_DATA_DESC_DIRECT or SRP_DATA_DESC_IMM */
  outFmt: number;
  /** the data-out descriptor (SRP_DATA_DESC_DIRECT) */
  out: SrpDirectBufParts;
  /** immediate data (SRP_DATA_DESC_IMM) */
  immData: Buffer | undefined;
  /** SRP_NO_DATA_DESC or SRP_DATA_DESC_DIRECT */
  inFmt: number;
  /** the data-in descriptor (SRP_DATA_DESC_DIRECT) */
  in: SrpDirectBufParts;
}

/** Length of the SRP_CMD encodeCmdInPlace() writes for f (immDataOffset: the negotiated one, for immediate data). */
export function cmdInPlaceLength(f: SrpCmdFields, immDataOffset: number): number {
  let end = SRP_CMD_LEN + addCdbLenFor(f.cdb.length);
  if (f.outFmt === SRP_DATA_DESC_IMM) return immOffset({ immDataOffset }, end + SRP_IMM_BUF_LEN) + f.immData!.length;
  if (f.outFmt === SRP_DATA_DESC_DIRECT) end += SRP_DIRECT_BUF_LEN;
  if (f.inFmt === SRP_DATA_DESC_DIRECT) end += SRP_DIRECT_BUF_LEN;
  return end;
}

/** Copies a few bytes (a CDB, sense data) byte by byte: cheaper than Buffer#copy's native call. */
export function copySmall(src: Buffer, dst: Buffer, at: number, start = 0, end = src.length): void {
  for (let i = start; i < end; i++) dst[at + i - start] = src[i]!;
}

/**
 * Stores a u32 big-endian with plain byte stores: Buffer#writeUInt32BE checks its arguments on
 * every call, which on the data path (encodeCmdInPlace, once per command, after its own bounds
 * check) costs as much as the store. The value is taken modulo 2^32.
 */
function put32be(b: Buffer, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = v >>> 16;
  b[at + 2] = v >>> 8;
  b[at + 3] = v;
}

/** Loads a u32 big-endian with plain byte loads; the caller has checked that [at, at + 4) is in b. */
function get32be(b: Buffer, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

function writeDirectParts(b: Buffer, at: number, d: SrpDirectBufParts): void {
  put32be(b, at, d.vaHi);
  put32be(b, at + 4, d.vaLo);
  put32be(b, at + 8, d.key);
  put32be(b, at + 12, d.len);
}

/**
 * The data path's encodeCmd(): writes the SRP_CMD described by f at the start of b (the command
 * slot's IU buffer, reused) and returns its length; the same layout as encodeCmd() produces for a
 * direct or immediate descriptor. The caller checks the length against max_it_iu_len first
 * (cmdInPlaceLength); b must hold it. Allocates nothing.
 */
export function encodeCmdInPlace(b: Buffer, f: SrpCmdFields, immDataOffset: number): number {
  const cdbLen = f.cdb.length;
  if (cdbLen < 1 || cdbLen > 16 + SRP_MAX_ADD_CDB_LEN) throw new RangeError(`CDB length ${cdbLen}`);
  if (f.inFmt === SRP_DATA_DESC_IMM) throw new RangeError('immediate data is data-out only');
  const total = cmdInPlaceLength(f, immDataOffset);
  if (total > b.length) throw new RangeError(`encode: ${total} bytes do not fit in ${b.length}`);
  const addCdb = addCdbLenFor(cdbLen);
  let at = SRP_CMD_LEN + addCdb;
  // every byte of the header written (reserved ones as 0): the buffer is reused
  put32be(b, 0, SRP_CMD * 0x1000000); // opcode, sol_not 0, reserved
  put32be(b, 4, ((f.outFmt << 4) | f.inFmt) << 16); // buf_fmt; descriptor counts 0: no indirect ones
  put32be(b, 8, f.tagHi);
  put32be(b, 12, f.tagLo);
  put32be(b, 16, 0);
  put32be(b, 20, f.lunHi);
  put32be(b, 24, f.lunLo);
  put32be(b, 28, ((f.taskAttr & 0x7) << 16) | addCdb);
  copySmall(f.cdb, b, 32);
  for (let i = 32 + cdbLen; i < at; i++) b[i] = 0; // CDB padding
  if (f.outFmt === SRP_DATA_DESC_IMM) {
    const data = f.immData!;
    put32be(b, at, data.length);
    at += SRP_IMM_BUF_LEN;
    for (let i = at; i < immDataOffset; i++) b[i] = 0;
    b.set(data, immDataOffset); // as data.copy(b, immDataOffset), without Buffer#copy's argument checks
  } else if (f.outFmt === SRP_DATA_DESC_DIRECT) {
    writeDirectParts(b, at, f.out);
    at += SRP_DIRECT_BUF_LEN;
  }
  if (f.inFmt === SRP_DATA_DESC_DIRECT) writeDirectParts(b, at, f.in);
  return total;
}

function readDesc(
  b: Buffer,
  at: number,
  fmt: number,
  cnt: number,
  dir: 'data-out' | 'data-in',
  ctx: SrpCodecContext,
): { desc: SrpDataDesc; len: number } {
  const need = (n: number) => {
    if (at + n > b.length)
      throw new SrpDecodeError(`SRP_CMD: ${dir} descriptor needs ${n} bytes at ${at}, IU is ${b.length}`, SRP_CMD);
  };
  switch (fmt) {
    case SRP_NO_DATA_DESC:
      return { desc: { format: 'none' }, len: 0 };
    case SRP_DATA_DESC_DIRECT:
      need(SRP_DIRECT_BUF_LEN);
      return { desc: { format: 'direct', buf: readDirect(b, at) }, len: SRP_DIRECT_BUF_LEN };
    case SRP_DATA_DESC_INDIRECT: {
      const len = SRP_INDIRECT_BUF_LEN + cnt * SRP_DIRECT_BUF_LEN;
      need(len);
      const descs: SrpDirectBuf[] = [];
      for (let i = 0; i < cnt; i++) descs.push(readDirect(b, at + SRP_INDIRECT_BUF_LEN + i * SRP_DIRECT_BUF_LEN));
      return { desc: { format: 'indirect', table: readDirect(b, at), totalLen: b.readUInt32BE(at + 16), descs }, len };
    }
    case SRP_DATA_DESC_IMM: {
      if (dir === 'data-in') throw new SrpDecodeError('SRP_CMD: immediate data descriptor for data-in', SRP_CMD);
      need(SRP_IMM_BUF_LEN);
      const dataLen = b.readUInt32BE(at);
      const off = ctx.immDataOffset;
      if (off === undefined || off === 0)
        throw new SrpDecodeError('SRP_CMD: immediate data not negotiated on this channel', SRP_CMD);
      if (off < at + SRP_IMM_BUF_LEN)
        throw new SrpDecodeError(`SRP_CMD: imm_data_offset ${off} overlaps descriptors`, SRP_CMD);
      if (off + dataLen > b.length) {
        throw new SrpDecodeError(
          `SRP_CMD: ${dataLen} bytes of immediate data at ${off} exceed IU of ${b.length}`,
          SRP_CMD,
        );
      }
      return { desc: { format: 'imm', data: b.subarray(off, off + dataLen) }, len: SRP_IMM_BUF_LEN };
    }
    default:
      throw new SrpDecodeError(`SRP_CMD: unsupported ${dir} descriptor format ${fmt}`, SRP_CMD);
  }
}

export function decodeCmd(buf: Buffer, offset = 0, length?: number, ctx: SrpCodecContext = {}): SrpCmd {
  const b = view(buf, offset, length, SRP_CMD, SRP_CMD_LEN);
  const addCdb = b[31]! & 0xfc;
  if (SRP_CMD_LEN + addCdb > b.length) {
    throw new SrpDecodeError(`SRP_CMD: additional CDB of ${addCdb} bytes exceeds IU of ${b.length}`, SRP_CMD);
  }
  const cdb = b.subarray(32, 48 + addCdb);
  let at = SRP_CMD_LEN + addCdb;
  const o = readDesc(b, at, b[5]! >> 4, b[6]!, 'data-out', ctx);
  at += o.len;
  const i = readDesc(b, at, b[5]! & 0xf, b[7]!, 'data-in', ctx);
  return {
    solNot: b[1]!,
    tag: b.readBigUInt64BE(8),
    lun: b.readBigUInt64BE(20),
    taskAttr: b[29]! & 0x7,
    cdb,
    dataOut: o.desc,
    dataIn: i.desc,
  };
}

/**
 * The target's data-path decodeCmd(): reads an SRP_CMD in place into this reusable object, without
 * allocating: 64-bit fields as 32-bit halves, the CDB and immediate data as offsets into the IU,
 * direct descriptors as SrpDirectBufParts. Accepts and refuses exactly what decodeCmd() does; for
 * an indirect descriptor only its format and count are kept (decodeCmd() gives the descriptors).
 */
export class SrpCmdReader {
  solNot = 0;
  tagHi = 0;
  tagLo = 0;
  lunHi = 0;
  lunLo = 0;
  taskAttr = 0;
  /** the CDB is [cdbOffset, cdbOffset + cdbLen) of the IU (16 + additional CDB length) */
  readonly cdbOffset = 32;
  cdbLen = 16;
  /** SRP_NO_DATA_DESC, SRP_DATA_DESC_DIRECT, SRP_DATA_DESC_INDIRECT or SRP_DATA_DESC_IMM */
  outFmt: number = SRP_NO_DATA_DESC;
  inFmt: number = SRP_NO_DATA_DESC;
  /** descriptor counts of an indirect descriptor (bytes 6 and 7) */
  outCnt = 0;
  inCnt = 0;
  /** direct descriptors */
  readonly out: SrpDirectBufParts = { vaHi: 0, vaLo: 0, key: 0, len: 0 };
  readonly in: SrpDirectBufParts = { vaHi: 0, vaLo: 0, key: 0, len: 0 };
  /** immediate data at [immOffset, immOffset + immLen) of the IU */
  immOffset = 0;
  immLen = 0;

  /** Reads the whole of b as one SRP_CMD; throws SrpDecodeError when decodeCmd() would. */
  read(b: Buffer, ctx: SrpCodecContext = {}): this {
    if (b.length < 1) throw new SrpDecodeError(`${nameOfSrpOpcode(SRP_CMD)}: empty IU`, undefined);
    if (b[0] !== SRP_CMD) {
      throw new SrpDecodeError(`expected ${nameOfSrpOpcode(SRP_CMD)}, got ${nameOfSrpOpcode(b[0]!)}`, b[0]);
    }
    if (b.length < SRP_CMD_LEN) {
      const name = nameOfSrpOpcode(SRP_CMD);
      throw new SrpDecodeError(`${name}: ${b.length} bytes, needs at least ${SRP_CMD_LEN}`, SRP_CMD);
    }
    const addCdb = b[31]! & 0xfc;
    if (SRP_CMD_LEN + addCdb > b.length) {
      throw new SrpDecodeError(`SRP_CMD: additional CDB of ${addCdb} bytes exceeds IU of ${b.length}`, SRP_CMD);
    }
    this.outFmt = b[5]! >> 4;
    this.inFmt = b[5]! & 0xf;
    this.outCnt = b[6]!;
    this.inCnt = b[7]!;
    let at = SRP_CMD_LEN + addCdb;
    at += this.readDesc(b, at, this.outFmt, this.outCnt, 'data-out', ctx, this.out);
    this.readDesc(b, at, this.inFmt, this.inCnt, 'data-in', ctx, this.in);
    // within the SRP_CMD_LEN bytes checked above: plain loads (get32be)
    this.solNot = b[1]!;
    this.tagHi = get32be(b, 8);
    this.tagLo = get32be(b, 12);
    this.lunHi = get32be(b, 20);
    this.lunLo = get32be(b, 24);
    this.taskAttr = b[29]! & 0x7;
    this.cdbLen = 16 + addCdb;
    return this;
  }

  /** readDesc() of decodeCmd, in place; returns the descriptor's length in the IU. */
  private readDesc(
    b: Buffer,
    at: number,
    fmt: number,
    cnt: number,
    dir: 'data-out' | 'data-in',
    ctx: SrpCodecContext,
    d: SrpDirectBufParts,
  ): number {
    let len: number;
    switch (fmt) {
      case SRP_NO_DATA_DESC:
        return 0;
      case SRP_DATA_DESC_DIRECT:
        len = SRP_DIRECT_BUF_LEN;
        break;
      case SRP_DATA_DESC_INDIRECT:
        len = SRP_INDIRECT_BUF_LEN + cnt * SRP_DIRECT_BUF_LEN;
        break;
      case SRP_DATA_DESC_IMM:
        if (dir === 'data-in') throw new SrpDecodeError('SRP_CMD: immediate data descriptor for data-in', SRP_CMD);
        len = SRP_IMM_BUF_LEN;
        break;
      default:
        throw new SrpDecodeError(`SRP_CMD: unsupported ${dir} descriptor format ${fmt}`, SRP_CMD);
    }
    if (at + len > b.length) {
      throw new SrpDecodeError(`SRP_CMD: ${dir} descriptor needs ${len} bytes at ${at}, IU is ${b.length}`, SRP_CMD);
    }
    if (fmt === SRP_DATA_DESC_DIRECT) {
      d.vaHi = get32be(b, at);
      d.vaLo = get32be(b, at + 4);
      d.key = get32be(b, at + 8);
      d.len = get32be(b, at + 12);
    } else if (fmt === SRP_DATA_DESC_IMM) {
      const dataLen = get32be(b, at);
      const off = ctx.immDataOffset;
      if (off === undefined || off === 0) {
        throw new SrpDecodeError('SRP_CMD: immediate data not negotiated on this channel', SRP_CMD);
      }
      if (off < at + SRP_IMM_BUF_LEN) {
        throw new SrpDecodeError(`SRP_CMD: imm_data_offset ${off} overlaps descriptors`, SRP_CMD);
      }
      if (off + dataLen > b.length) {
        const why = `${dataLen} bytes of immediate data at ${off} exceed IU of ${b.length}`;
        throw new SrpDecodeError(`SRP_CMD: ${why}`, SRP_CMD);
      }
      this.immOffset = off;
      this.immLen = dataLen;
    }
    return len;
  }
}

/* ----------------------------------------------------------------- RSP */

export function rspLength(m: Pick<SrpRsp, 'responseData' | 'sense'>): number {
  return SRP_RSP_LEN + (m.responseData?.length ?? 0) + (m.sense?.length ?? 0);
}
/** struct srp_rsp: 36 bytes, then response data, then sense data. */
export function encodeRsp(m: SrpRsp, buf?: Buffer, offset = 0): Buffer {
  const b = out(rspLength(m), buf, offset);
  const respLen = m.responseData?.length ?? 0;
  const senseLen = m.sense?.length ?? 0;
  b[0] = SRP_RSP;
  b[1] = m.solNot;
  b.writeInt32BE(m.reqLimDelta, 4);
  b.writeBigUInt64BE(m.tag, 8);
  b[18] =
    (m.flags & ~(SRP_RSP_FLAG_RSPVALID | SRP_RSP_FLAG_SNSVALID)) |
    (m.responseData ? SRP_RSP_FLAG_RSPVALID : 0) |
    (m.sense ? SRP_RSP_FLAG_SNSVALID : 0);
  b[19] = m.status;
  b.writeUInt32BE(u32(m.dataOutResCnt, 'data_out_res_cnt'), 20);
  b.writeUInt32BE(u32(m.dataInResCnt, 'data_in_res_cnt'), 24);
  b.writeUInt32BE(senseLen, 28);
  b.writeUInt32BE(respLen, 32);
  m.responseData?.copy(b, SRP_RSP_LEN);
  m.sense?.copy(b, SRP_RSP_LEN + respLen);
  return b;
}
/**
 * The length fields are only meaningful with their valid flag (RSPVALID / SNSVALID); a list that
 * would run past the end of the IU is an error, not something to clamp.
 */
export function decodeRsp(buf: Buffer, offset = 0, length?: number): SrpRsp {
  const b = view(buf, offset, length, SRP_RSP, SRP_RSP_LEN);
  const flags = b[18]!;
  const senseLen = flags & SRP_RSP_FLAG_SNSVALID ? b.readUInt32BE(28) : 0;
  const respLen = flags & SRP_RSP_FLAG_RSPVALID ? b.readUInt32BE(32) : 0;
  if (SRP_RSP_LEN + respLen + senseLen > b.length) {
    throw new SrpDecodeError(
      `SRP_RSP: response data ${respLen} + sense ${senseLen} bytes exceed IU of ${b.length}`,
      SRP_RSP,
    );
  }
  const m: SrpRsp = {
    solNot: b[1]!,
    reqLimDelta: b.readInt32BE(4),
    tag: b.readBigUInt64BE(8),
    flags,
    status: b[19]!,
    dataOutResCnt: b.readUInt32BE(20),
    dataInResCnt: b.readUInt32BE(24),
  };
  if (flags & SRP_RSP_FLAG_RSPVALID) m.responseData = b.subarray(SRP_RSP_LEN, SRP_RSP_LEN + respLen);
  if (flags & SRP_RSP_FLAG_SNSVALID) m.sense = b.subarray(SRP_RSP_LEN + respLen, SRP_RSP_LEN + respLen + senseLen);
  return m;
}

/** The fields of an SRP_RSP as encodeRspInPlace() takes them: the tag as 32-bit halves. */
export interface SrpRspFields {
  solNot: number;
  reqLimDelta: number;
  tagHi: number;
  tagLo: number;
  /** residual flags (DOOVER/DOUNDER/DIOVER/DIUNDER); RSPVALID/SNSVALID follow the data given */
  flags: number;
  status: number;
  dataOutResCnt: number;
  dataInResCnt: number;
  responseData: Buffer | undefined;
  sense: Buffer | undefined;
}

/**
 * encodeRsp() for a data path: writes the SRP_RSP at the start of b (a reused buffer of at least
 * rspLength(f) bytes) and returns its length. Allocates nothing.
 */
export function encodeRspInPlace(b: Buffer, f: SrpRspFields): number {
  const respLen = f.responseData?.length ?? 0;
  const senseLen = f.sense?.length ?? 0;
  const total = SRP_RSP_LEN + respLen + senseLen;
  if (total > b.length) throw new RangeError(`encode: ${total} bytes do not fit in ${b.length}`);
  // every byte of the header written (reserved ones as 0): the buffer is reused; the values are
  // checked as writeInt32BE/writeUInt32BE would, then stored with plain byte stores (put32be)
  const delta = f.reqLimDelta;
  if (!Number.isInteger(delta) || delta < -0x80000000 || delta > 0x7fffffff)
    throw new RangeError(`req_lim_delta out of range: ${delta}`);
  const dataOutResCnt = u32(f.dataOutResCnt, 'data_out_res_cnt');
  const dataInResCnt = u32(f.dataInResCnt, 'data_in_res_cnt');
  const tagHi = u32(f.tagHi, 'tag');
  const tagLo = u32(f.tagLo, 'tag');
  put32be(b, 0, SRP_RSP * 0x1000000 + (f.solNot & 0xff) * 0x10000);
  put32be(b, 4, delta);
  put32be(b, 8, tagHi);
  put32be(b, 12, tagLo);
  const flags =
    (f.flags & ~(SRP_RSP_FLAG_RSPVALID | SRP_RSP_FLAG_SNSVALID)) |
    (f.responseData ? SRP_RSP_FLAG_RSPVALID : 0) |
    (f.sense ? SRP_RSP_FLAG_SNSVALID : 0);
  put32be(b, 16, ((flags & 0xff) << 8) | (f.status & 0xff));
  put32be(b, 20, dataOutResCnt);
  put32be(b, 24, dataInResCnt);
  put32be(b, 28, senseLen);
  put32be(b, 32, respLen);
  f.responseData?.copy(b, SRP_RSP_LEN);
  f.sense?.copy(b, SRP_RSP_LEN + respLen);
  return total;
}

/**
 * The data path's decodeRsp(): reads an SRP_RSP in place into this reusable object (64-bit tag as
 * two 32-bit halves; response and sense data as offsets into the IU) without allocating. Accepts
 * and refuses exactly what decodeRsp() does.
 */
export class SrpRspReader {
  solNot = 0;
  reqLimDelta = 0;
  tagHi = 0;
  tagLo = 0;
  flags = 0;
  status = 0;
  dataOutResCnt = 0;
  dataInResCnt = 0;
  /** response data at [respOffset, respOffset + respLen) of the IU, when RSPVALID */
  respOffset = SRP_RSP_LEN;
  respLen = 0;
  /** sense data at [senseOffset, senseOffset + senseLen) of the IU, when SNSVALID */
  senseOffset = SRP_RSP_LEN;
  senseLen = 0;

  /** Reads the whole of b as one SRP_RSP; throws SrpDecodeError when it is not a valid one. */
  read(b: Buffer): this {
    if (b.length < 1) throw new SrpDecodeError(`${nameOfSrpOpcode(SRP_RSP)}: empty IU`, undefined);
    const name = nameOfSrpOpcode(SRP_RSP);
    if (b[0] !== SRP_RSP) throw new SrpDecodeError(`expected ${name}, got ${nameOfSrpOpcode(b[0]!)}`, b[0]);
    if (b.length < SRP_RSP_LEN) {
      throw new SrpDecodeError(`${name}: ${b.length} bytes, needs at least ${SRP_RSP_LEN}`, SRP_RSP);
    }
    const flags = b[18]!;
    const senseLen = flags & SRP_RSP_FLAG_SNSVALID ? b.readUInt32BE(28) : 0;
    const respLen = flags & SRP_RSP_FLAG_RSPVALID ? b.readUInt32BE(32) : 0;
    if (SRP_RSP_LEN + respLen + senseLen > b.length) {
      throw new SrpDecodeError(
        `SRP_RSP: response data ${respLen} + sense ${senseLen} bytes exceed IU of ${b.length}`,
        SRP_RSP,
      );
    }
    this.solNot = b[1]!;
    this.reqLimDelta = b.readInt32BE(4);
    this.tagHi = b.readUInt32BE(8);
    this.tagLo = b.readUInt32BE(12);
    this.flags = flags;
    this.status = b[19]!;
    this.dataOutResCnt = b.readUInt32BE(20);
    this.dataInResCnt = b.readUInt32BE(24);
    this.respLen = respLen;
    this.senseOffset = SRP_RSP_LEN + respLen;
    this.senseLen = senseLen;
    return this;
  }
}

/* ------------------------------------------------------ CRED / AER */

export function encodeCredReq(m: SrpCredReq, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_CRED_REQ_LEN, buf, offset);
  b[0] = SRP_CRED_REQ;
  b[1] = m.solNot;
  b.writeInt32BE(m.reqLimDelta, 4);
  b.writeBigUInt64BE(m.tag, 8);
  return b;
}
export function decodeCredReq(buf: Buffer, offset = 0, length?: number): SrpCredReq {
  const b = view(buf, offset, length, SRP_CRED_REQ, SRP_CRED_REQ_LEN);
  return { solNot: b[1]!, reqLimDelta: b.readInt32BE(4), tag: b.readBigUInt64BE(8) };
}
export function encodeCredRsp(m: SrpCredRsp, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_CRED_RSP_LEN, buf, offset);
  b[0] = SRP_CRED_RSP;
  b.writeBigUInt64BE(m.tag, 8);
  return b;
}
export function decodeCredRsp(buf: Buffer, offset = 0, length?: number): SrpCredRsp {
  const b = view(buf, offset, length, SRP_CRED_RSP, SRP_CRED_RSP_LEN);
  return { tag: b.readBigUInt64BE(8) };
}

/** struct srp_aer_req: 36 bytes then sense data. */
export function encodeAerReq(m: SrpAerReq, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_AER_REQ_LEN + m.sense.length, buf, offset);
  b[0] = SRP_AER_REQ;
  b[1] = m.solNot;
  b.writeInt32BE(m.reqLimDelta, 4);
  b.writeBigUInt64BE(m.tag, 8);
  b.writeBigUInt64BE(m.lun, 20);
  b.writeUInt32BE(m.sense.length, 28);
  m.sense.copy(b, SRP_AER_REQ_LEN);
  return b;
}
export function decodeAerReq(buf: Buffer, offset = 0, length?: number): SrpAerReq {
  const b = view(buf, offset, length, SRP_AER_REQ, SRP_AER_REQ_LEN);
  const senseLen = b.readUInt32BE(28);
  if (SRP_AER_REQ_LEN + senseLen > b.length) {
    throw new SrpDecodeError(`SRP_AER_REQ: sense ${senseLen} bytes exceed IU of ${b.length}`, SRP_AER_REQ);
  }
  return {
    solNot: b[1]!,
    reqLimDelta: b.readInt32BE(4),
    tag: b.readBigUInt64BE(8),
    lun: b.readBigUInt64BE(20),
    sense: b.subarray(SRP_AER_REQ_LEN, SRP_AER_REQ_LEN + senseLen),
  };
}
export function encodeAerRsp(m: SrpAerRsp, buf?: Buffer, offset = 0): Buffer {
  const b = out(SRP_AER_RSP_LEN, buf, offset);
  b[0] = SRP_AER_RSP;
  b.writeBigUInt64BE(m.tag, 8);
  return b;
}
export function decodeAerRsp(buf: Buffer, offset = 0, length?: number): SrpAerRsp {
  const b = view(buf, offset, length, SRP_AER_RSP, SRP_AER_RSP_LEN);
  return { tag: b.readBigUInt64BE(8) };
}

/* ---------------------------------------------------------- dispatcher */

/**
 * Decodes any IU that travels on an established channel or in CM private data, by its opcode
 * byte (the 56-byte RDMA/CM login request has no opcode at byte 0: use decodeLoginReqRdma).
 */
export function decodeIu(buf: Buffer, offset = 0, length?: number, ctx: SrpCodecContext = {}): SrpIu {
  if (!Number.isInteger(offset) || offset < 0 || offset >= buf.length) {
    throw new SrpDecodeError(`IU: offset ${offset} outside buffer of ${buf.length}`, undefined);
  }
  const op = buf[offset]!;
  switch (op) {
    case SRP_LOGIN_REQ:
      return { type: 'SRP_LOGIN_REQ', ...decodeLoginReq(buf, offset, length) };
    case SRP_LOGIN_RSP:
      return { type: 'SRP_LOGIN_RSP', ...decodeLoginRsp(buf, offset, length) };
    case SRP_LOGIN_REJ:
      return { type: 'SRP_LOGIN_REJ', ...decodeLoginRej(buf, offset, length) };
    case SRP_I_LOGOUT:
      return { type: 'SRP_I_LOGOUT', ...decodeILogout(buf, offset, length) };
    case SRP_T_LOGOUT:
      return { type: 'SRP_T_LOGOUT', ...decodeTLogout(buf, offset, length) };
    case SRP_TSK_MGMT:
      return { type: 'SRP_TSK_MGMT', ...decodeTskMgmt(buf, offset, length) };
    case SRP_CMD:
      return { type: 'SRP_CMD', ...decodeCmd(buf, offset, length, ctx) };
    case SRP_RSP:
      return { type: 'SRP_RSP', ...decodeRsp(buf, offset, length) };
    case SRP_CRED_REQ:
      return { type: 'SRP_CRED_REQ', ...decodeCredReq(buf, offset, length) };
    case SRP_CRED_RSP:
      return { type: 'SRP_CRED_RSP', ...decodeCredRsp(buf, offset, length) };
    case SRP_AER_REQ:
      return { type: 'SRP_AER_REQ', ...decodeAerReq(buf, offset, length) };
    case SRP_AER_RSP:
      return { type: 'SRP_AER_RSP', ...decodeAerRsp(buf, offset, length) };
    default:
      throw new SrpDecodeError(`unknown IU type ${nameOfSrpOpcode(op)}`, op);
  }
}
