/**
 * The real daemon process (`srp-nbd daemon`) driven through the CLI as an operator would, with
 * test-target addresses: config errors with key names and exit status 2, and the round trip
 * attach → list → status → set → reconnect → detach, text and --json, with I/O through an export.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';
import { run } from './helpers/nbd.js';
import {
  cleanup,
  cli,
  configFile,
  controlSock,
  dir,
  fioVerify,
  imageDir,
  nbdSock,
  startDaemon,
  stateDir,
  uri,
} from './helpers/daemon.js';

t.teardown(cleanup);

t.test('config errors: exit status 2 and the key path and rule named', async (t) => {
  const bad = path.join(dir, 'bad.json');
  fs.writeFileSync(
    bad,
    JSON.stringify({
      state_dir: stateDir,
      defaults: { queue_size: 0 },
      targets: [{ address: 'test-target', dev_loss_tmo: 3, colour: 'red' }],
    }),
  );
  const r = await cli(['daemon', '--config', bad], { socket: false });
  t.equal(r.code, 2);
  t.match(r.stderr, /bad\.json: invalid configuration/);
  t.match(r.stderr, /defaults\.queue_size: .*\[minimum\]/);
  t.match(r.stderr, /targets\[0\]\.colour: unknown option 'colour' \[unknown-key\]/);
  t.match(
    r.stderr,
    /targets\[0\]\.fast_io_fail_tmo: fast_io_fail_tmo=5 must be smaller than dev_loss_tmo=3 .*\[fast-io-fail-not-before-dev-loss\]/,
  );
  const missing = await cli(['daemon', '--config', path.join(dir, 'nope.json')], { socket: false });
  t.equal(missing.code, 2);
  t.match(missing.stderr, /nope\.json: invalid configuration:\n\s+\(file\): cannot read: ENOENT/);
  const sg = path.join(dir, 'ext-sg.json');
  fs.writeFileSync(
    sg,
    JSON.stringify({
      state_dir: stateDir,
      targets: [{ address: 'id_ext=1,ioc_guid=1,dest=192.0.2.2:5000,allow_ext_sg=1,ch_count=2' }],
    }),
  );
  const refused = await cli(['daemon', '--config', sg, '--check'], { socket: false });
  t.equal(refused.code, 2, 'an add_target option srp-nbd cannot honour stops the configuration');
  t.match(refused.stderr, /targets\[0\]\.address: allow_ext_sg: external indirect descriptor tables/);
  t.match(refused.stderr, /targets\[0\]\.address: ch_count: 2 channels/);
  const ok = await cli(['daemon', '--config', configFile, '--check'], { socket: false });
  t.equal(ok.code, 0, ok.stderr);
  t.equal(JSON.parse(ok.stdout).defaults.dev_loss_tmo, 600);
});

t.test('CLI round trip: attach, list, status, set, reconnect, detach (text and --json)', async (t) => {
  const d = await startDaemon();
  t.equal(fs.statSync(controlSock).mode & 0o777, 0o600, 'control socket mode 0600');

  const again = await cli(['daemon', '--config', configFile], { socket: false });
  t.equal(again.code, 1, 'a second daemon on the same socket is refused');
  t.match(again.stderr, /another srp-nbd daemon \(pid \d+\) is using the state directory/);

  const a = await cli([
    'attach',
    `test-target,name=a,luns=2,lun_size=16M,image_dir=${imageDir}`,
    '--dev-loss-tmo',
    '120',
  ]);
  t.equal(a.code, 0, a.stderr);
  t.match(a.stdout, /^test-a: attached \(2 LUNs, state running\)/);
  t.match(a.stdout, new RegExp(`test-a-lun0  -  nbd\\+unix:///test-a-lun0\\?socket=${nbdSock}`));
  t.match(a.stdout, /test-a-lun1/);

  const stdin = await cli(['attach', '-', '--json'], {
    stdin: '# srp_daemon style, one per line\ntest-target,name=b\n\ntest-target,name=c,block_size=4096\n',
  });
  t.equal(stdin.code, 0, stdin.stderr);
  t.same(
    JSON.parse(stdin.stdout).map((v: { id: string }) => v.id),
    ['test-b', 'test-c'],
  );

  const dup = await cli(['attach', 'test-target,name=a']);
  t.equal(dup.code, 1);
  t.match(dup.stderr, /target test-a is already attached/);
  const ext = await cli(['attach', 'id_ext=1,ioc_guid=1,dest=192.0.2.2:5000,allow_ext_sg=1']);
  t.equal(ext.code, 2, 'an add_target option srp-nbd cannot honour: usage error');
  t.match(ext.stderr, /allow_ext_sg: external indirect descriptor tables are not implemented/);
  const rdma = await cli(['attach', 'id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=192.0.2.2:5000']);
  t.equal(rdma.code, 1);
  // no RDMA on the test host: the connector loads, the login names what is missing
  t.match(rdma.stderr, /RDMA transport not available|no RDMA device available|native addon/);
  const badAddr = await cli(['attach', 'id_ext=1,ioc_guid=2,dest=192.0.2.2']);
  t.equal(badAddr.code, 2);
  t.match(badAddr.stderr, /address 'id_ext=1,ioc_guid=2,dest=192.0.2.2': bad dest parameter/);
  const badOpt = await cli(['attach', 'test-target,name=z', '--queue-size', '0']);
  t.equal(badOpt.code, 2);
  t.match(badOpt.stderr, /--queue-size: /);
  const named = await cli(['attach', '--id-ext', '1', '--ioc-guid', '2', '--dest', '192.0.2.9:5000']);
  t.equal(named.code, 1, 'named flags build an add_target string');
  t.match(
    named.stderr,
    /target srp-0000000000000001-192\.0\.2\.9-5000: (RDMA transport not available|attach failed: no RDMA device available|.*native addon)/,
  );

  const list = await cli(['list']);
  t.equal(list.code, 0);
  t.match(list.stdout, /^TARGET\s+STATUS\s+STATE\s+EXPORT\s+DEVICE\s+BY-ID\s+ADDRESS/);
  t.match(list.stdout, /test-a\s+attached\s+running\s+test-a-lun0\s+-\s+-\s+test-target,name=a/);
  const listJson = JSON.parse((await cli(['list', '--json'])).stdout);
  t.same(listJson.map((r: { id: string }) => r.id).sort(), ['test-a', 'test-b', 'test-c']);

  // I/O through the exports, then the counters show it.
  await fioVerify('test-a-lun1');
  const st = JSON.parse((await cli(['status', 'test-a', '--json'])).stdout);
  t.equal(st.state, 'running');
  t.same(st.timers, { reconnect_delay: 1, reconnect_delay_max: 30, fast_io_fail_tmo: 5, dev_loss_tmo: 120 });
  t.ok(st.credits.req_lim > 0, 'credits shown');
  t.ok(st.lun_details[1].io.write.ops > 0 && st.lun_details[1].io.read.ops > 0, 'per-LUN I/O counted');
  t.match(st.lun_details[0].identity, /serial "a-0"/);
  const text = await cli(['status', 'test-a']);
  t.match(text.stdout, /status\s+attached, state running/);
  t.match(text.stdout, /timers\s+reconnect_delay=1 reconnect_delay_max=30 fast_io_fail_tmo=5 dev_loss_tmo=120/);
  t.match(text.stdout, /credits\s+req_lim \d+/);

  const set = await cli(['set', 'test-a', 'dev_loss_tmo=60', '--fast-io-fail-tmo', 'off']);
  t.equal(set.code, 0, set.stderr);
  t.match(set.stdout, /test-a: reconnect_delay=1 reconnect_delay_max=30 fast_io_fail_tmo=off dev_loss_tmo=60/);
  const setBad = await cli(['set', 'test-a', '--fast-io-fail-tmo', '700']);
  t.equal(setBad.code, 2);
  t.match(setBad.stderr, /target test-a: fast_io_fail_tmo=700 exceeds SCSI_DEVICE_BLOCK_MAX_TIMEOUT/);
  t.equal(
    JSON.parse((await cli(['status', 'test-a', '--json'])).stdout).timers.fast_io_fail_tmo,
    'off',
    'refused change left the timers alone',
  );

  const rc = await cli(['reconnect', 'test-a', '--json']);
  t.equal(rc.code, 0, rc.stderr);
  t.equal(JSON.parse(rc.stdout).id, 'test-a');
  const rs = await cli(['rescan', 'test-a']);
  t.equal(rs.code, 0, rs.stderr);
  t.match(rs.stdout, /^test-a: rescanned\n {2}LUN 0 {2}test-a-lun0 {2}device - {2}\d+ bytes {2}attached/);
  const ro = await cli(['attach', 'test-target,name=ro,lun_size=1M', '--id', 'test-ro', '--read-only', 'on', '--json']);
  t.equal(ro.code, 0, ro.stderr);
  const roView = JSON.parse((await cli(['status', 'test-ro', '--json'])).stdout);
  t.match(roView.lun_details[0], { read_only: true, read_only_reason: 'option' });
  t.equal((await cli(['attach', 'test-target,name=x', '--read-only', 'maybe'])).code, 2, 'on or off');
  t.equal((await cli(['detach', 'test-ro'])).code, 0);
  for (const cmd of ['reconnect', 'rescan']) {
    const none = await cli([cmd]);
    t.equal(none.code, 2, `${cmd} without a TARGET is a usage error`);
    t.match(none.stderr, new RegExp(`${cmd}: give exactly one TARGET`));
    const help = await cli([cmd, '--help']);
    t.equal(help.code, 0);
    t.match(help.stdout, new RegExp(`^usage: srp-nbd ${cmd} \\[options\\] TARGET`));
  }
  const rsNope = await cli(['rescan', 'nope']);
  t.equal(rsNope.code, 1);
  t.match(rsNope.stderr, /^srp-nbd rescan: target nope: no such target/);
  const nope = await cli(['status', 'nope']);
  t.equal(nope.code, 1);
  t.match(nope.stderr, /^srp-nbd status: nope: no such target, device, export or stable name \(attached: test-a \(/);

  const det = await cli(['detach', 'test-b', 'test-c']);
  t.equal(det.code, 0, det.stderr);
  t.match(det.stdout, /test-b: detached\ntest-c: detached/);
  const exports = JSON.parse(await run('nbdinfo', ['--list', '--json', uri('')])).exports.map(
    (e: { 'export-name': string }) => e['export-name'],
  );
  t.same(exports.sort(), ['test-a-lun0', 'test-a-lun1'], 'detached targets have no exports left');
  const persisted = JSON.parse(fs.readFileSync(path.join(stateDir, 'state.json'), 'utf8'));
  t.same(
    persisted.targets.map((x: { id: string }) => x.id),
    ['test-a'],
  );
  t.same(
    persisted.targets[0].overrides,
    { dev_loss_tmo: 60, fast_io_fail_tmo: 'off' },
    'runtime timer changes are persisted',
  );

  const logText = d.log();
  t.match(logText, /"msg":"target attached"/);
  t.match(logText, /"msg":"timers changed"/);
});
