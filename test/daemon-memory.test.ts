/**
 * Memory protections (src/daemon/memory.ts): why mlockall is not used (it aborts V8: shown here in
 * a child process), what is locked instead (the file-backed mappings: V8 keeps running, the daemon
 * serves I/O and stops cleanly), the I/O flusher, and the off switches, through GET /health and
 * `srp-nbd status`.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import t from 'tap';
import { lockable, MCL_CURRENT, MCL_FUTURE, parseMaps } from '../src/daemon/memory.js';
import { tryLoadNative } from '../src/native/native.js';
import { childEnv, cleanup, cli, configFile, fioVerify, request, startDaemon, stopDaemon } from './helpers/daemon.js';

t.teardown(cleanup);
const root = process.getuid?.() === 0;
const addon = new URL('../../native/build/Release/srp_nbd_native.node', import.meta.url).pathname;
const vmLckKiB = (pid: number): number =>
  Number(/VmLck:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);

t.test('parseMaps and lockable: regular files only', async (t) => {
  const maps = parseMaps(
    [
      '00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/node',
      '7f0000000000-7f0000021000 rw-p 00000000 00:00 0 ',
      '7f0000100000-7f0000200000 r--p 00000000 08:02 99    /usr/lib/x86_64-linux-gnu/libc.so.6',
      '7f0000300000-7f0000301000 rw-s 00000000 00:05 12    /dev/zero (deleted)',
      '7f0000400000-7f0000401000 ---p 00000000 08:02 99    /usr/lib/x86_64-linux-gnu/libc.so.6',
      '7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0     [stack]',
      '7f0000500000-7f0000501000 r--p 00000000 08:02 5     /tmp/gone (deleted)',
    ].join('\n'),
  );
  t.equal(maps.length, 7);
  t.same(maps[0], { start: 0x400000n, end: 0x452000n, perms: 'r-xp', path: '/usr/bin/node' });
  t.same(
    lockable(maps).map((m) => m.path),
    ['/usr/bin/node', '/usr/lib/x86_64-linux-gnu/libc.so.6'],
  );
});

t.test('mlockall is not usable under V8: it aborts Node (or is refused without root)', async (t) => {
  const script = `
    const b = require(${JSON.stringify(addon)});
    try { b.mlockall(${MCL_CURRENT | MCL_FUTURE}); } catch (e) { console.log('refused ' + e.code); process.exit(3); }
    console.log('locked');
    let keep = [];
    for (let i = 0; i < 40; i++) { keep.push(new Array(100000).fill(i).map((x) => ({ x }))); if (i % 10 === 9) keep = []; }
    global.gc();
  `;
  const r = await new Promise<{ code: number | null; signal: string | null; out: string }>((resolve) => {
    const p = spawn(process.execPath, ['--expose-gc', '--max-old-space-size=256', '-e', script], { env: childEnv });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('exit', (code, signal) => resolve({ code, signal, out }));
  });
  if (root) {
    t.match(r.out, /^locked\n/, 'root may lock everything');
    t.ok(
      r.signal !== null || (r.code !== 0 && r.code !== null),
      `Node did not survive (code ${r.code}, signal ${r.signal})`,
    );
    t.match(r.out, /Check failed|Fatal error/, "V8's fatal check on giving memory back");
  } else {
    t.equal(r.code, 3, r.out);
    t.match(r.out, /refused (ENOMEM|EPERM)/, 'RLIMIT_MEMLOCK is far below what mlockall would lock');
  }
});

t.test('the daemon locks its file-backed mappings, serves I/O and stops cleanly', async (t) => {
  t.ok(tryLoadNative(), 'the addon is built');
  const d = await startDaemon();
  const health = JSON.parse((await request({ method: 'GET', path: '/health' })).body);
  const m = health.memory;
  t.equal(m.lock.enabled, true, 'on by default');
  t.equal(m.lock.what, 'file-backed mappings');
  t.ok(m.lock.mappings > 5, `${m.lock.mappings} mappings locked`);
  if (root) {
    t.ok(m.lock.locked_bytes > 32 << 20, `${m.lock.locked_bytes >> 20} MiB locked (node itself is most of it)`);
    t.equal(m.lock.failed, 0, m.lock.error ?? '');
    t.ok(vmLckKiB(d.child.pid!) * 1024 >= m.lock.locked_bytes, 'the kernel counts it in VmLck');
  } else {
    t.ok(m.lock.failed > 0, 'RLIMIT_MEMLOCK stops a non-root daemon');
    t.match(m.lock.error, /^ENOMEM locking .*RLIMIT_MEMLOCK/);
  }
  t.equal(m.io_flusher.enabled, true);
  if (m.io_flusher.applied) t.equal(m.io_flusher.error, null);
  else t.match(m.io_flusher.error, /^(EPERM: needs CAP_SYS_RESOURCE|EINVAL: the kernel lacks PR_SET_IO_FLUSHER)/);
  t.ok(m.heap_limit_mib > 0);
  t.match(d.log(), /"msg":"memory protections applied"/);

  const status = await cli(['status']);
  t.equal(status.code, 0, status.stderr);
  t.match(
    status.stdout,
    /^daemon {2}memory: (I\/O flusher|not an I\/O flusher \(E[A-Z]+.*\)), \d+ MiB locked \(\d+ file-backed mappings/,
  );

  t.equal((await cli(['attach', 'test-target,name=m,luns=1,lun_size=8M'])).code, 0);
  await fioVerify('test-m-lun0');
  t.equal(await stopDaemon(d, 'SIGTERM'), 0, 'V8 ran and exited with its code locked');
});

t.test('memory.lock and memory.io_flusher off: nothing applied, nothing locked', async (t) => {
  const cfg = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  fs.writeFileSync(configFile, JSON.stringify({ ...cfg, memory: { lock: false, io_flusher: false } }), { mode: 0o600 });
  const d = await startDaemon();
  const m = JSON.parse((await request({ method: 'GET', path: '/health' })).body).memory;
  t.match(m, {
    lock: { enabled: false, mappings: 0, locked_bytes: 0 },
    io_flusher: { enabled: false, applied: false },
  });
  t.equal(vmLckKiB(d.child.pid!), 0, 'VmLck 0');
  const status = await cli(['status']);
  t.match(status.stdout, /^daemon {2}memory: I\/O flusher off, memory lock off, heap limit \d+ MiB/);
  t.equal(await stopDaemon(d, 'SIGTERM'), 0);
});
