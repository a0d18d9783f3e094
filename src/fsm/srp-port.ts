/**
 * One SRP target port as srp-nbd runs it: the current SRP session, the
 * rport state machine, the I/O gate, and the LUNs exported through it.
 *
 * This is the glue between the pure FSM and the initiator: it reports
 * channel loss to the rport, performs reconnect attempts (close the old
 * session, open a channel, log in) and identity checks when the rport asks,
 * and gives every LUN a stable executor that always reaches the current
 * session, so ScsiDisk objects (and the NBD exports above them) survive
 * reconnects unchanged.
 */
import type { Logger } from 'pino';
import { type ProbeResult, ScsiDisk, type ScsiDiskEvent } from '../initiator/scsi-disk.js';
import { type ScsiCommand, type ScsiExecutor, type ScsiResult, TransportError } from '../initiator/scsi-executor.js';
import { type LunIdentity, describeIdentity, sameIdentity } from '../initiator/lun-identity.js';
import { DEFAULT_LOGIN_TIMEOUT_MS, SrpSession, type SrpSessionOptions } from '../initiator/srp-session.js';
import type { ChannelTransport, LoginContext } from '../initiator/transport.js';
import { classifyLoginFailure, STALE_CONNECTION_RETRIES } from '../initiator/login-failure.js';
import { HardReconnectError, RetrySoonError, RportDriver } from './driver.js';
import { IdentityMismatchError } from './identity.js';
import { defaultIsTransportError } from './gate.js';
import { IoGate } from './io-gate.js';
import { LoginAnswerWait } from './login-answer-wait.js';
import { Rport, type RportAction } from './rport.js';
import { RealScheduler, type Scheduler } from './scheduler.js';
import type { TmoParams } from './timers.js';

/** How a port reaches its target: opens a fresh, not yet logged-in channel. */
export interface ChannelConnector {
  /** Rejects (TransportError or Error) when the target cannot be reached now. */
  open(signal: AbortSignal): Promise<ChannelTransport>;
  /** For logs: e.g. "dest=192.0.2.2:5000" or "test-target". */
  readonly description: string;
  /**
   * Optional: calls `listener` when the path to the target comes back (e.g.
   * IBV_EVENT_PORT_ACTIVE), so a blocked port retries at once instead of
   * waiting out its back-off. Returns an unsubscribe function.
   */
  onPathUp?(listener: () => void): () => void;
  /** Optional: the last login as the target saw it (initiator port id, source address). */
  loginContext?(): LoginContext | undefined;
}

/**
 * What the port learns about one of its LUNs while it runs: a unit attention a command saw (the
 * owner decides what to re-read), or what an identity check after a reconnect found changed on
 * the same disk (it grew; its WP bit flipped).
 */
export type LunEvent =
  | { type: 'unit-attention'; what: Extract<ScsiDiskEvent, { type: 'unit-attention' }>['what'] }
  | { type: 'grown'; from: bigint; to: bigint }
  | { type: 'write-protect'; writeProtected: boolean };

/** What re-reading a LUN's capacity and WP bit found (SrpPort.refreshLun). */
export interface LunRefresh {
  /** Block counts before and now; a shrink is reported, not adopted. */
  blocksBefore: bigint;
  blocksNow: bigint;
  capacity: 'same' | 'grown' | 'shrank';
  writeProtected: boolean;
  writeProtectChanged: boolean;
}

/** A reconnect attempt's login waits at least this long for the target's answer (see attemptLoginTimeoutMs). */
export const RECONNECT_LOGIN_MIN_MS = 1000;

/** A reconnect attempt's deadlines (ms): the whole login, and the wait for the answer once sent. */
interface LoginDeadline {
  loginMs: number;
  answerMs: number;
}

export interface SrpPortOptions {
  /** Name in logs and the REST view, e.g. the target's id_ext or address. */
  name: string;
  connector: ChannelConnector;
  session: SrpSessionOptions;
  tmo?: Partial<TmoParams>;
  scheduler?: Scheduler;
  /** I/O admitted at once across the port's LUNs (in flight + held while blocked). */
  queueDepth?: number;
  /** Per-command timeout handed to ScsiDisk (ABORT TASK after it). */
  commandTimeoutMs?: number;
  /** Largest transfer of one SCSI command, bytes (ib_srp max_sect × 512); larger requests are split. */
  maxTransferBytes?: number;
  /** SCSI commands outstanding per LUN at most (ib_srp max_cmd_per_lun); the others wait their turn. */
  maxCmdPerLun?: number;
  logger: Logger;
  /** Told of unit attentions and of changes found on a LUN (see LunEvent). */
  onLunEvent?: (lun: bigint, event: LunEvent) => void;
}

