// Every ib_srp add_target tuning option is honoured with its ib_srp meaning or refused (attach: 400,
// config: exit 2), never accepted and ignored. Unit tests of the mapping, then each option through
// the daemon's real attach path (mock RDMA binding, SRP test target).
import t from 'tap';
import { addTargetConflicts, addTargetTuning, applyTuning, MAX_QUEUE_SIZE } from '../src/daemon/add-target-options.js';
import { ConfigError, parseConfig } from '../src/daemon/config.js';
import { DaemonError } from '../src/daemon/daemon.js';
import { limitExecutor } from '../src/fsm/srp-port.js';
import type { ScsiCommand, ScsiResult } from '../src/initiator/scsi-executor.js';
import { parseTargetAddress } from '../src/initiator/target-address.js';
import { lioLikeTarget, rdmaDaemon } from './helpers/rdma-daemon.js';

const DEST = '192.0.2.2:5000';
const ADDR = `id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=${DEST}`;
const tuning = (opts: string) => addTargetTuning(parseTargetAddress(`${ADDR},${opts}`));

t.test('mapping: what each option becomes', async (t) => {
  t.same(tuning('max_sect=256').tuning, { maxTransferBytes: 128 * 1024 }, 'max_sect: 512-byte sectors');
  t.same(tuning('queue_size=32').tuning, { queueSize: 32 });
  t.same(tuning('target_can_queue=16').tuning, { targetCanQueue: 16 });
  t.same(tuning('max_cmd_per_lun=4').tuning, { maxCmdPerLun: 4 });
  t.same(tuning('tl_retry_count=3').tuning, { retryCount: 3 });
  t.same(tuning('max_it_iu_size=1024').tuning, { maxItIuSize: 1024 });
  t.same(tuning('max_it_iu_size=0').tuning, {}, 'max_it_iu_size=0: no cap, as ib_srp');
  t.same(tuning('cmd_sg_entries=32').tuning, { cmdSgEntries: 32 });
  t.same(tuning('sg_tablesize=4').tuning, { cmdSgEntries: 4 }, 'sg_tablesize lowers the default 12');
  t.same(tuning('cmd_sg_entries=32,sg_tablesize=64').tuning, { cmdSgEntries: 32 }, 'min of the two');
  t.same(tuning('allow_ext_sg=0').tuning, {}, 'allow_ext_sg=0 is what srp-nbd does');
  t.same(tuning('comp_vector=1').tuning, { compVector: 1 });
  t.same(tuning('ch_count=1').tuning, {}, 'one channel');
  for (const o of ['max_sect=8', 'queue_size=8', 'tl_retry_count=6', 'allow_ext_sg=0', 'ch_count=1', 'comp_vector=0'])
    t.same(tuning(o).refused, [], `${o} accepted`);
});

