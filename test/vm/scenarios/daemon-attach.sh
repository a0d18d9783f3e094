#!/bin/bash
# The daemon over real RDMA in the guest (issue 7 scenario 1, issue 8's restart):
#   attach      `srp-nbd attach <ib_srpt address> --device /dev/nbd0`: the LUN becomes /dev/nbd0
#   fio-verify  fio randwrite + crc32c verify on /dev/nbd0
#   restart     a pattern is written, the daemon is killed with -9 (a writer on /dev/nbd0 keeps I/O
#               in flight) and started again: it re-attaches the same /dev/nbd0 (same major:minor)
#               with RECONFIGURE, the writer's in-flight writes complete without error, the pattern
#               reads back, fio verify passes
#   detach      `srp-nbd detach`: only now is /dev/nbd0 disconnected
#   detach-held attached again, path down, a QD128 writer fills the daemon's in-flight budget and
#               the kernel blocks sending to it: `srp-nbd detach` still completes at once (the
#               daemon closes the connection under the kernel after 1 s) and the daemon answers
# Run: test/vm/boot.sh test/vm/scenarios/daemon-attach.sh
# vm-timeout: 1500
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 ram:64:512
load_nbd || die "modprobe nbd failed"

daemon_up
ADDR=$(srp_target_string 0)
log "attach $ADDR"
T0=$(now)
attach_nbd t0 "$ADDR" nbd0 --dead-conn-timeout 180
timing attach "$(since "$T0")" "attach command to /dev/nbd0 connected"
MM1=$(majmin /dev/nbd0)
check fio-verify fio_verify /dev/nbd0 4M

dd if=/dev/urandom of=/tmp/pattern bs=1M count=2 status=none
check pattern-write dd if=/tmp/pattern of=/dev/nbd0 bs=1M seek=8 oflag=direct status=none
# A writer keeps I/O in flight across the kill: the kernel must hold it (dead_conn_timeout,
# set long enough for a restart under TCG) and resubmit it on the new connection, not fail it.
io_prober_start /dev/nbd0 0.2   # 4 KiB writes in the first 4 MiB
nap 2
daemon_kill9
uptime_to T1
daemon_start --config "$DAEMON_CONFIG"
check restart-running wait_for 120 target_state_is t0 running
timing restart "$(since "$T1")" "kill -9 to target running again"
uptime_to T2
wait_for 90 bash -c "awk -v t=$T2 '\$1 > t && \$3 == 0' /tmp/prober-nbd0.log | grep -q ." || log "no prober write completed after the restart"
io_prober_stop /dev/nbd0
SUMMARY=$(io_summary /dev/nbd0 "$T1")
note writer-across-restart "$SUMMARY"
if [ -z "$(io_first_error /dev/nbd0 0)" ]; then pass inflight-not-failed "$SUMMARY"
else fail inflight-not-failed "$SUMMARY"; fi
check writes-after-restart awk -v t="$T2" '$1 > t && $3 == 0 {n++} END {exit n == 0}' /tmp/prober-nbd0.log
check same-device test "$(majmin /dev/nbd0)" = "$MM1"
check pattern-after-restart bash -c "dd if=/dev/nbd0 bs=1M skip=8 count=2 iflag=direct status=none | cmp - /tmp/pattern"
check fio-after-restart fio_verify /dev/nbd0 4M

check node-kept nbd_connected nbd0
srp_nbd detach t0 || fail detach-cmd "srp-nbd detach exited $?"
check detached wait_for 30 bash -c '! test -e /sys/block/nbd0/pid'

# Detach while the kernel is blocked sending to the daemon: path 0 down (I/O held until
# fast_io_fail_tmo, 40 s here), a 1 MiB direct writer at QD128 (max_sectors_kb 1024) fills the
# connection's in-flight budget (64 MiB), the connection stops reading, and the kernel's sender waits for room in the
# socket holding the socket's tx lock, which NBD_CMD_DISCONNECT needs to send NBD_CMD_DISC. The
# daemon must stay responsive and the detach must complete (the connection is closed under the
# kernel after 1 s), long before fail-fast.
attach_nbd t1 "$ADDR" nbd0
srp_nbd set t1 --fast-io-fail-tmo 40 --dev-loss-tmo 120 >/dev/null || fail set-cmd "srp-nbd set exited $?"
# nbd's default max_sectors_kb (128) keeps 128 requests under 16 MiB; an administrator who raises
# it (as for throughput) lets 128 x 1 MiB exceed the connection's 64 MiB budget.
echo 1024 > /sys/block/nbd0/queue/max_sectors_kb || fail max-sectors "cannot raise max_sectors_kb"
note held-max-sectors "max_sectors_kb $(sysfs_get /sys/block/nbd0/queue/max_sectors_kb) (hw $(sysfs_get /sys/block/nbd0/queue/max_hw_sectors_kb))"
# The writer starts while the path is up: opening /dev/nbd0 may read its partition table, and a
# read held by the outage would keep fio from ever writing.
fio --name=pile --filename=/dev/nbd0 --rw=write --bs=1M --iodepth=128 --ioengine=libaio --direct=1 \
  --size=64M --time_based --runtime=300 --eta=never --output=/tmp/pile.log &
PILE=$!
check held-writer-writing wait_for 30 bash -c 'read -r r w </sys/block/nbd0/inflight; [ "$w" -gt 0 ]'
link_down 0
check held-outage wait_for 30 target_outage t1
nap 5   # requests pile up: 64 accepted and held, the kernel stuck sending the next payload
note held-inflight "kernel in flight on nbd0: $(sysfs_get /sys/block/nbd0/inflight)"
uptime_to T3
check detach-held timeout 30 node "$SRP_NBD_CLI" detach t1
timing detach-held "$(since "$T3")" "detach with the kernel blocked sending to the daemon (I/O held, fast_io_fail_tmo 40 s)"
check detach-closed-connection grep -q 'still sending on the device' "$OUT_DIR/daemon.log"
check daemon-answers timeout 10 node "$SRP_NBD_CLI" list
check held-writer-ended wait_for 60 bash -c "! kill -0 $PILE"
check detached-held wait_for 30 bash -c '! test -e /sys/block/nbd0/pid'
link_up 0
daemon_stop
finish