interface LunEntry {
  disk: ScsiDisk;
  identity: LunIdentity;
}

export class SrpPort {
  readonly rport: Rport;
  readonly gate: IoGate;
  /** Reaches whatever session is current; fails with a TransportError (held by the gate) when there is none. */
  readonly executor: ScsiExecutor = { execute: (cmd: ScsiCommand) => this.execute(cmd) };
  /** Logins performed, the first one included. */
  logins = 0;

  /** The verified session: the only one I/O ever reaches. */
  private session: SrpSession | undefined;
  /** Logged in by the current reconnect attempt, identity not verified yet: never used for I/O. */
  private candidate: SrpSession | undefined;
  private readonly luns = new Map<bigint, LunEntry>();
  private readonly driver: RportDriver;
  private readonly log: Logger;
  private readonly offPathUp: (() => void) | undefined;
  /** The target's recent login answer times: how long a reconnect attempt waits for an answer. */
  private readonly answerWait = new LoginAnswerWait();

  private constructor(private readonly opts: SrpPortOptions) {
    this.log = opts.logger.child({ port: opts.name });
    this.rport = new Rport({ scheduler: opts.scheduler ?? new RealScheduler(), tmo: opts.tmo ?? {}, name: opts.name });
    this.gate = new IoGate(this.rport, {
      queueDepth: opts.queueDepth ?? 256,
      // A command that timed out and was aborted (ABORT TASK succeeded) failed on a working
      // channel: it is a command error (EIO), not a reason to reconnect and replay.
      isTransportError: (e) => defaultIsTransportError(e) && (e as TransportError).code !== 'aborted',
    });
    this.rport.subscribe((a) => this.onAction(a));
    this.driver = new RportDriver(this.rport, {
      reconnect: (attempt, signal) => this.reconnect(attempt, signal),
      verifyIdentity: (attempt, signal) => this.verifyIdentity(attempt, signal),
      stop: () => {
        this.log.info('reconnecting stopped');
        this.dropCandidate();
      },
    });
    this.offPathUp = opts.connector.onPathUp?.(() => {
      // Lost stays lost until an operator asks: only a live outage retries on its own.
      if (this.rport.phase === 'waiting' || this.rport.phase === 'idle') {
        this.log.info('path is back: reconnecting now');
        this.rport.handle({ type: 'path-up' });
      }
    });
  }

  /** Logs in for the first time; rejects with the login's error (e.g. a login reject naming its reason). */
  static async connect(opts: SrpPortOptions): Promise<SrpPort> {
    const port = new SrpPort(opts);
    try {
      port.install(await port.loginRetryingStale(new AbortController().signal));
    } catch (err) {
      port.dispose();
      throw err;
    }
    return port;
  }

  get state(): Rport['state'] {
    return this.rport.state;
  }

  /**
   * The wait for a reconnect login's answer (src/fsm/login-answer-wait.ts): the slowest of the
   * target's recent answers, ms (null before the first), and what the next attempt would wait.
   */
  get loginWait(): { slowestAnswerMs: number | null; nextWaitMs: number } {
    const slowest = this.answerWait.slowestMs;
    return {
      slowestAnswerMs: slowest === undefined ? null : Math.round(slowest),
      nextWaitMs: this.answerWait.nextMs(this.attemptLoginTimeoutMs()),
    };
  }

  /** The current session's counters, if any. */
  get sessionCounters(): SrpSession['counters'] | undefined {
    return this.session?.counters;
  }

