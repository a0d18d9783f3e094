/**
 * Test SRP target: the target side of the SRP protocol over the loopback transport, so the whole
 * initiator (session, SCSI layer, NBD) runs without RDMA.
 *
 * Behaves like LIO ib_srpt where it matters to an initiator: login checks (IU length, descriptor
 * formats, MULTI-CHANNEL action, SRP-2 immediate data at the initiator's imm_data_offset), a
 * credit window per channel (req_lim), data-out fetched by RDMA READ and data-in delivered by
 * RDMA WRITE before the SRP_RSP, credits of aborted tasks returned in later responses, task
 * management (ABORT TASK, LUN RESET, ABORT/CLEAR TASK SET). Commands are read in place and answered
 * from reused buffers and task records, so serving one allocates next to nothing: the test target
 * runs in the same process as the initiator whose cost `serve --test-target` measures.
 *
 * Fault injection (properties and methods below): reject login with a chosen reason, delay
 * responses, stall or answer chosen commands (sense data), stop answering (black hole), withhold
 * credits until sendCredReq(), send CRED_REQ / AER_REQ / T_LOGOUT / arbitrary bytes, drop every
 * channel. The loopback pair adds wire-level faults (delay, drop, black hole, disconnect).
 *
 * In-process use:
 *   const target = new SrpTestTarget({ luns: [[0n, new RamScsiLun()]] });
 *   const pair = target.newChannel();            // or createLoopbackPair() + target.accept(pair.target)
 *   const session = await SrpSession.login(pair.initiator, { initiatorPortId, targetPortId });
 * A reconnect is simply another newChannel() + login (the target keeps its LUNs).
 */
import {
  SRP_BUF_FORMAT_DIRECT,
  SRP_BUF_FORMAT_INDIRECT,
  SRP_CMD,
  SRP_CMD_LEN,
  SRP_CRED_RSP,
  SRP_AER_RSP,
  SRP_DATA_DESC_DIRECT,
  SRP_DATA_DESC_IMM,
  SRP_DATA_DESC_INDIRECT,
  SRP_I_LOGOUT,
  SRP_MAX_ADD_CDB_LEN,
  SRP_IMMED_REQUESTED,
  SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED,
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL,
  SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT,
  SRP_LOGIN_REQ,
  SRP_LOGIN_REQ_LEN,
  SRP_LOGIN_REQ_RDMA_LEN,
  SRP_LOGIN_RSP_IMMED_SUPP,
  SRP_LOGIN_RSP_MULTICHAN_MAINTAINED,
  SRP_LOGIN_RSP_MULTICHAN_NO_CHAN,
  SRP_LOGIN_RSP_MULTICHAN_TERMINATED,
  SRP_MAX_IMM_DATA_OFFSET,
  SRP_MTCH_ACTION,
  SRP_MULTICHAN_MULTI,
  SRP_RSP_FLAG_DIOVER,
  SRP_RSP_FLAG_DIUNDER,
  SRP_RSP_LEN,
  SRP_TSK_ABORT_TASK,
  SRP_TSK_ABORT_TASK_SET,
  SRP_TSK_CLEAR_TASK_SET,
  SRP_TSK_LUN_RESET,
  SRP_TSK_MGMT,
  SRP_TSK_MGMT_FAILED,
  SRP_TSK_MGMT_FUNC_NOT_SUPP,
  SRP_TSK_MGMT_SUCCESS,
  SRP_T_LOGOUT_MULTICHANNEL_ACTION,
  nameOfSrpOpcode,
} from '../initiator/srp-constants.js';
import {
  SrpCmdReader,
  SrpDecodeError,
  copySmall,
  decodeCmd,
  decodeLoginReq,
  decodeLoginReqRdma,
  decodeTskMgmt,
  encodeAerReq,
  encodeCredReq,
  encodeLoginRej,
  encodeLoginRsp,
  encodeRspInPlace,
  encodeTLogout,
  type SrpDataDesc,
  type SrpDirectBuf,
  type SrpLoginReq,
  type SrpRspFields,
} from '../initiator/srp-iu.js';
import type { ScsiTargetLun } from '../initiator/scsi-executor.js';
import type { ConnectAnswer, TargetChannelTransport } from '../initiator/transport.js';
import {
  createLoopbackPair,
  type LoopbackOptions,
  type LoopbackPair,
  type LoopbackTargetEnd,
} from '../initiator/loopback.js';
import type { SrpLogger } from '../initiator/srp-session.js';

const GOOD = 0x00;
const CHECK_CONDITION = 0x02;
const BUSY = 0x08;
const REPORT_LUNS = 0xa0;

/** Fixed-format current sense data (SPC-4 4.5.3), enough for the target's own errors. */
function fixedSense(key: number, asc: number, ascq: number): Buffer {
  const b = Buffer.alloc(18);
  b[0] = 0x70;
  b[2] = key;
  b[7] = 10;
  b[12] = asc;
  b[13] = ascq;
  return b;
}
/** ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED */
const senseLunNotSupported = () => fixedSense(0x05, 0x25, 0x00);
/** HARDWARE ERROR, INTERNAL TARGET FAILURE */
const senseInternalFailure = () => fixedSense(0x04, 0x44, 0x00);

