/**
 * Real NBD clients against the server: nbdinfo, nbdcopy, qemu-img, qemu-io
 * and fio's nbd engine, over a unix socket and TCP, plus the `srp-nbd serve`
 * command itself as a separate process.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import { FileBackend } from '../src/nbd/file-backend.js';
import { run, startServer } from './helpers/nbd.js';

const MiB = 1 << 20;
const disk = new MemoryBackend({ size: 64 * MiB, description: 'test disk' });
const aligned = new MemoryBackend({ size: 16 * MiB, minimumBlockSize: 4096 });
const srv = await startServer({ disk, aligned, ro: new MemoryBackend({ size: MiB, readOnly: true }) });
t.teardown(() => srv.close());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const tmp = (name: string): string => path.join(srv.dir, name);

t.test('nbdinfo --list names every export', async (t) => {
  const out = JSON.parse(await run('nbdinfo', ['--list', '--json', srv.uri('unix', '')]));
  t.same(out.exports.map((e: { 'export-name': string }) => e['export-name']).sort(), ['aligned', 'disk', 'ro']);
});

for (const kind of ['unix', 'tcp'] as const) {
  t.test(`nbdinfo over ${kind}: size, flags, block sizes`, async (t) => {
    const info = JSON.parse(await run('nbdinfo', ['--json', srv.uri(kind, 'aligned')]));
    const e = info.exports[0];
    t.equal(e['export-size'], 16 * MiB);
    t.equal(e.is_read_only, false);
    t.equal(e.can_flush, true);
    t.equal(e.can_fua, true);
    t.equal(e.can_trim, true);
    t.equal(e.can_zero, true);
    t.equal(e.can_multi_conn, true);
    t.equal(e.block_size_minimum, 4096);
    t.equal(e.block_size_preferred, 4096);
    t.equal(e.block_size_maximum, 32 * MiB);
    const ro = JSON.parse(await run('nbdinfo', ['--json', srv.uri(kind, 'ro')])).exports[0];
    t.equal(ro.is_read_only, true);
  });

  t.test(`nbdcopy both directions over ${kind}, checksums match`, async (t) => {
    const src = randomBytes(48 * MiB + 4096);
    fs.writeFileSync(tmp('src.img'), src);
    await run('nbdcopy', [tmp('src.img'), srv.uri(kind, 'disk')]);
    await run('nbdcopy', [srv.uri(kind, 'disk'), tmp('back.img')]);
    const back = fs.readFileSync(tmp('back.img'));
    t.equal(back.length, 64 * MiB);
    t.equal(sha(back.subarray(0, src.length)), sha(src));
  });

  t.test(`fio --ioengine=nbd verify=crc32c over ${kind}`, async (t) => {
    const out = await run('fio', [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${srv.uri(kind, 'disk')}`,
      '--rw=randwrite',
      '--bs=4k,64k',
      '--bsrange=4k-256k',
      '--iodepth=16',
      '--size=32M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--verify_state_save=0',
      '--output-format=json',
    ]);
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    t.equal(job.error, 0, 'no I/O or verify error');
    t.equal(job.write.io_bytes, 32 * MiB, 'every byte written');
    t.equal(job.read.io_bytes, 32 * MiB, 'every byte read back and verified');
  });
}

t.test('qemu-img convert both ways and qemu-img compare', async (t) => {
  const src = randomBytes(8 * MiB);
  fs.writeFileSync(tmp('q.img'), src);
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', tmp('q.img'), srv.uri('unix', 'aligned')]);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri('tcp', 'aligned'), tmp('q2.img')]);
  t.equal(sha(fs.readFileSync(tmp('q2.img')).subarray(0, src.length)), sha(src));
  // compare reports a difference (exit 1) if any byte differs; the export is larger, so pad the source
  fs.truncateSync(tmp('q.img'), 16 * MiB);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', tmp('q.img'), srv.uri('unix', 'aligned')]);
  t.pass('qemu-img compare found the images identical');
});

t.test('qemu-io: write, read, flush, discard, write-zeroes with pattern checks', async (t) => {
  const out = await run('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0xab 0 1M',
    '-c',
    'write -f -P 0xcd 1M 1M', // FUA
    '-c',
    'read -P 0xab 0 1M',
    '-c',
    'read -P 0xcd 1M 1M',
    '-c',
    'flush',
    '-c',
    'discard 0 64k',
    '-c',
    'read -P 0 0 64k',
    '-c',
    'write -z -u 1M 512k',
    '-c',
    'read -P 0 1M 512k',
    '-c',
    'read -P 0xcd 1536k 512k',
    '-c',
    'aio_write -P 0x11 2M 64k',
    '-c',
    'aio_write -P 0x22 3M 64k',
    '-c',
    'aio_flush',
    '-c',
    'read -P 0x11 2M 64k',
    '-c',
    'read -P 0x22 3M 64k',
    srv.uri('unix', 'disk'),
  ]);
  t.notMatch(out, /fail|error|mismatch/i, out);
  t.equal((out.match(/^read \d+\/\d+ bytes/gm) ?? []).length, 7, 'all seven reads completed and verified');
  t.equal((out.match(/^wrote \d+\/\d+ bytes/gm) ?? []).length, 5, 'all five writes completed');
});

t.test('qemu-io against a read-only export gets a permission error on write', async (t) => {
  await t.rejects(
    run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', srv.uri('unix', 'ro')]),
    /read.only|Permission|Operation not permitted/i,
  );
});

t.test('srp-nbd serve as a process: --memory and --file, clean exit on SIGTERM', async (t) => {
  const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;
  const file = tmp('served.img');
  const data = randomBytes(4 * MiB);
  fs.writeFileSync(file, data);
  for (const args of [
    ['--memory', '8M'],
    ['--file', file],
  ]) {
    const sock = tmp(`serve-${args[0]!.slice(2)}.sock`);
    const child = spawn(process.execPath, [bin, 'serve', ...args, '--unix', sock, '--name', 'x'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('listening on unix:')) resolve();
      });
      child.on('exit', (code) => reject(new Error(`serve exited ${code}`)));
    });
    t.match(out, `listening on unix:${sock}`);
    const info = JSON.parse(await run('nbdinfo', ['--json', `nbd+unix:///x?socket=${sock}`])).exports[0];
    t.equal(info['export-size'], args[0] === '--memory' ? 8 * MiB : 4 * MiB, `${args[0]} size`);
    if (args[0] === '--file') {
      await run('nbdcopy', [`nbd+unix:///x?socket=${sock}`, tmp('file-back.img')]);
      t.equal(sha(fs.readFileSync(tmp('file-back.img'))), sha(data), 'file contents served intact');
    }
    const code = await new Promise((resolve) => {
      child.removeAllListeners('exit');
      child.on('exit', resolve);
      child.kill('SIGTERM');
    });
    t.equal(code, 0, 'exit status 0 after SIGTERM');
  }
});

t.test('srp-nbd serve rejects bad arguments with exit status 2 and a clear message', async (t) => {
  const bin = new URL('../../bin/srp-nbd.js', import.meta.url).pathname;
  const cases: [string[], RegExp][] = [
    [['serve'], /exactly one of --memory SIZE, --file PATH or --test-target/],
    [['serve', '--memory', '12Q'], /invalid size '12Q'/],
    [['serve', '--memory', '1M', '--tcp', 'host:99999'], /invalid --tcp/],
    [['serve', '--memory', '1M', '--bogus'], /bogus/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ];
  for (const [args, msg] of cases) {
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.on('exit', (code) => resolve({ code, err }));
    });
    t.equal(r.code, 2, args.join(' '));
    t.match(r.err, msg);
  }
});

t.test('file backend: FileBackend.open refuses a directory with a clear error', async (t) => {
  await t.rejects(FileBackend.open(srv.dir), /is not a regular file/);
});