  /** Probes a LUN and records its identity; later reconnects must find the same disk. */
  async addLun(lun: bigint): Promise<ScsiDisk> {
    const opts: ConstructorParameters<typeof ScsiDisk>[1] = {
      lun,
      onEvent: (e) => {
        if (e.type === 'unit-attention') this.opts.onLunEvent?.(lun, { type: 'unit-attention', what: e.what });
      },
    };
    if (this.opts.commandTimeoutMs !== undefined) opts.timeoutMs = this.opts.commandTimeoutMs;
    if (this.opts.maxTransferBytes !== undefined) opts.maxTransferBytes = this.opts.maxTransferBytes;
    const executor =
      this.opts.maxCmdPerLun !== undefined ? limitExecutor(this.executor, this.opts.maxCmdPerLun) : this.executor;
    const disk = new ScsiDisk(executor, opts);
    const probe = await disk.probe();
    this.luns.set(lun, { disk, identity: probe.identity });
    this.log.info(
      { lun: lun.toString(16), identity: describeIdentity(probe.identity), size: probe.geometry.sizeBytes },
      'LUN added',
    );
    return disk;
  }

  /** Forgets a LUN the target no longer reports: later identity checks leave it out. */
  removeLun(lun: bigint): void {
    this.luns.delete(lun);
  }

  /**
   * Re-reads a LUN's capacity (READ CAPACITY(16)) and WP bit on the current session (after a
   * CAPACITY DATA HAS CHANGED unit attention, or a rescan). A LUN that grew is followed (its disk
   * and recorded identity take the new size); one that shrank is reported and not followed.
   */
  async refreshLun(lun: bigint): Promise<LunRefresh> {
    const entry = this.luns.get(lun);
    if (!entry) throw new Error(`LUN ${lun.toString(16)} is not attached`);
    const disk = entry.disk;
    const capacity = await disk.readCapacityNow();
    const wp = await disk.readWriteProtect();
    const blocksBefore = disk.geometry.blockCount;
    const blocksNow = capacity.blockCount;
    let change: LunRefresh['capacity'] = 'same';
    if (capacity.blockLength !== disk.geometry.blockSize || blocksNow < blocksBefore) change = 'shrank';
    else if (blocksNow > blocksBefore) {
      disk.adoptCapacity(capacity);
      entry.identity = { ...entry.identity, blockCount: blocksNow };
      change = 'grown';
    }
    const writeProtectChanged = disk.adoptWriteProtect(wp);
    return { blocksBefore, blocksNow, capacity: change, writeProtected: wp.writeProtected, writeProtectChanged };
  }

  /** The identity recorded for a LUN (its block count follows a LUN that grew). */
  identityOf(lun: bigint): LunIdentity | undefined {
    return this.luns.get(lun)?.identity;
  }

  /** Operator request: reconnect now (from lost: start over). */
  reconnectNow(): void {
    this.rport.handle({ type: 'explicit-reconnect' });
  }

  /** Ends the port: fails outstanding I/O, logs out. The rport goes to detached. */
  async close(): Promise<void> {
    this.rport.handle({ type: 'detach', reason: 'port closed' });
    this.dispose();
    const s = this.session;
    this.session = undefined;
    this.dropCandidate();
    await s?.close().catch(() => undefined);
  }

  private dispose(): void {
    this.offPathUp?.();
    this.driver.dispose();
    this.gate.dispose();
  }

  /**
   * I/O reaches the verified session only, and only while running: an op that wakes up from a
   * retry back-off during an outage gets a TransportError, which the gate holds for replay.
   */
  private execute(cmd: ScsiCommand): Promise<ScsiResult> {
    const s = this.session;
    if (this.rport.state !== 'running' || !s || s.state !== 'live') {
      return Promise.reject(
        new TransportError(`${this.opts.name}: no usable channel (port ${this.rport.state})`, 'disconnected'),
      );
    }
    return s.execute(cmd);
  }