export interface SrpTestTargetOptions {
  /** LUNs by SAM LUN (the 8 wire bytes as a bigint). */
  luns: Map<bigint, ScsiTargetLun> | Iterable<[bigint, ScsiTargetLun]>;
  /** Credits granted at login per channel (default 32). */
  reqLim?: number;
  /** Largest initiator-to-target IU accepted (default 8260 = ib_srp's default with immediate data). */
  maxItIuLen?: number;
  /** Largest target-to-initiator IU (default 1024). */
  maxTiIuLen?: number;
  /** Grant SRP-2 immediate data when requested (default true). */
  immediateData?: boolean;
  /** Supported buffer formats (default DIRECT | INDIRECT). */
  bufFmt?: number;
  /** Accept SRP_MULTICHAN_MULTI logins (default true). */
  multichannel?: boolean;
  /** Channels per initiator port (default 4). */
  maxChannels?: number;
  /** Start with credits withheld (see SrpTestTarget.withholdCredits). */
  withholdCredits?: boolean;
  logger?: SrpLogger;
}

export interface SrpTestTargetStats {
  logins: number;
  loginRejects: number;
  commands: number;
  tasks: number;
  tmAborted: number;
  creditViolations: number;
  immediateDataCommands: number;
  indirectCommands: number;
  credRsps: number;
  aerRsps: number;
  iLogouts: number;
  malformed: number;
  maxOutstanding: number;
}

/** What a command hook returns: a reply (skips the LUN), 'stall' (never answer), or undefined (normal). */
export type CommandHookResult = { status: number; sense?: Buffer; dataIn?: Buffer } | 'stall' | undefined;

type Reply = { status: number; sense?: Buffer; dataIn?: Buffer };

const TWO_32 = 2 ** 32;
/** A tag or LUN whose upper 32 bits reach this is 2^53 or more: not a safe Number. */
const HI_LIMIT = 2 ** 21;
/** A 64-bit value from its halves, as a Number when exact (map key), else its hex. */
function keyOf(hi: number, lo: number): number | string {
  return hi < HI_LIMIT ? hi * TWO_32 + lo : `${hi.toString(16)}:${lo.toString(16)}`;
}
function bigOf(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}
/** No data-in descriptors. */
const NO_DESCS: readonly SrpDirectBuf[] = [];

/**
 * One SRP_CMD the target works on. Records are reused per channel: what the command needs after
 * the receive buffer is gone (its CDB, immediate data) is copied into the record's own buffers.
 */
class Task {
  tagHi = 0;
  tagLo = 0;
  /** key in SrpTargetChannel.tasks (keyOf the tag), set when the task starts waiting (pend()) */
  key: number | string = 0;
  lun = 0n;
  aborted = false;
  /**
   * In SrpTargetChannel.tasks: the command waits for something (RDMA READ, the LUN's promise, a
   * response delay, a stall), so a task management function or a disconnect may reach it. A
   * command answered at once is never there.
   */
  pending = false;
  /** the CDB (a view of cdbBuf) */
  cdb: Buffer;
  private readonly cdbBuf = Buffer.alloc(16 + SRP_MAX_ADD_CDB_LEN);
  /** data-out: immediate data or what RDMA READ fetched */
  dataOut: Buffer | undefined = undefined;
  /** dataOut is a view of the receive buffer (valid only until the IU's handler returns) */
  dataOutInIu = false;
  /** room for data-out (immediate data, or several RDMA READs), grown when needed */
  private outBuf: Buffer | undefined = undefined;
  /** the last view of outBuf handed out (kept while the length repeats) */
  private outView: Buffer | undefined = undefined;
  /** data-in descriptors and their total length (the allocation length) */
  inDescs: readonly SrpDirectBuf[] = NO_DESCS;
  allocationLength = 0;
  /** the direct data-in descriptor, reused */
  readonly direct: SrpDirectBuf = { va: 0n, key: 0, len: 0 };
  readonly directList: SrpDirectBuf[] = [this.direct];

  constructor() {
    this.cdb = this.cdbBuf.subarray(0, 16);
  }
  setCdb(raw: Buffer, offset: number, len: number): void {
    copySmall(raw, this.cdbBuf, 0, offset, offset + len);
    if (this.cdb.length !== len) this.cdb = this.cdbBuf.subarray(0, len);
  }
  /** A buffer of len bytes for data-out (valid until the record is reused). */
  outSpace(len: number): Buffer {
    if (!this.outBuf || this.outBuf.length < len) {
      this.outBuf = Buffer.allocUnsafe(Math.max(len, 8192));
      this.outView = undefined;
    }
    if (!this.outView || this.outView.length !== len) this.outView = this.outBuf.subarray(0, len);
    this.dataOut = this.outView;
    return this.dataOut;
  }
}

