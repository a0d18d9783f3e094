#!/bin/bash
# The daemon over real RDMA in the guest (issue 7 scenario 1, issue 8's restart):
#   attach      `srp-nbd attach <ib_srpt address> --device /dev/nbd0`: the LUN becomes /dev/nbd0
#   fio-verify  fio randwrite + crc32c verify on /dev/nbd0
#   restart     a pattern is written, the daemon is killed with -9 (a writer on /dev/nbd0 keeps I/O
#               in flight) and started again: it re-attaches the same /dev/nbd0 (same major:minor)
#               with RECONFIGURE, the writer's in-flight writes complete without error, the pattern
#               reads back, fio verify passes
#   detach      `srp-nbd detach`: only now is /dev/nbd0 disconnected
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
daemon_stop
finish
