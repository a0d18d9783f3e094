/**
 * Probes 2, 5, 7 and 8 of the security review against the real daemon process:
 * - attach/detach/attach on one id, concurrently: never an export without a listed target, never
 *   a listed target missing from state.json;
 * - a state.json that cannot be written: the change is refused (500) and not made, in memory or
 *   on disk (persist, then commit);
 * - a reconnect during the first attach does not start a second connect;
 * - a persisted target whose address no longer parses is kept, listed as failed, dropped only by
 *   detach; duplicate ids in state.json leave no orphan export;
 * - test targets: off unless enabled, within their memory budget.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { run } from './helpers/nbd.js';
import { cleanup, cli, configFile, nbdSock, request, startDaemon, stateDir } from './helpers/daemon.js';

t.teardown(cleanup);
const stateFile = path.join(stateDir, 'state.json');
const saved = (): {
  id: string;
  address: string;
  luns: { identity: unknown }[];
  overrides: Record<string, unknown>;
}[] => JSON.parse(fs.readFileSync(stateFile, 'utf8')).targets;
const listed = async (): Promise<{ id: string; status: string; error?: string }[]> =>
  JSON.parse((await request({ method: 'GET', path: '/targets' })).body);
async function exportsServed(): Promise<string[]> {
  const out = await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${nbdSock}`]).catch(
    () => '{"exports":[]}',
  );
  return (JSON.parse(out).exports as { 'export-name': string }[]).map((e) => e['export-name']).sort();
}
const attachBody = (id: string, extra = ''): string =>
  JSON.stringify({ address: `test-target,name=${id}${extra}`, id });

t.test('attach/detach/attach on one id, concurrently: exports, list and state.json agree', async (t) => {
  const d = await startDaemon();
  t.teardown(() => void d.child.kill('SIGTERM'));
  for (let round = 0; round < 8; round++) {
    const ops = [
      request({ method: 'POST', path: '/targets', body: attachBody('r', ',luns=2') }),
      request({ method: 'DELETE', path: '/targets/r' }),
      request({ method: 'POST', path: '/targets', body: attachBody('r', ',luns=2') }),
    ];
    if (round % 2) ops.push(request({ method: 'DELETE', path: '/targets/r' }));
    const res = await Promise.all(ops);
    for (const r of res) if (r.status >= 500) t.fail(`round ${round}: ${r.status} ${r.body}`);
    const ids = (await listed()).map((x) => x.id);
    const wanted = ids.includes('r') ? ['r-lun0', 'r-lun1'] : [];
    t.same(
      await exportsServed(),
      wanted,
      `round ${round}: exports served = those of the listed targets (${ids.join(',') || 'none'})`,
    );
    t.same(
      saved().map((x) => x.id),
      ids,
      `round ${round}: state.json = list`,
    );
    const det = await request({ method: 'DELETE', path: '/targets/r' });
    t.ok(
      det.status === 204 || det.status === 200 || det.status === 404,
      `round ${round}: detach answers (${det.status})`,
    );
    t.same(await exportsServed(), [], `round ${round}: nothing left after the detach`);
  }
  d.child.kill('SIGTERM');
  await d.exited;
});

t.test('a reconnect during the first attach does not start a second connect', async (t) => {
  const d = await startDaemon();
  t.teardown(() => void d.child.kill('SIGTERM'));
  const [a, r] = await Promise.all([
    request({ method: 'POST', path: '/targets', body: attachBody('c', ',luns=2,lun_size=64M') }),
    new Promise((res) => setTimeout(res, 5)).then(() => request({ method: 'POST', path: '/targets/c/reconnect' })),
  ]);
  t.equal(a.status, 201, a.body);
  t.ok(r.status === 200 || r.status === 404, `reconnect answered ${r.status}`);
  await new Promise((res) => setTimeout(res, 500));
  t.same(await exportsServed(), ['c-lun0', 'c-lun1']);
  const c = saved().find((x) => x.id === 'c')!;
  t.equal(c.luns.length, 2, 'the LUN identities are saved');
  t.ok(
    c.luns.every((l) => l.identity),
    'and not wiped',
  );
  t.equal((await request({ method: 'DELETE', path: '/targets/c' })).status < 300, true);
  d.child.kill('SIGTERM');
  await d.exited;
});

t.test('a state.json that cannot be written: 500, and nothing changes', async (t) => {
  const d = await startDaemon();
  t.teardown(() => void d.child.kill('SIGTERM'));
  t.equal((await request({ method: 'POST', path: '/targets', body: attachBody('keep') })).status, 201);
  // The daemon writes <state.json>.<pid>.tmp and renames it: a directory there makes every save fail.
  const blocker = `${stateFile}.${d.child.pid}.tmp`;
  fs.mkdirSync(blocker);
  const before = fs.readFileSync(stateFile, 'utf8');

  const det = await request({ method: 'DELETE', path: '/targets/keep' });
  t.equal(det.status, 500);
  t.match(JSON.parse(det.body).message, /cannot save the state .*nothing was changed/);
  t.same(
    (await listed()).map((x) => x.id),
    ['keep'],
    'a failed detach leaves the target attached',
  );
  t.same(await exportsServed(), ['keep-lun0'], 'and its export served');

  const att = await request({ method: 'POST', path: '/targets', body: attachBody('new') });
  t.equal(att.status, 500);
  t.same(
    (await listed()).map((x) => x.id),
    ['keep'],
    'a failed attach leaves nothing attached',
  );
  t.same(await exportsServed(), ['keep-lun0']);

  const set = await request({ method: 'PATCH', path: '/targets/keep', body: JSON.stringify({ dev_loss_tmo: 77 }) });
  t.equal(set.status, 500);
  const view = JSON.parse((await request({ method: 'GET', path: '/targets/keep' })).body);
  t.not(JSON.stringify(view).includes('"dev_loss_tmo":77'), true, 'the timers are unchanged');
  t.equal(fs.readFileSync(stateFile, 'utf8'), before, 'state.json untouched');

  fs.rmdirSync(blocker);
  t.equal(
    (await request({ method: 'DELETE', path: '/targets/keep' })).status < 300,
    true,
    'works again once saving works',
  );
  t.same(saved(), []);
  d.child.kill('SIGTERM');
  await d.exited;
});

t.test('persisted entries that cannot run are kept; duplicate ids leave no orphan', async (t) => {
  fs.writeFileSync(
    stateFile,
    JSON.stringify({
      version: 1,
      targets: [
        {
          id: 'bad',
          address: 'test-target,name=bad,colour=red',
          overrides: {},
          attachedAt: '2026-01-01T00:00:00Z',
          luns: [],
        },
        { id: 'dup', address: 'test-target,name=dup', overrides: {}, attachedAt: '2026-01-01T00:00:00Z', luns: [] },
        { id: 'dup', address: 'test-target,name=dup2', overrides: {}, attachedAt: '2026-01-01T00:00:00Z', luns: [] },
      ],
    }),
  );
  const d = await startDaemon();
  t.teardown(() => void d.child.kill('SIGTERM'));
  const l = await listed();
  t.same(
    l.map((x) => [x.id, x.status]),
    [
      ['dup', 'attached'],
      ['bad', 'failed'],
    ],
  );
  t.match(l[1]!.error, /unknown parameter 'colour'/);
  t.match(d.log(), /persisted target not attached: kept in state.json/);
  t.match(d.log(), /state.json holds this id twice/);
  t.same(await exportsServed(), ['dup-lun0'], 'one export for the duplicated id');
  t.equal((await request({ method: 'POST', path: '/targets', body: attachBody('other') })).status, 201);
  t.ok(
    saved().some((x) => x.id === 'bad'),
    'the unusable entry survives a save',
  );
  const st = await cli(['status', 'bad']);
  t.equal(st.code, 1);
  t.match(st.stderr, /not attached: .*srp-nbd detach bad/);
  t.equal((await request({ method: 'DELETE', path: '/targets/bad' })).status < 300, true, 'detach drops it');
  t.notOk(saved().some((x) => x.id === 'bad'));
  for (const id of ['dup', 'other']) await request({ method: 'DELETE', path: `/targets/${id}` });
  d.child.kill('SIGTERM');
  await d.exited;
});

t.test('test targets: off unless enabled, within their memory budget', async (t) => {
  const cfg = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  const orig = fs.readFileSync(configFile);
  t.teardown(() => fs.writeFileSync(configFile, orig, { mode: 0o600 }));
  fs.writeFileSync(configFile, JSON.stringify({ ...cfg, test_targets: { enabled: false } }), { mode: 0o600 });
  let d = await startDaemon();
  const off = await request({ method: 'POST', path: '/targets', body: attachBody('off') });
  t.equal(off.status, 400);
  t.match(JSON.parse(off.body).message, /test targets are disabled \(set test_targets\.enabled/);
  d.child.kill('SIGTERM');
  await d.exited;

  fs.writeFileSync(configFile, JSON.stringify({ ...cfg, test_targets: { enabled: true, memory_budget_mib: 100 } }), {
    mode: 0o600,
  });
  d = await startDaemon();
  t.equal(
    (await request({ method: 'POST', path: '/targets', body: attachBody('b1', ',luns=1,lun_size=64M') })).status,
    201,
  );
  const over = await request({ method: 'POST', path: '/targets', body: attachBody('b2', ',luns=1,lun_size=64M') });
  t.equal(over.status, 400);
  t.match(
    JSON.parse(over.body).message,
    /needs 64 MiB of RAM, 64 MiB of test_targets\.memory_budget_mib \(100\) are in use/,
  );
  await request({ method: 'DELETE', path: '/targets/b1' });
  t.equal(
    (await request({ method: 'POST', path: '/targets', body: attachBody('b2', ',luns=1,lun_size=64M') })).status,
    201,
    'room again after a detach',
  );
  await request({ method: 'DELETE', path: '/targets/b2' });
  d.child.kill('SIGTERM');
  await d.exited;
});