/** One logged-in channel, target side. */
export class SrpTargetChannel {
  /** credits the initiator holds, as far as the target knows */
  initiatorCredits: number;
  /** credits freed without a response yet to carry them */
  pendingDelta = 0;
  /** tasks waiting for something (Task.pending) by keyOf(tag) */
  readonly tasks = new Map<number | string, Task>();
  open = true;
  private nextTag = 1n;
  /** decode context of this channel's SRP_CMDs */
  readonly codec: { immDataOffset: number };
  /** SRP_RSP encoding buffer (sends copy it) and the view of it last sent */
  readonly rspBuf: Buffer;
  rspView: Buffer;
  private readonly freeTasks: Task[] = [];
  constructor(
    readonly end: TargetChannelTransport,
    readonly login: SrpLoginReq,
    readonly immDataOffset: number,
    readonly maxTiIuLen: number,
    reqLim: number,
  ) {
    this.initiatorCredits = reqLim;
    this.codec = { immDataOffset };
    this.rspBuf = Buffer.alloc(Math.max(maxTiIuLen, SRP_RSP_LEN + 4));
    this.rspView = this.rspBuf.subarray(0, SRP_RSP_LEN);
  }
  get initiatorPortId(): string {
    return this.login.initiatorPortId.toString('hex');
  }
  tag(): bigint {
    return 0x7000_0000_0000_0000n + this.nextTag++;
  }
  send(iu: Buffer): boolean {
    if (!this.open) return false;
    try {
      this.end.send(iu);
      return true;
    } catch {
      return false;
    }
  }
  /** @internal */
  takeTask(): Task {
    const t = this.freeTasks.pop() ?? new Task();
    t.aborted = false;
    t.pending = false;
    return t;
  }
  /** @internal The command is over (answered, aborted or lost): its record may serve another. */
  releaseTask(t: Task): void {
    t.dataOut = undefined;
    t.dataOutInIu = false;
    t.inDescs = NO_DESCS;
    this.freeTasks.push(t);
  }
}

export class SrpTestTarget {
  readonly luns: Map<bigint, ScsiTargetLun>;
  readonly reqLim: number;
  readonly maxItIuLen: number;
  readonly maxTiIuLen: number;
  immediateData: boolean;
  bufFmt: number;
  multichannel: boolean;
  maxChannels: number;

  /**
   * Initiator port ids (32 hex digits) admitted, as LIO ib_srpt's ACLs on a port named by its GID:
   * any other login is rejected with SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED. Undefined: everyone.
   */
  acls: Set<string> | undefined;
  /** The initiator port id of the last login request (hex), rejected or not. */
  lastInitiatorPortId: string | undefined;
  /** REPORT LUNS lists the LUNs newest (last added) first, as LIO does; default: ascending. */
  reportLunsNewestFirst = false;

  /* ---- fault injection ---- */
  /** Reject every login with this SRP_LOGIN_REJ reason. */
  rejectLogin: number | undefined;
  /** Delay before each SRP_RSP, ms. */
  responseDelayMs = 0;
  /** Swallow everything received: nothing is answered (logins still are, unless rejected). */
  blackHole = false;
  /** Responses return no credits; they accumulate until sendCredReq(). */
  withholdCredits = false;
  /** Task management: answer normally, never, or with SRP_TSK_MGMT_FAILED. */
  tmBehavior: 'normal' | 'ignore' | 'fail' = 'normal';
  /** Called for every SRP_CMD before the LUN sees it. */
  commandHook: ((lun: bigint, cdb: Buffer) => CommandHookResult) | undefined;

  readonly stats: SrpTestTargetStats = {
    logins: 0,
    loginRejects: 0,
    commands: 0,
    tasks: 0,
    tmAborted: 0,
    creditViolations: 0,
    immediateDataCommands: 0,
    indirectCommands: 0,
    credRsps: 0,
    aerRsps: 0,
    iLogouts: 0,
    malformed: 0,
    maxOutstanding: 0,
  };
  readonly channels: SrpTargetChannel[] = [];
  private readonly log: SrpLogger | undefined;
  /** reused by every channel's commands and responses (the target runs on one thread) */
  private readonly cmdReader = new SrpCmdReader();
  private readonly rspFields: SrpRspFields = {
    solNot: 0,
    reqLimDelta: 0,
    tagHi: 0,
    tagLo: 0,
    flags: 0,
    status: 0,
    dataOutResCnt: 0,
    dataInResCnt: 0,
    responseData: undefined,
    sense: undefined,
  };
  /** LUNs and initiator addresses by their 64-bit value as a Number */
  private readonly lunCache = new Map<number, bigint>();
  /** the last command's LUN (halves and value): the next one mostly has the same */
  private lastLunHi = -1;
  private lastLunLo = -1;
  private lastLun = 0n;
  private readonly vaCache = new Map<number, bigint>();

