#!/bin/bash
# Native addon (issue 6) in the guest: the real SRP session over the RDMA channel transport
# (librdmacm/libibverbs through native/) against LIO ib_srpt on rxe, and kernel NBD attach.
#   login      RDMA/CM login to path 0's target, SRP_LOGIN_RSP, connect time
#   io-verify  16 MiB random write + read back through SCSI READ/WRITE(16) over RDMA
#   probe      zero-length RDMA WRITE keep-alive round trip
#   cycles     CYCLES (default 1000) login/logout cycles; RDMA objects, pollers and fds
#              counted before and after (no leak), target sessions gone afterwards
#   (then nbd-attach and nbd-errors, below, before the link flap)
#   port-err   link_down 0 (carrier loss) -> IBV_EVENT_PORT_ERR -> channel lost, within 1 s; its QP
#              and memory released, its cm id parked (no DREQ through the downed port)
#   relogin    same process, after link up: a fresh channel logs in again (link-up -> login
#              time), I/O on it, the parked id torn down on PORT_ACTIVE, nothing left
#   nbd-attach attach() of the SRP LUN (NBD server over the RDMA session) -> /dev/nbdN;
#              dd pattern write/read/cmp and fio randwrite verify on it; DISCONNECT
#   nbd-errors CONNECT on a busy /dev/nbdN: the clear EBUSY message
# Run: test/vm/boot.sh test/vm/scenarios/addon-rdma.sh [CYCLES=100]
# vm-timeout: 1800
. "$(dirname "$0")/../guest-lib.sh"
CYCLES=${CYCLES:-1000}
T_START=$(now)
[ -f "$REPO_ROOT/native/build/Release/srp_nbd_native.node" ] || { fail addon-built "run npm ci / npm run build:native on the host"; finish; }
[ -f "$REPO_ROOT/dist/src/initiator/rdma/index.js" ] || { fail dist-built "run npm run build on the host"; finish; }
setup_bench 1 ram:64:512
log "bench ready: service guid $SRPT_GUID"

DRIVER=/tmp/addon-driver.mjs
cat > $DRIVER <<'JS'
// Guest driver: prints "RESULT name ok|fail detail" and "TIME name seconds" lines.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
const R = process.env.REPO_ROOT + '/dist/src';
const { loadNative } = await import(R + '/native/native.js');
const { RdmaChannelTransport } = await import(R + '/initiator/rdma/index.js');
const { SrpSession } = await import(R + '/initiator/srp-session.js');
const { ScsiDisk } = await import(R + '/initiator/scsi-disk.js');
const { NbdNetlink, attach } = await import(R + '/nbd/netlink.js');
const { NbdServer } = await import(R + '/nbd/server.js');
const { silentLogger } = await import(R + '/util/log.js');