  /**
   * Opens a channel and logs in; the session is not used for I/O until installed. What came back
   * (an answer and how fast, or none) is learnt for later attempts' waits (LoginAnswerWait).
   */
  private async login(signal: AbortSignal, deadline?: LoginDeadline): Promise<SrpSession> {
    const transport = await this.opts.connector.open(signal);
    let session: SrpSession;
    try {
      session = await SrpSession.login(
        transport,
        deadline === undefined
          ? this.opts.session
          : { ...this.opts.session, loginTimeoutMs: deadline.loginMs, loginAnswerTimeoutMs: deadline.answerMs },
      );
    } catch (err) {
      const answer = classifyLoginFailure(err).answer;
      if (transport.loginAnswerMs !== undefined) this.answerWait.answered(transport.loginAnswerMs);
      else if (answer === 'rejected') this.answerWait.answeredUntimed();
      else if (answer === 'none') this.answerWait.noAnswer();
      throw err;
    }
    if (session.loginAnswerMs !== undefined) this.answerWait.answered(session.loginAnswerMs);
    else this.answerWait.answeredUntimed();
    if (signal.aborted) {
      await session.close().catch(() => undefined);
      throw new Error('reconnect attempt aborted');
    }
    this.logins++;
    session.on('disconnect', (reason) => {
      // Only the verified session's loss is news; an old one's is the reconnect closing it,
      // a candidate's fails its identity check.
      if (this.session === session) this.rport.handle({ type: 'failure-detected', reason: reason.message });
    });
    session.on('logout', (ev) => this.log.warn({ reason: ev.name }, 'target logged us out'));
    return session;
  }

  private install(session: SrpSession): void {
    this.session = session;
  }

  private dropCandidate(): void {
    const c = this.candidate;
    this.candidate = undefined;
    void c?.close().catch(() => undefined);
  }

  /**
   * Reconnect attempt: the old session is closed (its commands settled) before a new login. How a
   * failed login goes on depends on its class (src/initiator/login-failure.ts): a stale connection
   * is retried at once with a new connection (bounded), a hard reject fails the attempt as hard,
   * another reject, or no answer within a wait shorter than the attempt's deadline, asks for the
   * next attempt soon (RetrySoonError), anything else (no answer within the whole deadline, an
   * unreachable address) waits for the next attempt on the cadence.
   */
  private async reconnect(attempt: number, signal: AbortSignal): Promise<void> {
    const old = this.session;
    this.session = undefined;
    this.dropCandidate();
    if (old) await old.close().catch(() => undefined);
    const loginMs = this.attemptLoginTimeoutMs();
    const deadline = { loginMs, answerMs: this.answerWait.nextMs(loginMs) };
    this.log.info(
      { attempt, via: this.opts.connector.description, loginTimeoutMs: loginMs, answerTimeoutMs: deadline.answerMs },
      'reconnect attempt',
    );
    try {
      this.candidate = await this.loginRetryingStale(signal, deadline);
    } catch (err) {
      if (signal.aborted) throw err;
      const f = classifyLoginFailure(err);
      this.log.warn({ attempt, kind: f.kind }, `login failed: ${f.message}`);
      if (!f.retryable) throw new HardReconnectError(f.message, { cause: err });
      // Reachable but not ready; or unanswered within a wait the target's answers allowed to be
      // short (a black hole may be over already): either way, the next attempt soon.
      if (f.answer === 'rejected' || (f.answer === 'none' && deadline.answerMs < deadline.loginMs))
        throw new RetrySoonError(f.message, { cause: err });
      if (f.message !== (err as Error).message) throw new Error(f.message, { cause: err });
      throw err;
    }
  }

  /**
   * A reconnect attempt's whole deadline: reconnect_delay (at least RECONNECT_LOGIN_MIN_MS, at most
   * the session's login timeout). A login sent into a black hole is not answered even once the path
   * delivers again (the CM resends its REQ only after seconds), so it is abandoned and the next
   * attempt, with a new connection, follows at once. Within this deadline the wait for the answer
   * once the request is sent follows the target's recent answer times (src/fsm/login-answer-wait.ts):
   * under TCG a whole connect took 57-661 ms (median 60-76 ms), and the wait never drops below what
   * this target has needed.
   */
  private attemptLoginTimeoutMs(): number {
    const max = this.opts.session.loginTimeoutMs ?? DEFAULT_LOGIN_TIMEOUT_MS;
    const delay = this.rport.tmo.reconnectDelay;
    if (delay === 'off') return max;
    return Math.min(max, Math.max(RECONNECT_LOGIN_MIN_MS, Math.round(delay * 1000)));
  }

  /** login(), again at once with a new connection after a stale-connection reject (bounded). */
  private async loginRetryingStale(signal: AbortSignal, deadline?: LoginDeadline): Promise<SrpSession> {
    for (let stale = 0; ; stale++) {
      try {
        return await this.login(signal, deadline);
      } catch (err) {
        const f = classifyLoginFailure(err);
        if (signal.aborted || f.kind !== 'stale-connection' || stale >= STALE_CONNECTION_RETRIES) throw err;
        this.log.warn({ retry: stale + 1 }, `${f.message}: retrying with a new connection`);
      }
    }
  }

