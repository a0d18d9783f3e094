/**
 * GET /metrics of the daemon (in-process, a test target, no kernel devices): every metric family
 * with its HELP and TYPE text, in order, and a sample of each, so a change to the exposition shows
 * up here as a diff. renderMetrics() alone for what needs a kernel device in an md array.
 */
import t from 'tap';
import { inProcessDaemons } from './helpers/in-process-daemon.js';
import { VERSION } from '../src/daemon/daemon.js';
import { Histogram, IO_OPS, type IoOp, type OpStats, renderMetrics } from '../src/daemon/metrics.js';
import { RPORT_STATES, type RportState } from '../src/fsm/rport.js';

/** Every family as `# HELP` and `# TYPE` lines, in the order the daemon declares them. */
const FAMILIES: [name: string, type: string, help: string][] = [
  ['srp_nbd_info', 'gauge', 'Daemon version.'],
  ['srp_nbd_targets', 'gauge', 'Targets known to the daemon.'],
  ['srp_nbd_target_state', 'gauge', 'rport state of a target (1 for the current state).'],
  ['srp_nbd_target_attached', 'gauge', '1 when the target is attached and exported, 0 while connecting or failed.'],
  ['srp_nbd_state_seconds_total', 'counter', 'Time spent in each rport state.'],
  ['srp_nbd_reconnect_attempts_total', 'counter', 'Reconnect attempts started.'],
  ['srp_nbd_reconnects_total', 'counter', 'Successful reconnects (back to running).'],
  ['srp_nbd_failed_reconnects', 'gauge', 'Failed reconnect attempts in the current outage (sysfs failed_reconnects).'],
  ['srp_nbd_failed_reconnects_total', 'counter', 'Failed reconnect attempts.'],
  ['srp_nbd_logins_total', 'counter', 'SRP logins, the first one included.'],
  ['srp_nbd_credits', 'gauge', 'SRP credits held (req_lim).'],
  ['srp_nbd_credits_granted_total', 'counter', 'SRP credits granted by the target (current session).'],
  ['srp_nbd_credit_stalls_total', 'counter', 'Times the queue stalled for lack of credits (current session).'],
  [
    'srp_nbd_memory_registrations_total',
    'counter',
    'RDMA memory registrations (ibv_reg_mr) by the session: its command slots, then only larger transfers (current session).',
  ],
  [
    'srp_nbd_per_command_registrations_total',
    'counter',
    'Commands that registered memory of their own, being larger than a command slot (current session).',
  ],
  ['srp_nbd_io_in_flight', 'gauge', 'Block requests dispatched to the target.'],
  ['srp_nbd_io_held', 'gauge', 'Block requests held while the path is blocked.'],
  ['srp_nbd_io_replayed_total', 'counter', 'Block requests dispatched again after a reconnect.'],
  [
    'srp_nbd_io_failed_eio_total',
    'counter',
    'Block requests failed with EIO by the transport state (fail-fast, lost).',
  ],
  ['srp_nbd_md_readds_total', 'counter', 'Devices re-added to an md array that had failed them (option md_readd).'],
  [
    'srp_nbd_lun_changes_total',
    'counter',
    'LUN changes seen while attached: grown (resized), shrunk (not followed), added, removed, write_protected, write_enabled.',
  ],
  [
    'srp_nbd_md_readd_last_seconds',
    'gauge',
    "Seconds from the path's return to the last md re-add (absent before the first).",
  ],
  ['srp_nbd_md_member_faulty', 'gauge', '1 while md has the device marked faulty in the array.'],
  ['srp_nbd_path_state', 'gauge', 'rport state of a path of a multipath LU (1 for the current state).'],
  ['srp_nbd_path_active', 'gauge', '1 while the path carries I/O (role active), 0 standby or failed by the operator.'],
  ['srp_nbd_path_commands_total', 'counter', 'Block requests completed on the path.'],
  [
    'srp_nbd_path_errors_total',
    'counter',
    'Transport failures of block requests on the path (each re-issued on another path or held).',
  ],
  ['srp_nbd_path_bytes_total', 'counter', 'Bytes of block requests completed on the path.'],
  ['srp_nbd_path_in_flight', 'gauge', 'Block requests in flight on the path.'],
  ['srp_nbd_lun_ops_total', 'counter', 'Block requests completed, per export and operation.'],
  ['srp_nbd_lun_bytes_total', 'counter', 'Bytes transferred, per export and operation.'],
  ['srp_nbd_lun_errors_total', 'counter', 'Block requests that failed, per export and operation.'],
  [
    'srp_nbd_lun_latency_seconds',
    'histogram',
    'Block request latency (NBD backend call to completion), per export and operation.',
  ],
];