t.test('refused: each names the option and why', async (t) => {
  const cases: [string, string, RegExp][] = [
    ['allow_ext_sg=1', 'allow_ext_sg', /external indirect descriptor tables are not implemented/],
    ['ch_count=2', 'ch_count', /one RDMA channel per target \(multichannel is not implemented\)/],
    ['tl_retry_count=7', 'tl_retry_count', /"retry forever" on soft-RoCE/],
    ['max_it_iu_size=32', 'max_it_iu_size', /cannot carry an SRP_CMD with a data descriptor \(at least 64/],
    [`queue_size=${MAX_QUEUE_SIZE + 1}`, 'queue_size', /at most 4096/],
  ];
  for (const [opt, name, why] of cases) {
    const r = tuning(opt).refused;
    t.equal(r.length, 1, opt);
    t.equal(r[0]!.option, name);
    t.match(r[0]!.message, new RegExp(`^${name}: `));
    t.match(r[0]!.message, why);
  }
});

t.test('applyTuning and conflicts with the target’s own options', async (t) => {
  const o = { queue_size: 62, retry_count: 6 };
  t.same(applyTuning(o, tuning('queue_size=32').tuning), { queue_size: 32, retry_count: 6 });
  t.same(applyTuning(o, tuning('target_can_queue=16').tuning), { queue_size: 16, retry_count: 6 });
  t.same(applyTuning(o, tuning('queue_size=8,target_can_queue=16').tuning), { queue_size: 8, retry_count: 6 });
  t.same(applyTuning(o, tuning('tl_retry_count=2').tuning), { queue_size: 62, retry_count: 2 });
  const a = parseTargetAddress(`${ADDR},queue_size=32,tl_retry_count=3`);
  t.same(addTargetConflicts(a, { queue_size: 32, retry_count: 3 }), [], 'the same value twice is fine');
  t.same(
    addTargetConflicts(a, { queue_size: 64 }).map((r) => r.message),
    ['queue_size=32 in the address contradicts queue_size 64 of the target: give one'],
  );
  t.same(
    addTargetConflicts(a, { retry_count: 5 }).map((r) => r.option),
    ['tl_retry_count'],
  );
});

t.test('config: a refused option stops the load, naming the option', async (t) => {
  const load = (target: Record<string, unknown>) => {
    try {
      parseConfig({ targets: [target] });
      return undefined;
    } catch (e) {
      return e as ConfigError;
    }
  };
  const e = load({ address: `${ADDR},allow_ext_sg=1` });
  t.type(e, ConfigError);
  t.match(
    e!.message,
    /targets\[0\]\.address: allow_ext_sg: external indirect descriptor tables .* \[add-target-option\]/,
  );
  const c = load({ address: `${ADDR},queue_size=32`, queue_size: 16 });
  t.match(c!.message, /targets\[0\]\.address: queue_size=32 in the address contradicts queue_size 16/);
  t.equal(load({ address: `${ADDR},queue_size=32,max_sect=128,ch_count=1,comp_vector=0` }), undefined, 'accepted');
});

t.test('limitExecutor: at most N commands outstanding, the rest in order', async (t) => {
  let active = 0;
  let peak = 0;
  const order: number[] = [];
  const inner = {
    async execute(cmd: ScsiCommand): Promise<ScsiResult> {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, 5));
      order.push(cmd.cdb[0]!);
      active--;
      return { status: 0 } as ScsiResult;
    },
  };
  const lim = limitExecutor(inner, 2);
  await Promise.all([1, 2, 3, 4, 5].map((i) => lim.execute({ cdb: Buffer.from([i]) } as unknown as ScsiCommand)));
  t.equal(peak, 2);
  t.same(order, [1, 2, 3, 4, 5]);
  t.equal(lim.outstanding, 0);
});

/* ------------------------------------------------------------ through the daemon */

t.test('attach: refused options are a 400 naming the option; nothing is attached', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('x', 1)]]), { device: 'none' });
  for (const [opt, name] of [
    ['allow_ext_sg=1', 'allow_ext_sg'],
    ['ch_count=4', 'ch_count'],
    ['tl_retry_count=7', 'tl_retry_count'],
  ]) {
    const e = (await f.d.attach({ address: `${ADDR},${opt}` }).catch((x: unknown) => x)) as DaemonError;
    t.type(e, DaemonError);
    t.equal(e.status, 400, opt);
    t.match(e.message, new RegExp(`: ${name}: `));
  }
  const c = (await f.d.attach({ address: `${ADDR},queue_size=8`, queue_size: 9 }).catch((x: unknown) => x)) as Error;
  t.match(c.message, /queue_size=8 in the address contradicts queue_size 9/);
  t.same(f.d.list(), []);
});

/** READ(16)/WRITE(16) transfer lengths the target saw, in blocks. */
function transfers(target: ReturnType<typeof lioLikeTarget>): number[] {
  const seen: number[] = [];
  target.commandHook = (_lun, cdb) => {
    if (cdb[0] === 0x88 || cdb[0] === 0x8a) seen.push(cdb.readUInt32BE(10));
    return undefined;
  };
  return seen;
}

t.test('max_sect: no command transfers more than max_sect × 512 bytes', async (t) => {
  const target = lioLikeTarget('s', 1);
  const seen = transfers(target);
  const f = await rdmaDaemon(t, new Map([[DEST, target]]), { device: 'none' });
  const v = await f.d.attach({ address: `${ADDR},max_sect=16`, id: 's' });
  t.equal(v.status, 'attached');
  const exp = f.d.nbd.lookup('s-lun0')!.backend;
  await exp.write(0, Buffer.alloc(64 * 1024, 7), false);
  const back = Buffer.alloc(64 * 1024);
  await exp.read(0, back);
  t.ok(
    back.every((b) => b === 7),
    'data intact',
  );
  t.ok(seen.length >= 8, `split into commands (${seen.length})`);
  t.ok(
    seen.every((n) => n <= 16),
    `every command at most 16 blocks of 512 (${[...new Set(seen)].join(',')})`,
  );
});

