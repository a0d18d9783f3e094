/**
 * The first five minutes: `node bin/srp-nbd.js` in a clone that was never built (no dist/) says
 * how to build, and one built but without its node modules says how to install them; neither
 * prints a module-not-found stack trace.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';

const repo = new URL('../../', import.meta.url).pathname;
const clone = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-clone-'));
t.teardown(() => fs.rmSync(clone, { recursive: true, force: true }));
fs.mkdirSync(path.join(clone, 'bin'));
fs.copyFileSync(path.join(repo, 'bin/srp-nbd.js'), path.join(clone, 'bin/srp-nbd.js'));
fs.copyFileSync(path.join(repo, 'package.json'), path.join(clone, 'package.json'));

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(clone, 'bin/srp-nbd.js'), ...args],
      { env: { ...process.env, NODE_OPTIONS: '' }, cwd: clone },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

t.test('no dist/: says how to build, exit 1, no stack trace', async (t) => {
  const r = await run(['list']);
  t.equal(r.code, 1);
  t.match(r.stderr, /^srp-nbd: not built yet \(no dist\/\): run `npm ci` .* and `npm run build`/);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
  t.notMatch(r.stderr, /ERR_MODULE_NOT_FOUND/);
});

t.test('dist/ without node_modules: says what is missing and how to install it', async (t) => {
  fs.cpSync(path.join(repo, 'dist/src'), path.join(clone, 'dist/src'), { recursive: true });
  const help = await run(['--help']);
  t.equal(help.code, 0, 'the usage needs no module');
  t.match(help.stdout, /usage: srp-nbd <command>/);
  const r = await run(['list']);
  t.equal(r.code, 1);
  t.match(r.stderr, /^srp-nbd: (zod|fastify|pino|[a-z@/.-]+) is not installed: run `npm ci` and `npm run build`/);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
});