  constructor(opts: SrpTestTargetOptions) {
    this.luns = opts.luns instanceof Map ? opts.luns : new Map(opts.luns);
    this.reqLim = opts.reqLim ?? 32;
    this.maxItIuLen = opts.maxItIuLen ?? 8260;
    this.maxTiIuLen = opts.maxTiIuLen ?? 1024;
    this.immediateData = opts.immediateData ?? true;
    this.bufFmt = opts.bufFmt ?? SRP_BUF_FORMAT_DIRECT | SRP_BUF_FORMAT_INDIRECT;
    this.multichannel = opts.multichannel ?? true;
    this.maxChannels = opts.maxChannels ?? 4;
    this.withholdCredits = opts.withholdCredits ?? false;
    this.log = opts.logger;
  }

  /** A fresh loopback pair whose target end this target serves (one per login / reconnect). */
  newChannel(opts: LoopbackOptions = {}): LoopbackPair {
    const pair = createLoopbackPair(opts);
    this.accept(pair.target);
    return pair;
  }

  /** Listens on the target end of a loopback pair: answers its login, then serves the channel. */
  accept(end: LoopbackTargetEnd): void {
    end.onConnect((req) => this.onLogin(end, req));
  }

  /* ------------------------------------------------------------------ login */

  private reject(reason: number): ConnectAnswer {
    this.stats.loginRejects++;
    return { reject: encodeLoginRej({ reason, tag: 0n, bufFmt: this.bufFmt }) };
  }

  private onLogin(end: TargetChannelTransport, raw: Buffer): ConnectAnswer {
    let req: SrpLoginReq;
    try {
      if (raw.length >= SRP_LOGIN_REQ_LEN && raw[0] === SRP_LOGIN_REQ) req = decodeLoginReq(raw);
      else if (raw.length >= SRP_LOGIN_REQ_RDMA_LEN && raw.length < SRP_LOGIN_REQ_LEN) req = decodeLoginReqRdma(raw);
      else return this.reject(SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL);
    } catch {
      return this.reject(SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL);
    }
    if (this.rejectLogin !== undefined) return this.reject(this.rejectLogin);
    this.lastInitiatorPortId = req.initiatorPortId.toString('hex');
    // LIO ib_srpt: no ACL for this initiator port id -> SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED
    if (this.acls && !this.acls.has(this.lastInitiatorPortId)) return this.reject(SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED);
    if (req.reqItIuLen > this.maxItIuLen || req.reqItIuLen < 64)
      return this.reject(SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE);
    if (!(req.reqBufFmt & this.bufFmt)) return this.reject(SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT);
    const same = this.channels.filter((c) => c.open && c.initiatorPortId === req.initiatorPortId.toString('hex'));
    let rspFlags: number = SRP_LOGIN_RSP_MULTICHAN_NO_CHAN;
    if ((req.reqFlags & SRP_MTCH_ACTION) === SRP_MULTICHAN_MULTI) {
      if (!this.multichannel) return this.reject(SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED);
      if (same.length >= this.maxChannels) return this.reject(SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED);
      if (same.length) rspFlags = SRP_LOGIN_RSP_MULTICHAN_MAINTAINED;
    } else if (same.length) {
      // SINGLE: the new channel replaces every existing channel of this initiator port
      for (const c of same) {
        c.send(encodeTLogout({ solNot: 0, reason: SRP_T_LOGOUT_MULTICHANNEL_ACTION, tag: c.tag() }));
        this.closeChannel(c);
      }
      rspFlags = SRP_LOGIN_RSP_MULTICHAN_TERMINATED;
    }
    let immOffset = 0;
    if (
      this.immediateData &&
      req.reqFlags & SRP_IMMED_REQUESTED &&
      req.immDataOffset >= SRP_CMD_LEN &&
      req.immDataOffset <= SRP_MAX_IMM_DATA_OFFSET
    ) {
      immOffset = req.immDataOffset;
      rspFlags |= SRP_LOGIN_RSP_IMMED_SUPP;
    }
    const ch = new SrpTargetChannel(
      end,
      { ...req, initiatorPortId: Buffer.from(req.initiatorPortId), targetPortId: Buffer.from(req.targetPortId) },
      immOffset,
      this.maxTiIuLen,
      this.reqLim,
    );
    this.channels.push(ch);
    this.stats.logins++;
    end.on('iu', (iu) => this.onIu(ch, iu));
    end.on('disconnect', () => this.forget(ch));
    return {
      accept: encodeLoginRsp({
        reqLimDelta: this.reqLim,
        tag: req.tag,
        maxItIuLen: req.reqItIuLen,
        maxTiIuLen: this.maxTiIuLen,
        bufFmt: this.bufFmt,
        rspFlags,
      }),
    };
  }

  private forget(ch: SrpTargetChannel): void {
    ch.open = false;
    for (const t of ch.tasks.values()) t.aborted = true;
    ch.tasks.clear();
    const i = this.channels.indexOf(ch);
    if (i >= 0) this.channels.splice(i, 1);
  }

