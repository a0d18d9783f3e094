// SRP session against the test SRP target over the loopback transport: login negotiation, I/O with
// data verification (immediate, direct, indirect), credits, task management, target requests,
// logouts, disconnects, login rejects and malformed IUs from the target.
import t, { type Test } from 'tap';
import { createLoopbackPair, type LoopbackOptions, type LoopbackPair } from '../src/initiator/loopback.js';
import {
  SrpLoginRejectedError,
  SrpSession,
  SrpTaskManagementError,
  type SrpSessionOptions,
} from '../src/initiator/srp-session.js';
import { SrpTestTarget, type SrpTestTargetOptions } from '../src/testing/srp-target.js';
import { RamScsiLun } from '../src/testing/scsi-lun.js';
import { TransportError, type ScsiResult, type ScsiTargetLun } from '../src/initiator/scsi-executor.js';
import {
  SrpLoginRejReason,
  SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED,
  SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT,
  SRP_T_LOGOUT_INACTIVE_CHANNEL,
  SRP_TSK_CLEAR_ACA,
  SRP_CMD,
} from '../src/initiator/srp-constants.js';
import { decodeCmd, encodeRsp, encodeCredReq, type SrpDirectBuf } from '../src/initiator/srp-iu.js';

const LUN0 = 0x0000000000000000n;
const LUN1 = 0x0001000000000000n;
const initiatorPortId = Buffer.from('0123456789abcdef0011223344556677', 'hex');
const targetPortId = Buffer.from('fedcba98765432108899aabbccddeeff', 'hex');

/** READ(16) / WRITE(16) CDBs written out by hand (SBC-3 layout). */
function read16(lba: number, blocks: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x88;
  c.writeBigUInt64BE(BigInt(lba), 2);
  c.writeUInt32BE(blocks, 10);
  return c;
}
function write16(lba: number, blocks: number): Buffer {
  const c = read16(lba, blocks);
  c[0] = 0x8a;
  return c;
}
const inquiry = (alloc: number) => Buffer.from([0x12, 0, 0, alloc >> 8, alloc & 0xff, 0]);
const tur = () => Buffer.alloc(6);

/** Deterministic data pattern. */
function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await sleep(2);
  }
}

interface Setup {
  pair: LoopbackPair;
  target: SrpTestTarget;
  session: SrpSession;
  lun0: RamScsiLun;
  lun1: RamScsiLun;
}
async function setup(
  o: { target?: Partial<SrpTestTargetOptions>; session?: Partial<SrpSessionOptions>; loopback?: LoopbackOptions } = {},
): Promise<Setup> {
  const lun0 = new RamScsiLun({ blockSize: 512, blocks: 4096, serial: 'LUN0' });
  const lun1 = new RamScsiLun({ blockSize: 4096, blocks: 512, serial: 'LUN1' });
  const target = new SrpTestTarget({
    luns: [
      [LUN0, lun0],
      [LUN1, lun1],
    ],
    ...o.target,
  });
  const pair = createLoopbackPair(o.loopback);
  target.accept(pair.target);
  const session = await SrpSession.login(pair.initiator, { initiatorPortId, targetPortId, ...o.session });
  return { pair, target, session, lun0, lun1 };
}

/**
 * Nothing but the command slots' regions is registered: every per-command registration was
 * released. (After close() nothing at all is.)
 */
function onlySlotRegions(t: Test, pair: LoopbackPair, s: SrpSession, msg = 'slots only'): void {
  t.ok(s.counters.slotRegions > 0, 'command slots registered');
  t.equal(pair.initiator.registeredRegions, s.counters.slotRegions, msg);
}

async function write(s: SrpSession, lun: bigint, lba: number, data: Buffer, bs: number): Promise<ScsiResult> {
  return s.execute({ lun, cdb: write16(lba, data.length / bs), dataOut: data });
}
async function read(
  s: SrpSession,
  lun: bigint,
  lba: number,
  len: number,
  bs: number,
  dataIn?: Buffer,
): Promise<ScsiResult> {
  return s.execute({ lun, cdb: read16(lba, len / bs), dataInLength: len, ...(dataIn ? { dataIn } : {}) });
}

t.test('login negotiates IU lengths, credits, formats, immediate data', async (t) => {
  const { session, target, pair } = await setup();
  const L = session.loginResult;
  t.equal(session.state, 'live');
  t.equal(L.loginForm, 'ib-cm');
  t.equal(L.requestedItIuLen, 68 + 8192, 'ib_srp srp_max_it_iu_len with immediate data');
  t.equal(L.maxItIuLen, 8260);
  t.equal(L.maxTiIuLen, 1024);
  t.equal(L.initialReqLim, 32);
  t.equal(L.bufFmt, 6);
  t.equal(L.immediateData, true);
  t.equal(L.immDataOffset, 68);
  t.equal(L.multichanResult, 'SRP_LOGIN_RSP_MULTICHAN_NO_CHAN');
  t.equal(session.counters.reqLim, 32);
  t.equal(target.stats.logins, 1);
  await session.close();
  t.equal(session.state, 'closed');
  t.equal(target.stats.iLogouts, 1, 'orderly close sends SRP_I_LOGOUT');
  t.equal(pair.initiator.state, 'closed');
});

t.test('login over RDMA/CM uses the 56-byte srp_login_req_rdma', async (t) => {
  const { session, target } = await setup({ loopback: { loginForm: 'rdma-cm' } });
  t.equal(session.loginResult.loginForm, 'rdma-cm');
  t.equal(target.channels[0]!.login.reqItIuLen, 8260);
  t.same(target.channels[0]!.login.initiatorPortId, initiatorPortId);
  const r = await session.execute({ lun: LUN0, cdb: tur() });
  t.equal(r.status, 0);
  await session.close();
});