const b = loadNative();
const env = process.env;
const guid = BigInt(env.SRPT_GUID.startsWith('0x') ? env.SRPT_GUID : '0x' + env.SRPT_GUID);
const targetPortId = Buffer.alloc(16); targetPortId.writeBigUInt64BE(guid, 0); targetPortId.writeBigUInt64BE(guid, 8);
const initiatorPortId = Buffer.alloc(16); initiatorPortId.writeBigUInt64BE(0x5352504e4244n, 8);
const dst = { family: 'ip', host: env.TGT_IP, port: Number(env.CM_PORT) };
const src = { family: 'ip', host: env.INI_IP, port: 0 };
const result = (n, ok, d = '') => console.log(`RESULT ${n} ${ok ? 'ok' : 'fail'} ${d}`);
const time = (n, s, d = '') => console.log(`TIME ${n} ${s.toFixed(3)} ${d}`);
const fds = () => fs.readdirSync('/proc/self/fd').length;
const login = async () => {
  const tr = new RdmaChannelTransport(b, { dst, src, ackTimeout: 14, retryCount: 6 });
  const s = await SrpSession.login(tr, { initiatorPortId, targetPortId, loginTimeoutMs: 10000 });
  return { tr, s };
};
const phase = env.PHASE;
try {
  if (phase === 'main') {
    let t0 = performance.now();
    const { tr, s } = await login();
    time('login', (performance.now() - t0) / 1000, `device ${tr.info.device} qp ${tr.info.qpNum} resolve attempts ${tr.stats.resolveAttempts}`);
    result('login', true, JSON.stringify(s.loginResult ?? {}));
    const disk = new ScsiDisk(s, { lun: 0n });
    const p = await disk.probe();
    result('probe-lun', p.serial === 'srpnbd-p0-l0', `serial ${p.serial} size ${p.geometry.sizeBytes} bs ${p.geometry.blockSize}`);
    const data = randomBytes(16 << 20);
    t0 = performance.now();
    await disk.write(1 << 20, data);
    const tw = (performance.now() - t0) / 1000;
    t0 = performance.now();
    const back = await disk.read(1 << 20, data.length);
    const tr2 = (performance.now() - t0) / 1000;
    result('io-verify', back.equals(data), `16 MiB write ${(16 / tw).toFixed(1)} MiB/s read ${(16 / tr2).toFixed(1)} MiB/s`);
    const rtts = [];
    for (let i = 0; i < 20; i++) rtts.push(await tr.probe());
    result('probe', true, `zero-length RDMA WRITE rtt ms min ${Math.min(...rtts)} max ${Math.max(...rtts)}`);
    await s.close();
    // cycles
    const n = Number(env.CYCLES);
    const fd0 = fds();
    const before = JSON.stringify(b.rdmaObjectCounts());
    t0 = performance.now();
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const c0 = performance.now();
      const { s: si } = await login();
      await si.close();
      worst = Math.max(worst, performance.now() - c0);
      if ((i + 1) % 100 === 0) console.log(`cycle ${i + 1}: fds ${fds()} objects ${JSON.stringify(b.rdmaObjectCounts())} rss ${(process.memoryUsage().rss >> 20)} MiB`);
    }
    const after = JSON.stringify(b.rdmaObjectCounts());
    const fd1 = fds();
    time('cycles', (performance.now() - t0) / 1000, `${n} login/logout cycles, worst ${worst.toFixed(0)} ms`);
    result('cycles-no-leak', before === after && after === JSON.stringify({ channels: 0, ids: 0, qps: 0, pds: 0, compChannels: 0, cqs: 0, mrs: 0 }) && fd1 <= fd0 + 1 && b.pollCount() === 0,
      `objects before ${before} after ${after}; fds ${fd0} -> ${fd1}; pollers ${b.pollCount()}`);
  } else if (phase === 'porterr') {
    // link down -> PORT_ERR -> channel lost; then, in the same process (as the daemon would), link
    // up and a fresh channel per attempt until one logs in. The lost channel's cm id is parked
    // until PORT_ACTIVE: a DREQ sent through the downed port would break rxe's CM receive for good.
    const { parkedCmIds } = await import(R + '/initiator/rdma/index.js');
    let t0;
    const { tr: tr3, s: s3 } = await login();
    const lost = new Promise((r) => s3.on('disconnect', r));
    const asyncSeen = [];
    tr3.on('asyncEvent', (e) => asyncSeen.push(e.name));
    t0 = performance.now();
    execFileSync('bash', ['-c', `. ${env.GUEST_LIB}; link_down 0`]);
    const reason = await Promise.race([lost, new Promise((r) => setTimeout(() => r(undefined), 10000))]);
    const dt = (performance.now() - t0) / 1000;
    time('port-err', dt, reason ? reason.message : 'no disconnect within 10 s');
    result('port-err', !!reason && /PORT_ERR/.test(reason.message) && dt < 1, `${dt.toFixed(3)} s: ${reason?.message}; async events ${asyncSeen.join(',')}`);
    // a lost channel is released in the background (its QP destroyed on a worker thread)
    const tRel = performance.now();
    const released = await Promise.race([tr3.released().then(() => true), new Promise((r) => setTimeout(() => r(false), 10000))]);
    const relMs = (performance.now() - tRel).toFixed(0);
    const counts = b.rdmaObjectCounts();
    result('port-err-released', released && counts.qps === 0 && counts.cqs === 0 && counts.mrs === 0 && parkedCmIds(b) === counts.ids,
      `${released ? `released ${relMs} ms after the loss was reported` : 'not released within 10 s'}: ${JSON.stringify(counts)}; cm ids parked until PORT_ACTIVE: ${parkedCmIds(b)}`);
    fs.writeFileSync('/tmp/porterr-lost', '1');
    while (!fs.existsSync('/tmp/link-up')) await new Promise((r) => setTimeout(r, 20));
    const upAt = Number(fs.readFileSync('/tmp/link-up', 'utf8').trim());
    const uptime = () => Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
    const errs = [];
    let s4;
    for (let i = 1; i <= 6 && !s4; i++) {
      try {
        const tr = new RdmaChannelTransport(b, { dst, src });
        s4 = await SrpSession.login(tr, { initiatorPortId, targetPortId, loginTimeoutMs: 5000 });
        const since = uptime() - upAt;
        time('relogin', since, `link up -> logged in, attempt ${i}, multichannel ${s4.loginResult?.multichanResult}`);
        result('relogin', true, `attempt ${i}; earlier: ${errs.join(' / ') || 'none'}; parked cm ids left ${parkedCmIds(b)}`);
      } catch (err) {
        errs.push(err.message);
        if (i === 6) result('relogin', false, errs.join(' / '));
      }
    }
    if (s4) {
      const disk = new ScsiDisk(s4, { lun: 0n });
      await disk.probe();
      const data = randomBytes(1 << 20);
      await disk.write(0, data);
      result('relogin-io', (await disk.read(0, data.length)).equals(data), '1 MiB write + read back on the new channel');
      await s4.close();
    }
    const c2 = b.rdmaObjectCounts();
    result('relogin-released', Object.values(c2).every((v) => v === 0) && parkedCmIds(b) === 0, JSON.stringify(c2));
  } else if (phase === 'nbd') {
    const { tr, s } = await login();
    const disk = new ScsiDisk(s, { lun: 0n });
    const p = await disk.probe();
    const g = p.geometry;
    // an NBD export over the SRP LUN (the minimum the kernel needs; no FSM here)
    const backend = {
      size: g.sizeBytes, readOnly: false, description: 'srp lun 0',
      blockSize: { minimum: g.blockSize, preferred: 4096, maximum: 1 << 20 },
      canFlush: true, canFua: true, canTrim: false, canWriteZeroes: false, canMultiConn: false,
      read: (off, dst) => disk.read(off, dst.length, dst).then(() => undefined),
      write: (off, data, fua) => disk.write(off, data, { fua }),
      flush: () => disk.flush(),
      trim: () => undefined, writeZeroes: () => undefined,
    };
    const server = new NbdServer({ logger: silentLogger() });
    server.addExport('lun0', backend);
    let t0 = performance.now();
    const nl = await NbdNetlink.open(b);
    const deadSeen = [];
    const stopWatch = nl.watchLinkDead((i) => deadSeen.push(i));
    const att = await attach(nl, b, { server, exportName: 'lun0', index: 0, deadConnTimeoutSec: 30, backendId: 'srpnbd-p0-l0' });
    time('nbd-attach', (performance.now() - t0) / 1000, att.device);
    const st = await nl.status(att.index);
    result('nbd-attach', st.length === 1 && st[0].connected, `${att.device} status ${JSON.stringify(st)}; rdma ${tr.info.device}`);
    // busy node: a second CONNECT on the same index is refused with the clear message
    try {
      await attach(nl, b, { server, exportName: 'lun0', index: 0, backendId: 'other' });
      result('nbd-busy', false, 'second CONNECT on /dev/nbd0 succeeded');
    } catch (err) {
      result('nbd-busy', /already in use/.test(err.message), err.message);
    }
    // hand over to the shell for dd and fio; it writes /tmp/nbd-done when finished
    fs.writeFileSync('/tmp/nbd-ready', att.device);
    while (!fs.existsSync('/tmp/nbd-done')) await new Promise((r) => setTimeout(r, 100));
    t0 = performance.now();
    await nl.disconnect(att.index);
    await Promise.race([att.connection.closed, new Promise((r) => setTimeout(r, 5000))]);
    time('nbd-disconnect', (performance.now() - t0) / 1000);
    result('nbd-disconnect', true, `requests served ${att.connection.stats.requests}; link-dead notifications ${deadSeen.length}`);
    stopWatch();
    nl.close();
    await s.close();
  }
} catch (err) {
  result(phase + '-exception', false, (err && err.stack || String(err)).replace(/\n/g, ' | '));
}
process.exit(0);
JS

