/**
 * The bench:e2e report: strace -c summaries and fio JSON results turned into rows, ratios
 * against ib_srp, CPU and system calls per I/O, and the table written between the markers of
 * docs/performance.md. Inputs are written here in the formats fio and strace print.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import {
  buildRows,
  markdownTable,
  parsePerftestLatency,
  parseStraceSummary,
  readSessionCounters,
  readVerbsFloor,
} from '../bench/e2e-report.js';

// strace 6.1 `-c -f` output (a row without errors has five fields, the total line is skipped).
const STRACE = `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 45.10    0.120000          30      4000           sendmsg
 30.00    0.080000          10      8000      2000 read
 24.90    0.066000          33      2000           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.266000          19     14000      2000 total
`;

t.test('strace -c summary: calls per syscall, most frequent first', async (t) => {
  const s = parseStraceSummary(STRACE);
  t.equal(s.total, 14000);
  t.same(s.top, [
    ['read', 8000],
    ['sendmsg', 4000],
    ['epoll_wait', 2000],
  ]);
  t.equal(parseStraceSummary('strace: Process 1 detached\n').total, 0);
});

function fioJson(rw: 'read' | 'write', iops: number, ios: number, bw: number, latNs = 1e6): string {
  const side = { iops, total_ios: ios, bw_bytes: bw, lat_ns: { mean: latNs } };
  const idle = { iops: 0, total_ios: 0, bw_bytes: 0 };
  return (
    'fio: note\n' +
    JSON.stringify({ jobs: [{ read: rw === 'read' ? side : idle, write: rw === 'write' ? side : idle }] })
  );
}

t.test('rows: medians, ratio and paired range, CPU and syscalls per I/O', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-report-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const w = 'randread-4k-qd32';
  const runs: [string, number, number, string][] = [
    // initiator, rep, IOPS, CPU seconds of the serving process
    ['srp-nbd', 0, 800, '4.000'],
    ['ib_srp', 0, 1000, '-'],
    ['nbdkit', 0, 2000, '2.000'],
    ['srp-nbd', 1, 900, '3.600'],
    ['ib_srp', 1, 1000, '-'],
    ['nbdkit', 1, 2200, '2.200'],
  ];
  const tsv: string[] = [];
  for (const [i, r, iops, cpu] of runs) {
    fs.writeFileSync(path.join(dir, `${w}-${i}-${r}.json`), fioJson('read', iops, iops * 8, iops * 4096));
    tsv.push(`${w}\t${i}\t${r}\trun\t${cpu}\t8.1`);
  }
  fs.writeFileSync(path.join(dir, `${w}-srp-nbd.strace`), STRACE);
  fs.writeFileSync(path.join(dir, `${w}-srp-nbd-strace.json`), fioJson('read', 500, 2000, 0));
  tsv.push(`${w}\tsrp-nbd\t-\tstrace\t-\t-`);
  fs.writeFileSync(path.join(dir, 'runs.tsv'), tsv.join('\n') + '\n');

  const [row] = buildRows(dir);
  t.equal(row!.workload, w);
  t.equal(row!.unit, 'IOPS');
  t.same(row!.cells['srp-nbd'].rates, [800, 900]);
  t.equal(row!.cells['srp-nbd'].median, 900, 'upper median of two');
  t.equal(row!.ratio, 0.9);
  t.same(row!.pairedRange, [0.8, 0.9]);
  // 4.0 s / 6400 I/Os = 625 µs, 3.6 s / 7200 = 500 µs: median (upper) 625
  t.equal(row!.cells['srp-nbd'].cpuUsPerIo, 625);
  t.equal(row!.cells.ib_srp.cpuUsPerIo, null, 'no process figure for the kernel initiator');
  t.equal(row!.cells['srp-nbd'].syscallsPerIo, 7, '14,000 calls over 2,000 I/Os');
  t.equal(row!.cells['srp-nbd'].topSyscalls[0], 'read 4.00');
  t.equal(row!.cells.nbdkit.syscallsPerIo, null);
  t.equal(row!.target, 0.8);

  const table = markdownTable(
    [row!],
    [
      { workload: w, server: 'memory', iops: 10000, cpuUsPerIo: 10 },
      { workload: w, server: 'test-target', iops: 5000, cpuUsPerIo: 35 },
    ],
  );
  t.match(table, /\| randread-4k-qd32 \| 900 IOPS \| 1000 \| 2200 \| \*\*0\.90\*\* \(0\.80–0\.90\) \| ≥ 0\.8 \|/);
  t.match(table, /\| 625 \| 125 \| 5\.0x \| 7\.0 \| – \|/);
  t.match(table, /\*\*3\.5x\*\*/, 'host row: test-target / memory CPU');
  t.notMatch(table, /where the CPU goes/, 'no split table for runs without the split columns');
});

