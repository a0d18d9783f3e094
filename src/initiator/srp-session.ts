/**
 * SRP session: one logged-in RDMA channel to an SRP target port, carrying SCSI commands.
 *
 * Implements ScsiExecutor. Follows ib_srp where it has a reason, deviates where user space can do
 * better:
 * - login negotiates max_it_iu_len / max_ti_iu_len, req_lim credits, buffer formats, the
 *   MULTI-CHANNEL action and SRP-2 immediate data (write data travels inside SRP_CMD when it fits);
 * - credits: SRP_CMD and SRP_TSK_MGMT consume one, every SRP_RSP / SRP_CRED_REQ / SRP_AER_REQ
 *   returns req_lim_delta; commands keep SRP_TSK_MGMT_SQ_SIZE credits in reserve so an ABORT TASK
 *   can always be sent; commands beyond the credits wait in a FIFO;
 * - command slots, like ib_srp's per-tag srp_request: one per command the session may have
 *   outstanding (queueSize), each with its IU buffer and its own data buffer registered once (at
 *   login, or when first needed) and reused, so the steady-state data path registers nothing and
 *   allocates no buffers. The target RDMA-writes data-in into the slot's buffer and it is copied
 *   once into the caller's; data-out is copied into it (or travels as immediate data). A transfer
 *   larger than a slot's buffer, or one in both directions, registers memory of its own for that
 *   command (counted). Each slot is its own memory region, so a target is only handed the memory
 *   of a command it was given;
 * - tags: slot index + generation × slots (a Number below 2^52; task management tags above it),
 *   so a late response for an earlier command of a slot can never be taken for the current one
 *   (ib_srp reuses blk-mq tags and relies on claim/ordering);
 * - command timeouts are checked by one sweep per session (no timer per command); a command that
 *   times out is aborted with ABORT TASK; if the target never answers it, the slot's memory region
 *   is replaced (deregistered, registered anew under another key) before the command settles, so
 *   a target that writes late hits a remote access error instead of a later command's data;
 * - malformed IUs from the target (bad length, unknown opcode, unknown or duplicate tag) are
 *   counted and logged and change nothing else.
 */
import {
  SRP_AER_REQ,
  SRP_BUF_FORMAT_DIRECT,
  SRP_BUF_FORMAT_INDIRECT,
  SRP_CMD_LEN,
  SRP_CMD_SIMPLE_Q,
  SRP_CRED_REQ,
  SRP_DATA_DESC_DIRECT,
  SRP_DATA_DESC_IMM,
  SRP_NO_DATA_DESC,
  SRP_DEFAULT_CMD_SQ_SIZE,
  SRP_DEF_SG_TABLESIZE,
  SRP_DIRECT_BUF_LEN,
  SRP_IMMED_REQUESTED,
  SRP_IMM_DATA_OFFSET,
  SRP_INDIRECT_BUF_LEN,
  SRP_LOGIN_REJ,
  SRP_LOGIN_RSP,
  SRP_LOGIN_RSP_IMMED_SUPP,
  SRP_MAX_ADD_CDB_LEN,
  SRP_MULTICHAN_MULTI,
  SRP_MULTICHAN_SINGLE,
  SRP_RSP,
  SRP_RSP_FLAG_DIOVER,
  SRP_RSP_FLAG_DIUNDER,
  SRP_RSP_FLAG_DOOVER,
  SRP_RSP_FLAG_DOUNDER,
  SRP_TSK_ABORT_TASK,
  SRP_TSK_LUN_RESET,
  SRP_TSK_MGMT_SQ_SIZE,
  SRP_TSK_MGMT_SUCCESS,
  SRP_T_LOGOUT,
  SRP_ABORT_TIMEOUT_MS,
  nameOfSrpLoginRejReason,
  nameOfSrpMultichanResult,
  nameOfSrpOpcode,
  nameOfSrpTLogoutReason,
  nameOfSrpTskMgmtFunc,
  nameOfSrpTskMgmtStatus,
} from './srp-constants.js';
import {
  SrpDecodeError,
  SrpRspReader,
  cmdInPlaceLength,
  cmdLength,
  decodeAerReq,
  decodeCredReq,
  decodeLoginRej,
  decodeLoginRsp,
  decodeTLogout,
  encodeAerRsp,
  encodeCmd,
  encodeCmdInPlace,
  encodeCredRsp,
  encodeILogout,
  encodeLoginReq,
  encodeLoginReqRdma,
  encodeTskMgmt,
  type SrpCmd,
  type SrpCmdFields,
  type SrpDataDesc,
  type SrpDirectBuf,
  type SrpLoginReq,
} from './srp-iu.js';
import { TransportError, type ScsiCommand, type ScsiExecutor, type ScsiResult } from './scsi-executor.js';
import { explainLoginReject } from './login-reject.js';
import {
  Emitter,
  type ChannelTransport,
  type ConnectOptions,
  type LoginContext,
  type MemoryRegion,
} from './transport.js';

/** pino-compatible subset. */
export interface SrpLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}
const silentLogger: SrpLogger = { debug() {}, info() {}, warn() {}, error() {} };

/** Timer source, injectable for tests. */
export interface SrpTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}
const realTimers: SrpTimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** How long a login waits for the target's answer (CM REQ -> REP/REJ) unless told otherwise. */
export const DEFAULT_LOGIN_TIMEOUT_MS = 5000;

export interface SrpSessionOptions {
  /** 16 bytes: initiator port identifier (ib_srp: initiator_ext || port GUID). */
  initiatorPortId: Buffer;
  /** 16 bytes: target port identifier (id_ext || ioc_guid). */
  targetPortId: Buffer;
  /** MULTI-CHANNEL action: 'single' terminates other channels of this I_T nexus (default). */
  multichannel?: 'single' | 'multi';
  /** Request SRP-2 immediate data (default true). */
  immediateData?: boolean;
  /** Largest write sent inline when immediate data is granted (ib_srp max_imm_data default 8 KiB). */
  maxImmData?: number;
  /** Descriptors an SRP_CMD may carry (ib_srp cmd_sg_entries, default 12). */
  cmdSgEntries?: number;
  /** Overrides the requested max_it_iu_len. */
  maxItIuLen?: number;
  /** Caps the requested max_it_iu_len (ib_srp max_it_iu_size; 0 or absent: no cap). */
  maxItIuSize?: number;
  /** Commands outstanding at most (ib_srp queue_size minus reserves, default 62): the number of command slots. */
  queueSize?: number;
  /**
   * Bytes of registered memory per command slot (default 128 KiB, capped by the transport's
   * maxRegionSize; 0: none). Transfers up to this size use the slot's buffer, registered once;
   * larger ones grow the slot's buffer (below). Slots the initial credits can keep busy are set up
   * at login, the others when first needed.
   */
  slotDataBytes?: number;
  /**
   * Largest registered buffer a command slot grows to (default 1 MiB, capped by maxRegionSize): a
   * transfer above slotDataBytes and up to this replaces the slot's buffer with one of the next
   * power of two, registered once and kept, so large I/O in steady state registers nothing.
   * Larger transfers register memory per command. Bound: queueSize × this per session.
   */
  maxSlotDataBytes?: number;
  /** Login (CM REQ -> REP/REJ) timeout, default DEFAULT_LOGIN_TIMEOUT_MS (5000 ms). */
  loginTimeoutMs?: number;
  /**
   * Optional, at most loginTimeoutMs: how long the login waits for the target's answer once its
   * request is sent (ConnectOptions.answerTimeoutMs). A reconnect attempt sets it (SrpPort).
   */
  loginAnswerTimeoutMs?: number;
  /** Timeout of commands that do not set their own; 0 disables (default 30000 ms). */
  commandTimeoutMs?: number;
  /** How long a task management function may take (default SRP_ABORT_TIMEOUT_MS). */
  tmTimeoutMs?: number;
  /** How long close() lets outstanding commands finish before failing them (default 5000 ms). */
  closeTimeoutMs?: number;
  logger?: SrpLogger;
  timers?: SrpTimers;
}