t.test('I/O with data verification: immediate, direct, caller buffers, residuals', async (t) => {
  const { session, target, pair, lun0 } = await setup();
  // 4 KiB write fits immediate data (8 KiB granted); 64 KiB goes by RDMA READ of a direct descriptor
  const small = pattern(4096, 1);
  const big = pattern(65536, 2);
  t.equal((await write(session, LUN0, 10, small, 512)).status, 0);
  t.equal((await write(session, LUN0, 100, big, 512)).status, 0);
  t.equal(session.counters.immediateDataCommands, 1);
  t.equal(target.stats.immediateDataCommands, 1);
  t.same(lun0.peek(10, 8), small, 'target saw the immediate data');
  t.same(lun0.peek(100, 128), big, 'target saw the RDMA-read data');
  const r1 = await read(session, LUN0, 100, 65536, 512);
  t.equal(r1.status, 0);
  t.equal(r1.residual, 0);
  t.same(r1.dataIn, big, 'data read back');
  // caller-provided destination: result is a view of it
  const dst = Buffer.alloc(8192, 0xee);
  const r2 = await read(session, LUN0, 10, 4096, 512, dst);
  t.equal(r2.dataIn!.buffer, dst.buffer);
  t.equal(r2.dataIn!.byteOffset, dst.byteOffset);
  t.same(dst.subarray(0, 4096), small);
  t.ok(
    dst.subarray(4096).every((b) => b === 0xee),
    'nothing written past dataInLength',
  );
  // 4096-byte-block LUN
  const b1 = pattern(3 * 4096, 3);
  await write(session, LUN1, 7, b1, 4096);
  t.same((await read(session, LUN1, 7, 3 * 4096, 4096)).dataIn, b1);
  // underflow: INQUIRY returns less than the 255 bytes allowed
  const inq = await session.execute({ lun: LUN0, cdb: inquiry(255), dataInLength: 255 });
  t.equal(inq.status, 0);
  t.ok(inq.residual > 0, `underflow residual ${inq.residual}`);
  t.equal(inq.dataIn!.length, 255 - inq.residual);
  t.equal(inq.dataIn![0]! & 0x1f, 0, 'direct access block device');
  // CHECK CONDITION with sense is a result: LBA out of range
  const bad = await read(session, LUN0, 4095, 1024, 512);
  t.equal(bad.status, 2);
  t.equal(bad.sense![2]! & 0xf, 0x5, 'ILLEGAL REQUEST');
  t.equal(bad.sense![12], 0x21, 'LBA out of range');
  // unknown LUN
  const nolun = await session.execute({ lun: 0x0005000000000000n, cdb: tur() });
  t.equal(nolun.status, 2);
  t.equal(nolun.sense![12], 0x25, 'LOGICAL UNIT NOT SUPPORTED');
  // REPORT LUNS at target level
  const rl = Buffer.alloc(12);
  rl[0] = 0xa0;
  rl.writeUInt32BE(256, 6);
  const luns = await session.execute({ lun: LUN0, cdb: rl, dataInLength: 256 });
  t.equal(luns.dataIn!.readUInt32BE(0), 16);
  t.equal(luns.dataIn!.readBigUInt64BE(16), LUN1);
  onlySlotRegions(t, pair, session, 'every per-command registration released');
  t.equal(session.counters.commandsFailed, 0);
  t.equal(target.stats.creditViolations, 0);
  await session.close();
  t.equal(pair.initiator.registeredRegions, 0, 'close releases the slots too');
});

t.test('transfers larger than one registration use indirect descriptors', async (t) => {
  const { session, target, pair, lun0 } = await setup({
    loopback: { maxRegionSize: 4096 },
    session: { immediateData: false },
  });
  t.equal(session.loginResult.immediateData, false);
  const data = pattern(5 * 4096 + 1024, 9);
  t.equal((await write(session, LUN0, 0, data, 512)).status, 0);
  t.same(lun0.peek(0, data.length / 512), data);
  const r = await read(session, LUN0, 0, data.length, 512);
  t.same(r.dataIn, data);
  t.equal(session.counters.indirectCommands, 2);
  t.equal(target.stats.indirectCommands, 2);
  onlySlotRegions(t, pair, session);
  // more pieces than cmd_sg_entries: refused without touching the channel
  await t.rejects(write(session, LUN0, 0, pattern(13 * 4096, 1), 512), { code: 'protocol' });
  t.equal((await session.execute({ lun: LUN0, cdb: tur() })).status, 0);
  await session.close();
});

t.test('immediate data not granted by the target: writes use RDMA READ', async (t) => {
  const { session, target } = await setup({ target: { immediateData: false } });
  t.equal(session.loginResult.immediateData, false);
  await write(session, LUN0, 0, pattern(512, 4), 512);
  t.equal(target.stats.immediateDataCommands, 0);
  t.equal(session.counters.immediateDataCommands, 0);
  await session.close();
});

