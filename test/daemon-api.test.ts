/**
 * The real daemon process through its control API: REST bodies refused with 400s naming the field,
 * metrics, the TCP listener's bearer token (401), an unprivileged caller refused on the unix
 * socket, and kill -9 followed by a restart that re-attaches the same export names with the LUN
 * identity checked, I/O (nbdcopy, fio verify) before and after, no acknowledged write lost (the
 * test LUNs are image-backed: image_dir=, written through before a write is acknowledged), and a
 * changed identity refused.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { run } from './helpers/nbd.js';
import {
  bin,
  cleanup,
  cli,
  type CliResult,
  controlSock,
  daemons,
  dir,
  fioVerify,
  imageDir,
  MiB,
  request,
  sha,
  startDaemon,
  stateDir,
  stopDaemon,
  token,
  uri,
} from './helpers/daemon.js';

t.teardown(cleanup);

t.test('setup: a daemon with one image-backed test target', async (t) => {
  await startDaemon();
  const a = await request({
    method: 'POST',
    path: '/targets',
    body: JSON.stringify({
      address: `test-target,name=a,luns=2,lun_size=16M,image_dir=${imageDir}`,
      dev_loss_tmo: 60,
      fast_io_fail_tmo: 'off',
    }),
  });
  t.equal(a.status, 201, a.body);
  await fioVerify('test-a-lun1');
});

t.test('REST: bad bodies get 400s naming the field; OpenAPI; metrics', async (t) => {
  const noAddr = await request({ method: 'POST', path: '/targets', body: '{}' });
  t.equal(noAddr.status, 400);
  t.match(JSON.parse(noAddr.body).message, /address: required/);
  const badType = await request({
    method: 'POST',
    path: '/targets',
    body: JSON.stringify({ address: 'test-target,name=q', queue_size: 'lots', bogus: 1 }),
  });
  t.equal(badType.status, 400);
  const bt = JSON.parse(badType.body);
  t.match(bt.message, /queue_size: Expected number, received string \[type\]/);
  t.ok(bt.issues.some((i: { path: string; rule: string }) => i.path === 'bogus' && i.rule === 'unknown-key'));
  const badTmo = await request({
    method: 'PATCH',
    path: '/targets/test-a',
    body: JSON.stringify({ dev_loss_tmo: 'soon' }),
  });
  t.equal(badTmo.status, 400);
  t.match(JSON.parse(badTmo.body).message, /dev_loss_tmo: invalid timeout "soon"/);
  const rule = await request({
    method: 'PATCH',
    path: '/targets/test-a',
    body: JSON.stringify({ fast_io_fail_tmo: 30, dev_loss_tmo: 20 }),
  });
  t.equal(rule.status, 400);
  t.same(
    JSON.parse(rule.body).issues.map((i: { path: string; rule: string }) => [i.path, i.rule]),
    [['fast_io_fail_tmo', 'fast-io-fail-not-before-dev-loss']],
  );
  const empty = await request({ method: 'PATCH', path: '/targets/test-a', body: '{}' });
  t.equal(empty.status, 400);
  t.match(JSON.parse(empty.body).message, /give at least one of reconnect_delay/);
  const garbage = await request({ method: 'POST', path: '/targets', body: '{"address": ' });
  t.equal(garbage.status, 400, 'malformed JSON');
  const notFound = await request({ method: 'DELETE', path: '/targets/ghost' });
  t.equal(notFound.status, 404);
  t.match(JSON.parse(notFound.body).message, /^ghost: no such target, device, export or stable name \(attached: /);
  const ok = await request({ method: 'PATCH', path: '/targets/test-a', body: JSON.stringify({ reconnect_delay: 2 }) });
  t.equal(ok.status, 200);
  t.equal(JSON.parse(ok.body).timers.reconnect_delay, 2);
  const rescan = await request({ method: 'POST', path: '/targets/test-a/rescan' });
  t.equal(rescan.status, 200, rescan.body);
  t.match(JSON.parse(rescan.body).lun_details[0], { state: 'attached', read_only: false, write_protect: false });

  const api = await request({ method: 'GET', path: '/openapi.json' });
  t.equal(api.status, 200);
  t.equal(JSON.parse(api.body).openapi, '3.0.3');
  const health = JSON.parse((await request({ method: 'GET', path: '/health' })).body);
  t.equal(health.status, 'ok');

  const m = await request({ method: 'GET', path: '/metrics' });
  t.equal(m.status, 200);
  t.match(m.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  t.match(m.body, /srp_nbd_target_state\{target="test-a",state="running"\} 1/);
  t.match(m.body, /srp_nbd_target_state\{target="test-a",state="blocked"\} 0/);
  t.match(m.body, /srp_nbd_credits\{target="test-a"\} [1-9]/);
  t.match(m.body, /srp_nbd_memory_registrations_total\{target="test-a"\} [1-9]/, 'command slots registered');
  t.match(m.body, /srp_nbd_per_command_registrations_total\{target="test-a"\} \d+/);
  t.match(m.body, /srp_nbd_failed_reconnects_total\{target="test-a"\} 0/);
  t.match(m.body, /srp_nbd_state_seconds_total\{target="test-a",state="running"\} [0-9.]+/);
  t.match(m.body, /srp_nbd_lun_ops_total\{target="test-a",export="test-a-lun1",op="write"\} [1-9]/);
  t.match(
    m.body,
    /srp_nbd_lun_latency_seconds_bucket\{target="test-a",export="test-a-lun1",op="read",le="\+Inf"\} [1-9]/,
  );
});

t.test('TCP listener: bearer token required (401 otherwise)', async (t) => {
  const port = daemons.current!.tcpPort();
  t.ok(port, 'TCP port logged');
  const none = await request({ method: 'GET', path: '/targets', port: port! });
  t.equal(none.status, 401);
  t.match(none.headers['www-authenticate'], /^Bearer/);
  const wrong = await request({
    method: 'GET',
    path: '/targets',
    port: port!,
    headers: { authorization: 'Bearer not-the-token-at-all' },
  });
  t.equal(wrong.status, 401);
  t.match(JSON.parse(wrong.body).message, /wrong bearer token/);
  const bad = await request({
    method: 'POST',
    path: '/targets',
    port: port!,
    body: JSON.stringify({ address: 'test-target,name=evil' }),
  });
  t.equal(bad.status, 401, 'no attach without the token');
  const right = await request({
    method: 'GET',
    path: '/targets',
    port: port!,
    headers: { authorization: `Bearer ${token}` },
  });
  t.equal(right.status, 200);
  t.equal(JSON.parse(right.body)[0].id, 'test-a');
  const viaCli = await cli(['list', '--json', '--url', `http://127.0.0.1:${port}`, '--token', token], {
    socket: false,
  });
  t.equal(viaCli.code, 0, viaCli.stderr);
  const cliWrong = await cli(['list', '--url', `http://127.0.0.1:${port}`, '--token', 'nope-nope-nope-nope'], {
    socket: false,
  });
  t.equal(cliWrong.code, 1);
  t.match(cliWrong.stderr, /wrong bearer token/);
});

t.test('an unprivileged caller cannot use the control socket', async (t) => {
  const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
  if (process.getuid?.() !== 0 || !setpriv) {
    t.comment('skipped: needs root and setpriv to run a client as nobody');
    return;
  }
  const asNobody = (args: string[]): Promise<CliResult> =>
    new Promise((resolve) => {
      execFile(
        setpriv,
        ['--reuid=65534', '--regid=65534', '--clear-groups', '--', ...args],
        { timeout: 20_000 },
        (err, stdout, stderr) => {
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
        },
      );
    });
  const curl = await asNobody(['curl', '-sS', '--unix-socket', controlSock, 'http://localhost/targets']);
  t.not(curl.code, 0, 'curl as nobody fails');
  t.match(curl.stderr, /Couldn't connect|Permission denied|Failed to connect/i);
  const asRoot = await run('curl', ['-sS', '--unix-socket', controlSock, 'http://localhost/health']);
  t.match(asRoot, /"status":"ok"/, 'the same request as root works');
  // Only try the CLI as nobody when nobody can read the code at all.
  if (fs.statSync(bin).mode & 0o004 && (fs.statSync(path.dirname(bin)).mode & 0o005) === 0o005) {
    const c = await asNobody([process.execPath, bin, 'list', '--socket', controlSock]);
    if (!/Cannot find module|EACCES: permission denied, open/.test(c.stderr)) {
      t.equal(c.code, 1);
      t.match(c.stderr, /^srp-nbd: cannot reach the daemon at .*control\.sock: permission denied \(root only\)/);
    }
  }
});

t.test('kill -9, restart: same export names, identity checked, no acknowledged write lost', async (t) => {
  const before = daemons.current!;
  const data = randomBytes(16 * MiB);
  const src = path.join(dir, 'in.img');
  fs.writeFileSync(src, data);
  await run('nbdcopy', [src, uri('test-a-lun0')]); // nbdcopy exits 0 only when every write (and the flush) was acknowledged
  t.equal(await stopDaemon(before, 'SIGKILL'), null, 'killed');
  t.ok(fs.existsSync(controlSock), 'a stale control socket is left behind');

  const t0 = Date.now();
  const after = await startDaemon();
  const restartMs = Date.now() - t0;
  t.comment(`restart to ready: ${restartMs} ms`);
  t.match(after.log(), /"msg":"re-attaching persisted target"/);
  t.match(after.log(), /"export":"test-a-lun0".*"msg":"identity check passed: same LUN as before"/);
  const list = JSON.parse((await cli(['list', '--json'])).stdout);
  t.same(list, [
    {
      id: 'test-a',
      status: 'attached',
      state: 'running',
      address: `test-target,name=a,luns=2,lun_size=16777216,block_size=512,image_dir=${imageDir}`,
      luns: [
        { export: 'test-a-lun0', device: null, by_id: list[0].luns[0].by_id },
        { export: 'test-a-lun1', device: null, by_id: list[0].luns[1].by_id },
      ],
    },
  ]);
  t.match(list[0].luns[0].by_id, /^srp-nbd-naa\.[0-9a-f]{32}$/, 'stable names from the identity');
  t.not(list[0].luns[0].by_id, list[0].luns[1].by_id);
  const st = JSON.parse((await cli(['status', 'test-a', '--json'])).stdout);
  t.same(
    st.timers,
    { reconnect_delay: 2, reconnect_delay_max: 30, fast_io_fail_tmo: 'off', dev_loss_tmo: 60 },
    'persisted timers restored',
  );
  const out = path.join(dir, 'out.img');
  await run('nbdcopy', [uri('test-a-lun0'), out]);
  t.equal(sha(fs.readFileSync(out)), sha(data), 'every byte written before kill -9 is there');
  await fioVerify('test-a-lun1');
  t.pass('fio verify through the export after the restart');

  // A different disk behind the same address must never be exported under the old name.
  t.equal(await stopDaemon(after, 'SIGKILL'), null);
  const stateFile = path.join(stateDir, 'state.json');
  const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  state.targets[0].luns[0].identity.serial = 'someone-else';
  fs.writeFileSync(stateFile, JSON.stringify(state));
  const third = await startDaemon();
  t.match(third.log(), /"msg":"identity check failed: not exporting a different disk under the old name"/);
  const v = JSON.parse((await cli(['status', 'test-a', '--json'])).stdout);
  t.equal(v.status, 'failed');
  t.match(v.error, /identity check failed: LUN 0 \(export test-a-lun0\): .*serial/);
  const exports = JSON.parse(await run('nbdinfo', ['--list', '--json', uri('')])).exports;
  t.same(exports, [], 'nothing exported');
  const det = await cli(['detach', 'test-a']);
  t.equal(det.code, 0, det.stderr);
  t.equal(await stopDaemon(third, 'SIGTERM'), 0, 'SIGTERM: clean exit 0');
  t.match(third.log(), /"msg":"stopping: exports closed, kernel devices kept for the next start"/);
});
