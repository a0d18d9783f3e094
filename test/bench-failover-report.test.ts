/**
 * The bench:failover report: rows computed from event marks, probe and watcher logs and the
 * daemon's log of synthetic boot directories; a kernel crash is that row's result and the rows
 * after it come from the next boot.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { buildResults, markdownTable, measure, parseWrites } from '../bench/failover-report.js';

function boot(dir: string, files: Record<string, string>): void {
  for (const [name, text] of Object.entries(files)) {
    const f = path.join(dir, name);
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, text);
  }
}
const tsv = (rows: (string | number)[][]) => rows.map((r) => r.join('\t')).join('\n') + '\n';
// the daemon's clock: epoch ms = (uptime + 1000) * 1000
const dlog = (uptime: number, msg: string) => JSON.stringify({ level: 30, time: (uptime + 1000) * 1000, msg }) + '\n';

t.test('rows from marks and logs; a crash is the row, later rows from the next boot', async (t) => {
  const dir = t.testdir({});
  boot(path.join(dir, 'boot1'), {
    'failover/events.tsv': tsv([
      ['clock', '-', '-', 10, 1_010_000],
      ['srp-nbd', 'linkdown', 'fault', 20],
      ['srp-nbd', 'linkdown', 'back', 28],
      ['srp-nbd', 'restart', 'fault', 40],
      ['srp-nbd', 'restart', 'removed', 41],
      ['srp-nbd', 'restart', 'back', 44],
      ['ib_srp', 'linkdown', 'begin', 60],
      ['ib_srp', 'linkdown', 'fault', 61],
      ['ib_srp', 'linkdown', 'back', 69],
    ]),
    'failover/rows.tsv': tsv([
      ['srp-nbd', 'linkdown', 'device', 'nbd0 43:0'],
      ['srp-nbd', 'restart', 'device', 'nbd0 43:0'],
      ['ib_srp', 'linkdown', 'kernel_bug', 'list_add double add'],
    ]),
    'failover/probe-srp-nbd-linkdown.log': '19.0 19.1 0\n19.9 25.2 5\n25.3 25.3 5\n28.5 28.9 0\n',
    'failover/probe-srp-nbd-restart.log': '39.9 40.0 0\n40.1 44.6 0\n',
    'failover/probe-ib_srp-linkdown.log': '60.9 61.0 0\n61.1 66.5 5\n',
    'failover/watch-ib_srp.log': '55.000 running\n61.300 blocked\n66.400 fail-fast\n',
    'daemon.log':
      dlog(20.2, 'state running -> blocked') +
      dlog(25.2, 'state blocked -> fail-fast') +
      dlog(28.8, 'state fail-fast -> running'),
  });
  boot(path.join(dir, 'boot2'), {
    'failover/events.tsv': tsv([
      ['clock', '-', '-', 5, 1_005_000],
      ['ib_srp', 'blackhole', 'begin', 30],
      ['ib_srp', 'blackhole', 'fault', 31],
      ['ib_srp', 'blackhole', 'back', 35],
      ['ib_srp', 'blackhole', 'end', 40],
    ]),
    'failover/probe-ib_srp-blackhole.log': '30.9 31.0 0\n31.1 36.0 0\n',
    'failover/watch-ib_srp.log': '20.000 running\n50.000 gone\n',
  });
  const res = buildResults(dir);
  t.match(res['srp-nbd'].linkdown, {
    status: 'measured',
    values: { path_failed_s: 0.2, first_eio_s: 5.2, io_back_s: 0.9, failed_writes: 2, device: 'nbd0 43:0' },
  });
  t.match(res['srp-nbd'].restart, { values: { failed_writes: 0, io_back_s: 0.6, teardown_s: 1, outage_s: 4 } });
  t.match(res.ib_srp.linkdown, {
    status: 'kernel crashed',
    detail: 'boot 1: list_add double add',
    values: { path_failed_s: 0.3, first_eio_s: 5.5 },
  });
  t.match(res.ib_srp.blackhole, {
    status: 'measured',
    values: { path_failed_s: 'not noticed in 4.0 s', io_back_s: 1, failed_writes: 0 },
  });
  t.match(res.ib_srp.kill, { status: 'not measured', detail: 'the kernel crashed in linkdown' });
  t.match(res['srp-nbd'].kill, { status: 'not measured', detail: 'not run' });
  t.match(res.ib_srp.mdreadd, { status: 'not applicable', detail: /never re-adds/ });
  const table = markdownTable(res);
  t.match(table, /\| link down → path failed \| 0\.20 s \| 0\.30 s \(then the kernel crashed\) \| < 0\.5 s \|/);
  t.match(table, /\| link up → first completed I\/O \| 0\.90 s \| kernel crashed \| < 1 s \|/);
  t.match(table, /\| black hole → noticed \| not measured \(not run\) \| not noticed in 4\.0 s \|/);
  t.match(table, /- ib_srp linkdown: kernel crashed \(boot 1: list_add double add\)/);
  t.match(table, /\| link up → member back in md \(re-added\) \| not measured \(not run\) \| — \(ib_srp never re-adds/);
});

t.test('mdreadd: md failed the member, back in md and in sync, from md watchers', async (t) => {
  const dir = t.testdir({});
  boot(path.join(dir, 'boot1'), {
    'failover/events.tsv': tsv([
      ['clock', '-', '-', 10, 1_010_000],
      ['srp-nbd', 'mdreadd', 'fault', 20],
      ['srp-nbd', 'mdreadd', 'up', 28],
      ['srp-nbd', 'mdreadd', 'back', 28.5],
    ]),
    'failover/rows.tsv': tsv([
      ['srp-nbd', 'mdreadd', 'md_failures', '1'],
      ['srp-nbd', 'mdreadd', 'md_members', 'nbd0:in_sync ram0:in_sync '],
    ]),
    'failover/probe-srp-nbd-mdreadd.log': '19.0 19.1 0\n20.0 25.3 0\n28.1 28.2 0\n',
    // faulty at 25.3, re-added (spare) at 28.4, before link_up returned ("back"), in sync at 30.5
    'failover/watch-srp-nbd-mdreadd-state.log':
      '18.000 in_sync\n25.300 faulty,blocked\n25.400 faulty\n28.400 spare\n28.900 gone\n30.500 in_sync\n',
    'failover/watch-srp-nbd-mdreadd-degraded.log': '18.000 0\n25.300 1\n30.500 0\n',
  });
  const res = buildResults(dir);
  t.match(res['srp-nbd'].mdreadd, {
    status: 'measured',
    values: { md_failures: 1, md_readded_s: 0.4, md_synced_s: 2.5, failed_writes: 0 },
  });
  const table = markdownTable(res);
  t.match(table, /\| link up → member back in md \(re-added\) \| 0\.40 s \|/);
  t.match(table, /\| link up → md in sync again \| 2\.50 s \|/);
  // the member never failed: no re-add time
  fs.writeFileSync(path.join(dir, 'boot1/failover/watch-srp-nbd-mdreadd-state.log'), '18.000 in_sync\n');
  fs.writeFileSync(path.join(dir, 'boot1/failover/watch-srp-nbd-mdreadd-degraded.log'), '18.000 0\n');
  t.match(buildResults(dir)['srp-nbd'].mdreadd, { values: { md_readded_s: null, md_synced_s: null } });
});

t.test('measure: the rebuilt target and the kill rows', async (t) => {
  const writes = parseWrites('1.0 1.1 0\n2.0 2.1 5\n3.0 3.1 0\n');
  t.same(writes[1], { start: 2, end: 2.1, errno: 5 });
  const base = { writes, states: [] as [number, string][], watches: {}, boot: 1 };
  t.match(measure('rebuild', { ...base, marks: { fault: 1.5, restore: 2.5 }, rows: { writes_on_other: '0' } }), {
    writes_on_other: 0,
    failed_writes: 1,
  });
  t.match(measure('kill', { ...base, marks: { fault: 0.5 }, rows: { md_failures: '1', md_members: 'sda:faulty' } }), {
    md_failures: 1,
    md_members: 'sda:faulty',
    failed_writes: 1,
    longest_write_s: 0.1,
  });
});