t.test('credit exhaustion and recovery: 300 commands through 4 credits', async (t) => {
  const { session, target, pair } = await setup({ target: { reqLim: 4 }, loopback: { delayMs: { toInitiator: 1 } } });
  const ops: Promise<unknown>[] = [];
  const datas = new Map<number, Buffer>();
  for (let i = 0; i < 150; i++) {
    const d = pattern(1024, 100 + i);
    datas.set(i, d);
    ops.push(write(session, LUN0, i * 2, d, 512));
  }
  await until(() => session.counters.queued > 0, 500).then(() => t.pass('commands queued behind credits'));
  await Promise.all(ops);
  const reads = await Promise.all([...datas.keys()].map((i) => read(session, LUN0, i * 2, 1024, 512)));
  reads.forEach((r, i) => {
    if (!r.dataIn!.equals(datas.get(i)!)) t.fail(`lba ${i * 2} mismatch`);
  });
  t.equal(target.stats.creditViolations, 0, 'never more requests than credits');
  t.ok(target.stats.maxOutstanding <= 3, `at most req_lim - 1 commands at the target (${target.stats.maxOutstanding})`);
  t.ok(session.counters.zeroReqLim > 0, 'stalls counted');
  t.equal(session.counters.reqLim, 4, 'all credits back');
  t.equal(session.counters.commandsCompleted, 300);
  onlySlotRegions(t, pair, session);
  await session.close();
  t.equal(pair.initiator.registeredRegions, 0);
});

t.test('withheld credits come back with SRP_CRED_REQ, which is answered', async (t) => {
  const { session, target } = await setup({ target: { reqLim: 4, withholdCredits: true } });
  const ops = Array.from({ length: 10 }, (_, i) =>
    session.execute({ lun: LUN0, cdb: tur(), timeoutMs: 5000 }).then(() => i),
  );
  await until(() => session.counters.commandsCompleted === 3);
  await sleep(30);
  t.equal(session.counters.commandsCompleted, 3, 'stuck with the reserve credit only');
  t.equal(session.counters.reqLim, 1);
  t.equal(session.counters.queued, 7);
  target.withholdCredits = false;
  target.sendCredReq();
  t.same((await Promise.all(ops)).length, 10);
  await until(() => target.stats.credRsps === 1);
  t.equal(session.counters.credReqs, 1);
  t.equal(target.stats.creditViolations, 0);
  t.equal(session.counters.reqLim, 4);
  await session.close();
});

t.test('a stuck command is aborted with ABORT TASK on timeout', async (t) => {
  const { session, target, pair } = await setup();
  const stuckCdb = (cdb: Buffer) => cdb[0] === 0x88 && cdb.readBigUInt64BE(2) === 999n;
  target.commandHook = (_lun, cdb) => (stuckCdb(cdb) ? 'stall' : undefined);
  // what the target was handed for the stuck command's data-in
  let handed: SrpDirectBuf | undefined;
  pair.faults.drop = (dir, iu) => {
    if (dir === 'toTarget' && iu[0] === SRP_CMD) {
      const m = decodeCmd(iu, 0, undefined, { immDataOffset: session.loginResult.immDataOffset });
      if (stuckCdb(m.cdb) && m.dataIn.format === 'direct') handed = { ...m.dataIn.buf };
    }
    return false;
  };
  const regs = session.counters.memoryRegistrations;
  const dst = Buffer.alloc(512, 0x11);
  const stuck = session.execute({ lun: LUN0, cdb: read16(999, 1), dataInLength: 512, dataIn: dst, timeoutMs: 80 });
  const others = Array.from({ length: 8 }, (_, i) => write(session, LUN0, i, pattern(512, i), 512));
  await t.rejects(stuck, { code: 'aborted', message: /ABORT TASK succeeded/ });
  await Promise.all(others);
  t.equal(target.stats.tasks, 1);
  t.equal(target.stats.tmAborted, 1);
  t.same(target.outstandingTags(), []);
  t.equal(session.counters.abortsSent, 1);
  t.equal(session.counters.abortsSucceeded, 1);
  t.equal(session.counters.commandTimeouts, 1);
  onlySlotRegions(t, pair, session, 'aborted command memory deregistered');
  t.equal(session.counters.memoryRegistrations, regs + 1, "the aborted command's slot got a new region");
  t.ok(
    dst.every((b) => b === 0x11),
    'aborted destination untouched',
  );
  // the aborted task's credit came back with the task management response
  t.equal(session.counters.reqLim, 32);
  t.equal((await read(session, LUN0, 3, 512, 512)).dataIn!.equals(pattern(512, 3)), true);
  // a target writing late to what it was handed hits a remote access error, not a later command's data
  t.ok(handed, 'the stuck command had a direct data-in descriptor');
  const late = pair.target.rdmaWrite(handed!.va, handed!.key, Buffer.alloc(512, 0x66));
  await t.rejects(late, { code: 'protocol', message: /remote access error/ });
  await until(() => session.state === 'disconnected');
  t.ok(
    dst.every((b) => b === 0x11),
    'aborted destination still untouched',
  );
});

t.test('ABORT TASK that gets no answer fails the command after the TM timeout', async (t) => {
  const { session, target } = await setup({ session: { tmTimeoutMs: 60 } });
  target.commandHook = () => 'stall';
  target.tmBehavior = 'ignore';
  const start = Date.now();
  await t.rejects(session.execute({ lun: LUN0, cdb: tur(), timeoutMs: 50 }), {
    code: 'timeout',
    message: /ABORT TASK failed: .*no answer within 60 ms/,
  });
  t.ok(Date.now() - start >= 100);
  t.equal(session.counters.abortsFailed, 1);
  t.equal(session.counters.tmTimeouts, 1);
  t.equal(session.counters.inFlight, 0);
  target.tmBehavior = 'fail';
  await t.rejects(session.lunReset(LUN0), SrpTaskManagementError);
  await t.rejects(session.taskManagement(SRP_TSK_CLEAR_ACA, LUN0, 0), /SRP_TSK_MGMT_FAILED/);
  target.tmBehavior = 'normal';
  await t.rejects(session.taskManagement(SRP_TSK_CLEAR_ACA, LUN0, 0), /SRP_TSK_MGMT_FUNC_NOT_SUPP/);
  await session.close();
});

