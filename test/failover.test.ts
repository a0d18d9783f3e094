/**
 * Path failures under real I/O: the NBD server exporting test-target LUNs
 * through the SRP session, SCSI layer, rport state machine and I/O gate,
 * with fio's nbd engine (verify=crc32c) and a raw NBD client as the users.
 * The link to the target is dropped and restored by the test fabric.
 */
import t from 'tap';
import * as C from '../src/nbd/nbd-constants.js';
import { NbdServer } from '../src/nbd/server.js';
import { startTestTarget, type TestTargetExports } from '../src/testing/test-fabric.js';
import { lunToSam } from '../src/initiator/scsi-cdb.js';
import type { TmoParams } from '../src/fsm/timers.js';
import { silentLogger } from '../src/util/log.js';
import { RawClient, run } from './helpers/nbd.js';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const MiB = 1 << 20;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Rig extends TestTargetExports {
  server: NbdServer;
  socketPath: string;
  uri: (lun?: string) => string;
  close(): Promise<void>;
}

async function rig(tmo: Partial<TmoParams>, commandTimeoutMs?: number): Promise<Rig> {
  const logger = silentLogger();
  const tt = await startTestTarget({
    luns: [
      { blockSize: 512, sizeBytes: 32 * MiB, serial: 'FAILOVER-0' },
      { blockSize: 4096, sizeBytes: 32 * MiB, serial: 'FAILOVER-1' },
    ],
    logger,
    tmo,
    commandLog: 10_000, // tests look at what the LUNs were sent
    ...(commandTimeoutMs ? { commandTimeoutMs } : {}),
  });
  const server = new NbdServer({ logger });
  for (const [name, b] of tt.exports) server.addExport(name, b);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-failover-'));
  const socketPath = path.join(dir, 'nbd.sock');
  await server.listenUnix(socketPath);
  return {
    ...tt,
    server,
    socketPath,
    uri: (lun = 'lun0') => `nbd+unix:///${lun}?socket=${socketPath}`,
    close: async () => {
      await server.close();
      await tt.port.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** fio randwrite + crc32c verify; resolves with fio's JSON job, rejects if fio reports an error. */
async function fioVerify(
  uri: string,
  extra: string[] = [],
): Promise<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> {
  const out = await run(
    'fio',
    [
      '--name=failover',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=8',
      '--size=16M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--output-format=json',
      ...extra,
    ],
    180_000,
  );
  return JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
}

async function waitFor(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

t.test('drop shorter than fast_io_fail_tmo: no I/O error, verify passes, export stays', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 5, devLossTmo: 60 });
  t.teardown(() => r.close());
  const before = r.fabric.target.stats.commands;
  const fio = fioVerify(r.uri());
  // the link goes down while fio is under way (a fixed delay is too long once the data path is fast)
  await waitFor('fio under way', () => r.fabric.target.stats.commands >= before + 256);
  r.fabric.linkDown();
  await waitFor('blocked', () => r.port.state === 'blocked');
  await sleep(1500);
  const back = Date.now();
  r.fabric.restoreLink();
  await waitFor('running', () => r.port.state === 'running');
  t.ok(Date.now() - back < 2000, `running again ${Date.now() - back} ms after link return`);
  const job = await fio;
  t.equal(job.error, 0, 'fio saw no error');
  t.equal(job.read.io_bytes, 16 * MiB, 'all 16 MiB verified');
  t.ok(r.port.logins >= 2, 'a reconnect happened during the run');
  const st = r.port.gate.stats;
  t.ok(st.released + st.retried > 0, `I/O was held and replayed (released ${st.released}, retried ${st.retried})`);
  t.same(
    r.server.list().map((e) => e.name),
    ['lun0', 'lun1'],
    'exports never went away',
  );
});

t.test('drop longer than fast_io_fail_tmo: EIO during the outage, normal I/O after return', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 1, devLossTmo: 60 });
  t.teardown(() => r.close());
  const c = await RawClient.connect(r.socketPath);
  await c.go('lun0');
  r.fabric.linkDown();
  c.request(C.NBD_CMD_WRITE, 1n, 0, 4096, 0, Buffer.alloc(4096, 0x33));
  const held = c.simpleReply();
  const t0 = Date.now();
  const first = await held;
  t.equal(first.error, C.NBD_EIO, 'held write failed with EIO at fail-fast');
  t.ok(Date.now() - t0 >= 900 && Date.now() - t0 < 3000, `failed after ${Date.now() - t0} ms (fast_io_fail_tmo 1 s)`);
  t.equal(r.port.state, 'fail-fast');
  c.request(C.NBD_CMD_READ, 2n, 0, 4096);
  t.equal((await c.simpleReply()).error, C.NBD_EIO, 'new I/O fails at once');
  // the connection and the export are still there
  r.fabric.restoreLink();
  const back = Date.now();
  await waitFor('running', () => r.port.state === 'running');
  c.request(C.NBD_CMD_READ, 3n, 0, 4096);
  const after = await c.simpleReply(4096);
  t.equal(after.error, 0, 'I/O works after the target returns');
  t.comment(`link return to first completed I/O: ${Date.now() - back} ms`);
  c.close();
  const job = await fioVerify(r.uri('lun1'));
  t.equal(job.error, 0, 'fio verify of data written after return passes');
});

