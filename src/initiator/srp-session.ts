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
 * - tags are never reused within a session (a 53-bit counter), so a late response can never be
 *   taken for a newer command's (ib_srp reuses blk-mq tags and relies on claim/ordering);
 * - a command that times out is aborted with ABORT TASK; its memory is deregistered before its
 *   promise settles, so a target that writes late hits a remote access error instead of the
 *   caller's buffer;
 * - malformed IUs from the target (bad length, unknown opcode, unknown or duplicate tag) are
 *   counted and logged and change nothing else.
 */
import {
  SRP_AER_REQ, SRP_BUF_FORMAT_DIRECT, SRP_BUF_FORMAT_INDIRECT, SRP_CMD_LEN, SRP_CMD_SIMPLE_Q, SRP_CRED_REQ,
  SRP_DEFAULT_CMD_SQ_SIZE, SRP_DEF_SG_TABLESIZE, SRP_DIRECT_BUF_LEN, SRP_IMMED_REQUESTED, SRP_IMM_DATA_OFFSET,
  SRP_INDIRECT_BUF_LEN, SRP_LOGIN_REJ, SRP_LOGIN_RSP, SRP_LOGIN_RSP_IMMED_SUPP, SRP_MAX_ADD_CDB_LEN,
  SRP_MULTICHAN_MULTI, SRP_MULTICHAN_SINGLE, SRP_RSP, SRP_RSP_FLAG_DIOVER, SRP_RSP_FLAG_DIUNDER,
  SRP_RSP_FLAG_DOOVER, SRP_RSP_FLAG_DOUNDER, SRP_TSK_ABORT_TASK, SRP_TSK_LUN_RESET, SRP_TSK_MGMT_SQ_SIZE,
  SRP_TSK_MGMT_SUCCESS, SRP_T_LOGOUT, SRP_ABORT_TIMEOUT_MS, describeSrpLoginRejReason, nameOfSrpLoginRejReason,
  nameOfSrpMultichanResult, nameOfSrpOpcode, nameOfSrpTLogoutReason, nameOfSrpTskMgmtFunc,
  nameOfSrpTskMgmtStatus,
} from './srp-constants.js';
import {
  SrpDecodeError, cmdLength, decodeAerReq, decodeCredReq, decodeLoginRej, decodeLoginRsp, decodeRsp,
  decodeTLogout, encodeAerRsp, encodeCmd, encodeCredRsp, encodeILogout, encodeLoginReq, encodeLoginReqRdma,
  encodeTskMgmt, type SrpCmd, type SrpDataDesc, type SrpDirectBuf, type SrpLoginReq, type SrpRsp,
} from './srp-iu.js';
import { TransportError, type ScsiCommand, type ScsiExecutor, type ScsiResult } from './scsi-executor.js';
import { Emitter, type ChannelTransport, type MemoryRegion } from './transport.js';

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
  /** Overrides the requested max_it_iu_len (ib_srp max_it_iu_size). */
  maxItIuLen?: number;
  /** Commands outstanding at most (ib_srp queue_size minus reserves, default 62). */
  queueSize?: number;
  /** Login (CM REQ -> REP/REJ) timeout, default 5000 ms. */
  loginTimeoutMs?: number;
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

/** The target refused the login (SRP_LOGIN_REJ); `reasonName` is the srp.h name. */
export class SrpLoginRejectedError extends Error {
  readonly reasonName: string;
  constructor(readonly reason: number, readonly bufFmt: number) {
    const name = nameOfSrpLoginRejReason(reason);
    super(`SRP login rejected: ${name} (0x${reason.toString(16).padStart(8, '0')}): ${describeSrpLoginRejReason(reason)}`);
    this.name = 'SrpLoginRejectedError';
    this.reasonName = name;
  }
}

/** A task management function did not complete with SRP_TSK_MGMT_SUCCESS. */
export class SrpTaskManagementError extends Error {
  constructor(readonly func: number, readonly code: number | undefined, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SrpTaskManagementError';
  }
}

