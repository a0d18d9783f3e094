/**
 * Test SRP target: the target side of the SRP protocol over the loopback transport, so the whole
 * initiator (session, SCSI layer, NBD) runs without RDMA.
 *
 * Behaves like LIO ib_srpt where it matters to an initiator: login checks (IU length, descriptor
 * formats, MULTI-CHANNEL action, SRP-2 immediate data at the initiator's imm_data_offset), a
 * credit window per channel (req_lim), data-out fetched by RDMA READ and data-in delivered by
 * RDMA WRITE before the SRP_RSP, credits of aborted tasks returned in later responses, task
 * management (ABORT TASK, LUN RESET, ABORT/CLEAR TASK SET).
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
  SRP_BUF_FORMAT_DIRECT, SRP_BUF_FORMAT_INDIRECT, SRP_CMD, SRP_CMD_LEN, SRP_CRED_RSP, SRP_AER_RSP,
  SRP_I_LOGOUT, SRP_IMMED_REQUESTED, SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED,
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED, SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNABLE_ESTABLISH_CHANNEL, SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT, SRP_LOGIN_REQ,
  SRP_LOGIN_REQ_LEN, SRP_LOGIN_REQ_RDMA_LEN, SRP_LOGIN_RSP_IMMED_SUPP, SRP_LOGIN_RSP_MULTICHAN_MAINTAINED,
  SRP_LOGIN_RSP_MULTICHAN_NO_CHAN, SRP_LOGIN_RSP_MULTICHAN_TERMINATED, SRP_MAX_IMM_DATA_OFFSET,
  SRP_MTCH_ACTION, SRP_MULTICHAN_MULTI, SRP_RSP_FLAG_DIOVER, SRP_RSP_FLAG_DIUNDER, SRP_RSP_LEN,
  SRP_TSK_ABORT_TASK, SRP_TSK_ABORT_TASK_SET, SRP_TSK_CLEAR_TASK_SET, SRP_TSK_LUN_RESET, SRP_TSK_MGMT,
  SRP_TSK_MGMT_FAILED, SRP_TSK_MGMT_FUNC_NOT_SUPP, SRP_TSK_MGMT_SUCCESS, SRP_T_LOGOUT_MULTICHANNEL_ACTION,
  nameOfSrpOpcode,
} from '../initiator/srp-constants.js';
import {
  SrpDecodeError, decodeCmd, decodeLoginReq, decodeLoginReqRdma, decodeTskMgmt, encodeAerReq, encodeCredReq,
  encodeLoginRej, encodeLoginRsp, encodeRsp, encodeTLogout, type SrpCmd, type SrpDataDesc, type SrpDirectBuf,
  type SrpLoginReq,
} from '../initiator/srp-iu.js';
import type { ScsiTargetLun } from '../initiator/scsi-executor.js';
import type { ConnectAnswer, TargetChannelTransport } from '../initiator/transport.js';
import { createLoopbackPair, type LoopbackOptions, type LoopbackPair, type LoopbackTargetEnd } from '../initiator/loopback.js';
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

interface Task {
  tag: bigint;
  lun: bigint;
  aborted: boolean;
}

/** One logged-in channel, target side. */
export class SrpTargetChannel {
  /** credits the initiator holds, as far as the target knows */
  initiatorCredits: number;
  /** credits freed without a response yet to carry them */
  pendingDelta = 0;
  readonly tasks = new Map<bigint, Task>();
  open = true;
  private nextTag = 1n;
  constructor(
    readonly end: TargetChannelTransport,
    readonly login: SrpLoginReq,
    readonly immDataOffset: number,
    readonly maxTiIuLen: number,
    reqLim: number,
  ) {
    this.initiatorCredits = reqLim;
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
    logins: 0, loginRejects: 0, commands: 0, tasks: 0, tmAborted: 0, creditViolations: 0, immediateDataCommands: 0,
    indirectCommands: 0, credRsps: 0, aerRsps: 0, iLogouts: 0, malformed: 0, maxOutstanding: 0,
  };
  readonly channels: SrpTargetChannel[] = [];
  private readonly log: SrpLogger | undefined;