  /**
   * Every LUN behind the attempt's session must be the disk recorded at first login. The probe
   * runs on that session alone; it becomes the I/O session only when every LUN matches.
   */
  private async verifyIdentity(attempt: number, signal: AbortSignal): Promise<void> {
    const candidate = this.candidate;
    if (!candidate) throw new Error('no new session to verify');
    const probeVia: ScsiExecutor = { execute: (cmd) => candidate.execute(cmd) };
    const differences: string[] = [];
    const probes: [LunEntry, ProbeResult][] = [];
    for (const [lun, entry] of this.luns) {
      const probe = await new ScsiDisk(probeVia, { lun }).probe();
      if (signal.aborted || this.candidate !== candidate) throw new Error('identity check aborted');
      const cmp = sameIdentity(entry.identity, probe.identity);
      if (!cmp.same) differences.push(...cmp.differences.map((d) => `LUN ${lun.toString(16)}: ${d}`));
      probes.push([entry, probe]);
    }
    if (differences.length > 0) {
      // Never send I/O to a different disk: drop this session now.
      this.dropCandidate();
      throw new IdentityMismatchError(differences);
    }
    const events: [bigint, LunEvent][] = [];
    for (const [entry, probe] of probes) {
      const { cache, writeProtect, capacity } = probe;
      const lun = entry.disk.lun;
      if (entry.disk.adoptWriteProtect(writeProtect)) {
        this.log.warn(
          { lun: lun.toString(16), writeProtected: writeProtect.writeProtected },
          `the LU's write protect (WP) changed across the reconnect: now ${writeProtect.writeProtected ? 'on' : 'off'}`,
        );
        events.push([lun, { type: 'write-protect', writeProtected: writeProtect.writeProtected }]);
      }
      const from = entry.disk.geometry.blockCount;
      if (capacity.blockCount > from) {
        entry.disk.adoptCapacity(capacity);
        entry.identity = { ...entry.identity, blockCount: capacity.blockCount };
        this.log.info({ lun: lun.toString(16), from, to: capacity.blockCount }, 'the LUN grew across the reconnect');
        events.push([lun, { type: 'grown', from, to: capacity.blockCount }]);
      }
      if (entry.disk.adoptCache(cache)) {
        this.log.warn(
          {
            lun: entry.disk.lun.toString(16),
            fua: entry.disk.limits.fua,
            writeCache: cache.writeCacheEnabled,
            dpoFua: cache.dpoFua,
          },
          `write cache mode changed across the reconnect: FUA is now ${entry.disk.limits.fua}`,
        );
      }
    }
    this.candidate = undefined;
    this.install(candidate);
    this.log.info({ attempt, luns: this.luns.size }, 'identity verified');
    for (const [lun, ev] of events) this.opts.onLunEvent?.(lun, ev);
  }

  private onAction(a: RportAction): void {
    switch (a.type) {
      case 'state-changed':
        this.log.info({ from: a.from, to: a.to, cause: a.cause }, `state ${a.from} -> ${a.to}`);
        break;
      case 'reconnect-scheduled':
        this.log.info(
          { attempt: a.attempt, delayMs: a.delayMs },
          `reconnect attempt ${a.attempt}, next in ${(a.delayMs / 1000).toFixed(1)} s`,
        );
        break;
      case 'fail-io':
        this.log.warn({ reason: a.reason }, a.message);
        break;
      default:
        break;
    }
  }
}

/** An executor that lets at most `max` commands be outstanding at once; the others queue in order. */
export function limitExecutor(inner: ScsiExecutor, max: number): ScsiExecutor & { readonly outstanding: number } {
  let outstanding = 0;
  const waiting: (() => void)[] = [];
  const release = () => {
    outstanding--;
    waiting.shift()?.();
  };
  return {
    get outstanding() {
      return outstanding;
    },
    async execute(cmd: ScsiCommand): Promise<ScsiResult> {
      if (outstanding >= max) await new Promise<void>((r) => waiting.push(r));
      outstanding++;
      try {
        return await inner.execute(cmd);
      } finally {
        release();
      }
    },
  };
}