run_driver() { # run_driver PHASE: runs the driver, turns RESULT/TIME lines into PASS/FAIL/TIME
  local out=/tmp/driver-$1.log
  REPO_ROOT=$REPO_ROOT SRPT_GUID=$SRPT_GUID TGT_IP=${TGT_IP[0]} INI_IP=${INI_IP[0]} CM_PORT=$CM_PORT \
    INI_DEV=$(ini_dev 0) CYCLES=$CYCLES PHASE=$1 timeout 1500 node $DRIVER >$out 2>&1
  local rc=$?
  grep -vE '^(RESULT|TIME) ' $out | tail -n 20
  report_lines $out
  [ $rc = 0 ] || fail "driver-$1" "node exited $rc"
}
report_lines() { # RESULT/TIME lines of a driver log -> PASS/FAIL/TIME (no /dev/fd in the guest)
  grep -E '^(RESULT|TIME) ' "$1" > "$1.res"
  while read -r kind name st rest; do
    case $kind in
      RESULT) if [ "$st" = ok ]; then pass "$name" "$rest"; else fail "$name" "$rest"; fi ;;
      TIME) timing "$name" "$st" "$rest" ;;
    esac
  done < "$1.res"
}

run_driver main
rm -f /tmp/nbd-ready /tmp/nbd-done
REPO_ROOT=$REPO_ROOT SRPT_GUID=$SRPT_GUID TGT_IP=${TGT_IP[0]} INI_IP=${INI_IP[0]} CM_PORT=$CM_PORT PHASE=nbd \
  timeout 900 node $DRIVER >/tmp/driver-nbd.log 2>&1 &