  constructor(opts: SrpTestTargetOptions) {
    this.luns = opts.luns instanceof Map ? opts.luns : new Map(opts.luns);
    this.reqLim = opts.reqLim ?? 32;
    this.maxItIuLen = opts.maxItIuLen ?? 8260;
    this.maxTiIuLen = opts.maxTiIuLen ?? 1024;
    this.immediateData = opts.immediateData ?? true;
    this.bufFmt = opts.bufFmt ?? (SRP_BUF_FORMAT_DIRECT | SRP_BUF_FORMAT_INDIRECT);
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
    if (req.reqItIuLen > this.maxItIuLen || req.reqItIuLen < 64) return this.reject(SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE);
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
    if (this.immediateData && req.reqFlags & SRP_IMMED_REQUESTED
      && req.immDataOffset >= SRP_CMD_LEN && req.immDataOffset <= SRP_MAX_IMM_DATA_OFFSET) {
      immOffset = req.immDataOffset;
      rspFlags |= SRP_LOGIN_RSP_IMMED_SUPP;
    }
    const ch = new SrpTargetChannel(end, { ...req, initiatorPortId: Buffer.from(req.initiatorPortId), targetPortId: Buffer.from(req.targetPortId) },
      immOffset, this.maxTiIuLen, this.reqLim);
    this.channels.push(ch);
    this.stats.logins++;
    end.on('iu', (iu) => this.onIu(ch, iu));
    end.on('disconnect', () => this.forget(ch));
    return {
      accept: encodeLoginRsp({
        reqLimDelta: this.reqLim, tag: req.tag, maxItIuLen: req.reqItIuLen, maxTiIuLen: this.maxTiIuLen,
        bufFmt: this.bufFmt, rspFlags,
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

  private onIu(ch: SrpTargetChannel, raw: Buffer): void {
    if (!ch.open || this.blackHole) return;
    const iu = Buffer.from(raw); // commands outlive the receive buffer
    try {
      switch (iu[0]) {
        case SRP_CMD: return this.onCmd(ch, decodeCmd(iu, 0, undefined, { immDataOffset: ch.immDataOffset }));
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

  private sendRsp(ch: SrpTargetChannel, tag: bigint, status: number, opts: {
    sense?: Buffer; responseData?: Buffer; flags?: number; dataInResCnt?: number;
  } = {}): void {
    let sense = opts.sense;
    if (sense && SRP_RSP_LEN + (opts.responseData?.length ?? 0) + sense.length > ch.maxTiIuLen) {
      sense = sense.subarray(0, ch.maxTiIuLen - SRP_RSP_LEN - (opts.responseData?.length ?? 0));
    }
    const m = {
      solNot: 0, reqLimDelta: this.delta(ch), tag, flags: opts.flags ?? 0, status, dataOutResCnt: 0,
      dataInResCnt: opts.dataInResCnt ?? 0,
      ...(sense ? { sense } : {}), ...(opts.responseData ? { responseData: opts.responseData } : {}),
    };
    ch.send(encodeRsp(m));
  }

  private onCmd(ch: SrpTargetChannel, m: SrpCmd): void {
    this.stats.commands++;
    if (!this.takeCredit(ch)) {
      // answered (BUSY) so the initiator is not left waiting; tests assert the counter stays 0
      this.sendRsp(ch, m.tag, BUSY);
      return;
    }
    const task: Task = { tag: m.tag, lun: m.lun, aborted: false };
    ch.tasks.set(m.tag, task);
    this.stats.maxOutstanding = Math.max(this.stats.maxOutstanding, ch.tasks.size);
    this.runCmd(ch, m, task).catch((err: unknown) => {
      // RDMA failed: the channel is gone (remote access error or disconnect); nothing to answer
      this.log?.warn({ err: String(err) }, 'srp-target: command failed in transport');
      ch.tasks.delete(m.tag);
    });
  }

  private async gather(ch: SrpTargetChannel, d: SrpDataDesc): Promise<{ data?: Buffer; descs: SrpDirectBuf[] }> {
    switch (d.format) {
      case 'none': return { descs: [] };
      case 'imm':
        this.stats.immediateDataCommands++;
        return { data: Buffer.from(d.data), descs: [] };
      case 'direct': return { descs: [d.buf] };
      case 'indirect': {
        this.stats.indirectCommands++;
        let descs = d.descs;
        if (d.table.len !== descs.length * 16) {
          // external descriptor table: fetch it from initiator memory
          const table = await ch.end.rdmaRead(d.table.va, d.table.key, d.table.len);
          descs = [];
          for (let i = 0; i + 16 <= table.length; i += 16) {
            descs.push({ va: table.readBigUInt64BE(i), key: table.readUInt32BE(i + 8), len: table.readUInt32BE(i + 12) });
          }
        }
        return { descs };
      }
    }
  }

  private async runCmd(ch: SrpTargetChannel, m: SrpCmd, task: Task): Promise<void> {
    const out = await this.gather(ch, m.dataOut);
    let dataOut = out.data;
    if (!dataOut && out.descs.length) {
      const parts: Buffer[] = [];
      for (const d of out.descs) parts.push(await ch.end.rdmaRead(d.va, d.key, d.len));
      dataOut = Buffer.concat(parts);
    }
    const inDescs = (await this.gather(ch, m.dataIn)).descs;
    const allocationLength = inDescs.reduce((s, d) => s + d.len, 0);
    const lun = this.luns.get(m.lun);
    let reply: { status: number; sense?: Buffer; dataIn?: Buffer };
    const hooked = this.commandHook?.(m.lun, m.cdb);
    if (hooked === 'stall') return; // never answered (until aborted)
    if (hooked) reply = hooked;
    else if (m.cdb[0] === REPORT_LUNS) reply = { status: GOOD, dataIn: this.reportLuns() };
    else if (!lun) reply = { status: CHECK_CONDITION, sense: senseLunNotSupported() };
    else {
      try {
        reply = await lun.execute(m.cdb, dataOut, allocationLength);
      } catch (err) {
        // a LUN bug must not leave the initiator waiting: HARDWARE ERROR, INTERNAL TARGET FAILURE
        this.log?.error({ err: String(err) }, 'srp-target: LUN threw');
        reply = { status: CHECK_CONDITION, sense: senseInternalFailure() };
      }
    }
    if (task.aborted || !ch.open) return;

    let flags = 0;
    let resid = 0;
    if (reply.dataIn && allocationLength > 0) {
      const data = reply.dataIn;
      let off = 0;
      for (const d of inDescs) {
        if (off >= data.length) break;
        const n = Math.min(d.len, data.length - off);
        await ch.end.rdmaWrite(d.va, d.key, data.subarray(off, off + n));
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
    if (this.responseDelayMs > 0) await new Promise((r) => setTimeout(r, this.responseDelayMs));
    if (task.aborted || !ch.open) return;
    ch.tasks.delete(m.tag);
    this.sendRsp(ch, m.tag, reply.status, { ...(reply.sense ? { sense: reply.sense } : {}), flags, dataInResCnt: resid });
  }

  private reportLuns(): Buffer {
    const luns = [...this.luns.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
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
      ch.tasks.delete(t.tag);
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
        case SRP_TSK_ABORT_TASK:
          this.abortTasks(ch, (t) => t.tag === taskTag && t.lun === lun);
          break;
        case SRP_TSK_LUN_RESET:
        case SRP_TSK_ABORT_TASK_SET:
        case SRP_TSK_CLEAR_TASK_SET:
          this.abortTasks(ch, (t) => t.lun === lun);
          break;
        default:
          code = SRP_TSK_MGMT_FUNC_NOT_SUPP;
      }
    }
    this.sendRsp(ch, tag, GOOD, { responseData: Buffer.from([0, 0, 0, code]) });
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
    return this.channels.flatMap((c) => [...c.tasks.keys()]);
  }
}