t.test('LUN RESET aborts the outstanding commands of that LUN only', async (t) => {
  const { session, target } = await setup();
  target.commandHook = (lun) => (lun === LUN1 ? 'stall' : undefined);
  const a = session.execute({ lun: LUN1, cdb: tur() });
  const b = session.execute({ lun: LUN1, cdb: read16(0, 1), dataInLength: 4096 });
  const c = session.execute({ lun: LUN0, cdb: tur() });
  t.equal((await c).status, 0);
  await until(() => target.outstandingTags().length === 2);
  await session.lunReset(LUN1);
  await t.rejects(a, { code: 'aborted' });
  await t.rejects(b, { code: 'aborted' });
  t.equal(target.stats.tmAborted, 2);
  t.equal(session.counters.lunResets, 1);
  t.equal(session.counters.inFlight, 0);
  t.equal(session.counters.reqLim, 32, 'credits of the aborted tasks returned');
  target.commandHook = undefined;
  t.equal((await session.execute({ lun: LUN1, cdb: tur() })).status, 0);
  await session.close();
});

t.test('every login reject reason surfaces as a clear error', async (t) => {
  for (const [name, reason] of Object.entries(SrpLoginRejReason)) {
    const target = new SrpTestTarget({ luns: [] });
    target.rejectLogin = reason;
    const pair = createLoopbackPair();
    target.accept(pair.target);
    const err = await SrpSession.login(pair.initiator, { initiatorPortId, targetPortId }).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof SrpLoginRejectedError, `${name}: SrpLoginRejectedError`);
    const e = err as SrpLoginRejectedError;
    t.equal(e.reason, reason);
    t.equal(e.reasonName, name);
    t.match(e.message, new RegExp(`^SRP login rejected: ${name} \\(0x${reason.toString(16).padStart(8, '0')}\\): \\w`));
    t.equal(pair.initiator.state, 'closed');
  }
  const unknown = new SrpTestTarget({ luns: [] });
  unknown.rejectLogin = 0x00010042;
  const p2 = createLoopbackPair();
  unknown.accept(p2.target);
  await t.rejects(
    SrpSession.login(p2.initiator, { initiatorPortId, targetPortId }),
    /SRP_LOGIN_REJ_UNKNOWN\(0x00010042\)/,
  );
});

t.test('login rejects the target decides itself', async (t) => {
  const tryLogin = async (
    topts: Partial<SrpTestTargetOptions>,
    sopts: Partial<SrpSessionOptions> = {},
    target?: SrpTestTarget,
  ) => {
    const tgt = target ?? new SrpTestTarget({ luns: [], ...topts });
    const pair = createLoopbackPair();
    tgt.accept(pair.target);
    return SrpSession.login(pair.initiator, { initiatorPortId, targetPortId, ...sopts });
  };
  const reasonOf = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (e: unknown) => (e as SrpLoginRejectedError).reason,
    );
  t.equal(await reasonOf(tryLogin({ maxItIuLen: 1000 })), SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE);
  const ok = await tryLogin({ maxItIuLen: 1000 }, { maxImmData: 512 });
  t.equal(ok.loginResult.maxItIuLen, 68 + 512);
  await ok.close();
  t.equal(await reasonOf(tryLogin({ bufFmt: 0x08 })), SRP_LOGIN_REJ_UNSUPPORTED_DESCRIPTOR_FMT);
  t.equal(
    await reasonOf(tryLogin({ multichannel: false }, { multichannel: 'multi' })),
    SRP_LOGIN_REJ_MULTI_CHANNEL_UNSUPPORTED,
  );
  const shared = new SrpTestTarget({ luns: [], maxChannels: 1 });
  const first = await tryLogin({}, { multichannel: 'multi' }, shared);
  t.equal(first.loginResult.multichanResult, 'SRP_LOGIN_RSP_MULTICHAN_NO_CHAN');
  t.equal(await reasonOf(tryLogin({}, { multichannel: 'multi' }, shared)), SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED);
  await first.close();
  // nobody listening / nobody answering
  const refused = createLoopbackPair();
  await t.rejects(SrpSession.login(refused.initiator, { initiatorPortId, targetPortId }), { code: 'disconnected' });
  const silent = createLoopbackPair();
  new SrpTestTarget({ luns: [] }).accept(silent.target);
  silent.faults.blackHole = true;
  await t.rejects(SrpSession.login(silent.initiator, { initiatorPortId, targetPortId, loginTimeoutMs: 50 }), {
    code: 'timeout',
  });
});

t.test('MULTI-CHANNEL action: a SINGLE login terminates the old channel (T_LOGOUT)', async (t) => {
  const target = new SrpTestTarget({ luns: [[LUN0, new RamScsiLun()]] });
  const p1 = createLoopbackPair();
  const p2 = createLoopbackPair();
  target.accept(p1.target);
  target.accept(p2.target);
  const s1 = await SrpSession.login(p1.initiator, { initiatorPortId, targetPortId });
  const logouts: string[] = [];
  s1.on('logout', (e) => logouts.push(e.name));
  const s2 = await SrpSession.login(p2.initiator, { initiatorPortId, targetPortId });
  t.equal(s2.loginResult.multichanResult, 'SRP_LOGIN_RSP_MULTICHAN_TERMINATED');
  await until(() => s1.state === 'disconnected');
  t.same(logouts, ['SRP_T_LOGOUT_MULTICHANNEL_ACTION']);
  await t.rejects(s1.execute({ lun: LUN0, cdb: tur() }), { code: 'disconnected' });
  t.equal((await s2.execute({ lun: LUN0, cdb: tur() })).status, 0);
  await s2.close();
});