t.test('dev_loss_tmo expiry: lost keeps the export; explicit reconnect brings it back', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 1, devLossTmo: 2 });
  t.teardown(() => r.close());
  r.fabric.linkDown();
  await waitFor('lost', () => r.port.state === 'lost', 10_000);
  r.fabric.restoreLink();
  await sleep(1500);
  t.equal(r.port.state, 'lost', 'lost does not reconnect by itself, even when the path returns');
  const c = await RawClient.connect(r.socketPath);
  const { size } = await c.go('lun0');
  t.equal(size, 32 * MiB, 'the export is still served while lost');
  c.request(C.NBD_CMD_READ, 1n, 0, 512);
  t.equal((await c.simpleReply()).error, C.NBD_EIO, 'I/O fails with EIO while lost');
  r.port.reconnectNow();
  await waitFor('running', () => r.port.state === 'running');
  c.request(C.NBD_CMD_READ, 2n, 0, 512);
  t.equal((await c.simpleReply(512)).error, 0, 'same export, same connection, I/O works');
  c.close();
  t.equal((await fioVerify(r.uri())).error, 0);
});

t.test('the target comes back as a different LUN: refused, no write reaches it', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 5, devLossTmo: 60 });
  t.teardown(() => r.close());
  const c = await RawClient.connect(r.socketPath);
  await c.go('lun0');
  r.fabric.linkDown();
  const lun = r.fabric.luns.values().next().value!;
  lun.changeIdentity({ serial: 'SOMEBODY-ELSE' });
  lun.clearLog();
  c.request(C.NBD_CMD_WRITE, 1n, 0, 4096, 0, Buffer.alloc(4096, 0x77));
  const reply = c.simpleReply();
  r.fabric.restoreLink();
  await waitFor('lost', () => r.port.state === 'lost');
  t.equal((await reply).error, C.NBD_EIO, 'the held write failed instead of landing on the other disk');
  t.match(r.port.rport.lastFailure?.message ?? '', /serial/, 'the reason names what changed');
  t.equal(lun.logOf('WRITE_16').length, 0, 'no WRITE reached the different LUN');
  t.ok(lun.peek(0, 8).every((b) => b !== 0x77));
  c.close();
});

t.test('a write sleeping in a SCSI retry during an outage never reaches a different LUN', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 5, devLossTmo: 60 });
  t.teardown(() => r.close());
  const lun = r.fabric.luns.values().next().value!;
  // The write gets NOT READY (becoming ready): ScsiDisk waits 1 s before retrying it.
  lun.injectSense(0x02, 0x04, 0x01, 1, (cdb) => cdb[0] === 0x8a);
  const c = await RawClient.connect(r.socketPath);
  await c.go('lun0');
  c.request(C.NBD_CMD_WRITE, 1n, 0, 4096, 0, Buffer.alloc(4096, 0xee));
  const reply = c.simpleReply();
  await sleep(100);
  r.fabric.linkDown();
  lun.changeIdentity({ serial: 'ANOTHER-DISK' });
  // The new LUN is slow to become ready, so the identity check is still running when the write wakes.
  lun.injectSense(0x02, 0x04, 0x01, 3, (cdb) => cdb[0] === 0x00);
  lun.clearLog();
  r.fabric.restoreLink();
  t.equal((await reply).error, C.NBD_EIO, 'the write failed');
  await waitFor('lost', () => r.port.state === 'lost');
  t.equal(lun.logOf('WRITE_16').length, 0, 'no WRITE reached the other disk');
  t.notOk(lun.peek(0, 8).includes(0xee));
  c.close();
});

