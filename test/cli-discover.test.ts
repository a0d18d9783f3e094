/**
 * `srp-nbd discover ADDRESS` as an operator runs it (the real CLI process, no daemon): the test
 * target's LUNs as a table and as JSON; an RDMA/CM address on a host without RDMA fails with the
 * transport's RdmaUnavailableError message (the qemu guest scenario daemon-target runs it against LIO
 * ib_srpt); IB CM and no address say what is not supported; a bad address is a usage error.
 */
import t from 'tap';
import { checkRdmaAvailable } from '../src/initiator/rdma/index.js';
import { tryLoadNative } from '../src/native/native.js';
import { cleanup, cli } from './helpers/daemon.js';

t.teardown(cleanup);

const discover = (...args: string[]) => cli(['discover', ...args], { socket: false });

t.test('test-target: a table, and --json with sizes, block sizes and identities', async (t) => {
  const text = await discover('test-target,name=d,luns=2,lun_size=8M,block_size=4096');
  t.equal(text.code, 0, text.stderr);
  const lines = text.stdout.trimEnd().split('\n');
  t.match(lines[0], /^LUN\s+SIZE\s+BLOCK\s+IDENTITY$/);
  t.match(lines[1], /^0\s+8 MiB\s+4096\s+.*serial "d-0"/);
  t.match(lines[2], /^1\s+8 MiB\s+4096\s+.*serial "d-1"/);
  t.equal(lines.length, 3);
  const json = await discover('--json', 'test-target,name=d,luns=2,lun_size=8M');
  t.equal(json.code, 0, json.stderr);
  const j = JSON.parse(json.stdout);
  t.match(j, { address: 'test-target,name=d,luns=2,lun_size=8M', transport: 'test-target', via: /in-process/ });
  t.same(
    j.luns.map((l: { lun: number; size: number; block_size: number }) => [l.lun, l.size, l.block_size]),
    [
      [0, 8 << 20, 512],
      [1, 8 << 20, 512],
    ],
  );
  t.match(j.luns[1].identity, /serial "d-1"/);
});

t.test('RDMA/CM address without an RDMA device: exit 1 and the transport says what is missing', async (t) => {
  const b = tryLoadNative();
  let rdmaHere = false;
  try {
    if (b) rdmaHere = checkRdmaAvailable(b).length > 0;
  } catch {
    /* no device: the case under test */
  }
  if (rdmaHere)
    return void t.plan(0, 'this host has an RDMA device (the guest scenario daemon-target covers discover over RDMA)');
  const addr = 'id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=192.0.2.2:5000';
  const r = await discover(addr);
  t.equal(r.code, 1);
  t.equal(r.stdout, '');
  if (b)
    t.match(r.stderr, new RegExp(`^srp-nbd discover: ${addr}: no RDMA device available \\(.*\\): load an RDMA driver`));
  else t.match(r.stderr, /native addon is not built/);
});

t.test('what discover cannot do says so; bad input is a usage error', async (t) => {
  const ibcm = await discover('id_ext=1,ioc_guid=2,dgid=fe800000000000000002c90300aabbcd,pkey=ffff,service_id=2');
  t.equal(ibcm.code, 1);
  t.match(
    ibcm.stderr,
    /discovery over IB CM \(dgid\/pkey\/service_id\) is not supported yet; give the RDMA\/CM address \(dest=IP:PORT\)/,
  );
  const none = await discover();
  t.equal(none.code, 1);
  t.match(none.stderr, /InfiniBand discovery .* is not supported yet: run `srp_daemon -o -n -c`/);
  const bad = await discover('id_ext=1,ioc_guid=2,dest=192.0.2.2');
  t.equal(bad.code, 2);
  t.equal(
    bad.stderr,
    "srp-nbd discover: address 'id_ext=1,ioc_guid=2,dest=192.0.2.2': bad dest parameter '192.0.2.2': missing :port\n",
  );
  const two = await discover('test-target', 'test-target');
  t.equal(two.code, 2);
  t.equal(two.stderr, 'srp-nbd discover: give at most one ADDRESS\n');
  const help = await discover('--help');
  t.equal(help.code, 0);
  t.match(help.stdout, /^usage: srp-nbd discover/);
});
