/**
 * `srp-nbd serve --test-target` as a user runs it: a separate process whose
 * exports are LUNs of an in-process SRP target reached through the real
 * initiator code; nbdinfo, nbdcopy and fio verify go through it end to end.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { run } from './helpers/nbd.js';

const MiB = 1 << 20;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-tt-'));
const sock = path.join(dir, 'nbd.sock');
const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;
const child = spawn(
  process.execPath,
  [bin, 'serve', '--test-target', '--lun-size', '32M', '--unix', sock, '--log-level', 'warn'],
  {
    stdio: ['ignore', 'pipe', 'inherit'],
  },
);
await new Promise<void>((resolve, reject) => {
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
    if (out.includes('listening on unix:')) resolve();
  });
  child.on('exit', (code) => reject(new Error(`serve --test-target exited ${code}`)));
});
t.teardown(() => {
  child.kill('SIGTERM');
  fs.rmSync(dir, { recursive: true, force: true });
});
const uri = (lun: string): string => `nbd+unix:///${lun}?socket=${sock}`;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('nbdinfo: one export per LUN with the LUN geometry', async (t) => {
  const list = JSON.parse(await run('nbdinfo', ['--list', '--json', uri('')])).exports;
  const byName = new Map(list.map((e: { 'export-name': string }) => [e['export-name'], e]));
  t.same([...byName.keys()].sort(), ['lun0', 'lun1']);
  const lun0 = JSON.parse(await run('nbdinfo', ['--json', uri('lun0')])).exports[0];
  const lun1 = JSON.parse(await run('nbdinfo', ['--json', uri('lun1')])).exports[0];
  t.equal(lun0['export-size'], 32 * MiB);
  t.equal(lun0.block_size_minimum, 512);
  t.equal(lun1.block_size_minimum, 4096);
  t.equal(lun0.can_trim, true, 'thin-provisioned LUN offers TRIM (UNMAP)');
  t.equal(lun0.can_fua, true);
});

for (const lun of ['lun0', 'lun1']) {
  t.test(`nbdcopy in and out of ${lun} through the SRP initiator`, async (t) => {
    const src = randomBytes(32 * MiB);
    fs.writeFileSync(path.join(dir, 'in.img'), src);
    await run('nbdcopy', [path.join(dir, 'in.img'), uri(lun)]);
    await run('nbdcopy', [uri(lun), path.join(dir, 'out.img')]);
    t.equal(sha(fs.readFileSync(path.join(dir, 'out.img'))), sha(src));
  });

  t.test(`fio verify=crc32c on ${lun} through the SRP initiator`, async (t) => {
    const out = await run('fio', [
      '--name=tt',
      '--ioengine=nbd',
      `--uri=${uri(lun)}`,
      '--rw=randrw',
      '--bsrange=4k-128k',
      '--iodepth=16',
      '--size=16M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--output-format=json',
    ]);
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    t.equal(job.error, 0);
    t.ok(job.write.io_bytes > 0 && job.read.io_bytes > 0);
  });
}

t.test('qemu-io discard and write-zeroes map to UNMAP / WRITE SAME and read back as zeroes', async (t) => {
  const out = await run('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0x5a 0 2M',
    '-c',
    'discard 0 1M',
    '-c',
    'read -P 0 0 1M',
    '-c',
    'write -z 1M 512k',
    '-c',
    'read -P 0 1M 512k',
    '-c',
    'read -P 0x5a 1536k 512k',
    uri('lun0'),
  ]);
  t.notMatch(out, /fail|error/i, out);
  t.equal((out.match(/^read /gm) ?? []).length, 3);
});

t.test('bad timer combinations are refused with the rule named', async (t) => {
  const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const c = spawn(
      process.execPath,
      [bin, 'serve', '--test-target', '--fast-io-fail-tmo', '700', '--dev-loss-tmo', '600'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    c.stderr.on('data', (d) => (err += d));
    c.on('exit', (code) => resolve({ code, err }));
  });
  t.equal(r.code, 2);
  t.match(r.err, /fast_io_fail_tmo/);
});