/** What login settled. */
export interface SrpLoginResult {
  loginForm: ChannelTransport['loginForm'];
  requestedItIuLen: number;
  /** largest IU we may send (min of ours and the target's) */
  maxItIuLen: number;
  /** largest IU the target may send */
  maxTiIuLen: number;
  initialReqLim: number;
  /** target's supported buffer formats (SRP_BUF_FORMAT_*) */
  bufFmt: number;
  multichanResult: string;
  immediateData: boolean;
  immDataOffset: number;
}

/** Counters for status output and tests. Snapshot via SrpSession.counters. */
export interface SrpSessionCounters {
  commandsSubmitted: number;
  commandsSent: number;
  commandsCompleted: number;
  commandsFailed: number;
  immediateDataCommands: number;
  indirectCommands: number;
  bytesOut: number;
  bytesIn: number;
  /** credits currently held (req_lim) */
  reqLim: number;
  /** sum of all req_lim_delta received (login included) */
  creditsGranted: number;
  /** times the queue stalled because credits ran out (ib_srp zero_req_lim) */
  zeroReqLim: number;
  inFlight: number;
  queued: number;
  commandTimeouts: number;
  abortsSent: number;
  abortsSucceeded: number;
  abortsFailed: number;
  lunResets: number;
  tmTimeouts: number;
  credReqs: number;
  aerReqs: number;
  malformedIus: number;
  unknownOpcodes: number;
  unknownTags: number;
  lateResponses: number;
  /**
   * Memory registrations (transport.registerBuffer) made: the command slots' (at login, when a
   * slot is first needed, after an abandoned command) and per-command ones. Constant in steady
   * state.
   */
  memoryRegistrations: number;
  /** Registrations the transport refused (the slot concerned registers per command from then on). */
  memoryRegistrationFailures: number;
  /** Commands that registered memory of their own (larger than a slot, both directions, no slot region). */
  perCommandRegistrations: number;
  /** Command slots whose data buffer is registered now (regions the session holds between commands). */
  slotRegions: number;
  /** Slot buffers replaced by a larger one for a large transfer (maxSlotDataBytes); each registered once. */
  slotGrowths: number;
}

export interface SrpSessionEvents {
  /** SRP_AER_REQ: an asynchronous event (sense copied). */
  aer: [ev: { lun: bigint; sense: Buffer }];
  /** SRP_T_LOGOUT received; the session is closed afterwards. */
  logout: [ev: { reason: number; name: string }];
  /** The channel is gone; every outstanding command has been failed. */
  disconnect: [reason: TransportError];
  error: [err: Error];
}

export type SrpSessionState = 'logging-in' | 'live' | 'closing' | 'closed' | 'disconnected';

/**
 * The target refused the login (SRP_LOGIN_REJ); `reasonName` is the srp.h name. The message explains
 * it for an operator (login-reject.ts): for LIO's "no ACL" answer it names the initiator port id and
 * source address the target saw, and the ACL to add.
 */
export class SrpLoginRejectedError extends Error {
  readonly reasonName: string;
  constructor(
    readonly reason: number,
    readonly bufFmt: number,
    /** what the target saw of the login, when known */
    readonly context?: LoginContext,
  ) {
    super(explainLoginReject(reason, context));
    this.name = 'SrpLoginRejectedError';
    this.reasonName = nameOfSrpLoginRejReason(reason);
  }
}

/** A task management function did not complete with SRP_TSK_MGMT_SUCCESS. */
export class SrpTaskManagementError extends Error {
  constructor(
    readonly func: number,
    readonly code: number | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SrpTaskManagementError';
  }
}

interface PendingCmd {
  /** tag while sent (0 before) */
  tag: number;
  cmd: ScsiCommand;
  /** cmd.dataInLength */
  inLen: number;
  resolve: (r: ScsiResult) => void;
  reject: (e: Error) => void;
  state: 'queued' | 'sent' | 'aborting' | 'done';
  /** the slot it occupies from sending until its response (or until given up) */
  slot: CmdSlot | undefined;
  /** per-command registrations (transfers a slot cannot carry) */
  regions: MemoryRegion[] | undefined;
  /** per-command registrations: where data-in lands (the caller's buffer or a zeroed one) */
  dataInBuf: Buffer | undefined;
  timeoutMs: number;
  /** when the command times out (SrpSession.clock milliseconds; Infinity: never) */
  deadline: number;
}
interface PendingTm {
  tag: number;
  func: number;
  lun: bigint;
  taskTag: number;
  timeoutMs: number;
  resolve: (code: number) => void;
  reject: (e: Error) => void;
  state: 'queued' | 'sent' | 'done';
  timer: unknown;
}

/**
 * One command slot (ib_srp's struct srp_request): the IU buffer an SRP_CMD is encoded in and a
 * data buffer registered as its own memory region, both reused from command to command. The slot
 * of tag T is slots[T % slots.length]; its generation (T / slots.length, integer part) tells the
 * current command of the slot from an earlier one.
 */
class CmdSlot {
  /** generation of the current (or last) command of this slot */
  gen = 0;
  /** tag of the command occupying the slot, -1 while free */
  tag = -1;
  req: PendingCmd | undefined = undefined;
  /** max_it_iu_len bytes */
  readonly iu: Buffer;
  /** the view of iu last handed to send(), reused while the IU length repeats */
  view: Buffer;
  /** slotDataBytes bytes, or more once grown (undefined when slots carry no data) */
  data: Buffer | undefined;
  mr: MemoryRegion | undefined = undefined;
  /** mr.va as 32-bit halves, for the descriptor */
  vaHi = 0;
  vaLo = 0;
  /** the current command handed the target the data region (a descriptor to it) */
  handedOut = false;
  /**
   * Bytes at the start of data that may hold an earlier command's data: zeroed before the slot
   * carries data-in, so a target that transfers less than it says hands the caller zeroes.
   */
  dirty = 0;
  /** the view of data last copied out, reused while the transfer length repeats */
  private dataView: Buffer | undefined = undefined;
  constructor(
    readonly index: number,
    iuLen: number,
    data: Buffer | undefined,
  ) {
    this.iu = Buffer.alloc(iuLen);
    this.view = this.iu.subarray(0, 0);
    this.data = data;
  }
  /** A new, larger data buffer (not yet registered); nothing of the old one is kept. */
  replaceData(data: Buffer): void {
    this.data = data;
    this.dataView = undefined;
    this.dirty = 0;
  }
  /** data.subarray(0, len), cached: copying out of a whole view costs no view per command. */
  dataIn(len: number): Buffer {
    if (this.dataView === undefined || this.dataView.length !== len) this.dataView = this.data!.subarray(0, len);
    return this.dataView;
  }
}

/** The two 32-bit halves of a SAM LUN, cached per LUN so no bigint arithmetic runs per command. */
interface LunParts {
  hi: number;
  lo: number;
}

/** Placeholder CDB of the reusable SrpCmdFields between commands. */
const NO_CDB = Buffer.alloc(0);
/** Abandoned tags remembered so a late response is recognised (bounded). */
const ABANDONED_MEMORY = 1024;
/** Command tags are below this; task management and SRP_I_LOGOUT tags count up from it. */
const TM_TAG_BASE = 2 ** 52;
const TWO_32 = 2 ** 32;
/** A tag's upper 32 bits at or above this make it 2^53 or more: none of ours. */
const TAG_HI_LIMIT = 2 ** 21;
/** Default registered memory per command slot. */
export const DEFAULT_SLOT_DATA_BYTES = 128 * 1024;
/** Default size a slot's registered buffer may grow to for a large transfer. */
export const DEFAULT_MAX_SLOT_DATA_BYTES = 1024 * 1024;