interface PendingCmd {
  kind: 'cmd';
  tag: number;
  cmd: ScsiCommand;
  resolve: (r: ScsiResult) => void;
  reject: (e: Error) => void;
  state: 'queued' | 'sent' | 'aborting' | 'done';
  regions: MemoryRegion[];
  dataInBuf: Buffer | undefined;
  timer: unknown;
  timeoutMs: number;
}
interface PendingTm {
  kind: 'tm';
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

/** Abandoned tags remembered so a late response is recognised (bounded). */
const ABANDONED_MEMORY = 1024;

export class SrpSession extends Emitter<SrpSessionEvents> implements ScsiExecutor {
  private stateValue: SrpSessionState = 'logging-in';
  private readonly log: SrpLogger;
  private readonly timers: SrpTimers;
  private readonly opts: Required<Omit<SrpSessionOptions, 'logger' | 'timers' | 'maxItIuLen'>> & { maxItIuLen?: number };
  private login!: SrpLoginResult;
  private reqLim = 0;
  private nextTag = 1;
  private readonly outstanding = new Map<number, PendingCmd | PendingTm>();
  private readonly waitQueue: PendingCmd[] = [];
  private readonly tmQueue: PendingTm[] = [];
  private tmActive: PendingTm | undefined;
  private inFlight = 0;
  private stalled = false;
  private readonly abandoned = new Set<number>();
  private readonly early: Buffer[] = [];
  private readonly idleWaiters: (() => void)[] = [];
  private readonly c: Omit<SrpSessionCounters, 'reqLim' | 'inFlight' | 'queued'> = {
    commandsSubmitted: 0, commandsSent: 0, commandsCompleted: 0, commandsFailed: 0, immediateDataCommands: 0,
    indirectCommands: 0, bytesOut: 0, bytesIn: 0, creditsGranted: 0, zeroReqLim: 0, commandTimeouts: 0,
    abortsSent: 0, abortsSucceeded: 0, abortsFailed: 0, lunResets: 0, tmTimeouts: 0, credReqs: 0, aerReqs: 0,
    malformedIus: 0, unknownOpcodes: 0, unknownTags: 0, lateResponses: 0,
  };