t.test('every metric family with its HELP and TYPE, and the samples of a test target', async (t) => {
  const d = inProcessDaemons(t, 'srp-nbd-metrics-').make();
  await d.start();
  const alone: Record<string, string> = {
    srp_nbd_info: `srp_nbd_info{version="${VERSION}"} 1\n`,
    srp_nbd_targets: 'srp_nbd_targets 0\n',
  };
  const expected = FAMILIES.map(([n, ty, h]) => `# HELP ${n} ${h}\n# TYPE ${n} ${ty}\n${alone[n] ?? ''}`).join('');
  t.equal(await d.metrics(), expected, 'no targets: every family declared, only the daemon-wide samples');

  await d.attach({ address: 'test-target,name=m,luns=1,lun_size=4M' });
  const text = await d.metrics();
  const declared = text.split('\n').filter((l) => l.startsWith('# '));
  const wanted = FAMILIES.flatMap(([n, ty, h]) => [`# HELP ${n} ${h}`, `# TYPE ${n} ${ty}`]);
  t.same(declared, wanted, 'families in order, HELP and TYPE once each');
  const samples = text.split('\n').filter((l) => l !== '' && !l.startsWith('# '));
  for (const [name] of FAMILIES) {
    if (name === 'srp_nbd_md_member_faulty') continue; // only for a kernel device in an md array
    if (name === 'srp_nbd_md_readd_last_seconds') continue; // only after a re-add
    if (name.startsWith('srp_nbd_path_')) continue; // only for an LU with several paths (daemon-multipath.test)
    const ofFamily = (l: string): boolean => [`${name}{`, `${name} `, `${name}_`].some((p) => l.startsWith(p));
    t.ok(samples.some(ofFamily), `a sample of ${name}`);
  }
  const lines = new Set(samples);
  for (const want of [
    'srp_nbd_targets 1',
    'srp_nbd_target_state{target="test-m",state="running"} 1',
    'srp_nbd_target_state{target="test-m",state="detached"} 0',
    'srp_nbd_target_attached{target="test-m"} 1',
    'srp_nbd_reconnect_attempts_total{target="test-m"} 0',
    'srp_nbd_logins_total{target="test-m"} 1',
    'srp_nbd_io_held{target="test-m"} 0',
    'srp_nbd_md_readds_total{target="test-m"} 0',
    'srp_nbd_lun_errors_total{target="test-m",export="test-m-lun0",op="trim"} 0',
    'srp_nbd_lun_latency_seconds_bucket{target="test-m",export="test-m-lun0",op="write_zeroes",le="+Inf"} 0',
    'srp_nbd_lun_latency_seconds_count{target="test-m",export="test-m-lun0",op="flush"} 0',
  ]) {
    t.ok(lines.has(want), want);
  }
  const readBuckets = 'srp_nbd_lun_latency_seconds_bucket{target="test-m",export="test-m-lun0",op="read",';
  t.equal(samples.filter((l) => l.startsWith(readBuckets)).length, 18, '17 buckets and +Inf');
});

t.test('renderMetrics: md membership per export and array; a target without a port counts zero', async (t) => {
  const counts = (): OpStats => ({ ops: 0, bytes: 0, errors: 0, latency: new Histogram() });
  const stats = Object.fromEntries(IO_OPS.map((op) => [op, counts()])) as Record<IoOp, OpStats>;
  stats.write.ops = 3;
  stats.write.latency.observe(0.002);
  const secondsInState = Object.fromEntries(RPORT_STATES.map((s) => [s, 0])) as Record<RportState, number>;
  secondsInState['fail-fast'] = 12.34567;
  const text = renderMetrics({
    version: 'v1',
    targets: [
      {
        id: 'srp-x',
        attached: false,
        state: undefined,
        secondsInState,
        reconnectAttempts: 4,
        reconnects: 1,
        failedReconnects: 2,
        failedReconnectsTotal: 3,
        logins: 2,
        session: undefined,
        io: undefined,
        mdReadds: 5,
        lunChanges: { grown: 2, added: 1 },
        mdReaddLastSeconds: 0.412,
        luns: [
          {
            export: 'srp-x-lun0',
            md: [
              { array: 'md0', state: ['faulty'] },
              { array: 'md3', state: ['in_sync', 'write_mostly'] },
            ],
            stats,
          },
        ],
      },
    ],
  });
  const lines = new Set(text.split('\n'));
  for (const want of [
    'srp_nbd_info{version="v1"} 1',
    'srp_nbd_targets 1',
    'srp_nbd_target_state{target="srp-x",state="running"} 0',
    'srp_nbd_target_state{target="srp-x",state="fail-fast"} 0',
    'srp_nbd_target_attached{target="srp-x"} 0',
    'srp_nbd_state_seconds_total{target="srp-x",state="fail-fast"} 12.346',
    'srp_nbd_reconnect_attempts_total{target="srp-x"} 4',
    'srp_nbd_failed_reconnects{target="srp-x"} 2',
    'srp_nbd_failed_reconnects_total{target="srp-x"} 3',
    'srp_nbd_memory_registrations_total{target="srp-x"} 0',
    'srp_nbd_credits{target="srp-x"} 0',
    'srp_nbd_io_in_flight{target="srp-x"} 0',
    'srp_nbd_md_readds_total{target="srp-x"} 5',
    'srp_nbd_lun_changes_total{target="srp-x",change="grown"} 2',
    'srp_nbd_lun_changes_total{target="srp-x",change="added"} 1',
    'srp_nbd_lun_changes_total{target="srp-x",change="removed"} 0',
    'srp_nbd_md_readd_last_seconds{target="srp-x"} 0.412',
    'srp_nbd_md_member_faulty{target="srp-x",export="srp-x-lun0",array="md0"} 1',
    'srp_nbd_md_member_faulty{target="srp-x",export="srp-x-lun0",array="md3"} 0',
    'srp_nbd_lun_ops_total{target="srp-x",export="srp-x-lun0",op="write"} 3',
    'srp_nbd_lun_latency_seconds_bucket{target="srp-x",export="srp-x-lun0",op="write",le="0.001"} 0',
    'srp_nbd_lun_latency_seconds_bucket{target="srp-x",export="srp-x-lun0",op="write",le="0.0025"} 1',
    'srp_nbd_lun_latency_seconds_sum{target="srp-x",export="srp-x-lun0",op="write"} 0.002',
  ]) {
    t.ok(lines.has(want), want);
  }
  t.same(
    text.split('\n').filter((l) => l.startsWith('# TYPE')),
    FAMILIES.map(([n, ty]) => `# TYPE ${n} ${ty}`),
  );
});