  private closeChannel(ch: SrpTargetChannel): void {
    ch.end.close();
    this.forget(ch);
  }

  /* ------------------------------------------------------------- receiving */

  /** The receive buffer is the transport's again once this returns: nothing keeps a view of it. */
  private onIu(ch: SrpTargetChannel, iu: Buffer): void {
    if (!ch.open || this.blackHole) return;
    try {
      switch (iu[0]) {
        case SRP_CMD:
          return this.onCmd(ch, iu);
        case SRP_TSK_MGMT: {
          const m = decodeTskMgmt(iu);
          if (!this.takeCredit(ch)) return;
          return this.onTm(ch, m.tag, m.lun, m.func, m.taskTag);
        }
        case SRP_I_LOGOUT:
          this.stats.iLogouts++;
          this.closeChannel(ch);
          return;
        case SRP_CRED_RSP:
          this.stats.credRsps++;
          return;
        case SRP_AER_RSP:
          this.stats.aerRsps++;
          return;
        default:
          this.stats.malformed++;
          this.log?.warn({ opcode: nameOfSrpOpcode(iu[0] ?? -1) }, 'srp-target: unexpected IU');
      }
    } catch (err) {
      if (!(err instanceof SrpDecodeError)) throw err;
      this.stats.malformed++;
      this.log?.warn({ err: err.message }, 'srp-target: malformed IU');
    }
  }

  /** Consumes one of the initiator's credits; an IU beyond the window is a protocol violation. */
  private takeCredit(ch: SrpTargetChannel): boolean {
    if (ch.initiatorCredits <= 0) {
      this.stats.creditViolations++;
      return false;
    }
    ch.initiatorCredits--;
    return true;
  }

  /** Credits to return with the next response (the request's own plus any freed ones). */
  private delta(ch: SrpTargetChannel): number {
    if (this.withholdCredits) {
      ch.pendingDelta++;
      return 0;
    }
    const d = 1 + ch.pendingDelta;
    ch.pendingDelta = 0;
    ch.initiatorCredits += d;
    return d;
  }

  /** Sends an SRP_RSP encoded in the channel's response buffer (the send copies it). */
  private sendRsp(
    ch: SrpTargetChannel,
    tagHi: number,
    tagLo: number,
    status: number,
    opts: {
      sense?: Buffer | undefined;
      responseData?: Buffer;
      flags?: number;
      dataInResCnt?: number;
    } = {},
  ): void {
    this.sendRspFields(
      ch,
      tagHi,
      tagLo,
      status,
      opts.sense,
      opts.responseData,
      opts.flags ?? 0,
      opts.dataInResCnt ?? 0,
    );
  }

  /** sendRsp() with its options as arguments (a command's response: no options object). */
  private sendRspFields(
    ch: SrpTargetChannel,
    tagHi: number,
    tagLo: number,
    status: number,
    sense: Buffer | undefined,
    responseData: Buffer | undefined,
    flags: number,
    dataInResCnt: number,
  ): void {
    const respLen = responseData?.length ?? 0;
    if (sense && SRP_RSP_LEN + respLen + sense.length > ch.maxTiIuLen) {
      sense = sense.subarray(0, ch.maxTiIuLen - SRP_RSP_LEN - respLen);
    }
    const f = this.rspFields;
    f.reqLimDelta = this.delta(ch);
    f.tagHi = tagHi;
    f.tagLo = tagLo;
    f.flags = flags;
    f.status = status;
    f.dataInResCnt = dataInResCnt;
    f.responseData = responseData;
    f.sense = sense;
    const len = encodeRspInPlace(ch.rspBuf, f);
    f.responseData = undefined;
    f.sense = undefined;
    if (ch.rspView.length !== len) ch.rspView = ch.rspBuf.subarray(0, len);
    ch.send(ch.rspView);
  }

  /** A LUN or an address from its halves, as the bigint the maps and transports use (cached). */
  private bigOf(cache: Map<number, bigint>, hi: number, lo: number): bigint {
    if (hi >= HI_LIMIT) return bigOf(hi, lo);
    const k = hi * TWO_32 + lo;
    let v = cache.get(k);
    if (v === undefined) {
      if (cache.size >= 4096) cache.clear();
      v = bigOf(hi, lo);
      cache.set(k, v);
    }
    return v;
  }