t.test('SRP_AER_REQ is answered and surfaced', async (t) => {
  const { session, target } = await setup();
  const events: { lun: bigint; sense: Buffer }[] = [];
  session.on('aer', (e) => events.push(e));
  const sense = Buffer.from('70000600000000' + '0a' + '00000000' + '2a09' + '00000000', 'hex');
  target.sendAer(LUN1, sense);
  await until(() => target.stats.aerRsps === 1);
  t.equal(events.length, 1);
  t.equal(events[0]!.lun, LUN1);
  t.same(events[0]!.sense, sense);
  t.equal(session.counters.aerReqs, 1);
  // a CRED_REQ with extra credits raises req_lim
  target.sendCredReq(5);
  await until(() => target.stats.credRsps === 1);
  t.equal(session.counters.reqLim, 37);
  await session.close();
});

t.test('SRP_T_LOGOUT fails outstanding commands with a clear reason', async (t) => {
  const { session, target } = await setup();
  target.commandHook = () => 'stall';
  const disconnects: TransportError[] = [];
  session.on('disconnect', (r) => disconnects.push(r));
  const p = session.execute({ lun: LUN0, cdb: tur() });
  await until(() => target.outstandingTags().length === 1);
  target.logout(SRP_T_LOGOUT_INACTIVE_CHANNEL);
  await t.rejects(p, { code: 'disconnected', message: /target logged out: SRP_T_LOGOUT_INACTIVE_CHANNEL/ });
  t.equal(session.state, 'disconnected');
  t.equal(disconnects.length, 1);
  await t.rejects(session.execute({ lun: LUN0, cdb: tur() }), TransportError);
});

t.test('channel loss fails everything outstanding and queued', async (t) => {
  const { session, target, pair } = await setup({ target: { reqLim: 3 } });
  target.commandHook = () => 'stall';
  const ps = Array.from({ length: 5 }, () => session.execute({ lun: LUN0, cdb: read16(0, 1), dataInLength: 512 }));
  await until(() => target.outstandingTags().length === 2);
  t.equal(session.counters.queued, 3);
  pair.disconnect('link down');
  for (const p of ps) await t.rejects(p, { code: 'disconnected', message: /link down/ });
  t.equal(session.state, 'disconnected');
  t.equal(session.counters.inFlight, 0);
  t.equal(pair.initiator.registeredRegions, 0);
});

t.test('close() lets outstanding commands finish, then logs out', async (t) => {
  const { session, target } = await setup({ target: {} });
  target.responseDelayMs = 30;
  const p = session.execute({ lun: LUN0, cdb: tur() });
  const closing = session.close();
  await t.rejects(session.execute({ lun: LUN0, cdb: tur() }), { code: 'closed' });
  t.equal((await p).status, 0, 'in-flight command completed');
  await closing;
  t.equal(target.stats.iLogouts, 1);
  t.equal(session.state, 'closed');
});

t.test('black hole: timeout, ABORT TASK lost, command fails; nothing hangs', async (t) => {
  const { session, pair } = await setup({ session: { tmTimeoutMs: 50 } });
  pair.faults.blackHole = true;
  await t.rejects(session.execute({ lun: LUN0, cdb: tur(), timeoutMs: 50 }), { code: 'timeout' });
  t.equal(session.counters.abortsFailed, 1);
  pair.disconnect();
  t.equal(session.state, 'disconnected');
});

t.test('malformed IUs from the target are counted and corrupt nothing', async (t) => {
  const warnings: string[] = [];
  const logger = {
    debug() {},
    info() {},
    error() {},
    warn: (o: object, msg?: string) => {
      warnings.push(`${msg} ${JSON.stringify(o)}`);
    },
  };
  const { session, target, pair } = await setup({ target: { reqLim: 8 }, session: { logger } });
  target.responseDelayMs = 15;
  const datas = Array.from({ length: 24 }, (_, i) => pattern(2048, 500 + i));
  await Promise.all(datas.map((d, i) => write(session, LUN0, i * 4, d, 512)));
  const reads = datas.map((_, i) => read(session, LUN0, i * 4, 2048, 512));
  await until(() => target.outstandingTags().length > 0);
  const inflight = target.outstandingTags();
  const rsp = (tag: bigint, delta: number) =>
    encodeRsp({ solNot: 0, reqLimDelta: delta, tag, flags: 0, status: 0, dataOutResCnt: 0, dataInResCnt: 0 });
  // wrong length: a truncated SRP_RSP of an in-flight command, and a sense length beyond the IU
  target.sendRaw(rsp(inflight[0]!, 1).subarray(0, 20));
  const lying = rsp(inflight[0]!, 1000);
  lying[18] = 0x02;
  lying.writeUInt32BE(500, 28);
  target.sendRaw(lying);
  // unknown opcodes, and a request type that only initiators send
  target.sendRaw(Buffer.from('77000000000000000000000000000001', 'hex'));
  target.sendRaw(Buffer.concat([Buffer.from([0x02]), Buffer.alloc(63)]));
  target.sendRaw(Buffer.alloc(0));
  // responses for tags never issued (one with a huge credit delta), and a TM-looking tag
  target.sendRaw(rsp(0x123456789n, 1000));
  target.sendRaw(rsp(0xffff_ffff_ffff_fff0n, 1000));
  // a malformed CRED_REQ and an IU larger than max_ti_iu_len
  target.sendRaw(encodeCredReq({ solNot: 0, reqLimDelta: 50, tag: 1n }).subarray(0, 12));
  target.sendRaw(Buffer.concat([rsp(inflight[0]!, 1), Buffer.alloc(2000)]));
  const results = await Promise.all(reads);
  results.forEach((r, i) => {
    if (r.status !== 0 || !r.dataIn!.equals(datas[i]!)) t.fail(`read ${i} corrupted`);
  });
  t.pass('24 reads verified');
  const c = session.counters;
  t.equal(c.malformedIus, 5, 'truncated RSP, lying sense length, empty IU, short CRED_REQ, oversize IU');
  t.equal(c.unknownOpcodes, 2);
  t.equal(c.unknownTags, 2);
  t.equal(c.reqLim, 8, 'no credits taken from bogus IUs');
  t.ok(
    warnings.some((w) => /malformed IU from target ignored .*exceed IU/.test(w)),
    'malformed IU logged with the reason',
  );
  t.ok(
    warnings.some((w) => /unexpected IU type .*SRP_UNKNOWN_OPCODE\(0x77\)/.test(w)),
    'unknown opcode logged by name',
  );
  t.ok(
    warnings.some((w) => /unknown tag ignored .*123456789/.test(w)),
    'unknown tag logged',
  );
  t.equal(c.commandsFailed, 0);
  t.equal(target.stats.creditViolations, 0);
  // a duplicate response for a completed command is an unknown tag too
  target.sendRaw(rsp(inflight[0]!, 1));
  await until(() => session.counters.unknownTags === 3);
  t.equal(session.counters.reqLim, 8);
  t.equal((await session.execute({ lun: LUN0, cdb: tur() })).status, 0);
  onlySlotRegions(t, pair, session);
  await session.close();
  t.equal(pair.initiator.registeredRegions, 0);
});