t.test('rows: user/system split, guest CPU per I/O and busy share (runs with the extra columns)', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-report-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const w = 'randwrite-4k-qd32';
  // initiator, IOPS, process CPU s, seconds, user s, system s, guest CPU s (8 s runs, ios = IOPS * 8)
  const runs: [string, number, string, string, string, string, string][] = [
    ['srp-nbd', 250, '7.800', '8.0', '2.600', '5.200', '15.000'],
    ['ib_srp', 2000, '-', '8.0', '-', '-', '12.000'],
    ['nbdkit', 2500, '0.400', '8.0', '0.100', '0.300', '10.000'],
  ];
  const tsv: string[] = [];
  for (const [i, iops, cpu, secs, u, k, g] of runs) {
    fs.writeFileSync(path.join(dir, `${w}-${i}-0.json`), fioJson('write', iops, iops * 8, iops * 4096));
    tsv.push(`${w}\t${i}\t0\trun\t${cpu}\t${secs}\t${u}\t${k}\t${g}`);
  }
  fs.writeFileSync(path.join(dir, 'runs.tsv'), tsv.join('\n') + '\n');
  const [row] = buildRows(dir);
  const c = row!.cells;
  t.equal(c['srp-nbd'].userUsPerIo, 1300, '2.6 s over 2,000 I/Os');
  t.equal(c['srp-nbd'].sysUsPerIo, 2600);
  t.equal(c['srp-nbd'].guestUsPerIo, 7500, '15 s of guest CPU over 2,000 I/Os');
  t.equal(c.ib_srp.guestUsPerIo, 750, 'the kernel initiator has a whole-guest figure');
  t.equal(c.ib_srp.userUsPerIo, null);
  t.equal(c['srp-nbd'].busy, 0.975, 'the daemon used 0.975 of a vCPU');
  const table = markdownTable([row!], []);
  t.match(table, /\| randwrite-4k-qd32 \| 1300 \| 2600 \| 0\.97 \| 7500 \| 750 \| 500 \| 10\.0x \|/);
});

// perftest 4.5 ib_send_lat -e over rxe in the guest (the header lines trimmed)
const SEND_LAT = ` Test with events. Using rxe0_comp0
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 64      2000          179.76         37817.64      3799.14  \t       3364.41     \t2192.55\t\t10038.90 \t\t33340.61
---------------------------------------------------------------------------------------
`;

t.test('verbs floor: ib_send_lat results, and the QD1 latency table', async (t) => {
  t.same(parsePerftestLatency(SEND_LAT), {
    bytes: 64,
    iterations: 2000,
    minUs: 179.76,
    typicalUs: 3799.14,
    avgUs: 3364.41,
  });
  t.equal(parsePerftestLatency("Couldn't connect to 192.0.2.2:18515\n"), null, 'a failed run has no result');
  t.equal(
    parsePerftestLatency(' #bytes #iterations    t_min[usec]\n 64 2000 inf inf\n'),
    null,
    'no numbers, no result',
  );

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-report-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const w = 'randread-4k-qd1';
  const runs: [string, number, number, string][] = [
    ['srp-nbd', 150, 6600e3, '1.0'],
    ['ib_srp', 900, 1100e3, '-'],
    ['nbdkit', 1100, 900e3, '0.3'],
  ];
  const tsv: string[] = [];
  for (const [i, iops, lat, cpu] of runs) {
    fs.writeFileSync(path.join(dir, `${w}-${i}-0.json`), fioJson('read', iops, iops * 8, iops * 4096, lat));
    tsv.push(`${w}\t${i}\t0\trun\t${cpu}\t8.0`);
  }
  fs.writeFileSync(path.join(dir, 'runs.tsv'), tsv.join('\n') + '\n');
  fs.writeFileSync(path.join(dir, 'verbs-events.txt'), SEND_LAT);
  const [row] = buildRows(dir);
  t.equal(row!.cells['srp-nbd'].latUs, 6600, 'fio lat_ns mean in µs');
  const floor = readVerbsFloor(dir);
  t.equal(floor.events?.typicalUs, 3799.14);
  t.equal(floor.polling, undefined, 'no polling run, no polling figure');
  const table = markdownTable([row!], [], floor);
  t.match(table, /\| randread-4k-qd1 \| 6600 \| 1100 \| 900 \| 3799 \(avg 3364\) \| – \|/);
  t.notMatch(markdownTable([row!], []), /verbs floor/, 'no floor table without a perftest run');
});

t.test('session counters from the saved status: registrations once per slot, per command', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-report-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  t.equal(readSessionCounters(dir), null, 'no file, no counters');
  fs.writeFileSync(path.join(dir, 'srp-nbd-status.json'), '{ not json');
  t.equal(readSessionCounters(dir), null, 'a broken file, no counters');
  const status = {
    targets: [
      {
        id: 'e2e',
        session: {
          commands_completed: 52000,
          memory_registrations: 70,
          per_command_registrations: 6,
          slot_regions: 64,
        },
      },
    ],
  };
  fs.writeFileSync(path.join(dir, 'srp-nbd-status.json'), JSON.stringify(status));
  const s = readSessionCounters(dir);
  t.same(s, { commands: 52000, registrations: 70, perCommand: 6, slotRegions: 64 });
  t.match(
    markdownTable([], [], {}, s),
    /52000 commands, 70 memory registrations \(64 command slots registered once, 6 commands/,
  );
});