  /**
   * SRP_CMD, read in place. What the command needs later is copied into its task record; a
   * command with immediate data or no data-out runs at once, one that needs RDMA READ (or an
   * external descriptor table) once that is done.
   */
  private onCmd(ch: SrpTargetChannel, iu: Buffer): void {
    const r = this.cmdReader.read(iu, ch.codec);
    this.stats.commands++;
    if (!this.takeCredit(ch)) {
      // answered (BUSY) so the initiator is not left waiting; tests assert the counter stays 0
      this.sendRsp(ch, r.tagHi, r.tagLo, BUSY);
      return;
    }
    const task = ch.takeTask();
    task.tagHi = r.tagHi;
    task.tagLo = r.tagLo;
    if (r.lunHi !== this.lastLunHi || r.lunLo !== this.lastLunLo) {
      this.lastLun = this.bigOf(this.lunCache, r.lunHi, r.lunLo);
      this.lastLunHi = r.lunHi;
      this.lastLunLo = r.lunLo;
    }
    task.lun = this.lastLun;
    task.setCdb(iu, r.cdbOffset, r.cdbLen);
    if (ch.tasks.size + 1 > this.stats.maxOutstanding) this.stats.maxOutstanding = ch.tasks.size + 1;

    // indirect descriptors: decodeCmd gives them (values, not views of the IU)
    const m =
      r.outFmt === SRP_DATA_DESC_INDIRECT || r.inFmt === SRP_DATA_DESC_INDIRECT
        ? decodeCmd(iu, 0, undefined, ch.codec)
        : undefined;
    let fetchOut: SrpDataDesc | undefined;
    let fetchInTable: SrpDirectBuf | undefined;
    if (r.outFmt === SRP_DATA_DESC_DIRECT) {
      const d = r.out;
      fetchOut = { format: 'direct', buf: { va: this.bigOf(this.vaCache, d.vaHi, d.vaLo), key: d.key, len: d.len } };
    } else if (r.outFmt === SRP_DATA_DESC_INDIRECT) {
      this.stats.indirectCommands++;
      fetchOut = m!.dataOut;
    }
    if (r.inFmt === SRP_DATA_DESC_DIRECT) {
      const d = task.direct;
      d.va = this.bigOf(this.vaCache, r.in.vaHi, r.in.vaLo);
      d.key = r.in.key;
      d.len = r.in.len;
      task.inDescs = task.directList;
      task.allocationLength = d.len;
    } else if (r.inFmt === SRP_DATA_DESC_INDIRECT) {
      this.stats.indirectCommands++;
      const d = m!.dataIn as Extract<SrpDataDesc, { format: 'indirect' }>;
      if (d.table.len !== d.descs.length * 16)
        fetchInTable = d.table; // external table: in initiator memory
      else this.setInDescs(task, d.descs);
    } else {
      task.inDescs = NO_DESCS;
      task.allocationLength = 0;
    }
    if (r.outFmt === SRP_DATA_DESC_IMM) {
      this.stats.immediateDataCommands++;
      if (fetchInTable === undefined) {
        // the command runs before this returns: a view of the receive buffer, which run() copies
        // for a LUN that may read dataOut after execute() returns
        task.dataOut = iu.subarray(r.immOffset, r.immOffset + r.immLen);
        task.dataOutInIu = true;
      } else {
        iu.copy(task.outSpace(r.immLen), 0, r.immOffset, r.immOffset + r.immLen);
      }
    }
    if (fetchOut || fetchInTable) {
      this.pend(ch, task);
      this.fetchThenRun(ch, task, fetchOut, fetchInTable).catch((err: unknown) => {
        // RDMA failed: the channel is gone (remote access error or disconnect); nothing to answer
        this.log?.warn({ err: String(err) }, 'srp-target: command failed in transport');
        if (ch.tasks.get(task.key) === task) ch.tasks.delete(task.key);
        ch.releaseTask(task);
      });
      return;
    }
    this.run(ch, task);
  }

  /** The command waits: task management and disconnects can reach it now (Task.pending). */
  private pend(ch: SrpTargetChannel, task: Task): void {
    if (task.pending) return;
    task.pending = true;
    task.key = keyOf(task.tagHi, task.tagLo); // only a task that waits needs its key
    ch.tasks.set(task.key, task);
  }

  private setInDescs(task: Task, descs: readonly SrpDirectBuf[]): void {
    task.inDescs = descs;
    let n = 0;
    for (const d of descs) n += d.len;
    task.allocationLength = n;
  }

  /** Data-out by RDMA READ (and an external data-in descriptor table), then the command. */
  private async fetchThenRun(
    ch: SrpTargetChannel,
    task: Task,
    out: SrpDataDesc | undefined,
    inTable: SrpDirectBuf | undefined,
  ): Promise<void> {
    if (out) {
      const descs =
        out.format === 'direct' ? [out.buf] : out.format === 'indirect' ? await this.indirectDescs(ch, out) : [];
      const parts: Buffer[] = [];
      let total = 0;
      for (const d of descs) {
        const part = await ch.end.rdmaRead(d.va, d.key, d.len);
        parts.push(part);
        total += part.length;
      }
      if (parts.length === 1) {
        task.dataOut = parts[0];
      } else if (parts.length > 1) {
        // one buffer for the LUN: the pieces copied into the task's room for data-out
        const dataOut = task.outSpace(total);
        let at = 0;
        for (const p of parts) at += p.copy(dataOut, at);
      }
    }
    if (inTable) this.setInDescs(task, await this.tableDescs(ch, inTable));
    this.run(ch, task);
  }

