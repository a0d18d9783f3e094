/**
 * Probe 9 of the security review (hygiene), against parseConfig and the real daemon: weak and
 * whitespace tokens refused; a token in a query string never reaches the log; refused requests
 * logged at a bounded rate; outside input in log lines cut short; warnings for a TCP listener off
 * loopback and for a configuration others can read.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { ConfigError, parseConfig } from '../src/daemon/config.js';
import { boundedField, type Logger, MAX_LOG_FIELD, rateLimitedWarn, urlForLog } from '../src/util/log.js';
import { cleanup, configFile, dir, request, startDaemon, token } from './helpers/daemon.js';

t.teardown(cleanup);

t.test('tokens: whitespace, non-ASCII and trivially weak ones refused', async (t) => {
  const bad: [string, RegExp][] = [
    [' '.repeat(20), /without whitespace/],
    ['abcdefgh ijklmnopq', /without whitespace/],
    ['abcdefghijklmnopé', /printable ASCII/],
    ['a'.repeat(32), /too weak/],
    ['abababababababababab', /too weak/],
  ];
  for (const [tok, why] of bad) {
    try {
      parseConfig({ tcp: { port: 0, token: tok } }, 'test.json');
      t.fail(`token ${JSON.stringify(tok)} accepted`);
    } catch (e) {
      t.ok(e instanceof ConfigError);
      t.match((e as Error).message, why, JSON.stringify(tok));
      t.match((e as Error).message, /tcp\.token/);
    }
  }
  t.equal(parseConfig({ tcp: { port: 0, token } }, 'test.json').tcp?.token, token, 'a good token passes');
});

t.test('the daemon log: no query strings, refusals rate-limited, a readable config warned about', async (t) => {
  fs.chmodSync(configFile, 0o644);
  const d = await startDaemon();
  t.teardown(() => void d.child.kill('SIGTERM'));
  fs.chmodSync(configFile, 0o600);
  const port = d.tcpPort()!;
  t.match(d.log(), /holds the TCP bearer token and is readable by others: chmod 600/);

  const secret = 'qs-secret-9f8e7d6c5b4a';
  for (let i = 0; i < 200; i++) {
    const r = await request({ method: 'GET', path: `/targets?token=${secret}&n=${i}`, port });
    if (r.status !== 401) t.fail(`status ${r.status}`);
  }
  const log = d.log();
  t.notMatch(log, secret, 'the query string is not logged');
  const refusals = log.split('\n').filter((l) => l.includes('control request refused (401)'));
  t.ok(refusals.length >= 1 && refusals.length <= 3, `200 refusals, ${refusals.length} log line(s)`);
  t.match(refusals[0], /"url":"\/targets\?…"/);

  d.child.kill('SIGTERM');
  await d.exited;
});

t.test('log helpers: outside input cut short, query strings dropped, warnings rate-limited', async (t) => {
  t.equal(boundedField('abc'), 'abc');
  const long = boundedField('y'.repeat(60_000));
  t.ok(long.length < MAX_LOG_FIELD + 40);
  t.match(long, /… \(60000 characters\)$/);
  t.equal(urlForLog('/targets/a?token=s3cret'), '/targets/a?…');
  t.equal(urlForLog('/metrics'), '/metrics');
  const lines: { obj: Record<string, unknown>; msg: string }[] = [];
  const fake = { warn: (obj: Record<string, unknown>, msg: string) => lines.push({ obj, msg }) } as unknown as Logger;
  const warn = rateLimitedWarn(fake, 50);
  for (let i = 0; i < 100; i++) warn({ i }, 'refused');
  t.equal(lines.length, 1, '100 in a burst: one line');
  await new Promise((r) => setTimeout(r, 60));
  warn({ i: 100 }, 'refused');
  t.same(lines[1], { obj: { i: 100, suppressed: 99 }, msg: 'refused' }, 'the next line counts the suppressed ones');
});

t.test('a TCP listener off loopback is warned about', async (t) => {
  const cfg = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  const f = path.join(dir, 'wide.json');
  fs.writeFileSync(f, JSON.stringify({ ...cfg, tcp: { host: '0.0.0.0', port: 0, token } }), { mode: 0o600 });
  const orig = fs.readFileSync(configFile);
  fs.copyFileSync(f, configFile);
  t.teardown(() => fs.writeFileSync(configFile, orig, { mode: 0o600 }));
  const d = await startDaemon();
  t.match(d.log(), /control API on TCP off loopback without TLS/);
  t.notMatch(d.log(), /readable by others/, 'a 0600 configuration is not warned about');
  d.child.kill('SIGTERM');
  await d.exited;
});
