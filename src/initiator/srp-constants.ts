/**
 * SCSI RDMA Protocol constants, named as in Linux include/scsi/srp.h (T10 SRP draft revision 16a,
 * plus the SRP-2 immediate data additions marked "new in SRP-2"). Names that srp.h lacks come
 * from drivers/infiniband/ulp/srpt/ib_srpt.h and drivers/infiniband/ulp/srp/ib_srp.h, or from the
 * T10 r16a tables (marked "r16a, not in srp.h").
 *
 * Every group is a frozen object so nameOf…() helpers can be derived from the same source.
 */

/** Builds a value -> name lookup from a constants object (first name wins on duplicate values). */
function reverse(obj: Readonly<Record<string, number>>): ReadonlyMap<number, string> {
  const m = new Map<number, string>();
  for (const [k, v] of Object.entries(obj)) if (!m.has(v)) m.set(v, k);
  return m;
}
function hex(v: number, width: number): string {
  return '0x' + (v >>> 0).toString(16).padStart(width, '0');
}

/** Information unit type codes (byte 0 of every IU). */
export const SrpOpcode = Object.freeze({
  SRP_LOGIN_REQ: 0x00,
  SRP_TSK_MGMT: 0x01,
  SRP_CMD: 0x02,
  SRP_I_LOGOUT: 0x03,
  SRP_LOGIN_RSP: 0xc0,
  SRP_RSP: 0xc1,
  SRP_LOGIN_REJ: 0xc2,
  SRP_T_LOGOUT: 0x80,
  SRP_CRED_REQ: 0x81,
  SRP_AER_REQ: 0x82,
  SRP_CRED_RSP: 0x41,
  SRP_AER_RSP: 0x42,
} as const);
export const {
  SRP_LOGIN_REQ,
  SRP_TSK_MGMT,
  SRP_CMD,
  SRP_I_LOGOUT,
  SRP_LOGIN_RSP,
  SRP_RSP,
  SRP_LOGIN_REJ,
  SRP_T_LOGOUT,
  SRP_CRED_REQ,
  SRP_AER_REQ,
  SRP_CRED_RSP,
  SRP_AER_RSP,
} = SrpOpcode;
const opcodeNames = reverse(SrpOpcode);
export function nameOfSrpOpcode(op: number): string {
  return opcodeNames.get(op) ?? `SRP_UNKNOWN_OPCODE(${hex(op, 2)})`;
}

/** Supported/requested buffer formats (login req_buf_fmt / rsp buf_fmt bitmask). */
export const SrpBufFormat = Object.freeze({
  SRP_BUF_FORMAT_DIRECT: 1 << 1,
  SRP_BUF_FORMAT_INDIRECT: 1 << 2,
} as const);
export const { SRP_BUF_FORMAT_DIRECT, SRP_BUF_FORMAT_INDIRECT } = SrpBufFormat;

/** Data buffer descriptor formats (SRP_CMD buf_fmt: data-out in the high nibble, data-in in the low). */
export const SrpDataDesc = Object.freeze({
  SRP_NO_DATA_DESC: 0,
  SRP_DATA_DESC_DIRECT: 1,
  SRP_DATA_DESC_INDIRECT: 2,
  /** new in SRP-2 */
  SRP_DATA_DESC_IMM: 3,
} as const);
export const { SRP_NO_DATA_DESC, SRP_DATA_DESC_DIRECT, SRP_DATA_DESC_INDIRECT, SRP_DATA_DESC_IMM } = SrpDataDesc;
const dataDescNames = reverse(SrpDataDesc);
export function nameOfSrpDataDesc(fmt: number): string {
  return dataDescNames.get(fmt) ?? `SRP_DATA_DESC_UNKNOWN(${fmt})`;
}