  /** The descriptors of an indirect descriptor: inside the IU, or the external table fetched. */
  private indirectDescs(
    ch: SrpTargetChannel,
    d: Extract<SrpDataDesc, { format: 'indirect' }>,
  ): Promise<SrpDirectBuf[]> | SrpDirectBuf[] {
    return d.table.len !== d.descs.length * 16 ? this.tableDescs(ch, d.table) : d.descs;
  }

  /** Fetches an external descriptor table from initiator memory. */
  private async tableDescs(ch: SrpTargetChannel, table: SrpDirectBuf): Promise<SrpDirectBuf[]> {
    const raw = await ch.end.rdmaRead(table.va, table.key, table.len);
    const descs: SrpDirectBuf[] = [];
    for (let i = 0; i + 16 <= raw.length; i += 16) {
      descs.push({ va: raw.readBigUInt64BE(i), key: raw.readUInt32BE(i + 8), len: raw.readUInt32BE(i + 12) });
    }
    return descs;
  }

  /** Executes the command (hook, REPORT LUNS, or the LUN), at once or when the LUN's promise settles. */
  private run(ch: SrpTargetChannel, task: Task): void {
    const hooked = this.commandHook?.(task.lun, task.cdb);
    if (hooked === 'stall') {
      this.dataOutOwn(task);
      this.pend(ch, task); // never answered (until aborted); the record is not reused
      return;
    }
    let reply: Reply | Promise<Reply>;
    if (hooked) reply = hooked;
    else if (task.cdb[0] === REPORT_LUNS) reply = { status: GOOD, dataIn: this.reportLuns() };
    else {
      const lun = this.luns.get(task.lun);
      if (!lun) reply = { status: CHECK_CONDITION, sense: senseLunNotSupported() };
      else {
        if (lun.readsDataOutOnlyDuringExecute !== true) this.dataOutOwn(task);
        try {
          reply = lun.execute(task.cdb, task.dataOut, task.allocationLength);
        } catch (err) {
          reply = this.lunThrew(err);
        }
      }
    }
    if (task.dataOutInIu) {
      // the LUN is done with it: the record keeps no view of the receive buffer
      task.dataOut = undefined;
      task.dataOutInIu = false;
    }
    if (reply instanceof Promise) {
      this.pend(ch, task);
      reply.then(
        (rep) => this.answer(ch, task, rep),
        (err: unknown) => this.answer(ch, task, this.lunThrew(err)),
      );
      return;
    }
    this.answer(ch, task, reply);
  }

  /** Data-out in the task's own buffer, not in the receive buffer (which is reused after the IU). */
  private dataOutOwn(task: Task): void {
    if (!task.dataOutInIu) return;
    const view = task.dataOut!;
    view.copy(task.outSpace(view.length), 0);
    task.dataOutInIu = false;
  }

  /** A LUN bug must not leave the initiator waiting: HARDWARE ERROR, INTERNAL TARGET FAILURE. */
  private lunThrew(err: unknown): Reply {
    this.log?.error({ err: String(err) }, 'srp-target: LUN threw');
    return { status: CHECK_CONDITION, sense: senseInternalFailure() };
  }

  /**
   * Data-in by RDMA WRITE, then SRP_RSP. The WRITEs are posted and the response follows them on
   * the channel (as ib_srpt chains them): a WRITE that fails kills the channel before the
   * response arrives. The reply's data stays unchanged until the WRITEs complete.
   */
  private answer(ch: SrpTargetChannel, task: Task, reply: Reply): void {
    if (task.aborted || !ch.open) {
      ch.releaseTask(task);
      return;
    }
    let flags = 0;
    let resid = 0;
    const allocationLength = task.allocationLength;
    if (reply.dataIn && allocationLength > 0) {
      const data = reply.dataIn;
      let off = 0;
      for (const d of task.inDescs) {
        if (off >= data.length) break;
        const n = Math.min(d.len, data.length - off);
        const piece = off === 0 && n === data.length ? data : data.subarray(off, off + n);
        if (ch.end.postRdmaWrite) ch.end.postRdmaWrite(d.va, d.key, piece, this.rdmaWriteFailed);
        else ch.end.rdmaWrite(d.va, d.key, piece).catch(this.rdmaWriteFailed);
        off += n;
      }
      if (data.length < allocationLength) {
        flags = SRP_RSP_FLAG_DIUNDER;
        resid = allocationLength - data.length;
      } else if (data.length > allocationLength) {
        flags = SRP_RSP_FLAG_DIOVER;
        resid = data.length - allocationLength;
      }
    } else if (allocationLength > 0) {
      flags = SRP_RSP_FLAG_DIUNDER;
      resid = allocationLength;
    }
    if (this.responseDelayMs > 0) {
      this.pend(ch, task);
      setTimeout(() => this.respond(ch, task, reply, flags, resid), this.responseDelayMs);
      return;
    }
    this.respond(ch, task, reply, flags, resid);
  }

