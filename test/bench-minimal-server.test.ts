/**
 * The benchmark's yardstick (bench/minimal-server.c) must be a correct NBD server, or the
 * figures measured against it mean nothing: it builds, libnbd negotiates with it, fio's verified
 * I/O passes through it, and a request outside the export ends the connection.
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import * as C from '../src/nbd/nbd-constants.js';
import { RawClient, run } from './helpers/nbd.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-minimal-'));
const bin = path.join(dir, 'minimal-server');
const sock = path.join(dir, 'nbd.sock');
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

execFileSync('cc', [
  '-O2',
  '-Wall',
  '-Werror',
  '-o',
  bin,
  new URL('../../bench/minimal-server.c', import.meta.url).pathname,
]);
const server = spawn(bin, [sock, '64'], { stdio: 'ignore' });
t.teardown(() => server.kill());
const uri = `nbd+unix:///?socket=${sock}`;
for (let i = 0; i < 50 && !fs.existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));

t.test('libnbd sees a 64 MiB export with structured replies, flush and FUA', async (t) => {
  t.equal((await run('nbdinfo', ['--size', uri])).trim(), String(64 << 20));
  const info = await run('nbdinfo', [uri]);
  t.match(info, /using structured packets/);
  t.match(info, /can_flush: true/);
  t.match(info, /can_fua: true/);
});

t.test('fio verify through it: 4K random and 1M sequential', async (t) => {
  for (const [rw, bs, qd] of [
    ['randwrite', '4k', '32'],
    ['write', '1M', '8'],
  ] as const) {
    const out = await run('fio', [
      '--name=yardstick',
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--rw=${rw}`,
      `--bs=${bs}`,
      `--iodepth=${qd}`,
      '--size=8M',
      '--verify=crc32c',
      '--do_verify=1',
      '--output-format=json',
    ]);
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    t.equal(job.error, 0, `${rw} ${bs}: no error`);
    t.equal(job.read.io_bytes, 8 << 20, `${rw} ${bs}: all 8 MiB read back and verified`);
  }
});

t.test('a READ past the end of the export ends the connection', async (t) => {
  const c = await RawClient.connect(sock);
  await c.go('');
  const closed = new Promise<void>((r) => c.socket.once('close', () => r()));
  c.request(C.NBD_CMD_READ, 1n, 64 << 20, 4096);
  await closed;
  t.pass('closed');
  // And the server serves the next client.
  t.equal((await run('nbdinfo', ['--size', uri])).trim(), String(64 << 20));
});
