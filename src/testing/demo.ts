/**
 * `npm run demo` (in-process edition): srp-nbd keeps I/O alive through a
 * path failure. An SRP test target is reached through the real initiator
 * (SRP session, SCSI layer, transport state machine) and exported over NBD;
 * fio writes and verifies (crc32c) through it while the link goes down for
 * 3 s, shorter than fast_io_fail_tmo. The narration shows states, timings
 * and the verdict. The qemu guest edition (real RDMA, /dev/nbdN, md RAID1)
 * lives in test/vm.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NbdServer } from '../nbd/server.js';
import { silentLogger } from '../util/log.js';
import { startTestTarget } from './test-fabric.js';

const t0 = Date.now();
const say = (msg: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(2).padStart(6)} s] ${msg}`);

async function main(): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-demo-'));
  const sock = path.join(dir, 'nbd.sock');
  const logger = silentLogger();
  say('logging in to the test SRP target (RAM LUN, 512-byte blocks, 64 MiB)');
  const { fabric, port, exports } = await startTestTarget({
    luns: [{ blockSize: 512, sizeBytes: 64 << 20, serial: 'DEMO-LUN-0' }],
    logger,
    tmo: { reconnectDelay: 1, fastIoFailTmo: 5, devLossTmo: 60 },
  });
  port.rport.subscribe((a) => {
    if (a.type === 'state-changed') say(`transport state: ${a.from} -> ${a.to}`);
    if (a.type === 'reconnect') say(`reconnect attempt ${a.attempt}`);
  });
  const server = new NbdServer({ logger });
  server.addExport('lun0', exports.get('lun0')!);
  await server.listenUnix(sock);
  const uri = `nbd+unix:///lun0?socket=${sock}`;
  say(`exported as ${uri} (timers: reconnect_delay 1 s, fast_io_fail_tmo 5 s, dev_loss_tmo 60 s)`);

  say('fio: 4K random writes, queue depth 8, then crc32c verify of all 32 MiB');
  const fio = new Promise<{ code: number; out: string }>((resolve) => {
    execFile(
      'fio',
      [
        '--name=demo',
        '--ioengine=nbd',
        `--uri=${uri}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=8',
        '--size=32M',
        '--rate_iops=4000',
        '--verify=crc32c',
        '--do_verify=1',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--output-format=json',
      ],
      { maxBuffer: 16 << 20 },
      (err, stdout) => resolve({ code: err ? 1 : 0, out: stdout }),
    );
  });
  await new Promise((r) => setTimeout(r, 1000));
  say('LINK DOWN (every channel to the target is lost, new logins fail)');
  const down = Date.now();
  fabric.linkDown();
  await new Promise((r) => setTimeout(r, 3000));
  say(`LINK UP after ${((Date.now() - down) / 1000).toFixed(1)} s`);
  const up = Date.now();
  fabric.restoreLink();
  while (port.state !== 'running') await new Promise((r) => setTimeout(r, 5));
  say(
    `I/O released ${Date.now() - up} ms after the link returned; held requests replayed: ${port.gate.stats.released}`,
  );
  const { code, out } = await fio;
  let verdict = false;
  try {
    const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
    say(
      `fio finished: error=${job.error}, written ${job.write.io_bytes >> 20} MiB, verified ${job.read.io_bytes >> 20} MiB`,
    );
    verdict = code === 0 && job.error === 0 && job.read.io_bytes === 32 << 20;
  } catch {
    say('fio produced no result');
  }
  say(
    `export still listed: ${server
      .list()
      .map((e) => e.name)
      .join(', ')}; logins: ${port.logins}`,
  );
  console.log(
    verdict ? '\nVERDICT: PASS - no I/O error, every block verified, same export throughout' : '\nVERDICT: FAIL',
  );
  await server.close();
  await port.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return verdict ? 0 : 1;
}

process.exitCode = await main();