t.test(
  'the native loop column: its rate, ratio to ib_srp, CPU and system calls per I/O beside the daemon',
  async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-report-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const w = 'randread-4k-qd1';
    // initiator, rep, IOPS, mean latency ns, process CPU s, user s, system s, guest CPU s (8 s runs, ios = IOPS * 8)
    const runs: [string, number, number, number, string, string, string, string][] = [
      ['srp-nbd', 0, 300, 3300e3, '1.200', '0.700', '0.500', '6.000'],
      ['native-loop', 0, 500, 2000e3, '0.800', '0.200', '0.600', '4.000'],
      ['ib_srp', 0, 1000, 1000e3, '-', '-', '-', '4.000'],
      ['nbdkit', 0, 1200, 800e3, '0.400', '0.100', '0.300', '3.000'],
      ['srp-nbd', 1, 320, 3100e3, '1.280', '0.800', '0.480', '6.400'],
      ['native-loop', 1, 600, 1700e3, '0.960', '0.300', '0.660', '4.800'],
      ['ib_srp', 1, 800, 1250e3, '-', '-', '-', '3.200'],
      ['nbdkit', 1, 1100, 900e3, '0.440', '0.110', '0.330', '3.300'],
    ];
    const tsv: string[] = [];
    for (const [i, r, iops, lat, cpu, u, k, g] of runs) {
      fs.writeFileSync(path.join(dir, `${w}-${i}-${r}.json`), fioJson('read', iops, iops * 8, iops * 4096, lat));
      tsv.push(`${w}\t${i}\t${r}\trun\t${cpu}\t8.0\t${u}\t${k}\t${g}`);
    }
    fs.writeFileSync(path.join(dir, `${w}-native-loop.strace`), STRACE);
    fs.writeFileSync(path.join(dir, `${w}-native-loop-strace.json`), fioJson('read', 500, 7000, 0));
    tsv.push(`${w}\tnative-loop\t-\tstrace\t-\t-`);
    fs.writeFileSync(path.join(dir, 'runs.tsv'), tsv.join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'verbs-events.txt'), SEND_LAT);

    const [row] = buildRows(dir);
    const n = row!.cells['native-loop'];
    t.same(n.rates, [500, 600]);
    t.equal(n.median, 600);
    t.equal(row!.nativeRatio, 0.6, 'median 600 over ib_srp median 1000');
    t.same(row!.nativePairedRange, [0.5, 0.75], 'each run over the ib_srp run of the same round');
    t.equal(row!.ratio, 0.32, 'the daemon ratio is unchanged by the extra column');
    t.equal(n.cpuUsPerIo, 200, '0.8 s over 4,000 I/Os and 0.96 s over 4,800: 200 µs both');
    t.equal(n.sysUsPerIo, 150, '0.6 s over 4,000 I/Os (the upper median of 150 and 137.5)');
    t.equal(n.syscallsPerIo, 2, '14,000 calls over 7,000 I/Os');
    t.equal(n.latUs, 2000, 'upper median of 2000 and 1700 µs');

    const table = markdownTable([row!], [], readVerbsFloor(dir));
    t.match(table, /\| workload \| srp-nbd \| native loop \(C prototype\) \| ib_srp \| nbdkit \+ nbd-client \|/);
    t.match(
      table,
      /\| randread-4k-qd1 \| 320 IOPS \| 600 \| 1000 \| 1200 \| \*\*0\.32\*\* \(0\.30–0\.40\) \| \*\*0\.60\*\* \(0\.50–0\.75\) \| < 0\.7; < 0\.7 \| 500 \| 200 \| 50 \| 10\.0x \| 4\.0x \| – \| 2\.0 \| – \|/,
    );
    t.match(table, /\| native user µs\/IO \| native system µs\/IO \| native busy \(vCPUs\) \|/);
    t.match(table, /\| randread-4k-qd1 \| 3300 \| 2000 \| 1250 \| 900 \| 3799 \(avg 3364\) \| – \|/, 'QD1 latency row');

    // a strace pass whose fio failed (no I/O, or no JSON at all) gives no figure, not calls over one I/O
    fs.writeFileSync(path.join(dir, `${w}-native-loop-strace.json`), fioJson('read', 0, 0, 0));
    t.equal(buildRows(dir)[0]!.cells['native-loop'].syscallsPerIo, null, 'fio did no I/O');
    fs.writeFileSync(path.join(dir, `${w}-native-loop-strace.json`), 'fio: /dev/nbd2: zero sized block device?\n');
    t.equal(buildRows(dir)[0]!.cells['native-loop'].syscallsPerIo, null, 'fio wrote no JSON');

    // a run without the column keeps the three-column table
    const old = { ...row!, nativeRatio: null, nativePairedRange: null };
    t.notMatch(markdownTable([old], []), /native/);
  },
);