t.test('a command that times out and is aborted fails with EIO without a reconnect', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 2, devLossTmo: 60 }, 300);
  t.teardown(() => r.close());
  r.fabric.target.commandHook = (_lun, cdb) => (cdb[0] === 0x91 ? 'stall' : undefined); // SYNCHRONIZE CACHE(16)
  const c = await RawClient.connect(r.socketPath);
  await c.go('lun0');
  const t0 = Date.now();
  c.request(C.NBD_CMD_FLUSH, 1n, 0, 0);
  t.equal((await c.simpleReply()).error, C.NBD_EIO, 'the flush failed with EIO');
  t.ok(Date.now() - t0 < 1500, `after ${Date.now() - t0} ms (timeout 300 ms, then ABORT TASK)`);
  t.equal(r.port.logins, 1, 'no reconnect: the channel was fine');
  t.equal(r.port.state, 'running');
  r.fabric.target.commandHook = undefined;
  c.request(C.NBD_CMD_READ, 2n, 0, 512);
  t.equal((await c.simpleReply(512)).error, 0, 'other I/O carries on');
  c.close();
});

t.test('SCSI failures reach the NBD client as the errors the protocol allows', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 5, devLossTmo: 60 });
  t.teardown(() => r.close());
  const lun = r.fabric.luns.values().next().value!;
  const c = await RawClient.connect(r.socketPath);
  await c.go('lun0');
  // sense key, ASC, ASCQ of the failed WRITE(16), and the NBD error the client must see
  const cases: [string, number, number, number, number][] = [
    ['ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (ENOTSUP): EINVAL, no fast zero', 0x05, 0x20, 0x00, 22],
    ['ILLEGAL REQUEST, LBA OUT OF RANGE (ENOSPC)', 0x05, 0x21, 0x00, 28],
    ['DATA PROTECT, WRITE PROTECTED (EPERM)', 0x07, 0x27, 0x00, 1],
    ['MEDIUM ERROR, WRITE ERROR (EIO)', 0x03, 0x0c, 0x00, 5],
  ];
  let cookie = 0x0a0b0c0d00000001n;
  for (const [name, key, asc, ascq, nbdError] of cases) {
    lun.injectSense(key, asc, ascq, 1, (cdb) => cdb[0] === 0x8a);
    c.request(C.NBD_CMD_WRITE, cookie, 0, 4096, 0, Buffer.alloc(4096, 0x5a));
    const golden = Buffer.alloc(16);
    golden.writeUInt32BE(0x67446698, 0);
    golden.writeUInt32BE(nbdError, 4);
    golden.writeBigUInt64BE(cookie++, 8);
    t.same(await c.reader.read(16), golden, name);
  }
  c.request(C.NBD_CMD_WRITE, cookie, 0, 4096, 0, Buffer.alloc(4096, 0x5a));
  t.equal((await c.simpleReply()).error, 0, 'the next write succeeds');
  c.close();
});