t.test(
  'a remote access error (late RDMA to deregistered memory) kills the channel, not the caller buffer',
  async (t) => {
    const { session, pair } = await setup();
    const buf = Buffer.alloc(4096, 0x33);
    const mr = pair.initiator.registerBuffer(buf);
    pair.initiator.deregisterBuffer(mr);
    await t.rejects(pair.target.rdmaWrite(mr.va, mr.rkey, Buffer.alloc(16, 0x44)), {
      code: 'protocol',
      message: /remote access error/,
    });
    t.ok(buf.every((b) => b === 0x33));
    await until(() => session.state === 'disconnected');
    t.equal(pair.stats.accessErrors, 1);
  },
);

t.test('chosen sense data and target-side failures reach the caller as results', async (t) => {
  const { session, target, lun0 } = await setup();
  // a chosen reply from the target's command hook
  const sense = Buffer.from('7000060000000000' + '0a000000' + '2900' + '00000000', 'hex');
  target.commandHook = (_lun, cdb) => (cdb[0] === 0x00 ? { status: 2, sense } : undefined);
  const r = await session.execute({ lun: LUN0, cdb: tur() });
  t.equal(r.status, 2);
  t.same(r.sense, sense);
  target.commandHook = undefined;
  // the LUN emulator's own fault injection travels the same way
  lun0.injectSense(0x02, 0x04, 0x01);
  const nr = await session.execute({ lun: LUN0, cdb: tur() });
  t.equal(nr.status, 2);
  t.same([nr.sense![2]! & 0xf, nr.sense![12], nr.sense![13]], [0x02, 0x04, 0x01], 'NOT READY, BECOMING READY');
  // BUSY without sense
  target.commandHook = () => ({ status: 0x08 });
  const busy = await session.execute({ lun: LUN0, cdb: tur() });
  t.equal(busy.status, 0x08);
  t.equal(busy.sense, undefined);
  // a LUN that throws yields HARDWARE ERROR / INTERNAL TARGET FAILURE instead of a hang
  target.commandHook = undefined;
  target.luns.set(LUN1, {
    execute: () => {
      throw new Error('emulator bug');
    },
  });
  const hw = await session.execute({ lun: LUN1, cdb: tur(), timeoutMs: 1000 });
  t.equal(hw.status, 2);
  t.same([hw.sense![2], hw.sense![12]], [0x04, 0x44]);
  await session.close();
});

t.test('delayed responses: many commands overlap, each completes once', async (t) => {
  const { session, target } = await setup();
  target.responseDelayMs = 25;
  const start = Date.now();
  const rs = await Promise.all(Array.from({ length: 20 }, () => session.execute({ lun: LUN0, cdb: tur() })));
  const ms = Date.now() - start;
  t.equal(rs.length, 20);
  t.ok(ms >= 20 && ms < 500, `20 overlapping commands took ${ms} ms`);
  t.equal(session.counters.commandsCompleted, 20);
  t.equal(session.counters.reqLim, 32);
  await session.close();
});

/* ------------------------------------------------------------ command slots */

t.test('steady state: data through the command slots, no memory registered per command', async (t) => {
  const { session, target, pair, lun0 } = await setup({ target: { immediateData: true } });
  const regs = session.counters.memoryRegistrations;
  t.ok(regs > 0 && regs === session.counters.slotRegions, `slots registered at login (${regs})`);
  // reads and writes of every size a slot carries, immediate data and RDMA READ, 15 at a time
  const sizes = [512, 4096, 8192, 16384, 65536, 131072];
  for (let round = 0; round < 10; round++) {
    await Promise.all(
      Array.from({ length: 15 }, async (_, i) => {
        const len = sizes[(round + i) % sizes.length]!;
        const lba = i * 256;
        const data = pattern(len, round * 100 + i);
        t.equal((await write(session, LUN0, lba, data, 512)).status, 0);
        const r = await read(session, LUN0, lba, len, 512, Buffer.alloc(len));
        if (!r.dataIn!.equals(data) || !lun0.peek(lba, len / 512).equals(data)) t.fail(`round ${round}, ${i}: differs`);
      }),
    );
  }
  const c = session.counters;
  t.equal(c.memoryRegistrations, regs, 'no registration after login');
  t.equal(c.perCommandRegistrations, 0);
  t.equal(c.commandsCompleted, 300);
  t.ok(c.immediateDataCommands > 0 && target.stats.immediateDataCommands > 0, 'small writes as immediate data');
  t.ok(pair.stats.rdmaReads > 0 && pair.stats.rdmaWrites > 0, 'larger ones by RDMA READ, reads by RDMA WRITE');
  onlySlotRegions(t, pair, session);
  await session.close();
  t.equal(pair.initiator.registeredRegions, 0);
});