  private readonly rdmaWriteFailed = (err: unknown): void => {
    // the channel is gone (remote access error or disconnect): the response is lost with it
    this.log?.warn({ err: String(err) }, 'srp-target: command failed in transport');
  };

  private respond(ch: SrpTargetChannel, task: Task, reply: Reply, flags: number, resid: number): void {
    if (!task.aborted && ch.open) {
      if (task.pending) ch.tasks.delete(task.key);
      this.sendRspFields(ch, task.tagHi, task.tagLo, reply.status, reply.sense, undefined, flags, resid);
    }
    ch.releaseTask(task);
  }

  private reportLuns(): Buffer {
    const luns = this.reportLunsNewestFirst
      ? [...this.luns.keys()].reverse()
      : [...this.luns.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    const b = Buffer.alloc(8 + 8 * luns.length);
    b.writeUInt32BE(8 * luns.length, 0);
    luns.forEach((l, i) => b.writeBigUInt64BE(l, 8 + 8 * i));
    return b;
  }

  /** Aborts tasks: no SRP_RSP will be sent for them; their credits ride on later responses. */
  private abortTasks(ch: SrpTargetChannel, pred: (t: Task) => boolean): number {
    let n = 0;
    for (const t of [...ch.tasks.values()]) {
      if (!pred(t)) continue;
      t.aborted = true;
      ch.tasks.delete(t.key);
      ch.pendingDelta++;
      n++;
    }
    this.stats.tmAborted += n;
    return n;
  }

  private onTm(ch: SrpTargetChannel, tag: bigint, lun: bigint, func: number, taskTag: bigint): void {
    this.stats.tasks++;
    if (this.tmBehavior === 'ignore') return;
    let code: number = SRP_TSK_MGMT_SUCCESS;
    if (this.tmBehavior === 'fail') code = SRP_TSK_MGMT_FAILED;
    else {
      switch (func) {
        case SRP_TSK_ABORT_TASK: {
          const key = keyOf(Number(taskTag >> 32n), Number(taskTag & 0xffffffffn));
          this.abortTasks(ch, (t) => t.key === key && t.lun === lun);
          break;
        }
        case SRP_TSK_LUN_RESET:
        case SRP_TSK_ABORT_TASK_SET:
        case SRP_TSK_CLEAR_TASK_SET:
          this.abortTasks(ch, (t) => t.lun === lun);
          break;
        default:
          code = SRP_TSK_MGMT_FUNC_NOT_SUPP;
      }
    }
    const tagHi = Number(tag >> 32n);
    const tagLo = Number(tag & 0xffffffffn);
    this.sendRsp(ch, tagHi, tagLo, GOOD, { responseData: Buffer.from([0, 0, 0, code]) });
  }

  /* ---------------------------------------------------------- target requests */

  private targets(ch?: SrpTargetChannel): SrpTargetChannel[] {
    return ch ? [ch] : this.channels.filter((c) => c.open);
  }

  /** SRP_CRED_REQ carrying every withheld credit (plus `extra`). */
  sendCredReq(extra = 0, ch?: SrpTargetChannel): void {
    for (const c of this.targets(ch)) {
      const d = c.pendingDelta + extra;
      c.pendingDelta = 0;
      c.initiatorCredits += d;
      c.send(encodeCredReq({ solNot: 0, reqLimDelta: d, tag: c.tag() }));
    }
  }

  /** SRP_AER_REQ with the given sense data (returns withheld credits too, unless withholding). */
  sendAer(lun: bigint, sense: Buffer, ch?: SrpTargetChannel): void {
    for (const c of this.targets(ch)) {
      const d = this.withholdCredits ? 0 : c.pendingDelta;
      c.pendingDelta -= d;
      c.initiatorCredits += d;
      c.send(encodeAerReq({ solNot: 0, reqLimDelta: d, tag: c.tag(), lun, sense }));
    }
  }

  /** SRP_T_LOGOUT then disconnect. */
  logout(reason: number, ch?: SrpTargetChannel): void {
    for (const c of this.targets(ch)) {
      c.send(encodeTLogout({ solNot: 0, reason, tag: c.tag() }));
      this.closeChannel(c);
    }
  }

  /** Sends arbitrary bytes as an IU (malformed IU injection). */
  sendRaw(iu: Buffer, ch?: SrpTargetChannel): void {
    for (const c of this.targets(ch)) c.send(iu);
  }

  /** Closes every channel without a logout (the initiator sees a disconnect). */
  dropChannels(): void {
    for (const c of this.targets()) this.closeChannel(c);
  }

  /** Tags of tasks the target is still working on (all channels). */
  outstandingTags(): bigint[] {
    return this.channels.flatMap((c) => [...c.tasks.values()].map((t) => bigOf(t.tagHi, t.tagLo)));
  }
}
