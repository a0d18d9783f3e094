/**
 * Probe 9 of the security review (hygiene), against parseConfig and the real daemon: weak and
 * whitespace tokens refused; a token in a query string never reaches the log; refused requests
 * logged at a bounded rate; outside input in log lines cut short; warnings for a TCP listener off
 * loopback and for a configuration others can read; on the NBD socket, stalled handshakes kept
 * apart from established clients.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { ConfigError, parseConfig } from '../src/daemon/config.js';
import { boundedField, type Logger, MAX_LOG_FIELD, rateLimitedWarn, urlForLog } from '../src/util/log.js';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import { cleanup, configFile, dir, request, startDaemon, token } from './helpers/daemon.js';
import { RawClient, startServer } from './helpers/nbd.js';

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

t.test('NBD socket: stalled handshakes have a budget of their own', async (t) => {
  const srv = await startServer(
    { disk: new MemoryBackend({ size: 1 << 20 }) },
    { maxHandshakes: 2, maxConnections: 3, handshakeTimeoutMs: 800 },
  );
  t.teardown(srv.close);
  const closedSoon = (c: RawClient, ms: number): Promise<boolean> =>
    new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      c.socket.once('close', () => (clearTimeout(timer), resolve(true)));
      c.socket.resume();
    });
  // two clients complete their handshake and stay
  const real = [await RawClient.connect(srv.socketPath), await RawClient.connect(srv.socketPath)];
  for (const c of real) await c.go('disk');
  // two stall in their handshake; a third is refused at once
  const stalled = [await RawClient.connect(srv.socketPath), await RawClient.connect(srv.socketPath)];
  const extra = await RawClient.connect(srv.socketPath);
  t.ok(await closedSoon(extra, 300), 'a third stalled handshake is refused at once');
  t.notOk(await closedSoon(stalled[0]!, 100), 'the first two are kept for now');
  t.equal(srv.server.connectionCount, 4, 'two established + two handshaking');
  const late = await RawClient.connect(srv.socketPath);
  t.ok(await closedSoon(late, 300), 'while both handshake slots are held, a new client is refused');
  t.ok(await closedSoon(stalled[1]!, 2000), 'a stalled handshake is dropped after handshakeTimeoutMs');
  for (let i = 0; i < 50 && srv.server.connectionCount > 2; i++) await new Promise((r) => setTimeout(r, 20));
  const third = await RawClient.connect(srv.socketPath);
  await third.go('disk');
  t.pass('then a client completes its handshake: the stalled ones never held an established slot');
  for (const c of real) t.notOk(c.socket.destroyed, 'the established clients are untouched');
  for (const c of [...real, ...stalled, third]) c.socket.destroy();
});
