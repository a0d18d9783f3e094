/**
 * Host-side checks of test/vm/guest-lib.sh helpers that need no guest (pure text processing),
 * run with the same bash and awk the guest uses (the guest mounts the host's root).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

const LIB = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../test/vm/guest-lib.sh');

function lib(outDir: string, script: string): string {
  const r = spawnSync('bash', ['-c', `. "$LIB"; ${script}`], {
    env: { ...process.env, LIB, OUT_DIR: outDir },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`bash exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}

t.test('daemon_log_first returns the log time in full ms; ms_between of two of them', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-guestlib-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(
    path.join(dir, 'daemon.log'),
    [
      '{"level":30,"time":1732560000100,"target":"a","from":"running","to":"blocked","msg":"state running -> blocked"}',
      '{"level":30,"time":1732560000200,"target":"a","from":"blocked","to":"running","msg":"state blocked -> running"}',
      '{"level":30,"time":1732560001234,"target":"a","from":"running","to":"blocked","msg":"state running -> blocked"}',
      '{"level":30,"time":1732560003984,"target":"a","from":"blocked","to":"running","msg":"state blocked -> running"}',
      '',
    ].join('\n'),
  );
  const tb = lib(dir, `daemon_log_first 1732560001000 '"to":"blocked"'`).trim();
  t.equal(tb, '1732560001234', 'the first match after SINCE, every digit');
  const tr = lib(dir, `daemon_log_first ${tb} '"to":"running"'`).trim();
  t.equal(tr, '1732560003984', 'SINCE taken from an earlier answer excludes the lines before it');
  t.equal(lib(dir, `ms_between ${tb} ${tr}`), '2.75');
  t.equal(lib(dir, `daemon_log_first 1732560005000 '"to":"running"'`), '', 'nothing after SINCE: empty');
});