/** Task management functions (SRP_TSK_MGMT tsk_mgmt_func). */
export const SrpTskMgmtFunc = Object.freeze({
  SRP_TSK_ABORT_TASK: 0x01,
  SRP_TSK_ABORT_TASK_SET: 0x02,
  SRP_TSK_CLEAR_TASK_SET: 0x04,
  SRP_TSK_LUN_RESET: 0x08,
  SRP_TSK_CLEAR_ACA: 0x40,
} as const);
export const {
  SRP_TSK_ABORT_TASK,
  SRP_TSK_ABORT_TASK_SET,
  SRP_TSK_CLEAR_TASK_SET,
  SRP_TSK_LUN_RESET,
  SRP_TSK_CLEAR_ACA,
} = SrpTskMgmtFunc;
const tskNames = reverse(SrpTskMgmtFunc);
export function nameOfSrpTskMgmtFunc(f: number): string {
  return tskNames.get(f) ?? `SRP_TSK_UNKNOWN(${hex(f, 2)})`;
}

/** SRP_LOGIN_REJ reason codes (enum srp_login_rej_reason). */
export const SrpLoginRejReason = Object.freeze({
  SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL: 0x00010000,
  SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES: 0x00010001,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE: 0x00010002,
  SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL: 0x00010003,
  SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT: 0x00010004,
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED: 0x00010005,
  SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED: 0x00010006,
} as const);
export const {
  SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL,
  SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL,
  SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT,
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
  SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED,
} = SrpLoginRejReason;
const rejNames = reverse(SrpLoginRejReason);
export function nameOfSrpLoginRejReason(reason: number): string {
  return rejNames.get(reason >>> 0) ?? `SRP_LOGIN_REJ_UNKNOWN(${hex(reason, 8)})`;
}
/** Human wording of each reject reason (T10 SRP r16a login rejection table), for error messages. */
const rejText: ReadonlyMap<number, string> = new Map([
  [SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL, 'unable to establish RDMA channel, no reason specified'],
  [SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES, 'insufficient RDMA channel resources'],
  [SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE, 'requested maximum initiator to target IU length too large'],
  [SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL, 'unable to associate RDMA channel with specified I_T nexus'],
  [SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT, 'one or more requested data buffer descriptor formats are not supported'],
  [SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED, 'SRP target port does not support multiple RDMA channels per I_T nexus'],
  [SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED, 'RDMA channel limit reached for this SRP initiator port'],
]);
export function describeSrpLoginRejReason(reason: number): string {
  return rejText.get(reason >>> 0) ?? 'unknown reason';
}

/** IB I/O class of an SRP IOC (DM IOC profile). */
export const SrpIoClass = Object.freeze({
  SRP_REV10_IB_IO_CLASS: 0xff00,
  SRP_REV16A_IB_IO_CLASS: 0x0100,
} as const);
export const { SRP_REV10_IB_IO_CLASS, SRP_REV16A_IB_IO_CLASS } = SrpIoClass;

/** srp_login_req.req_flags: MULTI-CHANNEL ACTION (bits 1:0) and SRP-2 immediate data request. */
export const SrpLoginReqFlag = Object.freeze({
  SRP_MULTICHAN_SINGLE: 0,
  SRP_MULTICHAN_MULTI: 1,
  /** new in SRP-2 */
  SRP_IMMED_REQUESTED: 0x80,
} as const);
export const { SRP_MULTICHAN_SINGLE, SRP_MULTICHAN_MULTI, SRP_IMMED_REQUESTED } = SrpLoginReqFlag;
/** ib_srpt.h: req_flags bits (r16a login request table). */
export const SRP_MTCH_ACTION = 0x03;
export const SRP_LOSOLNT = 0x10;
export const SRP_CRSOLNT = 0x20;
export const SRP_AESOLNT = 0x40;

/** srp_login_rsp.rsp_flags: MULTI-CHANNEL RESULT (bits 1:0) and SRP-2 immediate data support. */
export const SrpLoginRspFlag = Object.freeze({
  SRP_LOGIN_RSP_MULTICHAN_NO_CHAN: 0x0,
  SRP_LOGIN_RSP_MULTICHAN_TERMINATED: 0x1,
  SRP_LOGIN_RSP_MULTICHAN_MAINTAINED: 0x2,
  /** new in SRP-2 */
  SRP_LOGIN_RSP_IMMED_SUPP: 0x80,
} as const);
export const {
  SRP_LOGIN_RSP_MULTICHAN_NO_CHAN,
  SRP_LOGIN_RSP_MULTICHAN_TERMINATED,
  SRP_LOGIN_RSP_MULTICHAN_MAINTAINED,
  SRP_LOGIN_RSP_IMMED_SUPP,
} = SrpLoginRspFlag;
const multichanNames = reverse({
  SRP_LOGIN_RSP_MULTICHAN_NO_CHAN,
  SRP_LOGIN_RSP_MULTICHAN_TERMINATED,
  SRP_LOGIN_RSP_MULTICHAN_MAINTAINED,
});
export function nameOfSrpMultichanResult(flags: number): string {
  return multichanNames.get(flags & 0x3) ?? `SRP_LOGIN_RSP_MULTICHAN_RESERVED(${flags & 0x3})`;
}