t.test('200 random flaps under load: no acknowledged write lost or corrupted', async (t) => {
  const r = await rig({ reconnectDelay: 1, fastIoFailTmo: 30, devLossTmo: 120 });
  t.teardown(() => r.close());
  const BLOCKS = 2048;
  const BS = 4096;
  const acked = new Map<number, number>(); // block -> generation acknowledged
  const busy = new Set<number>();
  let gen = 0;
  let stop = false;
  let failures = 0;
  const c = await RawClient.connect(r.socketPath);
  await c.go('lun1');
  // One reply reader dispatches replies to waiting requests by cookie.
  const waiting = new Map<bigint, (e: number) => void>();
  void (async () => {
    for (;;) {
      const rep = await c.simpleReply().catch(() => undefined);
      if (!rep) return;
      waiting.get(rep.cookie)?.(rep.error);
      waiting.delete(rep.cookie);
    }
  })();
  const rnd = (() => {
    let s = 0x1234567;
    return () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  })();
  let cookie = 0n;
  const writer = async (): Promise<void> => {
    while (!stop) {
      let b: number;
      do b = Math.floor(rnd() * BLOCKS);
      while (busy.has(b));
      busy.add(b);
      const g = ++gen;
      const data = Buffer.alloc(BS);
      for (let i = 0; i < BS; i += 8) {
        data.writeUInt32BE(b, i);
        data.writeUInt32BE(g, i + 4);
      }
      const id = ++cookie;
      const errno = await new Promise<number>((resolve) => {
        waiting.set(id, resolve);
        c.request(C.NBD_CMD_WRITE, id, b * BS, BS, 0, data);
      });
      if (errno === 0) acked.set(b, g);
      else failures++;
      busy.delete(b);
    }
  };
  const writers = Array.from({ length: 16 }, writer);
  const t0 = Date.now();
  for (let i = 0; i < 200; i++) {
    await sleep(5 + Math.floor(rnd() * 40));
    r.fabric.linkDown();
    await sleep(5 + Math.floor(rnd() * 40));
    r.fabric.restoreLink();
    // let the port recover before the next flap at most some of the time, so flaps also hit reconnects in progress
    if (i % 4 === 0) await waitFor('running', () => r.port.state === 'running');
  }
  await waitFor('running', () => r.port.state === 'running');
  stop = true;
  await Promise.all(writers);
  t.comment(`200 flaps in ${Date.now() - t0} ms, ${gen} writes issued, ${r.port.logins} logins`);
  t.equal(failures, 0, 'no write failed (flaps shorter than fast_io_fail_tmo)');
  t.ok(r.port.logins > 50, `many reconnects happened (${r.port.logins} logins)`);
  // Read every block back on a fresh connection and compare with the last acknowledged generation.
  let bad = 0;
  c.close();
  const v = await RawClient.connect(r.socketPath);
  await v.go('lun1');
  for (let b = 0; b < BLOCKS; b++) {
    v.request(C.NBD_CMD_READ, BigInt(b), b * BS, BS);
    const rep = await v.simpleReply(BS);
    const want = acked.get(b);
    if (rep.error !== 0) bad++;
    else if (
      want !== undefined &&
      (rep.data.readUInt32BE(0) !== b ||
        rep.data.readUInt32BE(4) !== want ||
        !rep.data.subarray(0, 8).equals(rep.data.subarray(BS - 8)))
    )
      bad++;
  }
  t.equal(bad, 0, `all ${acked.size} acknowledged blocks hold their last acknowledged data`);
  v.close();
});

t.test(
  'FUA follows the caching mode re-read at each identity check (write cache turned off, then on without DPOFUA)',
  async (t) => {
    const r = await rig({ fastIoFailTmo: 5, devLossTmo: 60, reconnectDelay: 1 });
    t.teardown(() => r.close());
    const lun = r.fabric.luns.get(lunToSam(0))!;
    const backend = r.exports.get('lun0')!;
    const flap = async (): Promise<void> => {
      r.fabric.linkDown();
      await waitFor('blocked', () => r.port.state === 'blocked');
      r.fabric.restoreLink();
      await waitFor('running', () => r.port.state === 'running');
    };
    // The test target starts with a write cache and DPOFUA: FUA writes carry the bit.
    lun.writeCache = false;
    await flap();
    lun.clearLog();
    await backend.write(0, Buffer.alloc(512, 1), true);
    t.same(
      lun.log.map((e) => `${e.name}${e.fua ? '+FUA' : ''}`),
      ['WRITE_16'],
      'write-through now: a plain write',
    );
    lun.writeCache = true;
    lun.dpoFua = false;
    await flap();
    lun.clearLog();
    await backend.write(0, Buffer.alloc(512, 2), true);
    t.same(
      lun.log.map((e) => e.name),
      ['WRITE_16', 'SYNCHRONIZE_CACHE_16'],
      'write cache without DPOFUA: write, then SYNCHRONIZE CACHE',
    );
  },
);
