// Loopback channel pair: asynchronous in-order delivery, RDMA semantics, fault hooks.
import t from 'tap';
import { createLoopbackPair, type LoopbackPair } from '../src/initiator/loopback.js';
import { TransportError } from '../src/initiator/scsi-executor.js';

const RSP = Buffer.from([0xc0, 1, 2, 3]);

/** A pair with a target that accepts every connect, connected. */
async function connected(opts: Parameters<typeof createLoopbackPair>[0] = {}): Promise<LoopbackPair> {
  const pair = createLoopbackPair(opts);
  pair.target.onConnect(() => ({ accept: RSP }));
  const answer = await pair.initiator.connect(Buffer.from([0, 0, 0]));
  if (!answer.equals(RSP)) throw new Error('bad accept');
  return pair;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('connect carries the login request and returns the answer', async (t) => {
  const pair = createLoopbackPair();
  let seen: Buffer | undefined;
  pair.target.onConnect((req) => {
    seen = req;
    return { accept: RSP };
  });
  t.equal(pair.initiator.state, 'idle');
  const p = pair.initiator.connect(Buffer.from('login'));
  t.equal(pair.initiator.state, 'connecting');
  t.same(await p, RSP);
  t.same(seen, Buffer.from('login'));
  t.equal(pair.initiator.state, 'connected');
  t.equal(pair.target.state, 'connected');
  await t.rejects(pair.initiator.connect(Buffer.alloc(1)), { code: 'closed' }, 'one connect per channel');

  const rej = createLoopbackPair();
  rej.target.onConnect(() => ({ reject: Buffer.from([0xc2]) }));
  t.same(await rej.initiator.connect(Buffer.alloc(1)), Buffer.from([0xc2]));
  t.equal(rej.initiator.state, 'closed', 'a reject leaves the channel closed');
  t.throws(() => rej.initiator.send(Buffer.alloc(1)), TransportError);

  await t.rejects(createLoopbackPair().initiator.connect(Buffer.alloc(1)), {
    code: 'disconnected',
    message: /refused/,
  });
  const thrower = createLoopbackPair();
  thrower.target.onConnect(() => {
    throw new Error('boom');
  });
  await t.rejects(thrower.initiator.connect(Buffer.alloc(1)), { code: 'disconnected' });
  const silent = createLoopbackPair();
  silent.target.onConnect(() => ({ accept: RSP }));
  silent.faults.blackHole = true;
  await t.rejects(silent.initiator.connect(Buffer.alloc(1), { timeoutMs: 30 }), { code: 'timeout' });
});

t.test('IUs arrive asynchronously, in order, copied at send time', async (t) => {
  const pair = await connected();
  const got: number[] = [];
  pair.target.on('iu', (iu) => got.push(iu[0]!));
  const buf = Buffer.from([1]);
  pair.initiator.send(buf);
  buf[0] = 99; // reuse after send must not change what was sent
  for (let i = 2; i <= 50; i++) pair.initiator.send(Buffer.from([i]));
  t.same(got, [], 'nothing delivered synchronously');
  await sleep(5);
  t.same(
    got,
    Array.from({ length: 50 }, (_, i) => i + 1),
  );
  t.equal(pair.stats.delivered.toTarget, 50);
});

t.test('delay applies per direction and keeps order', async (t) => {
  const pair = await connected({ delayMs: { toInitiator: 40 } });
  const got: number[] = [];
  pair.initiator.on('iu', (iu) => got.push(iu[0]!));
  const start = Date.now();
  pair.target.send(Buffer.from([1]));
  pair.faults.delayMs.toInitiator = 0; // a later, faster IU must not overtake
  pair.target.send(Buffer.from([2]));
  while (got.length < 2) await sleep(2);
  t.ok(Date.now() - start >= 35, 'delayed');
  t.same(got, [1, 2]);
});

t.test('a wire that never runs empty keeps order (delayed, steady traffic)', async (t) => {
  const pair = await connected({ delayMs: { toTarget: 3 } });
  const got: number[] = [];
  pair.target.on('iu', (iu) => got.push(iu.readUInt32BE(0)));
  let n = 0;
  const b = Buffer.alloc(4);
  // 60 bursts of 100 IUs, one per ms: delayed ones are always waiting when a delivery ends
  for (let burst = 0; burst < 60; burst++) {
    for (let i = 0; i < 100; i++) {
      b.writeUInt32BE(n++);
      pair.initiator.send(b);
    }
    await sleep(1);
  }
  while (got.length < n) await sleep(5);
  t.equal(got.length, 6000);
  t.ok(
    got.every((v, i) => v === i),
    'every IU once, in order',
  );
});

t.test('RDMA READ/WRITE against registered memory; WRITE lands before a later SEND', async (t) => {
  const pair = await connected();
  const mem = Buffer.alloc(8192);
  const mr = pair.initiator.registerBuffer(mem);
  t.equal(mr.length, 8192);
  let atRsp: Buffer | undefined;
  pair.initiator.on('iu', () => {
    atRsp = Buffer.from(mem.subarray(100, 104));
  });
  const w = pair.target.rdmaWrite(mr.va + 100n, mr.rkey, Buffer.from('abcd'));
  pair.target.send(Buffer.from([0xc1]));
  await w;
  await sleep(2);
  t.same(atRsp, Buffer.from('abcd'), 'data visible when the response is seen');
  mem.write('wxyz', 8000);
  t.same(await pair.target.rdmaRead(mr.va + 8000n, mr.rkey, 4), Buffer.from('wxyz'));
  t.equal(pair.stats.rdmaReads, 1);
  t.equal(pair.stats.rdmaWrites, 1);
  t.equal(pair.initiator.registeredRegions, 1);
  pair.initiator.deregisterBuffer(mr);
  t.equal(pair.initiator.registeredRegions, 0);
  t.throws(() => createLoopbackPair({ maxRegionSize: 10 }).initiator.registerBuffer(Buffer.alloc(11)), RangeError);
});

t.test('out-of-bounds RDMA is a remote access error that kills the channel', async (t) => {
  type Op = (p: LoopbackPair, va: bigint, k: number) => Promise<unknown>;
  const ops: [string, Op][] = [
    ['past the end', (p, va, k) => p.target.rdmaRead(va + 8190n, k, 4)],
    ['before the start', (p, va, k) => p.target.rdmaWrite(va - 1n, k, Buffer.alloc(2))],
    ['wrong rkey', (p, va, k) => p.target.rdmaRead(va, k + 1000, 1)],
  ];
  for (const [name, op] of ops) {
    const pair = await connected();
    const reasons: string[] = [];
    pair.initiator.on('disconnect', (r) => reasons.push(r.code));
    pair.target.on('disconnect', (r) => reasons.push(r.code));
    const mr = pair.initiator.registerBuffer(Buffer.alloc(8192));
    await t.rejects(op(pair, mr.va, mr.rkey), { code: 'protocol', message: /remote access error/ }, name);
    t.same(reasons, ['protocol', 'protocol'], `${name}: both ends lose the channel`);
    t.equal(pair.stats.accessErrors, 1);
  }
});

t.test('drop filter and black hole', async (t) => {
  const pair = await connected();
  const got: number[] = [];
  pair.target.on('iu', (iu) => got.push(iu[0]!));
  pair.faults.drop = (dir, iu) => dir === 'toTarget' && iu[0] === 2;
  [1, 2, 3].forEach((i) => pair.initiator.send(Buffer.from([i])));
  await sleep(5);
  t.same(got, [1, 3]);
  t.equal(pair.stats.dropped, 1);
  pair.faults.drop = undefined;
  pair.faults.blackHole = true;
  const mr = pair.initiator.registerBuffer(Buffer.alloc(16));
  let settled = false;
  const r = pair.target.rdmaRead(mr.va, mr.rkey, 16).finally(() => {
    settled = true;
  });
  pair.initiator.send(Buffer.from([4]));
  await sleep(20);
  t.same(got, [1, 3], 'nothing gets through');
  t.notOk(settled, 'RDMA hangs in a black hole');
  pair.disconnect('link down');
  await t.rejects(r, { code: 'disconnected', message: 'link down' }, 'until the channel is declared lost');
});

t.test('close flushes earlier sends, then both ends see the disconnect', async (t) => {
  const pair = await connected({ delayMs: { toTarget: 10 } });
  const got: number[] = [];
  const ev: string[] = [];
  pair.target.on('iu', (iu) => got.push(iu[0]!));
  pair.initiator.on('disconnect', (r) => ev.push(`i:${r.code}`));
  pair.target.on('disconnect', (r) => ev.push(`t:${r.code}`));
  pair.initiator.send(Buffer.from([7]));
  pair.initiator.close();
  while (ev.length < 2) await sleep(2);
  t.same(got, [7]);
  t.same(ev, ['i:closed', 't:disconnected']);
  t.equal(pair.initiator.state, 'closed');
  t.throws(() => pair.target.send(Buffer.alloc(1)), { code: 'disconnected' });
  // a close into a black hole still completes locally
  const bh = await connected();
  bh.faults.blackHole = true;
  let gone = false;
  bh.initiator.on('disconnect', () => {
    gone = true;
  });
  bh.initiator.close();
  await sleep(300);
  t.ok(gone, 'closing side learns of the disconnect');
});

t.test('a throwing listener is reported, delivery goes on', async (t) => {
  const pair = await connected();
  const errs: Error[] = [];
  const got: number[] = [];
  pair.target.on('error', (e) => errs.push(e));
  pair.target.on('iu', (iu) => {
    if (iu[0] === 1) throw new Error('listener bug');
  });
  pair.target.on('iu', (iu) => got.push(iu[0]!));
  pair.initiator.send(Buffer.from([1]));
  pair.initiator.send(Buffer.from([2]));
  await sleep(5);
  t.same(got, [1, 2]);
  t.equal(errs.length, 1);
  t.match(errs[0]!.message, /listener bug/);
});

t.test('a posted RDMA WRITE lands before a later SEND and sends no completion back', async (t) => {
  const pair = await connected();
  const mem = Buffer.alloc(8192);
  const mr = pair.initiator.registerBuffer(mem);
  const seen: string[] = [];
  pair.initiator.on('iu', () => seen.push(mem.toString('latin1', 100, 104)));
  const errors: TransportError[] = [];
  for (let i = 0; i < 3; i++) {
    pair.target.postRdmaWrite(mr.va + 100n, mr.rkey, Buffer.from(`ab${i}d`), (e) => errors.push(e));
    pair.target.send(Buffer.from([0xc1]));
  }
  await sleep(5);
  t.same(seen, ['ab0d', 'ab1d', 'ab2d'], 'each WRITE visible when the response after it is seen');
  t.equal(pair.stats.rdmaWrites, 3);
  // a completion travelling back would still be on its way (and fail with the channel)
  pair.faults.delayMs.toTarget = 1000;
  pair.target.postRdmaWrite(mr.va, mr.rkey, Buffer.from('q'), (e) => errors.push(e));
  await sleep(5);
  t.equal(mem[0], 0x71, 'written');
  pair.disconnect('later');
  t.same(errors, [], 'a WRITE that ran is over: nothing reported');
});

t.test('a posted RDMA WRITE reports an access error, and a loss before it ran', async (t) => {
  const bad = await connected();
  const mr = bad.initiator.registerBuffer(Buffer.alloc(16));
  const codes: string[] = [];
  bad.target.on('disconnect', (r) => codes.push(`disconnect:${r.code}`));
  bad.target.postRdmaWrite(mr.va + 10n, mr.rkey, Buffer.alloc(8), (e) => codes.push(`write:${e.code}`));
  await sleep(5);
  t.same(codes, ['disconnect:protocol', 'write:protocol'], 'a remote access error kills the channel');
  t.equal(bad.stats.accessErrors, 1);

  const lost = await connected();
  const mr2 = lost.initiator.registerBuffer(Buffer.alloc(16));
  const errs: string[] = [];
  lost.target.postRdmaWrite(mr2.va, mr2.rkey, Buffer.alloc(8), (e) => errs.push(e.message));
  lost.disconnect('link down');
  await sleep(5);
  t.same(errs, ['link down'], 'a WRITE still on the wire fails with the channel');
  lost.target.postRdmaWrite(mr2.va, mr2.rkey, Buffer.alloc(8), (e) => errs.push(e.code));
  t.equal(errs.length, 1, 'on a closed channel it fails later, not during the call');
  await sleep(1);
  t.same(errs, ['link down', 'disconnected']);

  const bh = await connected();
  const mr3 = bh.initiator.registerBuffer(Buffer.alloc(16));
  const bhErrs: string[] = [];
  bh.faults.blackHole = true;
  bh.target.postRdmaWrite(mr3.va, mr3.rkey, Buffer.alloc(8), (e) => bhErrs.push(e.message));
  await sleep(5);
  t.same(bhErrs, [], 'a black hole swallows it silently');
  bh.disconnect('gone');
  t.same(bhErrs, ['gone'], 'until the channel is declared lost');
});

t.test('postRdmaWrite goes through an rdmaWrite replaced on the instance', async (t) => {
  const pair = await connected();
  const mem = Buffer.alloc(64);
  const mr = pair.initiator.registerBuffer(mem);
  const rdmaWrite = pair.target.rdmaWrite.bind(pair.target);
  let calls = 0;
  pair.target.rdmaWrite = (va, rkey, data) => {
    calls++;
    return rdmaWrite(va, rkey, data.subarray(0, 2));
  };
  pair.target.postRdmaWrite(mr.va, mr.rkey, Buffer.from('wxyz'), () => t.fail('no error'));
  await sleep(5);
  t.equal(calls, 1);
  t.same(mem.subarray(0, 4), Buffer.from([0x77, 0x78, 0, 0]), 'what the replacement wrote');
});

t.test('listeners: the ones there were when an event began are called, each once', async (t) => {
  const pair = await connected();
  const calls: string[] = [];
  const late = (): void => void calls.push('late');
  const second = (): void => void calls.push('second');
  const first = (): void => {
    calls.push('first');
    pair.target.on('iu', late);
    pair.target.off('iu', second);
  };
  pair.target.on('iu', first);
  pair.target.on('iu', first); // once only
  pair.target.on('iu', second);
  pair.initiator.send(Buffer.from([1]));
  await sleep(5);
  t.same(calls, ['first', 'second'], 'added during the event: not called; removed during it: still called');
  calls.length = 0;
  pair.initiator.send(Buffer.from([2]));
  await sleep(5);
  t.same(calls, ['first', 'late']);
  pair.target.off('iu', first).off('iu', late).off('iu', late);
  calls.length = 0;
  pair.initiator.send(Buffer.from([3]));
  await sleep(5);
  t.same(calls, []);
});