t.test('a large transfer grows its slot once; later ones of that size register nothing', async (t) => {
  const { session, pair, lun0 } = await setup({ session: { slotDataBytes: 16384 } });
  const regs = session.counters.memoryRegistrations;
  for (let i = 0; i < 10; i++) {
    const big = pattern(65536 + 512 * i, 90 + i);
    t.equal((await write(session, LUN0, 0, big, 512)).status, 0);
    const r = await read(session, LUN0, 0, big.length, 512);
    if (!r.dataIn!.equals(big) || !lun0.peek(0, big.length / 512).equals(big)) t.fail(`round ${i}: differs`);
  }
  t.equal(session.counters.perCommandRegistrations, 0, 'no command registered its own memory');
  // one command at a time: the write and the read take at most two distinct slots
  const grown = session.counters.slotGrowths;
  t.ok(grown >= 1 && grown <= 2, `20 large commands grew ${grown} slot(s) once: the grown buffers are kept`);
  t.equal(session.counters.memoryRegistrations, regs + grown, 'one registration per grown buffer, none per command');
  onlySlotRegions(t, pair, session, 'the grown slot holds one region, the old one released');
  // a short read through the grown slot after a long write: zeroes, never the earlier data
  const short = await read(session, LUN0, 4096, 4096, 512, Buffer.alloc(4096));
  t.same(short.dataIn, lun0.peek(4096, 8), 'a short read returns what the target holds');
  // beyond maxSlotDataBytes (1 MiB by default): per-command memory, released after
  const huge = pattern(2 * 1024 * 1024, 99);
  t.equal((await write(session, LUN0, 0, huge, 512)).status, 0);
  t.equal(session.counters.perCommandRegistrations, 1, 'above the growth limit: registered per command');
  onlySlotRegions(t, pair, session, 'per-command registration released');
  await session.close();
  t.equal(pair.initiator.registeredRegions, 0);
});

t.test('a transfer larger than a slot may grow to registers its own memory (counted), then releases it', async (t) => {
  const { session, pair, lun0 } = await setup({ session: { slotDataBytes: 16384, maxSlotDataBytes: 16384 } });
  const regs = session.counters.memoryRegistrations;
  const big = pattern(65536, 77);
  t.equal((await write(session, LUN0, 0, big, 512)).status, 0);
  const r = await read(session, LUN0, 0, big.length, 512);
  t.same(r.dataIn, big, 'read back through per-command memory');
  t.same(lun0.peek(0, 128), big);
  t.equal(session.counters.perCommandRegistrations, 2, 'both commands registered their own memory');
  t.equal(session.counters.memoryRegistrations, regs + 2);
  onlySlotRegions(t, pair, session, 'per-command registrations released');
  // what fits still goes through a slot
  const small = pattern(16384, 78);
  await write(session, LUN0, 200, small, 512);
  t.same((await read(session, LUN0, 200, small.length, 512)).dataIn, small);
  t.equal(session.counters.perCommandRegistrations, 2);
  t.equal(session.counters.memoryRegistrations, regs + 2);
  await session.close();

  // no slot data at all: every data transfer registers per command, as before slots
  const none = await setup({ session: { slotDataBytes: 0 } });
  t.equal(none.session.counters.slotRegions, 0);
  await write(none.session, LUN0, 0, big, 512);
  t.same((await read(none.session, LUN0, 0, big.length, 512)).dataIn, big);
  t.equal(none.session.counters.perCommandRegistrations, 2);
  t.equal(none.pair.initiator.registeredRegions, 0);
  await none.session.close();
});

t.test('a late response for an earlier generation of a slot does not complete its current command', async (t) => {
  // one slot: every command has the tag generation × 1 + 0
  const { session, target } = await setup({ session: { queueSize: 1 } });
  const rsp = (tag: bigint, status: number) =>
    encodeRsp({
      solNot: 0,
      reqLimDelta: 1,
      tag,
      flags: 0,
      status,
      dataOutResCnt: 0,
      dataInResCnt: 0,
    });
  target.commandHook = () => 'stall';
  // A times out and is aborted: its tag is remembered as abandoned
  const a = session.execute({ lun: LUN0, cdb: tur(), timeoutMs: 30 });
  await until(() => target.outstandingTags().length === 1);
  const tagA = target.outstandingTags()[0]!;
  await t.rejects(a, { code: 'aborted' });
  // B takes the same slot, a newer generation
  let bDone = false;
  const b = session.execute({ lun: LUN0, cdb: tur(), timeoutMs: 5000 }).finally(() => {
    bDone = true;
  });
  await until(() => target.outstandingTags().length === 1);
  const tagB = target.outstandingTags()[0]!;
  t.not(tagB, tagA, 'a new tag for the same slot');
  t.equal(Number(tagB) % 1, Number(tagA) % 1, 'same slot');
  t.equal(tagB - tagA, 1n, 'next generation');
  // the target answers A late (status 8, BUSY): counted as late, B still outstanding
  target.sendRaw(rsp(tagA, 0x08));
  await until(() => session.counters.lateResponses === 1);
  // a response for a generation never issued is an unknown tag
  target.sendRaw(rsp(tagB + 5n, 0x08));
  await until(() => session.counters.unknownTags === 1);
  await sleep(20);
  t.notOk(bDone, 'B not completed by responses for other generations');
  t.equal(session.counters.inFlight, 1);
  // B's own response completes it
  target.sendRaw(rsp(tagB, 0));
  t.equal((await b).status, 0);
  t.equal(session.counters.lateResponses, 1);
  t.equal(session.counters.unknownTags, 1);
  const c = session.counters;
  t.equal(c.memoryRegistrations, c.slotRegions, 'a TUR handed out no region: none replaced');
  target.commandHook = undefined;
  await session.close();
});