/** SRP_CMD task attributes (ib_srpt.h; r16a table 21). */
export const SrpTaskAttr = Object.freeze({
  SRP_CMD_SIMPLE_Q: 0x0,
  SRP_CMD_HEAD_OF_Q: 0x1,
  SRP_CMD_ORDERED_Q: 0x2,
  SRP_CMD_ACA: 0x4,
} as const);
export const { SRP_CMD_SIMPLE_Q, SRP_CMD_HEAD_OF_Q, SRP_CMD_ORDERED_Q, SRP_CMD_ACA } = SrpTaskAttr;

/** sol_not bits (ib_srpt.h). */
export const SRP_SOLNT = 0x01;
export const SRP_SCSOLNT = 0x02;
export const SRP_UCSOLNT = 0x04;

/** srp_rsp.flags. */
export const SrpRspFlag = Object.freeze({
  SRP_RSP_FLAG_RSPVALID: 1 << 0,
  SRP_RSP_FLAG_SNSVALID: 1 << 1,
  SRP_RSP_FLAG_DOOVER: 1 << 2,
  SRP_RSP_FLAG_DOUNDER: 1 << 3,
  SRP_RSP_FLAG_DIOVER: 1 << 4,
  SRP_RSP_FLAG_DIUNDER: 1 << 5,
} as const);
export const {
  SRP_RSP_FLAG_RSPVALID,
  SRP_RSP_FLAG_SNSVALID,
  SRP_RSP_FLAG_DOOVER,
  SRP_RSP_FLAG_DOUNDER,
  SRP_RSP_FLAG_DIOVER,
  SRP_RSP_FLAG_DIUNDER,
} = SrpRspFlag;

/** Response codes carried in SRP_RSP response data byte 3 (ib_srpt.h; r16a table 24). */
export const SrpTskMgmtStatus = Object.freeze({
  SRP_TSK_MGMT_SUCCESS: 0x00,
  /** r16a, not in srp.h: "request fields invalid" */
  SRP_RSP_REQUEST_FIELDS_INVALID: 0x02,
  SRP_TSK_MGMT_FUNC_NOT_SUPP: 0x04,
  SRP_TSK_MGMT_FAILED: 0x05,
} as const);
export const { SRP_TSK_MGMT_SUCCESS, SRP_RSP_REQUEST_FIELDS_INVALID, SRP_TSK_MGMT_FUNC_NOT_SUPP, SRP_TSK_MGMT_FAILED } =
  SrpTskMgmtStatus;
const tmStatusNames = reverse(SrpTskMgmtStatus);
export function nameOfSrpTskMgmtStatus(code: number): string {
  return tmStatusNames.get(code) ?? `SRP_RSP_CODE_UNKNOWN(${hex(code, 2)})`;
}