  private constructor(private readonly transport: ChannelTransport, options: SrpSessionOptions) {
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
      loginTimeoutMs: options.loginTimeoutMs ?? 5000,
      commandTimeoutMs: options.commandTimeoutMs ?? 30000,
      tmTimeoutMs: options.tmTimeoutMs ?? SRP_ABORT_TIMEOUT_MS,
      closeTimeoutMs: options.closeTimeoutMs ?? 5000,
      ...(options.maxItIuLen !== undefined ? { maxItIuLen: options.maxItIuLen } : {}),
    };
    if (this.opts.cmdSgEntries < 1 || this.opts.cmdSgEntries > 255) throw new RangeError('cmdSgEntries must be 1..255');
    if (this.opts.queueSize < 1) throw new RangeError('queueSize must be >= 1');
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
      reqFlags: (this.opts.multichannel === 'multi' ? SRP_MULTICHAN_MULTI : SRP_MULTICHAN_SINGLE)
        | (this.opts.immediateData ? SRP_IMMED_REQUESTED : 0),
      immDataOffset: this.opts.immediateData ? SRP_IMM_DATA_OFFSET : 0,
      initiatorPortId: this.opts.initiatorPortId,
      targetPortId: this.opts.targetPortId,
    };
    const iu = t.loginForm === 'rdma-cm' ? encodeLoginReqRdma(req) : encodeLoginReq(req);
    const answer = await t.connect(iu, { timeoutMs: this.opts.loginTimeoutMs }).catch((err: unknown) => {
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
      this.log.warn({ reason: nameOfSrpLoginRejReason(rej!.reason) }, 'srp: login rejected');
      fail(new SrpLoginRejectedError(rej!.reason, rej!.bufFmt));
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
    if (!(rsp.bufFmt & SRP_BUF_FORMAT_DIRECT)) fail(new Error(`SRP login: target supports no direct data buffer descriptors (buf_fmt 0x${rsp.bufFmt.toString(16)})`));
    if (rsp.maxTiIuLen < 36) fail(new Error(`SRP login: target max_ti_iu_len ${rsp.maxTiIuLen} is smaller than SRP_RSP`));
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
    this.log.info({ ...this.login }, 'srp: logged in');
    this.stateValue = 'live';
    for (const iu of this.early.splice(0)) this.onIu(iu);
  }

  get state(): SrpSessionState {
    return this.stateValue;
  }
  get loginResult(): SrpLoginResult {
    return { ...this.login };
  }
  get counters(): SrpSessionCounters {
    return { ...this.c, reqLim: this.reqLim, inFlight: this.inFlight, queued: this.waitQueue.length };
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
      return Promise.reject(new RangeError(`dataIn buffer of ${cmd.dataIn.length} bytes < dataInLength ${dataInLength}`));
    }
    return new Promise<ScsiResult>((resolve, reject) => {
      const p: PendingCmd = {
        kind: 'cmd', tag: 0, cmd, resolve, reject, state: 'queued', regions: [], dataInBuf: undefined,
        timer: undefined, timeoutMs: cmd.timeoutMs ?? this.opts.commandTimeoutMs,
      };
      if (p.timeoutMs > 0) p.timer = this.timers.setTimeout(() => this.onCommandTimeout(p), p.timeoutMs);
      this.waitQueue.push(p);
      this.pump();
    });
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
    let iu: Buffer;
    try {
      const dataOut = this.describe(p, cmd.dataOut, 'out');
      let dataIn: SrpDataDesc = { format: 'none' };
      const inLen = cmd.dataInLength ?? 0;
      if (inLen > 0) {
        // zeroed: a target that transfers less without saying so must not expose stale memory
        p.dataInBuf = cmd.dataIn ? cmd.dataIn.subarray(0, inLen) : Buffer.alloc(inLen);
        dataIn = this.describe(p, p.dataInBuf, 'in');
      }
      p.tag = this.nextTag++;
      const m: SrpCmd = {
        solNot: 0, tag: BigInt(p.tag), lun: cmd.lun, taskAttr: SRP_CMD_SIMPLE_Q, cdb: cmd.cdb, dataOut, dataIn,
      };
      const ctx = { immDataOffset: this.login.immDataOffset };
      const len = cmdLength(m, ctx);
      if (len > this.login.maxItIuLen) {
        throw new TransportError(`SRP_CMD of ${len} bytes exceeds max_it_iu_len ${this.login.maxItIuLen}`, 'protocol');
      }
      iu = encodeCmd(m, ctx);
      if (dataOut.format === 'imm') this.c.immediateDataCommands++;
      if (dataOut.format === 'indirect' || dataIn.format === 'indirect') this.c.indirectCommands++;
    } catch (err) {
      this.finishCmd(p, err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.outstanding.set(p.tag, p);
    p.state = 'sent';
    this.reqLim--;
    this.inFlight++;
    this.c.commandsSent++;
    this.c.bytesOut += cmd.dataOut?.length ?? 0;
    try {
      this.transport.send(iu);
    } catch (err) {
      // the disconnect event will fail everything else; this one fails now
      this.outstanding.delete(p.tag);
      this.inFlight--;
      this.finishCmd(p, err instanceof TransportError ? err : new TransportError('send failed', 'disconnected', { cause: err }));
    }
  }

  /**
   * Builds the descriptor for one direction: immediate data when granted and it fits, one direct
   * descriptor when the buffer fits one registration, else an indirect table of
   * transport.maxRegionSize pieces (all descriptors inside the IU; the table itself registered too).
   */
  private describe(p: PendingCmd, buf: Buffer | undefined, dir: 'out' | 'in'): SrpDataDesc {
    if (!buf || buf.length === 0) return { format: 'none' };
    const L = this.login;
    if (dir === 'out' && L.immediateData && buf.length <= this.opts.maxImmData && L.immDataOffset + buf.length <= L.maxItIuLen) {
      return { format: 'imm', data: buf };
    }
    const max = this.transport.maxRegionSize;
    if (buf.length <= max) {
      const mr = this.transport.registerBuffer(buf);
      p.regions.push(mr);
      return { format: 'direct', buf: { va: mr.va, key: mr.rkey, len: buf.length } };
    }
    const n = Math.ceil(buf.length / max);
    if (!(L.bufFmt & SRP_BUF_FORMAT_INDIRECT)) {
      throw new TransportError(`transfer of ${buf.length} bytes needs ${n} descriptors but the target supports no indirect descriptors`, 'protocol');
    }
    if (n > this.opts.cmdSgEntries) {
      throw new TransportError(`transfer of ${buf.length} bytes needs ${n} descriptors, cmd_sg_entries is ${this.opts.cmdSgEntries}`, 'protocol');
    }
    const descs: SrpDirectBuf[] = [];
    for (let off = 0; off < buf.length; off += max) {
      const piece = buf.subarray(off, Math.min(off + max, buf.length));
      const mr = this.transport.registerBuffer(piece);
      p.regions.push(mr);
      descs.push({ va: mr.va, key: mr.rkey, len: piece.length });
    }
    const table = Buffer.alloc(n * SRP_DIRECT_BUF_LEN);
    descs.forEach((d, i) => {
      table.writeBigUInt64BE(d.va, i * 16);
      table.writeUInt32BE(d.key, i * 16 + 8);
      table.writeUInt32BE(d.len, i * 16 + 12);
    });
    const tmr = this.transport.registerBuffer(table);
    p.regions.push(tmr);
    return { format: 'indirect', table: { va: tmr.va, key: tmr.rkey, len: table.length }, totalLen: buf.length, descs };
  }

  private releaseRegions(p: PendingCmd): void {
    for (const mr of p.regions.splice(0)) {
      try {
        this.transport.deregisterBuffer(mr);
      } catch (err) {
        this.log.warn({ err }, 'srp: deregister failed');
      }
    }
  }

  /** Settles a command exactly once: deregisters its memory first, then resolves or rejects. */
  private finishCmd(p: PendingCmd, result: ScsiResult | Error): void {
    if (p.state === 'done') return;
    const wasQueued = p.state === 'queued';
    p.state = 'done';
    if (p.timer !== undefined) this.timers.clearTimeout(p.timer);
    this.releaseRegions(p);
    if (wasQueued) {
      const i = this.waitQueue.indexOf(p);
      if (i >= 0) this.waitQueue.splice(i, 1);
    }
    if (result instanceof Error) {
      this.c.commandsFailed++;
      p.reject(result);
    } else {
      this.c.commandsCompleted++;
      p.resolve(result);
    }
  }

  private onCommandTimeout(p: PendingCmd): void {
    p.timer = undefined;
    if (p.state === 'queued') {
      this.c.commandTimeouts++;
      this.finishCmd(p, new TransportError(`command timed out after ${p.timeoutMs} ms before it could be sent (req_lim ${this.reqLim})`, 'timeout'));
      return;
    }
    if (p.state !== 'sent') return;
    this.c.commandTimeouts++;
    p.state = 'aborting';
    this.log.warn({ tag: p.tag, lun: p.cmd.lun.toString(16), cdb: p.cmd.cdb.toString('hex') }, 'srp: command timed out, sending ABORT TASK');
    this.c.abortsSent++;
    this.taskManagement(SRP_TSK_ABORT_TASK, p.cmd.lun, p.tag, this.opts.tmTimeoutMs).then(
      () => {
        this.c.abortsSucceeded++;
        // The channel answered the abort: the command failed, the channel did not.
        this.giveUp(p, new TransportError(`command timed out after ${p.timeoutMs} ms and was aborted (ABORT TASK succeeded)`, 'aborted'));
      },
      (err: Error) => {
        this.c.abortsFailed++;
        this.giveUp(p, new TransportError(`command timed out after ${p.timeoutMs} ms; ABORT TASK failed: ${err.message}`, 'timeout', { cause: err }));
      },
    );
  }

  /** Forgets an outstanding command without a response (aborted, reset, timed out). */
  private giveUp(p: PendingCmd, err: Error): void {
    if (p.state === 'done') return;
    if (this.outstanding.get(p.tag) === p) {
      this.outstanding.delete(p.tag);
      this.remember(p.tag);
      this.inFlight--;
    }
    this.finishCmd(p, err);
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
    for (const p of [...this.outstanding.values()]) {
      if (p.kind === 'cmd' && p.cmd.lun === lun) this.giveUp(p, new TransportError('command aborted by LUN reset', 'aborted'));
    }
  }

  /**
   * Sends one task management function (serialised, like ib_srp's rport mutex) and resolves when
   * the target answers SRP_TSK_MGMT_SUCCESS; rejects with SrpTaskManagementError otherwise.
   */
  taskManagement(func: number, lun: bigint, taskTag: number, timeoutMs = this.opts.tmTimeoutMs): Promise<void> {
    if (this.stateValue !== 'live' && this.stateValue !== 'closing') {
      return Promise.reject(new TransportError(`SRP session is ${this.stateValue}`, this.stateValue === 'disconnected' ? 'disconnected' : 'closed'));
    }
    return new Promise<number>((resolve, reject) => {
      const tm: PendingTm = { kind: 'tm', tag: 0, func, lun, taskTag, timeoutMs, resolve, reject, state: 'queued', timer: undefined };
      // the timeout covers waiting for a credit as well as the target's answer
      tm.timer = this.timers.setTimeout(() => this.onTmTimeout(tm), timeoutMs);
      this.tmQueue.push(tm);
      this.pump();
    }).then((code) => {
      if (code !== SRP_TSK_MGMT_SUCCESS) {
        throw new SrpTaskManagementError(func, code, `${nameOfSrpTskMgmtFunc(func)} failed: ${nameOfSrpTskMgmtStatus(code)}`);
      }
    });
  }

  private sendTm(tm: PendingTm): void {
    tm.tag = this.nextTag++;
    const iu = encodeTskMgmt({ solNot: 0, tag: BigInt(tm.tag), lun: tm.lun, func: tm.func, taskTag: BigInt(tm.taskTag) });
    this.outstanding.set(tm.tag, tm);
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
    if (this.outstanding.get(tm.tag) === tm) this.outstanding.delete(tm.tag);
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
    this.finishTm(tm, new SrpTaskManagementError(tm.func, undefined,
      `${nameOfSrpTskMgmtFunc(tm.func)} got no answer within ${tm.timeoutMs} ms`));
  }

  /* ------------------------------------------------------------ receiving */

  private malformed(iu: Buffer, why: string): void {
    this.c.malformedIus++;
    this.log.warn({ opcode: iu.length ? nameOfSrpOpcode(iu[0]!) : 'none', len: iu.length, why }, 'srp: malformed IU from target ignored');
  }

  private addCredits(delta: number): void {
    this.reqLim += delta;
    this.c.creditsGranted += delta;
  }

  private onIu(iu: Buffer): void {
    if (this.stateValue === 'closed' || this.stateValue === 'disconnected') return;
    if (iu.length === 0) return this.malformed(iu, 'empty');
    if (iu.length > this.login.maxTiIuLen) return this.malformed(iu, `longer than max_ti_iu_len ${this.login.maxTiIuLen}`);
    try {
      switch (iu[0]) {
        case SRP_RSP: return this.onRsp(decodeRsp(iu));
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
          this.log.warn({ opcode: nameOfSrpOpcode(iu[0]!), len: iu.length }, 'srp: unexpected IU type from target ignored');
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

  private onRsp(rsp: SrpRsp): void {
    const tag = rsp.tag <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(rsp.tag) : -1;
    const p = this.outstanding.get(tag);
    if (!p) {
      if (this.abandoned.has(tag)) {
        // a response that lost the race against its abort: the credit is real
        this.abandoned.delete(tag);
        this.c.lateResponses++;
        this.addCredits(rsp.reqLimDelta);
        this.pump();
      } else {
        // never issued (or already answered): do not trust its credit delta either
        this.c.unknownTags++;
        this.log.warn({ tag: rsp.tag.toString(16), delta: rsp.reqLimDelta }, 'srp: SRP_RSP for an unknown tag ignored');
      }
      return;
    }
    this.outstanding.delete(tag);
    this.addCredits(rsp.reqLimDelta);
    if (p.kind === 'tm') {
      const code = rsp.responseData && rsp.responseData.length >= 4 ? rsp.responseData[3]! : -1;
      this.finishTm(p, code);
      return;
    }
    this.inFlight--;
    if (p.state === 'aborting') {
      // answered while its ABORT TASK is in flight: the target is done with the memory
      this.remember(tag);
      this.c.lateResponses++;
      this.releaseRegions(p);
      this.pump();
      return;
    }
    if (rsp.responseData && rsp.responseData.length >= 4 && rsp.responseData[3] !== 0) {
      this.finishCmd(p, new TransportError(`target refused SRP_CMD: ${nameOfSrpTskMgmtStatus(rsp.responseData[3]!)}`, 'protocol'));
      this.pump();
      return;
    }
    const result: ScsiResult = { status: rsp.status, residual: 0 };
    if (rsp.sense && rsp.sense.length) result.sense = Buffer.from(rsp.sense);
    const inLen = p.dataInBuf?.length ?? 0;
    if (rsp.flags & SRP_RSP_FLAG_DIUNDER) result.residual = rsp.dataInResCnt;
    else if (rsp.flags & SRP_RSP_FLAG_DIOVER) result.residual = -rsp.dataInResCnt;
    else if (rsp.flags & SRP_RSP_FLAG_DOUNDER) result.residual = rsp.dataOutResCnt;
    else if (rsp.flags & SRP_RSP_FLAG_DOOVER) result.residual = -rsp.dataOutResCnt;
    if (p.dataInBuf) {
      const under = rsp.flags & SRP_RSP_FLAG_DIUNDER ? Math.min(rsp.dataInResCnt, inLen) : 0;
      result.dataIn = p.dataInBuf.subarray(0, inLen - under);
      this.c.bytesIn += inLen - under;
    }
    this.finishCmd(p, result);
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
    for (const tm of [...this.tmQueue, ...(this.tmActive ? [this.tmActive] : [])]) this.finishTm(tm, err('task management not completed'));
    for (const p of [...this.outstanding.values(), ...this.waitQueue]) {
      if (p.kind === 'cmd') {
        if (this.outstanding.get(p.tag) === p) this.inFlight--;
        this.finishCmd(p, err('command not completed'));
      }
    }
    this.outstanding.clear();
    this.waitQueue.length = 0;
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
    this.respond(encodeILogout({ tag: BigInt(this.nextTag++) }));
    this.transport.close();
    await gone;
    this.teardown(new TransportError('session closed', 'closed'), 'closed');
  }
}