t.test('queue_size and target_can_queue: commands outstanding per target; tl_retry_count: retry_count', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('q', 1)]]), { device: 'none' });
  const v = await f.d.attach({ address: `${ADDR},queue_size=24,target_can_queue=20,tl_retry_count=3`, id: 'q' });
  t.equal(v.options.queue_size, 20, 'min(queue_size, target_can_queue)');
  t.equal(v.options.retry_count, 3);
  t.equal(f.m.connectParams.at(-1)!.retryCount, 3, 'the QP retry count');
  t.match(v.address, /queue_size=24/, 'the persisted address keeps the options');
});

t.test('max_cmd_per_lun: commands outstanding per LUN', async (t) => {
  const target = lioLikeTarget('l', 1);
  let active = 0;
  let peak = 0;
  target.commandHook = (_lun, cdb) => {
    if (cdb[0] === 0x88) {
      active++;
      peak = Math.max(peak, active);
      setTimeout(() => active--, 5);
    }
    return undefined;
  };
  target.responseDelayMs = 5;
  const f = await rdmaDaemon(t, new Map([[DEST, target]]), { device: 'none' });
  await f.d.attach({ address: `${ADDR},max_cmd_per_lun=2`, id: 'l' });
  const exp = f.d.nbd.lookup('l-lun0')!.backend;
  await Promise.all(Array.from({ length: 12 }, (_, i) => exp.read(i * 4096, Buffer.alloc(4096))));
  t.ok(peak <= 2, `at most 2 outstanding (peak ${peak})`);
});

t.test('max_it_iu_size caps the login; cmd_sg_entries and sg_tablesize size it', async (t) => {
  const target = lioLikeTarget('i', 1);
  const f = await rdmaDaemon(t, new Map([[DEST, target]]), { device: 'none', immediate_data: false });
  await f.d.attach({ address: `${ADDR},cmd_sg_entries=4`, id: 'i1' });
  // ib_srp srp_max_it_iu_len: SRP_CMD 48 + additional CDB 16 + indirect header 20 + 16 per descriptor
  t.equal(target.channels.at(-1)!.login.reqItIuLen, 48 + 16 + 20 + 4 * 16, 'cmd_sg_entries=4');
  await f.d.detach('i1');
  await f.d.attach({ address: `${ADDR},cmd_sg_entries=8,sg_tablesize=2`, id: 'i2' });
  t.equal(target.channels.at(-1)!.login.reqItIuLen, 48 + 16 + 20 + 2 * 16, 'min(cmd_sg_entries, sg_tablesize)');
  await f.d.detach('i2');
  await f.d.attach({ address: `${ADDR},max_it_iu_size=100`, id: 'i3' });
  t.equal(target.channels.at(-1)!.login.reqItIuLen, 100, 'capped by max_it_iu_size');
  const exp = f.d.nbd.lookup('i3-lun0')!.backend;
  await exp.write(0, Buffer.alloc(8192, 3), false);
  const back = Buffer.alloc(8192);
  await exp.read(0, back);
  t.ok(
    back.every((b) => b === 3),
    'I/O works with the small IU',
  );
});

t.test('comp_vector: the CQ on that completion vector; one the device lacks fails the attach', async (t) => {
  const f = await rdmaDaemon(t, new Map([[DEST, lioLikeTarget('v', 1)]]), { device: 'none' });
  await f.d.attach({ address: `${ADDR},comp_vector=1`, id: 'v' });
  t.equal(f.m.cqVectors.at(-1), 1);
  await f.d.detach('v');
  const e = (await f.d.attach({ address: `${ADDR},comp_vector=5`, id: 'v' }).catch((x: unknown) => x)) as Error;
  t.type(e, DaemonError);
  t.match(e.message, /compVector 5 is out of range: the device has 2 completion vectors/);
});