/** SRP_T_LOGOUT reason codes (r16a, not in srp.h). */
export const SrpTLogoutReason = Object.freeze({
  SRP_T_LOGOUT_NO_REASON: 0x0,
  SRP_T_LOGOUT_INACTIVE_CHANNEL: 0x1,
  SRP_T_LOGOUT_INVALID_IU_TYPE: 0x2,
  SRP_T_LOGOUT_UNEXPECTED_RESPONSE: 0x3,
  SRP_T_LOGOUT_MULTICHANNEL_ACTION: 0x4,
  SRP_T_LOGOUT_UNSUPPORTED_DATA_OUT_FMT: 0x6,
  SRP_T_LOGOUT_UNSUPPORTED_DATA_IN_FMT: 0x7,
  SRP_T_LOGOUT_INVALID_DATA_OUT_COUNT: 0x8,
  SRP_T_LOGOUT_INVALID_DATA_IN_COUNT: 0x9,
} as const);
export const {
  SRP_T_LOGOUT_NO_REASON,
  SRP_T_LOGOUT_INACTIVE_CHANNEL,
  SRP_T_LOGOUT_INVALID_IU_TYPE,
  SRP_T_LOGOUT_UNEXPECTED_RESPONSE,
  SRP_T_LOGOUT_MULTICHANNEL_ACTION,
  SRP_T_LOGOUT_UNSUPPORTED_DATA_OUT_FMT,
  SRP_T_LOGOUT_UNSUPPORTED_DATA_IN_FMT,
  SRP_T_LOGOUT_INVALID_DATA_OUT_COUNT,
  SRP_T_LOGOUT_INVALID_DATA_IN_COUNT,
} = SrpTLogoutReason;
const tLogoutNames = reverse(SrpTLogoutReason);
export function nameOfSrpTLogoutReason(reason: number): string {
  return tLogoutNames.get(reason >>> 0) ?? `SRP_T_LOGOUT_UNKNOWN(${hex(reason, 8)})`;
}

/** Fixed IU sizes in bytes (the part before any variable-length data). */
export const SRP_LOGIN_REQ_LEN = 64;
/** struct srp_login_req_rdma: RDMA/CM private data is limited to 56 bytes. */
export const SRP_LOGIN_REQ_RDMA_LEN = 56;
/** Offset of initiator_port_id[16] in struct srp_login_req_rdma (target_port_id follows at 32). */
export const SRP_LOGIN_REQ_RDMA_INITIATOR_PORT_ID = 16;
export const SRP_LOGIN_RSP_LEN = 52;
export const SRP_LOGIN_REJ_LEN = 32;
export const SRP_I_LOGOUT_LEN = 16;
export const SRP_T_LOGOUT_LEN = 16;
export const SRP_TSK_MGMT_LEN = 48;
export const SRP_CMD_LEN = 48;
export const SRP_RSP_LEN = 36;
export const SRP_CRED_REQ_LEN = 16;
export const SRP_CRED_RSP_LEN = 16;
export const SRP_AER_REQ_LEN = 36;
export const SRP_AER_RSP_LEN = 16;
/** struct srp_direct_buf */
export const SRP_DIRECT_BUF_LEN = 16;
/** struct srp_indirect_buf header (table descriptor + total length), descriptors follow */
export const SRP_INDIRECT_BUF_LEN = 20;
/** struct srp_imm_buf (new in SRP-2) */
export const SRP_IMM_BUF_LEN = 4;

/** ib_srp.h: additional CDB bytes supported (32-byte CDBs). */
export const SRP_MAX_ADD_CDB_LEN = 16;
/** ib_srp.h: immediate data offset chosen so that a 32-byte CDB still fits (48 + 16 + 4 = 68). */
export const SRP_IMM_DATA_OFFSET = SRP_CMD_LEN + SRP_MAX_ADD_CDB_LEN + SRP_IMM_BUF_LEN;
/** ib_srpt.h: largest imm_data_offset LIO accepts. */
export const SRP_MAX_IMM_DATA_OFFSET = 80;
/** ib_srp.h: credits reserved for task management so an abort can always be sent. */
export const SRP_TSK_MGMT_SQ_SIZE = 1;
/** ib_srp.h: credits kept for initiator responses to target requests. */
export const SRP_RSP_SQ_SIZE = 1;
/** ib_srp.h: default queue_size and derived command depth. */
export const SRP_DEFAULT_QUEUE_SIZE = 64;
export const SRP_DEFAULT_CMD_SQ_SIZE = SRP_DEFAULT_QUEUE_SIZE - SRP_RSP_SQ_SIZE - SRP_TSK_MGMT_SQ_SIZE;
/** ib_srp.h: how long a task management function may take. */
export const SRP_ABORT_TIMEOUT_MS = 5000;
/** ib_srp.c: default cmd_sg_entries (descriptors carried inside an SRP_CMD). */
export const SRP_DEF_SG_TABLESIZE = 12;
/** ib_srpt.h: smallest max_it_iu_len a target must accept. */
export const MIN_MAX_REQ_SIZE = 996;