t.test('a short data-in transfer hands the caller nothing of an earlier command', async (t) => {
  // one slot, so every read lands in the same registered buffer
  const { session, target, pair } = await setup({ session: { queueSize: 1 } });
  const earlier = pattern(4096, 41);
  await write(session, LUN0, 0, earlier, 512);
  t.same((await read(session, LUN0, 0, 4096, 512)).dataIn, earlier, 'the slot held this data');
  // said: the target returns 1 KiB of 4 (DIUNDER, residual 3072)
  const short = pattern(1024, 42);
  target.commandHook = (_lun, cdb) => (cdb[0] === 0x88 ? { status: 0, dataIn: short } : undefined);
  const dst = Buffer.alloc(4096, 0xee);
  const r = await read(session, LUN0, 0, 4096, 512, dst);
  t.equal(r.residual, 3072);
  t.same(r.dataIn, short, 'only what was transferred');
  t.ok(
    dst.subarray(1024).every((b) => b === 0xee),
    'the rest of the destination untouched',
  );
  t.same(pair.initiator.registeredRegions, session.counters.slotRegions);
  // unsaid: the target writes 1 KiB but reports the whole transfer (no residual)
  target.commandHook = undefined;
  await read(session, LUN0, 0, 4096, 512); // the slot holds `earlier` again
  const rdmaWrite = pair.target.rdmaWrite.bind(pair.target);
  pair.target.rdmaWrite = (va, rkey, data) => rdmaWrite(va, rkey, data.subarray(0, 1024));
  const lying = await read(session, LUN0, 0, 4096, 512, Buffer.alloc(4096, 0xee));
  t.equal(lying.residual, 0, 'the target claims all 4 KiB');
  t.same(lying.dataIn!.subarray(0, 1024), earlier.subarray(0, 1024), 'what it did write');
  t.ok(
    lying.dataIn!.subarray(1024).every((b) => b === 0),
    'zeroes where it wrote nothing, not the earlier data',
  );
  t.equal(session.counters.memoryRegistrations, session.counters.slotRegions, 'no registration for any of it');
  await session.close();
});

t.test('command timeouts: one sweep timer per session, none per command', async (t) => {
  let armed = 0;
  const timers = {
    setTimeout: (fn: () => void, ms: number) => {
      armed++;
      return setTimeout(fn, ms);
    },
    clearTimeout: (h: unknown) => clearTimeout(h as NodeJS.Timeout),
  };
  const { session, target } = await setup({ session: { timers } });
  const before = armed;
  await Promise.all(Array.from({ length: 300 }, (_, i) => write(session, LUN0, i, pattern(512, i), 512)));
  t.equal(session.counters.commandsCompleted, 300);
  t.ok(armed - before <= 2, `300 commands armed ${armed - before} timer(s)`);
  // a stuck command still times out and is aborted, about when it should
  target.commandHook = () => 'stall';
  const start = Date.now();
  await t.rejects(session.execute({ lun: LUN0, cdb: tur(), timeoutMs: 80 }), { code: 'aborted' });
  const ms = Date.now() - start;
  t.ok(ms >= 80 && ms < 400, `timed out after ${ms} ms (80 ms asked)`);
  target.commandHook = undefined;
  await session.close();
});

t.test('immediate data: a LUN that reads it after execute() returns gets its own copy', async (t) => {
  const seen: Buffer[] = [];
  const pending: (() => void)[] = [];
  const late: ScsiTargetLun = {
    // no readsDataOutOnlyDuringExecute: dataOut is read after the receive buffer was reused
    execute: (cdb, dataOut) =>
      cdb[0] === 0x8a
        ? new Promise((resolve) =>
            pending.push(() => {
              seen.push(Buffer.from(dataOut!));
              resolve({ status: 0 });
            }),
          )
        : { status: 0 },
  };
  const ram = new RamScsiLun({ blockSize: 512, blocks: 64, serial: 'RAM' });
  t.equal(ram.readsDataOutOnlyDuringExecute, true, 'the RAM LUN takes a view');
  const target = new SrpTestTarget({
    luns: [
      [LUN0, late],
      [LUN1, ram],
    ],
  });
  const pair = createLoopbackPair();
  target.accept(pair.target);
  const session = await SrpSession.login(pair.initiator, { initiatorPortId, targetPortId });
  const a = pattern(512, 1);
  const b = pattern(512, 2);
  const writes = [write(session, LUN0, 0, a, 512), write(session, LUN0, 1, b, 512)];
  await until(() => pending.length === 2);
  // more IUs through the same receive buffers while the two wait
  await Promise.all([0, 1, 2, 3].map((i) => write(session, LUN1, i, pattern(512, 10 + i), 512)));
  pending.forEach((run) => run());
  await Promise.all(writes);
  t.same(seen, [a, b], 'each write saw its own data');
  t.equal(target.stats.immediateDataCommands, 6);
  for (let i = 0; i < 4; i++) t.same(ram.peek(i, 1), pattern(512, 10 + i), `RAM LUN block ${i} from a view`);
  await session.close();
});