/** Sweep period while commands with this timeout are pending: an eighth of it, 1 ms .. 1 s. */
function sweepPeriodFor(timeoutMs: number): number {
  return Math.min(1000, Math.max(1, Math.floor(timeoutMs / 8)));
}

/** Promise executor that hands out resolve/reject without a closure per command. */
let capturedResolve: ((r: ScsiResult) => void) | undefined;
let capturedReject: ((e: Error) => void) | undefined;
function capture(resolve: (r: ScsiResult) => void, reject: (e: Error) => void): void {
  capturedResolve = resolve;
  capturedReject = reject;
}

export class SrpSession extends Emitter<SrpSessionEvents> implements ScsiExecutor {
  private stateValue: SrpSessionState = 'logging-in';
  private readonly log: SrpLogger;
  private readonly timers: SrpTimers;
  private readonly opts: Required<
    Omit<SrpSessionOptions, 'logger' | 'timers' | 'maxItIuLen' | 'maxItIuSize' | 'loginAnswerTimeoutMs'>
  > & {
    loginAnswerTimeoutMs?: number;
    maxItIuSize?: number;
    maxItIuLen?: number;
  };
  private login!: SrpLoginResult;
  private reqLim = 0;
  /** next task management / SRP_I_LOGOUT tag */
  private nextTmTag = TM_TAG_BASE;
  /** command slots by index (created at login or when first needed) */
  private slots: (CmdSlot | undefined)[] = [];
  /** indices of free slots, a stack: the most recently used slot is reused first */
  private readonly freeSlots: number[] = [];
  /** data bytes per slot (0: slots carry no data) */
  private slotBytes = 0;
  /** what a slot's buffer may grow to (maxSlotDataBytes capped by the transport) */
  private maxSlotBytes = 0;
  private slotRegistrationWarned = false;
  private readonly fields: SrpCmdFields = {
    tagHi: 0,
    tagLo: 0,
    lunHi: 0,
    lunLo: 0,
    taskAttr: SRP_CMD_SIMPLE_Q,
    cdb: NO_CDB,
    outFmt: SRP_NO_DATA_DESC,
    out: { vaHi: 0, vaLo: 0, key: 0, len: 0 },
    immData: undefined,
    inFmt: SRP_NO_DATA_DESC,
    in: { vaHi: 0, vaLo: 0, key: 0, len: 0 },
  };
  private readonly rsp = new SrpRspReader();
  private readonly lunCache = new Map<bigint, LunParts>();
  /** the LUN lunParts() was last asked for, and its parts */
  private lastLun: bigint | undefined = undefined;
  private lastLunParts: LunParts | undefined = undefined;
  private readonly lunScratch = Buffer.alloc(8);
  /** the command timeout sweep: armed while commands with a deadline are pending */
  private sweepTimer: unknown = undefined;
  private sweepPeriod = Infinity;
  /** Date.now() when the sweep was last armed: deadlines are clock + timeout + sweepPeriod */
  private clock = 0;
  private readonly sweepFn = (): void => this.sweep();
  private readonly waitQueue: PendingCmd[] = [];
  private readonly tmQueue: PendingTm[] = [];
  private tmActive: PendingTm | undefined;
  private inFlight = 0;
  private stalled = false;
  private readonly abandoned = new Set<number>();
  private readonly early: Buffer[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private readonly c: Omit<SrpSessionCounters, 'reqLim' | 'inFlight' | 'queued'> = {
    commandsSubmitted: 0,
    commandsSent: 0,
    commandsCompleted: 0,
    commandsFailed: 0,
    immediateDataCommands: 0,
    indirectCommands: 0,
    bytesOut: 0,
    bytesIn: 0,
    creditsGranted: 0,
    zeroReqLim: 0,
    commandTimeouts: 0,
    abortsSent: 0,
    abortsSucceeded: 0,
    abortsFailed: 0,
    lunResets: 0,
    tmTimeouts: 0,
    credReqs: 0,
    aerReqs: 0,
    malformedIus: 0,
    unknownOpcodes: 0,
    unknownTags: 0,
    lateResponses: 0,
    memoryRegistrations: 0,
    memoryRegistrationFailures: 0,
    perCommandRegistrations: 0,
    slotGrowths: 0,
    slotRegions: 0,
  };

  private constructor(
    private readonly transport: ChannelTransport,
    options: SrpSessionOptions,
  ) {
    super();
    this.log = options.logger ?? silentLogger;
    this.timers = options.timers ?? realTimers;
    if (options.initiatorPortId.length !== 16) throw new RangeError('initiatorPortId must be 16 bytes');
    if (options.targetPortId.length !== 16) throw new RangeError('targetPortId must be 16 bytes');
    this.opts = {
      initiatorPortId: options.initiatorPortId,
      targetPortId: options.targetPortId,
      multichannel: options.multichannel ?? 'single',
      immediateData: options.immediateData ?? true,
      maxImmData: options.maxImmData ?? 8192,
      cmdSgEntries: options.cmdSgEntries ?? SRP_DEF_SG_TABLESIZE,
      queueSize: options.queueSize ?? SRP_DEFAULT_CMD_SQ_SIZE,
      loginTimeoutMs: options.loginTimeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS,
      commandTimeoutMs: options.commandTimeoutMs ?? 30000,
      tmTimeoutMs: options.tmTimeoutMs ?? SRP_ABORT_TIMEOUT_MS,
      closeTimeoutMs: options.closeTimeoutMs ?? 5000,
      slotDataBytes: options.slotDataBytes ?? DEFAULT_SLOT_DATA_BYTES,
      maxSlotDataBytes: options.maxSlotDataBytes ?? DEFAULT_MAX_SLOT_DATA_BYTES,
      ...(options.loginAnswerTimeoutMs !== undefined ? { loginAnswerTimeoutMs: options.loginAnswerTimeoutMs } : {}),
      ...(options.maxItIuLen !== undefined ? { maxItIuLen: options.maxItIuLen } : {}),
      ...(options.maxItIuSize !== undefined ? { maxItIuSize: options.maxItIuSize } : {}),
    };
    if (this.opts.cmdSgEntries < 1 || this.opts.cmdSgEntries > 255) throw new RangeError('cmdSgEntries must be 1..255');
    if (this.opts.queueSize < 1) throw new RangeError('queueSize must be >= 1');
    if (!(this.opts.slotDataBytes >= 0)) throw new RangeError('slotDataBytes must be >= 0');
  }

  /**
   * Logs in over a fresh (idle) transport and returns a live session. Throws
   * SrpLoginRejectedError when the target answers SRP_LOGIN_REJ, TransportError when the channel
   * cannot be established, Error when the target's answer is unusable.
   */
  static async login(transport: ChannelTransport, options: SrpSessionOptions): Promise<SrpSession> {
    const s = new SrpSession(transport, options);
    await s.doLogin();
    return s;
  }

  /** ib_srp srp_max_it_iu_len(): room for a 32-byte CDB and cmd_sg_entries descriptors, or the immediate data. */
  private requestedItIuLen(): number {
    if (this.opts.maxItIuLen !== undefined) return this.opts.maxItIuLen;
    let len = SRP_CMD_LEN + SRP_MAX_ADD_CDB_LEN + SRP_INDIRECT_BUF_LEN + this.opts.cmdSgEntries * SRP_DIRECT_BUF_LEN;
    if (this.opts.immediateData) len = Math.max(len, SRP_IMM_DATA_OFFSET + this.opts.maxImmData);
    if (this.opts.maxItIuSize) len = Math.min(len, this.opts.maxItIuSize);
    return len;
  }

  private async doLogin(): Promise<void> {
    const t = this.transport;
    // listen before connecting: the target may send (e.g. SRP_CRED_REQ) right after accepting
    t.on('iu', (iu) => {
      if (this.stateValue === 'logging-in') this.early.push(Buffer.from(iu));
      else this.onIu(iu);
    });
    t.on('disconnect', (reason) => this.onDisconnect(reason));
    t.on('error', (err) => this.log.warn({ err }, 'srp: channel error'));

    const req: SrpLoginReq = {
      tag: 0n,
      reqItIuLen: this.requestedItIuLen(),
      reqBufFmt: SRP_BUF_FORMAT_DIRECT | SRP_BUF_FORMAT_INDIRECT,
      reqFlags:
        (this.opts.multichannel === 'multi' ? SRP_MULTICHAN_MULTI : SRP_MULTICHAN_SINGLE) |
        (this.opts.immediateData ? SRP_IMMED_REQUESTED : 0),
      immDataOffset: this.opts.immediateData ? SRP_IMM_DATA_OFFSET : 0,
      initiatorPortId: this.opts.initiatorPortId,
      targetPortId: this.opts.targetPortId,
    };
    const iu = t.loginForm === 'rdma-cm' ? encodeLoginReqRdma(req) : encodeLoginReq(req);
    const connectOpts: ConnectOptions = { timeoutMs: this.opts.loginTimeoutMs };
    if (this.opts.loginAnswerTimeoutMs !== undefined) connectOpts.answerTimeoutMs = this.opts.loginAnswerTimeoutMs;
    const answer = await t.connect(iu, connectOpts).catch((err: unknown) => {
      this.stateValue = 'closed';
      throw err;
    });
    const fail = (err: Error): never => {
      this.stateValue = 'closed';
      t.close();
      throw err;
    };
    if (answer.length === 0) fail(new Error('SRP login: empty answer from target'));
    if (answer[0] === SRP_LOGIN_REJ) {
      let rej;
      try {
        rej = decodeLoginRej(answer);
      } catch (e) {
        fail(new Error(`SRP login rejected with a malformed SRP_LOGIN_REJ: ${(e as Error).message}`));
      }
      const ctx = t.loginContext?.() ?? { initiatorPortId: req.initiatorPortId, source: undefined };
      const err = new SrpLoginRejectedError(rej!.reason, rej!.bufFmt, ctx);
      this.log.warn({ reason: err.reasonName, err: err.message }, 'srp: login rejected');
      fail(err);
    }
    if (answer[0] !== SRP_LOGIN_RSP) fail(new Error(`SRP login: unexpected answer ${nameOfSrpOpcode(answer[0]!)}`));
    let rsp;
    try {
      rsp = decodeLoginRsp(answer);
    } catch (e) {
      return fail(new Error(`SRP login: malformed SRP_LOGIN_RSP: ${(e as Error).message}`));
    }
    const maxItIuLen = Math.min(req.reqItIuLen, rsp.maxItIuLen);
    if (maxItIuLen < SRP_CMD_LEN + SRP_DIRECT_BUF_LEN) {
      fail(new Error(`SRP login: target max_it_iu_len ${rsp.maxItIuLen} cannot carry an SRP_CMD with a descriptor`));
    }
    if (!(rsp.bufFmt & SRP_BUF_FORMAT_DIRECT))
      fail(
        new Error(
          `SRP login: target supports no direct data buffer descriptors (buf_fmt 0x${rsp.bufFmt.toString(16)})`,
        ),
      );
    if (rsp.maxTiIuLen < 36)
      fail(new Error(`SRP login: target max_ti_iu_len ${rsp.maxTiIuLen} is smaller than SRP_RSP`));
    const imm = this.opts.immediateData && (rsp.rspFlags & SRP_LOGIN_RSP_IMMED_SUPP) !== 0;
    this.login = {
      loginForm: t.loginForm,
      requestedItIuLen: req.reqItIuLen,
      maxItIuLen,
      maxTiIuLen: rsp.maxTiIuLen,
      initialReqLim: rsp.reqLimDelta,
      bufFmt: rsp.bufFmt,
      multichanResult: nameOfSrpMultichanResult(rsp.rspFlags),
      immediateData: imm,
      immDataOffset: imm ? SRP_IMM_DATA_OFFSET : 0,
    };
    this.reqLim = rsp.reqLimDelta;
    this.c.creditsGranted += rsp.reqLimDelta;
    if (rsp.maxItIuLen < req.reqItIuLen) {
      this.log.warn({ requested: req.reqItIuLen, granted: rsp.maxItIuLen }, 'srp: target lowered max_it_iu_len');
    }
    if (this.reqLim <= SRP_TSK_MGMT_SQ_SIZE) {
      this.log.warn({ reqLim: this.reqLim }, 'srp: target granted no credit beyond the task management reserve');
    }
    this.setupSlots();
    this.log.info({ ...this.login, slots: this.opts.queueSize, slotDataBytes: this.slotBytes }, 'srp: logged in');
    this.stateValue = 'live';
    for (const iu of this.early.splice(0)) this.onIu(iu);
  }

  get state(): SrpSessionState {
    return this.stateValue;
  }
  get loginResult(): SrpLoginResult {
    return { ...this.login };
  }
  /** How long the target took to answer this session's login, ms, if the transport measures it. */
  get loginAnswerMs(): number | undefined {
    return this.transport.loginAnswerMs;
  }

  get counters(): SrpSessionCounters {
    return { ...this.c, reqLim: this.reqLim, inFlight: this.inFlight, queued: this.waitQueue.length };
  }

  /* ---------------------------------------------------------- command slots */

  /**
   * Creates the command slots after login: queueSize tags, of which the ones the initial credits
   * can keep busy get their IU and data buffers (registered) now, the others when first needed.
   */
  private setupSlots(): void {
    const n = this.opts.queueSize;
    this.slotBytes = Math.min(this.opts.slotDataBytes, this.transport.maxRegionSize);
    this.maxSlotBytes =
      this.slotBytes > 0
        ? Math.max(this.slotBytes, Math.min(this.opts.maxSlotDataBytes, this.transport.maxRegionSize))
        : 0;
    this.slots = new Array<CmdSlot | undefined>(n).fill(undefined);
    for (let i = n - 1; i >= 0; i--) this.freeSlots.push(i);
    const now = Math.min(n, Math.max(1, this.login.initialReqLim - SRP_TSK_MGMT_SQ_SIZE));
    // one allocation for the slots set up now; each slot still registers its own region
    const slab = this.slotBytes > 0 ? Buffer.alloc(now * this.slotBytes) : undefined;
    for (let i = 0; i < now; i++) {
      this.slots[i] = this.newSlot(i, slab?.subarray(i * this.slotBytes, (i + 1) * this.slotBytes));
    }
  }

  private newSlot(index: number, data: Buffer | undefined): CmdSlot {
    const slot = new CmdSlot(index, this.login.maxItIuLen, data);
    if (data) this.registerSlot(slot);
    return slot;
  }

  /** Registers the slot's data buffer; on failure the slot's commands register per command. */
  private registerSlot(slot: CmdSlot): void {
    try {
      const mr = this.transport.registerBuffer(slot.data!);
      this.c.memoryRegistrations++;
      this.c.slotRegions++;
      slot.mr = mr;
      slot.vaHi = Number(mr.va >> 32n);
      slot.vaLo = Number(mr.va & 0xffffffffn);
    } catch (err) {
      this.c.memoryRegistrationFailures++;
      slot.mr = undefined;
      if (!this.slotRegistrationWarned) {
        this.slotRegistrationWarned = true;
        const msg = 'srp: cannot register a command slot; its commands register per command';
        this.log.warn({ err, bytes: slot.data!.length }, msg);
      }
    }
  }

  /**
   * Replaces a free slot's buffer with a registered one of the next power of two at or above need
   * (at most maxSlotBytes): registered once and kept, so the next transfers of that size register
   * nothing. If the registration fails the slot's commands register per command, as before.
   */
  private growSlot(slot: CmdSlot, need: number): void {
    const size = Math.min(this.maxSlotBytes, 2 ** Math.ceil(Math.log2(need)));
    this.deregisterSlot(slot);
    slot.replaceData(Buffer.alloc(size));
    this.c.slotGrowths++;
    this.registerSlot(slot);
  }

  private deregisterSlot(slot: CmdSlot): void {
    const mr = slot.mr;
    if (!mr) return;
    slot.mr = undefined;
    this.c.slotRegions--;
    try {
      this.transport.deregisterBuffer(mr);
    } catch (err) {
      this.log.warn({ err }, 'srp: deregister failed');
    }
  }

  /** A free slot; there is one whenever inFlight < queueSize. */
  private takeSlot(): CmdSlot {
    const i = this.freeSlots.pop()!;
    let slot = this.slots[i];
    if (!slot) {
      slot = this.newSlot(i, this.slotBytes > 0 ? Buffer.alloc(this.slotBytes) : undefined);
      this.slots[i] = slot;
    }
    return slot;
  }

  /** The target is done with the slot (it answered, or never saw the command). */
  private releaseSlot(slot: CmdSlot): void {
    if (slot.req) slot.req.slot = undefined;
    slot.req = undefined;
    slot.tag = -1;
    slot.handedOut = false;
    this.freeSlots.push(slot.index);
  }

  /**
   * The slot's command was given up without an answer: if it handed the target the slot's data
   * region, the target may still access it, so the region is replaced before anyone can reuse the
   * slot (a late RDMA then hits a remote access error, as with ib_srp's per-command registration).
   */
  private retireSlot(slot: CmdSlot): void {
    if (slot.mr && slot.handedOut) {
      this.deregisterSlot(slot);
      // a session on its way out keeps it deregistered (teardown releases every slot anyway)
      if (this.stateValue === 'live' || this.stateValue === 'closing') this.registerSlot(slot);
      slot.dirty = slot.data!.length; // whatever landed before the deregistration
    }
    this.releaseSlot(slot);
  }

  /** The 32-bit halves of a LUN (RangeError as writeBigUInt64BE for a LUN outside 64 bits). */
  private lunParts(lun: bigint): LunParts {
    // most commands go to the LUN of the one before: no map lookup for them
    if (lun === this.lastLun) return this.lastLunParts!;
    let lp = this.lunCache.get(lun);
    if (lp === undefined) {
      this.lunScratch.writeBigUInt64BE(lun);
      lp = { hi: this.lunScratch.readUInt32BE(0), lo: this.lunScratch.readUInt32BE(4) };
      if (this.lunCache.size >= 64) this.lunCache.clear();
      this.lunCache.set(lun, lp);
    }
    this.lastLun = lun;
    this.lastLunParts = lp;
    return lp;
  }

  /* ------------------------------------------------------- command timeouts */

  /** Sets p.deadline and makes sure the sweep runs often enough for it. */
  private setDeadline(p: PendingCmd): void {
    const t = p.timeoutMs;
    if (!(t > 0)) {
      p.deadline = Infinity;
      return;
    }
    const period = sweepPeriodFor(t);
    if (this.sweepTimer === undefined || period < this.sweepPeriod) this.armSweep(period);
    // clock is at most one period old while the sweep is armed: never early, at most 2 periods late
    p.deadline = this.clock + t + this.sweepPeriod;
  }

  private armSweep(period: number): void {
    if (this.sweepTimer !== undefined) this.timers.clearTimeout(this.sweepTimer);
    this.clock = Date.now();
    this.sweepPeriod = period;
    this.sweepTimer = this.timers.setTimeout(this.sweepFn, period);
  }

  private stopSweep(): void {
    if (this.sweepTimer !== undefined) this.timers.clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
    this.sweepPeriod = Infinity;
  }

  /** Times out what is past its deadline, queued or sent; re-arms while deadlines remain. */
  private sweep(): void {
    this.sweepTimer = undefined;
    this.sweepPeriod = Infinity;
    const now = Date.now();
    let expired: PendingCmd[] | undefined;
    let period = Infinity;
    const check = (p: PendingCmd): void => {
      if (p.deadline === Infinity) return;
      if (p.deadline <= now) (expired ??= []).push(p);
      else period = Math.min(period, sweepPeriodFor(p.timeoutMs));
    };
    for (const p of this.waitQueue) check(p);
    for (const slot of this.slots) {
      const p = slot?.req;
      if (p !== undefined && p.state === 'sent') check(p);
    }
    if (period !== Infinity) this.armSweep(period);
    if (expired) for (const p of expired) this.onCommandTimeout(p);
  }

  /* ------------------------------------------------------------- commands */

  execute(cmd: ScsiCommand): Promise<ScsiResult> {
    this.c.commandsSubmitted++;
    if (this.stateValue !== 'live') {
      this.c.commandsFailed++;
      const code = this.stateValue === 'disconnected' ? 'disconnected' : 'closed';
      return Promise.reject(new TransportError(`SRP session is ${this.stateValue}`, code));
    }
    const dataInLength = cmd.dataInLength ?? 0;
    if (cmd.cdb.length < 1 || cmd.cdb.length > 16 + SRP_MAX_ADD_CDB_LEN) {
      this.c.commandsFailed++;
      return Promise.reject(new RangeError(`CDB length ${cmd.cdb.length} not in 1..32`));
    }
    if (cmd.dataIn && cmd.dataIn.length < dataInLength) {
      this.c.commandsFailed++;
      return Promise.reject(
        new RangeError(`dataIn buffer of ${cmd.dataIn.length} bytes < dataInLength ${dataInLength}`),
      );
    }
    const promise = new Promise<ScsiResult>(capture);
    const p: PendingCmd = {
      tag: 0,
      cmd,
      inLen: dataInLength,
      resolve: capturedResolve!,
      reject: capturedReject!,
      state: 'queued',
      slot: undefined,
      regions: undefined,
      dataInBuf: undefined,
      timeoutMs: cmd.timeoutMs ?? this.opts.commandTimeoutMs,
      deadline: Infinity,
    };
    this.setDeadline(p);
    this.waitQueue.push(p);
    this.pump();
    return promise;
  }

  /** Sends what credits and queue depth allow: task management first (it may use the reserve). */
  private pump(): void {
    if (this.stateValue !== 'live' && this.stateValue !== 'closing') return;
    if (!this.tmActive && this.tmQueue.length && this.reqLim > 0) {
      this.sendTm(this.tmQueue.shift()!);
    }
    while (this.waitQueue.length && this.inFlight < this.opts.queueSize) {
      if (this.reqLim <= SRP_TSK_MGMT_SQ_SIZE) {
        if (!this.stalled) {
          this.stalled = true;
          this.c.zeroReqLim++;
          this.log.debug({ reqLim: this.reqLim, queued: this.waitQueue.length }, 'srp: out of credits');
        }
        return;
      }
      this.stalled = false;
      this.sendCmd(this.waitQueue.shift()!);
    }
    this.checkIdle();
  }

  private sendCmd(p: PendingCmd): void {
    const cmd = p.cmd;
    const slot = this.takeSlot();
    // the next generation of this slot; tags stay below TM_TAG_BASE (2^52 / queueSize commands per slot)
    slot.gen = (slot.gen + 1) * this.slots.length + slot.index < TM_TAG_BASE ? slot.gen + 1 : 1;
    const tag = slot.gen * this.slots.length + slot.index;
    let len: number;
    try {
      len = this.encodeCmd(p, slot, tag);
    } catch (err) {
      this.releaseSlot(slot);
      this.releaseRegions(p);
      this.failCmd(p, err instanceof Error ? err : new Error(String(err)));
      return;
    }
    slot.req = p;
    slot.tag = tag;
    p.slot = slot;
    p.tag = tag;
    p.state = 'sent';
    this.reqLim--;
    this.inFlight++;
    this.c.commandsSent++;
    this.c.bytesOut += cmd.dataOut?.length ?? 0;
    const iu = slot.view.length === len ? slot.view : (slot.view = slot.iu.subarray(0, len));
    try {
      this.transport.send(iu);
    } catch (err) {
      // the disconnect event will fail everything else; this one fails now
      this.releaseSlot(slot);
      this.inFlight--;
      this.releaseRegions(p);
      const e = err instanceof TransportError ? err : new TransportError('send failed', 'disconnected', { cause: err });
      this.failCmd(p, e);
    }
  }

  /**
   * Encodes p's SRP_CMD into the slot's IU buffer; returns its length. Data goes as immediate data
   * when granted and it fits, else through the slot's registered buffer (one direct descriptor),
   * else through memory registered for this command only (describe()).
   */
  private encodeCmd(p: PendingCmd, slot: CmdSlot, tag: number): number {
    const cmd = p.cmd;
    const L = this.login;
    const out = cmd.dataOut;
    const outLen = out?.length ?? 0;
    const inLen = p.inLen;
    const imm =
      outLen > 0 && L.immediateData && outLen <= this.opts.maxImmData && L.immDataOffset + outLen <= L.maxItIuLen;
    const outRdma = outLen > 0 && !imm;
    const need = Math.max(outRdma ? outLen : 0, inLen);
    if (need > 0 && slot.data !== undefined && need > slot.data.length && need <= this.maxSlotBytes) {
      this.growSlot(slot, need);
    }
    if ((outRdma || inLen > 0) && (slot.mr === undefined || (outRdma && inLen > 0) || need > slot.data!.length)) {
      return this.encodeWithOwnRegions(p, slot, tag);
    }
    const f = this.fields;
    const lp = this.lunParts(cmd.lun);
    f.tagHi = Math.floor(tag / TWO_32);
    f.tagLo = tag >>> 0;
    f.lunHi = lp.hi;
    f.lunLo = lp.lo;
    f.cdb = cmd.cdb;
    f.outFmt = imm ? SRP_DATA_DESC_IMM : outRdma ? SRP_DATA_DESC_DIRECT : SRP_NO_DATA_DESC;
    f.immData = imm ? out : undefined;
    f.inFmt = inLen > 0 ? SRP_DATA_DESC_DIRECT : SRP_NO_DATA_DESC;
    const len = cmdInPlaceLength(f, L.immDataOffset);
    if (len > L.maxItIuLen) {
      throw new TransportError(`SRP_CMD of ${len} bytes exceeds max_it_iu_len ${L.maxItIuLen}`, 'protocol');
    }
    slot.handedOut = outRdma || inLen > 0;
    if (outRdma) {
      // the target RDMA-reads the copy in the slot's region
      out!.copy(slot.data!, 0);
      if (outLen > slot.dirty) slot.dirty = outLen;
      const d = f.out;
      d.vaHi = slot.vaHi;
      d.vaLo = slot.vaLo;
      d.key = slot.mr!.rkey;
      d.len = outLen;
    } else if (inLen > 0) {
      // what the target does not write must read as zeroes, not as an earlier command's data
      if (slot.dirty > 0) slot.data!.fill(0, 0, Math.min(slot.dirty, inLen));
      if (inLen > slot.dirty) slot.dirty = inLen;
      const d = f.in;
      d.vaHi = slot.vaHi;
      d.vaLo = slot.vaLo;
      d.key = slot.mr!.rkey;
      d.len = inLen;
    }
    encodeCmdInPlace(slot.iu, f, L.immDataOffset);
    if (imm) this.c.immediateDataCommands++;
    f.cdb = NO_CDB; // keep no reference to the caller's buffers
    f.immData = undefined;
    return len;
  }

  /** The general encoding: memory registered for this command (direct or indirect descriptors). */
  private encodeWithOwnRegions(p: PendingCmd, slot: CmdSlot, tag: number): number {
    const cmd = p.cmd;
    p.regions = [];
    this.c.perCommandRegistrations++;
    const dataOut = this.describe(p, cmd.dataOut, 'out');
    let dataIn: SrpDataDesc = { format: 'none' };
    if (p.inLen > 0) {
      // zeroed: a target that transfers less without saying so must not expose stale memory
      p.dataInBuf = cmd.dataIn ? cmd.dataIn.subarray(0, p.inLen) : Buffer.alloc(p.inLen);
      dataIn = this.describe(p, p.dataInBuf, 'in');
    }
    const m: SrpCmd = {
      solNot: 0,
      tag: BigInt(tag),
      lun: cmd.lun,
      taskAttr: SRP_CMD_SIMPLE_Q,
      cdb: cmd.cdb,
      dataOut,
      dataIn,
    };
    const ctx = { immDataOffset: this.login.immDataOffset };
    const len = cmdLength(m, ctx);
    if (len > this.login.maxItIuLen) {
      throw new TransportError(`SRP_CMD of ${len} bytes exceeds max_it_iu_len ${this.login.maxItIuLen}`, 'protocol');
    }
    encodeCmd(m, ctx, slot.iu, 0);
    if (dataOut.format === 'imm') this.c.immediateDataCommands++;
    if (dataOut.format === 'indirect' || dataIn.format === 'indirect') this.c.indirectCommands++;
    return len;
  }

  /**
   * Builds the descriptor for one direction of a command that registers its own memory: immediate
   * data when granted and it fits, one direct descriptor when the buffer fits one registration,
   * else an indirect table of transport.maxRegionSize pieces (all descriptors inside the IU; the
   * table itself registered too).
   */
  private describe(p: PendingCmd, buf: Buffer | undefined, dir: 'out' | 'in'): SrpDataDesc {
    if (!buf || buf.length === 0) return { format: 'none' };
    const L = this.login;
    if (
      dir === 'out' &&
      L.immediateData &&
      buf.length <= this.opts.maxImmData &&
      L.immDataOffset + buf.length <= L.maxItIuLen
    ) {
      return { format: 'imm', data: buf };
    }
    const max = this.transport.maxRegionSize;
    if (buf.length <= max) {
      const mr = this.register(p, buf);
      return { format: 'direct', buf: { va: mr.va, key: mr.rkey, len: buf.length } };
    }
    const n = Math.ceil(buf.length / max);
    if (!(L.bufFmt & SRP_BUF_FORMAT_INDIRECT)) {
      throw new TransportError(
        `transfer of ${buf.length} bytes needs ${n} descriptors but the target supports no indirect descriptors`,
        'protocol',
      );
    }
    if (n > this.opts.cmdSgEntries) {
      throw new TransportError(
        `transfer of ${buf.length} bytes needs ${n} descriptors, cmd_sg_entries is ${this.opts.cmdSgEntries}`,
        'protocol',
      );
    }
    const descs: SrpDirectBuf[] = [];
    for (let off = 0; off < buf.length; off += max) {
      const piece = buf.subarray(off, Math.min(off + max, buf.length));
      const mr = this.register(p, piece);
      descs.push({ va: mr.va, key: mr.rkey, len: piece.length });
    }
    const table = Buffer.alloc(n * SRP_DIRECT_BUF_LEN);
    descs.forEach((d, i) => {
      table.writeBigUInt64BE(d.va, i * 16);
      table.writeUInt32BE(d.key, i * 16 + 8);
      table.writeUInt32BE(d.len, i * 16 + 12);
    });
    const tmr = this.register(p, table);
    return { format: 'indirect', table: { va: tmr.va, key: tmr.rkey, len: table.length }, totalLen: buf.length, descs };
  }

  private register(p: PendingCmd, buf: Buffer): MemoryRegion {
    const mr = this.transport.registerBuffer(buf);
    this.c.memoryRegistrations++;
    p.regions!.push(mr);
    return mr;
  }

  private releaseRegions(p: PendingCmd): void {
    const regions = p.regions;
    if (!regions) return;
    p.regions = undefined;
    for (const mr of regions) {
      try {
        this.transport.deregisterBuffer(mr);
      } catch (err) {
        this.log.warn({ err }, 'srp: deregister failed');
      }
    }
  }

  /** Settles a command with its result (its memory released first). */
  private completeCmd(p: PendingCmd, result: ScsiResult): void {
    if (p.state === 'done') return;
    p.state = 'done';
    this.releaseRegions(p);
    this.c.commandsCompleted++;
    p.resolve(result);
  }

  /** Settles a command with an error exactly once: its memory released first. */
  private failCmd(p: PendingCmd, err: Error): void {
    if (p.state === 'done') return;
    const wasQueued = p.state === 'queued';
    p.state = 'done';
    this.releaseRegions(p);
    if (wasQueued) {
      const i = this.waitQueue.indexOf(p);
      if (i >= 0) this.waitQueue.splice(i, 1);
    }
    this.c.commandsFailed++;
    p.reject(err);
  }

  private onCommandTimeout(p: PendingCmd): void {
    if (p.state === 'queued') {
      this.c.commandTimeouts++;
      const why = `command timed out after ${p.timeoutMs} ms before it could be sent (req_lim ${this.reqLim})`;
      this.failCmd(p, new TransportError(why, 'timeout'));
      return;
    }
    if (p.state !== 'sent') return;
    this.c.commandTimeouts++;
    p.state = 'aborting';
    this.log.warn(
      { tag: p.tag, lun: p.cmd.lun.toString(16), cdb: p.cmd.cdb.toString('hex') },
      'srp: command timed out, sending ABORT TASK',
    );
    this.c.abortsSent++;
    this.taskManagement(SRP_TSK_ABORT_TASK, p.cmd.lun, p.tag, this.opts.tmTimeoutMs).then(
      () => {
        this.c.abortsSucceeded++;
        // The channel answered the abort: the command failed, the channel did not.
        this.giveUp(
          p,
          new TransportError(
            `command timed out after ${p.timeoutMs} ms and was aborted (ABORT TASK succeeded)`,
            'aborted',
          ),
        );
      },
      (err: Error) => {
        this.c.abortsFailed++;
        this.giveUp(
          p,
          new TransportError(
            `command timed out after ${p.timeoutMs} ms; ABORT TASK failed: ${err.message}`,
            'timeout',
            { cause: err },
          ),
        );
      },
    );
  }

  /** Forgets an outstanding command without a response (aborted, reset, timed out). */
  private giveUp(p: PendingCmd, err: Error): void {
    if (p.state === 'done') return;
    const slot = p.slot;
    if (slot !== undefined && slot.req === p) {
      this.remember(p.tag);
      this.inFlight--;
      this.retireSlot(slot);
    }
    this.failCmd(p, err);
    this.pump();
  }

  private remember(tag: number): void {
    this.abandoned.add(tag);
    if (this.abandoned.size > ABANDONED_MEMORY) this.abandoned.delete(this.abandoned.values().next().value!);
  }

  /* ------------------------------------------------------ task management */

  /** LOGICAL UNIT RESET; on success every outstanding command of that LUN fails with 'aborted'. */
  async lunReset(lun: bigint, timeoutMs = this.opts.tmTimeoutMs): Promise<void> {
    this.c.lunResets++;
    await this.taskManagement(SRP_TSK_LUN_RESET, lun, 0, timeoutMs);
    for (const slot of this.slots) {
      const p = slot?.req;
      if (p !== undefined && p.cmd.lun === lun) {
        this.giveUp(p, new TransportError('command aborted by LUN reset', 'aborted'));
      }
    }
  }

  /**
   * Sends one task management function (serialised, like ib_srp's rport mutex) and resolves when
   * the target answers SRP_TSK_MGMT_SUCCESS; rejects with SrpTaskManagementError otherwise.
   */
  taskManagement(func: number, lun: bigint, taskTag: number, timeoutMs = this.opts.tmTimeoutMs): Promise<void> {
    if (this.stateValue !== 'live' && this.stateValue !== 'closing') {
      return Promise.reject(
        new TransportError(
          `SRP session is ${this.stateValue}`,
          this.stateValue === 'disconnected' ? 'disconnected' : 'closed',
        ),
      );
    }
    return new Promise<number>((resolve, reject) => {
      const tm: PendingTm = {
        tag: 0,
        func,
        lun,
        taskTag,
        timeoutMs,
        resolve,
        reject,
        state: 'queued',
        timer: undefined,
      };
      // the timeout covers waiting for a credit as well as the target's answer
      tm.timer = this.timers.setTimeout(() => this.onTmTimeout(tm), timeoutMs);
      this.tmQueue.push(tm);
      this.pump();
    }).then((code) => {
      if (code !== SRP_TSK_MGMT_SUCCESS) {
        throw new SrpTaskManagementError(
          func,
          code,
          `${nameOfSrpTskMgmtFunc(func)} failed: ${nameOfSrpTskMgmtStatus(code)}`,
        );
      }
    });
  }

  private sendTm(tm: PendingTm): void {
    tm.tag = this.nextTmTag++;
    const iu = encodeTskMgmt({
      solNot: 0,
      tag: BigInt(tm.tag),
      lun: tm.lun,
      func: tm.func,
      taskTag: BigInt(tm.taskTag),
    });
    this.tmActive = tm;
    tm.state = 'sent';
    this.reqLim--;
    try {
      this.transport.send(iu);
    } catch (err) {
      this.finishTm(tm, err instanceof Error ? err : new Error(String(err)));
    }
  }

  private finishTm(tm: PendingTm, result: number | Error): void {
    if (tm.state === 'done') return;
    const wasQueued = tm.state === 'queued';
    tm.state = 'done';
    this.timers.clearTimeout(tm.timer);
    if (wasQueued) {
      const i = this.tmQueue.indexOf(tm);
      if (i >= 0) this.tmQueue.splice(i, 1);
    }
    if (this.tmActive === tm) this.tmActive = undefined;
    if (typeof result === 'number') tm.resolve(result);
    else tm.reject(result);
    this.pump();
  }

  private onTmTimeout(tm: PendingTm): void {
    if (tm.state === 'done') return;
    this.c.tmTimeouts++;
    if (tm.state === 'sent') this.remember(tm.tag);
    this.log.warn({ func: nameOfSrpTskMgmtFunc(tm.func), tag: tm.tag }, 'srp: task management timed out');
    this.finishTm(
      tm,
      new SrpTaskManagementError(
        tm.func,
        undefined,
        `${nameOfSrpTskMgmtFunc(tm.func)} got no answer within ${tm.timeoutMs} ms`,
      ),
    );
  }

  /* ------------------------------------------------------------ receiving */

  private malformed(iu: Buffer, why: string): void {
    this.c.malformedIus++;
    this.log.warn(
      { opcode: iu.length ? nameOfSrpOpcode(iu[0]!) : 'none', len: iu.length, why },
      'srp: malformed IU from target ignored',
    );
  }

  private addCredits(delta: number): void {
    this.reqLim += delta;
    this.c.creditsGranted += delta;
  }

  private onIu(iu: Buffer): void {
    if (this.stateValue === 'closed' || this.stateValue === 'disconnected') return;
    if (iu.length === 0) return this.malformed(iu, 'empty');
    if (iu.length > this.login.maxTiIuLen)
      return this.malformed(iu, `longer than max_ti_iu_len ${this.login.maxTiIuLen}`);
    try {
      switch (iu[0]) {
        case SRP_RSP:
          return this.onRsp(iu);
        case SRP_CRED_REQ: {
          const m = decodeCredReq(iu);
          this.c.credReqs++;
          this.addCredits(m.reqLimDelta);
          this.respond(encodeCredRsp({ tag: m.tag }));
          return this.pump();
        }
        case SRP_AER_REQ: {
          const m = decodeAerReq(iu);
          this.c.aerReqs++;
          this.addCredits(m.reqLimDelta);
          this.respond(encodeAerRsp({ tag: m.tag }));
          this.log.warn({ lun: m.lun.toString(16), sense: m.sense.toString('hex') }, 'srp: asynchronous event');
          this.emit('aer', { lun: m.lun, sense: Buffer.from(m.sense) });
          return this.pump();
        }
        case SRP_T_LOGOUT: {
          const m = decodeTLogout(iu);
          const name = nameOfSrpTLogoutReason(m.reason);
          this.log.warn({ reason: name }, 'srp: target logged out');
          this.emit('logout', { reason: m.reason, name });
          this.teardown(new TransportError(`target logged out: ${name}`, 'disconnected'));
          this.transport.close();
          return;
        }
        default:
          this.c.unknownOpcodes++;
          this.log.warn(
            { opcode: nameOfSrpOpcode(iu[0]!), len: iu.length },
            'srp: unexpected IU type from target ignored',
          );
          return;
      }
    } catch (err) {
      if (err instanceof SrpDecodeError) return this.malformed(iu, err.message);
      throw err;
    }
  }

  /** Initiator responses to target requests need no credit (ib_srp SRP_IU_RSP). */
  private respond(iu: Buffer): void {
    try {
      this.transport.send(iu);
    } catch (err) {
      this.log.warn({ err }, 'srp: could not answer a target request');
    }
  }

  /** An SRP_RSP, read in place: a command's (by slot and generation), a task management function's, or neither. */
  private onRsp(iu: Buffer): void {
    const r = this.rsp.read(iu);
    const tag = r.tagHi < TAG_HI_LIMIT ? r.tagHi * TWO_32 + r.tagLo : -1;
    if (tag >= TM_TAG_BASE) {
      const tm = this.tmActive;
      if (tm !== undefined && tm.state === 'sent' && tm.tag === tag) {
        this.addCredits(r.reqLimDelta);
        this.finishTm(tm, r.respLen >= 4 ? iu[r.respOffset + 3]! : -1);
        return;
      }
    } else if (tag >= 0) {
      const slot = this.slots[tag % this.slots.length];
      // the slot's current command only: a response for an earlier generation is not its own
      if (slot !== undefined && slot.tag === tag) return this.onCmdRsp(slot, slot.req!, r, iu);
    }
    if (this.abandoned.has(tag)) {
      // a response that lost the race against its abort: the credit is real
      this.abandoned.delete(tag);
      this.c.lateResponses++;
      this.addCredits(r.reqLimDelta);
      this.pump();
    } else {
      // never issued (or already answered): do not trust its credit delta either
      this.c.unknownTags++;
      const hex = ((BigInt(r.tagHi) << 32n) | BigInt(r.tagLo)).toString(16);
      this.log.warn({ tag: hex, delta: r.reqLimDelta }, 'srp: SRP_RSP for an unknown tag ignored');
    }
  }

  private onCmdRsp(slot: CmdSlot, p: PendingCmd, r: SrpRspReader, iu: Buffer): void {
    this.addCredits(r.reqLimDelta);
    this.inFlight--;
    if (p.state === 'aborting') {
      // answered while its ABORT TASK is in flight: the target is done with the memory
      this.remember(p.tag);
      this.c.lateResponses++;
      this.releaseSlot(slot);
      this.releaseRegions(p);
      this.pump();
      return;
    }
    if (r.respLen >= 4 && iu[r.respOffset + 3] !== 0) {
      this.releaseSlot(slot);
      const why = `target refused SRP_CMD: ${nameOfSrpTskMgmtStatus(iu[r.respOffset + 3]!)}`;
      this.failCmd(p, new TransportError(why, 'protocol'));
      this.pump();
      return;
    }
    const result: ScsiResult = { status: r.status, residual: 0 };
    if (r.senseLen > 0) {
      const sense = Buffer.allocUnsafe(r.senseLen);
      iu.copy(sense, 0, r.senseOffset, r.senseOffset + r.senseLen);
      result.sense = sense;
    }
    const flags = r.flags;
    if (flags & SRP_RSP_FLAG_DIUNDER) result.residual = r.dataInResCnt;
    else if (flags & SRP_RSP_FLAG_DIOVER) result.residual = -r.dataInResCnt;
    else if (flags & SRP_RSP_FLAG_DOUNDER) result.residual = r.dataOutResCnt;
    else if (flags & SRP_RSP_FLAG_DOOVER) result.residual = -r.dataOutResCnt;
    const inLen = p.inLen;
    if (inLen > 0) {
      // only what the target transferred (SRP_RSP data-in residual) reaches the caller
      const got = inLen - (flags & SRP_RSP_FLAG_DIUNDER ? Math.min(r.dataInResCnt, inLen) : 0);
      if (p.dataInBuf) {
        result.dataIn = p.dataInBuf.subarray(0, got);
      } else {
        // landed in the slot's buffer: one copy into the caller's
        const dst = p.cmd.dataIn ?? Buffer.allocUnsafe(got);
        dst.set(slot.dataIn(got), 0); // got <= dst.length (execute() checked cmd.dataIn's length)
        result.dataIn = got === dst.length ? dst : dst.subarray(0, got);
      }
      this.c.bytesIn += got;
    }
    this.releaseSlot(slot);
    this.completeCmd(p, result);
    this.pump();
  }

  /* ------------------------------------------------------- end of session */

  private onDisconnect(reason: TransportError): void {
    if (this.stateValue === 'closed' || this.stateValue === 'disconnected') return;
    const orderly = this.stateValue === 'closing';
    this.teardown(reason, orderly ? 'closed' : 'disconnected');
  }

  /** Fails everything outstanding with `reason` and leaves the session in a final state. */
  private teardown(reason: TransportError, final: 'closed' | 'disconnected' = 'disconnected'): void {
    if (this.stateValue === 'closed' || this.stateValue === 'disconnected') return;
    this.stateValue = final;
    const err = (what: string) => new TransportError(`${what}: ${reason.message}`, reason.code, { cause: reason });
    for (const tm of [...this.tmQueue, ...(this.tmActive ? [this.tmActive] : [])])
      this.finishTm(tm, err('task management not completed'));
    for (const slot of this.slots) {
      const p = slot?.req;
      if (p === undefined) continue;
      this.inFlight--;
      this.releaseSlot(slot!);
      this.failCmd(p, err('command not completed'));
    }
    for (const p of this.waitQueue.splice(0)) this.failCmd(p, err('command not completed'));
    this.stopSweep();
    // the channel is gone: the slots' regions go with it
    for (const slot of this.slots) if (slot) this.deregisterSlot(slot);
    this.checkIdle();
    if (final === 'disconnected') this.log.warn({ reason: reason.message }, 'srp: channel lost');
    this.emit('disconnect', reason);
  }

  private checkIdle(): void {
    if (this.inFlight === 0 && this.waitQueue.length === 0 && !this.tmActive && this.tmQueue.length === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /**
   * Orderly shutdown: no new commands, outstanding ones get closeTimeoutMs to finish (then fail
   * with 'closed'), SRP_I_LOGOUT is sent, the channel is closed.
   */
  async close(): Promise<void> {
    if (this.stateValue !== 'live') return;
    this.stateValue = 'closing';
    await new Promise<void>((resolve) => {
      const timer = this.timers.setTimeout(() => {
        const i = this.idleWaiters.indexOf(done);
        if (i >= 0) this.idleWaiters.splice(i, 1);
        resolve();
      }, this.opts.closeTimeoutMs);
      const done = () => {
        this.timers.clearTimeout(timer);
        resolve();
      };
      this.idleWaiters.push(done);
      this.checkIdle();
    });
    if (this.stateValue !== 'closing') return; // lost meanwhile
    const gone = new Promise<void>((resolve) => {
      const timer = this.timers.setTimeout(resolve, this.opts.closeTimeoutMs);
      this.on('disconnect', () => {
        this.timers.clearTimeout(timer);
        resolve();
      });
    });
    this.respond(encodeILogout({ tag: BigInt(this.nextTmTag++) }));
    this.transport.close();
    await gone;
    this.teardown(new TransportError('session closed', 'closed'), 'closed');
  }
}