DRV=$!
if wait_for 120 test -f /tmp/nbd-ready; then
  DEV=$(cat /tmp/nbd-ready)
  log "$DEV: size $(blockdev --getsize64 $DEV) logical block $(blockdev --getss $DEV)"
  t0=$(now)
  if dd if=/dev/urandom of=/tmp/pat bs=1M count=8 status=none &&
     dd if=/tmp/pat of=$DEV bs=1M oflag=direct status=none &&
     dd if=$DEV of=/tmp/back bs=1M count=8 iflag=direct status=none && cmp /tmp/pat /tmp/back; then
    pass nbd-dd-verify "$(since "$t0") s, 8 MiB through /dev/nbd0 -> NBD server -> SRP over RDMA -> LIO"
  else fail nbd-dd-verify "dd/cmp on $DEV"; fi
  t0=$(now)
  if fio_verify $DEV 16M; then pass nbd-fio-verify "$(since "$t0") s, fio randwrite 4k crc32c verify 16 MiB"
  else fail nbd-fio-verify "$(tail -n 5 /tmp/fio-verify.out | tr '\n' ' ')"; fi
else
  fail nbd-attach-ready "driver did not attach: $(tail -n 5 /tmp/driver-nbd.log | tr '\n' ' ')"
fi
touch /tmp/nbd-done
wait $DRV
grep -vE '^(RESULT|TIME) ' /tmp/driver-nbd.log | tail -n 20
report_lines /tmp/driver-nbd.log
rm -f /tmp/porterr-lost /tmp/link-up
REPO_ROOT=$REPO_ROOT SRPT_GUID=$SRPT_GUID TGT_IP=${TGT_IP[0]} INI_IP=${INI_IP[0]} CM_PORT=$CM_PORT \
  INI_DEV=$(ini_dev 0) GUEST_LIB="$GUEST_LIB_DIR/guest-lib.sh" PHASE=porterr timeout 300 node $DRIVER >/tmp/driver-porterr.log 2>&1 &
DRV=$!
if wait_for 60 test -f /tmp/porterr-lost; then
  nap 1
  log "sessions on the target while the link is down: $(srpt_sessions 0 | wc -l)"
  t0=$(now); link_up 0; echo "$t0" > /tmp/link-up
  wait_for 10 port_active "$(ini_rxe 0)"
  log "link up, port active after ${WAITED} s"
else
  fail porterr-ready "the driver did not lose its channel: $(tail -n 5 /tmp/driver-porterr.log | tr '\n' ' ')"
  link_up 0; echo "$(now)" > /tmp/link-up
fi
wait $DRV; rc=$?
grep -vE '^(RESULT|TIME) ' /tmp/driver-porterr.log | tail -n 20
report_lines /tmp/driver-porterr.log
[ $rc = 0 ] || fail driver-porterr "node exited $rc"
log "routes after link up: $(ip route show table 100 | tr '\n' ' ')"

dmesg | grep -iE 'nbd|srpt' | tail -n 15
timing addon-total "$(since "$T_START")" "guest script, after boot"
finish
